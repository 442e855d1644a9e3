"""Golden outputs a person can read, and a comparison that says exactly what differs.

A golden file is canonical JSON (`models/goldens/<model-id>.json` for the manifest's own): the
decoded content, which every machine of its reproducibility class reproduces byte for byte; the
scores, rounded and compared within a tolerance; the class; and the machine it was recorded on.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from offline_asr.asr.base import Decoded, DecodeOptions, Scores
from offline_asr.constants import EXIT_BAD_INPUT
from offline_asr.errors import OfflineAsrError
from offline_asr.fsutil import write_atomic
from offline_asr.registry.schemas import ModelMetadata, Sha256, describe_validation_error

GOLDEN_FORMAT: Literal[1] = 1
MAX_GOLDEN_BYTES = 16 * 1024 * 1024


class GoldenError(OfflineAsrError):
    """A golden file cannot be used: missing, unreadable, malformed, or not for this model."""

    exit_code = EXIT_BAD_INPUT


class GoldenFile(BaseModel):
    """One model's output on its smoke clip, recorded in one reproducibility class."""

    model_config = ConfigDict(extra="forbid")

    format: Literal[1] = GOLDEN_FORMAT
    model_id: str
    fingerprint: str = Field(description="The weights it was recorded with (sha256 of hashes)")
    audio: str
    audio_sha256: Sha256
    options: DecodeOptions
    reproducibility_class: dict[str, str] = Field(
        description="Machines that agree on these reproduce `decoded` byte for byte"
    )
    recorded_at: datetime
    recorded_with: str = Field(description="offline-asr version")
    runtime: dict[str, str] = Field(
        description="The machine and libraries it was recorded with (CPU, pins, versions)"
    )
    decoded_sha256: Sha256
    decoded: Decoded
    score_tolerance: float = Field(gt=0)
    scores: Scores

    def to_json(self) -> str:
        """Indented, in field order, UTF-8 text as is, a word or a token list per line:
        readable, and the same bytes for the same content."""
        return _render(self.model_dump(mode="json"), "") + "\n"


INLINE_WIDTH = 96


def _render(value: object, indent: str) -> str:
    """JSON with lists of scalars, and objects of scalars that fit the width, on one line."""
    inline = json.dumps(value, ensure_ascii=False)
    if not isinstance(value, dict | list) or not value:
        return inline
    items = list(value.values()) if isinstance(value, dict) else value
    if all(not isinstance(item, dict | list) for item in items) and (
        isinstance(value, list) or len(indent) + len(inline) <= INLINE_WIDTH
    ):
        return inline
    inner = indent + "  "
    if isinstance(value, dict):
        lines = [f"{inner}{json.dumps(k, ensure_ascii=False)}: {_render(v, inner)}"
                 for k, v in value.items()]  # fmt: skip
        return "{\n" + ",\n".join(lines) + f"\n{indent}}}"
    return "[\n" + ",\n".join(inner + _render(v, inner) for v in items) + f"\n{indent}]"


def reproducibility_class(runtime: dict[str, str], keys: tuple[str, ...]) -> dict[str, str]:
    """The entries of `runtime` that make up the class (`TranscriptionEngine.class_keys`)."""
    return {key: runtime[key] for key in keys if key in runtime}


def class_slug(klass: dict[str, str]) -> str:
    """A folder name for a class: readable head, then a hash of the whole class."""
    head = [klass.get("arch"), klass.get("ct2_cpu_isa") or klass.get("numpy_simd"),
            klass.get("gemm")]  # fmt: skip
    digest = hashlib.sha256(json.dumps(klass, sort_keys=True).encode()).hexdigest()[:10]
    readable = "-".join(re.sub(r"[^A-Za-z0-9_.]+", "_", part) for part in head if part)
    return f"{readable}-{digest}" if readable else digest


def describe_class(klass: dict[str, str]) -> str:
    return ", ".join(f"{key}={value}" for key, value in klass.items()) or "(none recorded)"


def runtime_differences(recorded: dict[str, str], now: dict[str, str]) -> list[str]:
    """`key: recorded X, now Y` for every entry that differs."""
    return [
        f"{key}: recorded {recorded.get(key, '(none)')}, now {now.get(key, '(none)')}"
        for key in sorted(recorded.keys() | now.keys())
        if recorded.get(key) != now.get(key)
    ]


def local_golden_path(folder: Path, klass: dict[str, str], model_id: str) -> Path:
    return folder / class_slug(klass) / f"{model_id}.json"


