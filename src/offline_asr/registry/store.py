"""The model store: `manifest.json` beside the model folders, changed atomically and logged."""

from __future__ import annotations

import json
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

from pydantic import ValidationError

from offline_asr.constants import CHANGELOG_NAME, GOLDENS_DIR, LOCK_NAME, MANIFEST_ENV, STAGING_DIR
from offline_asr.errors import ManifestError, ModelNotFoundError, StoreError
from offline_asr.fsutil import exclusive, write_atomic
from offline_asr.registry.schemas import Manifest, ModelMetadata, describe_validation_error


@dataclass
class ManifestChange:
    """One line of a CHANGELOG entry: what happened to which model, with hashes."""

    action: Literal["added", "updated", "removed"]
    model_id: str
    details: list[str] = field(default_factory=list)


def diff_model(old: ModelMetadata | None, new: ModelMetadata | None) -> ManifestChange | None:
    """What changed between two versions of one entry, or None when nothing did."""
    if old is None and new is not None:
        details = [f"`{a.path}` sha256 {a.sha256}" for a in new.artifacts]
        return ManifestChange("added", new.id, details)
    if new is None and old is not None:
        return ManifestChange("removed", old.id, [f"`{a.path}`" for a in old.artifacts])
    if old is None or new is None or old == new:
        return None
    before = {a.path: a.sha256 for a in old.artifacts}
    after = {a.path: a.sha256 for a in new.artifacts}
    details = []
    for path in sorted(before.keys() | after.keys()):
        if before.get(path) != after.get(path):
            details.append(
                f"`{path}` sha256 {before.get(path, 'none')} -> {after.get(path, 'none')}"
            )
    if old.smoke != new.smoke and new.smoke is not None:
        golden = old.smoke.golden_sha256 if old.smoke else "none"
        klass = ", ".join(f"{key}={value}" for key, value in new.smoke.golden_class.items())
        details.append(
            f"smoke test on `{new.smoke.audio}`: golden sha256 {golden} -> "
            f"{new.smoke.golden_sha256}"
            + (f" (`{new.smoke.golden}`, class {klass})" if new.smoke.golden else "")
        )
    for name in sorted(type(new).model_fields):
        if name not in ("artifacts", "smoke") and getattr(old, name) != getattr(new, name):
            details.append(f"{name} changed")
    return ManifestChange("updated", new.id, details)


def golden_path(model_id: str) -> str:
    """The manifest's golden output of a model, relative to the store."""
    return f"{GOLDENS_DIR}/{model_id}.json"


def restore_files(previous: dict[Path, bytes | None]) -> None:
    """Put back what `ModelStore.replace_goldens` replaced."""
    for path, data in previous.items():
        if data is None:
            path.unlink(missing_ok=True)
        else:
            write_atomic(path, data.decode("utf-8"))


def parse_manifest(raw: bytes, where: Path) -> Manifest:
    """Decode, parse and validate manifest bytes; every problem is a `ManifestError` (exit 2)."""
    restore = f"Restore {where} from git or from the bundle."
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as error:
        raise ManifestError(
            f"{where} is not UTF-8 (byte 0x{raw[error.start]:02x} at offset {error.start}). "
            + restore
        ) from error
    try:
        return Manifest.model_validate(json.loads(text))
    except json.JSONDecodeError as error:
        raise ManifestError(
            f"{where} is not valid JSON (line {error.lineno}, column {error.colno}: "
            f"{error.msg}). {restore}"
        ) from error
    except RecursionError as error:
        raise ManifestError(f"{where} is nested too deeply to be a manifest. {restore}") from error
    except ValidationError as error:
        problems = describe_validation_error(error)
        raise ManifestError(f"{where} breaks the manifest schema:\n{problems}") from error


