"""Bundle failures: a check failed (exit 1) or the input is unusable (exit 2)."""

from __future__ import annotations

from offline_asr.constants import EXIT_CHECK_FAILED
from offline_asr.errors import OfflineAsrError


class BundleError(OfflineAsrError):
    """The bundle failed a check: hash, signature, decryption, contents. Nothing was changed."""

    exit_code = EXIT_CHECK_FAILED
