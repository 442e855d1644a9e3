"""`bundle.json`, the first entry of every bundle: what it holds, with sha256 of each file."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from offline_asr.schemas import Sha256, StorePath

BUNDLE_FORMAT = 1
CONTENTS_NAME = "bundle.json"
MANIFEST_IN_BUNDLE = "models/manifest.json"


class BundleFile(BaseModel):
    model_config = ConfigDict(extra="forbid")

    path: StorePath
    sha256: Sha256
    size: int = Field(ge=0)


class BundleContents(BaseModel):
    """Every file in the archive (but this one), and for a delta what the base release gives."""

    model_config = ConfigDict(extra="forbid")

    format: int = BUNDLE_FORMAT
    manifest_version: int
    models: list[str]
    base_manifest_version: int | None = Field(
        None, description="A delta bundle installs only over this release"
    )
    files: list[BundleFile]
    from_base: list[BundleFile] = Field(
        default_factory=list, description="Unchanged artifacts taken from the base release"
    )

    def to_json(self) -> str:
        return self.model_dump_json(indent=2) + "\n"

    @property
    def size(self) -> int:
        return sum(f.size for f in self.files) + sum(f.size for f in self.from_base)
