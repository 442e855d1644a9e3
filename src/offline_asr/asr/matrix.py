"""`models smoke --matrix`: which configurations of this CPU give identical decoded content.

Every configuration (CTranslate2 ISA x GEMM backend x thread count) runs in its own process,
since the pins must be in the environment before the libraries load (`pins`); the ISA's
derived ceilings (oneDNN, MKL, NumPy, OpenBLAS) follow it as they would on a machine pinned to
it. Each model transcribes every shipped clip in its languages with word timings, and the
configurations are grouped by the decoded content they produce, model by model.

Run as `python -m offline_asr.asr.matrix MANIFEST THREADS ID...` it is the worker: one
configuration's transcripts as JSON on stdout.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from offline_asr.asr.base import Decoded, Scores
from offline_asr.asr.goldens import decoded_differences, score_differences
from offline_asr.asr.pins import (
    ISA_ENV,
    ISA_FLAG,
    ISA_LEVELS,
    MKL_ENV,
    best_isa,
    cpu_flags,
    unpinned_environment,
)
from offline_asr.asr.smoke import CLIP_LANGUAGE
from offline_asr.registry.schemas import ModelMetadata
from offline_asr.registry.snapshot import ManifestSnapshot
from offline_asr.registry.store import ModelStore

GEMMS = ("onednn", "mkl")
THREADS = (1, 2)
WORKER_TIMEOUT_S = 3600


@dataclass(frozen=True)
class Config:
    isa: str
    gemm: str
    threads: int

    @property
    def label(self) -> str:
        return f"{self.isa} / {self.gemm} / {self.threads} thread{'s' * (self.threads > 1)}"

    def environment(self, base: dict[str, str]) -> dict[str, str]:
        """`base` with this configuration's pins instead of offline-asr's own."""
        mkl = "1" if self.gemm == "mkl" else "0"
        return unpinned_environment(base) | {ISA_ENV: self.isa, MKL_ENV: mkl}


def offered_isas(flags: set[str] | None = None) -> list[str]:
    """The CTranslate2 ISAs this CPU can run."""
    flags = cpu_flags() if flags is None else flags
    return [level for level in ISA_LEVELS if level == "GENERIC" or ISA_FLAG[level] in flags]


def configurations(isas: list[str], gemms: list[str]) -> list[Config]:
    return [Config(isa, gemm, threads) for isa in isas for gemm in gemms for threads in THREADS]


def default_config() -> tuple[str, str]:
    """The ISA and backend offline-asr pins by itself on this CPU."""
    return best_isa(cpu_flags()), GEMMS[0]


def clips_for(model: ModelMetadata) -> list[str]:
    return [clip for clip, language in CLIP_LANGUAGE.items() if language in model.languages]


@dataclass
class Run:
    """One configuration's output: per model and clip, decoded content and scores."""

    config: Config
    runtime: dict[str, str] = field(default_factory=dict)
    outputs: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)
    error: str | None = None

    def decoded_key(self, model_id: str) -> str:
        clips = {clip: out["decoded"] for clip, out in self.outputs[model_id].items()}
        return hashlib.sha256(json.dumps(clips, sort_keys=True).encode()).hexdigest()


@dataclass
class ModelGroups:
    """Configurations of one model grouped by identical decoded content (A, B, ...)."""

    model_id: str
    label: dict[Config, str] = field(default_factory=dict)
    score_spread: dict[str, float] = field(default_factory=dict)  # largest within each group
    first: dict[str, Run] = field(default_factory=dict)  # each group's reference run

    def members(self) -> dict[str, list[Config]]:
        groups: dict[str, list[Config]] = {}
        for config, letter in self.label.items():
            groups.setdefault(letter, []).append(config)
        return groups


def _score_spread(a: dict[str, Any], b: dict[str, Any]) -> float:
    spread = 0.0
    for clip in a:
        differences = score_differences(
            Scores.model_validate(a[clip]["scores"]), Scores.model_validate(b[clip]["scores"]), 0.0
        )
        for d in differences:
            if isinstance(d.recorded, float) and isinstance(d.now, float):
                spread = max(spread, abs(d.recorded - d.now))
    return spread


