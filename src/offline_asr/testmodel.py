"""Generate STRUCTURAL TEST MODELS in the GigaAM v3 ONNX layouts that ``onnx-asr`` loads.

THESE ARE NOT GIGAAM. The weights are random numbers drawn from a fixed seed; the models have
never seen speech and their transcripts are gibberish. They exist so that the tests and the
demo can exercise every GigaAM path (folder layouts, model resolution by ``onnx-asr``, feature
extraction, CTC and RNN-T decoding, timestamps, VAD segmentation, batching, checksums) on a
machine without the real GigaAM weights, which only the Hugging Face Hub carries.
Never ship them, register them or report their output as a GigaAM result.

What ``onnx-asr`` 0.12 loads, and what is written here with the same file names, input and
output names, types and shapes as the published exports (istupakov/gigaam-v3-onnx):

* ``ctc`` -- ``v3_ctc.onnx``: ``features`` float32 ``[batch, 64, frames]`` (log-mel from the
  ``gigaam_v3`` preprocessor: 64 mels, 10 ms hop) and ``feature_lengths`` int64 ``[batch]`` ->
  ``log_probs`` float32 ``[batch, (frames - 1) // 4 + 1, 34]``; ``v3_vocab.txt``: ``token id``
  per line, the real character alphabet: ``▁`` (word boundary), the 32 lowercase Cyrillic
  letters U+0430..U+044F (no ``ё``), ``<blk>`` (blank id 33).
* ``rnnt`` -- ``v3_rnnt_encoder.onnx``: ``audio_signal`` float32 ``[batch, 64, frames]``,
  ``length`` int64 ``[batch]`` -> ``encoded`` float32 ``[batch, 768, frames']``,
  ``encoded_len`` int32 ``[batch]``; ``v3_rnnt_decoder.onnx`` (one prediction-network step):
  ``x`` int64 ``[1, 1]`` (the previous token, blank at the start), ``h.1`` and ``c.1`` float32
  ``[1, 1, 320]`` -> ``dec``, ``h``, ``c`` float32 ``[1, 1, 320]``; ``v3_rnnt_joint.onnx``:
  ``enc`` float32 ``[batch, 768, 1]``, ``dec`` float32 ``[batch, 320, 1]`` -> ``joint``
  float32 ``[batch, 1, 1, vocabulary]`` (log-probabilities); the character vocabulary above.
* ``e2e-ctc`` / ``e2e-rnnt`` -- the same graphs named ``v3_e2e_ctc.onnx`` /
  ``v3_e2e_rnnt_{encoder,decoder,joint}.onnx`` with SentencePiece-style vocabularies
  ``v3_e2e_ctc_vocab.txt`` (256 pieces + ``<blk>``) and ``v3_e2e_rnnt_vocab.txt`` (1024 pieces +
  ``<blk>``): pieces with and without the ``▁`` word-start mark, upper and lower case,
  punctuation and digits, so the decoded text is punctuated and capitalised as the end-to-end
  models' is. (The real pieces come from GigaAM's tokenizer; these are made up.)
* ``config.json``: what ``onnx-asr`` reads -- ``version`` selects the ``gigaam_v3``
  preprocessor, ``features_size`` must be 64, ``subsampling_factor`` scales timestamps,
  ``max_tokens_per_step`` bounds the RNN-T symbols per frame; ``model_type`` is ``gigaam`` as in
  the published export (the CTC test model, registered first, names ``gigaam-v3-ctc``).

The graphs (36 KB for CTC, under 110 KB for each other layout): per-utterance mean and variance
normalisation of the features over the valid frames (masked by the lengths, so batched and
single results agree), one Conv1d with 4x time subsampling (kernel 4, stride 4, right padding
3) -- straight to the 34 logits for CTC; to 16 channels and a projection to the pieces for e2e
CTC; to 16 channels repeated to the encoder's 768 for RNN-T. The RNN-T decoder mixes the
previous token's vector into its state; the joint scores every token's vector against the
frame's first 8 channels after a ReLU, and raises the blank by how well the decoder output
matches the frame, so a frame that has just emitted a token turns to blank. The blank has the
largest bias, so silence (constant features) decodes to ``""``; speech decodes to gibberish
whose word breaks fall on quieter-than-average frames.

``write_published_export`` writes a folder shaped like the published export repository: every
layout side by side, one shared ``config.json``, ``*.int8.onnx`` versions quantized with
onnxruntime's dynamic quantization (as the published int8 files are), the ``*.yaml`` configs
the GigaAM exporter writes, and a README -- what ``models prepare --from-dir`` or a hub mirror
would be given.

The float32 files are byte-identical on every run: fixed seeds, uniform draws (a stable NumPy
stream), pinned IR and opset versions, fixed producer fields, deterministic serialisation,
sorted JSON with a trailing newline.
"""

