"""GigaAM through onnx-asr; long audio is cut at pauses and stitched with absolute timestamps."""

from __future__ import annotations

import itertools
import math
from importlib import metadata
from pathlib import Path

import numpy as np
import onnx_asr
import onnxruntime
from faster_whisper.vad import VadOptions, get_speech_timestamps
from onnx_asr.utils import ModelLoadingError
from onnxruntime.capi import onnxruntime_pybind11_state as ort_errors

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
from offline_asr.asr.pins import host_facts, onnxruntime_kernels
from offline_asr.errors import SourceError
from offline_asr.pcm import SAMPLE_RATE, Audio
from offline_asr.registry.gigaam_check import check_gigaam_folder
from offline_asr.registry.layouts import gigaam_layout, gigaam_onnx_asr_name
from offline_asr.registry.schemas import ModelMetadata

# GigaAM is trained on utterances of up to about 25 s; chunks stay below that.
MAX_CHUNK_SECONDS = 22.0
DEFAULT_BATCH = 4
# What onnxruntime raises for a graph it cannot run (the files' hashes were checked before).
_ONNXRUNTIME_ERRORS = (ort_errors.Fail, ort_errors.InvalidGraph, ort_errors.InvalidProtobuf)
ORT_GRAPH_OPTIMIZATION = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
"""Every graph optimisation but the layout ones (level "all"), whose NCHWc blocks are as wide as
the CPU's vectors (8 floats with AVX2, 16 with AVX-512), so their sums depend on the CPU."""
# One output frame of GigaAM (10 ms features, 4x subsampling): the length of the last token.
FRAME_SECONDS = 0.04


def plan_chunks(audio: Audio, max_seconds: float = MAX_CHUNK_SECONDS) -> list[tuple[int, int]]:
    """Cut points that tile the whole audio, each chunk at most `max_seconds` long.

    Cuts go in the middle of pauses that Silero VAD (shipped with faster-whisper) finds; a
    stretch of speech longer than the window is cut where the window ends.
    """
    total = len(audio)
    limit = int(max_seconds * SAMPLE_RATE)
    if total <= limit:
        return [(0, total)]
    vad = VadOptions(max_speech_duration_s=max_seconds, min_silence_duration_ms=300)
    speech = get_speech_timestamps(audio, vad)
    pauses = [(a["end"] + b["start"]) // 2 for a, b in itertools.pairwise(speech)]
    bounds = [0]
    while total - bounds[-1] > limit:
        reachable = [p for p in pauses if bounds[-1] < p <= bounds[-1] + limit]
        bounds.append(max(reachable) if reachable else bounds[-1] + limit)
    bounds.append(total)
    return list(itertools.pairwise(bounds))


def _words(
    tokens: list[str], times: list[float], logprobs: list[float] | None, offset: float
) -> list[Word]:
    """Group tokens into words. A word starts at a token that begins with a space: the word
    boundary of the character vocabulary, or a SentencePiece piece such as "▁при" of the
    end-to-end models (onnx-asr turns ▁ into a space); other pieces and punctuation continue
    the word."""
    groups: list[list[int]] = []
    for index, token in enumerate(tokens):
        if not groups or token[:1].isspace():
            groups.append([])
        if token.strip():
            groups[-1].append(index)
    words: list[Word] = []
    for group in filter(None, groups):
        probability = math.exp(float(np.mean([logprobs[i] for i in group]))) if logprobs else 1.0
        words.append(
            Word(
                start=round(offset + times[group[0]], 3),
                end=round(offset + times[group[-1]] + FRAME_SECONDS, 3),
                word=" " + "".join(tokens[i].strip() for i in group),
                probability=probability,
            )
        )
    return words


def pinned_session_options(threads: int) -> onnxruntime.SessionOptions:
    """onnxruntime options that do not depend on the CPU; onnx-asr's preprocessor is NumPy.

    Threads change only the scores (measured: 3e-8), so they stay the caller's choice.
    """
    session = onnxruntime.SessionOptions()
    session.graph_optimization_level = ORT_GRAPH_OPTIMIZATION
    session.intra_op_num_threads = threads
    session.inter_op_num_threads = 1
    session.use_deterministic_compute = True
    return session


class GigaamEngine(TranscriptionEngine):
    """onnx-asr over the ONNX layout the manifest lists (CTC, RNN-T, e2e variants)."""

    engine = "gigaam"
    class_keys = ("arch", "numpy_simd", "openblas_core", "openblas_threads", "device",
                  "precision")  # fmt: skip

    def _load(self, model: ModelMetadata, folder: Path) -> None:
        quantization = "int8" if model.precision == "int8" else None
        names = [model.relative_name(artifact) for artifact in model.artifacts]
        try:
            gigaam_layout(model.variant, quantization).check(
                names, f"its manifest entry ({model.path})"
            )
            check_gigaam_folder(folder, model.variant, quantization, model.path)
        except SourceError as error:
            raise EngineError(f"cannot load {model.id!r}: {error}") from error
        self.device = choose_device(self.device_request, "gigaam")
        session = pinned_session_options(self.threads)
        providers = ["CUDAExecutionProvider"] if self.device == "cuda" else []
        try:
            self._asr = onnx_asr.load_model(
                gigaam_onnx_asr_name(model.variant),
                str(folder),
                quantization=quantization,
                sess_options=session,
                providers=[*providers, "CPUExecutionProvider"],
            ).with_timestamps()
        except (ModelLoadingError, *_ONNXRUNTIME_ERRORS) as error:
            raise EngineError(f"cannot load {model.id!r} from {model.path}: {error}") from error
        self._runtime = host_facts() | {
            "device": self.device,
            "precision": model.precision,
            "onnxruntime_kernels": onnxruntime_kernels(),
            "ort_graph_optimization": "extended",
            "onnx-asr": metadata.version("onnx-asr"),
            "onnxruntime": metadata.version("onnxruntime"),
        }

    def _transcribe(
        self, audio: Audio, options: DecodeOptions, on_segment: OnSegment
    ) -> TranscriptionResult:
        if options.task != "transcribe":
            raise EngineError("GigaAM transcribes Russian speech; it cannot translate")
        assert self.model is not None
        chunks = plan_chunks(audio)
        batch = options.batch_size or DEFAULT_BATCH
        segments: list[Segment] = []
        for first in range(0, len(chunks), batch):
            group = chunks[first : first + batch]
            results = self._asr.recognize([audio[start:end] for start, end in group])
            for (start, end), result in zip(group, results, strict=True):
                offset = start / SAMPLE_RATE
                logprobs = result.logprobs
                segment = Segment(
                    id=len(segments),
                    start=round(offset, 3),
                    end=round(end / SAMPLE_RATE, 3),
                    text=" " + result.text.strip(),
                    avg_logprob=float(np.mean(logprobs)) if logprobs else None,
                    words=_words(result.tokens or [], result.timestamps or [], logprobs, offset)
                    if options.word_timestamps
                    else None,
                )
                segments.append(segment)
                on_segment(segment)
        return self._result(
            text=" ".join(s.text.strip() for s in segments if s.text.strip()),
            segments=segments,
            language="ru",
            duration=len(audio) / SAMPLE_RATE,
            options=options,
            runtime=dict(self._runtime),
        )
