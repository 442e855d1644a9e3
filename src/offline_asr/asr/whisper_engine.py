"""Whisper through faster-whisper (CTranslate2), with a deterministic decode profile."""

from __future__ import annotations

from importlib import metadata
from pathlib import Path

# CTranslate2 reads its CPU pins when it loads: `offline_asr/__init__.py` set them already.
from faster_whisper import BatchedInferencePipeline, WhisperModel

from offline_asr.asr.base import (
    DecodeOptions,
    EngineError,
    OnSegment,
    Segment,
    TranscriptionEngine,
    TranscriptionResult,
    Word,
)
from offline_asr.asr.device import choose_device
from offline_asr.asr.pins import ctranslate2_facts, host_facts
from offline_asr.asr.whisper_features import BlockedFeatureExtractor
from offline_asr.pcm import SAMPLE_RATE, Audio
from offline_asr.registry.schemas import ModelMetadata

LONG_FORM_SECONDS = 30.0
"""Audio longer than Whisper's window: the batched pipeline decodes its pieces side by side."""
LONG_FORM_BATCH_MAX_SECONDS = 1200.0
"""...up to this length. The batched pipeline runs Silero VAD over the whole file, 10,000
windows at a time, and holds every piece: measured with whisper-tiny.en, its peak grows by
330 MB for 2 min, 550 MB for 5, 700 MB for 20 and over 1.2 GB for an hour, against 35 MB for
sequential decoding at any length. Longer audio is decoded sequentially in bounded memory
unless the request names a batch size."""


class WhisperEngine(TranscriptionEngine):
    """faster-whisper with one temperature (no random fallback) and a fixed beam size."""

    engine = "whisper"
    class_keys = ("arch", "ct2_cpu_isa", "onednn_isa", "gemm", "mkl_cbwr", "numpy_simd",
                  "openblas_core", "openblas_threads", "device", "compute_type")  # fmt: skip

    def _load(self, model: ModelMetadata, folder: Path) -> None:
        self.device = choose_device(self.device_request, "whisper")
        try:
            self._model = WhisperModel(
                str(folder),
                device=self.device,
                compute_type=model.compute_type,
                cpu_threads=self.threads,
                num_workers=self.workers,  # parallel calls from as many threads; shared weights
                local_files_only=True,
            )
        except ValueError as error:  # e.g. float16 compute on a CPU
            raise EngineError(
                f"cannot load {model.id!r} on {self.device} with compute type "
                f"{model.compute_type}: {error}"
            ) from error
        # Same features, computed 30 s at a time: memory follows the audio's length.
        self._model.feature_extractor = BlockedFeatureExtractor(**self._model.feat_kwargs)
        self._batched = BatchedInferencePipeline(self._model)
        self._runtime = (
            host_facts()
            | ctranslate2_facts()
            | {
                "device": self.device,
                "compute_type": model.compute_type,
                "ctranslate2": metadata.version("ctranslate2"),
                "faster-whisper": metadata.version("faster-whisper"),
            }
        )

    def detect_language(self, audio: Audio) -> tuple[str, float]:
        """The most probable language of the first 30 s and its probability."""
        language, probability, _ = self._model.detect_language(audio)
        return language, probability

    def _transcribe(
        self, audio: Audio, options: DecodeOptions, on_segment: OnSegment
    ) -> TranscriptionResult:
        seconds = len(audio) / SAMPLE_RATE
        long_form = LONG_FORM_SECONDS < seconds <= LONG_FORM_BATCH_MAX_SECONDS
        if long_form and self.long_form_batch_size and options.batch_size is None:
            options = options.model_copy(update={"batch_size": self.long_form_batch_size})
        if options.batch_size is not None:
            # The batched pipeline cuts long audio at the pauses its VAD finds.
            options = options.model_copy(update={"vad_filter": True})
        common = {
            "language": options.language,
            "task": options.task,
            "beam_size": options.beam_size,
            "best_of": options.beam_size,
            "temperature": options.temperature,
            "initial_prompt": options.initial_prompt,
            "word_timestamps": options.word_timestamps,
            "vad_filter": options.vad_filter,
            "condition_on_previous_text": False,
        }
        if options.batch_size is not None:
            pieces, info = self._batched.transcribe(audio, batch_size=options.batch_size, **common)
        else:
            pieces, info = self._model.transcribe(audio, **common)
        segments: list[Segment] = []
        for piece in pieces:
            segment = Segment(
                id=len(segments),
                start=piece.start,
                end=piece.end,
                text=piece.text,
                tokens=list(piece.tokens),
                avg_logprob=piece.avg_logprob,
                no_speech_prob=piece.no_speech_prob,
                compression_ratio=piece.compression_ratio,
                words=None
                if piece.words is None
                else [
                    Word(start=w.start, end=w.end, word=w.word, probability=w.probability)
                    for w in piece.words
                ],
            )
            segments.append(segment)
            on_segment(segment)
        return self._result(
            text="".join(s.text for s in segments).strip(),
            segments=segments,
            language=info.language,
            language_probability=info.language_probability,
            duration=info.duration,
            options=options,
            runtime=dict(self._runtime),
        )
