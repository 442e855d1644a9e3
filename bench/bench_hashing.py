"""`models verify` hashing speed against Python's `hashlib.sha256` in one thread.

Cases: one large file (ours: `sha256_file`) and a model of two large files (ours: `hash_files`,
which spreads files over the cores). Runs alternate, best of N, on files written to a temp dir
(read back from the page cache, so this measures hashing, not the disk).
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from offline_asr.fsutil import sha256_file
from offline_asr.registry.integrity import hash_files

SIZE = 512 * 1024 * 1024
ROUNDS = 5


def _hashlib_one_thread(paths: list[Path]) -> None:
    for path in paths:
        with path.open("rb") as stream:
            hashlib.file_digest(stream, "sha256")


def _best(function: Callable[[], object]) -> float:
    start = time.perf_counter()
    function()
    return time.perf_counter() - start


def _compare(name: str, paths: list[Path], ours: Callable[[], object]) -> dict[str, Any]:
    total = sum(p.stat().st_size for p in paths)
    ours_times, base_times = [], []
    for _ in range(ROUNDS):
        base_times.append(_best(lambda: _hashlib_one_thread(paths)))
        ours_times.append(_best(ours))
    ours_speed = total / min(ours_times) / 1e6
    base_speed = total / min(base_times) / 1e6
    return {
        "benchmark": "hashing",
        "case": name,
        "ours": ours_speed,
        "baseline": base_speed,
        "unit": "MB/s",
        "ratio": ours_speed / base_speed,
    }


def run() -> list[dict[str, Any]]:
    with tempfile.TemporaryDirectory() as tmp:
        paths = [Path(tmp, f"weights{i}.bin") for i in range(2)]
        for path in paths:
            with path.open("wb") as stream:
                for _ in range(SIZE // (16 * 1024 * 1024)):
                    stream.write(os.urandom(16 * 1024 * 1024))
        return [
            _compare("one 512 MiB file", paths[:1], lambda: sha256_file(paths[0])),
            _compare("two 512 MiB files", paths, lambda: hash_files(paths)),
        ]
