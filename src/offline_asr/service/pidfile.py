"""`serve --pidfile FILE`: FILE holds the server's pid (for `kill -HUP $(cat FILE)`) and is
locked for the server's life, so a reader can tell a live server from a stale file; FILE.json
says which release it serves, rewritten atomically after every reload (`doctor --server`)."""

from __future__ import annotations

import fcntl
import json
import os
from pathlib import Path
from typing import Any

from offline_asr.constants import PIDFILE_STATE_SUFFIX
from offline_asr.errors import OfflineAsrError
from offline_asr.fsutil import write_atomic


def state_path(pidfile: Path) -> Path:
    return pidfile.with_name(pidfile.name + PIDFILE_STATE_SUFFIX)


class Pidfile:
    def __init__(self, path: Path, *, url: str) -> None:
        self.path, self.url = path, url
        self._fd: int | None = None

    def claim(self) -> None:
        """Lock the file and write our pid; another live server holding it stops the start."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as error:
            os.close(fd)
            raise OfflineAsrError(
                f"the pidfile {self.path} is held by another running server; give each server "
                "its own --pidfile (or stop the other one)"
            ) from error
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        os.fsync(fd)
        self._fd = fd

    def publish(self, state: dict[str, Any]) -> None:
        """What the server serves now, for `doctor` (one atomic rename)."""
        state = {"pid": os.getpid(), "url": self.url, **state}
        write_atomic(state_path(self.path), json.dumps(state) + "\n")

    def remove(self) -> None:
        """At a clean stop: the files go, then the lock."""
        state_path(self.path).unlink(missing_ok=True)
        self.path.unlink(missing_ok=True)
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
