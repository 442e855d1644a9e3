"""Whether a GigaAM folder's files fit together the way onnx-asr will use them.

onnx-asr trusts what it is given: a vocabulary one token short of the model's output, a joint
from another export, an encoder whose length output is int64, or a config.json that selects the
v2 feature extractor for a v3 model load without complaint and fail (or, worse, produce wrong
text) at the first transcription. These checks run when a model is prepared and again before
it is loaded, and name the file that does not fit.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from offline_asr.errors import SourceError
from offline_asr.registry.layouts import GigaamFiles, gigaam_files
from offline_asr.registry.onnx_graph import GraphIO, TensorInfo, read_graph_io

FEATURES = 64
"""Mel bins of the GigaAM preprocessors (onnx-asr asserts `features_size` 64)."""
PRED_HIDDEN = 320
"""onnx-asr creates the RNN-T decoder state with this width, whatever the graph says."""
BLANK = "<blk>"
MODEL_TYPES = (
    "gigaam",
    "gigaam-v2-ctc",
    "gigaam-v2-rnnt",
    "gigaam-v3-ctc",
    "gigaam-v3-rnnt",
    "gigaam-v3-e2e-ctc",
    "gigaam-v3-e2e-rnnt",
)
"""`model_type` values of GigaAM config.json files: the published export's shared `gigaam`,
or the onnx-asr name of one model."""


@dataclass(frozen=True)
class _Role:
    """What onnx-asr feeds a graph and reads back (models/gigaam.py in onnx-asr 0.12)."""

    inputs: tuple[str, ...]
    outputs: tuple[str, ...]


_ROLES = {
    "model": _Role(("features", "feature_lengths"), ("log_probs",)),
    "encoder": _Role(("audio_signal", "length"), ("encoded", "encoded_len")),
    "decoder": _Role(("x", "h.1", "c.1"), ("dec", "h", "c")),
    "joint": _Role(("enc", "dec"), ("joint",)),
}
# The tensor whose last dimension scores the vocabulary.
_SCORES = {"model": "log_probs", "joint": "joint"}


def _last_dim(tensor: TensorInfo) -> int | None:
    dim = tensor.shape[-1] if tensor.shape else None
    return dim if isinstance(dim, int) else None


def _check_config(path: Path, shown: str, files: GigaamFiles) -> None:
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as error:
        raise SourceError(f"{shown} is not a readable JSON file ({error})") from error
    if not isinstance(config, dict):
        raise SourceError(f"{shown} must hold a JSON object, it holds {type(config).__name__}")
    model_type = config.get("model_type")
    if model_type is not None and model_type not in MODEL_TYPES:
        raise SourceError(
            f"{shown} names model_type {model_type!r}, which is not a GigaAM model type "
            f"(expected one of {', '.join(MODEL_TYPES)}); this folder holds another model"
        )
    if model_type not in (None, "gigaam", files.onnx_asr_name):
        raise SourceError(
            f"{shown} names model_type {model_type!r}, but the variant asked for is "
            f"{files.onnx_asr_name}; give the --variant that matches the files"
        )
    version = config.get("version", "v2")  # onnx-asr's default
    if version != files.version:
        raise SourceError(
            f'{shown} selects the GigaAM {version} feature extractor ("version": '
            f"{config.get('version')!r}) for a {files.version} model; it needs "
            f'"version": "{files.version}"'
        )
    if config.get("features_size", FEATURES) != FEATURES:
        raise SourceError(
            f"{shown} has features_size {config['features_size']!r}; GigaAM models use {FEATURES}"
        )
    for key in ("subsampling_factor", "max_tokens_per_step"):
        value = config.get(key, 1)
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise SourceError(f"{shown} has {key} {value!r}; it must be a positive integer")


def _vocabulary_size(path: Path, shown: str) -> int:
    """Lines `token id` with ids 0..n-1, each once, and the blank among them."""
    try:
        lines = path.read_text(encoding="utf-8").split("\n")
    except (OSError, UnicodeDecodeError) as error:
        raise SourceError(f"{shown} is not a readable UTF-8 vocabulary ({error})") from error
    if lines and lines[-1] == "":
        lines.pop()
    ids: dict[int, str] = {}
    for number, line in enumerate(lines, 1):
        parts = line.split(" ")
        if len(parts) != 2 or not parts[0] or not parts[1].isdigit():
            raise SourceError(
                f"{shown} line {number} is {line!r}; every line must be `token id` "
                "(one space, a non-negative integer id)"
            )
        token, index = parts[0], int(parts[1])
        if index in ids:
            raise SourceError(f"{shown} line {number}: id {index} is listed twice")
        ids[index] = token
    if sorted(ids) != list(range(len(ids))):
        missing = sorted(set(range(max(ids, default=-1) + 1)) - set(ids))[:5]
        raise SourceError(f"{shown}: ids must run from 0 without gaps; missing {missing}")
    if BLANK not in ids.values():
        raise SourceError(f"{shown} has no {BLANK} token, which the decoder needs as its blank")
    return len(ids)


def _check_graph(role: str, io: GraphIO, shown: str) -> None:
    expected = _ROLES[role]
    for kind, names, have in (
        ("input", expected.inputs, io.inputs),
        ("output", expected.outputs, io.outputs),
    ):
        missing = [name for name in names if name not in have]
        if missing:
            raise SourceError(
                f"{shown} has no {kind} {', '.join(map(repr, missing))} (it has "
                f"{', '.join(map(repr, have)) or 'none'}); it is not the GigaAM {role} graph "
                "onnx-asr expects"
            )
    if role == "encoder" and io.outputs["encoded_len"].dtype != "int32":
        raise SourceError(
            f"{shown}: output 'encoded_len' is {io.outputs['encoded_len'].dtype}; onnx-asr "
            "reads it as int32, as the published exports have it"
        )
    if role == "decoder" and _last_dim(io.inputs["h.1"]) not in (None, PRED_HIDDEN):
        raise SourceError(
            f"{shown}: the decoder state 'h.1' is {_last_dim(io.inputs['h.1'])} wide; onnx-asr "
            f"feeds GigaAM decoders a state of {PRED_HIDDEN}"
        )


def check_gigaam_folder(folder: Path, variant: str, quantization: str | None, where: str) -> None:
    """Raise SourceError naming the file when the folder's files do not fit together.

    `where` is how the folder is shown to the user (a source or a store path).
    """
    files = gigaam_files(variant, quantization)

    def shown(name: str) -> str:
        return f"{where}/{name}"

    _check_config(folder / files.config, shown(files.config), files)
    vocab_size = _vocabulary_size(folder / files.vocab, shown(files.vocab))
    graphs = {role: read_graph_io(folder / name) for role, name in files.graphs.items()}
    for role, io in graphs.items():
        _check_graph(role, io, shown(files.graphs[role]))
    for role, output in _SCORES.items():
        if role not in graphs:
            continue
        scores = _last_dim(graphs[role].outputs[output])
        if scores is not None and scores != vocab_size:
            raise SourceError(
                f"{shown(files.vocab)} lists {vocab_size} tokens, but "
                f"{shown(files.graphs[role])} scores {scores} (output {output!r}); the "
                "vocabulary belongs to another model: use the one exported with it"
            )
    if "encoder" in graphs:
        encoded = graphs["encoder"].outputs["encoded"].shape[1:2]
        taken = graphs["joint"].inputs["enc"].shape[1:2]
        known = encoded and taken and all(isinstance(d, int) for d in (*encoded, *taken))
        if known and encoded != taken:
            raise SourceError(
                f"{shown(files.graphs['encoder'])} encodes {encoded[0]} channels, but "
                f"{shown(files.graphs['joint'])} takes {taken[0]}; the files come from "
                "different exports"
            )
