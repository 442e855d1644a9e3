"""Audio input: anything FFmpeg reads becomes 16 kHz mono float32, or an error that says why not.

Decoding goes frame by frame through PyAV, so the size and length limits stop a huge input
early. Damage is refused rather than transcribed: a file cut short, garbage inside or a silent
recording would otherwise give a partial or empty transcript that looks like a good one.
"""

from __future__ import annotations

import io
import math
import os
import struct
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, NoReturn

import av
import numpy as np
import numpy.typing as npt
from av.container import InputContainer
from av.error import FFmpegError
from av.stream import Disposition

from offline_asr.config import Settings
from offline_asr.errors import OfflineAsrError
from offline_asr.pcm import SAMPLE_RATE, Audio

# Digital silence: no sample above -70 dBFS (about ten steps of 16-bit audio).
SILENCE_PEAK = 10 ** (-70 / 20)
# A file may end this much before the length its header states (codec delay, rounding) before
# it counts as cut short; samples past the stated end, up to this much, are codec padding.
LENGTH_TOLERANCE = 0.5
# Consecutive frames further apart than this mean audio is missing from the middle.
GAP_TOLERANCE = 0.1
# Average the channels when mixing down instead of summing them past full scale.
_DOWNMIX = {"rematrix_maxval": "1.0"}
# Floats beyond this are integer samples cast to float, not audio in [-1, 1].
_FLOAT_SCALE_LIMIT = 2.0
_INT_SCALE = {np.dtype(np.int16): 32768.0, np.dtype(np.int32): 2147483648.0}
_MAX_CHANNELS = 8
# Samples per resampler call: large enough to spread its per-call cost, small enough to stop
# promptly at the length limit.
_BLOCK = 1 << 16
# Seconds of room for audio whose length the container does not report; grown when needed.
_UNKNOWN_LENGTH = 600
# FFmpeg formats whose header states the audio's length; for the others (Ogg, raw AAC...) the
# length FFmpeg reports comes from the last page or the bitrate and says nothing about a cut.
_STATED_LENGTH = {"flac", "mp3", "mov,mp4,m4a,3gp,3g2,mj2", "matroska,webm"}
# First bytes of formats FFmpeg knows: such a file that fails to open is damaged, not foreign.
_SIGNATURES = (
    (8, b"WAVE", "WAV"),
    (0, b"fLaC", "FLAC"),
    (0, b"OggS", "Ogg"),
    (0, b"ID3", "MP3"),
    (0, b"\x1aE\xdf\xa3", "Matroska/WebM"),
    (0, b"FORM", "AIFF"),
    (4, b"ftyp", "MP4/M4A"),
)
_REDO = "copy, download or export it again"

_SETTINGS = Settings.model_fields  # one place for the defaults: the settings table


@dataclass(frozen=True)
class AudioLimits:
    """What decoding refuses: inputs over `max_bytes`, audio over `max_seconds`."""

    max_bytes: int = _SETTINGS["max_audio_bytes"].default
    max_seconds: float = _SETTINGS["max_audio_seconds"].default

    @classmethod
    def from_settings(cls, settings: Settings) -> AudioLimits:
        """`OFFLINE_ASR_MAX_AUDIO_BYTES` and `OFFLINE_ASR_MAX_AUDIO_SECONDS` as read at the edge."""
        return cls(settings.max_audio_bytes, settings.max_audio_seconds)


class AudioError(OfflineAsrError):
    """The input cannot be used as audio; the message names it and says why."""


class EmptyAudioError(AudioError):
    """No bytes at all, or a valid file without a single sample."""


class SilentAudioError(AudioError):
    """Decodes, but is digital silence: a muted microphone or the wrong input channel."""


class CorruptAudioError(AudioError):
    """A known format whose data does not decode, or with audio missing from the middle."""


class TruncatedAudioError(AudioError):
    """The file ends before its header says it should: an interrupted copy or recording."""


class NotAudioError(AudioError):
    """Not a media file, or one without an audio stream."""