from __future__ import annotations

import json
import logging
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from itertools import product
from pathlib import Path
from typing import Any, Final, get_args

import numpy as np

from offline_asr.registry.layouts import GigaamFiles, GigaamKind, gigaam_files

Kind = GigaamKind
KINDS: Final[tuple[Kind, ...]] = get_args(GigaamKind)

SEED: Final = 20_250_101
FEATURES: Final = 64
"""Mel bins of the GigaAM v3 preprocessor (``onnx-asr`` asserts 64)."""
SUBSAMPLING: Final = 4
"""Feature frames (10 ms each) per output frame, as in the real model: 40 ms per token step."""
ENCODER_DIM: Final = 768
"""Width of the real encoder's output (``encoded``) and of the joint's ``enc`` input."""
PRED_HIDDEN: Final = 320
"""Width of the real prediction network; ``onnx-asr`` creates the decoder state with it."""
HIDDEN: Final = 16
"""The test models' own width inside their graphs (repeated to ``ENCODER_DIM``)."""
JOINT_HIDDEN: Final = 8
"""Encoder channels the joint reads, and the width of the token vectors it scores them with."""
JOINT_ENCODER_SCALE: Final = 2.0
"""The joint multiplies the encoder frame by this before its ReLU."""
STATE_DECAY: Final = 0.5
"""How much of its previous state the decoder keeps at each emitted token."""
BLANK_GAIN: Final = 1.0
"""Weight of the match between the decoder output and the frame in the joint's blank logit."""
QUIET_CHANNEL: Final = 0
"""Encoder channel that rises on frames quieter than the utterance's average."""
QUIET_WEIGHT: Final = 0.03
"""Subtracted from that channel's conv weights (as SPACE_WEIGHT is for the CTC space row)."""
QUIET_VALUE: Final = 1.0
"""Weight of the quiet channel in the vectors of word-start tokens, zero for the others."""
PUNCTUATION_BIAS: Final = 0.5
"""Added to the joint's logits of punctuation, so the end-to-end text has some."""
MAX_TOKENS_PER_STEP: Final = 3

VOCAB: Final[tuple[str, ...]] = ("\u2581", *(chr(0x0430 + i) for i in range(32)), "<blk>")
"""34 tokens: word boundary U+2581, Cyrillic U+0430..U+044F (no ё), CTC blank (id 33)."""
BLANK: Final = "<blk>"
BLANK_ID: Final = len(VOCAB) - 1
SPACE_ID: Final = 0
E2E_PIECES: Final[dict[Kind, int]] = {"e2e-ctc": 256, "e2e-rnnt": 1024}
"""SentencePiece pieces of the end-to-end models' tokenizers (the blank comes on top)."""
WEIGHT_SCALE: Final = 0.15
"""Conv weights are uniform in [-WEIGHT_SCALE, WEIGHT_SCALE)."""
BLANK_BIAS: Final = 1.0
"""Bias of the blank logit; every other bias is uniform in [-0.1, 0.1)."""
SPACE_WEIGHT: Final = 0.01
"""Subtracted from the space row of the conv weights: quieter than average -> space."""

