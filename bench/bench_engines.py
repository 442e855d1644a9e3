"""Our engines against the raw libraries they wrap, measured in one process.

Cases:
1. `WhisperEngine` vs a raw faster-whisper `WhisperModel` on the same folder, compute type and
   thread count, called with the options our engine passes: a ~4.5 s clip and a ~5 min file.
2. `GigaamEngine` vs raw onnx-asr on a ~60 s Russian file, for every GigaAM model registered
   (one per layout: CTC, RNN-T, end-to-end CTC and RNN-T), loaded by raw onnx-asr from the same
   folder under the same model name and quantization. Raw onnx-asr gets the same chunks our
   engine cuts (`plan_chunks`, timed inside the raw run too), recognised in batches of
   `DEFAULT_BATCH`, exactly as the engine does.
3. Our engine with `batch_size=8` (faster-whisper's `BatchedInferencePipeline`, VAD cut) vs
   our engine sequential on the ~5 min file, with the WER of both.

After one warm-up call of each contestant the runs alternate (ours, raw, ours, raw, ...) and
the reported time is the best (minimum) of N wall times, since other processes on the machine
only ever add time; `*_median` keys hold the medians and `*_cpu` the median process CPU time
(all threads), which load on the machine disturbs less. Time rows report
ratio = ours_time / baseline_time (lower is better). Long files are built in memory from the
shipped clips with 0.5-1 s silent pauses; their reference is the joined clip references.
Loading (including the verified-hash check) is timed once, apart from the per-call numbers.
"""

from __future__ import annotations

from offline_asr.asr.pins import pin_runtime

# As our package does on import, before numpy or ctranslate2 load: the raw WhisperModel in this
# process then runs with the same CPU pins as our engine.
pin_runtime()

import json  # noqa: E402
import os  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import numpy as np  # noqa: E402
import onnx_asr  # noqa: E402
import onnxruntime  # noqa: E402
from faster_whisper import WhisperModel  # noqa: E402

from offline_asr.asr.audio import decode_audio  # noqa: E402
from offline_asr.asr.base import DecodeOptions, TranscriptionEngine  # noqa: E402
from offline_asr.asr.gigaam_engine import DEFAULT_BATCH, plan_chunks  # noqa: E402
from offline_asr.asr.loader import LoadOptions, load_engine  # noqa: E402
from offline_asr.asr.smoke import word_error_rate  # noqa: E402
from offline_asr.asr.whisper_engine import WhisperEngine  # noqa: E402
from offline_asr.constants import CLIPS_DIR  # noqa: E402
from offline_asr.pcm import SAMPLE_RATE, Audio  # noqa: E402
from offline_asr.registry.layouts import gigaam_onnx_asr_name  # noqa: E402
from offline_asr.registry.snapshot import ManifestSnapshot  # noqa: E402
from offline_asr.registry.store import ModelStore  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
MANIFEST = ROOT / "models" / "manifest.json"
THREADS = os.cpu_count() or 0  # the same for our engines and the raw libraries
ROUNDS_SHORT = 7
ROUNDS_LONG = 3
LONG_SECONDS = 300.0
RU_SECONDS = 60.0
BATCH_SIZE = 8
BENCH = "engines"
TIME_UNIT = "s (best of {n}; ratio: time ours/raw, lower is better)"

Runner = Callable[[], str]
Times = dict[str, list[tuple[float, float]]]  # contestant -> [(wall, cpu)] per run


def _references() -> dict[str, str]:
    references: dict[str, str] = json.loads(
        (CLIPS_DIR / "references.json").read_text(encoding="utf-8")
    )
    return references


def _concatenate(names: list[str], seconds: float, seed: int) -> tuple[Audio, str]:
    """Repeat the clips in turn with 0.5-1 s of silence between them until `seconds` is reached."""
    references = _references()
    clips = [decode_audio(CLIPS_DIR / name) for name in names]
    rng = np.random.default_rng(seed)
    parts: list[Audio] = []
    texts: list[str] = []
    total = 0
    index = 0
    while total < seconds * SAMPLE_RATE:
        clip = clips[index % len(clips)]
        pause = np.zeros(int(rng.uniform(0.5, 1.0) * SAMPLE_RATE), dtype=np.float32)
        parts.extend([clip, pause])
        texts.append(references[names[index % len(names)]])
        total += len(clip) + len(pause)
        index += 1
    return np.concatenate(parts).astype(np.float32), " ".join(texts)


def _timed(function: Runner) -> tuple[float, float, str]:
    """Wall time, process CPU time and the transcript of one call."""
    cpu, start = time.process_time(), time.perf_counter()
    text = function()
    return time.perf_counter() - start, time.process_time() - cpu, text


