"""The model id `auto`: detect the language with a multilingual Whisper, send Russian to GigaAM."""

from __future__ import annotations

from offline_asr.asr.base import (
    DecodeOptions,
    EngineError,
    OnSegment,
    TranscriptionEngine,
    TranscriptionResult,
)
from offline_asr.asr.loader import LoadOptions, load_engine
from offline_asr.asr.whisper_engine import WhisperEngine
from offline_asr.errors import SourceError
from offline_asr.pcm import Audio
from offline_asr.registry.layouts import gigaam_onnx_asr_name
from offline_asr.registry.schemas import Manifest, ModelMetadata
from offline_asr.registry.snapshot import ManifestSnapshot

AUTO_MODEL = "auto"


# Russian goes to the best GigaAM installed: the end-to-end models write punctuated,
# normalised text (the RNN-T one has the lowest WER in GigaAM's own table), then v3 over v2.
GIGAAM_PREFERENCE = {
    "gigaam-v3-e2e-rnnt": "end-to-end RNN-T, punctuated text",
    "gigaam-v3-e2e-ctc": "end-to-end CTC, punctuated text",
    "gigaam-v3-rnnt": "v3 RNN-T, no punctuation",
    "gigaam-v3-ctc": "v3 CTC, no punctuation",
    "gigaam-v2-rnnt": "v2 RNN-T, no punctuation",
    "gigaam-v2-ctc": "v2 CTC, no punctuation",
}


def _detector(manifest: Manifest, wanted: str | None) -> str | None:
    if wanted is not None:
        return wanted
    for model in manifest.models:
        if model.engine == "whisper" and len(model.languages) > 1:
            return model.id
    return None


def pick_russian_model(manifest: Manifest, wanted: str | None) -> tuple[str | None, str]:
    """The GigaAM model for Russian and why it was chosen (structural test models never are)."""
    if wanted is not None:
        return wanted, "DEFAULT_GIGAAM_MODEL"
    kinds = list(GIGAAM_PREFERENCE)

    def layout(model: ModelMetadata) -> str:
        try:
            return gigaam_onnx_asr_name(model.variant)
        except SourceError:  # a variant this version does not know: last
            return "an unknown GigaAM layout"

    ranked = sorted(
        (m for m in manifest.models if m.engine == "gigaam" and not m.is_test_model),
        key=lambda m: kinds.index(layout(m)) if layout(m) in kinds else len(kinds),
    )
    if not ranked:
        return None, "no GigaAM model installed"
    chosen = ranked[0]
    reason = GIGAAM_PREFERENCE.get(layout(chosen), layout(chosen))
    others = [m.id for m in ranked[1:]]
    return chosen.id, reason + (f"; preferred over {', '.join(others)}" if others else "")


class AutoRouter:
    """Routes each request to the model that fits the detected language; the result names it.

    The detector is `DEFAULT_WHISPER_MODEL` (else the first multilingual Whisper), the Russian
    model `DEFAULT_GIGAAM_MODEL` (else the best GigaAM installed, end-to-end first, never a
    structural test model); with no GigaAM model, Whisper answers every language. The result's
    `runtime.route` says which model answered and why.
    """

    model_id = AUTO_MODEL

    def __init__(self, snapshot: ManifestSnapshot, options: LoadOptions) -> None:
        manifest = snapshot.manifest
        detector_id = _detector(manifest, options.default_whisper_model)
        if detector_id is None:
            raise EngineError(
                "the model `auto` needs a multilingual Whisper model to detect the language: "
                "prepare one (`offline-asr models prepare --engine whisper --variant base`)"
            )
        self.detector_id = detector_id
        self.gigaam_id, self.gigaam_reason = pick_russian_model(
            manifest, options.default_gigaam_model
        )
        for model_id in filter(None, (self.detector_id, self.gigaam_id)):
            snapshot.entry(model_id)  # unknown ids fail now, not on the first request
        self.snapshot = snapshot
        self.options = options
        self._engines: dict[str, TranscriptionEngine] = {}

    def engine(self, model_id: str) -> TranscriptionEngine:
        if model_id not in self._engines:
            self._engines[model_id] = load_engine(self.snapshot, model_id, self.options)
        return self._engines[model_id]

    def transcribe(
        self, audio: Audio, options: DecodeOptions, on_segment: OnSegment | None = None
    ) -> TranscriptionResult:
        language, probability = options.language, 1.0
        if language is None:
            detector = self.engine(self.detector_id)
            assert isinstance(detector, WhisperEngine)
            language, probability = detector.detect_language(audio)
        target = self.gigaam_id if language == "ru" and self.gigaam_id else self.detector_id
        chosen = options.model_copy(update={"language": language})
        result = self.engine(target).transcribe(audio, chosen, on_segment)
        why = f" ({self.gigaam_reason})" if target == self.gigaam_id else ""
        result.runtime["route"] = (
            f"auto: language {language} (p={probability:.2f}, {self.detector_id}) -> {target}{why}"
        )
        return result
