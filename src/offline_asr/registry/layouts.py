"""Which files make up a servable model of each engine and format.

Only files a layout names are copied into the store: a hub repository's README, a GigaAM repo's
other variants or a stray file on a USB stick never reach the manifest.
"""

from __future__ import annotations

import re
import struct
from dataclasses import dataclass
from fnmatch import fnmatchcase
from pathlib import Path
from typing import BinaryIO, Literal, cast

from offline_asr.errors import SourceError

Format = Literal["ctranslate2", "onnx", "transformers"]
GigaamKind = Literal["ctc", "rnnt", "e2e-ctc", "e2e-rnnt"]
"""The GigaAM layouts onnx-asr loads: CTC or RNN-T, plain or end-to-end (punctuated)."""


@dataclass(frozen=True)
class Layout:
    """Required and optional file name patterns (fnmatch) of one model format."""

    name: str
    format: Format
    required: tuple[str, ...]
    optional: tuple[str, ...] = ()

    def select(self, names: list[str]) -> list[str]:
        """The names this layout takes, in sorted order."""
        patterns = self.required + self.optional
        return sorted(n for n in names if any(fnmatchcase(n, p) for p in patterns))

    def check(self, names: list[str], where: str) -> None:
        """Raise with the missing or ambiguous file named when `names` does not fit."""
        for pattern in self.required:
            matches = [n for n in names if fnmatchcase(n, pattern)]
            if not matches:
                raise SourceError(
                    f"{where} has no file matching {pattern!r}, which a {self.name} model needs "
                    f"(it needs: {', '.join(self.required)})"
                )
            if len(matches) > 1:
                raise SourceError(
                    f"{where} has several files matching {pattern!r} ({', '.join(matches)}); "
                    "keep one"
                )


WHISPER_CT2 = Layout(
    "Whisper CTranslate2",
    "ctranslate2",
    required=("model.bin", "config.json", "tokenizer.json"),
    optional=("vocabulary.txt", "vocabulary.json", "preprocessor_config.json"),
)

WHISPER_TRANSFORMERS = Layout(
    "Whisper transformers",
    "transformers",
    required=("config.json", "model.safetensors"),
    optional=(
        "tokenizer.json",
        "tokenizer_config.json",
        "vocab.json",
        "merges.txt",
        "normalizer.json",
        "added_tokens.json",
        "special_tokens_map.json",
        "preprocessor_config.json",
        "generation_config.json",
    ),
)

# The end-to-end (punctuated) models exist for v3 only.
_GIGAAM_VARIANT = re.compile(
    r"^(?P<version>v2|v3)-(?P<kind>ctc|rnnt)(-[a-z0-9.]+)?$"
    r"|^(?P<e2e_version>v3)-(?P<e2e_kind>e2e-ctc|e2e-rnnt)(-[a-z0-9.]+)?$"
)


def _gigaam_variant(variant: str) -> tuple[str, GigaamKind]:
    """Version and layout of a GigaAM variant such as `v3-ctc` or `v3-e2e-rnnt-testtiny`."""
    match = _GIGAAM_VARIANT.fullmatch(variant)
    if match is None:
        raise SourceError(
            f"unknown GigaAM variant {variant!r}: use v2-ctc, v2-rnnt, v3-ctc, v3-rnnt, "
            "v3-e2e-ctc or v3-e2e-rnnt (a suffix such as -int8 or -testtiny may follow)"
        )
    kind = cast(GigaamKind, match["kind"] or match["e2e_kind"])
    return match["version"] or match["e2e_version"], kind


def gigaam_onnx_asr_name(variant: str) -> str:
    """The onnx-asr model name for a GigaAM variant such as `v3-ctc` or `v3-ctc-testtiny`."""
    version, kind = _gigaam_variant(variant)
    return f"gigaam-{version}-{kind}"


@dataclass(frozen=True)
class GigaamFiles:
    """The files onnx-asr loads for one GigaAM variant, by what they are."""

    onnx_asr_name: str
    """e.g. ``gigaam-v3-e2e-rnnt``: what `onnx_asr.load_model` is given."""
    kind: GigaamKind
    version: str
    """``v2`` or ``v3``: selects the feature extractor (``config.json`` ``version``)."""
    vocab: str
    graphs: dict[str, str]
    """``model`` for CTC; ``encoder``, ``decoder`` and ``joint`` for RNN-T."""
    config: str = "config.json"


def gigaam_files(variant: str, quantization: str | None) -> GigaamFiles:
    """The file names of a GigaAM variant (`.int8.onnx` graphs when int8 is asked)."""
    version, kind = _gigaam_variant(variant)
    q = ".int8" if quantization == "int8" else ""
    stem = f"{version}_{kind.replace('-', '_')}"
    vocab = f"{stem}_vocab.txt" if kind.startswith("e2e-") else f"{version}_vocab.txt"
    if kind.endswith("ctc"):
        graphs = {"model": f"{stem}{q}.onnx"}
    else:
        graphs = {part: f"{stem}_{part}{q}.onnx" for part in ("encoder", "decoder", "joint")}
    return GigaamFiles(f"gigaam-{version}-{kind}", kind, version, vocab, graphs)


def gigaam_layout(variant: str, quantization: str | None) -> Layout:
    """The ONNX files onnx-asr loads for a GigaAM variant (`.int8.onnx` when int8 is asked)."""
    files = gigaam_files(variant, quantization)
    graphs = tuple(files.graphs.values())
    return Layout(
        f"GigaAM {variant} ONNX",
        "onnx",
        required=(files.config, files.vocab, *graphs),
        optional=tuple(f"{g}.data" for g in graphs),
    )


_CT2_DTYPES = ("float32", "int8", "int16", "int32", "float16", "bfloat16")


def _read_string(stream: BinaryIO) -> str:
    (length,) = struct.unpack("<H", stream.read(2))
    return stream.read(length)[:-1].decode("utf-8")


def ctranslate2_weight_dtype(model_bin: Path) -> str:
    """The dtype that holds most bytes of a CTranslate2 `model.bin` (its weights' precision).

    Reads only the variable headers (CTranslate2 binary format v5/v6) and seeks over the data.
    """
    totals: dict[str, int] = {}
    try:
        with model_bin.open("rb") as stream:
            (binary_version,) = struct.unpack("<I", stream.read(4))
            if binary_version < 5:
                raise SourceError(
                    f"{model_bin}: CTranslate2 binary version {binary_version} is too old"
                )
            _read_string(stream)
            stream.read(4)  # spec revision
            (count,) = struct.unpack("<I", stream.read(4))
            for _ in range(count):
                _read_string(stream)
                (rank,) = struct.unpack("<B", stream.read(1))
                stream.read(4 * rank)
                dtype_id, num_bytes = struct.unpack("<BI", stream.read(5))
                dtype = _CT2_DTYPES[dtype_id]
                totals[dtype] = totals.get(dtype, 0) + num_bytes
                stream.seek(num_bytes, 1)
    except (struct.error, IndexError, UnicodeDecodeError) as error:
        raise SourceError(f"{model_bin} is not a CTranslate2 model file ({error})") from error
    if not totals:
        raise SourceError(f"{model_bin} holds no weights")
    return max(totals, key=lambda dtype: totals[dtype])
