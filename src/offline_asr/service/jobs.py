"""A transcription on a worker thread: it holds its admission slot until the thread really ends,
and can be asked to stop when its client leaves or its time limit passes.

A thread cannot be killed, so stopping is cooperative: the transcriber checks the cancel event
after decoding and at every segment (Whisper) or batch of chunks (GigaAM). The slot is released
when the thread has ended, never earlier, so the concurrency bound holds for abandoned work too.
When a job was asked to stop, its end is counted in `offline_asr_cancelled_total` (if it stopped
early) and written to the audit log as a `cancellation` line: the request's own line has already
gone out with the answer the client got.
"""

from __future__ import annotations

import asyncio
import io
import threading
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import BinaryIO, Literal

from fastapi import UploadFile
from starlette.types import Receive

from offline_asr.asr.audit import AuditLog
from offline_asr.asr.base import TranscriptionResult
from offline_asr.asr.transcriber import Cancelled
from offline_asr.service.admission import Admission
from offline_asr.service.audit_trail import Facts
from offline_asr.service.metrics import Metrics

Reason = Literal["client_disconnected", "timeout"]


class Job:
    """Runs `work(cancel_event)` in a thread; the caller has acquired the admission slot."""

    def __init__(
        self,
        work: Callable[[threading.Event], TranscriptionResult],
        *,
        request_id: str,
        facts: Facts,
        admission: Admission,
        metrics: Metrics,
        audit: AuditLog,
        on_end: Callable[[], object],
    ) -> None:
        self.request_id, self.facts = request_id, facts
        self.admission, self.metrics, self.audit = admission, metrics, audit
        self._on_end = on_end
        self._stop = threading.Event()
        self._reason: Reason | None = None
        self._asked_at = 0.0
        self.future: asyncio.Future[TranscriptionResult] = asyncio.ensure_future(
            asyncio.to_thread(work, self._stop)
        )
        self.future.add_done_callback(self._ended)

    def cancel(self, reason: Reason) -> None:
        """Ask the work to stop at its next check; the first reason given is the one kept."""
        if self.future.done() or self._reason is not None:
            return
        self._reason, self._asked_at = reason, time.monotonic()
        self.facts.update({"cancelled": reason})
        self._stop.set()

    def _ended(self, future: asyncio.Future[TranscriptionResult]) -> None:
        error = None if future.cancelled() else future.exception()  # retrieved: never "lost"
        try:
            if self._reason is not None:
                stopped = isinstance(error, Cancelled)
                if stopped:
                    self.metrics.cancelled.labels(self._reason).inc()
                failure = {} if error is None or stopped else {"error": str(error)}
                self.audit.write("cancellation", {
                    "request_id": self.request_id,
                    "reason": self._reason,
                    "stopped_early": stopped,
                    "slot_held_s": round(time.monotonic() - self._asked_at, 3),
                    **failure,
                })  # fmt: skip
        finally:
            self.admission.release()  # after the line and the count: a free slot implies them
            self._on_end()


async def _until_disconnect(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


@asynccontextmanager
async def watching_disconnect(receive: Receive) -> AsyncIterator[asyncio.Future[None]]:
    """A future done when the client has gone; enter once the request body has been read.

    The watch ends with the block: a streamed answer watches for the client itself.
    """
    left = asyncio.ensure_future(_until_disconnect(receive))
    try:
        yield left
    finally:
        left.cancel()


async def admitted(admission: Admission, left: asyncio.Future[None]) -> bool:
    """Wait for a slot; False if the client left first (then no slot is held).

    Raises `QueueFullError` when there is no room to wait.
    """
    acquiring = asyncio.ensure_future(admission.acquire())
    await asyncio.wait({acquiring, left}, return_when=asyncio.FIRST_COMPLETED)
    if not acquiring.done():
        acquiring.cancel()
        await asyncio.wait({acquiring})
        if acquiring.cancelled():
            return False
        admission.release()  # the slot came just as the client left
        return False
    acquiring.result()
    return True


def take_upload(file: UploadFile) -> BinaryIO:
    """The uploaded file, now the job's to close: the framework closes a request's files once
    the answer has gone, and an abandoned job may still be reading (hashing, decoding)."""
    upload, file.file = file.file, io.BytesIO()
    return upload
