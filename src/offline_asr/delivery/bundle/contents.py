"""`bundle.json`, the first entry of every bundle: what it holds, with sha256 of each file.

The second entry is the manifest of the bundle's models; `manifest_disagreements` is the one
place that says whether the two describe the same release.
"""

from __future__ import annotations

import re
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator

from offline_asr.constants import CHECKSUM_NAME
from offline_asr.delivery.bundle.limits import METADATA_LIMIT
from offline_asr.fsutil import sha256_bytes
from offline_asr.registry.integrity import checksum_text
from offline_asr.registry.schemas import MODEL_ID, Manifest, Sha256, StorePath

BUNDLE_FORMAT: Literal[1] = 1
CONTENTS_NAME = "bundle.json"
MANIFEST_IN_BUNDLE = "models/manifest.json"
LOCKS_DIR = "locks/"
MAX_VERSION = 2**63 - 1

Version = Annotated[int, Field(strict=True, ge=1, le=MAX_VERSION)]
"""A manifest_version: a positive integer (JSON number), never a string or a float."""


NAME_BYTES = 255
"""Longest file or folder name (ext4, xfs): a longer one could be checked but not written."""
PATH_BYTES = 1024
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def _writable(path: str) -> str:
    """A path that any Linux file system can hold: no control characters, short enough."""
    if _CONTROL.search(path):
        raise ValueError(f"path {path!r} holds a control character")
    if len(path.encode()) > PATH_BYTES or any(
        len(part.encode()) > NAME_BYTES for part in path.split("/")
    ):
        raise ValueError(
            f"path {path[:80]!r}... is longer than {PATH_BYTES} bytes, or has a name longer than "
            f"{NAME_BYTES}"
        )
    return path


class BundleFile(BaseModel):
    model_config = ConfigDict(extra="forbid")

    path: Annotated[StorePath, AfterValidator(_writable)]
    sha256: Sha256
    size: int = Field(strict=True, ge=0)


class BundleContents(BaseModel):
    """Every file in the archive (but this one), and for a delta what the base release gives."""

    model_config = ConfigDict(extra="forbid")

    format: Literal[1] = BUNDLE_FORMAT
    manifest_version: Version
    models: list[Annotated[str, Field(pattern=MODEL_ID.pattern)]] = Field(min_length=1)
    base_manifest_version: Version | None = Field(
        None, description="A delta bundle installs only over this release"
    )
    files: list[BundleFile]
    from_base: list[BundleFile] = Field(
        default_factory=list, description="Unchanged artifacts taken from the base release"
    )

    @model_validator(mode="after")
    def _consistent(self) -> BundleContents:
        if len(set(self.models)) < len(self.models):
            raise ValueError("a model is named twice in `models`")
        paths = [f.path for f in [*self.files, *self.from_base]]
        if len(set(paths)) < len(paths):
            raise ValueError("a path is listed twice in `files` and `from_base`")
        folders = {path.rsplit("/", depth)[0] for path in paths
                   for depth in range(1, path.count("/") + 1)}  # fmt: skip
        both = sorted(folders.intersection(paths))
        if both:
            raise ValueError(f"{both[0]} is listed as a file and as a folder")
        if MANIFEST_IN_BUNDLE not in {f.path for f in self.files}:
            raise ValueError(
                f"{CONTENTS_NAME} does not list {MANIFEST_IN_BUNDLE}: a bundle carries the "
                "manifest of its models"
            )
        if CONTENTS_NAME in paths:
            raise ValueError(f"{CONTENTS_NAME} may not list itself")
        for item in self.files:
            if item.path.startswith(LOCKS_DIR) and item.size > METADATA_LIMIT:
                raise ValueError(
                    f"{item.path} is listed with {item.size:,} bytes; lock files (read by "
                    f"`doctor`) may have at most {METADATA_LIMIT:,}"
                )
        if self.base_manifest_version is None and self.from_base:
            raise ValueError("`from_base` lists files, but no base_manifest_version is named")
        base = self.base_manifest_version
        if base is not None and base >= self.manifest_version:
            raise ValueError(
                f"base_manifest_version {base} is not older than manifest_version "
                f"{self.manifest_version}"
            )
        return self

    def to_json(self) -> str:
        return self.model_dump_json(indent=2) + "\n"

    @property
    def size(self) -> int:
        return sum(f.size for f in self.files) + sum(f.size for f in self.from_base)


def manifest_files(manifest: Manifest) -> dict[str, tuple[str, int]]:
    """Every model-store file the manifest accounts for, as bundle path -> (sha256, size)."""
    expected = {}
    for model in manifest.models:
        for artifact in model.artifacts:
            expected[f"models/{artifact.path}"] = (artifact.sha256, artifact.size)
        checksum = checksum_text(model).encode()
        expected[f"models/{model.path}/{CHECKSUM_NAME}"] = (
            sha256_bytes(checksum),
            len(checksum),
        )
    return expected


def manifest_goldens(manifest: Manifest) -> set[str]:
    """The golden files the manifest lists, as bundle paths. The manifest pins their decoded
    content, not their bytes: install checks that content (`goldens.verify_manifest_golden`)."""
    return {f"models/{m.smoke.golden}" for m in manifest.models if m.smoke and m.smoke.golden}


def manifest_disagreements(contents: BundleContents, manifest: Manifest) -> list[str]:
    """Where `bundle.json` and the manifest describe different releases (empty: they agree).

    Same manifest_version and models; every file the manifest accounts for is carried (or taken
    from the base release) with the manifest's sha256 and size, and every golden file it lists
    is there; nothing else under `models/`.
    """
    problems = []
    if manifest.manifest_version != contents.manifest_version:
        problems.append(
            f"{MANIFEST_IN_BUNDLE} has manifest_version {manifest.manifest_version}, "
            f"{CONTENTS_NAME} has {contents.manifest_version}"
        )
    listed_models = {m.id for m in manifest.models}
    problems += [f"{CONTENTS_NAME} names {i}, which the manifest does not list"
                 for i in contents.models if i not in listed_models]  # fmt: skip
    problems += [f"the manifest lists {i}, which {CONTENTS_NAME} does not name"
                 for i in sorted(listed_models - set(contents.models))]  # fmt: skip
    carried = {f.path: (f.sha256, f.size) for f in [*contents.files, *contents.from_base]}
    expected = manifest_files(manifest)
    for path, digest in sorted(expected.items()):
        if path not in carried:
            problems.append(f"the manifest lists {path}, which the bundle does not carry")
        elif carried[path] != digest:
            problems.append(f"{path}: {CONTENTS_NAME} and the manifest disagree on its sha256 "
                            "or size")  # fmt: skip
    goldens = manifest_goldens(manifest)
    problems += [f"the manifest lists {path}, which the bundle does not carry"
                 for path in sorted(goldens - carried.keys())]  # fmt: skip
    problems += [f"{f.path} is not in the manifest" for f in contents.files
                 if f.path.startswith("models/") and f.path != MANIFEST_IN_BUNDLE
                 and f.path not in expected and f.path not in goldens]  # fmt: skip
    problems += [f"{f.path} is to be taken from the base release, but the manifest does not "
                 "list it" for f in contents.from_base
                 if f.path not in expected and f.path not in goldens]  # fmt: skip
    return problems