class ModelStore:
    """A manifest file and the folder it describes (its parent)."""

    def __init__(self, manifest_path: Path, changelog_path: Path | None = None) -> None:
        self.manifest_path = manifest_path
        self.root = manifest_path.parent
        # In a checkout `models/manifest.json` logs to the repository's `CHANGELOG.md`.
        self.changelog_path = changelog_path or self.root.parent / CHANGELOG_NAME

    @property
    def staging(self) -> Path:
        return self.root / STAGING_DIR

    def golden_file(self, model_id: str) -> Path:
        """Where the manifest's golden output of a model lives (`smoke.golden`)."""
        return self.root / golden_path(model_id)

    def replace_goldens(self, texts: dict[str, str | None]) -> dict[Path, bytes | None]:
        """Write (or, for None, delete) the golden files of these models; returns the old bytes
        for `restore_files`, should the manifest that lists them fail to save."""
        previous: dict[Path, bytes | None] = {}
        for model_id, text in texts.items():
            path = self.golden_file(model_id)
            previous[path] = path.read_bytes() if path.is_file() else None
            if text is None:
                path.unlink(missing_ok=True)
            else:
                write_atomic(path, text)
        return previous

    def load(self, *, missing_ok: bool = False) -> Manifest:
        """Read and validate the manifest.

        A missing file is bad input (a verdict about a store that is not there would be about
        nothing), except with `missing_ok`: a preparation may create the store.
        """
        try:
            raw = self.manifest_path.read_bytes()
        except FileNotFoundError:
            if missing_ok:
                return Manifest()
            raise self._missing() from None
        except OSError as error:
            raise ManifestError(f"cannot read {self.manifest_path}: {error.strerror}") from error
        return parse_manifest(raw, self.manifest_path)

    def _missing(self) -> ManifestError:
        return ManifestError(
            f"{self.manifest_path} does not exist. Name the manifest of your model store with "
            f"--manifest PATH (or {MANIFEST_ENV}), install an offline bundle (`offline-asr "
            "bundle install`), or register a first model with `offline-asr models prepare`."
        )

    def load_models(self, purpose: str) -> Manifest:
        """The manifest, refusing one that lists no models: `purpose` would check nothing."""
        manifest = self.load()
        if not manifest.models:
            raise ManifestError(
                f"{self.manifest_path} lists no models: nothing to {purpose}. Register one "
                "with `offline-asr models prepare` or install an offline bundle."
            )
        return manifest

    def get(self, manifest: Manifest, model_id: str) -> ModelMetadata:
        model = manifest.get(model_id)
        if model is None:
            known = ", ".join(m.id for m in manifest.models) or "none"
            raise ModelNotFoundError(
                f"no model {model_id!r} in {self.manifest_path} (registered: {known}). "
                "See `offline-asr models list`."
            )
        return model

    def select(self, manifest: Manifest, model_ids: list[str]) -> list[ModelMetadata]:
        """The entries with these ids, in this order (one pass over the manifest)."""
        index = {model.id: model for model in manifest.models}
        return [index.get(i) or self.get(manifest, i) for i in model_ids]

    def locked(self, *, create: bool = False) -> AbstractContextManager[None]:
        """Hold the store's write lock; a second writer fails at once instead of racing.

        Without `create`, a store whose manifest does not exist is refused, not created.
        """
        if not create and not self.manifest_path.exists():
            raise self._missing()
        busy = StoreError(f"another offline-asr process is changing {self.root}; wait for it")
        return exclusive(self.root / LOCK_NAME, busy)

    def save(self, manifest: Manifest, changes: list[ManifestChange]) -> Manifest:
        """Bump `manifest_version`, write the manifest atomically, then log to the CHANGELOG."""
        if not changes:
            return manifest
        updated = manifest.model_copy(
            update={
                "manifest_version": manifest.manifest_version + 1,
                "updated_at": datetime.now(UTC).replace(microsecond=0),
            }
        )
        Manifest.model_validate(updated.model_dump())
        write_atomic(self.manifest_path, updated.to_json())
        self._log(updated, changes)
        return updated

    def _log(self, manifest: Manifest, changes: list[ManifestChange]) -> None:
        assert manifest.updated_at is not None
        lines = [
            f"## Models: manifest_version {manifest.manifest_version} "
            f"({manifest.updated_at:%Y-%m-%d})",
            "",
        ]
        for change in changes:
            lines.append(f"- {change.action} `{change.model_id}`")
            lines.extend(f"  - {detail}" for detail in change.details)
        entry = "\n".join(lines) + "\n\n"
        text = (
            self.changelog_path.read_text(encoding="utf-8")
            if self.changelog_path.exists()
            else "# Changelog\n\n"
        )
        # Newest entry first: before the first second-level heading, else at the end.
        index = text.find("\n## ")
        text = text + entry if index < 0 else text[: index + 1] + entry + text[index + 1 :]
        write_atomic(self.changelog_path, text)
