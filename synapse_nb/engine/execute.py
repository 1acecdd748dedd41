"""Run one function over many partitions, on a Dask cluster or in this process, resumably.

Each partition (a batch of synapses, say) has a payload; the task computes it into a
temporary folder and the engine commits that folder as the partition's part
(:class:`~synapse_nb.engine.partitions.PartitionStore`). Parts already in the store are
skipped, so a run stopped for any reason continues where it stopped; a partition that keeps
failing is recorded with its reason and never stops the others.
"""
from __future__ import annotations

import logging
import os
import re
import shutil
import socket
import threading
import time
import uuid
from collections.abc import Callable, Hashable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import pandas as pd

from ..core.progress_bars import progress as progress_bar
from .cluster import dashboard_link, enforce_thread_limit
from .partitions import PartitionStore

if TYPE_CHECKING:
    from distributed import Client, Future

__all__ = ["EngineReport", "clear_worker_cache", "run_partitions", "worker_cached"]

log = logging.getLogger(__name__)
T = TypeVar("T")

_CACHE: dict[Hashable, Any] = {}
_CACHE_LOCK = threading.Lock()


def worker_cached(key: Hashable, factory: Callable[[], T]) -> T:
    """``factory()`` built once per process under ``key`` and reused by every later task there.

    For a partition's heavy resources (the network, an opened connectome): a worker process
    runs many partitions and should load them once, not once per partition.
    """
    with _CACHE_LOCK:
        if key in _CACHE:
            return _CACHE[key]
    value = factory()  # outside the lock: building may take long; a rare double build is harmless
    with _CACHE_LOCK:
        return _CACHE.setdefault(key, value)


def clear_worker_cache() -> None:
    """Forget everything :func:`worker_cached` holds in this process."""
    with _CACHE_LOCK:
        _CACHE.clear()


@dataclass
class EngineReport:
    """What a :func:`run_partitions` call did.

    ``done``: requested partitions that have a part now; ``computed``: committed by this run;
    ``skipped``: had a part before the run; ``failures``: partitions still failed (partition,
    reason, attempts); ``duplicates``: attempts whose finished part was discarded because
    another attempt committed first; ``seconds``: wall time.
    """

    requested: list[int]
    done: list[int]
    computed: list[int]
    skipped: list[int]
    failures: pd.DataFrame
    seconds: float
    duplicates: list[int] = field(default_factory=list)

    @property
    def missing(self) -> list[int]:
        """Requested partitions without a part (failed, or the run was stopped)."""
        return sorted(set(self.requested) - set(self.done))

    @property
    def complete(self) -> bool:
        return not self.missing

    def summary(self) -> str:
        text = (f"{len(self.done)}/{len(self.requested)} partitions done ({len(self.computed)} computed, "
                f"{len(self.skipped)} already there) in {self.seconds:.1f} s")
        if len(self.failures):
            text += f"; {len(self.failures)} failed (see report.failures)"
        return text


