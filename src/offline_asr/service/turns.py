"""The input audio buffer of a live session and where its turns begin and end.

Audio arrives as PCM16 mono at the session's rate (24 kHz as OpenAI sends it, or 16 kHz). The
buffer keeps those bytes as they came: a turn's audio is a slice of them, wrapped as a WAV file
and transcribed exactly as an upload of that file would be. Voice activity is judged on a 16 kHz
copy, one 32 ms window at a time, by the Silero VAD that faster-whisper ships (the same ONNX
file the GigaAM engine cuts long audio with), its state carried from window to window.

Positions are sample counts at the session's rate from the first byte of the session; events
report them in milliseconds. Turn boundaries found by the VAD fall on whole milliseconds, so
`audio_start_ms` and `audio_end_ms` name the turn's samples exactly.
"""

from __future__ import annotations

import io
import wave
from dataclasses import dataclass
from typing import Any

import av
import numpy as np
import numpy.typing as npt
from faster_whisper.vad import get_vad_model

from offline_asr.pcm import SAMPLE_RATE

RATES = (24_000, 16_000)
"""Input rates accepted: OpenAI's 24 kHz, and 16 kHz, the models' own."""
BYTES_PER_SAMPLE = 2
WINDOW = 512  # samples at 16 kHz per Silero decision (32 ms)
WINDOW_MS = WINDOW * 1000 // SAMPLE_RATE
CONTEXT = 64  # samples of the previous window Silero sees before each one
HYSTERESIS = 0.15  # below threshold - this, a window is silence (Silero's own default gap)


@dataclass(frozen=True)
class ServerVad:
    """OpenAI's `server_vad` turn detection, with OpenAI's defaults."""

    threshold: float = 0.5
    prefix_padding_ms: int = 300
    silence_duration_ms: int = 500


@dataclass(frozen=True)
class SpeechStarted:
    audio_start_ms: int


@dataclass(frozen=True)
class Turn:
    """A finished turn: its PCM16 bytes and where they sit in the session."""

    pcm: bytes
    rate: int
    start: int  # samples
    end: int

    @property
    def audio_start_ms(self) -> int:
        return self.start * 1000 // self.rate

    @property
    def audio_end_ms(self) -> int:
        return self.end * 1000 // self.rate

    @property
    def seconds(self) -> float:
        return (self.end - self.start) / self.rate

    def wav(self) -> bytes:
        return wav_bytes(self.pcm, self.rate)


TurnEvent = SpeechStarted | Turn


def wav_bytes(pcm: bytes, rate: int) -> bytes:
    """PCM16 mono as a WAV file: what the file API would be sent for the same audio."""
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as writer:
        writer.setnchannels(1)
        writer.setsampwidth(BYTES_PER_SAMPLE)
        writer.setframerate(rate)
        writer.writeframes(pcm)
    return buffer.getvalue()


class SileroStream:
    """Silero VAD over a stream: speech probabilities of consecutive 32 ms windows at 16 kHz.

    Window by window it gives what faster-whisper's batch call gives for the whole audio.
    """

    def __init__(self) -> None:
        self._session: Any = get_vad_model().session
        self._state = np.zeros((2, 1, 1, 128), np.float32)
        self._context = np.zeros(CONTEXT, np.float32)
        self._pending = np.zeros(0, np.float32)

    def feed(self, samples: npt.NDArray[np.float32]) -> list[float]:
        """Probabilities of every window completed by these samples."""
        pending = np.concatenate([self._pending, samples])
        count = len(pending) // WINDOW
        self._pending = pending[count * WINDOW :]
        probabilities = []
        for index in range(count):
            window = pending[index * WINDOW : (index + 1) * WINDOW]
            framed = np.concatenate([self._context, window])[None]
            out, h, c = self._session.run(
                None, {"input": framed, "h": self._state[0], "c": self._state[1]}
            )
            self._state = np.stack([h, c])
            self._context = window[-CONTEXT:]
            probabilities.append(float(np.asarray(out).reshape(-1)[0]))
        return probabilities


class _To16k:
    """The session's PCM16 as 16 kHz float32, for the VAD (a resampler with its state kept)."""

    def __init__(self, rate: int) -> None:
        self.rate = rate
        self._resampler = (
            None if rate == SAMPLE_RATE else av.AudioResampler("flt", "mono", SAMPLE_RATE)
        )

    def convert(self, pcm: bytes) -> npt.NDArray[np.float32]:
        samples = np.frombuffer(pcm, np.int16)
        if self._resampler is None:
            return samples.astype(np.float32) / 32768.0
        frame = av.AudioFrame.from_ndarray(samples[None], format="s16", layout="mono")
        frame.sample_rate = self.rate
        pieces = [out.to_ndarray()[0] for out in self._resampler.resample(frame)]
        return np.concatenate(pieces) if pieces else np.zeros(0, np.float32)


