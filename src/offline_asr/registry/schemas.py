"""The manifest: the lock file for models. Every byte that is served is listed here."""

from __future__ import annotations

import json
import re
from collections import Counter
from datetime import datetime
from typing import Annotated, Literal, get_args

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationError,
    model_validator,
)

from offline_asr.constants import GOLDENS_DIR, SCHEMA_VERSION

Engine = Literal["whisper", "gigaam"]
ENGINES: tuple[str, ...] = get_args(Engine)

SourceKind = Literal["pypi", "local", "huggingface", "url", "generated"]

_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_COMMIT = re.compile(r"^[0-9a-f]{40}$")
MODEL_ID = re.compile(r"^[a-z0-9][a-z0-9._-]*$")


# Components of safe characters that do not start with a dot: no '.', '..', hidden folder,
# empty component, drive letter or backslash is possible. Most paths match; the rest are checked
# one rule at a time below (a manifest of 100,000 entries runs this 200,000 times).
_PLAIN_PATH = re.compile(r"[\w+-][\w.+-]*(?:/[\w+-][\w.+-]*)*", re.ASCII)
_DRIVE = re.compile(r"[A-Za-z]:")


def check_store_path(value: str) -> str:
    """A path relative to the store that cannot escape it: no `..`, no absolute path, no `\\`."""
    if _PLAIN_PATH.fullmatch(value):
        return value
    if not value or value.startswith("/") or "\\" in value or _DRIVE.match(value):
        raise ValueError(f"path {value!r} must be relative to the model store, with '/' separators")
    parts = value.split("/")
    if any(part in ("", ".", "..") for part in parts):
        raise ValueError(f"path {value!r} must not contain '..', '.' or empty components")
    if parts[0].startswith("."):
        raise ValueError(
            f"path {value!r} must not start in a hidden folder (reserved for the store)"
        )
    return value


Sha256 = Annotated[str, StringConstraints(pattern=_SHA256.pattern)]
StorePath = Annotated[
    str,
    AfterValidator(check_store_path),
    Field(description="Relative to the store, '/'-separated, no '..', no hidden first folder"),
]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Source(_Strict):
    """Where the weights came from, pinned so that the preparation can be repeated."""

    kind: SourceKind
    repo: str | None = Field(None, description="Upstream repository, e.g. a Hugging Face repo id")
    revision: str | None = Field(None, description="Branch, tag or commit the user asked for")
    commit: str | None = Field(None, description="Commit hash the revision resolved to")
    packages: list[str] = Field(default_factory=list, description="Python distributions, name==ver")
    url: str | None = None
    sha256: Sha256 | None = Field(None, description="sha256 of the file fetched from `url`")
    path: str | None = Field(None, description="Local folder the files were copied from")
    generator: str | None = Field(None, description="Code that generated the files")

    @model_validator(mode="after")
    def _pinned(self) -> Source:
        if self.commit is not None and not _COMMIT.fullmatch(self.commit):
            raise ValueError(f"source.commit must be a 40-hex commit hash, got {self.commit!r}")
        if self.kind == "huggingface" and (self.repo is None or self.commit is None):
            raise ValueError("a huggingface source needs `repo` and its resolved `commit`")
        if self.kind == "url" and (self.url is None or self.sha256 is None):
            raise ValueError("a url source needs `url` and `sha256`")
        if self.kind == "pypi" and not all("==" in p for p in self.packages or ["-"]):
            raise ValueError("a pypi source lists its packages pinned as name==version")
        return self


class Artifact(_Strict):
    """One file of a model: its path relative to the store, sha256 and size in bytes."""

    path: StorePath
    sha256: Sha256
    size: int = Field(ge=0)


class SmokeTest(_Strict):
    """A fixed clip with its reference transcript and the golden output recorded at preparation.

    `audio` is relative to the store, or the name of a clip that ships with offline-asr.
    `golden` is the readable golden output (canonical JSON, relative to the store);
    `golden_sha256` is the sha256 of its decoded content, which every machine of
    `golden_class` reproduces byte for byte; `runtime` holds the library versions.
    """

    audio: str
    audio_sha256: Sha256
    language: str | None = None
    reference_text: str
    max_wer: float | None = Field(
        None, ge=0, description="Upper bound on the word error rate; none for a test model"
    )
    word_timestamps: bool = Field(False, description="The clip is decoded with word timings")
    golden: StorePath | None = Field(
        None, description="Golden output file, e.g. goldens/<model-id>.json"
    )
    golden_sha256: Sha256 | None = Field(
        None, description="sha256 of the golden's decoded content (canonical JSON)"
    )
    golden_class: dict[str, str] = Field(
        default_factory=dict,
        description="Reproducibility class of the golden: architecture, pinned ISA and GEMM "
        "backend, compute type; machines of this class reproduce it exactly",
    )
    runtime: dict[str, str] = Field(
        default_factory=dict, description="Library versions when the golden was recorded"
    )