class LinkedMediaError(AudioError):
    """A playlist or reference file: FFmpeg would open the files and URLs it names."""


class AudioTooLargeError(AudioError):
    """More bytes than `AudioLimits.max_bytes`; refused before decoding."""


class AudioTooLongError(AudioError):
    """Longer than `AudioLimits.max_seconds`; decoding stops as soon as the limit is passed."""


def duration_seconds(audio: Audio) -> float:
    return len(audio) / SAMPLE_RATE


def decode_audio(
    source: str | Path | bytes | BinaryIO,
    *,
    limits: AudioLimits | None = None,
    name: str | None = None,
) -> Audio:
    """Decode a recording, or the sound track of a video, to 16 kHz mono float32 in [-1, 1].

    `source` is a path, the file's bytes or a binary stream (a seekable one is read from its
    start); `name` stands for it in messages. Raises an `AudioError` subclass saying what is
    wrong with the input; `limits` defaults to `AudioLimits()` (the settings' defaults).
    """
    limits = limits or AudioLimits()
    label = name or _label(source)
    with _open_source(source, label) as (file, size):
        if size == 0:
            raise EmptyAudioError(f"{label} is empty (0 bytes); the recording or upload failed")
        if size is None:
            return _decode(_CappedReader(file, label, limits.max_bytes), label, limits, _Header())
        if size > limits.max_bytes:
            raise AudioTooLargeError(
                f"{label} is {_megabytes(size)}, over the {_megabytes(limits.max_bytes)} limit; "
                "split it, or raise OFFLINE_ASR_MAX_AUDIO_BYTES"
            )
        header = _inspect(file, size, label)
        file.seek(0)
        return _decode(file, label, limits, header)


def from_array(
    samples: npt.ArrayLike, sample_rate: int, *, limits: AudioLimits | None = None
) -> Audio:
    """Bring samples a Python caller holds to 16 kHz mono float32, with `decode_audio`'s checks.

    int16 and int32 are scaled to [-1, 1]; float32 and float64 must be in [-1, 1] already. A 2-D
    array is (samples, channels), or (channels, samples) when it has at most 8 rows and more
    columns than rows; the channels are averaged.
    """
    limits = limits or AudioLimits()
    label = "the audio array"
    if sample_rate <= 0:
        raise AudioError(f"sample_rate must be positive (samples per second), not {sample_rate}")
    mono = _mono(np.asarray(samples), label)
    if len(mono) / sample_rate > limits.max_seconds:
        raise _too_long(label, len(mono) / sample_rate, limits)
    collector = _Collector(label, limits, len(mono) / sample_rate)
    for start in range(0, len(mono), _BLOCK):
        frame = av.AudioFrame.from_ndarray(
            mono[None, start : start + _BLOCK], format="flt", layout="mono"
        )
        frame.sample_rate = sample_rate
        collector.add(frame)
    return _checked(collector.finish(), label)


def _label(source: str | Path | bytes | BinaryIO) -> str:
    if isinstance(source, str | Path):
        return str(source)
    if isinstance(source, bytes | bytearray):
        return "the audio data"
    name = getattr(source, "name", None)
    return name if isinstance(name, str) else "the audio stream"


@contextmanager
def _open_source(
    source: str | Path | bytes | BinaryIO, label: str
) -> Iterator[tuple[BinaryIO, int | None]]:
    """The input as a binary stream and its size in bytes (None for a one-way stream)."""
    if isinstance(source, bytes | bytearray):
        yield io.BytesIO(source), len(source)
    elif isinstance(source, str | Path):
        with _open_file(Path(source), label) as file:
            yield file, os.fstat(file.fileno()).st_size
    elif source.seekable():
        size = source.seek(0, io.SEEK_END)
        source.seek(0)
        yield source, size
    else:
        yield source, None


def _open_file(path: Path, label: str) -> BinaryIO:
    try:
        return path.open("rb")
    except OSError as error:
        raise AudioError(f"cannot read {label}: {error.strerror}") from error