CONFIG_NAME: Final = "config.json"
CTC_CONFIG: Final[dict[str, Any]] = {
    "features_size": FEATURES,
    "model_type": "gigaam-v3-ctc",
    "subsampling_factor": SUBSAMPLING,
    "version": "v3",
}
EXPORT_CONFIG: Final[dict[str, Any]] = {
    "features_size": FEATURES,
    "max_tokens_per_step": MAX_TOKENS_PER_STEP,
    "model_type": "gigaam",
    "subsampling_factor": SUBSAMPLING,
    "version": "v3",
}
"""The ``config.json`` of the published export, shared by all its layouts."""
IR_VERSION: Final = 8
OPSET: Final = 17
PRODUCER: Final = ("offline-asr-testmodel", "1")
METADATA: Final[dict[str, str]] = {
    "structural_test_model": "true",
    "warning": "random weights from a fixed seed; NOT GigaAM; for tests only",
}


def files(kind: Kind, quantization: str | None = None) -> GigaamFiles:
    """The file names of a layout, as offline-asr's registry expects them."""
    return gigaam_files(f"v3-{kind}", quantization)


def stem(kind: Kind) -> str:
    """File name stem of a layout: ``v3_ctc``, ``v3_rnnt``, ``v3_e2e_ctc``, ``v3_e2e_rnnt``."""
    return "v3_" + kind.replace("-", "_")


def vocabulary(kind: Kind) -> tuple[str, ...]:
    """The tokens of a layout, blank last."""
    if kind in E2E_PIECES:
        return (*_pieces(E2E_PIECES[kind]), BLANK)
    return VOCAB


def _pieces(count: int) -> list[str]:
    """SentencePiece-shaped pieces: marks, punctuation, digits, letters, then letter pairs."""
    lower = [chr(0x0430 + i) for i in range(32)] + ["\u0451"]
    upper = [letter.upper() for letter in lower]
    words = (
        ["\u2581", ".", ",", "?", "!", "-", ":", ";", "\u00ab", "\u00bb", "(", ")"]
        + [str(digit) for digit in range(10)]
        + lower
        + upper
        + ["\u2581" + letter for letter in lower + upper]
        + [a + b for a, b in product(lower, lower)]
    )
    return words[:count]


@dataclass
class _Graph:
    """Nodes and initializers of one graph, in the order they are added."""

    name: str
    nodes: list[Any] = field(default_factory=list)
    initializers: list[Any] = field(default_factory=list)

    def const(self, name: str, value: Any, dtype: type[np.generic]) -> str:
        from onnx import numpy_helper

        self.initializers.append(numpy_helper.from_array(np.asarray(value, dtype=dtype), name))
        return name

    def node(self, op: str, inputs: list[str], outputs: list[str], **attributes: Any) -> None:
        from onnx import helper

        self.nodes.append(helper.make_node(op, inputs, outputs, **attributes))

    def serialise(self, inputs: list[Any], outputs: list[Any]) -> bytes:
        """The model's deterministic bytes, checked by ``onnx.checker`` first."""
        from onnx import checker, helper

        graph = helper.make_graph(
            self.nodes, self.name, inputs=inputs, outputs=outputs, initializer=self.initializers
        )
        model = helper.make_model(
            graph,
            ir_version=IR_VERSION,
            opset_imports=[helper.make_opsetid("", OPSET)],
            producer_name=PRODUCER[0],
            producer_version=PRODUCER[1],
            doc_string="STRUCTURAL TEST MODEL with random weights. NOT GigaAM.",
        )
        helper.set_model_props(model, METADATA)
        checker.check_model(model, full_check=True)
        data: bytes = model.SerializeToString(deterministic=True)
        return data


def _tensor(name: str, elem: str, shape: Sequence[int | str]) -> Any:
    from onnx import TensorProto, helper

    return helper.make_tensor_value_info(name, getattr(TensorProto, elem), shape)


def _rng(name: str) -> np.random.Generator:
    """One stream per graph file, so that adding a graph never changes another one."""
    return np.random.default_rng([SEED, zlib.crc32(name.encode())])


