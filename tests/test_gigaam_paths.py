"""Every GigaAM path a user can reach, on every layout: the registered structural test models
(CTC, RNN-T, end-to-end CTC and RNN-T) transcribe a minute of Russian speech through the CLI and
the server with segment timestamps that tile the audio, are labelled as test models wherever
they are listed, restore with `models sync`, and go through a bundle install and `doctor`;
`auto` sends Russian to the best GigaAM installed (end-to-end first) and says why.
"""

from __future__ import annotations

import itertools
import json
from pathlib import Path
from typing import Any

import httpx2 as httpx
import pytest

from offline_asr.constants import CLIPS_DIR
from offline_asr.registry.store import ModelStore
from support.audio_fixtures import long_russian
from support.bundles import copy_store, invoke
from support.helpers import REPO, Cli
from support.server import Server, running_server

pytestmark = pytest.mark.slow

TEST_MODELS = (
    "gigaam-v3-ctc-testtiny",
    "gigaam-v3-rnnt-testtiny",
    "gigaam-v3-e2e-ctc-testtiny",
    "gigaam-v3-e2e-rnnt-testtiny",
)
RU = CLIPS_DIR / "ru_short.wav"
WINDOW = 22.0  # seconds: GigaAM's chunks stay below its ~25 s training length


@pytest.fixture(scope="module")
def long_clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return long_russian(tmp_path_factory.mktemp("audio") / "long_ru.wav")


def _check_timeline(payload: dict[str, Any]) -> None:
    """Segments tile the audio in order; words are single words, in order, inside it."""
    segments, duration = payload["segments"], payload["duration"]
    assert duration > 60 and payload["text"].strip()
    assert len(segments) >= 3
    assert segments[0]["start"] == 0.0
    assert segments[-1]["end"] == pytest.approx(duration, abs=0.01)
    for before, after in itertools.pairwise(segments):
        assert before["end"] == after["start"] and before["start"] < before["end"]
        assert after["end"] - after["start"] <= WINDOW + 1e-6
    words = payload["words"]
    assert words, "word timestamps were asked for"
    assert [w["start"] for w in words] == sorted(w["start"] for w in words)
    for word in words:
        assert word["word"].strip() and " " not in word["word"].strip(), word
        assert 0 <= word["start"] < word["end"] <= duration + 0.05, word


@pytest.mark.parametrize("model", TEST_MODELS)
def test_a_minute_of_russian_through_the_cli(
    full_store: ModelStore, cli: Cli, long_clip: Path, model: str
) -> None:
    result = cli("transcribe", str(long_clip), "--model", model, "--format", "verbose_json",
                 "--word-timestamps", manifest=full_store.manifest_path)  # fmt: skip
    assert result.exit_code == 0, result.stderr
    payload = json.loads(result.stdout)
    _check_timeline(payload)
    assert payload["x_offline_asr"]["model_id"] == model


def test_end_to_end_text_is_punctuated_and_cased(full_store: ModelStore, cli: Cli) -> None:
    """The end-to-end layouts decode SentencePiece pieces: capitals and punctuation come out
    as the vocabulary has them, word breaks at the ▁ of a piece."""
    texts = []
    for model in ("gigaam-v3-e2e-ctc-testtiny", "gigaam-v3-e2e-rnnt-testtiny"):
        result = cli("transcribe", str(RU), "--model", model, manifest=full_store.manifest_path)
        assert result.exit_code == 0, result.stderr
        texts.append(result.stdout)
    assert any(c.isupper() for text in texts for c in text)
    assert any(c in ".,?!" for text in texts for c in text)


@pytest.mark.parametrize("model", TEST_MODELS)
def test_a_minute_of_russian_through_the_server(
    server: Server, long_clip: Path, model: str
) -> None:
    with httpx.Client(base_url=server.url, timeout=300) as http:
        response = http.post(
            "/v1/audio/transcriptions",
            files={"file": (long_clip.name, long_clip.read_bytes(), "audio/wav")},
            data={"model": model, "response_format": "verbose_json",
                  "timestamp_granularities[]": ["word", "segment"]},
        )  # fmt: skip
    assert response.status_code == 200, response.text
    _check_timeline(response.json())


def test_test_models_are_labelled_wherever_they_are_listed(
    server: Server, full_store: ModelStore, cli: Cli
) -> None:
    with httpx.Client(base_url=server.url, timeout=60) as http:
        listed = {row["id"]: row for row in http.get("/v1/models").json()["data"]}
    for model in full_store.load().models:
        row = listed[model.id]
        assert row["structural_test_model"] is model.is_test_model, model.id
        if row["structural_test_model"]:
            assert row["description"].startswith("STRUCTURAL TEST MODEL, not GigaAM"), row
    assert set(TEST_MODELS) <= {m for m, row in listed.items() if row.get("structural_test_model")}
    table = cli("models", "list", manifest=full_store.manifest_path).stdout
    assert " ".join(table.split()).count("(structural test") == len(TEST_MODELS)


