"""One writer per folder: an OS file lock (``flock``) that the OS releases when the process dies.

``with folder_lock(path):`` around everything that writes a dataset or run folder. A second
writer, in this or another process, gets a one-line StyleprefsError naming the holder's pid
instead of waiting. The lock file stays in the folder, empty while nobody holds it (deleting it
would race with a new holder).
"""

from __future__ import annotations

import fcntl
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from styleprefs.errors import StyleprefsError

LOCK_NAME = ".styleprefs.lock"


@contextmanager
def folder_lock(folder: Path) -> Iterator[None]:
    """Hold ``folder``'s write lock for the block; create the folder if needed."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd = os.open(folder / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:
        raise StyleprefsError(f"output folder {folder} is not writable: {exc.strerror or exc}") from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise StyleprefsError(
                f"{folder} is in use by another styleprefs process (pid {_holder(fd)}); "
                "wait for it to finish or stop it, then run this command again") from None
        os.ftruncate(fd, 0)  # a killed holder's pid is still there
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        try:
            yield
        finally:
            os.ftruncate(fd, 0)  # released: the file keeps no pid, so folders compare equal
    finally:
        os.close(fd)


def lock_holder(folder: Path) -> str | None:
    """The holder's pid ("unknown" before it wrote it) if another open file holds ``folder``'s lock, else None.

    Only looks: a free lock is released at once and nothing is written."""
    try:
        fd = os.open(Path(folder) / LOCK_NAME, os.O_RDONLY)
    except FileNotFoundError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return _holder(fd)
    else:
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


def _holder(fd: int) -> str:
    """The pid the holder wrote into the lock file ("unknown" if it has not written it yet)."""
    text = os.pread(fd, 32, 0).decode(errors="replace").strip()
    return text if text.isdigit() else "unknown"