def _front(graph: _Graph, features: str, lengths: str, weight: str, bias: str, out: str) -> None:
    """Masked per-utterance mean/variance normalisation, then the subsampling Conv1d."""
    from onnx import TensorProto

    for name, value, dtype in (
        ("zero", 0, np.int64),
        ("one", 1, np.int64),
        ("one_f", 1.0, np.float32),
        ("epsilon", 1e-5, np.float32),
        ("axes_1", [1], np.int64),
        ("axes_12", [1, 2], np.int64),
        ("axes_2", [2], np.int64),
    ):
        graph.const(name, value, dtype)
    node = graph.node
    # mask[b, 0, t] = t < lengths[b]
    node("Shape", [features], ["frames_1d"], start=2, end=3)
    node("Squeeze", ["frames_1d"], ["frames"])
    node("Range", ["zero", "frames", "one"], ["time"])
    node("Unsqueeze", [lengths, "axes_1"], ["lengths_col"])
    node("Less", ["time", "lengths_col"], ["mask_bt"])
    node("Unsqueeze", ["mask_bt", "axes_1"], ["mask_b1t"])
    node("Cast", ["mask_b1t"], ["mask"], to=TensorProto.FLOAT)
    # per-utterance mean and variance normalisation over the valid frames; padding -> 0
    node("Unsqueeze", [lengths, "axes_12"], ["lengths_b11"])
    node("Cast", ["lengths_b11"], ["lengths_f"], to=TensorProto.FLOAT)
    node("Max", ["lengths_f", "one_f"], ["count"])
    node("Mul", [features, "mask"], ["masked"])
    node("ReduceSum", ["masked", "axes_2"], ["total"], keepdims=1)
    node("Div", ["total", "count"], ["mean"])
    node("Sub", [features, "mean"], ["deviation"])
    node("Mul", ["deviation", "mask"], ["centred"])
    node("Mul", ["centred", "centred"], ["squared"])
    node("ReduceSum", ["squared", "axes_2"], ["sum_squared"], keepdims=1)
    node("Div", ["sum_squared", "count"], ["variance"])
    node("Add", ["variance", "epsilon"], ["variance_eps"])
    node("Sqrt", ["variance_eps"], ["std"])
    node("Div", ["centred", "std"], ["normalised"])
    # 4x time subsampling: (frames - 1) // 4 + 1 output frames
    node(
        "Conv",
        ["normalised", weight, bias],
        [out],
        kernel_shape=[SUBSAMPLING],
        strides=[SUBSAMPLING],
        pads=[0, SUBSAMPLING - 1],
    )


def _conv_weights(rng: np.random.Generator, channels: int) -> tuple[Any, Any]:
    weight = rng.uniform(-WEIGHT_SCALE, WEIGHT_SCALE, size=(channels, FEATURES, SUBSAMPLING))
    bias = rng.uniform(-0.1, 0.1, size=channels)
    return weight, bias


def _ctc(name: str) -> bytes:
    """The character CTC model: the conv goes straight to the 34 logits."""
    rng = np.random.default_rng(SEED)  # the first test model's stream, kept for its bytes
    weight, bias = _conv_weights(rng, len(VOCAB))
    weight[SPACE_ID] -= SPACE_WEIGHT
    bias[BLANK_ID] = BLANK_BIAS
    graph = _Graph("gigaam_v3_ctc_structural_test_model")
    graph.const("conv_weight", weight, np.float32)
    graph.const("conv_bias", bias, np.float32)
    _front(graph, "features", "feature_lengths", "conv_weight", "conv_bias", "logits_bvt")
    graph.node("Transpose", ["logits_bvt"], ["logits"], perm=[0, 2, 1])
    graph.node("LogSoftmax", ["logits"], ["log_probs"], axis=-1)
    return _ctc_serialise(graph, len(VOCAB))


