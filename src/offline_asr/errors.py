"""One error hierarchy; every message is written for the person at the terminal."""

from __future__ import annotations

from offline_asr.constants import EXIT_BAD_INPUT, EXIT_CHECK_FAILED


class OfflineAsrError(Exception):
    """Base class: ``str(error)`` says what went wrong and what to do next."""

    exit_code: int = EXIT_BAD_INPUT


class ManifestError(OfflineAsrError):
    """The manifest file is missing, not JSON, or breaks the schema."""


class ModelNotFoundError(OfflineAsrError):
    """No manifest entry has the requested id."""


class SourceError(OfflineAsrError):
    """A model source cannot be read: package not installed, folder incomplete, bad URL."""


class ChecksumMismatchError(OfflineAsrError):
    """Downloaded or copied bytes do not have the sha256 the user or manifest pinned."""


class StoreError(OfflineAsrError):
    """The model store cannot be written: no space, permissions, a concurrent writer."""


class IntegrityError(OfflineAsrError):
    """Artifacts in the store differ from the manifest (missing, altered or unlisted)."""

    exit_code = EXIT_CHECK_FAILED