def _alternate(
    runners: dict[str, Runner], rounds: int, warmup: dict[str, Runner] | None = None
) -> tuple[Times, dict[str, list[str]]]:
    """Warm each runner up once (or its `warmup` stand-in), then run them in turn `rounds` times."""
    for function in (warmup or runners).values():
        function()
    times: Times = {name: [] for name in runners}
    texts: dict[str, list[str]] = {name: [] for name in runners}
    for _ in range(rounds):
        for name, function in runners.items():
            wall, cpu, text = _timed(function)
            times[name].append((wall, cpu))
            texts[name].append(text)
    return times, texts


def _best(runs: list[tuple[float, float]]) -> float:
    return min(wall for wall, _ in runs)


def _row(
    case: str,
    ours: list[tuple[float, float]],
    baseline: list[tuple[float, float]],
    rounds: int,
    **extra: Any,
) -> dict[str, Any]:
    ours_wall, base_wall = [w for w, _ in ours], [w for w, _ in baseline]
    ours_cpu = statistics.median(c for _, c in ours)
    base_cpu = statistics.median(c for _, c in baseline)
    return {
        "benchmark": BENCH,
        "case": case,
        "ours": min(ours_wall),
        "baseline": min(base_wall),
        "unit": TIME_UNIT.format(n=rounds),
        "ratio": min(ours_wall) / min(base_wall),
        "ours_median": statistics.median(ours_wall),
        "baseline_median": statistics.median(base_wall),
        "ratio_median": statistics.median(ours_wall) / statistics.median(base_wall),
        "ours_cpu": ours_cpu,
        "baseline_cpu": base_cpu,
        "ratio_cpu": ours_cpu / base_cpu,
        "ours_times": [round(w, 4) for w in ours_wall],
        "baseline_times": [round(w, 4) for w in base_wall],
        **extra,
    }


def _load_timed(store: ModelStore, model_id: str) -> tuple[TranscriptionEngine, float]:
    start = time.perf_counter()
    engine = load_engine(
        ManifestSnapshot.read(store), model_id, LoadOptions(device="cpu", threads=THREADS)
    )
    return engine, time.perf_counter() - start


class _WhisperPair:
    """Our engine and a raw `WhisperModel` on the same folder, compute type and threads."""

    def __init__(self, store: ModelStore, model_id: str) -> None:
        self.model_id = model_id
        self.engine, ours_load = _load_timed(store, model_id)
        assert isinstance(self.engine, WhisperEngine)
        model = store.get(store.load(), model_id)
        start = time.perf_counter()
        self.raw = WhisperModel(
            str(store.root / model.path),
            device="cpu",
            compute_type=model.compute_type,
            cpu_threads=THREADS,
        )
        self.loads = {"load_ours_s": ours_load, "load_raw_s": time.perf_counter() - start}

    def runners(self, audio: Audio, language: str) -> dict[str, Runner]:
        engine, raw = self.engine, self.raw
        options = DecodeOptions(language=language)
        batched = DecodeOptions(language=language, batch_size=BATCH_SIZE)

        def ours() -> str:
            return engine.transcribe(audio, options).text

        def baseline() -> str:
            # What WhisperEngine passes for these options (see whisper_engine.py).
            segments, _ = raw.transcribe(
                audio,
                language=language,
                task="transcribe",
                beam_size=5,
                best_of=5,
                temperature=0.0,
                initial_prompt=None,
                word_timestamps=False,
                vad_filter=False,
                condition_on_previous_text=False,
            )
            return "".join(segment.text for segment in segments).strip()

        def ours_batched() -> str:
            return engine.transcribe(audio, batched).text

        return {"ours": ours, "raw": baseline, "batched": ours_batched}


def _identity(texts: dict[str, list[str]], first: str, second: str) -> dict[str, Any]:
    return {
        "identical_text": texts[first][0] == texts[second][0],
        "deterministic": all(len(set(v)) == 1 for v in texts.values()),
    }


def _whisper_short(pair: _WhisperPair, audio: Audio, reference: str) -> dict[str, Any]:
    runners = pair.runners(audio, "en")
    del runners["batched"]
    times, texts = _alternate(runners, ROUNDS_SHORT)
    return _row(
        f"{pair.model_id} en_short {len(audio) / SAMPLE_RATE:.1f} s: ours vs raw faster-whisper",
        times["ours"],
        times["raw"],
        ROUNDS_SHORT,
        goal="ratio <= 1.05",
        **_identity(texts, "ours", "raw"),
        text_ours=texts["ours"][0],
        text_baseline=texts["raw"][0],
        wer_ours=word_error_rate(reference, texts["ours"][0]),
        wer_baseline=word_error_rate(reference, texts["raw"][0]),
        **pair.loads,
    )


