"""GigaAM's layouts as the published exports have them.

The structural test models have the real graphs' input and output names, types and shapes;
`models prepare` takes exactly one variant's files from a folder shaped like the published
export (istupakov/gigaam-v3-onnx), float32 or `--quantization int8`; a folder whose files do
not fit together is refused at prepare and again at load, with the file named and the store
left byte for byte as it was.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Callable
from pathlib import Path

import onnx
import onnxruntime
import pytest

from offline_asr import testmodel
from offline_asr.constants import CHECKSUM_NAME, CLIPS_DIR
from offline_asr.fsutil import write_atomic
from offline_asr.registry.integrity import checksum_text
from offline_asr.registry.layouts import gigaam_files
from offline_asr.registry.onnx_graph import read_graph_io
from offline_asr.registry.schemas import Artifact
from offline_asr.registry.store import ModelStore
from support.helpers import Cli, state_of

RU = CLIPS_DIR / "ru_short.wav"
PREPARE = ("models", "prepare", "--engine", "gigaam")
VARIANTS = ("v3-ctc", "v3-rnnt", "v3-e2e-ctc", "v3-e2e-rnnt")

# What onnx-asr 0.12 feeds each graph and reads back (onnx_asr/models/gigaam.py), with the types
# and fixed sizes of the published exports; None stands for a dynamic (named) dimension.
Shape = tuple[int | None, ...]
ENCODER_WIDTH, PRED_HIDDEN = 768, 320
VOCABULARY = {"ctc": 34, "rnnt": 34, "e2e-ctc": 257, "e2e-rnnt": 1025}


Side = dict[str, tuple[str, Shape]]


def _real_io(role: str, vocab: int) -> tuple[Side, Side]:
    state = ("float32", (1, 1, PRED_HIDDEN))
    dynamic: Shape = (None,)
    features: Shape = (None, 64, None)
    table: dict[str, tuple[Side, Side]] = {
        "model": (
            {"features": ("float32", features), "feature_lengths": ("int64", dynamic)},
            {"log_probs": ("float32", (None, None, vocab))},
        ),
        "encoder": (
            {"audio_signal": ("float32", features), "length": ("int64", dynamic)},
            {
                "encoded": ("float32", (None, ENCODER_WIDTH, None)),
                "encoded_len": ("int32", dynamic),
            },
        ),
        "decoder": (
            {"x": ("int64", (1, 1)), "h.1": state, "c.1": state},
            {"dec": state, "h": state, "c": state},
        ),
        "joint": (
            {
                "enc": ("float32", (None, ENCODER_WIDTH, 1)),
                "dec": ("float32", (None, PRED_HIDDEN, 1)),
            },
            {"joint": ("float32", (None, 1, 1, vocab))},
        ),
    }
    return table[role]


def _fixed(shape: tuple[int | str | None, ...]) -> Shape:
    return tuple(d if isinstance(d, int) else None for d in shape)


@pytest.mark.parametrize("quantization", [None, "int8"])
@pytest.mark.parametrize("kind", testmodel.KINDS)
def test_each_layout_has_the_published_graphs_inputs_and_outputs(
    published_export: Path, kind: testmodel.Kind, quantization: str | None
) -> None:
    for role, name in testmodel.files(kind, quantization).graphs.items():
        path = published_export / name
        graph = read_graph_io(path)
        found = tuple(
            {t.name: (t.dtype, _fixed(t.shape)) for t in side.values()}
            for side in (graph.inputs, graph.outputs)
        )
        assert found == _real_io(role, VOCABULARY[kind]), name
        # The reader agrees with onnxruntime, which loads the whole file.
        session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
        for side, args in (
            (graph.inputs, session.get_inputs()),
            (graph.outputs, session.get_outputs()),
        ):
            assert {a.name: tuple(a.shape) for a in args} == {
                t.name: tuple(d if d is not None else None for d in t.shape) for t in side.values()
            }, name  # fmt: skip
        labelled = {p.key: p.value for p in onnx.load(path).metadata_props}
        assert labelled["structural_test_model"] == "true", name


def test_test_models_are_reproducible_tiny_and_not_gigaam(tmp_path: Path) -> None:
    for kind in testmodel.KINDS:
        first = testmodel.write_gigaam_test_model(tmp_path / kind / "a", kind)
        second = testmodel.write_gigaam_test_model(tmp_path / kind / "b", kind)
        assert [p.read_bytes() for p in first] == [p.read_bytes() for p in second], kind
        assert sum(p.stat().st_size for p in first) < 120_000, kind
        for path in first:
            if path.suffix == ".onnx":
                assert "NOT GigaAM" in onnx.load(path).doc_string
    vocab = (tmp_path / "e2e-rnnt" / "a" / "v3_e2e_rnnt_vocab.txt").read_text("utf-8")
    tokens = [line.split(" ")[0] for line in vocab.splitlines()]
    assert len(set(tokens)) == len(tokens) == 1025 and tokens[-1] == "<blk>"
    assert {".", ",", "?"} <= set(tokens) and any(t[:1].isupper() for t in tokens)


def test_the_published_export_folder_is_reproducible(
    published_export: Path, tmp_path: Path
) -> None:
    again = testmodel.write_published_export(tmp_path / "again")
    assert {p.name: p.read_bytes() for p in again} == {
        p.name: p.read_bytes() for p in published_export.iterdir()
    }


# --- prepare from a folder shaped like the published export ---------------------------------


@pytest.mark.parametrize("quantization", [None, "int8"])
@pytest.mark.parametrize("variant", VARIANTS)
def test_prepare_takes_one_variant_from_the_published_export(
    store: ModelStore, cli: Cli, published_export: Path, variant: str, quantization: str | None
) -> None:
    q = ("--quantization", quantization) if quantization else ()
    test_variant = f"{variant}-testtiny"  # labelled as what it is: no WER bound on its smoke
    result = cli(*PREPARE, "--variant", test_variant, "--from-dir", str(published_export), *q)
    assert result.exit_code == 0, result.stderr
    model = store.get(store.load(), f"gigaam-{test_variant}")
    files = gigaam_files(variant, quantization)
    expected = sorted([files.config, files.vocab, *files.graphs.values()])
    assert sorted(model.relative_name(a) for a in model.artifacts) == expected
    assert model.precision == (quantization or "float32")
    assert model.smoke is not None and model.smoke.golden_sha256  # loaded and transcribed
    assert not any(name.endswith((".yaml", ".md")) for name in expected)
    code = cli("transcribe", str(RU), "--model", model.id, "--format", "json")
    assert code.exit_code == 0, code.stderr
    assert json.loads(code.stdout)["text"].strip()


def test_gigaam_has_no_float16_exports(store: ModelStore, cli: Cli, published_export: Path) -> None:
    result = cli(*PREPARE, "--variant", "v3-rnnt", "--from-dir", str(published_export),
                 "--quantization", "float16")  # fmt: skip
    assert result.exit_code == 2 and "float32 (*.onnx) and int8 (*.int8.onnx)" in result.stderr
    assert not store.manifest_path.exists()


@pytest.mark.parametrize("variant", ["v2-e2e-ctc", "v2-e2e-rnnt-testtiny"])
def test_there_is_no_v2_end_to_end_model(store: ModelStore, cli: Cli, variant: str) -> None:
    result = cli(*PREPARE, "--variant", variant)
    assert result.exit_code == 2 and "unknown GigaAM variant" in result.stderr


# --- files that do not fit together: refused at prepare and at load --------------------------


def _remove(name: str) -> Callable[[Path], None]:
    return lambda folder: (folder / name).unlink()


def _short_vocab(folder: Path) -> None:
    """The character vocabulary without `я`: 33 tokens for a graph that scores 34."""
    lines = (folder / "v3_vocab.txt").read_text("utf-8").splitlines()
    kept = [line.split(" ")[0] for line in lines if not line.startswith("\u044f ")]
    (folder / "v3_vocab.txt").write_text("".join(f"{t} {i}\n" for i, t in enumerate(kept)))


def _vocab_of_another_model(folder: Path) -> None:
    shutil.copy(folder / "v3_e2e_rnnt_vocab.txt", folder / "v3_e2e_ctc_vocab.txt")


def _joint_of_another_model(folder: Path) -> None:
    shutil.copy(folder / "v3_e2e_rnnt_joint.onnx", folder / "v3_rnnt_joint.onnx")


def _config(**changes: object) -> Callable[[Path], None]:
    def edit(folder: Path) -> None:
        config = json.loads((folder / "config.json").read_text())
        config.update(changes)
        (folder / "config.json").write_text(json.dumps({k: v for k, v in config.items() if v}))

    return edit


BAD = {
    "decoder missing": ("v3-rnnt", _remove("v3_rnnt_decoder.onnx"), "v3_rnnt_decoder.onnx"),
    "joint missing": ("v3-e2e-rnnt", _remove("v3_e2e_rnnt_joint.onnx"), "v3_e2e_rnnt_joint.onnx"),
    "vocabulary one short": ("v3-rnnt", _short_vocab, "v3_vocab.txt lists 33 tokens"),
    "vocabulary of another model": (
        "v3-e2e-ctc", _vocab_of_another_model, "v3_e2e_ctc_vocab.txt lists 1025 tokens"
    ),
    "joint of another model": (
        "v3-rnnt", _joint_of_another_model, "v3_rnnt_joint.onnx scores 1025"
    ),
    "unknown model type": (
        "v3-e2e-rnnt", _config(model_type="nemo-conformer-rnnt"), "config.json names model_type"
    ),
    "another GigaAM layout": ("v3-rnnt", _config(model_type="gigaam-v3-ctc"), "config.json names"),
    "v2 features for v3": ("v3-ctc", _config(version=None), "config.json selects the GigaAM v2"),
}  # fmt: skip


@pytest.fixture
def seeded(store: ModelStore, cli: Cli, published_export: Path) -> dict[str, str]:
    """A store that already holds one GigaAM model; its byte-for-byte snapshot."""
    result = cli(*PREPARE, "--variant", "v3-ctc-testtiny", "--from-dir", str(published_export))
    assert result.exit_code == 0, result.stderr
    return state_of(store)


@pytest.mark.parametrize("case", BAD)
def test_files_that_do_not_fit_are_refused_at_prepare(
    store: ModelStore, cli: Cli, published_export: Path, tmp_path: Path,
    seeded: dict[str, str], case: str,
) -> None:  # fmt: skip
    variant, damage, message = BAD[case]
    folder = tmp_path / "usb" / "gigaam-v3-onnx"
    shutil.copytree(published_export, folder)
    damage(folder)
    result = cli(*PREPARE, "--variant", f"{variant}-testtiny", "--from-dir", str(folder),
                 "--id", "other")  # fmt: skip
    assert result.exit_code == 2, result.stdout + result.stderr
    assert message in " ".join(result.stderr.split())
    assert str(folder) in " ".join(result.stderr.split())
    assert state_of(store) == seeded
    assert [p.name for p in store.staging.iterdir() if p.name != "downloads"] == []


def _relist(store: ModelStore, model_id: str) -> None:
    """Make the manifest entry list the folder's files as they are now (hashes included), as a
    store registered by something that did not check them would."""
    manifest = store.load()
    model = store.get(manifest, model_id)
    folder = store.root / model.path
    model.artifacts = [
        Artifact(
            path=f"{model.path}/{path.name}",
            sha256=hashlib.sha256(path.read_bytes()).hexdigest(),
            size=path.stat().st_size,
        )
        for path in sorted(folder.iterdir())
        if path.name != CHECKSUM_NAME
    ]
    write_atomic(store.manifest_path, manifest.to_json())
    (folder / CHECKSUM_NAME).write_text(checksum_text(model), encoding="utf-8")


@pytest.mark.parametrize("case", BAD)
def test_files_that_do_not_fit_are_refused_at_load(
    store: ModelStore, cli: Cli, published_export: Path, case: str
) -> None:
    variant, damage, message = BAD[case]
    result = cli(*PREPARE, "--variant", f"{variant}-testtiny", "--from-dir", str(published_export))
    assert result.exit_code == 0, result.stderr
    model = store.get(store.load(), f"gigaam-{variant}-testtiny")
    folder = store.root / model.path
    names = {model.relative_name(a) for a in model.artifacts}
    for name in {p.name for p in published_export.iterdir()} - names:
        shutil.copy(published_export / name, folder / name)  # what the damage may draw on
    damage(folder)
    for path in folder.iterdir():
        if path.name not in names and path.name != CHECKSUM_NAME:
            path.unlink()
    _relist(store, model.id)
    assert cli("models", "verify", model.id).exit_code == 0  # every byte is as listed
    before = state_of(store)
    result = cli("transcribe", str(RU), "--model", model.id)
    assert result.exit_code == 2, result.stdout + result.stderr
    said = " ".join(result.stderr.split())
    assert f"cannot load {model.id!r}" in said and message.split(" ")[0] in said, said
    assert model.path in said
    assert {k: v for k, v in state_of(store).items() if ".verified" not in k} == {
        k: v for k, v in before.items() if ".verified" not in k
    }
