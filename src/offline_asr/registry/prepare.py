"""Preparation: fetch, convert, copy into the store while hashing, then register.

The store and manifest change only at the very end, by renames: an error, a full disk or Ctrl-C
at any earlier point leaves both exactly as they were.
"""

from __future__ import annotations

import errno
import hashlib
import os
import shutil
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Literal

from offline_asr.constants import CHECKSUM_NAME, HASH_CHUNK
from offline_asr.errors import IntegrityError, SourceError, StoreError
from offline_asr.progress import Advance, byte_progress
from offline_asr.registry import sources
from offline_asr.registry.catalog import variant_defaults
from offline_asr.registry.changes import NEW, PREVIOUS, Journal, recover, work_folder, write_journal
from offline_asr.registry.gigaam_check import check_gigaam_folder
from offline_asr.registry.integrity import checksum_text, verify_models
from offline_asr.registry.layouts import (
    WHISPER_CT2,
    WHISPER_TRANSFORMERS,
    Layout,
    ctranslate2_weight_dtype,
    gigaam_layout,
)
from offline_asr.registry.schemas import (
    ENGINES,
    MODEL_ID,
    Artifact,
    Manifest,
    ModelMetadata,
    SmokeTest,
    Source,
    check_store_path,
)
from offline_asr.registry.store import ModelStore, diff_model, restore_files

Quantization = Literal["int8", "float16", "float32"]
GIGAAM_QUANTIZATIONS = (None, "float32", "int8")
# CTranslate2's compute types; float16 and bfloat16 need a GPU.
COMPUTE_TYPES = (
    "int8", "int8_float32", "int8_float16", "int8_bfloat16", "int16", "float16", "bfloat16",
    "float32", "default", "auto",
)  # fmt: skip


@dataclass
class PrepareRequest:
    """What to prepare and from where; with no source the variant's default source is used."""

    engine: str
    variant: str
    model_id: str | None = None
    quantization: Quantization | None = None
    compute_type: str | None = None
    from_packages: list[str] = field(default_factory=list)
    from_dir: Path | None = None
    hf_repo: str | None = None
    revision: str = "main"
    from_url: str | None = None
    sha256: str | None = None
    hf_endpoint: str | None = None
    license: str | None = None
    languages: list[str] = field(default_factory=list)


SmokeRecorder = Callable[[ModelStore, ModelMetadata, int], tuple[SmokeTest, str]]
"""Runs a new entry's smoke clip and gives its smoke test and golden file text (store, entry,
the manifest_version it will have). The caller passes one (`asr.smoke.smoke_recorder`):
preparing never imports an engine."""


@dataclass
class PrepareResult:
    model: ModelMetadata
    manifest_version: int
    registered: bool  # the manifest changed
    restored: bool  # files were (re)written into the store


def _choose_layout(request: PrepareRequest) -> sources.ChooseLayout:
    def choose(names: list[str], where: str) -> Layout:
        if request.engine == "gigaam":
            return gigaam_layout(request.variant, request.quantization)
        if "model.bin" in names:
            return WHISPER_CT2
        if "model.safetensors" in names:
            return WHISPER_TRANSFORMERS
        raise SourceError(
            f"{where} is neither a CTranslate2 Whisper folder (model.bin, config.json, "
            "tokenizer.json) nor a transformers checkpoint (config.json, model.safetensors)"
        )

    return choose


def _source_count(request: PrepareRequest) -> int:
    given = (request.from_packages, request.from_dir, request.hf_repo, request.from_url)
    return sum(1 for value in given if value)


