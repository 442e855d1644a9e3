"""The results file: JSON lines, appended one fsynced line at a time, repaired after a kill.

A line is written with one `write` on a file opened for appending, then flushed and fsynced
before the next file counts as done, so a kill or power cut can only cut the last line short.
Opening the file again cuts such a torn tail off (the file it belonged to is transcribed again);
a damaged line anywhere else was not written by us, and is refused rather than "repaired".
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from offline_asr.errors import OfflineAsrError
from offline_asr.fsutil import exclusive

Line = dict[str, Any]


class ResultsError(OfflineAsrError):
    """The results file cannot be read, repaired or written."""


class ResultsFile:
    """Lines already in the file, and an appender that is safe across threads and kills."""

    def __init__(self, path: Path, lines: list[Line], torn_bytes: int) -> None:
        self.path = path
        self.lines = lines
        self.torn_bytes = torn_bytes  # cut off a line that a kill left unfinished
        self._stream = path.open("a", encoding="utf-8")
        self._lock = threading.Lock()

    def append(self, line: Line) -> None:
        """Write one line and make it durable before returning."""
        data = json.dumps(line, ensure_ascii=False, separators=(",", ":")) + "\n"
        with self._lock:
            try:
                self._stream.write(data)
                self._stream.flush()
                os.fsync(self._stream.fileno())
            except OSError as error:
                raise ResultsError(f"cannot write to {self.path}: {error.strerror}") from error

    def close(self) -> None:
        self._stream.close()


@contextmanager
def open_results(path: Path) -> Iterator[ResultsFile]:
    """The results file for one job, held exclusively: a second job on it is refused."""
    busy = ResultsError(f"{path} is being written by another batch job; wait for it to finish")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise ResultsError(f"cannot create the folder of {path}: {error.strerror}") from error
    with exclusive(path, busy):
        lines, torn = _read_and_repair(path)
        results = ResultsFile(path, lines, torn)
        try:
            yield results
        finally:
            results.close()


def _read_and_repair(path: Path) -> tuple[list[Line], int]:
    try:
        data = path.read_bytes()
    except OSError as error:
        raise ResultsError(f"cannot read {path}: {error.strerror}") from error
    complete = data.rfind(b"\n") + 1
    torn = len(data) - complete
    if torn:
        with path.open("r+b") as stream:
            stream.truncate(complete)
            os.fsync(stream.fileno())
    lines: list[Line] = []
    for number, raw in enumerate(data[:complete].splitlines(), start=1):
        try:
            line = json.loads(raw)
        except (UnicodeDecodeError, json.JSONDecodeError):
            line = None
        if not isinstance(line, dict) or "status" not in line:
            raise ResultsError(
                f"{path}, line {number}, is not a result line of offline-asr batch; give "
                "another --out file, or remove that line if this file is yours"
            )
        lines.append(line)
    return lines, torn