def _ctc_serialise(graph: _Graph, vocab_size: int) -> bytes:
    return graph.serialise(
        [
            _tensor("features", "FLOAT", ["batch_size", FEATURES, "seq_len"]),
            _tensor("feature_lengths", "INT64", ["batch_size"]),
        ],
        [_tensor("log_probs", "FLOAT", ["batch_size", "out_len", vocab_size])],
    )


def _projection(rng: np.random.Generator, rows: int, vocab_size: int) -> tuple[Any, Any]:
    """Weights and bias that map `rows` features to the vocabulary; the blank leads."""
    weight = rng.uniform(-1.0, 1.0, size=(rows, vocab_size))
    bias = rng.uniform(-0.1, 0.1, size=vocab_size)
    bias[vocab_size - 1] = BLANK_BIAS
    return weight, bias


def _e2e_ctc(name: str) -> bytes:
    """CTC over SentencePiece pieces: conv to HIDDEN channels, then project to the pieces."""
    rng = _rng(name)
    vocab_size = len(vocabulary("e2e-ctc"))
    weight, bias = _conv_weights(rng, HIDDEN)
    projection, projection_bias = _projection(rng, HIDDEN, vocab_size)
    graph = _Graph("gigaam_v3_e2e_ctc_structural_test_model")
    graph.const("conv_weight", weight, np.float32)
    graph.const("conv_bias", bias, np.float32)
    graph.const("projection", projection, np.float32)
    graph.const("projection_bias", projection_bias, np.float32)
    _front(graph, "features", "feature_lengths", "conv_weight", "conv_bias", "hidden_bct")
    graph.node("Transpose", ["hidden_bct"], ["hidden"], perm=[0, 2, 1])
    graph.node("MatMul", ["hidden", "projection"], ["projected"])
    graph.node("Add", ["projected", "projection_bias"], ["logits"])
    graph.node("LogSoftmax", ["logits"], ["log_probs"], axis=-1)
    return _ctc_serialise(graph, vocab_size)


