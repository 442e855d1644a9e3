"""Throughput past one worker: server workers, `batch` workers, and memory per worker.

Cases (whisper-tiny.en, the shipped clips):
1. `offline-asr serve` with the default plan (a worker per usable core, each free to use every
   core) at client concurrency 1, 2 and 4, against the same server at concurrency 1 (the
   issue's goal: >= 1.3x on 2 cores), against one worker with every core (the default before)
   and against workers with one thread each, at the same concurrency. Requests alternate
   between the two clips.
2. `offline-asr batch` over 20 distinct files with the default workers against `--workers 1`
   (that one worker gets every core), wall time of the whole command, model load included.
3. Peak RSS of a process holding whisper-tiny.en with 1, 2 and 4 workers, and after one
   transcription on each worker at once (CTranslate2 shares the weights between workers).
4. A 5-minute file through `serve` with its defaults (batched long form) against raw
   faster-whisper's `BatchedInferencePipeline` with its own defaults, the engine speaches serves
   long files with (speaches itself is not on PyPI, so it cannot be installed here), and against
   `serve` decoding sequentially (`OFFLINE_ASR_LONG_FORM_BATCH=0`, the server before); WER of all.
5. `batch --ray` on a local one-node cluster holding every core against the local `batch` over
   the same 20 files (wall time of the command; the cluster is started before the clock).

Each ratio is ours (the default plan) relative to its baseline, higher is better.
Batched long-form against sequential on the 5-minute file is in `bench_engines.py`.
"""

from __future__ import annotations

from offline_asr.asr.pins import pin_runtime

pin_runtime()

import os  # noqa: E402
import signal  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from contextlib import suppress  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import httpx2  # noqa: E402
import numpy as np  # noqa: E402
from faster_whisper import BatchedInferencePipeline, WhisperModel  # noqa: E402

from bench_engines import LONG_SECONDS, _concatenate  # noqa: E402
from bench_service import (  # noqa: E402
    CLIP_PATHS,
    MANIFEST,
    MODEL,
    _batch,
    _free_port,
    _post,
    _server,
)
from offline_asr.asr.audio import decode_audio  # noqa: E402
from offline_asr.asr.smoke import word_error_rate  # noqa: E402
from offline_asr.asr.workers import usable_cores  # noqa: E402
from offline_asr.constants import CLIPS_DIR  # noqa: E402
from offline_asr.pcm import SAMPLE_RATE, Audio  # noqa: E402
from offline_asr.registry.store import ModelStore  # noqa: E402
from offline_asr.service.turns import wav_bytes  # noqa: E402

REQUESTS = 12
RATE = "req/s (ratio: higher better)"
ROUNDS = 2
FILES = 20
EXE = Path(sys.executable).with_name("offline-asr")


def _served(level: int, plan: tuple[int, int], logs: Path, audio: dict[Path, bytes]) -> float:
    """Median requests per second of `ROUNDS` batches at client concurrency `level`, on a
    server with `plan` = (workers, threads per worker; 0: the default)."""
    workers, threads = plan
    settings = {"OFFLINE_ASR_WORKERS": str(workers), "OFFLINE_ASR_THREADS": str(threads),
                "OFFLINE_ASR_MAX_CONCURRENCY": str(level)}  # fmt: skip
    with (
        _server(level, logs / f"serve-w{workers}t{threads}-c{level}.log", **settings) as server,
        httpx2.Client(timeout=httpx2.Timeout(60.0, connect=5.0)) as client,
    ):

        def remote(i: int) -> float:
            clip = CLIP_PATHS[i % len(CLIP_PATHS)]
            return _post(client, server.url, clip, audio[clip])

        _batch(level, 2 * level, remote)
        return statistics.median(_batch(level, REQUESTS, remote) for _ in range(ROUNDS))


