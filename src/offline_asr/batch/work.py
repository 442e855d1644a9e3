"""One file's work, the same on a local thread and on a Ray actor: transcribe, make its line."""

from __future__ import annotations

import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import BinaryIO, Protocol

from offline_asr.asr.base import DecodeOptions
from offline_asr.asr.transcriber import Cancelled, Transcriber
from offline_asr.batch.lines import Line, error_line, ok_line


def transcribe_one(
    transcriber: Transcriber,
    stream: BinaryIO,
    path: str,
    audio_sha256: str,
    options: DecodeOptions,
    request: str,
    cancel: threading.Event | None = None,
) -> Line:
    """The file's result line; any failure of this file is an error line, never an exception
    (only `Cancelled`, when the job is being stopped, goes through)."""
    started = time.perf_counter()
    try:
        result = transcriber.transcribe_stream(stream, Path(path).name, options, cancel=cancel)
    except Cancelled:
        raise
    except Exception as error:  # a bad file must not end the job: it gets its error line
        return error_line(path, audio_sha256, request, transcriber.model_id, error)
    return ok_line(path, audio_sha256, request, result, time.perf_counter() - started)


class Runner(Protocol):
    """Where the files are transcribed: local threads (`LocalRunner`) or a Ray cluster."""

    capacity: int
    """Files handed out at a time: enough to keep every worker busy, few enough to stop fast."""

    def submit(self, path: Path, audio_sha256: str) -> Future[Line]: ...

    def stop(self) -> None:
        """Drop what has not started and ask what runs to stop (Ctrl-C)."""

    def problems(self) -> list[str]:
        """What went wrong outside any one file (e.g. a node refused), for the summary."""


class LocalRunner:
    """`workers` threads sharing one transcriber whose engine runs as many calls at once."""

    def __init__(
        self, transcriber: Transcriber, options: DecodeOptions, request: str, workers: int
    ) -> None:
        self.transcriber, self.options, self.request = transcriber, options, request
        self.capacity = workers * 2
        self._pool = ThreadPoolExecutor(workers, thread_name_prefix="batch")
        self._cancel = threading.Event()

    def submit(self, path: Path, audio_sha256: str) -> Future[Line]:
        return self._pool.submit(self._run, path, audio_sha256)

    def _run(self, path: Path, audio_sha256: str) -> Line:
        try:
            stream = path.open("rb")
        except OSError as error:
            return error_line(str(path), audio_sha256, self.request,
                              self.transcriber.model_id, error)  # fmt: skip
        with stream:
            return transcribe_one(self.transcriber, stream, str(path), audio_sha256,
                                  self.options, self.request, self._cancel)  # fmt: skip

    def stop(self) -> None:
        self._cancel.set()
        self._pool.shutdown(wait=True, cancel_futures=True)

    def problems(self) -> list[str]:
        return []