class _CappedReader:
    """A one-way stream that stops with `AudioTooLargeError` once it passes the byte limit."""

    def __init__(self, stream: BinaryIO, label: str, max_bytes: int) -> None:
        self._stream = stream
        self._label = label
        self._max_bytes = max_bytes
        self.count = 0

    def read(self, size: int = -1) -> bytes:
        data = self._stream.read(size)
        self.count += len(data)
        if self.count > self._max_bytes:
            raise AudioTooLargeError(
                f"{self._label} is over the {_megabytes(self._max_bytes)} limit; "
                "split it, or raise OFFLINE_ASR_MAX_AUDIO_BYTES"
            )
        return data


@dataclass(frozen=True)
class _Header:
    """What the first bytes tell before FFmpeg opens the file (nothing for a one-way stream)."""

    kind: str | None = None
    mp3_length_stated: bool = False


def _read_at(file: BinaryIO, offset: int, size: int) -> bytes:
    file.seek(offset)
    return file.read(size)


def _inspect(file: BinaryIO, size: int, label: str) -> _Header:
    """Name the format from its signature and refuse a WAV or MP4 cut short.

    FFmpeg quietly shortens a cut WAV to the data present and cannot open an MP4 that lost its
    index, so for these two the chunk and box sizes are compared with the file's size here.
    """
    head = _read_at(file, 0, 12)
    kind = next((k for at, magic, k in _SIGNATURES if head[at : at + len(magic)] == magic), None)
    if kind == "WAV":
        _check_wav(file, size, label)
    elif kind == "MP4/M4A":
        _check_boxes(file, size, label)
    return _Header(kind, _mp3_length_stated(file))


def _check_wav(file: BinaryIO, size: int, label: str) -> None:
    offset, byte_rate = 12, 0
    while offset + 8 <= size:
        data = _read_at(file, offset, 20)
        chunk, length = struct.unpack_from("<4sI", data)
        if chunk == b"fmt " and len(data) == 20:
            (byte_rate,) = struct.unpack_from("<I", data, 16)
        elif chunk == b"data":
            held = size - offset - 8
            # 0 and 0xFFFFFFFF: written as a stream, the length was never filled in.
            if length in (0, 0xFFFF_FFFF) or held >= length:
                return
            promised, present = (
                _clock(count / byte_rate) if byte_rate else f"{count:,} bytes"
                for count in (length, held)
            )
            raise TruncatedAudioError(
                f"{label} is cut short: its header promises {promised} of audio but the file "
                f"holds {present}; {_REDO}"
            )
        offset += 8 + length + (length & 1)


def _check_boxes(file: BinaryIO, size: int, label: str) -> None:
    offset = 0
    while offset + 8 <= size:
        data = _read_at(file, offset, 16)
        length = struct.unpack(">I", data[:4])[0]
        if length == 1 and len(data) == 16:  # the real size follows as 64 bits
            length = struct.unpack(">Q", data[8:16])[0]
        if length < 8:  # 0: the last box runs to the end of the file
            return
        if offset + length > size:
            raise TruncatedAudioError(
                f"{label} is cut short: the file has {size:,} bytes but its MP4 structure "
                f"needs {offset + length:,}; {_REDO}"
            )
        offset += length


def _mp3_length_stated(file: BinaryIO) -> bool:
    """Whether the first MP3 frame is a Xing, Info or VBRI header with the frame count.

    Without one FFmpeg guesses the length from the first frame's bitrate, wrong for VBR files.
    """
    head = _read_at(file, 0, 10)
    offset = 0
    if head[:3] == b"ID3" and len(head) == 10:
        tag_size = (head[6] << 21) | (head[7] << 14) | (head[8] << 7) | head[9]
        offset = 10 + tag_size + (10 if head[5] & 0x10 else 0)
    data = _read_at(file, offset, 4096)
    sync = data.find(b"\xff")  # padding may come before the first frame
    return sync >= 0 and any(tag in data[sync : sync + 40] for tag in (b"Xing", b"Info", b"VBRI"))