class InputBuffer:
    """The uncommitted audio of a session and, with server VAD, its turns.

    `append` returns the turn events the new audio completed: `SpeechStarted` when speech
    begins (the padding before it included), a `Turn` once `silence_duration_ms` of silence
    followed it. Without VAD (`vad=None`) turns end only by `commit`. Outside speech the buffer
    keeps just the padding, so silence does not pile up.
    """

    def __init__(self, rate: int, vad: ServerVad | None) -> None:
        self.rate, self.vad = rate, vad
        self._pcm = bytearray()
        self._start = 0  # session position of the buffer's first sample
        self._speech_from: int | None = None  # start of the current turn, when speaking
        self._silence_ms = 0
        self._vad_ms = 0  # how far the VAD has judged
        self._to16k = _To16k(rate)
        self._silero = SileroStream() if vad is not None else None

    @property
    def end(self) -> int:
        """Session position after the last sample received."""
        return self._start + len(self._pcm) // BYTES_PER_SAMPLE

    @property
    def size(self) -> int:
        """Bytes held."""
        return len(self._pcm)

    @property
    def held_ms(self) -> int:
        """Milliseconds of audio held."""
        return len(self._pcm) // BYTES_PER_SAMPLE * 1000 // self.rate

    @property
    def quiet(self) -> bool:
        """With VAD, the latest window was silence (a turn in progress may be about to end)."""
        return self._silence_ms > 0

    def reconfigure(self, rate: int, vad: ServerVad | None) -> None:
        """Another rate (only while empty) or turn detection; a turn in progress starts over."""
        if rate != self.rate:
            assert not self._pcm, "the rate changes only while the buffer is empty"
            self._start = self._start * rate // self.rate
            self._to16k = _To16k(rate)
        self.rate, self.vad = rate, vad
        self._silero = SileroStream() if vad is not None else None
        self._speech_from, self._silence_ms = None, 0

    def ms_to_samples(self, ms: int) -> int:
        return ms * self.rate // 1000

    def append(self, pcm: bytes) -> list[TurnEvent]:
        self._pcm += pcm
        if self.vad is None or self._silero is None:
            return []
        events: list[TurnEvent] = []
        for probability in self._silero.feed(self._to16k.convert(pcm)):
            self._vad_ms += WINDOW_MS
            events.extend(self._judge(probability, self.vad))
        if self._speech_from is None:
            keep_from = self.ms_to_samples(max(0, self._vad_ms - self.vad.prefix_padding_ms))
            self._drop_before(keep_from)
        return events

    def _judge(self, probability: float, vad: ServerVad) -> list[TurnEvent]:
        if self._speech_from is None:
            if probability < vad.threshold:
                return []
            onset_ms = self._vad_ms - WINDOW_MS
            start = max(self._start, self.ms_to_samples(onset_ms - vad.prefix_padding_ms))
            self._speech_from, self._silence_ms = start, 0
            return [SpeechStarted(start * 1000 // self.rate)]
        if probability >= vad.threshold - HYSTERESIS:
            self._silence_ms = 0
            return []
        self._silence_ms += WINDOW_MS
        if self._silence_ms < vad.silence_duration_ms:
            return []
        return [self._cut(self._speech_from, self.ms_to_samples(self._vad_ms))]

    def current(self) -> bytes | None:
        """The audio of the turn in progress so far, for partial text: without VAD everything
        held, with VAD the speech since it started (None outside speech)."""
        if self.vad is None:
            return bytes(self._pcm) if self._pcm else None
        if self._speech_from is None:
            return None
        return bytes(self._pcm[(self._speech_from - self._start) * BYTES_PER_SAMPLE :])

    def commit(self) -> Turn:
        """Everything held becomes a turn (the client's `input_audio_buffer.commit`)."""
        start = self._start if self._speech_from is None else self._speech_from
        return self._cut(max(start, self._start), self.end)

    def clear(self) -> None:
        self._drop_before(self.end)
        self._speech_from = None

    def _cut(self, start: int, end: int) -> Turn:
        end = min(end, self.end)
        first = (start - self._start) * BYTES_PER_SAMPLE
        pcm = bytes(self._pcm[first : (end - self._start) * BYTES_PER_SAMPLE])
        self._drop_before(end)
        self._speech_from = None
        return Turn(pcm, self.rate, start, end)

    def _drop_before(self, position: int) -> None:
        if position <= self._start:
            return
        del self._pcm[: (position - self._start) * BYTES_PER_SAMPLE]
        self._start = position