def _fetch(request: PrepareRequest, workdir: Path) -> sources.Offered:
    choose = _choose_layout(request)
    if request.from_url or request.sha256:
        if not (request.from_url and request.sha256):
            raise SourceError("--from-url and --sha256 go together: the download must be pinned")
        return sources.from_url(request.from_url, request.sha256, workdir / "url", choose)
    if request.from_dir:
        return sources.from_dir(request.from_dir, choose)
    defaults = variant_defaults(request.engine, request.variant)
    packages = request.from_packages or ([] if request.hf_repo else list(defaults.packages))
    if packages:
        offered = sources.from_packages(packages, choose)
        if packages == list(defaults.packages):  # known repackaging of an upstream repo
            offered.source.repo = defaults.upstream_repo
        return offered
    repo = request.hf_repo or defaults.hf_repo
    if repo:
        key = repo.replace("/", "--") + "@" + request.revision.replace("/", "--")
        downloads = workdir.parent / "downloads" / key
        return sources.from_hub(repo, request.revision, downloads, choose, request.hf_endpoint)
    if defaults.generated is not None:
        return sources.generated_test_model(workdir / "generated", choose, defaults.generated)
    raise SourceError(
        f"no default source for {request.engine} {request.variant!r}: "
        "give --from-package, --from-dir, --hf-repo or --from-url"
    )


def _convert_transformers(
    offered: sources.Offered, quantization: str, out: Path
) -> sources.Offered:
    """Convert a transformers Whisper checkpoint with CTranslate2's converter."""
    try:
        from ctranslate2.converters import TransformersConverter
    except ImportError as error:  # pragma: no cover - depends on optional packages
        raise SourceError(
            "converting a transformers checkpoint needs `transformers` and `torch`: "
            f"pip install transformers torch ({error})"
        ) from error
    checkpoint = out.parent / "checkpoint"
    checkpoint.mkdir(parents=True, exist_ok=True)
    for name, parts in offered.files.items():
        _copy_join(parts, checkpoint / name, None)
    copy = [n for n in ("tokenizer.json", "preprocessor_config.json") if n in offered.files]
    try:
        TransformersConverter(str(checkpoint), copy_files=copy).convert(
            str(out), quantization=quantization, force=True
        )
    except (ImportError, ValueError, OSError) as error:
        raise SourceError(f"conversion of {offered.where} failed: {error}") from error
    converted = sources.from_dir(out, lambda names, where: WHISPER_CT2)
    converted.source = offered.source
    converted.toolchain = {
        "ctranslate2": metadata.version("ctranslate2"),
        "transformers": metadata.version("transformers"),
        "torch": metadata.version("torch"),
    }
    return converted


def _copy_join(parts: list[Path], target: Path, advance: Advance | None) -> tuple[str, int]:
    """Copy (joining parts in order) and hash in one pass."""
    digest = hashlib.sha256()
    size = 0
    buffer = bytearray(HASH_CHUNK)
    view = memoryview(buffer)
    target.parent.mkdir(parents=True, exist_ok=True)
    with target.open("wb") as sink:
        for part in parts:
            with part.open("rb", buffering=0) as stream:
                while count := stream.readinto(buffer):
                    sink.write(view[:count])
                    digest.update(view[:count])
                    size += count
                    if advance is not None:
                        advance(count)
        sink.flush()
        os.fsync(sink.fileno())
    return digest.hexdigest(), size


def copy_into(offered: sources.Offered, folder: Path) -> dict[str, tuple[str, int]]:
    """Copy the offered files into `folder`, in parallel, hashing as they are written."""
    needed = offered.size
    free = shutil.disk_usage(folder.parent).free
    if needed > free:
        raise StoreError(
            f"not enough disk space in {folder.parent}: the model needs {needed:,} bytes, "
            f"{free:,} are free. Free some space or move the store (--manifest)."
        )
    folder.mkdir(parents=True)
    names = sorted(offered.files)
    workers = max(1, min(len(names), os.cpu_count() or 1))
    try:
        with (
            byte_progress(f"copying {offered.where}", needed) as advance,
            ThreadPoolExecutor(workers) as pool,
        ):
            digests = pool.map(lambda n: _copy_join(offered.files[n], folder / n, advance), names)
            return dict(zip(names, digests, strict=True))
    except OSError as error:
        if error.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
            raise StoreError(
                f"the disk filled up while copying into {folder.parent} ({error.strerror}); "
                "nothing was registered. Free some space and run the command again."
            ) from error
        raise StoreError(f"cannot write into {folder.parent}: {error}") from error


def _toolchain(engine: str) -> dict[str, str]:
    packages = (
        ("ctranslate2", "faster-whisper") if engine == "whisper" else ("onnx-asr", "onnxruntime")
    )
    return {name: metadata.version(name) for name in packages}


