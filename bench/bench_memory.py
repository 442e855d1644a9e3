"""Peak memory for an hour of audio: offline-asr against faster-whisper's own path.

The input is one hour of telephone-quality speech (the shipped `en_short.wav` at 8 kHz, each
time followed by half a second of quiet), well within the default upload and length limits.
Each case runs in a fresh process and reports the growth of its peak RSS (VmHWM) over the
process just before the work; the model is `whisper-tiny.en`.

1. `decode`: ours (`offline_asr.asr.audio.decode_audio`) against faster-whisper's
   `decode_audio` (PyAV as well), to 16 kHz mono float32.
2. `to the first segment`: decode, then transcribe until the first segment (when every feature
   of the file exists): ours (`load_engine(...).transcribe(audio, on_segment=...)`) against
   faster-whisper's `decode_audio` + `WhisperModel(folder).transcribe(audio)`.
3. `server`: `offline-asr serve` with one slot and `OFFLINE_ASR_REQUEST_TIMEOUT_S=10`: the
   server's peak RSS over its own after a warm-up request, for one upload of the hour, until
   the 504'd work has stopped and its slot is back. Baseline: faster-whisper's figure of case 2.

Ratio = ours / baseline: below 1 is better.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
import wave
from pathlib import Path
from typing import Any

import httpx2
import numpy as np

from bench_service import MANIFEST, MODEL, _server

CLIP = Path(__file__).resolve().parent.parent / "src/offline_asr/data/clips/en_short.wav"
HOUR_S = 3600
RATE = 8_000
SLOT_TIMEOUT_S = 300.0

# Peak RSS before and after the work, printed as JSON by each child process.
_PEAK = """
import json, sys
from pathlib import Path

def peak():
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024

class Enough(Exception):
    pass

def stop(*_):
    raise Enough
"""
_OURS_DECODE = """
from offline_asr.asr.audio import decode_audio
before = peak()
decode_audio(Path(sys.argv[1]))
"""
_RAW_DECODE = """
from faster_whisper import decode_audio
before = peak()
decode_audio(sys.argv[1])
"""
_OURS_FIRST_SEGMENT = """
from offline_asr.asr.loader import load_engine
from offline_asr.asr.audio import decode_audio
from offline_asr.registry.snapshot import ManifestSnapshot
from offline_asr.registry.store import ModelStore
engine = load_engine(ManifestSnapshot.read(ModelStore(Path(sys.argv[2]))), sys.argv[3])
before = peak()
try:
    engine.transcribe(decode_audio(Path(sys.argv[1])), on_segment=stop)
except Enough:
    pass
"""
_RAW_FIRST_SEGMENT = """
from faster_whisper import WhisperModel, decode_audio
from offline_asr.registry.store import ModelStore
store = ModelStore(Path(sys.argv[2]))
entry = store.get(store.load(), sys.argv[3])
model = WhisperModel(str(store.root / entry.path), compute_type=entry.compute_type)
before = peak()
segments, _ = model.transcribe(decode_audio(sys.argv[1]), beam_size=5)
next(segments)
"""
_REPORT = """
print(json.dumps({"before": before, "after": peak()}))
"""


def _hour_wav(path: Path) -> Path:
    with wave.open(str(CLIP), "rb") as reader:
        rate, data = reader.getframerate(), reader.readframes(reader.getnframes())
    speech = np.frombuffer(data, np.int16)[:: rate // RATE]  # 16 kHz -> 8 kHz
    unit = np.concatenate([speech, np.zeros(RATE // 2, np.int16)])
    with wave.open(str(path), "wb") as writer:
        writer.setnchannels(1)
        writer.setsampwidth(2)
        writer.setframerate(RATE)
        writer.writeframes(np.resize(unit, HOUR_S * RATE).tobytes())
    return path


def _growth(script: str, *args: str) -> float:
    """Peak RSS growth of a fresh interpreter running `script`, in MB."""
    code = _PEAK + script + _REPORT
    run = subprocess.run(
        [sys.executable, "-c", code, *args], capture_output=True, text=True, check=True
    )
    peak = json.loads(run.stdout)
    return float(peak["after"] - peak["before"])


def _peak_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmHWM for process {pid}")


def _in_flight(client: httpx2.Client, url: str) -> float:
    lines = client.get(f"{url}/metrics").text.splitlines()
    return float(next(line for line in lines if line.startswith("offline_asr_in_")).split()[-1])


def _server_growth(hour: Path, log: Path) -> float:
    """The server's peak RSS growth for one upload of the hour (see case 3), in MB."""
    with (
        _server(1, log, OFFLINE_ASR_MAX_QUEUE="0", OFFLINE_ASR_REQUEST_TIMEOUT_S="10") as server,
        httpx2.Client(base_url=server.url, timeout=120.0, trust_env=False) as client,
    ):
        form = {"model": MODEL}
        client.post("/v1/audio/transcriptions", data=form,
                    files={"file": (CLIP.name, CLIP.read_bytes(), "audio/wav")})  # fmt: skip
        idle = _peak_mb(server.process.pid)
        client.post("/v1/audio/transcriptions", data=form,
                    files={"file": (hour.name, hour.read_bytes(), "audio/wav")})  # fmt: skip
        deadline = time.monotonic() + SLOT_TIMEOUT_S
        while _in_flight(client, server.url) and time.monotonic() < deadline:
            time.sleep(0.2)
        return _peak_mb(server.process.pid) - idle


def _row(case: str, ours: float, baseline: float, note: str) -> dict[str, Any]:
    return {"benchmark": "memory", "case": case, "ours": ours, "baseline": baseline,
            "unit": "MB peak RSS growth (lower is better)", "ratio": ours / baseline,
            "note": note}  # fmt: skip


def run() -> list[dict[str, Any]]:
    with tempfile.TemporaryDirectory(prefix="bench-memory-") as tmp:
        hour = _hour_wav(Path(tmp) / "hour.wav")
        model = (str(hour), str(MANIFEST), MODEL)
        raw_first = _growth(_RAW_FIRST_SEGMENT, *model)
        decode = _growth(_OURS_DECODE, str(hour)), _growth(_RAW_DECODE, str(hour))
        first = _growth(_OURS_FIRST_SEGMENT, *model)
        served = _server_growth(hour, Path(tmp) / "serve.log")
        return [
            _row("1 h 8 kHz: decode", *decode, "faster_whisper.decode_audio"),
            _row(
                "1 h 8 kHz: to the first segment",
                first,
                raw_first,
                "faster-whisper decode + WhisperModel.transcribe",
            ),
            _row(
                "1 h 8 kHz: server, one upload",
                served,
                raw_first,
                "over an idle, warmed-up server; baseline as above",
            ),
        ]


if __name__ == "__main__":
    for row in run():
        print(json.dumps(row))
