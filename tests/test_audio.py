"""Audio decoding: every container to 16 kHz mono float32, and a clear error for each bad input."""

from __future__ import annotations

import io
import re
import struct
import zlib
from pathlib import Path

import av
import numpy as np
import numpy.typing as npt
import pytest

import offline_asr.asr.audio as audio_module
from offline_asr.asr.audio import (
    LENGTH_TOLERANCE,
    AudioError,
    AudioLimits,
    AudioTooLargeError,
    AudioTooLongError,
    CorruptAudioError,
    EmptyAudioError,
    NotAudioError,
    SilentAudioError,
    TruncatedAudioError,
    decode_audio,
    duration_seconds,
    from_array,
)
from offline_asr.config import Settings
from offline_asr.constants import EXIT_BAD_INPUT
from offline_asr.pcm import SAMPLE_RATE
from support.audio_fixtures import (
    CLIP,
    CLIP_SECONDS,
    cut,
    damage,
    encode,
    long_speech_wav,
    read_wav,
    resample,
    video_only,
    wav_bytes,
)
from support.memory import peak_growth_mb

# name -> (audio codec, container format, video codec)
FORMATS: dict[str, tuple[str, str | None, str | None]] = {
    "clip.flac": ("flac", None, None),
    "clip.mp3": ("libmp3lame", None, None),
    "clip.ogg": ("libopus", None, None),
    "clip.m4a": ("aac", "ipod", None),
    "clip.mp4": ("aac", None, "libx264"),
    "clip.mkv": ("libopus", None, "libx264"),
    "clip.webm": ("libopus", None, "libvpx"),
}
LIMITS = AudioLimits()


