"""The gate before every load: only listed files, and a verified-hash cache that cannot be fooled.

Each hostile file here is first shown to matter (the raw engine, given the folder, answers
differently with it), then offline-asr must refuse to load.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from offline_asr.asr.audio import decode_audio
from offline_asr.constants import CLIPS_DIR, DEFAULT_BUNDLE_HINT, VERIFY_CACHE_NAME
from offline_asr.errors import IntegrityError
from offline_asr.fsutil import write_atomic
from offline_asr.registry.integrity import check_before_load
from offline_asr.registry.schemas import ModelMetadata
from offline_asr.registry.store import ModelStore
from support.helpers import Cli
from support.server import free_port

EN = CLIPS_DIR / "en_short.wav"
RU = CLIPS_DIR / "ru_short.wav"
TINY = "whisper-tiny.en"
GIGAAM = "gigaam-v3-ctc-testtiny"
ALTERED = r"whisper/tiny\.en/model\.bin has sha256 [0-9a-f]{64}, the manifest says"


def _whisper_text(folder: Path) -> str:
    """faster-whisper itself on a folder: what the engine produces from the files there."""
    from faster_whisper import WhisperModel

    model = WhisperModel(str(folder), device="cpu", compute_type="int8")
    segments, _ = model.transcribe(str(EN), beam_size=5, temperature=0.0)
    return "".join(segment.text for segment in segments)


def _gigaam_text(folder: Path) -> str:
    """onnx-asr itself on a folder."""
    import onnx_asr

    return str(onnx_asr.load_model("gigaam-v3-ctc", str(folder)).recognize(decode_audio(RU)))


def _refused_everywhere(cli: Cli, store: ModelStore, model_id: str, clip: Path, name: str) -> None:
    """`transcribe`, `transcribe --full-verify` and `serve` all refuse, naming the file."""
    for extra in ((), ("--full-verify",)):
        result = cli("transcribe", str(clip), "--model", model_id, *extra,
                     manifest=store.manifest_path)  # fmt: skip
        assert result.exit_code == 1, result.stdout + result.stderr
        message = " ".join(result.stderr.split())
        assert name in message and "not listed in the manifest" in message, message
    exe = Path(sys.executable).with_name("offline-asr")
    command = [str(exe), "serve", "--manifest", str(store.manifest_path), "--model", model_id,
               "--host", "127.0.0.1", "--port", str(free_port())]  # fmt: skip
    try:
        proc = subprocess.run(command, capture_output=True, text=True, timeout=90, check=False)
    except subprocess.TimeoutExpired as error:
        raise AssertionError(f"serve started despite the unlisted file: {error}") from None
    assert proc.returncode == 1, proc.stderr
    assert name in " ".join(proc.stderr.split())


def test_whisper_refuses_an_unlisted_file_that_changes_the_transcript(
    tiny_store: ModelStore, cli: Cli, tmp_path: Path
) -> None:
    folder = tiny_store.root / "whisper" / "tiny.en"
    clean = _whisper_text(folder)
    # faster-whisper reads preprocessor_config.json when it is there; tiny.en does not list it.
    (folder / "preprocessor_config.json").write_text(json.dumps({"sampling_rate": 8000}))
    assert _whisper_text(folder) != clean, "the hostile file must matter for this test to mean much"
    _refused_everywhere(cli, tiny_store, TINY, EN, "whisper/tiny.en/preprocessor_config.json")


def test_gigaam_refuses_an_unlisted_file_that_changes_the_transcript(
    store: ModelStore, cli: Cli
) -> None:
    prepared = cli("models", "prepare", "--engine", "gigaam", "--variant", "v3-ctc-testtiny",
                   "--no-smoke")  # fmt: skip
    assert prepared.exit_code == 0, prepared.stderr
    # An entry that does not list config.json (written by hand, or by an older tool): onnx-asr
    # still reads config.json from the folder when it is there.
    manifest = store.load()
    model = store.get(manifest, GIGAAM)
    model.artifacts = [a for a in model.artifacts if not a.path.endswith("/config.json")]
    write_atomic(store.manifest_path, manifest.to_json())
    folder = store.root / model.path
    clean = _gigaam_text(folder)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps(config | {"version": "v2"}))
    assert _gigaam_text(folder) != clean, "the hostile file must matter for this test to mean much"
    _refused_everywhere(cli, store, GIGAAM, RU, "gigaam/v3-ctc-testtiny/config.json")


def check_weights(store: ModelStore, model: ModelMetadata) -> None:
    """The check every engine makes before a load, with the default hint."""
    check_before_load(store.root, model, hint=DEFAULT_BUNDLE_HINT)


def test_the_refusal_says_what_to_do(tiny_store: ModelStore) -> None:
    folder = tiny_store.root / "whisper" / "tiny.en"
    (folder / "sub").mkdir()
    (folder / "sub" / "vocabulary.json").write_text("{}")
    model = tiny_store.get(tiny_store.load(), TINY)
    with pytest.raises(IntegrityError) as caught:
        check_weights(tiny_store, model)
    message = str(caught.value)
    assert "whisper/tiny.en/sub/vocabulary.json" in message
    assert "models verify" in message and "models prepare" in message


# --- the verified-hash cache ---------------------------------------------------------------


def _tiny(store: ModelStore) -> ModelMetadata:
    return store.get(store.load(), TINY)


def _flip_byte(path: Path, offset: int = 1000) -> None:
    with path.open("r+b") as stream:
        stream.seek(offset)
        byte = stream.read(1)
        stream.seek(offset)
        stream.write(bytes([byte[0] ^ 0x01]))


def _alter_keeping_size_and_mtime(path: Path) -> None:
    stat = path.stat()
    _flip_byte(path)
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))


def test_an_equal_size_edit_with_the_mtime_put_back_is_caught(tiny_store: ModelStore) -> None:
    model = _tiny(tiny_store)
    check_weights(tiny_store, model)  # verified once: remembered in the cache
    assert (tiny_store.root / VERIFY_CACHE_NAME).is_file()
    weights = tiny_store.root / "whisper" / "tiny.en" / "model.bin"
    _alter_keeping_size_and_mtime(weights)
    with pytest.raises(IntegrityError, match=ALTERED):
        check_weights(tiny_store, model)


def _forged_cache(store: ModelStore) -> str:
    """A cache that vouches for the altered model.bin, as someone who can write it would make.

    The entry is made by offline-asr itself (verifying the altered file against a manifest
    that lists its new hash); then every value is set to the hash the real manifest expects.
    """
    model = _tiny(store)
    weights = store.root / "whisper" / "tiny.en" / "model.bin"
    expected = next(a.sha256 for a in model.artifacts if a.path.endswith("/model.bin"))
    _alter_keeping_size_and_mtime(weights)
    from offline_asr.fsutil import sha256_file

    actual = sha256_file(weights).sha256
    lying = model.model_copy(
        update={"artifacts": [a.model_copy(update={"sha256": actual}) if a.sha256 == expected
                              else a for a in model.artifacts]}
    )  # fmt: skip
    cache = store.root / VERIFY_CACHE_NAME
    cache.unlink(missing_ok=True)
    check_weights(store, lying)
    entries = json.loads(cache.read_text())
    return json.dumps({key: expected if value == actual else value
                       for key, value in entries.items()})  # fmt: skip


def test_a_cache_writable_by_others_is_not_trusted(tiny_store: ModelStore) -> None:
    forged = _forged_cache(tiny_store)
    cache = tiny_store.root / VERIFY_CACHE_NAME
    cache.write_text(forged)
    cache.chmod(0o666)
    with pytest.raises(IntegrityError, match=ALTERED):
        check_weights(tiny_store, _tiny(tiny_store))


def test_a_symlinked_cache_is_not_trusted(tiny_store: ModelStore, tmp_path: Path) -> None:
    forged = _forged_cache(tiny_store)
    elsewhere = tmp_path / "planted.json"
    elsewhere.write_text(forged)
    elsewhere.chmod(0o600)
    cache = tiny_store.root / VERIFY_CACHE_NAME
    cache.unlink()
    cache.symlink_to(elsewhere)
    with pytest.raises(IntegrityError, match=ALTERED):
        check_weights(tiny_store, _tiny(tiny_store))
    assert elsewhere.read_text() == forged, "the link target is never written through"


@pytest.mark.skipif(os.geteuid() != 0, reason="giving a file to another user needs root")
def test_a_cache_owned_by_someone_else_is_not_trusted(tiny_store: ModelStore) -> None:
    forged = _forged_cache(tiny_store)
    cache = tiny_store.root / VERIFY_CACHE_NAME
    cache.write_text(forged)
    cache.chmod(0o600)
    os.chown(cache, 65534, 65534)  # nobody
    with pytest.raises(IntegrityError, match=ALTERED):
        check_weights(tiny_store, _tiny(tiny_store))


def test_the_cache_is_private_and_a_broken_one_is_ignored(tiny_store: ModelStore) -> None:
    model = _tiny(tiny_store)
    cache = tiny_store.root / VERIFY_CACHE_NAME
    old = os.umask(0o002)  # a shared-group umask must not make the cache group-writable
    try:
        check_weights(tiny_store, model)
    finally:
        os.umask(old)
    assert cache.stat().st_mode & 0o077 == 0
    for junk in (b"[1, 2]", b'{"a": 1}', b"not json", b"\xff"):
        cache.write_bytes(junk)
        cache.chmod(0o600)
        check_weights(tiny_store, model)  # hashes again instead of crashing
        assert isinstance(json.loads(cache.read_text()), dict)


def test_a_copied_store_is_hashed_again(tiny_store: ModelStore, tmp_path: Path) -> None:
    """Another inode with the same path, size and mtime (a restore from backup) is re-hashed."""
    model = _tiny(tiny_store)
    check_weights(tiny_store, model)
    weights = tiny_store.root / "whisper" / "tiny.en" / "model.bin"
    stat = weights.stat()
    replacement = tmp_path / "model.bin"
    shutil.copyfile(weights, replacement)
    _flip_byte(replacement, 2000)
    os.utime(replacement, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    replacement.replace(weights)
    with pytest.raises(IntegrityError, match=ALTERED):
        check_weights(tiny_store, model)
