"""Before a load: are the weights present and intact, and which device (CPU pins: `pins`).

A verified-hash cache (`registry.verified_cache`) makes the second start fast; `full=True`
re-hashes everything.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from offline_asr.config import Settings
from offline_asr.errors import IntegrityError
from offline_asr.registry.integrity import hash_files, symlink_on_path, unlisted_files
from offline_asr.registry.schemas import ModelMetadata
from offline_asr.registry.store import ModelStore
from offline_asr.registry.verified_cache import VerifiedCache, file_identity

Device = Literal["auto", "cpu", "cuda"]


def choose_device(requested: Device, engine: str) -> Literal["cpu", "cuda"]:
    """CUDA when asked or when the engine's runtime sees a GPU (auto), else CPU."""
    if requested != "auto":
        return requested
    if engine == "whisper":
        import ctranslate2

        return "cuda" if ctranslate2.get_cuda_device_count() > 0 else "cpu"
    import onnxruntime

    return "cuda" if "CUDAExecutionProvider" in onnxruntime.get_available_providers() else "cpu"


def check_weights(store: ModelStore, model: ModelMetadata, *, full: bool = False) -> None:
    """Refuse to load when an artifact is missing, a symlink, or has another sha256, or when
    the model's folder holds a file the manifest does not list (the engine could read it).

    Files the verified-hash cache vouches for are not hashed again unless `full`.
    """
    hint = Settings().offline_asr_bundle_hint
    to_hash: dict[Path, str] = {}
    for artifact in model.artifacts:
        path = store.root / artifact.path
        if symlink_on_path(store.root, artifact.path) is not None or not path.is_file():
            raise IntegrityError(
                f"model {model.id!r}: {artifact.path} is missing (expected sha256 "
                f"{artifact.sha256}). {hint}"
            )
        if path.stat().st_size != artifact.size:
            raise IntegrityError(
                f"model {model.id!r}: {artifact.path} has {path.stat().st_size} bytes, the "
                f"manifest says {artifact.size}; the file was altered or truncated. {hint}"
            )
        to_hash[path] = artifact.sha256
    _refuse_unlisted(store, model)
    cache = VerifiedCache(store.root)
    identities = {path: file_identity(path) for path in to_hash}
    if not full:
        to_hash = {p: sha for p, sha in to_hash.items() if not cache.vouches(identities[p], sha)}
    if not to_hash:
        return
    for path, digest in hash_files(to_hash, f"verifying {model.id}").items():
        if digest.sha256 != to_hash[path]:
            raise IntegrityError(
                f"model {model.id!r}: {path.relative_to(store.root)} has sha256 {digest.sha256}, "
                f"the manifest says {to_hash[path]}; refusing to load altered weights. {hint}"
            )
        # Remembered only if the file did not change while it was hashed.
        if file_identity(path) == identities[path]:
            cache.remember(identities[path], digest.sha256)
    cache.save()


def _refuse_unlisted(store: ModelStore, model: ModelMetadata) -> None:
    unlisted = unlisted_files(store.root, model)
    if unlisted:
        is_, it = ("is", "it") if len(unlisted) == 1 else ("are", "them")
        raise IntegrityError(
            f"model {model.id!r}: {', '.join(unlisted)} {is_} in the model's folder but not "
            "listed in the manifest; engines read files from that folder by name, so the model "
            f"is not loaded. Delete or move {it} out of {model.path}/ (`offline-asr models "
            f"verify` lists every such file), or, if the model needs {it}, prepare the model "
            "again (`offline-asr models prepare`) so that the manifest lists it."
        )
