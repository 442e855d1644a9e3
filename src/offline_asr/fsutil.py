"""Filesystem primitives every stage uses: the one sha256 helper, atomic writes, directory
fsync, and the writer lock."""

from __future__ import annotations

import fcntl
import hashlib
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from offline_asr.constants import HASH_CHUNK
from offline_asr.errors import OfflineAsrError
from offline_asr.progress import Advance


@dataclass(frozen=True)
class FileDigest:
    sha256: str
    size: int


def sha256_file(path: Path, advance: Advance | None = None) -> FileDigest:
    """Stream a file through sha256 in large chunks (hashlib releases the GIL on them).

    The buffer is no larger than the file: zeroing a 4 MiB buffer for each of 100,000 small
    files cost more than hashing them.
    """
    digest = hashlib.sha256()
    size = 0
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)  # a third of the cost of open() per file
    try:
        buffer = bytearray(min(HASH_CHUNK, os.fstat(fd).st_size + 1))
        view = memoryview(buffer)
        while count := os.readv(fd, [buffer]):
            digest.update(view[:count])
            size += count
            if advance is not None:
                advance(count)
    finally:
        os.close(fd)
    return FileDigest(digest.hexdigest(), size)


def sha256_bytes(data: bytes) -> str:
    """sha256 of bytes already in memory (a manifest, a sidecar, a checksum file)."""
    return hashlib.sha256(data).hexdigest()


def fsync_dir(folder: Path) -> None:
    """Make a rename or a new entry in `folder` survive a power cut."""
    dir_fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def write_atomic(path: Path, text: str, *, mode: int | None = None) -> None:
    """Write via a temporary file in the same folder, fsync, then rename over the target.

    The file gets `mode`, or by default what the umask allows.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as stream:
            stream.write(text)
            stream.flush()
            os.fsync(stream.fileno())
        Path(tmp).chmod(0o666 & ~_umask() if mode is None else mode)
        Path(tmp).replace(path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def _umask() -> int:
    current = os.umask(0)
    os.umask(current)
    return current


@contextmanager
def exclusive(lock_file: Path, busy: OfflineAsrError) -> Iterator[None]:
    """Hold an exclusive lock on `lock_file`; raise `busy` if another process holds it (one
    writer at a time: fail at once instead of waiting or racing)."""
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


def lock_is_held(lock_file: Path) -> bool:
    """Whether a live process holds an exclusive lock on `lock_file` (a pidfile whose server
    died is not locked any more, whatever pid it names)."""
    try:
        with lock_file.open("rb") as probe:
            try:
                fcntl.flock(probe, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return True
            fcntl.flock(probe, fcntl.LOCK_UN)
            return False
    except FileNotFoundError:
        return False
