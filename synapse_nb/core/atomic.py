"""Write files so that a crash never leaves a half-written result behind.

Everything the package writes goes to a temporary name in the target folder and is then
renamed over the target (an atomic operation on POSIX).
"""
from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable, Iterator


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to ``target``; rename it to ``target`` on success.

    The temporary file keeps the target's suffix so that libraries choosing a format by
    extension (pandas, tifffile, imageio) behave the same. On error it is removed and the
    previous ``target`` (if any) is left untouched.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.stem}.", suffix=f".tmp{target.suffix}", dir=target.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        # mkstemp makes private files; results are shared like any file the user writes
        os.chmod(tmp_path, 0o666 & ~_umask())
        os.replace(tmp_path, target)
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise


@contextlib.contextmanager
def atomic_dir(target: str | os.PathLike, tag: str = "",
               keep_existing: Callable[[Path], bool] | None = None) -> Iterator[Path]:
    """Yield a temporary folder next to ``target``; on success it replaces ``target`` whole.

    A previous ``target`` is moved aside first and removed only once the new folder is in
    place, so readers see the old folder or the new one, never a mix; on error nothing changes.
    ``tag`` goes into the temporary names (a cache marks them with their owner's pid);
    ``keep_existing(target)`` true means a folder another process completed meanwhile is kept
    and the new one dropped (shared caches, where runs may already link to it).
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    mark = f"{tag}-" if tag else ""
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-{mark}", dir=target.parent))
    try:
        yield tmp
        os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes private folders; results are shared
        if keep_existing is not None and keep_existing(target):
            shutil.rmtree(tmp, ignore_errors=True)
            return
        old = None
        if target.exists() or target.is_symlink():
            old = Path(tempfile.mkdtemp(prefix=f".{target.name}.old-{mark}", dir=target.parent))
            old.rmdir()
            os.replace(target, old)
        try:
            os.replace(tmp, target)
        except OSError:
            if keep_existing is None or not keep_existing(target):
                raise
            shutil.rmtree(tmp, ignore_errors=True)  # another process put its folder in place first
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _umask() -> int:
    current = os.umask(0)
    os.umask(current)
    return current


def write_text(target: str | os.PathLike, text: str, encoding: str = "utf-8") -> Path:
    """Atomically write ``text`` to ``target``."""
    with atomic_path(target) as tmp:
        tmp.write_text(text, encoding=encoding)
    return Path(target)


# --------------------------------------------------------------------------- leftovers of crashes
def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` of this host still runs (the owner of a temporary folder)."""
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # PermissionError: alive, owned by another user
        return True
    return True


def newest_mtime(folder: Path) -> float:
    """The latest modification time of ``folder`` and anything in it (when it last changed)."""
    newest = folder.lstat().st_mtime
    for dirpath, dirnames, filenames in os.walk(folder):
        for name in (*dirnames, *filenames):
            try:
                newest = max(newest, os.lstat(os.path.join(dirpath, name)).st_mtime)
            except OSError:
                pass
    return newest
