"""Smoke tests: a fixed clip through a model, checked against its reference and golden output.

`models prepare` records the golden hash; `models smoke` (and `doctor`) compare with it. When the
output differs, the recorded runtime says what probably changed: CPU ISA, compute type, versions.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path

import jiwer

from offline_asr.asr import engine_class
from offline_asr.asr.base import DecodeOptions, TranscriptionResult
from offline_asr.audio import decode_audio
from offline_asr.constants import CLIPS_DIR, EXIT_CHECK_FAILED
from offline_asr.errors import IntegrityError, OfflineAsrError
from offline_asr.registry.catalog import is_structural_test_model
from offline_asr.registry.store import ModelStore
from offline_asr.schemas import ModelMetadata, SmokeTest

_CLIP_LANGUAGE = {"en_short.wav": "en", "ru_short.wav": "ru"}


class SmokeTestError(OfflineAsrError):
    """A model failed its smoke test."""

    exit_code = EXIT_CHECK_FAILED


_CAUSES = {
    "ct2_cpu_isa": "CTranslate2 dispatches to other CPU kernels (set CT2_FORCE_CPU_ISA={old} "
    "to match the recording)",
    "compute_type": "the model runs at another compute type",
    "precision": "the model runs at another precision",
    "device": "the model runs on another device",
}


def normalize(text: str) -> str:
    """Lowercase, drop punctuation, read Russian yo as ye: WER counts words, not typography."""
    text = text.lower().replace("\u0451", "\u0435")
    return " ".join(re.sub(r"[^\w\s']", " ", text).split())


def word_error_rate(reference: str, hypothesis: str) -> float:
    return float(jiwer.wer(normalize(reference), normalize(hypothesis) or "<empty>"))


def clip_path(store: ModelStore, audio: str) -> Path:
    """A smoke clip: relative to the store if it is there, else one that ships with offline-asr."""
    in_store = store.root / audio
    return in_store if in_store.is_file() else CLIPS_DIR / audio


def default_smoke(model: ModelMetadata) -> SmokeTest:
    """English clip for Whisper, Russian for GigaAM; no WER bound for a structural test model."""
    name = "en_short.wav" if model.engine == "whisper" else "ru_short.wav"
    references = json.loads((CLIPS_DIR / "references.json").read_text(encoding="utf-8"))
    is_test_model = is_structural_test_model(model)
    return SmokeTest(
        audio=name,
        audio_sha256=hashlib.sha256((CLIPS_DIR / name).read_bytes()).hexdigest(),
        language=_CLIP_LANGUAGE[name],
        reference_text=references[name],
        max_wer=None if is_test_model else 0.15 if model.engine == "whisper" else 0.3,
    )


def _run(
    store: ModelStore, model: ModelMetadata, smoke: SmokeTest, manifest_version: int
) -> TranscriptionResult:
    path = clip_path(store, smoke.audio)
    if not path.is_file():
        raise IntegrityError(f"smoke clip {smoke.audio} of {model.id!r} is missing ({path})")
    actual = hashlib.sha256(path.read_bytes()).hexdigest()
    if actual != smoke.audio_sha256:
        raise IntegrityError(
            f"smoke clip {path} has sha256 {actual}, the manifest says {smoke.audio_sha256}"
        )
    engine = engine_class(model.engine)(store)
    engine.load_entry(model, manifest_version)
    return engine.transcribe(decode_audio(path), DecodeOptions(language=smoke.language))


def record_smoke(store: ModelStore, model: ModelMetadata, manifest_version: int) -> SmokeTest:
    """Run the default smoke clip and return it with the golden hash and runtime filled in.

    A model that misses the WER bound on its own smoke clip is not registered.
    """
    smoke = default_smoke(model)
    result = _run(store, model, smoke, manifest_version)
    wer = word_error_rate(smoke.reference_text, result.text)
    if smoke.max_wer is not None and wer > smoke.max_wer:
        raise SmokeTestError(
            f"model {model.id!r} transcribed the smoke clip {smoke.audio} as {result.text!r}: "
            f"word error rate {wer:.2f} is above {smoke.max_wer}; it was not registered"
        )
    return smoke.model_copy(
        update={"golden_sha256": result.golden_sha256(), "runtime": result.runtime}
    )


@dataclass
class SmokeReport:
    model_id: str
    text: str
    reference: str
    wer: float
    max_wer: float | None
    golden_expected: str | None
    golden_actual: str
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_dict(self) -> dict[str, object]:
        return asdict(self) | {"ok": self.ok}


def explain_difference(recorded: dict[str, str], current: dict[str, str]) -> str:
    """Name the runtime differences that most likely changed the output."""
    causes = []
    for key in sorted(recorded.keys() | current.keys()):
        old, new = recorded.get(key), current.get(key)
        if old == new:
            continue
        cause = _CAUSES.get(key, f"{key} is another version").format(old=old)
        causes.append(f"{key}: recorded {old}, now {new} — {cause}")
    if not causes:
        return (
            "the runtime is the same as when it was recorded, so the weights or the decoding "
            "changed: run `offline-asr models verify`"
        )
    return "; ".join(causes)


def check_smoke(store: ModelStore, model: ModelMetadata, manifest_version: int) -> SmokeReport:
    """Run a model's smoke test and compare with its reference text and golden hash."""
    if model.smoke is None:
        raise IntegrityError(
            f"model {model.id!r} has no smoke test; prepare it again to record one"
        )
    smoke = model.smoke
    result = _run(store, model, smoke, manifest_version)
    wer = word_error_rate(smoke.reference_text, result.text)
    report = SmokeReport(
        model.id, result.text, smoke.reference_text, wer, smoke.max_wer, smoke.golden_sha256,
        result.golden_sha256(),
    )  # fmt: skip
    if smoke.max_wer is not None and wer > smoke.max_wer:
        report.problems.append(f"word error rate {wer:.2f} is above the bound {smoke.max_wer}")
    if smoke.golden_sha256 is not None and report.golden_actual != smoke.golden_sha256:
        report.problems.append(
            "the output differs from the golden output recorded at preparation: "
            + explain_difference(smoke.runtime, result.runtime)
        )
    return report
