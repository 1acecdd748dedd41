"""A folder of partitions that many processes fill at once, each part written exactly once.

Every partition (a batch of synapses) becomes one folder ``part-000012``. A worker writes
into a temporary sibling named after itself (``.part-000012.tmp-<pid>-<host>-<uuid>``) and
renames it into place; renaming a folder onto an existing non-empty folder fails, so when
two attempts of one partition finish (a rescheduled task whose first worker was only slow)
the first one wins and the other is thrown away. A reader therefore sees a part whole or not
at all, and a rerun computes only the partitions that have no part yet.
"""
from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import re
import shutil
import socket
import time
import uuid
from collections.abc import Iterable
from pathlib import Path

import pandas as pd

from ..core.atomic import atomic_path, newest_mtime, pid_alive
from ..core.errors import DataError

__all__ = ["PartitionStore", "part_name"]

log = logging.getLogger(__name__)

MARKER = ".partition.json"      # inside every committed part: who committed it and when
FAILURES = ".failures.json"     # partitions whose last attempts failed, with the reason
COMMITS = ".commits.log"        # one JSON line per commit, an audit trail of "exactly once"
STALE_SECONDS = 3600.0
_PART = re.compile(r"^part-(\d{6,})$")
_TEMP = re.compile(r"^\.part-(\d{6,})\.tmp-(?P<pid>\d+)-(?P<host>[0-9a-f]+)-[0-9a-f]+$")


def part_name(part_id: int) -> str:
    """Folder name of a partition: ``part-000012``."""
    if int(part_id) < 0:
        raise ValueError(f"partition ids must be >= 0, got {part_id}")
    return f"part-{int(part_id):06d}"


def _host_tag() -> str:
    return hashlib.blake2b(socket.gethostname().encode(), digest_size=4).hexdigest()


