#!/usr/bin/env python3
"""Regenerate the synthetic speech clips used by smoke tests and the test suite.

The clips in ``src/offline_asr/data/clips/`` are committed (and ship with the package, for
``models smoke``), so using them needs no system package. Regenerating them needs the Debian
package ``espeak-ng`` (``apt-get install espeak-ng``) plus numpy (a project dependency).

Every clip is spoken by espeak-ng with a fixed voice, speed, pitch, amplitude and word gap,
trimmed to a short silence margin, resampled from espeak-ng's native 22050 Hz to 16 kHz with
an FFT resampler, and written as mono 16-bit PCM WAV with Python's ``wave`` module. The
exact spoken texts go to ``references.json``.

Output is byte-identical across runs with the same espeak-ng build (checked with
espeak-ng 1.51+dfsg-10+deb12u2 on Debian 12); another espeak-ng version may pronounce
differently and so give different bytes.

Usage::

    python scripts/make_test_audio.py [--out-dir src/offline_asr/data/clips]
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import wave
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

TARGET_RATE = 16_000
"""Sample rate of the written clips, in Hz."""

MARGIN_SECONDS = 0.15
"""Silence kept before the first and after the last audible sample."""

SILENCE_THRESHOLD = 64
"""Absolute int16 amplitude under which a sample counts as silence when trimming."""

DEFAULT_OUT_DIR = Path(__file__).resolve().parent.parent / "src" / "offline_asr" / "data" / "clips"
REFERENCES_NAME = "references.json"


@dataclass(frozen=True)
class Clip:
    """One clip: the text and the espeak-ng settings that speak it."""

    filename: str
    voice: str
    text: str
    speed: int
    """Words per minute (espeak-ng ``-s``)."""
    pitch: int = 50
    """0-99 (espeak-ng ``-p``)."""
    amplitude: int = 100
    """0-200 (espeak-ng ``-a``)."""
    word_gap: int = 0
    """Extra pause between words in units of 10 ms (espeak-ng ``-g``)."""


CLIPS: tuple[Clip, ...] = (
    Clip(
        filename="en_short.wav",
        voice="en-us",
        text="The weather was warm and sunny, so we walked along the river after lunch.",
        speed=160,
    ),
    Clip(
        filename="en_second.wav",
        voice="en-us",
        text="Please close the kitchen window before you leave the house.",
        speed=150,
    ),
    Clip(
        filename="ru_short.wav",
        voice="ru+m2",
        text="Сегодня хорошая погода, поэтому мы пошли гулять в парк.",
        speed=120,
    ),
)


def find_espeak() -> str:
    """Return the path of the espeak-ng executable or exit with a hint."""
    exe = shutil.which("espeak-ng")
    if exe is None:
        sys.exit("espeak-ng not found: install the Debian package with `apt-get install espeak-ng`")
    return exe


def synthesize(exe: str, clip: Clip, workdir: Path) -> tuple[NDArray[np.int16], int]:
    """Speak ``clip`` with espeak-ng and return its samples and sample rate."""
    raw = workdir / f"raw_{clip.filename}"
    cmd = [
        exe,
        "-v",
        clip.voice,
        "-s",
        str(clip.speed),
        "-p",
        str(clip.pitch),
        "-a",
        str(clip.amplitude),
        "-g",
        str(clip.word_gap),
        "-b",
        "1",  # the text is UTF-8
        "-w",
        str(raw),
        clip.text,
    ]
    subprocess.run(cmd, check=True, capture_output=True)
    with wave.open(str(raw), "rb") as wav:
        if wav.getnchannels() != 1 or wav.getsampwidth() != 2:
            raise RuntimeError(f"unexpected espeak-ng output format in {raw}")
        rate = wav.getframerate()
        frames = wav.readframes(wav.getnframes())
    return np.frombuffer(frames, dtype="<i2").astype(np.int16), rate


def trim_silence(samples: NDArray[np.int16], rate: int) -> NDArray[np.int16]:
    """Cut leading and trailing silence, keeping ``MARGIN_SECONDS`` on each side."""
    loud = np.flatnonzero(np.abs(samples.astype(np.int32)) > SILENCE_THRESHOLD)
    if loud.size == 0:
        raise RuntimeError("espeak-ng produced only silence")
    margin = round(MARGIN_SECONDS * rate)
    start = max(int(loud[0]) - margin, 0)
    stop = min(int(loud[-1]) + 1 + margin, samples.size)
    return samples[start:stop]


def resample(samples: NDArray[np.int16], src_rate: int, dst_rate: int) -> NDArray[np.int16]:
    """Resample by truncating (band-limiting) the spectrum, then round to int16."""
    if src_rate == dst_rate:
        return samples
    n_in = samples.size
    n_out = n_in * dst_rate // src_rate
    spectrum = np.fft.rfft(samples.astype(np.float64))
    kept = spectrum[: n_out // 2 + 1].copy()
    if n_out % 2 == 0 and n_out < n_in:
        kept[-1] = kept[-1].real  # the new Nyquist bin must be real
    out = np.fft.irfft(kept, n=n_out) * (n_out / n_in)
    return np.clip(np.rint(out), -32768, 32767).astype(np.int16)


def write_wav(path: Path, samples: NDArray[np.int16], rate: int) -> None:
    """Write mono 16-bit little-endian PCM."""
    with wave.open(str(path), "wb") as wav:
        wav.setnchannels(1)
        wav.setsampwidth(2)
        wav.setframerate(rate)
        wav.writeframes(samples.astype("<i2").tobytes())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--out-dir", type=Path, default=DEFAULT_OUT_DIR)
    args = parser.parse_args(argv)
    out_dir: Path = args.out_dir
    out_dir.mkdir(parents=True, exist_ok=True)

    exe = find_espeak()
    references: dict[str, str] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for clip in CLIPS:
            samples, rate = synthesize(exe, clip, Path(tmp))
            samples = resample(trim_silence(samples, rate), rate, TARGET_RATE)
            write_wav(out_dir / clip.filename, samples, TARGET_RATE)
            references[clip.filename] = clip.text
            print(f"{clip.filename}: {samples.size / TARGET_RATE:.2f} s")

    text = json.dumps(references, ensure_ascii=False, indent=2, sort_keys=True) + "\n"
    (out_dir / REFERENCES_NAME).write_text(text, encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