def test_models_sync_regenerates_every_test_model(full_store: ModelStore, tmp_path: Path) -> None:
    whisper = [m.path for m in full_store.load().models if m.engine == "whisper"]
    store = copy_store(full_store, tmp_path / "store", without=whisper)
    manifest = store.load()
    for model_id in TEST_MODELS:
        model = store.get(manifest, model_id)
        (store.root / model.artifacts[-1].path).unlink()
    result = invoke("models", "sync", *TEST_MODELS, "--manifest", store.manifest_path)
    assert result.exit_code == 0, result.text
    assert result.text.count("RESTORED") == len(TEST_MODELS)
    verified = invoke("models", "verify", *TEST_MODELS, "--manifest", store.manifest_path)
    assert verified.exit_code == 0, verified.text


def test_bundle_install_and_doctor_on_a_target(
    full_store: ModelStore, long_clip: Path, tmp_path: Path
) -> None:
    models = [arg for model in TEST_MODELS for arg in ("--models", model)]
    out = tmp_path / "dist"
    built = invoke("bundle", "build", "--out", out, "--locks-from", REPO, *models,
                   "--manifest", full_store.manifest_path)  # fmt: skip
    assert built.exit_code == 0, built.text
    bundle = next(out.glob("offline_bundle_v*.tar.zst"))
    target = tmp_path / "target"
    assert invoke("bundle", "install", bundle, "--target", target).exit_code == 0
    doctor = invoke("doctor", "--target", target, "--json")
    assert doctor.exit_code == 0, doctor.text
    report = json.loads(doctor.stdout)
    checked = {(c["area"], c["subject"]) for c in report["checks"]}
    for model in TEST_MODELS:
        assert ("smoke", model) in checked and ("integrity", model) in checked, checked
    e2e = "gigaam-v3-e2e-rnnt-testtiny"
    result = invoke("transcribe", long_clip, "--model", e2e, "--format", "verbose_json",
                    "--word-timestamps", "--target", target)  # fmt: skip
    assert result.exit_code == 0, result.text
    _check_timeline(json.loads(result.stdout))


# --- `auto`: Russian goes to the best GigaAM installed --------------------------------------


@pytest.fixture(scope="module")
def routed_store(
    full_store: ModelStore, published_export: Path, tmp_path_factory: pytest.TempPathFactory
) -> ModelStore:
    """whisper-base, the test models, and three layouts registered under their real variant
    names from the folder shaped like the published export (standing in for real exports;
    `--no-smoke`, as their random weights would miss the WER bound of a real variant)."""
    tiny = full_store.get(full_store.load(), "whisper-tiny.en").path
    store = copy_store(full_store, tmp_path_factory.mktemp("routed") / "store", without=[tiny])
    for variant in ("v3-ctc", "v3-e2e-rnnt", "v3-rnnt"):
        result = invoke("models", "prepare", "--engine", "gigaam", "--variant", variant,
                        "--from-dir", published_export, "--no-smoke",
                        "--manifest", store.manifest_path)  # fmt: skip
        assert result.exit_code == 0, result.text
    return store


def _routed(payload: dict[str, Any]) -> tuple[str, str]:
    provenance = payload["x_offline_asr"]
    return provenance["model_id"], provenance["runtime"]["route"]


def test_auto_prefers_the_end_to_end_model_and_says_so(
    routed_store: ModelStore, cli: Cli, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.delenv("DEFAULT_GIGAAM_MODEL", raising=False)
    monkeypatch.delenv("DEFAULT_WHISPER_MODEL", raising=False)
    result = cli("transcribe", str(RU), "--model", "auto", "--format", "verbose_json",
                 manifest=routed_store.manifest_path)  # fmt: skip
    assert result.exit_code == 0, result.stderr
    model, route = _routed(json.loads(result.stdout))
    assert model == "gigaam-v3-e2e-rnnt"
    assert route == (
        "auto: language ru (p=" + route.split("(p=")[1].split(",")[0] + ", whisper-base) -> "
        "gigaam-v3-e2e-rnnt (end-to-end RNN-T, punctuated text; preferred over "
        "gigaam-v3-rnnt, gigaam-v3-ctc)"
    )

    log = tmp_path / "server.log"
    with (
        running_server(routed_store.manifest_path, "--model", "auto", log=log) as server,
        httpx.Client(base_url=server.url, timeout=300) as http,
    ):
        response = http.post(
            "/v1/audio/transcriptions",
            files={"file": (RU.name, RU.read_bytes(), "audio/wav")},
            data={"model": "auto", "response_format": "verbose_json"},
        )
    assert response.status_code == 200, response.text
    assert _routed(response.json()) == (model, route)

    monkeypatch.setenv("DEFAULT_GIGAAM_MODEL", "gigaam-v3-ctc")
    result = cli("transcribe", str(RU), "--model", "auto", "--format", "verbose_json",
                 manifest=routed_store.manifest_path)  # fmt: skip
    assert result.exit_code == 0, result.stderr
    model, route = _routed(json.loads(result.stdout))
    assert model == "gigaam-v3-ctc" and route.endswith("-> gigaam-v3-ctc (DEFAULT_GIGAAM_MODEL)")


def test_auto_never_sends_russian_to_a_test_model(full_store: ModelStore, cli: Cli) -> None:
    result = cli("transcribe", str(RU), "--model", "auto", "--format", "verbose_json",
                 manifest=full_store.manifest_path)  # fmt: skip
    assert result.exit_code == 0, result.stderr
    model, route = _routed(json.loads(result.stdout))
    assert model == "whisper-base" and "language ru" in route
