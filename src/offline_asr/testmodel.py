"""Generate a STRUCTURAL TEST MODEL in the GigaAM v3 CTC ONNX layout that ``onnx-asr`` loads.

THIS IS NOT GIGAAM. The weights are random numbers drawn from a fixed seed; the model has
never seen speech and its transcripts are gibberish. It exists so that the tests and the
demo can exercise the whole GigaAM path (folder layout, model resolution by ``onnx-asr``,
feature extraction, CTC decoding, timestamps, VAD segmentation, batching, checksums) on a
machine without the real GigaAM weights, which only the Hugging Face Hub carries.
Never ship it, register it or report its output as a GigaAM result.

What ``onnx-asr`` 0.12 needs, and what this writes (``load_model("gigaam-v3-ctc", out_dir)``):

* ``v3_ctc.onnx`` (found by the glob ``v?_ctc.onnx``): inputs ``features`` float32
  ``[batch, 64, frames]`` (log-mel from the ``gigaam_v3`` preprocessor: 64 mels, 20 ms window,
  10 ms hop) and ``feature_lengths`` int64 ``[batch]``; output ``log_probs`` float32
  ``[batch, (frames - 1) // 4 + 1, 34]``, the same names and 4x time subsampling as the real
  export, so token timestamps (frame index x 10 ms x 4) come out right.
* ``v3_vocab.txt`` (glob ``v?_vocab.txt``): ``token id`` per line, the real GigaAM v3 CTC
  alphabet: ``▁`` (word boundary, decoded as a space), the 32 lowercase Cyrillic letters
  U+0430..U+044F (no ``ё``), ``<blk>`` (34 tokens, blank id 33).
* ``config.json``: ``version`` selects the ``gigaam_v3`` preprocessor, ``features_size`` must
  be 64, ``subsampling_factor`` scales timestamps, ``model_type`` names the model class.

The graph (36 KB): per-utterance mean and variance normalisation of the features over the
valid frames (masked by ``feature_lengths``, so batched and single results agree), one Conv1d
(kernel 4, stride 4, right padding 3) from 64 mels to 34 logits, LogSoftmax. The blank has
the largest bias, so silence (constant features) decodes to ``""``; audio whose spectrum
changes over time (speech, noise) decodes to non-empty gibberish, and the space token leans
towards quieter-than-average frames, so speech pauses tend to give word breaks.

The output is byte-identical on every run: fixed seed, uniform draws (a stable NumPy
stream), pinned IR and opset versions, fixed producer fields, deterministic serialisation,
sorted JSON with a trailing newline.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Final

import numpy as np

SEED: Final = 20_250_101
FEATURES: Final = 64
"""Mel bins of the GigaAM v3 preprocessor (``onnx-asr`` asserts 64)."""
SUBSAMPLING: Final = 4
"""Feature frames (10 ms each) per output frame, as in the real model: 40 ms per token step."""
VOCAB: Final[tuple[str, ...]] = ("\u2581", *(chr(0x0430 + i) for i in range(32)), "<blk>")
"""34 tokens: word boundary U+2581, Cyrillic U+0430..U+044F (no ё), CTC blank (id 33)."""
BLANK_ID: Final = len(VOCAB) - 1
SPACE_ID: Final = 0
WEIGHT_SCALE: Final = 0.15
"""Conv weights are uniform in [-WEIGHT_SCALE, WEIGHT_SCALE)."""
BLANK_BIAS: Final = 1.0
"""Bias of the blank logit; every other bias is uniform in [-0.1, 0.1)."""
SPACE_WEIGHT: Final = 0.01
"""Subtracted from the space row of the conv weights: quieter than average -> space."""

MODEL_NAME: Final = "v3_ctc.onnx"
VOCAB_NAME: Final = "v3_vocab.txt"
CONFIG_NAME: Final = "config.json"
CONFIG: Final[dict[str, Any]] = {
    "features_size": FEATURES,
    "model_type": "gigaam-v3-ctc",
    "subsampling_factor": SUBSAMPLING,
    "version": "v3",
}
IR_VERSION: Final = 8
OPSET: Final = 17
PRODUCER: Final = ("offline-asr-testmodel", "1")
METADATA: Final[dict[str, str]] = {
    "structural_test_model": "true",
    "warning": "random weights from a fixed seed; NOT GigaAM; for tests only",
}


def _build_model() -> bytes:
    """Return the serialised ONNX model (deterministic bytes)."""
    from onnx import TensorProto, checker, helper, numpy_helper

    rng = np.random.default_rng(SEED)
    vocab_size = len(VOCAB)
    weight = rng.uniform(-WEIGHT_SCALE, WEIGHT_SCALE, size=(vocab_size, FEATURES, SUBSAMPLING))
    bias = rng.uniform(-0.1, 0.1, size=vocab_size)
    weight[SPACE_ID] -= SPACE_WEIGHT
    bias[BLANK_ID] = BLANK_BIAS

    def const(name: str, value: Any, dtype: type[np.generic]) -> TensorProto:
        return numpy_helper.from_array(np.asarray(value, dtype=dtype), name)

    initializers = [
        const("conv_weight", weight, np.float32),
        const("conv_bias", bias, np.float32),
        const("zero", 0, np.int64),
        const("one", 1, np.int64),
        const("one_f", 1.0, np.float32),
        const("epsilon", 1e-5, np.float32),
        const("axes_1", [1], np.int64),
        const("axes_12", [1, 2], np.int64),
        const("axes_2", [2], np.int64),
    ]
    node = helper.make_node
    nodes = [
        # mask[b, 0, t] = t < feature_lengths[b]
        node("Shape", ["features"], ["frames_1d"], start=2, end=3),
        node("Squeeze", ["frames_1d"], ["frames"]),
        node("Range", ["zero", "frames", "one"], ["time"]),
        node("Unsqueeze", ["feature_lengths", "axes_1"], ["lengths_col"]),
        node("Less", ["time", "lengths_col"], ["mask_bt"]),
        node("Unsqueeze", ["mask_bt", "axes_1"], ["mask_b1t"]),
        node("Cast", ["mask_b1t"], ["mask"], to=TensorProto.FLOAT),
        # per-utterance mean and variance normalisation over the valid frames; padding -> 0
        node("Unsqueeze", ["feature_lengths", "axes_12"], ["lengths_b11"]),
        node("Cast", ["lengths_b11"], ["lengths_f"], to=TensorProto.FLOAT),
        node("Max", ["lengths_f", "one_f"], ["count"]),
        node("Mul", ["features", "mask"], ["masked"]),
        node("ReduceSum", ["masked", "axes_2"], ["total"], keepdims=1),
        node("Div", ["total", "count"], ["mean"]),
        node("Sub", ["features", "mean"], ["deviation"]),
        node("Mul", ["deviation", "mask"], ["centred"]),
        node("Mul", ["centred", "centred"], ["squared"]),
        node("ReduceSum", ["squared", "axes_2"], ["sum_squared"], keepdims=1),
        node("Div", ["sum_squared", "count"], ["variance"]),
        node("Add", ["variance", "epsilon"], ["variance_eps"]),
        node("Sqrt", ["variance_eps"], ["std"]),
        node("Div", ["centred", "std"], ["normalised"]),
        # 4x time subsampling straight to vocabulary logits: (frames - 1) // 4 + 1 outputs
        node(
            "Conv",
            ["normalised", "conv_weight", "conv_bias"],
            ["logits_bvt"],
            kernel_shape=[SUBSAMPLING],
            strides=[SUBSAMPLING],
            pads=[0, SUBSAMPLING - 1],
        ),
        node("Transpose", ["logits_bvt"], ["logits"], perm=[0, 2, 1]),
        node("LogSoftmax", ["logits"], ["log_probs"], axis=-1),
    ]
    graph = helper.make_graph(
        nodes,
        "gigaam_v3_ctc_structural_test_model",
        inputs=[
            helper.make_tensor_value_info(
                "features", TensorProto.FLOAT, ["batch_size", FEATURES, "seq_len"]
            ),
            helper.make_tensor_value_info("feature_lengths", TensorProto.INT64, ["batch_size"]),
        ],
        outputs=[
            helper.make_tensor_value_info(
                "log_probs", TensorProto.FLOAT, ["batch_size", "out_len", vocab_size]
            ),
        ],
        initializer=initializers,
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


def write_gigaam_test_model(out_dir: Path) -> list[Path]:
    """Write the structural GigaAM v3 CTC test model into ``out_dir`` (created if missing).

    Use a dedicated folder: ``onnx-asr`` refuses a folder where ``v?_ctc.onnx`` or
    ``v?_vocab.txt`` matches more than one file. Returns the written paths, sorted.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    vocab = "".join(f"{token} {i}\n" for i, token in enumerate(VOCAB))
    contents = {
        MODEL_NAME: _build_model(),
        VOCAB_NAME: vocab.encode("utf-8"),
        CONFIG_NAME: (json.dumps(CONFIG, indent=2, sort_keys=True) + "\n").encode("utf-8"),
    }
    paths = []
    for name, data in contents.items():
        path = out_dir / name
        path.write_bytes(data)
        paths.append(path)
    return sorted(paths)
