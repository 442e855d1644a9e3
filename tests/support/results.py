"""Hand-built transcription results: known texts and times, no model needed."""

from __future__ import annotations

from typing import Literal

from offline_asr.asr.base import DecodeOptions, Segment, TranscriptionResult, Word


def _words(start: float, end: float, text: str) -> list[Word]:
    """The segment's words spread evenly over its time, with Whisper's leading spaces."""
    parts = text.split()
    step = (end - start) / len(parts)
    return [
        Word(start=start + i * step, end=start + (i + 1) * step, word=" " + part, probability=0.9)
        for i, part in enumerate(parts)
    ]


def english(
    *, words: bool = False, task: Literal["transcribe", "translate"] = "transcribe"
) -> TranscriptionResult:
    """A Whisper-like result: a blank segment, markup characters, and a cue past one hour."""
    spans = [
        (0.0, 2.5, " Hello, AT&T world."),
        (2.5, 3.0, "   "),
        (3.0, 5.25, " Is 1 < 2 --> yes."),
        (3661.2344, 3663.9996, " An hour later."),
    ]
    segments = [
        Segment(
            id=i,
            start=start,
            end=end,
            text=text,
            tokens=[50364 + i, 2425, 11],
            avg_logprob=-0.25,
            no_speech_prob=0.01,
            compression_ratio=1.2,
            words=(_words(start, end, text) if text.strip() else []) if words else None,
        )
        for i, (start, end, text) in enumerate(spans)
    ]
    return TranscriptionResult(
        text=" ".join(s.text.strip() for s in segments if s.text.strip()),
        segments=segments,
        language="en",
        language_probability=0.97,
        duration=3664.2,
        model_id="whisper-tiny.en",
        manifest_version=3,
        fingerprint="sha256:0123456789abcdef",
        engine="whisper",
        options=DecodeOptions(task=task, word_timestamps=words),
        runtime={"device": "cpu", "compute_type": "int8", "ct2_cpu_isa": "AVX2"},
    )


def russian() -> TranscriptionResult:
    """A GigaAM-like result: no tokens and no scores, as that engine gives none."""
    segments = [
        Segment(id=0, start=0.0, end=1.8, text=" Привет, мир."),
        Segment(id=1, start=1.8, end=4.05, text=" Съешь же ещё этих мягких булок."),
    ]
    return TranscriptionResult(
        text="Привет, мир. Съешь же ещё этих мягких булок.",
        segments=segments,
        language="ru",
        duration=4.05,
        model_id="gigaam-v2-ctc",
        manifest_version=3,
        fingerprint="sha256:fedcba9876543210",
        engine="gigaam",
        options=DecodeOptions(language="ru"),
        runtime={"device": "cpu", "onnxruntime": "1.20.0"},
    )
