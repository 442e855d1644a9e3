"""Our copy of faster-whisper's tables (languages, hub repositories) still matches its own."""

from __future__ import annotations

from faster_whisper.tokenizer import _LANGUAGE_CODES
from faster_whisper.utils import _MODELS

from offline_asr.registry.catalog import WHISPER_HUB_REPOS, WHISPER_LANGUAGES


def test_whisper_languages_match_faster_whisper() -> None:
    """A new faster-whisper with other languages fails here, not in a manifest."""
    assert tuple(_LANGUAGE_CODES) == WHISPER_LANGUAGES


def test_whisper_hub_repositories_match_faster_whisper() -> None:
    assert dict(_MODELS) == WHISPER_HUB_REPOS
