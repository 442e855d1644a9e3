"""Long speech for the long-form and bulk tests: the shipped clips in turn, with pauses."""

from __future__ import annotations

import json
import wave
from pathlib import Path

import numpy as np

from offline_asr.asr.audio import decode_audio
from offline_asr.constants import CLIPS_DIR
from offline_asr.pcm import SAMPLE_RATE

CLIPS = ("en_short.wav", "en_second.wav")


def long_speech(seconds: float) -> tuple[np.ndarray, str]:
    """At least `seconds` of the English clips with 0.7 s of silence after each, and the text."""
    references = json.loads((CLIPS_DIR / "references.json").read_text(encoding="utf-8"))
    pause = np.zeros(int(0.7 * SAMPLE_RATE), dtype=np.float32)
    parts: list[np.ndarray] = []
    texts: list[str] = []
    index = 0
    while sum(len(part) for part in parts) < seconds * SAMPLE_RATE:
        name = CLIPS[index % len(CLIPS)]
        parts += [decode_audio(CLIPS_DIR / name), pause]
        texts.append(references[name])
        index += 1
    return np.concatenate(parts).astype(np.float32), " ".join(texts)


def write_wav(path: Path, audio: np.ndarray) -> Path:
    """16 kHz mono 16-bit WAV of float samples in [-1, 1]."""
    with wave.open(str(path), "wb") as writer:
        writer.setnchannels(1)
        writer.setsampwidth(2)
        writer.setframerate(SAMPLE_RATE)
        writer.writeframes((np.clip(audio, -1, 1) * 32767).astype("<i2").tobytes())
    return path
