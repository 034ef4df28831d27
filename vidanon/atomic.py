"""Files written whole or not at all: a hidden temporary name in the same folder, then a rename.

The one on-disk convention of vidanon, used by videos, manifests, reports, contact sheets, downloaded
weights and key files. A temporary file is `.<final name>.<random>.partial<final suffix>` (the suffix
kept so that a muxer still recognises the container), so `stale_temps` can find what a killed run left.
"""

from __future__ import annotations

import contextlib
import errno
import glob
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

try:
    import fcntl
except ImportError:  # not POSIX: no locking between parallel runs
    fcntl = None


def temp_beside(path: str | os.PathLike, mode: int | None = None) -> Path:
    """Create an empty, uniquely named hidden temporary file beside `path` and return its name.

    mode None: the usual permissions (0666 less the umask). A private file (restored faces, keys) passes
    0o600 and is never readable by others, not even for a moment."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=f".partial{path.suffix}", dir=path.parent)
    try:
        if mode is None:
            umask = os.umask(0)
            os.umask(umask)
            mode = 0o666 & ~umask
        os.fchmod(fd, mode)  # mkstemp makes 0600
    finally:
        os.close(fd)
    return Path(tmp)


def stale_temps(path: str | os.PathLike) -> list[Path]:
    """Temporary files of `path` left by a run that was killed before its rename."""
    path = Path(path)
    return sorted(path.parent.glob(f".{glob.escape(path.name)}.*.partial*")) if path.parent.is_dir() else []


def commit(tmp: Path, path: str | os.PathLike, *, replace: bool = True) -> None:
    """Rename a finished temporary file onto `path`. replace=False refuses an existing `path`
    (FileExistsError) without a window in which two writers could both win."""
    if replace:
        os.replace(tmp, path)
        return
    try:
        os.link(tmp, path)  # fails if `path` exists
    except FileExistsError:
        Path(tmp).unlink(missing_ok=True)
        raise
    except OSError:  # a file system without hard links (FAT, exFAT, some network shares): a narrow window
        if os.path.lexists(path):
            Path(tmp).unlink(missing_ok=True)
            raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), str(path)) from None
        os.replace(tmp, path)
        return
    Path(tmp).unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike, *, mode: int | None = None, replace: bool = True) -> Iterator[BinaryIO]:
    """A binary file to write `path` through: renamed onto `path` when the block completes, removed if it
    fails, so `path` never holds a partial file."""
    tmp = temp_beside(path, mode)
    try:
        with open(tmp, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        commit(tmp, path, replace=replace)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_atomic(path: str | os.PathLike, data: bytes, *, mode: int | None = None, replace: bool = True) -> None:
    with atomic_file(path, mode=mode, replace=replace) as f:
        f.write(data)


def lock_path(path: str | os.PathLike) -> Path:
    path = Path(path)
    return path.with_name(f".{path.name}.lock")


@contextlib.contextmanager
def claim(path: str | os.PathLike) -> Iterator[bool]:
    """Whether this process may write `path` now: False while another vidanon run holds it.

    The lock is a flock on a hidden `.<name>.lock` beside `path` (its folder must exist), removed at
    the end; the kernel releases it whenever the holder dies, so a killed run never blocks the next."""
    lock = lock_path(path)
    try:
        f = open(lock, "a") if fcntl is not None else None
    except OSError:  # an unusable folder: writing the output itself will say so
        f = None
    if f is None:
        yield True
        return
    with f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            # A run that has just finished removes the file: a lock on the removed file protects nothing.
            ours = os.path.samestat(os.fstat(f.fileno()), os.stat(lock))
        except (BlockingIOError, FileNotFoundError):
            ours = False
        try:
            yield ours
        finally:
            if ours:
                lock.unlink(missing_ok=True)