def _entry(
    request: PrepareRequest,
    converted: bool,
    model_id: str,
    offered: sources.Offered,
    digests: dict[str, tuple[str, int]],
    folder: Path,
) -> ModelMetadata:
    defaults = variant_defaults(request.engine, request.variant)
    path = f"{request.engine}/{request.variant}"
    if offered.layout.format == "ctranslate2":
        precision = ctranslate2_weight_dtype(folder / "model.bin")
        if request.quantization not in (None, precision) and not converted:
            raise SourceError(
                f"{offered.where} holds {precision} CTranslate2 weights; --quantization "
                f"{request.quantization} converts transformers checkpoints only. Use "
                "--compute-type to run these weights at another type."
            )
        compute_type = request.compute_type or "int8"
    else:
        precision = compute_type = request.quantization or "float32"
    return ModelMetadata(
        id=model_id,
        engine=request.engine,  # checked in prepare_model
        variant=request.variant,
        format="onnx" if request.engine == "gigaam" else "ctranslate2",
        precision=precision,
        compute_type=compute_type,
        languages=request.languages or defaults.languages,
        license=request.license or defaults.license,
        description=defaults.description,
        source=offered.source,
        toolchain=_toolchain(request.engine) | offered.toolchain,
        path=path,
        artifacts=[
            Artifact(path=f"{path}/{name}", sha256=sha, size=size)
            for name, (sha, size) in sorted(digests.items())
        ],
    )


def _validate(request: PrepareRequest, model_id: str) -> None:
    if request.compute_type is not None and (
        request.engine != "whisper" or request.compute_type not in COMPUTE_TYPES
    ):
        raise SourceError(
            f"--compute-type applies to Whisper models: one of {', '.join(COMPUTE_TYPES)}"
        )
    if request.engine not in ENGINES:
        raise SourceError(f"unknown engine {request.engine!r}: use one of {', '.join(ENGINES)}")
    if request.engine == "gigaam" and request.quantization not in GIGAAM_QUANTIZATIONS:
        raise SourceError(
            f"GigaAM ONNX exports come as float32 (*.onnx) and int8 (*.int8.onnx); "
            f"--quantization {request.quantization} is neither"
        )
    if _source_count(request) > 1:
        raise SourceError("give at most one of --from-package, --from-dir, --hf-repo, --from-url")
    try:
        check_store_path(f"{request.engine}/{request.variant}")
    except ValueError as error:
        raise SourceError(f"bad variant {request.variant!r}: {error}") from error
    if not MODEL_ID.fullmatch(model_id):
        raise SourceError(
            f"model id {model_id!r} must start with a lowercase letter or digit and hold only "
            "lowercase letters, digits, '.', '_' and '-'"
        )


def prepare_model(
    store: ModelStore,
    request: PrepareRequest,
    *,
    record_smoke: SmokeRecorder | None,
    must_match: ModelMetadata | None = None,
) -> PrepareResult:
    """Fetch, stage, hash and register one model; a repeat with the same inputs changes nothing.

    `record_smoke` records the smoke test and golden output when the entry has none (None:
    skip, `--no-smoke`). With `must_match`, the prepared entry must equal it (a restore never
    edits the manifest, so it records nothing).
    """
    model_id = request.model_id or f"{request.engine}-{request.variant}"
    _validate(request, model_id)
    with store.locked(create=True):
        manifest = store.load(missing_ok=True)
        recover(store, manifest)
        staging = work_folder(store, model_id)
        try:
            offered = _fetch(request, staging)
            converted = offered.layout.format == "transformers"
            if converted:
                offered = _convert_transformers(
                    offered, request.quantization or "float16", staging / "converted"
                )
            digests = copy_into(offered, staging / NEW)
            if request.engine == "gigaam":
                check_gigaam_folder(
                    staging / NEW, request.variant, request.quantization, offered.where
                )
            new = _entry(request, converted, model_id, offered, digests, staging / NEW)
            if must_match is not None:
                _check_match(must_match, new)
            result = _install(
                store, manifest, new, staging, record_smoke=None if must_match else record_smoke
            )
            if offered.download_dir is not None:
                shutil.rmtree(offered.download_dir, ignore_errors=True)
            return result
        finally:
            shutil.rmtree(staging, ignore_errors=True)


