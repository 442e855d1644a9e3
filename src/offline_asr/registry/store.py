"""The model store: `manifest.json` beside the model folders, changed atomically and logged."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

from pydantic import ValidationError

from offline_asr.constants import CHANGELOG_NAME, GOLDENS_DIR, LOCK_NAME, STAGING_DIR
from offline_asr.errors import ManifestError, ModelNotFoundError, StoreError
from offline_asr.locking import exclusive
from offline_asr.schemas import Manifest, ModelMetadata, describe_validation_error


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


def write_atomic(path: Path, text: str) -> None:
    """Write via a temporary file in the same folder, fsync, then rename over the target."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as stream:
            stream.write(text)
            stream.flush()
            os.fsync(stream.fileno())
        Path(tmp).chmod(0o666 & ~_umask())
        Path(tmp).replace(path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def _umask() -> int:
    current = os.umask(0)
    os.umask(current)
    return current


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

    def load(self) -> Manifest:
        """Read and validate the manifest; a missing file is an empty registry."""
        if not self.manifest_path.exists():
            return Manifest()
        try:
            data = json.loads(self.manifest_path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as error:
            raise ManifestError(
                f"{self.manifest_path} is not valid JSON (line {error.lineno}, column "
                f"{error.colno}: {error.msg}). Restore it from git or from the bundle."
            ) from error
        except OSError as error:
            raise ManifestError(f"cannot read {self.manifest_path}: {error.strerror}") from error
        try:
            return Manifest.model_validate(data)
        except ValidationError as error:
            problems = describe_validation_error(error)
            raise ManifestError(
                f"{self.manifest_path} breaks the manifest schema:\n{problems}"
            ) from error

    def get(self, manifest: Manifest, model_id: str) -> ModelMetadata:
        model = manifest.get(model_id)
        if model is None:
            known = ", ".join(m.id for m in manifest.models) or "none"
            raise ModelNotFoundError(
                f"no model {model_id!r} in {self.manifest_path} (registered: {known}). "
                "See `offline-asr models list`."
            )
        return model

    def locked(self) -> AbstractContextManager[None]:
        """Hold the store's write lock; a second writer fails at once instead of racing."""
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


def remove_model(store: ModelStore, model_id: str) -> Manifest:
    """Drop a model's entry and files; the folder is moved aside first and restored on failure."""
    with store.locked():
        manifest = store.load()
        model = store.get(manifest, model_id)
        folder = store.root / model.path
        trash = store.staging / f"removed-{model_id}.{os.getpid()}"
        trash.parent.mkdir(parents=True, exist_ok=True)
        if folder.exists():
            folder.rename(trash)
        previous: dict[Path, bytes | None] = {}
        try:
            previous = store.replace_goldens({model_id: None})
            remaining = [m for m in manifest.models if m.id != model_id]
            change = diff_model(model, None)
            assert change is not None
            updated = store.save(manifest.model_copy(update={"models": remaining}), [change])
        except BaseException:
            restore_files(previous)
            if trash.exists():
                trash.rename(folder)
            raise
        shutil.rmtree(trash, ignore_errors=True)
        return updated
