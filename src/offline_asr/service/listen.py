"""`offline-asr listen`: stream audio to a server's `/v1/realtime` and print the text as it comes.

The source is a recording (any format `transcribe` reads, sent as 16 kHz PCM16 at the speed of
speech unless told otherwise) or raw PCM16 mono on stdin (`-`), which is how a microphone is
read without a capture library: `arecord -q -f S16_LE -r 16000 -c 1 -t raw | offline-asr listen -`.
Turns end by the server's VAD; at the end of the input what is left is committed, and the
command waits for every turn's text before it closes the session.
"""

from __future__ import annotations

import base64
import json
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, TextIO
from urllib.parse import urlsplit, urlunsplit

import numpy as np
from websockets.exceptions import ConnectionClosed, InvalidStatus, WebSocketException
from websockets.sync.client import ClientConnection, connect

from offline_asr.asr.audio import decode_audio
from offline_asr.constants import EXIT_CHECK_FAILED
from offline_asr.errors import OfflineAsrError
from offline_asr.pcm import SAMPLE_RATE

CHUNK_SECONDS = 0.1
OPEN_TIMEOUT = 10.0
# After the last audio: time for the server to finish the turns it has (the file API's own
# request limit is the same order).
FINISH_TIMEOUT = 600.0


class ListenError(OfflineAsrError):
    """The server could not be reached, refused the session or a turn failed."""

    exit_code = EXIT_CHECK_FAILED


@dataclass
class ListenOptions:
    url: str = "http://127.0.0.1:8000"
    model: str | None = None
    language: str | None = None
    prompt: str | None = None
    api_key: str | None = None
    vad: bool = True
    speed: float = 1.0  # 1: as fast as speech; 0: as fast as the server takes it
    rate: int = SAMPLE_RATE  # of raw PCM on stdin


@dataclass
class _Progress:
    """What the reader thread has seen."""

    committed: set[str] = field(default_factory=set)
    finished: set[str] = field(default_factory=set)
    failures: list[str] = field(default_factory=list)
    fatal: str | None = None
    updated: int = 0  # session.updated events seen
    changed: threading.Condition = field(default_factory=threading.Condition)


def realtime_url(base: str) -> str:
    """`http://host:port[/v1]` (as given to the OpenAI client) -> `ws://host:port/v1/realtime`."""
    parts = urlsplit(base if "://" in base else f"http://{base}")
    scheme = {"http": "ws", "https": "wss", "ws": "ws", "wss": "wss"}.get(parts.scheme)
    if scheme is None or not parts.netloc:
        raise OfflineAsrError(f"--url {base!r} is not a server address (http://HOST:PORT)")
    path = parts.path.rstrip("/")
    path = path if path.endswith("/v1") else path + "/v1"
    return urlunsplit((scheme, parts.netloc, path + "/realtime", "intent=transcription", ""))


def file_chunks(path: Path) -> tuple[Iterator[bytes], int]:
    """A recording as 100 ms pieces of 16 kHz PCM16 (raises `AudioError` for bad input)."""
    audio = decode_audio(path)
    pcm = np.clip(audio * 32768.0, -32768, 32767).round().astype("<i2").tobytes()
    size = int(SAMPLE_RATE * CHUNK_SECONDS) * 2
    return (pcm[i : i + size] for i in range(0, len(pcm), size)), SAMPLE_RATE


def stream_chunks(stream: BinaryIO, rate: int) -> Iterator[bytes]:
    """Raw PCM16 from a pipe in 100 ms pieces, whole samples only."""
    size = int(rate * CHUNK_SECONDS) * 2
    rest = b""
    while data := stream.read(size):
        data, rest = rest + data, b""
        if len(data) % 2:
            data, rest = data[:-1], data[-1:]
        yield data


def listen(chunks: Iterator[bytes], rate: int, options: ListenOptions, out: TextIO) -> int:
    """Stream the chunks, print each turn's text; returns the number of turns transcribed."""
    headers = {"Authorization": f"Bearer {options.api_key}"} if options.api_key else {}
    url = realtime_url(options.url)
    try:
        socket = connect(url, additional_headers=headers, open_timeout=OPEN_TIMEOUT, max_size=None)
    except InvalidStatus as error:
        status = error.response.status_code
        hint = " (give the server's key: --api-key or OFFLINE_ASR_API_KEY)" if status == 401 else ""
        raise ListenError(f"{url} refused the session: HTTP {status}{hint}") from None
    except (OSError, WebSocketException, TimeoutError) as error:
        raise ListenError(f"cannot reach {url}: {error}; is `offline-asr serve` running?") from None
    with socket:
        _start(socket, rate, options)
        progress = _Progress()
        reader = threading.Thread(target=_read, args=(socket, progress, out), daemon=True)
        reader.start()
        _send_all(socket, chunks, rate, options.speed, progress)
        _finish(socket, progress)
    if progress.fatal is not None:
        raise ListenError(progress.fatal)
    if progress.failures:
        raise ListenError("; ".join(progress.failures))
    return len(progress.finished)


