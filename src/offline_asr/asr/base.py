"""The engine interface and the typed result every engine returns."""

from __future__ import annotations

import hashlib
import json
from abc import ABC, abstractmethod
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field

from offline_asr.asr.device import Device
from offline_asr.constants import DEFAULT_BUNDLE_HINT
from offline_asr.errors import OfflineAsrError
from offline_asr.pcm import Audio
from offline_asr.registry.integrity import check_before_load
from offline_asr.registry.schemas import ModelMetadata
from offline_asr.registry.snapshot import ManifestSnapshot
from offline_asr.registry.store import ModelStore


class DecodeOptions(BaseModel):
    """Decoding options; the defaults are the deterministic profile."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    language: str | None = Field(None, description="ISO code; None detects (multilingual models)")
    task: Literal["transcribe", "translate"] = "transcribe"
    beam_size: int = Field(5, ge=1, le=20)
    temperature: float = Field(0.0, ge=0.0, le=1.0, description="One temperature, no fallback")
    initial_prompt: str | None = None
    word_timestamps: bool = False
    vad_filter: bool = False
    batch_size: int | None = Field(
        None, ge=1, le=64, description="Batched long-form decoding with this batch size"
    )


class Word(BaseModel):
    start: float
    end: float
    word: str
    probability: float


class Segment(BaseModel):
    id: int
    start: float
    end: float
    text: str
    tokens: list[int] = Field(default_factory=list)
    avg_logprob: float | None = None
    no_speech_prob: float | None = None
    compression_ratio: float | None = None
    words: list[Word] | None = None


SCORE_DECIMALS = 5
"""Scores keep this many decimals in the canonical form (golden files)."""
SCORE_TOLERANCE = 1e-4
"""Largest difference between a recorded and a current score that still agrees. Measured
(README, "Reproducibility"): within one class scores moved by at most 2.8e-7 (GigaAM, 1 vs 2
onnxruntime threads; Whisper not at all)."""


class _Canonical(BaseModel):
    model_config = ConfigDict(extra="forbid")


class DecodedWord(_Canonical):
    start: float
    end: float
    word: str


class DecodedSegment(_Canonical):
    id: int
    start: float
    end: float
    text: str
    tokens: list[int]
    words: list[DecodedWord] | None = None


class Decoded(_Canonical):
    """Text, language, duration, segment boundaries, token ids and word timings."""

    text: str
    language: str
    duration: float
    segments: list[DecodedSegment]

    def sha256(self) -> str:
        """Hash of the sorted, compact JSON: equal exactly when the decoded content is."""
        text = json.dumps(
            self.model_dump(mode="json"), sort_keys=True, separators=(",", ":"), ensure_ascii=False
        )
        return hashlib.sha256(text.encode()).hexdigest()


class SegmentScores(_Canonical):
    avg_logprob: float | None = None
    no_speech_prob: float | None = None
    compression_ratio: float | None = None
    word_probabilities: list[float] | None = None


class Scores(_Canonical):
    """Log-probabilities and probabilities: reported, compared within `SCORE_TOLERANCE`."""

    language_probability: float | None = None
    segments: list[SegmentScores]


class TranscriptionResult(BaseModel):
    """A transcript and everything needed to say which model, weights and options produced it."""

    text: str
    segments: list[Segment]
    language: str
    language_probability: float | None = None
    duration: float
    model_id: str
    manifest_version: int
    fingerprint: str
    engine: str
    options: DecodeOptions
    runtime: dict[str, str] = Field(
        default_factory=dict,
        description="What can change the output: CPU, pinned ISA and GEMM backend, versions",
    )

    def decoded(self) -> Decoded:
        """The decoded content: byte-identical on every machine of one reproducibility class."""
        return Decoded(
            text=self.text,
            language=self.language,
            duration=self.duration,
            segments=[_decoded_segment(segment) for segment in self.segments],
        )

    def scores(self, decimals: int | None = SCORE_DECIMALS) -> Scores:
        """The scores, rounded to `decimals` (None: as computed); compared within a tolerance."""

        def rounded(value: float) -> float:
            return value if decimals is None else round(value, decimals)

        def optional(value: float | None) -> float | None:
            return None if value is None else rounded(value)

        return Scores(
            language_probability=optional(self.language_probability),
            segments=[
                SegmentScores(
                    avg_logprob=optional(s.avg_logprob),
                    no_speech_prob=optional(s.no_speech_prob),
                    compression_ratio=optional(s.compression_ratio),
                    word_probabilities=(
                        None if s.words is None else [rounded(w.probability) for w in s.words]
                    ),
                )
                for s in self.segments
            ],
        )


def _decoded_segment(segment: Segment) -> DecodedSegment:
    words = None
    if segment.words is not None:
        words = [DecodedWord(start=w.start, end=w.end, word=w.word) for w in segment.words]
    return DecodedSegment(id=segment.id, start=segment.start, end=segment.end,
                          text=segment.text, tokens=segment.tokens, words=words)  # fmt: skip


OnSegment = Callable[[Segment], None]


def fingerprint(model: ModelMetadata) -> str:
    """A short id of the exact weights: sha256 over the sorted (path, sha256) pairs."""
    lines = sorted(f"{a.path}\0{a.sha256}" for a in model.artifacts)
    return "sha256:" + hashlib.sha256("\n".join(lines).encode()).hexdigest()[:16]


class EngineError(OfflineAsrError):
    """The engine cannot load or run a model."""


class UnsupportedLanguageError(EngineError):
    """The request names a language the model does not have."""


class TranscriptionEngine(ABC):
    """Load one manifest entry, verify its files, then transcribe audio with it.

    Subclasses set `engine` and implement `_load` and `_transcribe`; `load` does the manifest
    lookup and the integrity gate so that no engine can skip them.
    """

    engine: ClassVar[str]
    class_keys: ClassVar[tuple[str, ...]]
    """The `runtime` entries that make up the reproducibility class: machines that agree on
    them give byte-identical decoded content."""

    def __init__(
        self,
        store: ModelStore,
        *,
        device: Device = "auto",
        threads: int = 0,
        workers: int = 1,
        long_form_batch_size: int = 0,
        full_verify: bool = False,
        bundle_hint: str = DEFAULT_BUNDLE_HINT,
    ) -> None:
        self.store = store
        self.device_request: Device = device
        self.threads = threads  # 0: the runtime's default; per worker
        self.workers = workers  # transcriptions that may run at once (from as many threads)
        # Whisper: audio longer than one window uses the batched pipeline with this batch size
        # unless the request names one (0: never).
        self.long_form_batch_size = long_form_batch_size
        self.full_verify = full_verify
        self.bundle_hint = bundle_hint
        self.model: ModelMetadata | None = None
        self.manifest_version = 0
        self.fingerprint = ""

    @property
    def model_id(self) -> str:
        """The loaded entry's id ("" before `load`)."""
        return self.model.id if self.model is not None else ""

    def load(self, model_id: str) -> None:
        """Read the entry (one manifest snapshot), refuse missing or altered files, and load the
        weights. The loader (`asr.loader`) does the same for a snapshot it is given."""
        snapshot = ManifestSnapshot.read(self.store)
        self.load_entry(snapshot.entry(model_id), snapshot.version)

    def load_entry(self, model: ModelMetadata, manifest_version: int) -> None:
        """Load an entry given directly (e.g. one being registered); files are verified first."""
        if model.engine != self.engine:
            raise EngineError(f"model {model.id!r} is a {model.engine} model, not {self.engine}")
        check_before_load(self.store.root, model, hint=self.bundle_hint, full=self.full_verify)
        self.model, self.manifest_version = model, manifest_version
        self.fingerprint = fingerprint(model)
        self._load(model, self.store.root / model.path)

    def transcribe(
        self,
        audio: Audio,
        options: DecodeOptions | None = None,
        on_segment: OnSegment | None = None,
    ) -> TranscriptionResult:
        """Transcribe 16 kHz mono float32 audio; `on_segment` sees each segment as it is done."""
        if self.model is None:
            raise EngineError("load(model_id) must be called before transcribe()")
        options = options or DecodeOptions()
        if options.language is not None and options.language not in self.model.languages:
            raise UnsupportedLanguageError(
                f"model {self.model.id!r} does not know language {options.language!r} "
                f"(it has: {', '.join(self.model.languages)})"
            )
        return self._transcribe(audio, options, on_segment or (lambda segment: None))

    def _result(self, **fields: Any) -> TranscriptionResult:
        assert self.model is not None
        return TranscriptionResult(
            model_id=self.model.id,
            manifest_version=self.manifest_version,
            fingerprint=self.fingerprint,
            engine=self.engine,
            **fields,
        )

    @abstractmethod
    def _load(self, model: ModelMetadata, folder: Path) -> None: ...

    @abstractmethod
    def _transcribe(
        self, audio: Audio, options: DecodeOptions, on_segment: OnSegment
    ) -> TranscriptionResult: ...
