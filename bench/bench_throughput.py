"""Throughput past one worker: server workers, `batch` workers, and memory per worker.

Cases (whisper-tiny.en, the shipped clips):
1. `offline-asr serve` with the default workers (one per usable core, one thread each) at
   client concurrency 1, 2 and 4, against the same server at concurrency 1 (the issue's goal:
   >= 1.3x on 2 cores), and against one worker with every core (the previous default) at the
   same concurrency. Requests alternate between the two clips.
2. `offline-asr batch` over 20 distinct files with the default workers against `--workers 1`
   (that one worker gets every core), wall time of the whole command, model load included.
3. Peak RSS of a process holding whisper-tiny.en with 1, 2 and 4 workers, and after one
   transcription on each worker at once (CTranslate2 shares the weights between workers).

Each ratio is ours (the default plan) relative to its baseline, higher is better.
Batched long-form against sequential on the 5-minute file is in `bench_engines.py`.
"""

from __future__ import annotations

from offline_asr.asr.pins import pin_runtime

pin_runtime()

import statistics  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
import wave  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import httpx2  # noqa: E402
import numpy as np  # noqa: E402

from bench_service import CLIP_PATHS, MANIFEST, MODEL, _batch, _post, _server  # noqa: E402
from offline_asr.asr.audio import decode_audio  # noqa: E402
from offline_asr.asr.workers import usable_cores  # noqa: E402
from offline_asr.constants import CLIPS_DIR  # noqa: E402
from offline_asr.pcm import SAMPLE_RATE  # noqa: E402

REQUESTS = 12
RATE = "req/s (ratio: higher better)"
ROUNDS = 2
FILES = 20
EXE = Path(sys.executable).with_name("offline-asr")


def _served(level: int, workers: int, logs: Path, audio: dict[Path, bytes]) -> float:
    """Median requests per second of `ROUNDS` batches at client concurrency `level`."""
    settings = {"OFFLINE_ASR_WORKERS": str(workers), "OFFLINE_ASR_MAX_CONCURRENCY": str(level)}
    with (
        _server(level, logs / f"serve-w{workers}-c{level}.log", **settings) as server,
        httpx2.Client(timeout=httpx2.Timeout(60.0, connect=5.0)) as client,
    ):

        def remote(i: int) -> float:
            clip = CLIP_PATHS[i % len(CLIP_PATHS)]
            return _post(client, server.url, clip, audio[clip])

        _batch(level, 2 * level, remote)
        return statistics.median(_batch(level, REQUESTS, remote) for _ in range(ROUNDS))


def _server_rows(logs: Path) -> list[dict[str, Any]]:
    audio = {clip: clip.read_bytes() for clip in CLIP_PATHS}
    cores = usable_cores()
    default = {level: _served(level, cores, logs, audio) for level in (1, 2, 4)}
    single = {level: _served(level, 1, logs, audio) for level in (1, 2, 4)}
    rows = []
    for level in (2, 4):
        rows.append({
            "benchmark": "throughput",
            "case": f"serve c={level} vs c=1, {cores} workers x 1 thread",
            "ours": default[level], "baseline": default[1], "unit": RATE,
            "ratio": default[level] / default[1], "goal": ">= 1.3 on 2 cores",
        })  # fmt: skip
    for level in (1, 2, 4):
        rows.append({
            "benchmark": "throughput",
            "case": f"serve c={level}: {cores} workers x 1 thread vs 1 worker x {cores} threads",
            "ours": default[level], "baseline": single[level], "unit": RATE,
            "ratio": default[level] / single[level],
        })  # fmt: skip
    return rows


def _files(folder: Path) -> Path:
    clips = [decode_audio(CLIPS_DIR / name) for name in ("en_short.wav", "en_second.wav")]
    for index in range(FILES):
        pause = np.zeros(int((0.2 + 0.05 * index) * SAMPLE_RATE), np.float32)
        samples = (np.concatenate([clips[index % 2], pause]) * 32767).astype("<i2")
        with wave.open(str(folder / f"f{index:02d}.wav"), "wb") as writer:
            writer.setnchannels(1)
            writer.setsampwidth(2)
            writer.setframerate(SAMPLE_RATE)
            writer.writeframes(samples.tobytes())
    return folder


def _batch_seconds(folder: Path, workers: int, out: Path) -> float:
    start = time.perf_counter()
    subprocess.run([str(EXE), "batch", str(folder), "--out", str(out), "--model", MODEL,
                    "--manifest", str(MANIFEST), "--workers", str(workers)],
                   check=True, capture_output=True)  # fmt: skip
    return time.perf_counter() - start


def _batch_rows(work: Path) -> list[dict[str, Any]]:
    (work / "in").mkdir()
    folder = _files(work / "in")
    cores = usable_cores()
    times: dict[int, list[float]] = {cores: [], 1: []}
    for round_ in range(ROUNDS):
        for workers in times:
            times[workers].append(_batch_seconds(folder, workers, work / f"w{workers}-{round_}"))
    ours, base = min(times[cores]), min(times[1])
    return [{
        "benchmark": "throughput", "case": f"batch {FILES} files: {cores} workers vs 1 worker",
        "ours": ours, "baseline": base, "unit": "s (ratio: time 1 worker / ours, higher better)",
        "ratio": base / ours, "goal": ">= 1.3 on 2 cores", "times": times,
    }]  # fmt: skip


MEMORY_SCRIPT = """
import offline_asr, sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from offline_asr.asr import load_engine
from offline_asr.asr.audio import decode_audio
from offline_asr.registry.store import ModelStore
import resource
workers = int(sys.argv[2])
engine = load_engine(ModelStore(Path(sys.argv[1])), "whisper-tiny.en", workers=workers, threads=1)
loaded = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
audio = decode_audio(Path(sys.argv[3]))
with ThreadPoolExecutor(workers) as pool:
    list(pool.map(lambda _: engine.transcribe(audio), range(workers)))
print(loaded, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""


def _memory_rows() -> list[dict[str, Any]]:
    peaks = {}
    for workers in (1, 2, 4):
        output = subprocess.run(
            [sys.executable, "-c", MEMORY_SCRIPT, str(MANIFEST), str(workers),
             str(CLIPS_DIR / "en_short.wav")], check=True, capture_output=True, text=True,
        ).stdout.split()  # fmt: skip
        peaks[workers] = (int(output[0]) / 1024, int(output[1]) / 1024)
    return [{
        "benchmark": "throughput", "case": f"peak RSS, {workers} workers (after one call each)",
        "ours": peaks[workers][1], "baseline": peaks[1][1], "unit": "MB (ratio: ours/1 worker)",
        "ratio": peaks[workers][1] / peaks[1][1], "loaded_mb": peaks[workers][0],
    } for workers in (1, 2, 4)]  # fmt: skip


def run() -> list[dict[str, Any]]:
    with tempfile.TemporaryDirectory() as temp:
        work = Path(temp)
        rows = _memory_rows()
        rows += _batch_rows(work)
        rows += _server_rows(work)
    return rows


if __name__ == "__main__":
    for row in run():
        print(row, flush=True)