def _whisper_long(pair: _WhisperPair, short: Audio) -> list[dict[str, Any]]:
    audio, reference = _concatenate(["en_short.wav", "en_second.wav"], LONG_SECONDS, seed=0)
    length = f"{len(audio) / SAMPLE_RATE:.0f} s"
    # One call of each on the short clip warms up the same objects (incl. the batched VAD).
    times, texts = _alternate(
        pair.runners(audio, "en"), ROUNDS_LONG, warmup=pair.runners(short, "en")
    )
    wer = {name: word_error_rate(reference, text[0]) for name, text in texts.items()}
    overhead = _row(
        f"{pair.model_id} {length} long-form: ours vs raw faster-whisper",
        times["ours"],
        times["raw"],
        ROUNDS_LONG,
        goal="ratio <= 1.05",
        identical_text=texts["ours"][0] == texts["raw"][0],
        deterministic=len(set(texts["ours"])) == 1 and len(set(texts["raw"])) == 1,
        wer_ours=wer["ours"],
        wer_baseline=wer["raw"],
        reference_words=len(reference.split()),
    )
    batched = _row(
        f"{pair.model_id} {length} long-form: ours batch_size={BATCH_SIZE} vs ours sequential",
        times["batched"],
        times["ours"],
        ROUNDS_LONG,
        goal="speedup (sequential/batched) >= 1.5 on 2 cores",
        speedup=_best(times["ours"]) / _best(times["batched"]),
        speedup_median=statistics.median(w for w, _ in times["ours"])
        / statistics.median(w for w, _ in times["batched"]),
        wer_ours=wer["batched"],
        wer_baseline=wer["ours"],
        identical_text=texts["batched"][0] == texts["ours"][0],
        deterministic=len(set(texts["batched"])) == 1,
        note="ours = batched (VAD cut), baseline = sequential; both our engine",
    )
    batched["unit"] = f"s (best of {ROUNDS_LONG}; ratio: time batched/sequential, lower is better)"
    return [overhead, batched]


def _gigaam(store: ModelStore, model_id: str) -> dict[str, Any]:
    audio, _ = _concatenate(["ru_short.wav"], RU_SECONDS, seed=1)
    engine, ours_load = _load_timed(store, model_id)
    model = store.get(store.load(), model_id)
    session = onnxruntime.SessionOptions()
    session.intra_op_num_threads = THREADS
    start = time.perf_counter()
    raw = onnx_asr.load_model(
        gigaam_onnx_asr_name(model.variant),
        str(store.root / model.path),
        quantization="int8" if model.precision == "int8" else None,
        sess_options=session,
    ).with_timestamps()
    raw_load = time.perf_counter() - start

    def ours() -> str:
        return engine.transcribe(audio, DecodeOptions(language="ru")).text

    def baseline() -> str:
        chunks = plan_chunks(audio)
        texts: list[str] = []
        for first in range(0, len(chunks), DEFAULT_BATCH):
            group = chunks[first : first + DEFAULT_BATCH]
            results = raw.recognize([audio[start:end] for start, end in group])
            texts.extend(result.text.strip() for result in results)
        return " ".join(text for text in texts if text)

    def plan() -> str:
        return str(len(plan_chunks(audio)))

    times, texts = _alternate({"ours": ours, "raw": baseline}, ROUNDS_SHORT)
    # Timed apart: in the rotation, whichever side ran right after it would start with the
    # VAD session warm and the GigaAM session's threads idle, and look faster.
    plan_times = [_timed(plan)[:2] for _ in range(ROUNDS_SHORT)]
    return _row(
        f"{model_id} ru {len(audio) / SAMPLE_RATE:.0f} s: ours vs raw onnx-asr (same chunks)",
        times["ours"],
        times["raw"],
        ROUNDS_SHORT,
        goal="ratio <= 1.05",
        **_identity(texts, "ours", "raw"),
        chunks=len(plan_chunks(audio)),
        plan_chunks_s=_best(plan_times),
        load_ours_s=ours_load,
        load_raw_s=raw_load,
        note="random-weight test model: transcripts are meaningless (no WER); both sides run "
        "plan_chunks (Silero VAD), which is most of the time with this tiny network",
    )


def run() -> list[dict[str, Any]]:
    store = ModelStore(MANIFEST)
    short = decode_audio(CLIPS_DIR / "en_short.wav")
    reference = _references()["en_short.wav"]
    tiny = _WhisperPair(store, "whisper-tiny.en")
    rows = [_whisper_short(tiny, short, reference)]
    rows.extend(_whisper_long(tiny, short))
    del tiny
    rows.append(_whisper_short(_WhisperPair(store, "whisper-base"), short, reference))
    rows.extend(_gigaam(store, m.id) for m in store.load().models if m.engine == "gigaam")
    return rows