def group(runs: list[Run], model_id: str) -> ModelGroups:
    """Letters in order of first appearance; the first run of a group is its reference."""
    groups = ModelGroups(model_id)
    letters: dict[str, str] = {}  # decoded content's hash -> letter
    for run in runs:
        if run.error is not None or model_id not in run.outputs:
            continue
        key = run.decoded_key(model_id)
        if key not in letters:
            letters[key] = chr(ord("A") + len(letters))
            groups.first[letters[key]], groups.score_spread[letters[key]] = run, 0.0
        letter = letters[key]
        groups.label[run.config] = letter
        spread = _score_spread(groups.first[letter].outputs[model_id], run.outputs[model_id])
        groups.score_spread[letter] = max(groups.score_spread[letter], spread)
    return groups


def first_differences(groups: ModelGroups, letter: str, reference: str, limit: int = 2) -> str:
    """Where group `letter`'s decoded content first departs from group `reference`'s."""
    ours = groups.first[letter].outputs[groups.model_id]
    theirs = groups.first[reference].outputs[groups.model_id]
    found = []
    for clip in theirs:
        before = Decoded.model_validate(theirs[clip]["decoded"])
        after = Decoded.model_validate(ours[clip]["decoded"])
        for d in decoded_differences(before, after):
            where = clip if d.segment is None else f"{clip} segment {d.segment},"
            found.append(f"{where} {d.field}: {reference} {d.recorded!r}, {letter} {d.now!r}")
    more = f" (and {len(found) - limit} more)" if len(found) > limit else ""
    return "; ".join(found[:limit]) + more


def run_matrix(
    store: ModelStore,
    models: list[ModelMetadata],
    configs: list[Config],
    on_done: Callable[[str], None] = lambda label: None,
) -> list[Run]:
    """One worker process per configuration; a configuration that crashes is reported."""
    runs = []
    for config in configs:
        command = [sys.executable, "-m", "offline_asr.asr.matrix", str(store.manifest_path),
                   str(config.threads), *(m.id for m in models)]  # fmt: skip
        proc = subprocess.run(
            command, env=config.environment(dict(os.environ)), capture_output=True, text=True,
            timeout=WORKER_TIMEOUT_S, check=False,
        )  # fmt: skip
        run = Run(config)
        if proc.returncode != 0:
            tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
            run.error = f"exit code {proc.returncode}: {tail}"
        else:
            payload = json.loads(proc.stdout)
            run.runtime, run.outputs = payload["runtime"], payload["models"]
        runs.append(run)
        on_done(config.label)
    return runs


def _worker(manifest: Path, threads: int, ids: list[str]) -> dict[str, Any]:
    from offline_asr.asr.audio import decode_audio
    from offline_asr.asr.base import DecodeOptions
    from offline_asr.asr.loader import LoadOptions, load_engine
    from offline_asr.config import Settings
    from offline_asr.constants import CLIPS_DIR

    snapshot = ManifestSnapshot.read(ModelStore(manifest))
    load = LoadOptions.from_settings(Settings.load(), threads=threads)  # a process's edge
    payload: dict[str, Any] = {"runtime": {}, "models": {}}
    for model_id in ids:
        model = snapshot.entry(model_id)
        engine = load_engine(snapshot, model_id, load)
        outputs = payload["models"].setdefault(model_id, {})
        for clip in clips_for(model):
            options = DecodeOptions(language=CLIP_LANGUAGE[clip], word_timestamps=True)
            result = engine.transcribe(decode_audio(CLIPS_DIR / clip), options)
            decoded: Decoded = result.decoded()
            outputs[clip] = {"decoded": decoded.model_dump(mode="json"),
                             "scores": result.scores(None).model_dump(mode="json")}  # fmt: skip
            payload["runtime"].update(result.runtime)
    return payload


if __name__ == "__main__":
    manifest_arg, threads_arg, *model_ids = sys.argv[1:]
    json.dump(_worker(Path(manifest_arg), int(threads_arg), model_ids), sys.stdout)
