"""One writer at a time: an flock that fails at once instead of waiting or racing."""

from __future__ import annotations

import fcntl
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from offline_asr.errors import OfflineAsrError


@contextmanager
def exclusive(lock_file: Path, busy: OfflineAsrError) -> Iterator[None]:
    """Hold an exclusive lock on `lock_file`; raise `busy` if another process holds it."""
    lock_file.parent.mkdir(parents=True, exist_ok=True)
    with lock_file.open("a") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as error:
            raise busy from error
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
