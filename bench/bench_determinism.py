"""The cost of determinism: offline-asr's pinned configuration against CTranslate2's default.

Contestants, each a raw faster-whisper `WhisperModel` with the options `WhisperEngine` passes,
in its own process (the pins are read when the libraries load):

- pinned: what `import offline_asr` sets (`pins.py`): the ISA (AVX2 here), oneDNN with its ISA
  ceiling (`CT2_USE_MKL=0`), NumPy's SIMD ceiling, OpenBLAS's kernel and one OpenBLAS thread;
- default: no pin variable at all, so CTranslate2 picks its ISA and GEMM backend by CPU (on this
  AMD CPU: AVX2 and oneDNN; on an Intel CPU it would pick MKL) and OpenBLAS uses every core;
- mkl: the pins, with `CT2_USE_MKL=1` (and `MKL_CBWR` at the ISA): what an Intel machine gets
  by default, measured here on AMD, where MKL is known to avoid its fast code paths (on the
  short clip only: it is 4-6x slower here).

Per round every contestant's worker warms up once, then times `calls` transcriptions and reports
the best; rounds alternate the contestants, and the best round counts (other processes on the
machine only ever add time). The same thread count (the core count) for all. Time rows report
ratio = contestant / default (lower is better); `same_text` says whether the transcripts agree.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve()
ROOT = HERE.parent.parent
MODELS = {"whisper-tiny.en": ROOT / "models" / "whisper" / "tiny.en",
          "whisper-base": ROOT / "models" / "whisper" / "base"}  # fmt: skip
CLIPS = ROOT / "src" / "offline_asr" / "data" / "clips"
CASES = {"4.5 s clip": (0.0, 5), "30 s file": (30.0, 2)}  # seconds (0: the clip), calls
MKL_CASES = ("4.5 s clip",)  # MKL runs 4-6x slower here: the clip is enough to show it
ROUNDS = 3
BENCH = "determinism"
CONTESTANTS = ("pinned", "default", "mkl")
PIN_VARIABLES = (
    "CT2_FORCE_CPU_ISA", "CT2_USE_MKL", "OPENBLAS_NUM_THREADS", "ONEDNN_MAX_CPU_ISA",
    "MKL_CBWR", "OPENBLAS_CORETYPE", "NPY_DISABLE_CPU_FEATURES", "OFFLINE_ASR_PINNED",
)  # fmt: skip


def _environment(contestant: str) -> dict[str, str]:
    """No pin variable at all, then the contestant's (set afresh by its worker)."""
    env = {k: v for k, v in os.environ.items() if k not in PIN_VARIABLES}
    return env | {"CT2_USE_MKL": "1"} if contestant == "mkl" else env


def _run_worker(contestant: str, model: str, seconds: float, calls: int) -> dict[str, Any]:
    command = [sys.executable, str(HERE), contestant, model, str(seconds), str(calls)]
    proc = subprocess.run(command, env=_environment(contestant), capture_output=True, text=True,
                          check=True, timeout=3600)  # fmt: skip
    result: dict[str, Any] = json.loads(proc.stdout)
    return result


def run() -> list[dict[str, Any]]:
    rows = []
    for model in MODELS:
        for case, (seconds, calls) in CASES.items():
            best: dict[str, float] = {}
            texts: dict[str, str] = {}
            runtime: dict[str, str] = {}
            contestants = [c for c in CONTESTANTS if c != "mkl" or case in MKL_CASES]
            for _ in range(ROUNDS):
                for contestant in contestants:
                    out = _run_worker(contestant, model, seconds, calls)
                    best[contestant] = min(best.get(contestant, float("inf")), out["best_s"])
                    texts[contestant], runtime[contestant] = out["text"], out["config"]
            for contestant in [c for c in contestants if c != "default"]:
                rows.append({
                    "benchmark": BENCH,
                    "case": f"{model}, {case}: {contestant} vs CTranslate2 default",
                    "ours": best[contestant],
                    "baseline": best["default"],
                    "unit": f"s (best of {ROUNDS} rounds x {calls}; ratio: time, lower is better)",
                    "ratio": best[contestant] / best["default"],
                    "same_text": texts[contestant] == texts["default"],
                    "config": runtime[contestant],
                    "default_config": runtime["default"],
                })  # fmt: skip
    return rows


def _worker(contestant: str, model: str, seconds: float, calls: int) -> dict[str, Any]:
    if contestant != "default":
        from offline_asr.asr.pins import pin_runtime

        pin_runtime()  # before numpy and CTranslate2 load, as `import offline_asr` does
    import numpy as np
    from faster_whisper import WhisperModel, decode_audio

    clip = decode_audio(str(CLIPS / "en_short.wav"))
    audio = clip
    if seconds:
        second = decode_audio(str(CLIPS / "en_second.wav"))
        pause = np.zeros(12_000, dtype=np.float32)
        parts: list[Any] = []
        while sum(len(p) for p in parts) < seconds * 16_000:
            parts += [clip, pause, second, pause]
        audio = np.concatenate(parts)
    threads = os.cpu_count() or 0
    whisper = WhisperModel(str(MODELS[model]), device="cpu", compute_type="int8",
                           cpu_threads=threads)  # fmt: skip

    def transcribe() -> str:
        segments, _ = whisper.transcribe(
            audio, language="en", task="transcribe", beam_size=5, best_of=5, temperature=0.0,
            initial_prompt=None, word_timestamps=False, vad_filter=False,
            condition_on_previous_text=False,
        )  # fmt: skip
        return "".join(segment.text for segment in segments).strip()

    text = transcribe()  # warm-up
    times = []
    for _ in range(calls):
        start = time.perf_counter()
        transcribe()
        times.append(time.perf_counter() - start)
    config = {name: os.environ.get(name, "(unset)") for name in PIN_VARIABLES[:3]}
    return {"best_s": min(times), "text": text, "config": config}


if __name__ == "__main__":
    name, model_id, length, count = sys.argv[1:]
    json.dump(_worker(name, model_id, float(length), int(count)), sys.stdout)
