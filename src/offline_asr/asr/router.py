"""The model id `auto`: detect the language with a multilingual Whisper, send Russian to GigaAM."""

from __future__ import annotations

from typing import Any

from offline_asr.asr import engine_class
from offline_asr.asr.base import (
    Audio,
    DecodeOptions,
    EngineError,
    OnSegment,
    TranscriptionEngine,
    TranscriptionResult,
)
from offline_asr.asr.whisper_engine import WhisperEngine
from offline_asr.config import Settings
from offline_asr.registry.store import ModelStore
from offline_asr.schemas import Manifest

AUTO_MODEL = "auto"


def _pick(manifest: Manifest, wanted: str | None, engine: str, multilingual: bool) -> str | None:
    if wanted is not None:
        return wanted
    for model in manifest.models:
        if model.engine != engine or model.variant.endswith("-testtiny"):
            continue
        if not multilingual or len(model.languages) > 1:
            return model.id
    return None


class AutoRouter:
    """Routes each request to the model that fits the detected language; the result names it.

    The detector is `DEFAULT_WHISPER_MODEL` (else the first multilingual Whisper), the Russian
    model `DEFAULT_GIGAAM_MODEL` (else the first GigaAM that is not a structural test model);
    with no GigaAM model, Whisper answers every language.
    """

    def __init__(
        self,
        store: ModelStore,
        *,
        detector: str | None = None,
        gigaam: str | None = None,
        **engine_options: Any,
    ) -> None:
        settings = Settings()
        manifest = store.load()
        detector_id = _pick(manifest, detector or settings.default_whisper_model, "whisper", True)
        if detector_id is None:
            raise EngineError(
                "the model `auto` needs a multilingual Whisper model to detect the language: "
                "prepare one (`offline-asr models prepare --engine whisper --variant base`)"
            )
        self.detector_id = detector_id
        self.gigaam_id = _pick(manifest, gigaam or settings.default_gigaam_model, "gigaam", False)
        for model_id in filter(None, (self.detector_id, self.gigaam_id)):
            store.get(manifest, model_id)  # unknown ids fail now, not on the first request
        self.store = store
        self.engine_options = engine_options
        self._engines: dict[str, TranscriptionEngine] = {}

    def engine(self, model_id: str) -> TranscriptionEngine:
        if model_id not in self._engines:
            model = self.store.get(self.store.load(), model_id)
            engine = engine_class(model.engine)(self.store, **self.engine_options)
            engine.load(model_id)
            self._engines[model_id] = engine
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
        result.runtime["route"] = (
            f"auto: language {language} (p={probability:.2f}, {self.detector_id}) -> {target}"
        )
        return result
