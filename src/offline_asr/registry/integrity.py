"""Model files against the manifest: `models verify`, the check before every load, and the
per-artifact check they share with `bundle build`."""

from __future__ import annotations

import os
import stat
import threading
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path, PurePosixPath
from typing import Literal

from offline_asr.constants import CHECKSUM_NAME, GOLDENS_DIR, HASH_CHUNK
from offline_asr.errors import IntegrityError
from offline_asr.fsutil import FileDigest, sha256_file
from offline_asr.progress import Advance, byte_progress
from offline_asr.registry.schemas import Artifact, ModelMetadata
from offline_asr.registry.verified_cache import VerifiedCache, file_identity


def hash_files(paths: Iterable[Path], description: str = "hashing") -> dict[Path, FileDigest]:
    """Hash files behind one progress bar: large ones in parallel (one thread per core, each
    taking the next file when done), small ones in this thread, where the threads would only
    fight over the GIL (measured: 3x slower for 20,000 small files)."""
    sizes = {path: path.stat().st_size for path in dict.fromkeys(paths)}
    large = iter(sorted((p for p, n in sizes.items() if n >= HASH_CHUNK), key=sizes.__getitem__,
                        reverse=True))  # fmt: skip
    workers = max(1, min(sum(size >= HASH_CHUNK for size in sizes.values()), os.cpu_count() or 1))
    lock = threading.Lock()

    def hash_large(advance: Advance) -> dict[Path, FileDigest]:
        done: dict[Path, FileDigest] = {}
        while True:
            with lock:
                path = next(large, None)
            if path is None:
                return done
            done[path] = sha256_file(path, advance)

    with byte_progress(description, sum(sizes.values())) as advance:
        with ThreadPoolExecutor(workers) as pool:
            hashing = [pool.submit(hash_large, advance) for _ in range(workers)]
            results = {p: sha256_file(p, advance) for p, n in sizes.items() if n < HASH_CHUNK}
            for future in hashing:
                results.update(future.result())
        return {path: results[path] for path in sizes}


def symlink_on_path(root: Path, relative: str) -> Path | None:
    """The first component of `root/relative` that is a symbolic link, if any."""
    current = str(root)
    for part in relative.split("/"):
        current = f"{current}/{part}"  # strings, not Paths: this runs for every artifact
        try:
            if stat.S_ISLNK(os.lstat(current).st_mode):
                return Path(current)
        except OSError:  # missing: nothing below it can be a link
            return None
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

    def sentence(self) -> str:
        """The one way a problem is told: the file, then what is wrong with it."""
        return f"{self.path} {self.detail}"


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
    folders = [model.path]
    while folders:
        folder = folders.pop()
        try:
            with os.scandir(root / folder) as entries:
                for entry in entries:
                    relative = f"{folder}/{entry.name}"
                    if entry.is_dir(follow_symlinks=False):
                        folders.append(relative)
                    elif relative not in listed:  # files, and links (to folders too)
                        found.append(relative)
        except (FileNotFoundError, NotADirectoryError):
            continue
        except OSError:  # unreadable: what it holds cannot be vouched for
            found.append(folder)
    return sorted(found)


def unregistered_paths(root: Path, models: list[ModelMetadata]) -> list[str]:
    """Folders (and stray files or links beside model folders) that belong to no listed model,
    e.g. left by a killed preparation or copied in by hand. Top-level files (the manifest, its
    schema), hidden top-level entries (the store's own) and empty folders are left out; in
    `goldens/` only the golden files of listed models belong."""
    folders = {model.path for model in models}
    goldens = {m.smoke.golden for m in models if m.smoke is not None and m.smoke.golden}
    ancestors = {str(parent) for path in folders for parent in PurePosixPath(path).parents}
    found = []
    pending = ["."]
    while pending:
        folder = pending.pop()
        with os.scandir(root / folder) as entries:
            for entry in entries:
                relative = entry.name if folder == "." else f"{folder}/{entry.name}"
                if relative in folders:
                    continue  # a model's own folder: `verify_models` checks it
                is_dir = entry.is_dir(follow_symlinks=False)
                if is_dir and relative == GOLDENS_DIR:
                    with os.scandir(entry.path) as listed:
                        found += [f"{GOLDENS_DIR}/{e.name}" for e in listed
                                  if f"{GOLDENS_DIR}/{e.name}" not in goldens]  # fmt: skip
                elif is_dir and relative in ancestors:
                    pending.append(relative)
                elif folder == "." and (entry.name.startswith(".") or entry.is_file()):
                    continue
                elif relative not in ancestors and (not is_dir or _holds_files(Path(entry))):
                    found.append(relative)
    return sorted(found)


def _holds_files(folder: Path) -> bool:
    for dirpath, dirnames, filenames in os.walk(folder):
        if filenames or any(Path(dirpath, d).is_symlink() for d in dirnames):
            return True
    return False


def _check_checksum_file(root: Path, model: ModelMetadata) -> list[FileProblem]:
    relative = f"{model.path}/{CHECKSUM_NAME}"
    try:
        written = (root / relative).read_bytes()
    except (FileNotFoundError, IsADirectoryError):
        return [FileProblem(relative, "missing", "is missing")]
    if written != checksum_text(model).encode():
        return [FileProblem(relative, "checksum.txt", "does not match the manifest's sha256 list")]
    return []