def _server_rows(logs: Path) -> list[dict[str, Any]]:
    """The default plan (a worker per core, each free to use every core) against itself at
    concurrency 1, against one worker (the default before), and against workers that share
    the cores out (one thread each)."""
    audio = {clip: clip.read_bytes() for clip in CLIP_PATHS}
    cores = usable_cores()
    plans = {"default": (0, 0), "1 worker": (1, 0), f"{cores} x 1 thread": (0, 1)}
    rates = {name: {level: _served(level, plan, logs, audio) for level in (1, 2, 4)}
             for name, plan in plans.items()}  # fmt: skip
    default = rates["default"]
    rows = [{
        "benchmark": "throughput", "case": f"serve c={level} vs c=1, default plan",
        "ours": default[level], "baseline": default[1], "unit": RATE,
        "ratio": default[level] / default[1], "goal": ">= 1.3 on 2 cores",
    } for level in (2, 4)]  # fmt: skip
    rows += [{
        "benchmark": "throughput", "case": f"serve c={level}: default plan vs {other}",
        "ours": default[level], "baseline": rates[other][level], "unit": RATE,
        "ratio": default[level] / rates[other][level],
    } for other in list(plans)[1:] for level in (1, 2, 4)]  # fmt: skip
    return rows


def _write_wav(path: Path, audio: Audio) -> Path:
    path.write_bytes(
        wav_bytes((np.clip(audio, -1, 1) * 32767).astype("<i2").tobytes(), SAMPLE_RATE)
    )
    return path


def _files(folder: Path, count: int = FILES) -> Path:
    """`count` distinct files (the clips with pauses of different lengths)."""
    folder.mkdir()
    clips = [decode_audio(CLIPS_DIR / name) for name in ("en_short.wav", "en_second.wav")]
    for index in range(count):
        pause = np.zeros(int((0.2 + 0.05 * index) * SAMPLE_RATE), np.float32)
        _write_wav(folder / f"f{index:03d}.wav", np.concatenate([clips[index % 2], pause]))
    return folder


def _batch_seconds(folder: Path, out: Path, *args: str) -> float:
    start = time.perf_counter()
    command = [str(EXE), "batch", str(folder), "--out", str(out), "--model", MODEL,
               "--manifest", str(MANIFEST), *args]  # fmt: skip
    subprocess.run(command, check=True, capture_output=True)
    return time.perf_counter() - start


def _batch_rows(work: Path) -> list[dict[str, Any]]:
    folder = _files(work / "in")
    cores = usable_cores()
    times: dict[int, list[float]] = {cores: [], 1: []}
    for round_ in range(ROUNDS):
        for workers in times:
            out = work / f"w{workers}-{round_}"
            times[workers].append(_batch_seconds(folder, out, "--workers", str(workers)))
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
from offline_asr.asr.audio import decode_audio
from offline_asr.asr.loader import LoadOptions, load_engine
from offline_asr.registry.snapshot import ManifestSnapshot
from offline_asr.registry.store import ModelStore
import resource
workers = int(sys.argv[2])
snapshot = ManifestSnapshot.read(ModelStore(Path(sys.argv[1])))
engine = load_engine(snapshot, "whisper-tiny.en", LoadOptions(workers=workers, threads=1))
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


def _served_once(url: str, path: Path) -> tuple[float, str]:
    with httpx2.Client(timeout=600.0) as client, path.open("rb") as audio:
        start = time.perf_counter()
        answer = client.post(f"{url}/v1/audio/transcriptions", files={"file": audio},
                             data={"model": MODEL})  # fmt: skip
        answer.raise_for_status()
        return time.perf_counter() - start, str(answer.json()["text"])


