"""The engine interface and the typed result every engine returns."""

from __future__ import annotations

import hashlib
import json
from abc import ABC, abstractmethod
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
import numpy.typing as npt
from pydantic import BaseModel, ConfigDict, Field

from offline_asr.device import Device, check_weights
from offline_asr.errors import OfflineAsrError
from offline_asr.registry.store import ModelStore
from offline_asr.schemas import ModelMetadata

Audio = npt.NDArray[np.float32]
"""16 kHz mono float32 samples in [-1, 1] (see `offline_asr.audio`)."""


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
        default_factory=dict, description="What can change the output: ISA, compute type, versions"
    )

    def canonical_json(self, *, exclude: set[str] | None = None) -> str:
        """Sorted, compact JSON: identical bytes for identical transcriptions."""
        data = self.model_dump(mode="json", exclude=exclude)
        return json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False)

    def golden_sha256(self) -> str:
        """Hash of what the model produced, leaving out the registry version and the runtime."""
        text = self.canonical_json(exclude={"manifest_version", "runtime"})
        return hashlib.sha256(text.encode()).hexdigest()


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

    def __init__(
        self,
        store: ModelStore,
        *,
        device: Device = "auto",
        threads: int = 0,
        full_verify: bool = False,
    ) -> None:
        self.store = store
        self.device_request: Device = device
        self.threads = threads  # 0: the runtime's default
        self.full_verify = full_verify
        self.model: ModelMetadata | None = None
        self.manifest_version = 0
        self.fingerprint = ""

    def load(self, model_id: str) -> None:
        """Read the entry, refuse missing or altered files, and load the weights."""
        manifest = self.store.load()
        self.load_entry(self.store.get(manifest, model_id), manifest.manifest_version)

    def load_entry(self, model: ModelMetadata, manifest_version: int) -> None:
        """Load an entry given directly (e.g. one being registered); files are verified first."""
        if model.engine != self.engine:
            raise EngineError(f"model {model.id!r} is a {model.engine} model, not {self.engine}")
        check_weights(self.store, model, full=self.full_verify)
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
