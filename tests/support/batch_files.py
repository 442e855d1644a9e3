"""An archive for the bulk tests: real speech, quiet room noise, a damaged file, a duplicate."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from offline_asr.asr.audio import decode_audio
from offline_asr.asr.base import Decoded
from offline_asr.constants import CLIPS_DIR
from offline_asr.pcm import SAMPLE_RATE
from support.long_audio import write_wav

REFERENCES: dict[str, str] = json.loads((CLIPS_DIR / "references.json").read_text("utf-8"))


def make_archive(folder: Path) -> Path:
    """en_short and en_second (nested), a copy of en_short, 3 s of room noise at -60 dBFS
    (not digital silence, which is refused as a failed recording) and a WAV cut in half."""
    (folder / "deep" / "deeper").mkdir(parents=True)
    shutil.copy(CLIPS_DIR / "en_short.wav", folder / "en_short.wav")
    shutil.copy(CLIPS_DIR / "en_second.wav", folder / "deep" / "deeper" / "en_second.wav")
    shutil.copy(CLIPS_DIR / "en_short.wav", folder / "deep" / "same_as_short.wav")
    noise = np.random.default_rng(0).standard_normal(3 * SAMPLE_RATE) * 0.001
    write_wav(folder / "quiet.wav", noise.astype(np.float32))
    data = (CLIPS_DIR / "en_second.wav").read_bytes()
    (folder / "broken.wav").write_bytes(data[: len(data) // 2])
    (folder / "notes.txt").write_text("not audio, and not in a folder's inputs\n")
    (folder / ".hidden").mkdir()
    shutil.copy(CLIPS_DIR / "en_short.wav", folder / ".hidden" / "skipped.wav")
    return folder


def distinct_speech(folder: Path, count: int) -> Path:
    """`count` files of the two clips, each with a different length of trailing pause (so each
    is other audio, and none is transcribed as a copy of another)."""
    folder.mkdir(parents=True)
    clips = [decode_audio(CLIPS_DIR / name) for name in ("en_short.wav", "en_second.wav")]
    for index in range(count):
        pause = np.zeros(int((0.2 + 0.1 * index) * SAMPLE_RATE), np.float32)
        write_wav(folder / f"speech_{index:02d}.wav", np.concatenate([clips[index % 2], pause]))
    return folder


def read_lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text("utf-8").splitlines()]


def decoded_of(line: dict[str, Any]) -> Decoded:
    """The decoded content of an ok line, as the goldens compare it."""
    return Decoded.model_validate({
        "text": line["text"], "language": line["language"], "duration": line["duration"],
        "segments": [
            {key: segment[key] for key in ("id", "start", "end", "text", "tokens")}
            | {"words": None if segment["words"] is None else [
                {key: word[key] for key in ("start", "end", "word")} for word in segment["words"]
            ]}
            for segment in line["segments"]
        ],
    })  # fmt: skip


def outcome(path: Path) -> dict[str, Any]:
    """What a results file says, independent of line order and timing: per audio sha256 the
    decoded content (or the error), and which paths have a line."""
    by_audio: dict[str, Any] = {}
    paths: set[str] = set()
    for line in read_lines(path):
        paths.add(line["path"])
        key = line["audio_sha256"] or line["path"]
        by_audio[key] = decoded_of(line) if line["status"] == "ok" else line["error"]
    return {"by_audio": by_audio, "paths": paths}