def _long_rows(work: Path) -> list[dict[str, Any]]:
    """The 5-minute file: our server's defaults, sequential, and raw batched faster-whisper."""
    audio, reference = _concatenate(["en_short.wav", "en_second.wav"], LONG_SECONDS, seed=0)
    path = _write_wav(work / "long.wav", audio)
    times: dict[str, list[float]] = {}
    texts: dict[str, str] = {}
    for name, settings in (("ours", {}), ("sequential", {"OFFLINE_ASR_LONG_FORM_BATCH": "0"})):
        env = {"OFFLINE_ASR_THREADS": "0", **settings}  # the defaults, as a user starts it
        with _server(1, work / f"serve-long-{name}.log", **env) as server:
            _served_once(server.url, CLIP_PATHS[0])  # warm-up
            runs = [_served_once(server.url, path) for _ in range(ROUNDS)]
        times[name], texts[name] = [t for t, _ in runs], runs[0][1]
    store = ModelStore(MANIFEST)
    entry = store.get(store.load(), MODEL)
    pipeline = BatchedInferencePipeline(WhisperModel(str(store.root / entry.path), device="cpu",
                                                     compute_type=entry.compute_type))  # fmt: skip

    def raw() -> tuple[float, str]:
        start = time.perf_counter()
        segments, _ = pipeline.transcribe(str(path))  # its defaults (batch_size 8, VAD on)
        text = "".join(segment.text for segment in segments).strip()
        return time.perf_counter() - start, text

    raw()  # warm-up
    runs = [raw() for _ in range(ROUNDS)]
    times["raw"], texts["raw"] = [t for t, _ in runs], runs[0][1]
    wer = {name: word_error_rate(reference, text) for name, text in texts.items()}
    seconds = len(audio) / SAMPLE_RATE
    return [{
        "benchmark": "throughput", "case": f"{seconds:.0f} s file: serve default vs {against}",
        "ours": min(times["ours"]), "baseline": min(times[base]),
        "unit": "s (best of rounds; ratio: time ours/baseline, lower better)",
        "ratio": min(times["ours"]) / min(times[base]), "goal": goal,
        "wer_ours": wer["ours"], "wer_baseline": wer[base], "times": times,
    } for base, against, goal in (
        ("raw", "raw faster-whisper BatchedInferencePipeline (speaches' engine)", "<= 1.0"),
        ("sequential", "serve sequential (OFFLINE_ASR_LONG_FORM_BATCH=0)", "<= 1/1.5"),
    )]  # fmt: skip


def _ray_rows(work: Path) -> list[dict[str, Any]]:
    """`batch --ray` on a one-node local cluster with every core against local `batch`, on
    `FILES` files and on three times as many (Ray's start-up cost is per job)."""
    ray = EXE.with_name("ray")
    temp = Path(tempfile.mkdtemp(prefix="oasr-ray-"))
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "RAY_USAGE_STATS_REPORT_URL": "offline:"}
    port = str(_free_port())
    start = [str(ray), "start", "--head", f"--port={port}", "--node-ip-address=127.0.0.1",
             f"--num-cpus={usable_cores()}", f"--temp-dir={temp}", "--disable-usage-stats",
             "--include-dashboard=false"]  # fmt: skip
    subprocess.run(start, env=env, check=True, capture_output=True)
    rows = []
    try:
        for count in (FILES, 3 * FILES):
            folder = _files(work / f"ray-in-{count}", count)
            times: dict[str, list[float]] = {"ray": [], "local": []}
            for round_ in range(ROUNDS):
                times["local"].append(_batch_seconds(folder, work / f"local-{count}-{round_}"))
                args = ("--ray", f"127.0.0.1:{port}")
                times["ray"].append(_batch_seconds(folder, work / f"ray-{count}-{round_}", *args))
            ours, base = min(times["ray"]), min(times["local"])
            rows.append({
                "benchmark": "throughput",
                "case": f"batch --ray (one local node) vs batch, {count} files",
                "ours": ours, "baseline": base, "ratio": base / ours,
                "unit": "s (ratio: time local / ray, higher better)",
                "goal": ">= 0.9", "times": times,
            })  # fmt: skip
    finally:  # this cluster's processes only (their command lines name its folder)
        for process in Path("/proc").glob("[0-9]*"):
            with suppress(OSError):
                if str(temp).encode() in (process / "cmdline").read_bytes():
                    os.kill(int(process.name), signal.SIGKILL)
    return rows


def run() -> list[dict[str, Any]]:
    with tempfile.TemporaryDirectory() as temp:
        work = Path(temp)
        rows = _memory_rows()
        rows += _batch_rows(work)
        rows += _ray_rows(work)
        rows += _long_rows(work)
        rows += _server_rows(work)
    return rows


if __name__ == "__main__":
    for row in run():
        print(row, flush=True)
