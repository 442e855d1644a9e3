"""Media for the decoder tests, encoded at test time with PyAV from the shipped speech clip."""

from __future__ import annotations

import io
import wave
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import numpy.typing as npt

from offline_asr.constants import CLIPS_DIR

CLIP = CLIPS_DIR / "en_short.wav"
CLIP_SECONDS = 4.49

Samples = npt.NDArray[np.int16]
"""int16 samples shaped (channels, n)."""


def read_wav(path: Path) -> tuple[Samples, int]:
    """Samples and rate of a 16-bit WAV, read by the standard library, not the code under test."""
    with wave.open(str(path), "rb") as reader:
        data = np.frombuffer(reader.readframes(reader.getnframes()), np.int16)
        return data.reshape(-1, reader.getnchannels()).T.copy(), reader.getframerate()


def wav_bytes(samples: Samples, rate: int) -> bytes:
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as writer:
        writer.setnchannels(len(samples))
        writer.setsampwidth(2)
        writer.setframerate(rate)
        writer.writeframes(np.ascontiguousarray(samples.T).tobytes())
    return buffer.getvalue()


def encode(
    path: Path,
    samples: Samples,
    rate: int,
    codec: str,
    *,
    container: str | None = None,
    video: str | None = None,
    options: dict[str, str] | None = None,
    vbr: bool = False,
    late: float = 0.0,
) -> Path:
    """Encode int16 samples; `video` adds a picture stream, and the sound starts `late` seconds
    after it."""
    layout = "mono" if len(samples) == 1 else "stereo"
    with av.open(str(path), "w", format=container, options=options or {}) as out:
        audio = out.add_stream(codec, rate=rate, layout=layout)
        assert isinstance(audio, av.AudioStream)
        pictures = None if video is None else _picture_stream(out, video)
        audio.codec_context.qscale = vbr
        formats = audio.codec_context.codec.audio_formats
        assert formats
        resampler = av.AudioResampler(
            formats[0].name, layout, rate, frame_size=audio.codec_context.frame_size or None
        )
        frame = av.AudioFrame.from_ndarray(
            np.ascontiguousarray(samples.T).reshape(1, -1), format="s16", layout=layout
        )
        frame.sample_rate, frame.pts, frame.time_base = rate, round(late * rate), Fraction(1, rate)
        for piece in [*resampler.resample(frame), *resampler.resample(None), None]:
            out.mux(audio.encode(piece))
        if pictures is not None:
            _write_pictures(out, pictures, late + samples.shape[1] / rate)
    return path


def video_only(path: Path, seconds: float) -> Path:
    with av.open(str(path), "w") as out:
        _write_pictures(out, _picture_stream(out, "libx264"), seconds)
    return path


def _picture_stream(out: av.container.OutputContainer, codec: str) -> av.VideoStream:
    """A small video stream; streams must all exist before the first packet is written."""
    stream = out.add_stream(codec, rate=10)
    assert isinstance(stream, av.VideoStream)
    stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
    return stream


def _write_pictures(
    out: av.container.OutputContainer, stream: av.VideoStream, seconds: float
) -> None:
    for index in range(round(seconds * 10)):
        picture = np.full((48, 64, 3), index * 5 % 256, np.uint8)
        out.mux(stream.encode(av.VideoFrame.from_ndarray(picture, format="rgb24")))
    out.mux(stream.encode(None))


def resample(samples: Samples, rate: int, new_rate: int) -> Samples:
    """Change the rate with PyAV's resampler, as another program's export would."""
    layout = "mono" if len(samples) == 1 else "stereo"
    resampler = av.AudioResampler("s16", layout, new_rate)
    frame = av.AudioFrame.from_ndarray(
        np.ascontiguousarray(samples.T).reshape(1, -1), format="s16", layout=layout
    )
    frame.sample_rate = rate
    pieces = [*resampler.resample(frame), *resampler.resample(None)]
    data = np.concatenate([piece.to_ndarray().reshape(-1) for piece in pieces])
    return np.asarray(data.reshape(-1, len(samples)).T, dtype=np.int16)


def cut(path: Path, fraction: float, target: Path) -> Path:
    """The first `fraction` of a file's bytes, as an interrupted copy leaves it."""
    data = path.read_bytes()
    target.write_bytes(data[: int(len(data) * fraction)])
    return target


def damage(path: Path, target: Path, size: int = 2000) -> Path:
    """Overwrite `size` bytes in the middle with random garbage."""
    data = bytearray(path.read_bytes())
    middle = len(data) // 2
    data[middle : middle + size] = np.random.default_rng(7).bytes(size)
    target.write_bytes(bytes(data))
    return target


def long_russian(path: Path, repeats: int = 17) -> Path:
    """The Russian clip `repeats` times with half-second pauses: over a minute, so GigaAM cuts
    it into chunks at the pauses the Silero VAD finds."""
    speech, rate = read_wav(CLIPS_DIR / "ru_short.wav")
    pause = np.zeros((1, rate // 2), np.int16)
    path.write_bytes(wav_bytes(np.concatenate([speech, pause] * repeats, axis=1), rate))
    return path


def long_speech_wav(path: Path, seconds: float, rate: int = 8_000) -> Path:
    """The speech clip at `rate`, each time followed by half a second of quiet, repeated to
    `seconds`: a long telephone-quality recording that every engine finds speech in."""
    samples, clip_rate = read_wav(CLIP)
    speech = resample(samples[:1], clip_rate, rate)[0]
    unit = np.concatenate([speech, np.zeros(rate // 2, np.int16)])
    total = round(seconds * rate)
    with wave.open(str(path), "wb") as writer:
        writer.setnchannels(1)
        writer.setsampwidth(2)
        writer.setframerate(rate)
        for start in range(0, total, len(unit)):
            writer.writeframes(unit[: total - start].tobytes())
    return path