def _attempt(task: Callable[[Any, Path], None], payload: Any, store: PartitionStore, part_id: int) -> dict:
    """Run one attempt of a partition where it is scheduled and commit its folder."""
    started = time.perf_counter()
    if store.is_done(part_id):  # a rescheduled attempt whose earlier run had committed
        return {"id": part_id, "status": "already", "seconds": 0.0}
    enforce_thread_limit()
    tmp = store.temporary(part_id)
    try:
        task(payload, tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    committed = store.commit(part_id, tmp)
    return {"id": part_id, "status": "committed" if committed else "duplicate",
            "seconds": time.perf_counter() - started, "where": f"{socket.gethostname()}:{os.getpid()}"}


def _reason(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}".rstrip(": ")


def run_partitions(client: Client | None, payloads: Mapping[int, Any], task: Callable[[Any, Path], None],
                   store: PartitionStore | str | os.PathLike, *, retries: int = 2, progress: bool = True,
                   desc: str = "partitions", on_done: Callable[[int, Path], None] | None = None,
                   in_flight_per_thread: int = 3) -> EngineReport:
    """Compute every partition of ``payloads`` that ``store`` does not hold yet.

    ``task(payload, folder)`` writes one partition into ``folder`` (a fresh temporary folder);
    the engine commits it as ``store.path(id)``. With ``client`` None the partitions run here
    one after another (same semantics: the reference for one process); with a Dask client they
    are submitted ``in_flight_per_thread`` per worker thread at a time, each tried ``1 +
    retries`` times. A worker lost mid-task is rescheduled by the scheduler and the partition
    still ends up committed once. ``on_done(id, path)`` is called here after each commit.
    Keep ``task`` small to send (it travels with every partition); build heavy resources on the
    worker with :func:`worker_cached`.
    """
    if int(retries) < 0:
        raise ValueError(f"retries must be >= 0, got {retries}")
    if int(in_flight_per_thread) < 1:
        raise ValueError(f"in_flight_per_thread must be >= 1, got {in_flight_per_thread}")
    if not isinstance(store, PartitionStore):
        store = PartitionStore(store)
    started = time.perf_counter()
    requested = sorted(int(i) for i in payloads)
    if len(set(requested)) != len(requested):
        raise ValueError("partition ids must be distinct integers")
    store.clean_leftovers()
    todo = store.missing(requested)
    skipped = sorted(set(requested) - set(todo))
    log.info("%s: %d partitions, %d already done, %d to compute", desc, len(requested), len(skipped), len(todo))
    state = _RunState(store=store, on_done=on_done)
    bar = progress_bar(total=len(requested), initial=len(skipped), desc=desc, enabled=progress)
    try:
        if client is None:
            _run_here(todo, payloads, task, store, retries, state, bar)
        else:
            link = dashboard_link(client)
            if link:
                log.info("%s: Dask dashboard at %s", desc, link)
            _run_dask(client, todo, payloads, task, store, retries, state, bar, int(in_flight_per_thread), desc)
    finally:
        bar.close()
    if state.computed:
        store.clear_failures(state.computed)
    done_now = store.done()
    failures = store.failures()
    failures = failures[failures["partition"].isin(requested)].reset_index(drop=True)
    report = EngineReport(requested=requested, done=sorted(set(requested) & done_now),
                          computed=sorted(state.computed), skipped=skipped, failures=failures,
                          seconds=time.perf_counter() - started, duplicates=sorted(state.duplicates))
    log.info("%s: %s", desc, report.summary())
    return report


@dataclass
class _RunState:
    store: PartitionStore
    on_done: Callable[[int, Path], None] | None
    computed: list[int] = field(default_factory=list)
    duplicates: list[int] = field(default_factory=list)
    failed: int = 0

    def finished(self, result: dict, bar: Any) -> None:
        part_id = int(result["id"])
        # "already": an attempt rescheduled after its worker died found the part committed by the
        # earlier attempt, which finished in this run (only partitions missing at the start run)
        if result["status"] in ("committed", "already"):
            self.computed.append(part_id)
        elif result["status"] == "duplicate":
            self.duplicates.append(part_id)
        bar.update(1)
        if self.on_done is not None:
            self.on_done(part_id, self.store.path(part_id))

    def failure(self, part_id: int, reason: str, attempts: int, bar: Any) -> None:
        log.warning("partition %d failed after %d attempt(s): %s", part_id, attempts, reason)
        self.store.record_failure(part_id, reason, attempts=attempts)
        self.failed += 1
        bar.update(1)
        bar.set_postfix(failed=self.failed)


def _run_here(todo: list[int], payloads: Mapping[int, Any], task: Callable[[Any, Path], None],
              store: PartitionStore, retries: int, state: _RunState, bar: Any) -> None:
    for part_id in todo:
        for attempt in range(retries + 1):
            try:
                result = _attempt(task, payloads[part_id], store, part_id)
            except Exception as exc:  # noqa: BLE001 - one partition's error must not end the run
                if attempt < retries:
                    log.debug("partition %d attempt %d failed (%s); retrying", part_id, attempt + 1, exc)
                    continue
                state.failure(part_id, _reason(exc), retries + 1, bar)
            else:
                state.finished(result, bar)
            break


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.]+", "-", text).strip("-") or "partition"


def _run_dask(client: Client, todo: list[int], payloads: Mapping[int, Any], task: Callable[[Any, Path], None],
              store: PartitionStore, retries: int, state: _RunState, bar: Any, per_thread: int, desc: str) -> None:
    from distributed import as_completed

    token = uuid.uuid4().hex[:8]  # keys unique per run: a scheduler must never hand back an old result
    prefix = _slug(desc)
    queue = list(reversed(todo))
    in_flight: dict[Future, int] = {}

    def limit() -> int:
        threads = sum(client.nthreads().values())
        return per_thread * max(threads, 1)

    def submit_more(ac: as_completed) -> None:
        cap = limit()
        while queue and len(in_flight) < cap:
            part_id = queue.pop()
            fut = client.submit(_attempt, task, payloads[part_id], store, part_id, retries=retries,
                                pure=False, key=f"{prefix}-{part_id:06d}-{token}")
            in_flight[fut] = part_id
            ac.add(fut)

    ac = as_completed()
    try:
        submit_more(ac)
        for fut in ac:
            part_id = in_flight.pop(fut)
            if fut.status == "finished":
                state.finished(fut.result(), bar)
            elif fut.status == "error":
                state.failure(part_id, _reason(fut.exception()), retries + 1, bar)
            else:  # cancelled: the client or cluster went away; the partition stays missing
                log.warning("partition %d was %s; it stays missing and a rerun computes it", part_id, fut.status)
            fut.release()
            submit_more(ac)
    finally:
        if in_flight:
            client.cancel(list(in_flight))
