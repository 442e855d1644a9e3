"""The verified-hash cache (`models/.verified.json`): files already hashed are not hashed again.

A file is remembered by what a user cannot put back: device, inode, size, mtime and ctime
(`utime` can reset the mtime, but any write, rename or `utime` sets the ctime to the present;
only root, by changing the clock, can fake it). The cache is trusted only when it is a regular
file owned by this user and writable by no one else, so other users who can write model files
cannot vouch for them. It is no defence against this user or root: see README, "Security".
"""

from __future__ import annotations

import json
import logging
import os
import stat
from pathlib import Path

from offline_asr.constants import VERIFY_CACHE_NAME
from offline_asr.fsutil import write_atomic

log = logging.getLogger(__name__)

# A cache larger than this is not ours (an entry is ~200 bytes): ignore it.
MAX_CACHE_BYTES = 64 * 1024 * 1024


def file_identity(path: Path) -> str:
    """The cache key of a file: its resolved path and what changes whenever its bytes do."""
    st = path.stat()
    return (
        f"{path.resolve()}|{st.st_dev}|{st.st_ino}|{st.st_size}|{st.st_mtime_ns}|{st.st_ctime_ns}"
    )


def _distrust(path: Path, reason: str) -> dict[str, str]:
    log.warning("ignoring %s (%s); every file is hashed again", path, reason)
    return {}


def _read(path: Path) -> dict[str, str]:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
    except FileNotFoundError:
        return {}
    except OSError as error:  # ELOOP: a symbolic link
        return _distrust(path, f"cannot be opened safely: {error.strerror}")
    with os.fdopen(fd, "rb") as stream:
        info = os.fstat(stream.fileno())
        if not stat.S_ISREG(info.st_mode):
            return _distrust(path, "not a regular file")
        if info.st_uid != os.geteuid():
            return _distrust(path, f"owned by uid {info.st_uid}, not by this user")
        if info.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
            return _distrust(path, "writable by group or others")
        if info.st_size > MAX_CACHE_BYTES:
            return _distrust(path, f"larger than {MAX_CACHE_BYTES} bytes")
        raw = stream.read()
    try:
        data = json.loads(raw.decode("utf-8"))
    except (ValueError, RecursionError):
        return _distrust(path, "not a JSON object")
    if not isinstance(data, dict) or not all(
        isinstance(key, str) and isinstance(value, str) for key, value in data.items()
    ):
        return _distrust(path, "not a JSON object of strings")
    return data


class VerifiedCache:
    """file identity -> the sha256 it had when it was hashed."""

    def __init__(self, store_root: Path) -> None:
        self.path = store_root / VERIFY_CACHE_NAME
        self.entries = _read(self.path)

    def vouches(self, identity: str, sha256: str) -> bool:
        return self.entries.get(identity) == sha256

    def remember(self, identity: str, sha256: str) -> None:
        """Record a hash, dropping older identities of the same path."""
        prefix = identity.rsplit("|", 5)[0] + "|"
        for stale in [key for key in self.entries if key.startswith(prefix)]:
            del self.entries[stale]
        self.entries[identity] = sha256

    def save(self) -> None:
        """Write the cache readable and writable by this user only; a read-only store skips it."""
        text = json.dumps(self.entries, indent=0, sort_keys=True) + "\n"
        try:
            write_atomic(self.path, text, mode=0o600)
        except OSError as error:
            log.info("not writing %s: %s", self.path, error.strerror)