def artifact_problem(root: Path, artifact: Artifact) -> FileProblem | None:
    """What is wrong with an artifact before any hashing: a symbolic link on its path, the file
    missing, or another size than the manifest says; None when it may be hashed.

    `models verify`, the check before a load and `bundle build` all ask this.
    """
    link = symlink_on_path(root, artifact.path)
    if link is not None:
        detail = f"is behind the symbolic link {link.relative_to(root)}; the store holds real files"
        return FileProblem(artifact.path, "symlink", detail)
    path = root / artifact.path
    if not path.is_file():
        detail = f"is missing (the manifest lists sha256 {artifact.sha256}, {artifact.size} bytes)"
        return FileProblem(artifact.path, "missing", detail, expected_sha256=artifact.sha256,
                           expected_size=artifact.size)  # fmt: skip
    if (size := path.stat().st_size) != artifact.size:
        detail = (f"has {size} bytes, the manifest says {artifact.size} (the file was altered or "
                  "truncated)")  # fmt: skip
        return FileProblem(artifact.path, "altered", detail, expected_sha256=artifact.sha256,
                           expected_size=artifact.size, actual_size=size)  # fmt: skip
    return None


def hash_problem(artifact: Artifact, digest: FileDigest) -> FileProblem | None:
    """The artifact's bytes against the manifest's sha256, once hashed."""
    if digest.sha256 == artifact.sha256:
        return None
    detail = (f"has sha256 {digest.sha256}, the manifest says {artifact.sha256} (sha256 differs: "
              "the file was altered)")  # fmt: skip
    return FileProblem(
        artifact.path, "altered", detail, expected_sha256=artifact.sha256,
        actual_sha256=digest.sha256, expected_size=artifact.size, actual_size=digest.size,
    )  # fmt: skip


def verify_models(root: Path, models: list[ModelMetadata]) -> list[ModelReport]:
    """Recompute sha256 and size of every artifact; report missing, altered and unlisted files."""
    reports: dict[str, ModelReport] = {}
    to_hash: dict[Path, tuple[ModelReport, Artifact]] = {}
    for model in models:
        report = reports[model.id] = ModelReport(model.id, model.path, 0, 0)
        for artifact in model.artifacts:
            problem = artifact_problem(root, artifact)
            if problem is None:
                to_hash[root / artifact.path] = (report, artifact)
            else:
                report.problems.append(problem)
        if (root / model.path).is_dir():
            report.problems.extend(
                FileProblem(path, "unlisted", "is not in the manifest")
                for path in unlisted_files(root, model)
            )
            report.problems.extend(_check_checksum_file(root, model))
    for path, digest in hash_files(to_hash, "verifying").items():
        report, artifact = to_hash[path]
        report.files_checked += 1
        report.bytes_checked += digest.size
        if (problem := hash_problem(artifact, digest)) is not None:
            report.problems.append(problem)
    for report in reports.values():
        report.problems.sort(key=lambda p: p.path)
    return list(reports.values())


def check_before_load(root: Path, model: ModelMetadata, *, hint: str, full: bool = False) -> None:
    """Refuse to load when an artifact is missing, a symlink, or has another size or sha256, or
    when the model's folder holds a file the manifest does not list (the engine could read it).

    Files the verified-hash cache vouches for are not hashed again unless `full`; `hint` says
    where to get good files.
    """

    def refuse(problem: FileProblem) -> IntegrityError:
        return IntegrityError(
            f"model {model.id!r}: {problem.sentence()}; refusing to load altered weights. {hint}"
        )

    to_hash: dict[Path, Artifact] = {}
    for artifact in model.artifacts:
        if (problem := artifact_problem(root, artifact)) is not None:
            raise refuse(problem)
        to_hash[root / artifact.path] = artifact
    _refuse_unlisted(root, model)
    cache = VerifiedCache(root)
    identities = {path: file_identity(path) for path in to_hash}
    if not full:
        to_hash = {p: a for p, a in to_hash.items() if not cache.vouches(identities[p], a.sha256)}
    if not to_hash:
        return
    for path, digest in hash_files(to_hash, f"verifying {model.id}").items():
        if (problem := hash_problem(to_hash[path], digest)) is not None:
            raise refuse(problem)
        # Remembered only if the file did not change while it was hashed.
        if file_identity(path) == identities[path]:
            cache.remember(identities[path], digest.sha256)
    cache.save()


def _refuse_unlisted(root: Path, model: ModelMetadata) -> None:
    unlisted = unlisted_files(root, model)
    if unlisted:
        is_, it = ("is", "it") if len(unlisted) == 1 else ("are", "them")
        raise IntegrityError(
            f"model {model.id!r}: {', '.join(unlisted)} {is_} in the model's folder but not "
            "listed in the manifest; engines read files from that folder by name, so the model "
            f"is not loaded. Delete or move {it} out of {model.path}/ (`offline-asr models "
            f"verify` lists every such file), or, if the model needs {it}, prepare the model "
            "again (`offline-asr models prepare`) so that the manifest lists it."
        )
