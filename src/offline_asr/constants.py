"""Names, defaults and environment variables in one place."""

from __future__ import annotations

from pathlib import Path
from typing import Final

SCHEMA_VERSION: Final = 1

DEFAULT_MANIFEST: Final = Path("models/manifest.json")
MANIFEST_ENV: Final = "MODEL_REGISTRY_PATH"
CHANGELOG_NAME: Final = "CHANGELOG.md"
CHECKSUM_NAME: Final = "checksum.txt"

# Folders inside the store that belong to offline-asr itself, never to a model.
STAGING_DIR: Final = ".staging"
LOCK_NAME: Final = ".manifest.lock"

# Golden outputs: the manifest's next to it (in git and in bundles); fleet-local ones recorded
# on machines outside their class (`models smoke --record-local`), in a folder of their own.
GOLDENS_DIR: Final = "goldens"
LOCAL_GOLDENS_DIR: Final = ".local-goldens"  # in a store (hidden: the store's own)
TARGET_LOCAL_GOLDENS_DIR: Final = "local-goldens"  # in a bundle target, beside its releases
LOCAL_GOLDENS_ENV: Final = "OFFLINE_ASR_LOCAL_GOLDENS"

HASH_CHUNK: Final = 4 * 1024 * 1024

DEFAULT_BUNDLE_HINT: Final = (
    "Restore the files with `offline-asr models sync` (from their pinned source), or reinstall "
    "the offline bundle (`offline-asr bundle install`, or `bundle rollback` to the last good "
    "release)."
)

# Exit codes of the command line contract.
EXIT_CHECK_FAILED: Final = 1
EXIT_BAD_INPUT: Final = 2
EXIT_INTERRUPTED: Final = 130

# Verified-hash cache in the store: (path, size, mtime) -> sha256 of files already checked.
VERIFY_CACHE_NAME: Final = ".verified.json"

# Speech clips that ship with the package (smoke tests, demo): see scripts/make_test_audio.py.
CLIPS_DIR: Final = Path(__file__).resolve().parent / "data" / "clips"

# `serve --pidfile FILE`: FILE holds the pid; FILE + this suffix, what the server serves.
PIDFILE_STATE_SUFFIX: Final = ".json"
ADMIN_RELOAD_PATH: Final = "/admin/reload"
MANIFEST_VERSION_HEADER: Final = "X-Manifest-Version"

DEFAULT_LONG_FORM_BATCH = 8
"""Whisper: audio longer than one 30 s window goes through the batched pipeline with this batch
size. Measured on the 5-minute file (bench/bench_engines.py): 1.4-1.8x faster than sequential
decoding with no worse WER (0.0 against 0.004: the VAD cuts at pauses, not mid-word)."""
