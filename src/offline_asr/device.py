"""Before a load: are the weights present and intact, and which device (CPU pins: `pins`).

A verified-hash cache keyed by (path, size, mtime) makes the second start fast; `full=True`
re-hashes everything.
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Literal

from offline_asr.config import Settings
from offline_asr.constants import VERIFY_CACHE_NAME
from offline_asr.errors import IntegrityError
from offline_asr.registry.integrity import hash_files, symlink_on_path
from offline_asr.registry.store import ModelStore, write_atomic
from offline_asr.schemas import ModelMetadata

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


def _cache_key(path: Path) -> str:
    stat = path.stat()
    return f"{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}"


def check_weights(store: ModelStore, model: ModelMetadata, *, full: bool = False) -> None:
    """Refuse to load when an artifact is missing, a symlink, or has another sha256.

    Files whose (path, size, mtime) were verified before are not hashed again unless `full`.
    """
    hint = Settings().offline_asr_bundle_hint
    cache_path = store.root / VERIFY_CACHE_NAME
    cache: dict[str, str] = {}
    if not full and cache_path.is_file():
        try:
            cache = json.loads(cache_path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            cache = {}
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
        if cache.get(_cache_key(path)) != artifact.sha256:
            to_hash[path] = artifact.sha256
    if not to_hash:
        return
    for path, digest in hash_files(to_hash, f"verifying {model.id}").items():
        if digest.sha256 != to_hash[path]:
            raise IntegrityError(
                f"model {model.id!r}: {path.relative_to(store.root)} has sha256 {digest.sha256}, "
                f"the manifest says {to_hash[path]}; refusing to load altered weights. {hint}"
            )
        cache[_cache_key(path)] = digest.sha256
    # A read-only store still loads; it is just verified in full every time.
    with contextlib.suppress(OSError):
        write_atomic(cache_path, json.dumps(cache, indent=0, sort_keys=True) + "\n")
