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
from typing import BinaryIO, Literal

from offline_asr.errors import SourceError

Format = Literal["ctranslate2", "onnx", "transformers"]


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

_GIGAAM_VARIANT = re.compile(
    r"^(?P<version>v[23])-(?P<kind>ctc|rnnt|e2e-ctc|e2e-rnnt)(-[a-z0-9.]+)?$"
)


def gigaam_onnx_asr_name(variant: str) -> str:
    """The onnx-asr model name for a GigaAM variant such as `v3-ctc` or `v3-ctc-testtiny`."""
    match = _GIGAAM_VARIANT.fullmatch(variant)
    if match is None:
        raise SourceError(
            f"unknown GigaAM variant {variant!r}: use v2-ctc, v2-rnnt, v3-ctc, v3-rnnt, "
            "v3-e2e-ctc or v3-e2e-rnnt (a suffix such as -int8 or -testtiny may follow)"
        )
    return f"gigaam-{match['version']}-{match['kind']}"


def gigaam_layout(variant: str, quantization: str | None) -> Layout:
    """The ONNX files onnx-asr loads for a GigaAM variant (`.int8.onnx` when int8 is asked)."""
    name = gigaam_onnx_asr_name(variant)
    version, kind = name.split("-", 2)[1:]
    q = ".int8" if quantization == "int8" else ""
    prefix = f"{version}_e2e_" if kind.startswith("e2e-") else f"{version}_"
    decoder = kind.removeprefix("e2e-")
    vocab = f"{prefix}{decoder}_vocab.txt" if kind.startswith("e2e-") else f"{version}_vocab.txt"
    if decoder == "ctc":
        graphs: tuple[str, ...] = (f"{prefix}ctc{q}.onnx",)
    else:
        graphs = tuple(f"{prefix}rnnt_{part}{q}.onnx" for part in ("encoder", "decoder", "joint"))
    return Layout(
        f"GigaAM {variant} ONNX",
        "onnx",
        required=("config.json", vocab, *graphs),
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