def _encoder(name: str) -> bytes:
    """RNN-T encoder: conv to HIDDEN channels, repeated to the real encoder's width."""
    from onnx import TensorProto

    weight, bias = _conv_weights(_rng(name), HIDDEN)
    weight[QUIET_CHANNEL] -= QUIET_WEIGHT
    graph = _Graph("gigaam_v3_rnnt_encoder_structural_test_model")
    graph.const("conv_weight", weight, np.float32)
    graph.const("conv_bias", bias, np.float32)
    graph.const("repeats", [1, ENCODER_DIM // HIDDEN, 1], np.int64)
    graph.const("subsampling", SUBSAMPLING, np.int64)
    _front(graph, "audio_signal", "length", "conv_weight", "conv_bias", "hidden")
    graph.node("Tile", ["hidden", "repeats"], ["encoded"])
    graph.node("Sub", ["length", "one"], ["length_m1"])
    graph.node("Div", ["length_m1", "subsampling"], ["length_q"])
    graph.node("Add", ["length_q", "one"], ["length_out"])
    graph.node("Cast", ["length_out"], ["encoded_len"], to=TensorProto.INT32)
    return graph.serialise(
        [
            _tensor("audio_signal", "FLOAT", ["batch_size", FEATURES, "seq_len"]),
            _tensor("length", "INT64", ["batch_size"]),
        ],
        [
            _tensor("encoded", "FLOAT", ["batch_size", ENCODER_DIM, "encoded_len_dim"]),
            _tensor("encoded_len", "INT32", ["batch_size"]),
        ],
    )


def _token_vectors(kind: Kind) -> Any:
    """One vector per token, shared by the decoder (embedding) and the joint (output weights).

    Tying them lets the joint see what was just emitted: its blank logit grows with the match
    between the decoder output and the current encoder frame, so a frame that has emitted a
    token turns to blank, as a trained transducer does. The blank's vector is zero, like the
    real embedding's padding row.
    """
    tokens = vocabulary(kind)
    table = _rng(stem(kind)).uniform(-1.0, 1.0, size=(len(tokens), JOINT_HIDDEN))
    for index, token in enumerate(tokens):
        table[index, QUIET_CHANNEL] = QUIET_VALUE if token.startswith("\u2581") else 0.0
    table[len(tokens) - 1] = 0.0
    return table


def _decoder(kind: Kind) -> bytes:
    """One prediction-network step: the previous token's vector drives the state."""
    graph = _Graph("gigaam_v3_rnnt_decoder_structural_test_model")
    graph.const("embedding", _token_vectors(kind), np.float32)
    graph.const("repeats", [1, 1, PRED_HIDDEN // JOINT_HIDDEN], np.int64)
    graph.const("decay", STATE_DECAY, np.float32)
    node = graph.node
    node("Gather", ["embedding", "x"], ["embedded"])
    node("Tile", ["embedded", "repeats"], ["drive"])
    node("Mul", ["c.1", "decay"], ["c_kept"])
    node("Add", ["c_kept", "drive"], ["c"])
    node("Mul", ["h.1", "decay"], ["h_kept"])
    node("Add", ["h_kept", "c"], ["h_sum"])
    node("Tanh", ["h_sum"], ["h"])
    node("Identity", ["h"], ["dec"])
    state = [1, 1, PRED_HIDDEN]
    return graph.serialise(
        [
            _tensor("x", "INT64", [1, 1]),
            _tensor("h.1", "FLOAT", state),
            _tensor("c.1", "FLOAT", state),
        ],
        [
            _tensor("dec", "FLOAT", state),
            _tensor("h", "FLOAT", state),
            _tensor("c", "FLOAT", state),
        ],
    )


def _joint_bias(kind: Kind, rng: np.random.Generator) -> Any:
    """The blank leads; punctuation comes up often enough to be seen."""
    tokens = vocabulary(kind)
    bias = rng.uniform(-0.1, 0.1, size=len(tokens))
    for index, token in enumerate(tokens):
        if token == BLANK:
            bias[index] = BLANK_BIAS
        elif token in ".,?!":
            bias[index] += PUNCTUATION_BIAS
    return bias


def _joint(kind: Kind, name: str) -> bytes:
    """Score every token's vector against ReLU(scaled encoder frame); the blank also gets the
    match between that frame and the decoder output."""
    rng = _rng(name)
    vectors = _token_vectors(kind)
    vocab_size = len(vectors)
    blank_gain = np.zeros(vocab_size)
    blank_gain[vocab_size - 1] = BLANK_GAIN
    graph = _Graph("gigaam_v3_rnnt_joint_structural_test_model")
    graph.const("encoder_scale", JOINT_ENCODER_SCALE, np.float32)
    graph.const("projection", vectors.T, np.float32)
    graph.const("projection_bias", _joint_bias(kind, rng), np.float32)
    graph.const("blank_gain", blank_gain, np.float32)
    graph.const("zero", [0], np.int64)
    graph.const("joint_hidden", [JOINT_HIDDEN], np.int64)
    graph.const("axes_1", [1], np.int64)
    graph.const("axes_2", [2], np.int64)
    node = graph.node
    node("Slice", ["enc", "zero", "joint_hidden", "axes_1"], ["enc_hidden"])
    node("Transpose", ["enc_hidden"], ["enc_frame"], perm=[0, 2, 1])
    node("Mul", ["enc_frame", "encoder_scale"], ["enc_projected"])
    node("Relu", ["enc_projected"], ["activated"])
    node("MatMul", ["activated", "projection"], ["projected"])
    node("Add", ["projected", "projection_bias"], ["scored"])
    node("Slice", ["dec", "zero", "joint_hidden", "axes_1"], ["dec_hidden"])
    node("Transpose", ["dec_hidden"], ["dec_frame"], perm=[0, 2, 1])
    node("Mul", ["activated", "dec_frame"], ["match_terms"])
    node("ReduceSum", ["match_terms", "axes_2"], ["match"], keepdims=1)
    node("Mul", ["match", "blank_gain"], ["blank_boost"])
    node("Add", ["scored", "blank_boost"], ["logits_b1v"])
    node("Unsqueeze", ["logits_b1v", "axes_1"], ["logits"])
    node("LogSoftmax", ["logits"], ["joint"], axis=-1)
    return graph.serialise(
        [
            _tensor("enc", "FLOAT", ["batch_size", ENCODER_DIM, 1]),
            _tensor("dec", "FLOAT", ["batch_size", PRED_HIDDEN, 1]),
        ],
        [_tensor("joint", "FLOAT", ["batch_size", 1, 1, vocab_size])],
    )


def _graphs(kind: Kind) -> Iterator[tuple[str, bytes]]:
    names = files(kind).graphs
    if kind == "ctc":
        yield names["model"], _ctc(names["model"])
    elif kind == "e2e-ctc":
        yield names["model"], _e2e_ctc(names["model"])
    else:
        encoder, decoder, joint = names["encoder"], names["decoder"], names["joint"]
        yield encoder, _encoder(encoder)
        yield decoder, _decoder(kind)
        yield joint, _joint(kind, joint)


def _text(data: str) -> bytes:
    return data.encode("utf-8")


def _json(data: dict[str, Any]) -> bytes:
    return _text(json.dumps(data, indent=2, sort_keys=True) + "\n")


def _vocab_file(kind: Kind) -> bytes:
    return _text("".join(f"{token} {i}\n" for i, token in enumerate(vocabulary(kind))))


def _write(out_dir: Path, contents: dict[str, bytes]) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, data in contents.items():
        path = out_dir / name
        path.write_bytes(data)
        paths.append(path)
    return sorted(paths)


def write_gigaam_test_model(out_dir: Path, kind: Kind = "ctc") -> list[Path]:
    """Write the structural GigaAM v3 test model of one layout into ``out_dir``.

    Use a dedicated folder: ``onnx-asr`` refuses a folder where one of its file patterns
    matches more than one file. Returns the written paths, sorted.
    """
    contents = dict(_graphs(kind))
    contents[files(kind).vocab] = _vocab_file(kind)
    contents[CONFIG_NAME] = _json(CTC_CONFIG if kind == "ctc" else EXPORT_CONFIG)
    return _write(out_dir, contents)


def _quantized(data: bytes, work: Path) -> bytes:
    """onnxruntime's dynamic int8 quantization of a graph, as the published int8 files have."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    source, target = work / "float.onnx", work / "int8.onnx"
    source.write_bytes(data)
    quiet = logging.getLogger()
    level = quiet.level
    quiet.setLevel(logging.ERROR)  # it advises pre-processing, which graphs this small skip
    try:
        quantize_dynamic(source, target, weight_type=QuantType.QUInt8)
    finally:
        quiet.setLevel(level)
    quantized = target.read_bytes()
    source.unlink()
    target.unlink()
    return quantized


def write_published_export(out_dir: Path) -> list[Path]:
    """A folder shaped like the published GigaAM v3 export: every layout, float32 and int8.

    Besides what ``onnx-asr`` loads it holds files that must never reach the store (a README
    and the exporter's ``*.yaml`` configs), as the real repository does.
    """
    contents: dict[str, bytes] = {}
    work = out_dir / ".quantizing"
    work.mkdir(parents=True, exist_ok=True)
    for kind in KINDS:
        graphs = dict(_graphs(kind))
        for role, name in files(kind).graphs.items():
            contents[name] = graphs[name]
            contents[files(kind, "int8").graphs[role]] = _quantized(graphs[name], work)
        contents[files(kind).vocab] = _vocab_file(kind)
        contents[f"{stem(kind)}.yaml"] = _text(f"model_name: {stem(kind)}\n")
    work.rmdir()
    contents[CONFIG_NAME] = _json(EXPORT_CONFIG)
    contents["README.md"] = _text(
        "# STRUCTURAL TEST MODELS shaped like istupakov/gigaam-v3-onnx (NOT GigaAM)\n"
    )
    return _write(out_dir, contents)