def _decode(
    file: BinaryIO | _CappedReader, label: str, limits: AudioLimits, header: _Header
) -> Audio:
    """Open with FFmpeg, decode the best audio stream, then judge what came out."""
    try:
        container = av.open(file, "r", metadata_errors="replace", io_open=_only_this_file(label))
    except FFmpegError as error:
        if isinstance(file, _CappedReader) and file.count == 0:
            raise EmptyAudioError(
                f"{label} is empty (0 bytes); the recording or upload failed"
            ) from error
        if header.kind is not None:
            raise CorruptAudioError(
                f"{label} looks like a {header.kind} file but FFmpeg cannot read it: it is "
                f"damaged; {_REDO}"
            ) from error
        raise NotAudioError(
            f"{label} is not an audio or video file FFmpeg can read; give a recording (WAV, "
            "FLAC, MP3, OGG/Opus, M4A...) or a video with sound"
        ) from error
    with container:
        stream = container.streams.best("audio")
        if not isinstance(stream, av.AudioStream):
            kinds = " and ".join(sorted({s.type for s in container.streams})) or "nothing"
            raise NotAudioError(
                f"{label} has no audio stream (FFmpeg reads it as {container.format.long_name} "
                f"holding {kinds}); give a recording or a video with sound"
            )
        declared_end = _declared_end(container, stream, header)
        start = float((stream.start_time or 0) * (stream.time_base or 0))
        if declared_end is not None and declared_end - start > limits.max_seconds:
            raise _too_long(label, declared_end - start, limits)
        expected = (
            _estimated_seconds(container, stream) if declared_end is None else declared_end - start
        )
        collector = _Collector(label, limits, expected)
        for packet in _packets(container, stream, collector):
            try:
                frames = stream.decode(packet)
            except FFmpegError:
                collector.damaged()
                continue
            for frame in frames:
                collector.add(frame)
        audio = collector.finish()
    seconds = duration_seconds(audio)
    if collector.damaged_at is not None:
        if not len(audio):
            raise CorruptAudioError(f"{label} is damaged: none of its audio decodes; {_REDO}")
        raise TruncatedAudioError(
            f"{label} breaks off at {_clock(collector.damaged_at)}: the rest does not decode "
            f"(cut short or damaged at the end); {_REDO}"
        )
    if declared_end is not None:
        declared = declared_end - collector.start
        if seconds < declared - LENGTH_TOLERANCE:
            raise TruncatedAudioError(
                f"{label} is cut short: it should hold {_clock(declared)} of audio but ends "
                f"after {_clock(seconds)}; {_REDO}"
            )
        if seconds - declared <= LENGTH_TOLERANCE:
            audio = audio[: round(declared * SAMPLE_RATE)]
    return _checked(audio, label)


def _only_this_file(label: str) -> Callable[[str, int, dict[str, str]], NoReturn]:
    """FFmpeg's `io_open` for every file or URL other than the input itself: refused. An HLS
    playlist (`.m3u8`) would otherwise have FFmpeg fetch its segments from any host."""

    def refuse(url: str, flags: int, options: dict[str, str]) -> NoReturn:
        raise LinkedMediaError(
            f"{label} refers to other media ({url[:200]}): it is a playlist or a reference "
            "file, and offline-asr reads only the file it is given; give the recording itself"
        )

    return refuse


def _packets(
    container: InputContainer, stream: av.AudioStream, collector: _Collector
) -> Iterator[av.Packet[av.AudioStream]]:
    """The stream's packets; a container that breaks off counts as damage at that point."""
    try:
        yield from container.demux(stream)
    except FFmpegError:
        collector.damaged()