TEST_VARIANT_SUFFIX = "-testtiny"
"""GigaAM variants ending so are structural test models: generated, random weights, NOT GigaAM."""


def is_test_variant(engine: str, variant: str) -> bool:
    """Whether `models prepare --engine E --variant V` makes a structural test model."""
    return engine == "gigaam" and variant.endswith(TEST_VARIANT_SUFFIX)


class ModelMetadata(_Strict):
    """One model: identity, provenance, serving parameters and the exact files it consists of."""

    id: str = Field(pattern=MODEL_ID.pattern)
    engine: Engine
    variant: str
    version: str = "1.0.0"
    format: Literal["ctranslate2", "onnx"]
    precision: str
    compute_type: str
    languages: list[str]
    license: str
    description: str | None = None
    source: Source
    toolchain: dict[str, str] = Field(default_factory=dict)
    path: StorePath
    artifacts: list[Artifact] = Field(min_length=1)
    smoke: SmokeTest | None = None

    @model_validator(mode="after")
    def _artifacts_inside_folder(self) -> ModelMetadata:
        if self.path.split("/")[0] == GOLDENS_DIR:
            raise ValueError(f"model {self.id!r}: the folder {GOLDENS_DIR}/ holds golden outputs")
        seen: set[str] = set()
        for artifact in self.artifacts:
            if not artifact.path.startswith(self.path + "/"):
                raise ValueError(
                    f"model {self.id!r}: artifact {artifact.path!r} is outside its folder "
                    f"{self.path!r}"
                )
            if artifact.path in seen:
                raise ValueError(f"model {self.id!r}: artifact {artifact.path!r} is listed twice")
            seen.add(artifact.path)
        return self

    @property
    def is_test_model(self) -> bool:
        """A structural test model: generated, GigaAM-shaped, random weights. Listed as such,
        never routed to, no WER bound; its transcripts are meaningless."""
        return is_test_variant(self.engine, self.variant)

    @property
    def size(self) -> int:
        """Total bytes of all artifacts."""
        return sum(artifact.size for artifact in self.artifacts)

    def relative_name(self, artifact: Artifact) -> str:
        """The artifact's path inside the model folder (as `checksum.txt` lists it)."""
        return artifact.path.removeprefix(self.path + "/")


class Manifest(_Strict):
    """The registry: every model offline-asr may load, and the version of this list."""

    schema_version: Literal[1] = SCHEMA_VERSION
    manifest_version: int = Field(0, ge=0)
    updated_at: datetime | None = None
    models: list[ModelMetadata] = Field(default_factory=list)

    @model_validator(mode="after")
    def _unique(self) -> Manifest:
        counts = Counter(model.id for model in self.models)
        duplicates = sorted(i for i, n in counts.items() if n > 1)
        if duplicates:
            raise ValueError(f"duplicate model ids: {', '.join(duplicates)}")
        folders = {model.path: model.id for model in self.models}
        if len(folders) < len(self.models):
            raise ValueError("two models share one folder")
        for folder, model_id in folders.items():
            # Every proper prefix that ends at a '/' (paths are checked: no '.', '..' or '//').
            outer = next((folder[:i] for i, c in enumerate(folder) if c == "/"
                          and folder[:i] in folders), None)  # fmt: skip
            if outer is not None:
                raise ValueError(f"model {model_id!r} lies inside the folder of {folders[outer]!r}")
        return self

    def get(self, model_id: str) -> ModelMetadata | None:
        return next((model for model in self.models if model.id == model_id), None)

    def to_json(self) -> str:
        """Canonical text: 2-space indent, no null fields, trailing newline."""
        return self.model_dump_json(indent=2, exclude_none=True) + "\n"


def describe_validation_error(error: ValidationError) -> str:
    """One indented line per problem: where, then what (no links to pydantic's site)."""
    lines = []
    for item in error.errors():
        where = ".".join(str(part) for part in item["loc"]) or "(top level)"
        lines.append(f"  {where}: {item['msg']}")
    return "\n".join(lines)


def manifest_json_schema() -> str:
    """The JSON Schema committed as `models/manifest.schema.json`."""
    schema = Manifest.model_json_schema()
    schema["title"] = "offline-asr model manifest"
    return json.dumps(schema, indent=2, sort_keys=True) + "\n"


if __name__ == "__main__":
    print(manifest_json_schema(), end="")