class PartitionStore:
    """The parts of one partitioned result in ``folder`` (created if missing).

    Picklable (it is only a path), so the engine sends it to the workers, which commit their
    parts themselves; failures are recorded by the one process that drives the run.
    """

    def __init__(self, folder: str | os.PathLike) -> None:
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)

    def __repr__(self) -> str:
        return f"PartitionStore({str(self.folder)!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, PartitionStore) and other.folder == self.folder

    def __hash__(self) -> int:
        return hash(self.folder)

    # ---------------------------------------------------------------- parts
    def path(self, part_id: int) -> Path:
        """Where partition ``part_id`` lives once committed."""
        return self.folder / part_name(part_id)

    def is_done(self, part_id: int) -> bool:
        """True when the partition was committed (its folder holds the commit marker)."""
        return (self.path(part_id) / MARKER).is_file()

    def done(self) -> set[int]:
        """Ids of all committed partitions."""
        found = set()
        with os.scandir(self.folder) as entries:
            for entry in entries:
                m = _PART.match(entry.name)
                if m and os.path.isfile(os.path.join(entry.path, MARKER)):
                    found.add(int(m.group(1)))
        return found

    def missing(self, ids: Iterable[int]) -> list[int]:
        """The ids among ``ids`` that have no committed part yet, sorted."""
        done = self.done()
        return sorted({int(i) for i in ids} - done)

    def commit_record(self, part_id: int) -> dict:
        """What the marker of a committed part says (attempt, host, pid, time)."""
        return json.loads((self.path(part_id) / MARKER).read_text(encoding="utf-8"))

    def commits(self) -> pd.DataFrame:
        """Every commit ever made into this store, one row each (partition, attempt, host, pid, time)."""
        path = self.folder / COMMITS
        rows = []
        if path.is_file():
            for line in path.read_text(encoding="utf-8").splitlines():
                if line.strip():
                    rows.append(json.loads(line))
        return pd.DataFrame(rows, columns=["partition", "attempt", "host", "pid", "time"])

    # ---------------------------------------------------------------- writing
    def temporary(self, part_id: int) -> Path:
        """A new empty folder next to the part, named after this process, to write the part into."""
        name = f".{part_name(part_id)}.tmp-{os.getpid()}-{_host_tag()}-{uuid.uuid4().hex[:12]}"
        tmp = self.folder / name
        tmp.mkdir()
        return tmp

    def commit(self, part_id: int, tmp: str | os.PathLike) -> bool:
        """Rename ``tmp`` into place as partition ``part_id``; True when this call committed it.

        When the part already exists (another attempt finished first) ``tmp`` is removed and
        False is returned: the first writer wins and a part is never replaced.
        """
        tmp = Path(tmp)
        target = self.path(part_id)
        if self.is_done(part_id):
            shutil.rmtree(tmp, ignore_errors=True)
            return False
        attempt = tmp.name.rsplit("-", 1)[-1]
        record = {"partition": int(part_id), "attempt": attempt, "host": socket.gethostname(),
                  "pid": os.getpid(), "time": time.time()}
        # the marker makes the folder non-empty, so a second rename onto it must fail
        (tmp / MARKER).write_text(json.dumps(record), encoding="utf-8")
        try:
            os.rename(tmp, target)
        except OSError as exc:
            shutil.rmtree(tmp, ignore_errors=True)
            if exc.errno not in (errno.EEXIST, errno.ENOTEMPTY) and not target.exists():
                raise
            if not self.is_done(part_id):
                raise DataError(f"{target} exists but is not a committed partition (no {MARKER}); "
                                f"remove it and rerun") from exc
            log.debug("partition %s was committed by another attempt; discarded %s", part_id, tmp.name)
            return False
        self._append_commit(record)
        return True

    def _append_commit(self, record: dict) -> None:
        line = (json.dumps(record) + "\n").encode("utf-8")
        fd = os.open(self.folder / COMMITS, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
        try:
            os.write(fd, line)  # one small O_APPEND write: lines of concurrent writers never mix
        finally:
            os.close(fd)

    # ---------------------------------------------------------------- failures
    def _read_failures(self) -> dict[str, dict]:
        path = self.folder / FAILURES
        if not path.is_file():
            return {}
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise DataError(f"{path} is not valid JSON ({exc}); delete it (it only lists failed partitions)") from exc
        return data if isinstance(data, dict) else {}

    def _write_failures(self, data: dict[str, dict]) -> None:
        with atomic_path(self.folder / FAILURES) as tmp:
            tmp.write_text(json.dumps(data, indent=1, sort_keys=True), encoding="utf-8")

    def record_failure(self, part_id: int, reason: str, *, attempts: int = 1) -> None:
        """Remember that ``attempts`` more tries of a partition failed, and the last reason.

        Called by the one process that drives a run (not by workers), so the file has one writer.
        """
        data = self._read_failures()
        key = str(int(part_id))
        before = data.get(key, {}).get("attempts", 0)
        data[key] = {"reason": str(reason), "attempts": int(before) + int(attempts)}
        self._write_failures(data)

    def clear_failures(self, part_ids: Iterable[int]) -> None:
        """Forget the failures of partitions that have since succeeded."""
        data = self._read_failures()
        keys = {str(int(i)) for i in part_ids} & set(data)
        if keys:
            for key in keys:
                del data[key]
            self._write_failures(data)

    def failures(self) -> pd.DataFrame:
        """Partitions still failed: columns partition, reason, attempts (a part committed
        later no longer counts)."""
        data = self._read_failures()
        done = self.done()
        rows = [{"partition": int(k), "reason": v.get("reason", ""), "attempts": int(v.get("attempts", 0))}
                for k, v in data.items() if int(k) not in done]
        frame = pd.DataFrame(rows, columns=["partition", "reason", "attempts"])
        return frame.sort_values("partition", ignore_index=True).astype({"partition": "int64", "attempts": "int64"})

    # ---------------------------------------------------------------- leftovers
    def leftovers(self) -> list[Path]:
        """Temporary folders in the store (live attempts included)."""
        return sorted(p for p in self.folder.iterdir() if _TEMP.match(p.name))

    def clean_leftovers(self, *, stale_seconds: float = STALE_SECONDS) -> list[Path]:
        """Remove temporaries of attempts that will never commit: their process (on this host)
        is gone, or, for another host's, nothing in them changed for ``stale_seconds``."""
        removed = []
        host = _host_tag()
        now = time.time()
        for path in self.leftovers():
            m = _TEMP.match(path.name)
            assert m is not None
            if m.group("host") == host:
                stale = not pid_alive(int(m.group("pid")))
            else:
                stale = now - newest_mtime(path) > stale_seconds
            if stale:
                shutil.rmtree(path, ignore_errors=True)
                removed.append(path)
        if removed:
            log.info("removed %d leftover temporary part folder(s) in %s", len(removed), self.folder)
        return removed