def read_golden(path: Path, model_id: str) -> GoldenFile:
    """Load and validate a golden file; every problem is a `GoldenError` naming the file."""
    fix = "restore it from git or from the bundle, or record it again"
    try:
        if path.stat().st_size > MAX_GOLDEN_BYTES:
            raise GoldenError(
                f"{path} has {path.stat().st_size:,} bytes; a golden file is a few kB (at most "
                f"{MAX_GOLDEN_BYTES:,}); {fix}"
            )
        raw = path.read_bytes()
    except FileNotFoundError as error:
        raise GoldenError(
            f"model {model_id!r}: the golden file {path} is missing; {fix}"
        ) from error
    except OSError as error:
        raise GoldenError(
            f"model {model_id!r}: cannot read the golden file {path} ({error.strerror}); {fix}"
        ) from error
    try:
        data = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as error:
        raise GoldenError(f"{path} is not UTF-8 text (byte {error.start}); {fix}") from error
    except json.JSONDecodeError as error:
        raise GoldenError(
            f"{path} is not valid JSON (line {error.lineno}, column {error.colno}: {error.msg}); "
            f"{fix}"
        ) from error
    except RecursionError as error:
        raise GoldenError(f"{path} nests too deeply to be a golden file; {fix}") from error
    try:
        golden = GoldenFile.model_validate(data)
    except ValidationError as error:
        raise GoldenError(
            f"{path} is not a golden file of offline-asr:\n{describe_validation_error(error)}"
        ) from error
    if golden.model_id != model_id:
        raise GoldenError(
            f"{path} holds the golden output of {golden.model_id!r}, not of {model_id!r}; {fix}"
        )
    return golden


def verify_manifest_golden(root: Path, model: ModelMetadata) -> None:
    """The golden file a manifest entry lists is there and holds the decoded content it pins."""
    smoke = model.smoke
    if smoke is None or smoke.golden is None:
        return
    path = root / smoke.golden
    golden = read_golden(path, model.id)
    if golden.decoded.sha256() != smoke.golden_sha256:
        raise GoldenError(
            f"{path} does not hold the golden output the manifest pins for {model.id!r} "
            f"(sha256 {smoke.golden_sha256} of its decoded content): it was changed after it "
            "was recorded; restore it from git or from the bundle"
        )


def write_golden(path: Path, golden: GoldenFile) -> None:
    write_atomic(path, golden.to_json())


@dataclass(frozen=True)
class Difference:
    """One field that differs: where, what was recorded, what came out now."""

    segment: int | None
    field: str
    recorded: object
    now: object

    def __str__(self) -> str:
        where = "" if self.segment is None else f"segment {self.segment}, "
        return f"{where}{self.field}: recorded {self.recorded!r}, now {self.now!r}"


def decoded_differences(recorded: Decoded, now: Decoded) -> list[Difference]:
    """Every decoded field that is not exactly equal, segment by segment."""
    found = [
        Difference(None, name, getattr(recorded, name), getattr(now, name))
        for name in ("text", "language", "duration")
        if getattr(recorded, name) != getattr(now, name)
    ]
    if len(recorded.segments) != len(now.segments):
        found.append(Difference(None, "number of segments", len(recorded.segments),
                                len(now.segments)))  # fmt: skip
    for index, (old, new) in enumerate(zip(recorded.segments, now.segments, strict=False)):
        found += [
            Difference(index, name, getattr(old, name), getattr(new, name))
            for name in ("id", "start", "end", "text")
            if getattr(old, name) != getattr(new, name)
        ]
        found += _sequence_differences(index, "tokens", old.tokens, new.tokens)
        old_words = [w.model_dump() for w in old.words or []]
        new_words = [w.model_dump() for w in new.words or []]
        if (old.words is None) != (new.words is None):
            found.append(Difference(index, "words", old.words is not None, new.words is not None))
        found += _sequence_differences(index, "words", old_words, new_words)
    return found


def _sequence_differences(
    segment: int, name: str, old: Sequence[object], new: Sequence[object]
) -> list[Difference]:
    """The count when it differs, and each position whose item differs (by field for dicts)."""
    found = []
    if len(old) != len(new):
        found.append(Difference(segment, f"number of {name}", len(old), len(new)))
    for position, (a, b) in enumerate(zip(old, new, strict=False)):
        if a == b:
            continue
        if isinstance(a, dict) and isinstance(b, dict):
            found += [
                Difference(segment, f"{name}[{position}].{key}", a.get(key), b.get(key))
                for key in a
                if a.get(key) != b.get(key)
            ]
        else:
            found.append(Difference(segment, f"{name}[{position}]", a, b))
    return found


def score_differences(recorded: Scores, now: Scores, tolerance: float) -> list[Difference]:
    """Scores further apart than `tolerance` (only meaningful when the decoded content agrees)."""
    pairs: list[tuple[int | None, str, float | None, float | None]] = [
        (None, "language_probability", recorded.language_probability, now.language_probability)
    ]
    for index, (old, new) in enumerate(zip(recorded.segments, now.segments, strict=False)):
        for name in ("avg_logprob", "no_speech_prob", "compression_ratio"):
            pairs.append((index, name, getattr(old, name), getattr(new, name)))
        old_words, new_words = old.word_probabilities or [], new.word_probabilities or []
        for position, (a, b) in enumerate(zip(old_words, new_words, strict=False)):
            pairs.append((index, f"words[{position}].probability", a, b))
    return [
        Difference(segment, name, a, b)
        for segment, name, a, b in pairs
        if (a is None) != (b is None)
        or (a is not None and b is not None and abs(a - b) > tolerance)
    ]