@pytest.fixture(scope="session")
def media(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The speech clip in every format, plus the odd files the tests need."""
    folder = tmp_path_factory.mktemp("media")
    samples, rate = read_wav(CLIP)
    (folder / "clip.wav").write_bytes(CLIP.read_bytes())
    for name, (codec, container, video) in FORMATS.items():
        encode(folder / name, samples, rate, codec, container=container, video=video)
    stereo = resample(np.concatenate([samples, samples // 2]), rate, 44_100)
    encode(folder / "stereo44k.flac", stereo, 44_100, "flac")
    # Silence first: the first frame's low bitrate makes FFmpeg's length guess far too long.
    quiet_start = np.concatenate([np.zeros((1, 2 * rate), np.int16), samples], axis=1)
    encode(
        folder / "vbr_noxing.mp3",
        resample(quiet_start, rate, 44_100),
        44_100,
        "libmp3lame",
        options={"write_xing": "0"},
        vbr=True,
    )
    encode(folder / "late.mkv", samples, rate, "libopus", video="libx264", late=1.5)
    video_only(folder / "silent_film.mp4", 2.0)
    return folder


@pytest.fixture(scope="session")
def reference(media: Path) -> npt.NDArray[np.float32]:
    return decode_audio(media / "clip.wav", limits=LIMITS)


def png_bytes() -> bytes:
    """A valid 8x8 black PNG."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    pixels = zlib.compress(b"".join(b"\x00" + bytes(3 * 8) for _ in range(8)))
    header = struct.pack(">IIBBBBB", 8, 8, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", pixels) + chunk(b"IEND", b"")
    )


class OneWay:
    """A pipe-like stream: no seeking, and it counts what was read."""

    def __init__(self, data: bytes) -> None:
        self._buffer = io.BytesIO(data)
        self.count = 0

    def read(self, size: int = -1) -> bytes:
        data = self._buffer.read(size)
        self.count += len(data)
        return data

    def seekable(self) -> bool:
        return False


def refuse(
    error: type[AudioError],
    source: Path | bytes | OneWay,
    label: str,
    *,
    limits: AudioLimits = LIMITS,
    name: str | None = None,
) -> AudioError:
    """Decode, expecting `error` with the input named in its message and exit code 2."""
    with pytest.raises(error, match=re.escape(label)) as caught:
        decode_audio(source, limits=limits, name=name)  # type: ignore[arg-type]  # OneWay
    assert caught.value.exit_code == EXIT_BAD_INPUT
    return caught.value


@pytest.mark.parametrize("name", ["clip.wav", *FORMATS])
def test_every_format_decodes_to_16k_mono_float32(media: Path, name: str) -> None:
    audio = decode_audio(media / name, limits=LIMITS)
    assert audio.dtype == np.float32
    assert audio.ndim == 1
    assert duration_seconds(audio) == pytest.approx(CLIP_SECONDS, abs=0.05)
    assert 0.05 < float(np.abs(audio).max()) <= 1.0


def test_lossless_flac_decodes_exactly_like_the_wav(
    media: Path, reference: npt.NDArray[np.float32]
) -> None:
    np.testing.assert_array_equal(decode_audio(media / "clip.flac", limits=LIMITS), reference)
    samples, _ = read_wav(CLIP)
    np.testing.assert_array_equal(reference, samples[0] / np.float32(32768))


def test_44k_stereo_is_mixed_down_and_resampled(
    media: Path, reference: npt.NDArray[np.float32]
) -> None:
    audio = decode_audio(media / "stereo44k.flac", limits=LIMITS)
    assert duration_seconds(audio) == pytest.approx(CLIP_SECONDS, abs=0.05)
    # Left is the clip, right half of it: the mix is three quarters of the clip.
    n = min(len(audio), len(reference))
    assert np.corrcoef(audio[:n], reference[:n])[0, 1] > 0.99
    assert float(np.abs(audio).max()) == pytest.approx(
        0.75 * float(np.abs(reference).max()), rel=0.05
    )


def test_paths_bytes_and_streams_decode_alike(media: Path) -> None:
    path = media / "clip.mp4"
    data = path.read_bytes()
    expected = decode_audio(path, limits=LIMITS)
    np.testing.assert_array_equal(decode_audio(str(path), limits=LIMITS), expected)
    np.testing.assert_array_equal(decode_audio(data, limits=LIMITS), expected)
    with path.open("rb") as stream:
        stream.read(100)  # a seekable stream is read from its start, wherever it stands
        np.testing.assert_array_equal(decode_audio(stream, limits=LIMITS), expected)


def test_a_one_way_stream_decodes(media: Path) -> None:
    stream = OneWay((media / "clip.flac").read_bytes())
    audio = decode_audio(stream, limits=LIMITS)  # type: ignore[arg-type]
    assert duration_seconds(audio) == pytest.approx(CLIP_SECONDS, abs=0.05)


def test_files_that_only_look_odd_are_not_refused(media: Path, tmp_path: Path) -> None:
    # A VBR MP3 without a Xing header: FFmpeg's length guess from the first frame is wrong.
    vbr = media / "vbr_noxing.mp3"
    with av.open(str(vbr)) as container:
        assert container.duration is not None
        guessed = container.duration / av.time_base
    audio = decode_audio(vbr, limits=LIMITS)
    assert abs(guessed - duration_seconds(audio)) > LENGTH_TOLERANCE
    assert duration_seconds(audio) == pytest.approx(2 + CLIP_SECONDS, abs=0.1)
    # A WAV written to a pipe: its writer could not fill in the data length.
    samples, rate = read_wav(CLIP)
    streamed = bytearray(wav_bytes(samples, rate))
    at = streamed.index(b"data") + 4
    streamed[at : at + 4] = b"\xff\xff\xff\xff"
    audio = decode_audio(bytes(streamed), limits=LIMITS)
    assert duration_seconds(audio) == pytest.approx(CLIP_SECONDS, abs=0.01)
    # Sound that starts after the pictures: the track's stated end is not its length.
    audio = decode_audio(media / "late.mkv", limits=LIMITS)
    assert duration_seconds(audio) == pytest.approx(CLIP_SECONDS, abs=0.05)


def test_from_array_int16_stereo_44k() -> None:
    t = np.arange(44_100) / 44_100
    tone = (np.sin(2 * np.pi * 440 * t) * 16_384).astype(np.int16)
    stereo = np.stack([tone, tone // 2], axis=1)  # (samples, channels)
    audio = from_array(stereo, 44_100, limits=LIMITS)
    assert audio.dtype == np.float32
    assert audio.shape == (SAMPLE_RATE,)
    assert float(np.abs(audio).max()) == pytest.approx(0.375, abs=0.01)
    np.testing.assert_array_equal(from_array(stereo.T, 44_100, limits=LIMITS), audio)


def test_from_array_float64_mono_8k() -> None:
    tone = 0.5 * np.sin(2 * np.pi * 300 * np.arange(16_000) / 8_000)
    audio = from_array(tone, 8_000, limits=LIMITS)
    assert audio.dtype == np.float32
    assert duration_seconds(audio) == pytest.approx(2.0, abs=0.001)
    assert float(np.abs(audio).max()) == pytest.approx(0.5, abs=0.01)


def test_from_array_scales_int32_and_keeps_16k_float32() -> None:
    tone = np.sin(2 * np.pi * 200 * np.arange(SAMPLE_RATE) / SAMPLE_RATE).astype(np.float32) / 2
    np.testing.assert_array_equal(from_array(tone, SAMPLE_RATE, limits=LIMITS), tone)
    scaled = from_array((tone * 2**31).astype(np.int32), SAMPLE_RATE, limits=LIMITS)
    np.testing.assert_allclose(scaled, tone, atol=1e-6)


@pytest.mark.parametrize(
    ("samples", "error", "message"),
    [
        (np.zeros(0, np.int16), EmptyAudioError, "no audio samples"),
        (np.zeros((SAMPLE_RATE, 2), np.int16), SilentAudioError, "contains only silence"),
        (np.ones(SAMPLE_RATE, np.int16), SilentAudioError, "-90 dBFS"),
        (np.full(10, 1000.0), AudioError, "floats must lie in"),
        (np.full(10, np.nan), AudioError, "NaN"),
        (np.arange(10), AudioError, "int64"),
        (np.zeros((100, 20), np.int16), AudioError, "at most 8 channels"),
    ],
)
def test_from_array_refuses(
    samples: npt.NDArray[np.generic], error: type[AudioError], message: str
) -> None:
    with pytest.raises(error, match=re.escape(message)):
        from_array(samples, SAMPLE_RATE, limits=LIMITS)


def test_from_array_too_long() -> None:
    with pytest.raises(AudioTooLongError, match=re.escape("the audio array lasts 2.0 s")):
        from_array(np.ones(16_000, np.int16) * 1000, 8_000, limits=AudioLimits(max_seconds=1))


def test_empty_bytes() -> None:
    refuse(EmptyAudioError, b"", "upload.wav", name="upload.wav")


def test_empty_file(tmp_path: Path) -> None:
    path = tmp_path / "nothing.mp3"
    path.write_bytes(b"")
    refuse(EmptyAudioError, path, str(path))


def test_empty_one_way_stream() -> None:
    refuse(EmptyAudioError, OneWay(b""), "stdin", name="stdin")


def test_wav_without_samples(tmp_path: Path) -> None:
    path = tmp_path / "zero.wav"
    path.write_bytes(wav_bytes(np.zeros((1, 0), np.int16), SAMPLE_RATE))
    refuse(EmptyAudioError, path, str(path))


def test_silence(tmp_path: Path) -> None:
    path = tmp_path / "muted.wav"
    path.write_bytes(wav_bytes(np.zeros((2, SAMPLE_RATE), np.int16), SAMPLE_RATE))
    error = refuse(SilentAudioError, path, str(path))
    assert "contains only silence" in str(error)


def test_quiet_speech_is_not_silence(tmp_path: Path) -> None:
    samples, rate = read_wav(CLIP)
    quiet = (samples // 300).astype(np.int16)  # about -50 dBFS
    audio = decode_audio(wav_bytes(quiet, rate), limits=LIMITS)
    assert duration_seconds(audio) == pytest.approx(CLIP_SECONDS, abs=0.01)


@pytest.mark.parametrize(
    ("name", "data"),
    [
        ("noise.bin", np.random.default_rng(1).bytes(30_000)),
        ("notes.txt", b"Meeting notes, not a recording.\n" * 100),
        ("picture.png", png_bytes()),
        ("header.png", b"\x89PNG\r\n\x1a\n" + bytes(24)),
    ],
)
def test_not_audio(tmp_path: Path, name: str, data: bytes) -> None:
    path = tmp_path / name
    path.write_bytes(data)
    refuse(NotAudioError, path, str(path))


def test_video_without_sound(media: Path) -> None:
    path = media / "silent_film.mp4"
    error = refuse(NotAudioError, path, str(path))
    assert "no audio stream" in str(error)


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "gone.wav"
    refuse(AudioError, path, f"cannot read {path}")


@pytest.mark.parametrize(
    "name", ["clip.wav", "clip.flac", "clip.mp3", "clip.m4a", "clip.mp4", "clip.mkv", "clip.webm"]
)
def test_cut_in_half(media: Path, tmp_path: Path, name: str) -> None:
    path = cut(media / name, 0.5, tmp_path / name)
    refuse(TruncatedAudioError, path, str(path))


def test_cut_wav_says_what_is_missing(media: Path, tmp_path: Path) -> None:
    path = cut(media / "clip.wav", 0.5, tmp_path / "half.wav")
    error = refuse(TruncatedAudioError, path, str(path))
    assert "promises 4.5 s of audio but the file holds 2.2 s" in str(error)


@pytest.mark.parametrize("name", ["clip.flac", "clip.mp3", "clip.ogg", "clip.m4a"])
def test_garbage_inside(media: Path, tmp_path: Path, name: str) -> None:
    path = damage(media / name, tmp_path / name)
    refuse(CorruptAudioError, path, str(path))


def test_known_format_with_a_broken_header(tmp_path: Path) -> None:
    path = tmp_path / "broken.flac"
    path.write_bytes(b"fLaC" + np.random.default_rng(2).bytes(5000))
    error = refuse(CorruptAudioError, path, str(path))
    assert "looks like a FLAC file" in str(error)


def test_too_many_bytes_is_refused_before_decoding(media: Path) -> None:
    path = media / "clip.wav"
    size = path.stat().st_size
    refuse(AudioTooLargeError, path, str(path), limits=AudioLimits(max_bytes=size - 1))
    decode_audio(path, limits=AudioLimits(max_bytes=size))


def test_too_many_bytes_from_a_one_way_stream(media: Path) -> None:
    stream = OneWay((media / "clip.wav").read_bytes())
    refuse(AudioTooLargeError, stream, "pipe", name="pipe", limits=AudioLimits(max_bytes=50_000))
    assert stream.count < 100_000


@pytest.mark.parametrize("name", ["clip.wav", "clip.flac", "clip.ogg", "clip.mkv"])
def test_too_long(media: Path, name: str) -> None:
    path = media / name
    refuse(AudioTooLongError, path, str(path), limits=AudioLimits(max_seconds=1))


def test_too_long_stops_decoding_early() -> None:
    samples, rate = read_wav(CLIP)
    data = wav_bytes(np.tile(samples, 14), rate)  # a minute
    stream = OneWay(data)
    refuse(AudioTooLongError, stream, "pipe", name="pipe", limits=AudioLimits(max_seconds=1))
    assert stream.count < len(data) / 4


def test_limits_come_from_the_environment(media: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OFFLINE_ASR_MAX_AUDIO_SECONDS", "1")
    monkeypatch.setenv("OFFLINE_ASR_MAX_AUDIO_BYTES", "123456789")
    limits = AudioLimits.from_settings(Settings.load())  # read once, at the edge
    assert limits == AudioLimits(max_bytes=123_456_789, max_seconds=1.0)
    with pytest.raises(AudioTooLongError, match="OFFLINE_ASR_MAX_AUDIO_SECONDS"):
        decode_audio(media / "clip.wav", limits=limits)


def test_default_limits() -> None:
    assert AudioLimits() == AudioLimits(max_bytes=500_000_000, max_seconds=4 * 3600)


_DECODE = """
from offline_asr.asr.audio import AudioLimits, decode_audio
before = peak()
decode_audio(Path(sys.argv[1]), limits=AudioLimits(10**9, 4 * 3600))
"""


def test_an_hour_of_audio_costs_about_one_copy_of_itself(tmp_path: Path) -> None:
    """1 h at 8 kHz is 230 MB as 16 kHz float32. Decoding it into a list of pieces and joining
    them took three times that (675 MB); one buffer filled in place takes about one."""
    path = long_speech_wav(tmp_path / "hour.wav", 3600)
    growth = peak_growth_mb(_DECODE, str(path))
    audio_mb = 3600 * SAMPLE_RATE * 4 / 2**20
    print(f"\ndecoding 1 h: peak RSS +{growth:.0f} MB for {audio_mb:.0f} MB of samples")
    assert growth < 1.5 * audio_mb, (growth, audio_mb)


def test_audio_longer_than_the_first_guess_grows_its_buffer(
    reference: npt.NDArray[np.float32], media: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A one-way stream reports no length: the buffer starts small and grows as needed."""
    monkeypatch.setattr(audio_module, "_UNKNOWN_LENGTH", 1)
    stream = OneWay((media / "clip.wav").read_bytes())
    audio = decode_audio(stream, limits=LIMITS, name="pipe")  # type: ignore[arg-type]  # OneWay
    np.testing.assert_array_equal(audio, reference)