def _start(socket: ClientConnection, rate: int, options: ListenOptions) -> None:
    """session.update, and its answer: `session.updated`, or the server's reason why not."""
    transcription: dict[str, Any] = {"language": options.language, "prompt": options.prompt}
    if options.model:
        transcription["model"] = options.model
    audio_input: dict[str, Any] = {
        "format": {"type": "audio/pcm", "rate": rate}, "transcription": transcription,
        **({} if options.vad else {"turn_detection": None}),
    }  # fmt: skip
    session = {"type": "transcription", "audio": {"input": audio_input}}
    socket.send(json.dumps({"type": "session.update", "session": session}))
    while True:
        try:
            payload = json.loads(socket.recv(timeout=FINISH_TIMEOUT))
        except (ConnectionClosed, TimeoutError) as error:
            raise ListenError(f"the server closed the session: {error}") from None
        if payload.get("type") == "error":
            raise OfflineAsrError(f"the server refused the session: {payload['error']['message']}")
        if payload.get("type") == "session.updated":
            return


def _send_all(
    socket: ClientConnection, chunks: Iterator[bytes], rate: int, speed: float, progress: _Progress
) -> None:
    started, sent_seconds = time.monotonic(), 0.0
    for chunk in chunks:
        if progress.fatal is not None:
            return
        socket.send(json.dumps({"type": "input_audio_buffer.append",
                                "audio": base64.b64encode(chunk).decode()}))  # fmt: skip
        sent_seconds += len(chunk) / 2 / rate
        if speed > 0:
            time.sleep(max(0.0, started + sent_seconds / speed - time.monotonic()))
    socket.send(json.dumps({"type": "input_audio_buffer.commit"}))  # the rest, if any
    # Events are handled in order: the answer to this comes after the commit's own answer.
    socket.send(json.dumps({"type": "session.update", "session": {"type": "transcription"}}))


def _finish(socket: ClientConnection, progress: _Progress) -> None:
    """Wait until every committed turn has its text (or the session ends), then close."""
    deadline = time.monotonic() + FINISH_TIMEOUT

    def pending() -> bool:
        return progress.updated == 0 or bool(progress.committed - progress.finished)

    with progress.changed:
        while progress.fatal is None and pending():
            if not progress.changed.wait(timeout=max(0.0, deadline - time.monotonic())):
                progress.fatal = "the server did not finish the last turns in time"
    socket.close()


def _read(socket: ClientConnection, progress: _Progress, out: TextIO) -> None:
    """Print deltas as they come on a terminal, and every turn's final text as a line."""
    live = out.isatty()
    while True:
        try:
            payload = json.loads(socket.recv())
        except (ConnectionClosed, ValueError):
            with progress.changed:
                if progress.committed - progress.finished and progress.fatal is None:
                    progress.fatal = "the server closed the session before every turn's text"
                progress.changed.notify_all()
            return
        kind = payload.get("type")
        with progress.changed:
            if kind == "session.updated":
                progress.updated += 1
            elif kind == "input_audio_buffer.committed":
                progress.committed.add(payload["item_id"])
            elif kind == "conversation.item.input_audio_transcription.delta" and live:
                out.write(payload.get("delta") or "")
                out.flush()
            elif kind == "conversation.item.input_audio_transcription.completed":
                progress.finished.add(payload["item_id"])
                out.write(("\r\x1b[K" if live else "") + payload["transcript"] + "\n")
                out.flush()
            elif kind == "conversation.item.input_audio_transcription.failed":
                progress.finished.add(payload["item_id"])
                progress.failures.append(payload["error"]["message"])
            elif kind == "error":
                error = payload["error"]
                if error.get("code") != "input_audio_buffer_commit_empty":  # nothing left: fine
                    progress.fatal = error["message"]
            progress.changed.notify_all()


def listen_source(source: str, options: ListenOptions, out: TextIO = sys.stdout) -> int:
    """`source` is a file path or `-` (raw PCM16 mono at `options.rate` on stdin)."""
    if source == "-":
        return listen(stream_chunks(sys.stdin.buffer, options.rate), options.rate, options, out)
    path = Path(source)
    if not path.is_file():
        raise OfflineAsrError(f"{path}: no such file")
    chunks, rate = file_chunks(path)
    return listen(chunks, rate, options, out)