def _declared_end(
    container: InputContainer, stream: av.AudioStream, header: _Header
) -> float | None:
    """Where the file says its audio ends on the stream's clock, or None when FFmpeg could only
    guess it. The clock need not start at 0: a video's sound may begin after its pictures."""
    kind = container.format.name
    if kind not in _STATED_LENGTH or (kind == "mp3" and not header.mp3_length_stated):
        return None
    if stream.duration is not None and stream.time_base is not None:
        return float(((stream.start_time or 0) + stream.duration) * stream.time_base)
    tagged = stream.metadata.get("DURATION")  # Matroska writers tag each track with its end
    if tagged is not None:
        try:
            hours, minutes, secs = tagged.split(":")
            return int(hours) * 3600 + int(minutes) * 60 + float(secs)
        except ValueError:
            return None
    others = [
        s
        for s in container.streams
        if s is not stream and not s.disposition & Disposition.attached_pic
    ]
    if not others and container.duration is not None:  # Matroska's segment duration
        return container.duration / av.time_base
    return None


def _estimated_seconds(container: InputContainer, stream: av.AudioStream) -> float | None:
    """FFmpeg's guess of the audio's length (from the size, the last page), to size the buffer."""
    if stream.duration is not None and stream.time_base is not None:
        return float(stream.duration * stream.time_base)
    if container.duration is not None:
        return float(container.duration / av.time_base)
    return None


class _Collector:
    """Resample decoded frames to 16 kHz mono into one float32 buffer, enforcing the length limit
    as they come.

    The buffer is sized from the length the container reports (capped at the limit) and grows by
    reallocation only when that was too little, so an hour of audio costs about one copy of
    itself (230 MB), not a list of pieces plus their concatenation. Frames gather in a FIFO and
    go to the resampler in blocks: one call per decoded frame would cost several times the
    decoding itself.
    """

    def __init__(self, label: str, limits: AudioLimits, expected_seconds: float | None) -> None:
        self._label = label
        self._limits = limits
        self._max_samples = limits.max_seconds * SAMPLE_RATE
        guess = _UNKNOWN_LENGTH if expected_seconds is None else expected_seconds + 1
        self._audio: Audio = np.empty(int(min(self._max_samples, guess * SAMPLE_RATE)), np.float32)
        self._samples = 0
        self._position = 0.0  # seconds of audio taken in
        self._fifo: av.AudioFifo | None = None
        self._resampler: av.AudioResampler | None = None
        self._input: tuple[str, str, int] | None = None
        self._tick = 0.0  # seconds per timestamp step; 0 when the frames carry no time base
        self._end: float | None = None
        self.start = 0.0  # where the first frame sits on the stream's clock
        self.damaged_at: float | None = None

    def damaged(self) -> None:
        """A packet did not decode: harmless only if nothing decodes after it (see `add`)."""
        if self.damaged_at is None:
            self.damaged_at = self._position

    def add(self, frame: av.AudioFrame) -> None:
        if self.damaged_at is not None:
            raise CorruptAudioError(
                f"{self._label} is damaged: the audio at {_clock(self.damaged_at)} does not "
                f"decode; {_REDO}"
            )
        kind = (frame.format.name, frame.layout.name, frame.sample_rate)
        if kind != self._input:  # a resampler takes one input format; some streams change it
            self._drain()
            self._fifo = av.AudioFifo()
            self._resampler = av.AudioResampler("flt", "mono", SAMPLE_RATE, options=_DOWNMIX)
            self._input = kind
            self._tick = float(frame.time_base or 0)
        if frame.pts is not None and self._tick:
            start = frame.pts * self._tick
            if self._end is None:
                self.start = start
            elif start - self._end > GAP_TOLERANCE:
                raise CorruptAudioError(
                    f"{self._label} is damaged: {start - self._end:.1f} s of audio is missing "
                    f"after {_clock(self._position)}; {_REDO}"
                )
            self._end = start + frame.samples / frame.sample_rate
        self._position += frame.samples / frame.sample_rate
        frame.pts = None  # the FIFO would insist on gapless timestamps; gaps are checked above
        assert self._fifo is not None
        self._fifo.write(frame)
        for block in self._fifo.read_many(_BLOCK):
            self._resample(block)

    def finish(self) -> Audio:
        """The samples, in a buffer trimmed to their number (no copy)."""
        self._drain()
        self._audio.resize(self._samples, refcheck=False)
        return self._audio

    def _drain(self) -> None:
        """Resample what the FIFO still holds, then flush the resampler."""
        if self._fifo is None:
            return
        rest = self._fifo.read()
        if rest is not None:
            self._resample(rest)
        self._resample(None)

    def _resample(self, frame: av.AudioFrame | None) -> None:
        assert self._resampler is not None
        for out in self._resampler.resample(frame):
            chunk = out.to_ndarray()[0]
            end = self._samples + len(chunk)
            if end > self._max_samples:
                raise AudioTooLongError(
                    f"{self._label} is longer than the {_clock(self._limits.max_seconds)} limit "
                    "(decoding stopped there); split it, or raise OFFLINE_ASR_MAX_AUDIO_SECONDS"
                )
            if end > len(self._audio):
                # realloc: large buffers are moved by remapping pages, not copied
                grown = min(max(2 * len(self._audio), end), self._max_samples)
                self._audio.resize(int(grown), refcheck=False)
            self._audio[self._samples : end] = chunk
            self._samples = end


