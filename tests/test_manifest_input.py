"""Hostile or absent manifests: no verdict about nothing, no tracebacks, messages printed intact."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from offline_asr.registry.store import ModelStore
from support.helpers import COMMITTED_MANIFEST, Cli, run_cli
from support.server import free_port

EN = "src/offline_asr/data/clips/en_short.wav"

# Every command that reads the manifest, with what it needs besides `--manifest`.
READERS = [
    ("models", "list"),
    ("models", "list", "--json"),
    ("models", "verify"),
    ("models", "verify", "--json"),
    ("models", "smoke"),
    ("models", "sync"),
    ("models", "remove", "whisper-tiny.en"),
    ("doctor",),
    ("doctor", "--json"),
    ("transcribe", EN, "--model", "whisper-tiny.en"),
    ("bundle", "build", "--out", "dist-never-written"),
]
# The commands that give a verdict: about an empty registry they must not say "fine".
VERDICTS = [
    ("models", "verify"),
    ("models", "verify", "--json"),
    ("models", "smoke"),
    ("models", "sync"),
    ("doctor",),
    ("doctor", "--json"),
]


def _flat(text: str) -> str:
    return " ".join(text.split())


@pytest.mark.parametrize("command", READERS, ids=" ".join)
def test_a_missing_manifest_is_bad_input_everywhere(
    store: ModelStore, cli: Cli, command: tuple[str, ...]
) -> None:
    result = cli(*command)
    assert result.exit_code == 2, result.stdout + result.stderr
    message = _flat(result.stderr)
    assert f"{store.manifest_path} does not exist" in message, message
    assert "HEALTHY" not in result.stdout and "OK" not in result.stdout
    assert not store.root.exists(), "reading a store never creates it"


@pytest.mark.parametrize("command", READERS, ids=" ".join)
def test_an_empty_manifest_setting_is_bad_input_everywhere(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, command: tuple[str, ...]
) -> None:
    """`MODEL_REGISTRY_PATH=` (set but empty) is refused, not read as the current folder."""
    monkeypatch.setenv("MODEL_REGISTRY_PATH", "")
    result = run_cli(*command, cwd=tmp_path)
    assert result.exit_code == 2, result.stdout + result.stderr
    assert "MODEL_REGISTRY_PATH is set but empty" in _flat(result.stderr)


def test_serve_with_a_missing_manifest_is_bad_input(tmp_path: Path) -> None:
    exe = Path(sys.executable).with_name("offline-asr")
    command = [str(exe), "serve", "--manifest", str(tmp_path / "nowhere" / "manifest.json"),
               "--port", str(free_port())]  # fmt: skip
    proc = subprocess.run(command, capture_output=True, text=True, timeout=90, check=False)
    assert proc.returncode == 2, proc.stderr
    assert "does not exist" in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.parametrize("command", VERDICTS, ids=" ".join)
def test_an_empty_registry_gets_no_verdict(
    store: ModelStore, cli: Cli, command: tuple[str, ...]
) -> None:
    store.root.mkdir(parents=True)
    store.manifest_path.write_text('{"schema_version": 1, "manifest_version": 3, "models": []}\n')
    result = cli(*command)
    assert result.exit_code == 2, result.stdout + result.stderr
    assert "lists no models" in _flat(result.stderr)
    assert "HEALTHY" not in result.stdout


def test_an_empty_registry_is_listed_as_empty(store: ModelStore, cli: Cli) -> None:
    store.root.mkdir(parents=True)
    store.manifest_path.write_text('{"schema_version": 1, "manifest_version": 3, "models": []}\n')
    result = cli("models", "list")
    assert result.exit_code == 0
    assert "no models" in result.stdout


@pytest.mark.parametrize("command", [("models", "verify", "whisper-huge"),
                                     ("models", "smoke", "whisper-huge"),
                                     ("models", "sync", "whisper-huge")], ids=" ".join)  # fmt: skip
def test_an_unknown_id_is_bad_input(store: ModelStore, cli: Cli, command: tuple[str, ...]) -> None:
    store.root.mkdir(parents=True)
    store.manifest_path.write_bytes(COMMITTED_MANIFEST.read_bytes())
    result = cli(*command)
    assert result.exit_code == 2 and "no model 'whisper-huge'" in result.stderr


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b'{"models": [], "x": "\xff\xfe"}', "is not UTF-8 (byte 0xff at offset 21)"),
        (b"[" * 100_000 + b"]" * 100_000, "nested too deeply"),
        (b'{"models": ' + b"[" * 5000 + b"]" * 5000 + b"}", "nested too deeply"),
        (b"\x00\x01\x02", "not valid JSON"),
        (b"[]", "(top level): Input should be a valid dictionary"),
    ],
    ids=["invalid utf-8", "deep nesting", "deep nesting inside", "binary", "not an object"],
)
@pytest.mark.parametrize("command", [("models", "list"), ("models", "verify"), ("doctor",)],
                         ids=" ".join)  # fmt: skip
def test_hostile_manifests_are_bad_input_without_a_traceback(
    store: ModelStore, command: tuple[str, ...], content: bytes, message: str
) -> None:
    store.root.mkdir(parents=True)
    store.manifest_path.write_bytes(content)
    result = run_cli(*command, "--manifest", str(store.manifest_path))
    assert result.exit_code == 2, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    assert message in _flat(result.stderr)


def test_schema_errors_print_patterns_and_brackets_intact(store: ModelStore, cli: Cli) -> None:
    data = json.loads(COMMITTED_MANIFEST.read_text())
    data["models"][0]["id"] = "[bold]Bad[/bold] ID"
    data["models"][1]["license"] = "[red]"
    store.root.mkdir(parents=True)
    store.manifest_path.write_text(json.dumps(data))
    result = cli("models", "verify")
    assert result.exit_code == 2
    assert "String should match pattern '^[a-z0-9][a-z0-9._-]*$'" in _flat(result.stderr)


def test_user_text_in_tables_and_reports_is_printed_as_it_is(
    tiny_store: ModelStore, cli: Cli
) -> None:
    manifest = tiny_store.load()
    model = manifest.models[0]
    model.license = "[red]MIT[/red] [link=x]"
    tiny_store.manifest_path.write_text(manifest.to_json())
    listed = cli("models", "list", manifest=tiny_store.manifest_path)
    assert listed.exit_code == 0, listed.stderr
    assert "[red]MIT[/red]" in listed.stdout
    folder = tiny_store.root / "whisper" / "tiny.en"
    (folder / "[red]x.bin").write_bytes(b"smuggled")
    verified = cli("models", "verify", manifest=tiny_store.manifest_path)
    assert verified.exit_code == 1
    assert "whisper/tiny.en/[red]x.bin" in verified.stdout


def test_progress_bars_show_file_names_as_they_are(monkeypatch: pytest.MonkeyPatch) -> None:
    """On a terminal `transcribe` crashed before the audio was decoded (the bar formatted a total
    of None), and a file named `[/]x.wav` crashed it too (rich read the name as markup)."""
    import io

    from rich.console import Console

    from offline_asr import progress

    screen = io.StringIO()
    terminal = Console(file=screen, force_terminal=True, width=100)
    monkeypatch.setattr(progress, "stderr_console", terminal)
    with progress.transcription_progress("[/]x [red]y.wav") as bar:
        bar.start(1.0)
    with progress.byte_progress("copying [/]usb", 10) as advance:
        advance(10)
    shown = screen.getvalue()
    assert "[/]x [red]y.wav" in shown and "copying [/]usb" in shown