def _install(
    store: ModelStore,
    manifest: Manifest,
    new: ModelMetadata,
    staging: Path,
    *,
    record_smoke: SmokeRecorder | None,
) -> PrepareResult:
    """Swap the staged folder in, record the smoke test when asked and missing, register."""
    old = manifest.get(new.id)
    if old is not None:
        same_files = old.artifacts == new.artifacts
        new = new.model_copy(update={"smoke": old.smoke if same_files else None})
        new = new.model_copy(update={"version": old.version})
    clash = next((m for m in manifest.models if m.path == new.path and m.id != new.id), None)
    if clash is not None:
        raise StoreError(f"folder {new.path} already belongs to model {clash.id!r}")
    (staging / NEW / CHECKSUM_NAME).write_text(checksum_text(new), encoding="utf-8")
    smoke_missing = record_smoke is not None and new.smoke is None
    unchanged = diff_model(old, new) is None and not smoke_missing
    if unchanged and all(r.ok for r in verify_models(store.root, [new])):
        return PrepareResult(new, manifest.manifest_version, registered=False, restored=False)
    target = store.root / new.path
    previous = staging / PREVIOUS
    write_journal(staging, Journal(model_id=new.id, folder=new.path, after=new.artifacts))
    if target.exists():
        target.rename(previous)
    old_goldens: dict[Path, bytes | None] = {}
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        (staging / NEW).rename(target)
        golden: str | None = None
        if record_smoke is not None and new.smoke is None:
            recorded, golden = record_smoke(store, new, manifest.manifest_version + 1)
            new = new.model_copy(update={"smoke": recorded})
        change = diff_model(old, new)
        if change is None:
            return PrepareResult(new, manifest.manifest_version, registered=False, restored=True)
        if golden is not None or new.smoke is None:  # a new golden, or none for new weights
            old_goldens = store.replace_goldens({new.id: golden})
        models = sorted([m for m in manifest.models if m.id != new.id] + [new], key=lambda m: m.id)
        updated = store.save(manifest.model_copy(update={"models": models}), [change])
    except BaseException:
        restore_files(old_goldens)
        shutil.rmtree(target, ignore_errors=True)
        if previous.exists():
            previous.rename(target)
        raise
    return PrepareResult(new, updated.manifest_version, registered=True, restored=True)


def request_from_entry(model: ModelMetadata) -> PrepareRequest:
    """Re-create the preparation that produced a manifest entry, from its pinned source."""
    source: Source = model.source
    request = PrepareRequest(
        engine=model.engine,
        variant=model.variant,
        model_id=model.id,
        license=model.license,
        languages=model.languages,
    )
    if model.format == "onnx" and model.precision == "int8":
        request.quantization = "int8"
    elif "transformers" in model.toolchain:  # converted at this precision
        request.quantization = model.precision  # type: ignore[assignment]
    if model.format == "ctranslate2":
        request.compute_type = model.compute_type
    if source.kind == "pypi":
        request.from_packages = [p.split("==")[0] for p in source.packages]
    elif source.kind == "local":
        request.from_dir = Path(source.path or "")
    elif source.kind == "huggingface":
        request.hf_repo, request.revision = source.repo, source.commit or "main"
    elif source.kind == "url":
        request.from_url, request.sha256 = source.url, source.sha256
    return request


def _check_match(expected: ModelMetadata, new: ModelMetadata) -> None:
    change = diff_model(expected, new.model_copy(update={"smoke": expected.smoke}))
    if change is not None:
        raise IntegrityError(
            f"the pinned source of {expected.id!r} no longer gives what the manifest lists "
            f"({'; '.join(change.details)}); nothing was changed. Install the model from a "
            "bundle, or re-register it with `offline-asr models prepare`."
        )


def restore_model(store: ModelStore, model: ModelMetadata) -> PrepareResult:
    """Bring back a listed model's files from its pinned source; the bytes must match exactly."""
    return prepare_model(store, request_from_entry(model), record_smoke=None, must_match=model)
