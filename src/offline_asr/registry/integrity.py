"""Hashing and verification of model files against the manifest."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path, PurePosixPath
from typing import Literal

from offline_asr.constants import CHECKSUM_NAME, HASH_CHUNK
from offline_asr.progress import Advance, byte_progress
from offline_asr.schemas import Artifact, ModelMetadata


@dataclass(frozen=True)
class FileDigest:
    sha256: str
    size: int


def sha256_file(path: Path, advance: Advance | None = None) -> FileDigest:
    """Stream a file through sha256 in large chunks (hashlib releases the GIL on them)."""
    digest = hashlib.sha256()
    buffer = bytearray(HASH_CHUNK)
    view = memoryview(buffer)
    size = 0
    with path.open("rb", buffering=0) as stream:
        while count := stream.readinto(buffer):
            digest.update(view[:count])
            size += count
            if advance is not None:
                advance(count)
    return FileDigest(digest.hexdigest(), size)


def hash_files(paths: Iterable[Path], description: str = "hashing") -> dict[Path, FileDigest]:
    """Hash files in parallel (one thread per core) behind one progress bar."""
    unique = sorted(set(paths))
    total = sum(path.stat().st_size for path in unique)
    workers = max(1, min(len(unique), os.cpu_count() or 1))
    with byte_progress(description, total) as advance, ThreadPoolExecutor(workers) as pool:
        digests = pool.map(lambda path: sha256_file(path, advance), unique)
        return dict(zip(unique, digests, strict=True))


def symlink_on_path(root: Path, relative: str) -> Path | None:
    """The first component of `root/relative` that is a symbolic link, if any."""
    current = root
    for part in relative.split("/"):
        current = current / part
        if current.is_symlink():
            return current
    return None


def checksum_text(model: ModelMetadata) -> str:
    """`checksum.txt` for a model folder, in the format `sha256sum -c` reads."""
    lines = sorted(f"{a.sha256}  {model.relative_name(a)}\n" for a in model.artifacts)
    return "".join(lines)


Problem = Literal["missing", "altered", "unlisted", "symlink", "checksum.txt"]


@dataclass
class FileProblem:
    path: str
    problem: Problem
    detail: str
    expected_sha256: str | None = None
    actual_sha256: str | None = None
    expected_size: int | None = None
    actual_size: int | None = None


@dataclass
class ModelReport:
    model_id: str
    path: str
    files_checked: int
    bytes_checked: int
    problems: list[FileProblem] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_dict(self) -> dict[str, object]:
        return asdict(self) | {"ok": self.ok}


def unlisted_files(root: Path, model: ModelMetadata) -> list[str]:
    """Everything in the model's folder that the manifest does not list (store-relative).

    Engines read files by name from the folder (faster-whisper's `preprocessor_config.json`,
    onnx-asr's `config.json`), so a file here that is not listed could change the output.
    """
    listed = {a.path for a in model.artifacts} | {f"{model.path}/{CHECKSUM_NAME}"}
    found = []
    for dirpath, dirnames, filenames in os.walk(root / model.path):
        relative = Path(dirpath).relative_to(root).as_posix()
        links = [d for d in dirnames if Path(dirpath, d).is_symlink()]
        found += [f"{relative}/{name}" for name in filenames + links]
    return sorted(path for path in found if path not in listed)


def unregistered_paths(root: Path, models: list[ModelMetadata]) -> list[str]:
    """Folders (and stray files or links beside model folders) that belong to no listed model,
    e.g. left by a killed preparation or copied in by hand. Top-level files (the manifest, its
    schema) and hidden top-level entries (the store's own) are not looked at."""
    folders = {model.path for model in models}
    ancestors = {str(parent) for path in folders for parent in PurePosixPath(path).parents}
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        relative = Path(dirpath).relative_to(root).as_posix()
        if relative != "." and relative not in ancestors:
            dirnames.clear()
            if _holds_files(Path(dirpath)):
                found.append(relative)
            continue
        prefix = "" if relative == "." else f"{relative}/"
        if prefix:
            found += [prefix + name for name in filenames]
        else:
            dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        links = {d for d in dirnames if Path(dirpath, d).is_symlink()}
        found += [prefix + d for d in links if prefix + d not in folders]  # models: see verify
        dirnames[:] = [d for d in dirnames if d not in links and prefix + d not in folders]
    return sorted(found)


def _holds_files(folder: Path) -> bool:
    for dirpath, dirnames, filenames in os.walk(folder):
        if filenames or any(Path(dirpath, d).is_symlink() for d in dirnames):
            return True
    return False


def _check_checksum_file(root: Path, model: ModelMetadata) -> list[FileProblem]:
    path = root / model.path / CHECKSUM_NAME
    relative = f"{model.path}/{CHECKSUM_NAME}"
    if not path.is_file():
        return [FileProblem(relative, "missing", f"{CHECKSUM_NAME} is missing")]
    if path.read_text(encoding="utf-8") != checksum_text(model):
        return [FileProblem(relative, "checksum.txt", "does not match the manifest's sha256 list")]
    return []


def verify_models(root: Path, models: list[ModelMetadata]) -> list[ModelReport]:
    """Recompute sha256 and size of every artifact; report missing, altered and unlisted files."""
    reports: dict[str, ModelReport] = {}
    to_hash: dict[Path, tuple[ModelReport, Artifact]] = {}
    for model in models:
        report = reports[model.id] = ModelReport(model.id, model.path, 0, 0)
        for artifact in model.artifacts:
            path = root / artifact.path
            link = symlink_on_path(root, artifact.path)
            if link is not None:
                detail = f"{link.relative_to(root)} is a symbolic link; the store holds real files"
                report.problems.append(FileProblem(artifact.path, "symlink", detail))
            elif not path.is_file():
                report.problems.append(
                    FileProblem(
                        artifact.path,
                        "missing",
                        "file not found",
                        expected_sha256=artifact.sha256,
                        expected_size=artifact.size,
                    )
                )
            elif (size := path.stat().st_size) != artifact.size:
                report.problems.append(
                    FileProblem(
                        artifact.path,
                        "altered",
                        f"size is {size} bytes, the manifest says {artifact.size}",
                        expected_sha256=artifact.sha256,
                        expected_size=artifact.size,
                        actual_size=size,
                    )
                )
            else:
                to_hash[path] = (report, artifact)
        if (root / model.path).is_dir():
            report.problems.extend(
                FileProblem(path, "unlisted", "not in the manifest")
                for path in unlisted_files(root, model)
            )
            report.problems.extend(_check_checksum_file(root, model))
    for path, digest in hash_files(to_hash, "verifying").items():
        report, artifact = to_hash[path]
        report.files_checked += 1
        report.bytes_checked += digest.size
        if digest.sha256 != artifact.sha256:
            report.problems.append(
                FileProblem(
                    artifact.path,
                    "altered",
                    "sha256 differs from the manifest",
                    expected_sha256=artifact.sha256,
                    actual_sha256=digest.sha256,
                    expected_size=artifact.size,
                    actual_size=digest.size,
                )
            )
    for report in reports.values():
        report.problems.sort(key=lambda p: p.path)
    return list(reports.values())