def _mono(array: npt.NDArray[Any], label: str) -> Audio:
    """Samples as contiguous mono float32: integers scaled, channels averaged."""
    if array.ndim == 1:
        array = array[:, None]
    elif array.ndim == 2 and array.shape[1] > _MAX_CHANNELS >= array.shape[0]:
        array = array.T
    if array.ndim != 2 or array.shape[1] > _MAX_CHANNELS:
        raise AudioError(
            f"{label} has shape {array.shape}; give (samples,) or (samples, channels) with at "
            f"most {_MAX_CHANNELS} channels"
        )
    if array.dtype in _INT_SCALE:
        scaled = array / _INT_SCALE[array.dtype]
    elif array.dtype in (np.float32, np.float64):
        if not np.isfinite(array).all():
            raise AudioError(f"{label} contains NaN or infinite values")
        peak = float(np.abs(array).max(initial=0.0))
        if peak > _FLOAT_SCALE_LIMIT:
            raise AudioError(
                f"{label} has float samples up to {peak:g}, but floats must lie in [-1, 1]; "
                "pass the integer samples as they are (int16 or int32) to have them scaled"
            )
        scaled = array
    else:
        raise AudioError(
            f"{label} has samples of type {array.dtype}; give int16, int32, float32 or float64"
        )
    return np.ascontiguousarray(scaled.mean(axis=1), dtype=np.float32)


def _checked(audio: Audio, label: str) -> Audio:
    """Refuse no samples and digital silence; clip codec overshoot to [-1, 1]."""
    if not len(audio):
        raise EmptyAudioError(f"{label} holds no audio samples; the recording may have failed")
    peak = max(float(audio.max()), -float(audio.min()))  # np.abs would copy the whole audio
    if peak < SILENCE_PEAK:
        level = f"loudest sample {20 * math.log10(peak):.0f} dBFS" if peak else "all zeros"
        raise SilentAudioError(
            f"{label} contains only silence ({level}); check that the microphone was on and the "
            "right input was recorded"
        )
    return np.clip(audio, -1.0, 1.0, out=audio)


def _too_long(label: str, seconds: float, limits: AudioLimits) -> AudioTooLongError:
    return AudioTooLongError(
        f"{label} lasts {_clock(seconds)}, over the {_clock(limits.max_seconds)} limit; split "
        "it, or raise OFFLINE_ASR_MAX_AUDIO_SECONDS"
    )


def _clock(seconds: float) -> str:
    """`4.5 s` below a minute, else `h:mm:ss`."""
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(round(seconds), 60)
    return f"{minutes // 60}:{minutes % 60:02d}:{secs:02d}"


def _megabytes(size: int) -> str:
    return f"{size / 1e6:,.1f} MB" if size >= 1_000_000 else f"{size:,} bytes"
