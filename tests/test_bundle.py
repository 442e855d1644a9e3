"""Offline bundles end to end: build, sign, encrypt, verify, install, kill, roll back, delta.

Every bundle is built from copies of the session's `full_store` through the CLI. Most tests use
bundles of the GigaAM structural test model alone (~40 kB of weights, 700 kB with the lock
files) so that they are fast; whisper-tiny.en (78 MB) comes in only where a real transcription
or a long install (to kill) is needed.

The releases used here (N = the full store's manifest_version):

* vN    the store with whisper-base removed from disk (still listed: `--models` picks gigaam);
* vN+1  `models remove whisper-base`: whisper-tiny.en + gigaam ("store A");
* vN+2  gigaam *retrained*: the same test-model generator with another seed, re-registered with
        `models prepare --from-dir` ("store B"): only its weights file, `v3_ctc.onnx`, changes,
        as in a real model update. Whisper is untouched, so a delta over vN+1 carries that one
        file (plus manifest, checksum files and locks) and takes the rest from the base release.

CLI contract checked: exit 0 on success, 1 for a failed check, 2 for bad usage; after every
refusal the target's `current` still points to the previous release, whose files verify, and
(unless stated) nothing under the target changed.
"""

from __future__ import annotations

import fcntl
import functools
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import httpx2 as httpx
import pyrage
import pytest

from offline_asr.asr.base import fingerprint
from offline_asr.asr.smoke import word_error_rate
from offline_asr.constants import CLIPS_DIR
from offline_asr.delivery.bundle.build import LOCK_FILES, RAY_LOCK
from offline_asr.delivery.bundle.contents import CONTENTS_NAME, BundleContents, BundleFile
from offline_asr.delivery.bundle.reader import AGE_MAGIC
from offline_asr.registry.schemas import Manifest
from offline_asr.registry.store import ModelStore
from support.bundles import (
    Member,
    Outcome,
    contents_of,
    copy_bundle,
    copy_store,
    invoke,
    measured,
    padded,
    pax_header,
    prepare_retrained_gigaam,
    raw_blocks,
    read_members,
    regular,
    relisted,
    sha256_of,
    snapshot,
    special,
    tar_header,
    write_bundle,
    write_sidecar,
)
from support.helpers import REPO
from support.server import running_server

TINY = "whisper-tiny.en"
BASE = "whisper-base"
GIGAAM = "gigaam-v3-ctc-testtiny"
KEY_ENV = "OFFLINE_ASR_BUNDLE_PUBLIC_KEY"
EXE = Path(sys.executable).with_name("offline-asr")
EN = CLIPS_DIR / "en_short.wav"
EN_TEXT: str = json.loads((CLIPS_DIR / "references.json").read_text("utf-8"))[EN.name]
WER_BOUND = 0.15
PAGE = 4096
GIGAAM_DIR = "models/gigaam/v3-ctc-testtiny"
TINY_BIN = "models/whisper/tiny.en/model.bin"
MANIFEST = "models/manifest.json"
GIB = 1 << 30


@pytest.fixture(autouse=True)
def _no_bundle_key_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """A public key from the developer's shell would make every unsigned install fail."""
    monkeypatch.delenv(KEY_ENV, raising=False)


# --- fixtures: the stores and bundles of the module ------------------------------------------


@dataclass(frozen=True)
class Series:
    old: int
    mid: int
    new: int
    work: Path
    locks: Path
    store_a: ModelStore
    """At `mid`: whisper-tiny.en and gigaam."""
    store_b: ModelStore
    """At `new`: gigaam retrained."""
    manifest_a: Path
    """Store A's manifest, the delta's base."""
    gigaam: dict[int, Path]
    """A gigaam-only bundle for each of old, mid, new."""
    delta: Path
    """Store B over manifest A."""


def build(store: ModelStore, out: Path, *args: str | Path, locks: Path) -> Path:
    """`bundle build` through the CLI; the one bundle it wrote."""
    outcome = invoke("bundle", "build", "--out", out, "--locks-from", locks,
                     "--manifest", store.manifest_path, *args)  # fmt: skip
    assert outcome.exit_code == 0, outcome.text
    made = [p for p in out.glob("offline_bundle_v*") if not p.name.endswith((".sha256", ".sig"))]
    assert len(made) == 1, made
    return made[0]


@pytest.fixture(scope="module")
def series(full_store: ModelStore, tmp_path_factory: pytest.TempPathFactory) -> Series:
    work = tmp_path_factory.mktemp("bundles")
    # A snapshot of the lock files: others may edit the checkout's while this module runs.
    locks = work / "locks"
    locks.mkdir()
    for name in LOCK_FILES:
        shutil.copy2(REPO / name, locks / name)
    base_folder = full_store.get(full_store.load(), BASE).path
    store_a = copy_store(full_store, work / "store-a", without=[base_folder])
    old = store_a.load().manifest_version
    gigaam = {old: build(store_a, work / f"gigaam-v{old}", "--models", GIGAAM, locks=locks)}

    assert invoke("models", "remove", BASE, "--manifest", store_a.manifest_path).exit_code == 0
    mid = store_a.load().manifest_version
    gigaam[mid] = build(store_a, work / f"gigaam-v{mid}", "--models", GIGAAM, locks=locks)
    manifest_a = work / "manifest-a.json"
    shutil.copy2(store_a.manifest_path, manifest_a)

    store_b = copy_store(store_a, work / "store-b")
    prepare_retrained_gigaam(store_b, work / "retrained", "--no-smoke")
    new = store_b.load().manifest_version
    assert (old, mid, new) == (old, old + 1, old + 2)
    gigaam[new] = build(store_b, work / f"gigaam-v{new}", "--models", GIGAAM, locks=locks)
    delta = build(store_b, work / "delta", "--base-manifest", manifest_a, locks=locks)
    return Series(old, mid, new, work, locks, store_a, store_b, manifest_a, gigaam, delta)


@pytest.fixture(scope="module")
def full_mid(series: Series) -> Path:
    """whisper-tiny.en + gigaam at `mid` (~70 MB)."""
    return build(series.store_a, series.work / "full-mid", locks=series.locks)


@pytest.fixture
def target(series: Series, tmp_path: Path) -> Path:
    """An install target whose current release is the gigaam-only `old`."""
    path = tmp_path / "target"
    install(series.gigaam[series.old], path)
    assert_current(path, series.old)
    return path


@pytest.fixture
def keys(tmp_path: Path) -> tuple[Path, Path]:
    """An Ed25519 key pair made with `bundle keygen`: (private, public)."""
    private, public = tmp_path / "keys" / "signing.key", tmp_path / "keys" / "signing.pub"
    outcome = invoke("bundle", "keygen", "--private", private, "--public", public)
    assert outcome.exit_code == 0, outcome.text
    return private, public


def age_identity(folder: Path) -> tuple[Path, str]:
    """A new age identity written to a file, and its recipient (public key)."""
    identity = pyrage.x25519.Identity.generate()
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{uuid.uuid4().hex}.age"
    path.write_text(f"# created: by the test\n{identity}\n")
    return path, str(identity.to_public())


# --- assertions -------------------------------------------------------------------------------


def install(bundle: Path, target: Path, *args: str | Path) -> Outcome:
    outcome = invoke("bundle", "install", bundle, "--target", target, *args)
    assert outcome.exit_code == 0, outcome.text
    assert "current -> v" in outcome.text
    return outcome


def assert_current(target: Path, version: int) -> None:
    """`current` points to v{version}, which is complete: `models verify` passes on it."""
    link = target / "current"
    assert link.is_symlink(), f"{link} is not a symbolic link"
    assert link.resolve() == (target / "releases" / f"v{version}").resolve(), link.readlink()
    manifest = link / "models" / "manifest.json"
    assert Manifest.model_validate_json(manifest.read_text()).manifest_version == version
    verified = invoke("models", "verify", "--manifest", manifest)
    assert verified.exit_code == 0, verified.text
    listed = invoke("bundle", "list", "--target", target)
    assert listed.exit_code == 0, listed.text
    assert [line.split()[1] for line in listed.stdout.splitlines() if line.startswith("*")] == [
        f"v{version}"
    ], listed.stdout


def refused(outcome: Outcome, code: int, *fragments: str) -> None:
    """A one-paragraph error with the contract's exit code, never a traceback."""
    assert outcome.exit_code == code, (outcome.exit_code, outcome.text, outcome.exception)
    assert isinstance(outcome.exception, SystemExit | None), repr(outcome.exception)
    assert "error:" in outcome.stderr, outcome.text
    assert "Traceback" not in outcome.text, outcome.text
    for fragment in fragments:
        assert fragment in outcome.text, f"{fragment!r} not in: {outcome.text}"


def assert_untouched(target: Path, before: dict[str, str], version: int) -> None:
    assert_current(target, version)
    assert snapshot(target) == before


def releases_in(target: Path) -> list[str]:
    return sorted(p.name for p in (target / "releases").iterdir())


# --- 1. build, sign, encrypt, install, serve ---------------------------------------------------


def test_rebuild_gives_the_same_bytes(series: Series, tmp_path: Path) -> None:
    """Another copy of the store, with other file times and modes, gives the same bundle."""
    first = series.gigaam[series.mid]
    store = copy_store(series.store_a, tmp_path / "store", without=["whisper"])
    for path in (store.root / "gigaam").rglob("*"):
        os.utime(path, (1_000_000, 1_000_000))
        path.chmod(0o600 if path.is_file() else 0o700)
    again = build(store, tmp_path / "out", "--models", GIGAAM, locks=series.locks)
    assert again.name == first.name
    assert sha256_of(again) == sha256_of(first)
    assert again.read_bytes() == first.read_bytes()
    sidecar = again.with_name(again.name + ".sha256").read_text()
    assert sidecar == first.with_name(first.name + ".sha256").read_text()
    assert sidecar == f"{sha256_of(again)}  {again.name}\n"
    # The archive: bundle.json, the manifest, then sorted entries; fixed owner, mode and time.
    members = read_members(again)
    assert [m.name for m in members[:2]] == [CONTENTS_NAME, MANIFEST]
    names = [m.name for m in members[2:]]
    assert names == sorted(names)
    assert {(m.info.uid, m.info.gid, m.info.mode) for m in members} == {(0, 0, 0o644)}
    assert len({m.info.mtime for m in members}) == 1
    assert "INSTALL.txt" in names and f"{GIGAAM_DIR}/v3_ctc.onnx" in names
    assert {f"locks/{name}" for name in LOCK_FILES} <= set(names)


def decrypt(bundle: Path, identity: Path, out: Path) -> Path:
    keys = [pyrage.x25519.Identity.from_str(line) for line in identity.read_text().splitlines()
            if line.startswith("AGE-SECRET-KEY-")]  # fmt: skip
    pyrage.decrypt_file(str(bundle), str(out), keys)
    return out


def without_install_text(bundle: Path) -> dict[str, str]:
    """bundle.json's file list but INSTALL.txt, as path -> sha256."""
    return {f.path: f.sha256 for f in contents_of(bundle).files if f.path != "INSTALL.txt"}


def test_encrypted_builds_decrypt_to_the_same_bytes(series: Series, tmp_path: Path) -> None:
    identity, recipient = age_identity(tmp_path / "age")
    plain = series.gigaam[series.mid]
    args = ("--models", GIGAAM, "--recipient", recipient)
    first = build(series.store_a, tmp_path / "one", *args, locks=series.locks)
    second = build(series.store_a, tmp_path / "two", *args, locks=series.locks)
    assert first.name == second.name == plain.name + ".age"
    assert sha256_of(first) != sha256_of(second)  # age uses a fresh file key every time
    one = decrypt(first, identity, tmp_path / "one.tar.zst")
    two = decrypt(second, identity, tmp_path / "two.tar.zst")
    assert one.read_bytes() == two.read_bytes()
    # Compared with the unencrypted build, only INSTALL.txt (and so bundle.json) differ.
    assert without_install_text(one) == without_install_text(plain)
    install_text = next(m for m in read_members(one) if m.name == "INSTALL.txt").data.decode()
    assert f"offline-asr bundle verify {first.name}" in install_text


@pytest.mark.slow
def test_signed_encrypted_bundle_installs_and_serves(
    series: Series, full_mid: Path, keys: tuple[Path, Path], tmp_path: Path
) -> None:
    private, public = keys
    assert private.stat().st_mode & 0o777 == 0o600
    again = invoke("bundle", "keygen", "--private", private, "--public", tmp_path / "other.pub")
    refused(again, 2, "refusing to overwrite")
    identity, recipient = age_identity(tmp_path / "age")

    out = tmp_path / "dist"
    bundle = build(series.store_a, out, "--recipient", recipient, "--sign-key", private,
                   locks=series.locks)  # fmt: skip
    assert bundle.name == f"offline_bundle_v{series.mid}.tar.zst.age"
    assert sorted(p.name for p in out.iterdir()) == [
        bundle.name, bundle.name + ".sha256", bundle.name + ".sig"
    ]  # fmt: skip
    assert bundle.read_bytes()[: len(AGE_MAGIC)] == AGE_MAGIC
    assert bundle.with_name(bundle.name + ".sha256").read_text().split()[0] == sha256_of(bundle)
    # Inside: the files of the unencrypted build, but for INSTALL.txt (it names the .age file).
    plain = decrypt(bundle, identity, tmp_path / "plain.tar.zst")
    assert without_install_text(plain) == without_install_text(full_mid)

    checked = invoke("bundle", "verify", bundle, "--public-key", public, "--identity", identity)
    assert checked.exit_code == 0, checked.text
    assert "sha256 and signature match" in checked.text
    assert f"manifest_version {series.mid}" in checked.text
    unread = invoke("bundle", "verify", bundle, "--public-key", public)
    assert unread.exit_code == 0, unread.text
    assert "contents not checked" in unread.text

    target = tmp_path / "srv"
    install(bundle, target, "--identity", identity, "--public-key", public)
    assert_current(target, series.mid)
    assert releases_in(target) == [f"v{series.mid}"]  # no plaintext or staging left
    info = json.loads((target / "current" / ".bundle-info.json").read_text())
    assert info["bundle"] == bundle.name and info["sha256"] == sha256_of(bundle)

    # `--target` wins over `--manifest` (running_server always passes one): this one does not
    # exist, so the server would not start if it were used.
    nowhere = tmp_path / "no-store" / "models" / "manifest.json"
    log = tmp_path / "serve.log"
    with (
        running_server(nowhere, "--target", str(target), "--model", TINY, log=log) as server,
        httpx.Client(base_url=server.url, timeout=120) as http,
    ):
        rows = http.get("/v1/models").json()["data"]
        served = {row["id"]: row for row in rows if row["engine"] != "router"}
        assert set(served) == {m.id for m in series.store_a.load().models}  # tiny.en + GigaAM
        assert {row["manifest_version"] for row in served.values()} == {series.mid}
        response = http.post(
            "/v1/audio/transcriptions",
            files={"file": (EN.name, EN.read_bytes(), "audio/wav")},
            data={"model": TINY},
        )
        assert response.status_code == 200, response.text
        text = response.json()["text"]
        assert word_error_rate(EN_TEXT, text) <= WER_BOUND, text

    transcribed = invoke("transcribe", EN, "--model", TINY, "--target", target,
                         "--manifest", nowhere)  # fmt: skip
    assert transcribed.exit_code == 0, transcribed.text
    assert word_error_rate(EN_TEXT, transcribed.stdout) <= WER_BOUND, transcribed.stdout


@pytest.mark.slow
def test_a_running_server_keeps_serving_its_release_after_an_install(
    series: Series, full_mid: Path, tmp_path: Path
) -> None:
    """`serve --target` holds the release it started with: after `bundle install` switches
    `current` under it, a model loaded lazily comes from that release, as `/v1/models` says."""
    target = tmp_path / "srv"
    install(full_mid, target)
    started_with = {m.id: m for m in series.store_a.load().models}
    nowhere = tmp_path / "no-store" / "models" / "manifest.json"
    with (
        running_server(
            nowhere, "--target", str(target), "--model", TINY, log=tmp_path / "log"
        ) as server,
        httpx.Client(base_url=server.url, timeout=120) as http,
    ):
        install(series.gigaam[series.new], target)  # GIGAAM retrained; current -> v{new}
        assert_current(target, series.new)
        response = http.post(
            "/v1/audio/transcriptions",
            files={"file": (EN.name, EN.read_bytes(), "audio/wav")},
            data={"model": GIGAAM},  # not preloaded: loaded now, lazily
        )
        assert response.status_code == 200, response.text
        about = response.json()["x_offline_asr"]
        rows = {row["id"]: row for row in http.get("/v1/models").json()["data"]}
    listed = rows[GIGAAM]
    assert listed["loaded"] is True
    assert (about["manifest_version"], about["fingerprint"]) == (
        listed["manifest_version"], listed["fingerprint"]
    )  # fmt: skip
    assert about["manifest_version"] == series.mid
    assert about["fingerprint"] == fingerprint(started_with[GIGAAM])


# --- 2. bad inputs -----------------------------------------------------------------------------


def truncated(bundle: Path, folder: Path, *, resign: bool) -> Path:
    copy = copy_bundle(bundle, folder)
    data = copy.read_bytes()
    copy.write_bytes(data[: len(data) // 2])
    if resign:
        write_sidecar(copy)
    return copy


def one_byte_altered(bundle: Path, folder: Path, *, resign: bool) -> Path:
    copy = copy_bundle(bundle, folder)
    data = bytearray(copy.read_bytes())
    data[len(data) // 2] ^= 0x01
    copy.write_bytes(bytes(data))
    if resign:
        write_sidecar(copy)
    return copy


# With a sidecar that matches the damaged copy, the archive itself must catch it, and how
# depends on where the damage lands: zstd or tar errors, the sha256 of the member it hits, or
# (zstd does not notice a frame cut at a block boundary) a listed file that never came.
CUT = ("is damaged or truncated", "the bundle lacks")
ALTERED = ("is damaged or truncated", "differs from its sha256 in bundle.json")


@pytest.mark.parametrize(
    ("damage", "resign", "messages"),
    [
        (truncated, False, ("truncated or altered",)),
        (one_byte_altered, False, ("truncated or altered",)),
        (truncated, True, CUT),
        (one_byte_altered, True, ALTERED),
    ],
    ids=["truncated", "one-byte", "truncated-matching-sidecar", "one-byte-matching-sidecar"],
)
def test_damaged_copy_is_refused(
    series: Series,
    target: Path,
    tmp_path: Path,
    damage: Callable[..., Path],
    resign: bool,
    messages: tuple[str, ...],
) -> None:
    bundle = damage(series.gigaam[series.mid], tmp_path / "usb", resign=resign)
    before = snapshot(target)
    for outcome in (
        invoke("bundle", "verify", bundle),
        invoke("bundle", "install", bundle, "--target", target),
    ):
        refused(outcome, 1)
        assert any(message in outcome.text for message in messages), outcome.text
    assert_untouched(target, before, series.old)


def test_signature_by_another_key_is_refused(
    series: Series, target: Path, keys: tuple[Path, Path], tmp_path: Path
) -> None:
    _, public = keys
    other_private, other_public = tmp_path / "other.key", tmp_path / "other.pub"
    assert invoke("bundle", "keygen", "--private", other_private,
                  "--public", other_public).exit_code == 0  # fmt: skip
    bundle = build(series.store_a, tmp_path / "dist", "--models", GIGAAM,
                   "--sign-key", other_private, locks=series.locks)  # fmt: skip
    before = snapshot(target)
    refused(invoke("bundle", "verify", bundle, "--public-key", public), 1,
            "does not match the public key")  # fmt: skip
    refused(invoke("bundle", "install", bundle, "--target", target, "--public-key", public), 1,
            "does not match the public key")  # fmt: skip
    assert_untouched(target, before, series.old)
    # Control: the signer's own public key accepts the very same files.
    install(bundle, target, "--public-key", other_public)
    assert_current(target, series.mid)


@pytest.mark.parametrize("how", ["option", "env"])
def test_missing_signature_is_refused_when_a_key_is_configured(
    series: Series, target: Path, keys: tuple[Path, Path], how: str
) -> None:
    _, public = keys
    bundle = series.gigaam[series.mid]  # unsigned
    assert not bundle.with_name(bundle.name + ".sig").exists()
    args: tuple[str | Path, ...] = ("--public-key", public) if how == "option" else ()
    env = {KEY_ENV: str(public)} if how == "env" else None
    before = snapshot(target)
    refused(invoke("bundle", "verify", bundle, *args, env=env), 1, "no signature")
    refused(invoke("bundle", "install", bundle, "--target", target, *args, env=env), 1,
            "no signature", "signed bundles are required")  # fmt: skip
    assert_untouched(target, before, series.old)


@dataclass(frozen=True)
class Armed:
    """A signed and an encrypted bundle (gigaam-only, `mid`) with the keys that open them."""

    signed: Path
    public: Path
    encrypted: Path
    identity: Path


@pytest.fixture(scope="module")
def armed(series: Series, tmp_path_factory: pytest.TempPathFactory) -> Armed:
    folder = tmp_path_factory.mktemp("armed")
    private, public = folder / "signing.key", folder / "signing.pub"
    assert invoke("bundle", "keygen", "--private", private, "--public", public).exit_code == 0
    identity, recipient = age_identity(folder / "age")
    signed = build(series.store_a, folder / "signed", "--models", GIGAAM, "--sign-key", private,
                   locks=series.locks)  # fmt: skip
    encrypted = build(series.store_a, folder / "encrypted", "--models", GIGAAM,
                      "--recipient", recipient, locks=series.locks)  # fmt: skip
    return Armed(signed, public, encrypted, identity)


def sparse(path: Path, head: bytes = b"") -> Path:
    """`head`, then zeros up to 1 GiB, taking no disk (a hostile or broken file)."""
    path.write_bytes(head)
    os.truncate(path, GIB)
    return path


def _padded_sidecar(armed: Armed, folder: Path, suffix: str) -> Path:
    """A copy of the signed bundle whose `suffix` sidecar is itself, then 1 GiB of zeros."""
    bundle = copy_bundle(armed.signed, folder)
    sidecar = bundle.with_name(bundle.name + suffix)
    sparse(sidecar, sidecar.read_bytes())
    return bundle


def _nested_signature(armed: Armed, folder: Path) -> Path:
    """A copy of the signed bundle whose `.sig` is 20,000 nested JSON arrays (40 kB)."""
    bundle = copy_bundle(armed.signed, folder)
    bundle.with_name(bundle.name + ".sig").write_text("[" * 20_000 + "]" * 20_000)
    return bundle


Invocation = tuple[Path, tuple[str | Path, ...], dict[str, str]]
"""The bundle, extra arguments, extra environment."""

CONFIGURED: dict[str, tuple[Callable[[Armed, Path], Invocation], int, str]] = {
    "sha256-sidecar-padded": (
        lambda a, f: (_padded_sidecar(a, f, ".sha256"), ("--public-key", a.public), {}),
        1, ".sha256 is 1,073,741,824 bytes, larger than",
    ),
    "signature-nested": (
        lambda a, f: (_nested_signature(a, f), ("--public-key", a.public), {}),
        1, ".sig is not a valid signature file",
    ),
    "signature-padded": (
        lambda a, f: (_padded_sidecar(a, f, ".sig"), ("--public-key", a.public), {}),
        1, ".sig is 1,073,741,824 bytes, larger than",
    ),
    # A key that is configured but unusable is an error, never "no key".
    "key-env-empty": (lambda a, f: (a.signed, (), {KEY_ENV: ""}), 2, f"{KEY_ENV} is set but empty"),
    "key-option-empty": (lambda a, f: (a.signed, ("--public-key", ""), {}), 2,
                         "--public-key is empty"),
    "key-file-empty": (lambda a, f: (a.signed, ("--public-key", f / "empty.pub"), {}), 2,
                       "empty.pub is empty"),
    "key-file-missing": (lambda a, f: (a.signed, ("--public-key", f / "none.pub"), {}), 2,
                         "cannot read the public key"),
    "key-file-folder": (lambda a, f: (a.signed, ("--public-key", f), {}), 2,
                        "cannot read the public key"),
    "key-file-garbage": (lambda a, f: (a.signed, ("--public-key", f / "garbage.pub"), {}), 2,
                         "garbage.pub is not an Ed25519 public key"),
    "key-file-padded": (lambda a, f: (a.signed, ("--public-key", sparse(f / "huge.pub")), {}), 2,
                        "huge.pub is 1,073,741,824 bytes, larger than"),
    "identity-option-empty": (lambda a, f: (a.encrypted, ("--identity", ""), {}), 2,
                              "--identity is empty"),
    "identity-file-empty": (lambda a, f: (a.encrypted, ("--identity", f / "empty.pub"), {}), 2,
                            "empty.pub holds no AGE-SECRET-KEY line"),
    "identity-file-padded": (lambda a, f: (a.encrypted, ("--identity", sparse(f / "huge.age")),
                             {}), 2, "huge.age is 1,073,741,824 bytes, larger than"),
}  # fmt: skip
"""Sidecars and key settings that must be refused, by `bundle verify` and `bundle install` alike."""


@pytest.mark.parametrize("case", list(CONFIGURED))
def test_unusable_sidecar_or_key_setting_is_refused(
    series: Series, armed: Armed, target: Path, tmp_path: Path, case: str
) -> None:
    make, code, message = CONFIGURED[case]
    folder = tmp_path / "usb"
    folder.mkdir()
    (folder / "empty.pub").write_bytes(b"")
    (folder / "garbage.pub").write_text("-----BEGIN PUBLIC KEY-----\nnot a key\n")
    bundle, args, env = make(armed, folder)
    before = snapshot(target)
    outcomes, costs = {}, {}
    for command in ("verify", "install"):
        where = ("--target", target) if command == "install" else ()
        with measured() as costs[command]:
            outcomes[command] = invoke("bundle", command, bundle, *where, *args, env=env,
                                       catch_exceptions=True)  # fmt: skip
    for command, cost in costs.items():
        assert cost.peak_bytes < COST_BOUND, (command, cost, outcomes[command])
    refused_alike(outcomes, code, message)
    assert_untouched(target, before, series.old)


def test_signature_of_another_bundle_is_refused(
    series: Series, target: Path, keys: tuple[Path, Path], tmp_path: Path
) -> None:
    """A genuine signature, but made for another bundle, copied beside this one."""
    private, public = keys
    signed = build(series.store_b, tmp_path / "signed", "--models", GIGAAM, "--sign-key",
                   private, locks=series.locks)  # fmt: skip
    bundle = copy_bundle(series.gigaam[series.mid], tmp_path / "usb")
    shutil.copy2(signed.with_name(signed.name + ".sig"), bundle.with_name(bundle.name + ".sig"))
    before = snapshot(target)
    refused(invoke("bundle", "install", bundle, "--target", target, "--public-key", public), 1,
            "is for another file")  # fmt: skip
    assert_untouched(target, before, series.old)


@pytest.fixture
def encrypted(series: Series, tmp_path: Path) -> Path:
    """The gigaam-only `mid` bundle encrypted to a fresh age identity."""
    _, recipient = age_identity(tmp_path / "age-a")
    return build(series.store_a, tmp_path / "enc", "--models", GIGAAM, "--recipient", recipient,
                 locks=series.locks)  # fmt: skip


def test_wrong_age_identity_is_refused(
    series: Series, target: Path, encrypted: Path, tmp_path: Path
) -> None:
    wrong, _ = age_identity(tmp_path / "age-b")
    refused(invoke("bundle", "verify", encrypted, "--identity", wrong), 1, "another key")
    refused(invoke("bundle", "install", encrypted, "--target", target, "--identity", wrong), 1,
            "cannot decrypt", "encrypted to another key")  # fmt: skip
    assert_current(target, series.old)
    refused(invoke("bundle", "install", encrypted, "--target", target), 2, "pass --identity")
    assert_current(target, series.old)


def test_refused_decryption_leaves_no_plaintext_behind(
    series: Series, target: Path, encrypted: Path, tmp_path: Path
) -> None:
    """BUG (see the report): `_plain_archive` decrypts to `releases/bundle.tar.zst` outside its
    try/finally, so a failed decryption leaves that file (empty for a wrong key, a partial
    plaintext when the disk fills up) in the target."""
    wrong, _ = age_identity(tmp_path / "age-b")
    before = snapshot(target)
    refused(invoke("bundle", "install", encrypted, "--target", target, "--identity", wrong), 1)
    assert releases_in(target) == [f"v{series.old}"]
    assert_untouched(target, before, series.old)


def _parent(members: list[Member]) -> list[Member]:
    return relisted([*members, regular("../escaped", b"outside\n")])


ABSOLUTE = f"/etc/offline-asr-test-{uuid.uuid4().hex}"


def _absolute(members: list[Member]) -> list[Member]:
    return relisted([*members, regular(ABSOLUTE, b"outside\n")])


def _symlink(members: list[Member]) -> list[Member]:
    return relisted([*members, special(f"{GIGAAM_DIR}/evil", tarfile.SYMTYPE, "/etc/passwd")])


def _hardlink(members: list[Member]) -> list[Member]:
    link = special(f"{GIGAAM_DIR}/evil", tarfile.LNKTYPE, "models/manifest.json")
    return relisted([*members, link])


def _device(members: list[Member]) -> list[Member]:
    return relisted([*members, special(f"{GIGAAM_DIR}/null", tarfile.CHRTYPE)])


def _duplicate(members: list[Member]) -> list[Member]:
    again = next(m for m in members if m.name == "models/manifest.json")
    return [*relisted(members), regular(again.name, again.data)]


def _unlisted(members: list[Member]) -> list[Member]:
    return [*relisted(members), regular("models/extra.txt", b"not listed\n")]


def _lacking(members: list[Member]) -> list[Member]:
    return [m for m in members if m.name != f"{GIGAAM_DIR}/config.json"]


def _altered(members: list[Member]) -> list[Member]:
    """Same size, other bytes, bundle.json unchanged."""
    return [regular(m.name, m.data.replace(b"0", b"1")) if m.name.endswith("v3_vocab.txt") else m
            for m in members]  # fmt: skip


def _hidden(members: list[Member]) -> list[Member]:
    return relisted([*members, regular(".bundle-info.json", b'{"bundle": "forged"}\n')])


def _contents_not_first(members: list[Member]) -> list[Member]:
    head, *rest = relisted(members)
    return [rest[0], head, *rest[1:]]


def _changed(members: list[Member], name: str, change: Callable[[dict[str, Any]], object]
             ) -> list[Member]:  # fmt: skip
    """The members with the JSON entry `name` changed in place by `change` (not relisted)."""
    result = []
    for member in members:
        if member.name == name:
            data = json.loads(member.data)
            change(data)
            member = regular(name, json.dumps(data, indent=2).encode())
        result.append(member)
    return result


def _contents_changed(**fields: object) -> Callable[[list[Member]], list[Member]]:
    """bundle.json with `fields` set (everything else listed as it is)."""
    return lambda members: _changed(relisted(members), CONTENTS_NAME, lambda c: c.update(fields))


def _manifest_changed(change: Callable[[dict[str, Any]], object]
                      ) -> Callable[[list[Member]], list[Member]]:  # fmt: skip
    """The inner manifest changed, and bundle.json listing it as it now is."""
    return lambda members: relisted(_changed(members, MANIFEST, change))


def _no_manifest(members: list[Member]) -> list[Member]:
    return relisted([m for m in members if m.name != MANIFEST])


def _manifest_last(members: list[Member]) -> list[Member]:
    manifest = next(m for m in members if m.name == MANIFEST)
    return relisted([*(m for m in members if m is not manifest), manifest])


def _extra_artifact(manifest: dict[str, Any]) -> None:
    """The manifest lists a file that the bundle does not carry."""
    manifest["models"][0]["artifacts"].append(
        {"path": f"{GIGAAM_DIR.removeprefix('models/')}/extra.bin", "sha256": "0" * 64, "size": 1}
    )


def _file_not_in_manifest(members: list[Member]) -> list[Member]:
    return relisted([*members, regular(f"{GIGAAM_DIR}/extra.bin", b"not in the manifest\n")])


def _checksum_altered(members: list[Member]) -> list[Member]:
    checksum = f"{GIGAAM_DIR}/checksum.txt"
    return relisted([regular(m.name, m.data + b"# changed\n") if m.name == checksum else m
                     for m in members])  # fmt: skip


def _from_base_without_base(members: list[Member]) -> list[Member]:
    """A file taken from a base release, in a bundle that names no base."""
    vocab = f"{GIGAAM_DIR}/v3_vocab.txt"
    head, *rest = relisted(members)
    contents = json.loads(head.data)
    contents["from_base"] = [f for f in contents["files"] if f["path"] == vocab]
    contents["files"] = [f for f in contents["files"] if f["path"] != vocab]
    return [regular(CONTENTS_NAME, json.dumps(contents).encode()),
            *(m for m in rest if m.name != vocab)]  # fmt: skip


def _version_as_string(members: list[Member]) -> list[Member]:
    """manifest_version "7" where 7 is meant (pydantic's lax mode would take it)."""
    return _changed(relisted(members), CONTENTS_NAME,
                    lambda c: c.update(manifest_version=str(c["manifest_version"])))  # fmt: skip


def _raw_contents(data: bytes) -> Callable[[list[Member]], list[Member]]:
    return lambda members: [regular(CONTENTS_NAME, data), *members[1:]]


def _huge_contents(members: list[Member]) -> list[Member]:
    """A valid bundle.json followed by 1 GiB of spaces (still valid JSON)."""
    head, *rest = relisted(members)
    return [padded(CONTENTS_NAME, head.data, GIB), *rest]


def _huge_manifest(members: list[Member]) -> list[Member]:
    """The manifest followed by 1 GiB of spaces, listed with its true sha256 and size."""
    return relisted([padded(m.name, m.data, GIB) if m.name == MANIFEST else m for m in members])


def _entry_larger_than_listed(members: list[Member]) -> list[Member]:
    """INSTALL.txt is 1 GiB of zeros in the archive; bundle.json lists the real one."""
    return [padded(m.name, b"", GIB, b"\0") if m.name == "INSTALL.txt" else m for m in members]


def _entry_smaller_than_listed(members: list[Member]) -> list[Member]:
    return [regular(m.name, m.data[:-1]) if m.name == "INSTALL.txt" else m for m in members]


def _huge_pax_header(members: list[Member]) -> list[Member]:
    """A 1 GiB pax extended header before INSTALL.txt (tarfile reads such a header whole)."""
    members = relisted(members)
    index = next(i for i, m in enumerate(members) if m.name == "INSTALL.txt")
    bomb = padded("././@PaxHeader", b"", GIB, b"\0", kind=tarfile.XHDTYPE)
    return [*members[:index], bomb, *members[index:]]


def _before_install_txt(members: list[Member], *inserted: Member) -> list[Member]:
    """The members relisted, with `inserted` (not listed) just before INSTALL.txt."""
    members = relisted(members)
    index = next(i for i, m in enumerate(members) if m.name == "INSTALL.txt")
    return [*members[:index], *inserted, *members[index:]]


def _sparse_file(members: list[Member]) -> list[Member]:
    """An old GNU sparse entry whose map goes on for 64 MiB of extension blocks."""

    def extended(block: bytearray) -> None:
        block[482], block[483:495] = 1, b"%011o\0" % 1000

    entries = bytearray(512)
    for i in range(21):
        entries[i * 24 : (i + 1) * 24] = b"%011o\0%011o\0" % (i + 1, 1)
    more, last = bytes(entries[:504]) + b"\1" + bytes(7), bytes(entries[:504]) + bytes(8)
    blocks = tar_header("junk/sparse", tarfile.GNUTYPE_SPARSE, 0, extended)
    blocks += more * ((64 << 20) // 512) + last
    return _before_install_txt(members, raw_blocks("junk/sparse", blocks))


def _sparse_map(members: list[Member]) -> list[Member]:
    """A GNU sparse 1.0 entry: its map (3 million pairs) is read from its data, unbounded."""
    pairs = 3_000_000
    sparse = regular("junk/sparse", b"%d\n" % pairs + b"1000\n" * (2 * pairs))
    sparse.info.pax_headers = {
        "GNU.sparse.major": "1",
        "GNU.sparse.minor": "0",
        "GNU.sparse.name": "junk/sparse",
        "GNU.sparse.realsize": "1",
    }
    return _before_install_txt(members, sparse)  # fmt: skip


def _header_chain(members: list[Member]) -> list[Member]:
    """5,000 pax headers in a row (tarfile follows them recursively)."""
    return _before_install_txt(members, raw_blocks("chain", pax_header({"c": "x"}) * 5000))


def _global_keys(members: list[Member]) -> list[Member]:
    """4,000 listed empty files, each after a pax global header with a new key (tarfile keeps
    the keys, and every member a copy of them)."""
    junk = [regular(f"junk/{i}", b"") for i in range(4000)]
    headers = [
        raw_blocks("g", pax_header({f"k{i}": "v" * 100}, tarfile.XGLTYPE)) for i in range(4000)
    ]
    head, *rest = relisted([*members, *junk])
    return [head, *rest[:-4000], *(m for pair in zip(headers, junk, strict=True) for m in pair)]


def _members_kept(members: list[Member]) -> list[Member]:
    """1,000 listed empty files with a 60 kB pax header each (tarfile keeps every member it
    read, with its headers), then a file bundle.json does not list."""
    junk = [regular(f"junk/{i}", b"") for i in range(1000)]
    for member in junk:
        member.info.pax_headers = {"comment": "x" * 60_000}
    return [*relisted([*members, *junk]), regular("junk/unlisted", b"")]


CRAFTED: dict[str, tuple[Callable[[list[Member]], list[Member]], str]] = {
    # Unsafe paths are refused already when bundle.json lists them.
    "dotdot": (_parent, "path '../escaped' must not contain '..'"),
    "absolute": (_absolute, f"path '{ABSOLUTE}' must be relative"),
    "symlink": (_symlink, "only regular files belong in a bundle"),
    "hardlink": (_hardlink, "only regular files belong in a bundle"),
    "device": (_device, "only regular files belong in a bundle"),
    "duplicate": (_duplicate, "models/manifest.json appears twice"),
    "unlisted": (_unlisted, "models/extra.txt is in the archive but not in bundle.json"),
    "lacking": (_lacking, f"the bundle lacks {GIGAAM_DIR}/config.json"),
    "altered": (_altered, f"{GIGAAM_DIR}/v3_vocab.txt differs from its sha256"),
    "hidden": (_hidden, "path '.bundle-info.json' must not start in a hidden folder"),
    "contents-not-first": (_contents_not_first, "its first entry must be bundle.json"),
    # Paths that can be checked but not written (install failed where verify passed).
    "file-and-folder": (
        lambda members: relisted([*members, regular("junk/a", b"1"), regular("junk/a/b", b"2")]),
        "junk/a is listed as a file and as a folder",
    ),
    "name-too-long": (
        lambda members: relisted([*members, regular("junk/" + "x" * 300, b"")]),
        "has a name longer than 255",
    ),
    "control-character": (
        lambda members: relisted([*members, regular("junk/" + "x" * 120 + "\0b", b"")]),
        "holds a control character",
    ),
    # The inner manifest: present, second, and in agreement with bundle.json.
    "no-manifest": (_no_manifest, "bundle.json does not list models/manifest.json"),
    "manifest-not-second": (_manifest_last, "its second entry must be models/manifest.json"),
    "manifest-other-version": (
        _manifest_changed(lambda m: m.update(manifest_version=m["manifest_version"] + 1)),
        "models/manifest.json has manifest_version",
    ),
    "manifest-other-sha256": (
        _manifest_changed(lambda m: m["models"][0]["artifacts"][-1].update(sha256="0" * 64)),
        f"{GIGAAM_DIR}/v3_vocab.txt: bundle.json and the manifest disagree",
    ),
    "manifest-lists-more": (
        _manifest_changed(_extra_artifact),
        f"the manifest lists {GIGAAM_DIR}/extra.bin, which the bundle does not carry",
    ),
    "file-not-in-manifest": (
        _file_not_in_manifest,
        f"{GIGAAM_DIR}/extra.bin is not in the manifest",
    ),
    "checksum-txt-altered": (
        _checksum_altered,
        f"{GIGAAM_DIR}/checksum.txt: bundle.json and the manifest disagree",
    ),
    "manifest-lacks-a-named-model": (
        _contents_changed(models=[GIGAAM, TINY]),
        f"bundle.json names {TINY}, which the manifest does not list",
    ),
    "model-not-named": (
        _contents_changed(models=[TINY]),
        f"the manifest lists {GIGAAM}, which bundle.json does not name",
    ),
    "manifest-breaks-schema": (
        _manifest_changed(lambda m: m.update(surprise=True)),
        "models/manifest.json in the bundle breaks the manifest schema",
    ),
    "manifest-not-utf8": (
        lambda members: relisted(
            [regular(MANIFEST, b"\xff\xfe{") if m.name == MANIFEST else m for m in members]
        ),
        "models/manifest.json in the bundle breaks the manifest schema",
    ),
    # bundle.json itself: versions, schema, nesting, encoding.
    "negative-version": (_contents_changed(manifest_version=-1), "manifest_version"),
    "zero-version": (_contents_changed(manifest_version=0), "manifest_version"),
    "string-version": (_version_as_string, "manifest_version"),
    "base-not-older": (_contents_changed(base_manifest_version=10**6), "base_manifest_version"),
    "from-base-without-base": (_from_base_without_base, "from_base"),
    "model-named-twice": (_contents_changed(models=[GIGAAM, GIGAAM]), "named twice"),
    "deeply-nested": (_raw_contents(b"[" * 100_000 + b"]" * 100_000), "bundle.json is not valid"),
    "not-utf8": (_raw_contents(b'{"format": 1, \xff}'), "bundle.json is not valid"),
    # Sizes: nothing read or written past a limit or past the size bundle.json lists.
    "huge-bundle-json": (_huge_contents, "bundle.json is 1,073,7"),
    "huge-manifest": (_huge_manifest, "models/manifest.json is 1,073,7"),
    "entry-larger-than-listed": (
        _entry_larger_than_listed,
        "INSTALL.txt is 1,073,741,824 bytes in the archive",
    ),
    "entry-smaller-than-listed": (_entry_smaller_than_listed, "INSTALL.txt is "),
    "huge-pax-header": (_huge_pax_header, "header of 1,073,741,824 bytes"),
    "huge-lock-file": (
        lambda members: relisted(
            [padded(m.name, b"", GIB) if m.name == "locks/uv.lock" else m for m in members]
        ),
        "locks/uv.lock is listed with 1,073,741,824 bytes",
    ),
    # pydantic builds one error per bad element (and a copy of the input for each): 1 MiB of
    # `{}` in a list was gigabytes. Now validation stops at the first bad element.
    "contents-many-errors": (
        lambda members: _changed(
            relisted(members), CONTENTS_NAME, lambda c: c.update(files=[{"x": 1}] * 50_000)
        ),
        "files.0.x: Extra inputs are not permitted",
    ),
    "manifest-many-errors": (
        _manifest_changed(lambda m: m.update(models=[{}] * 90_000)),
        "models.0.id: Field required",
    ),
    "sparse-file": (_sparse_file, "'junk/sparse' is a sparse file"),
    "sparse-map": (_sparse_map, "a GNU sparse 1.0 file"),
    "header-chain": (_header_chain, "more than 4 tar headers in a row"),
    "global-header-keys": (_global_keys, "more than 64 pax global header keys"),
    "members-kept": (_members_kept, "junk/unlisted is in the archive but not in bundle.json"),
}
"""Each hostile archive, the flaw it carries, and a fragment of the one message that refuses it."""

# What refusing any of them may cost: the fixed code holds and writes a few MiB at most (its
# read buffers); the broken one held or wrote the 1 GiB entries whole, and held 60 MB to
# several GB for the tar header tricks.
COST_BOUND = 32 << 20


def test_crafted_archive_control_installs(series: Series, target: Path, tmp_path: Path) -> None:
    """The hand-made archives below differ from this one only by the flaw each carries."""
    crafted = write_bundle(relisted(read_members(series.gigaam[series.mid])),
                           tmp_path / "usb" / series.gigaam[series.mid].name)  # fmt: skip
    assert invoke("bundle", "verify", crafted).exit_code == 0
    install(crafted, target)
    assert_current(target, series.mid)


def refused_alike(outcomes: dict[str, Outcome], code: int, message: str) -> None:
    """`bundle verify` and `bundle install` refuse with one and the same message."""
    for outcome in outcomes.values():
        refused(outcome, code, message)
    verified, installed = (o.stderr.strip() for o in outcomes.values())
    assert verified == installed, outcomes


@pytest.mark.parametrize("case", list(CRAFTED))
def test_crafted_archive_is_refused(
    series: Series, target: Path, tmp_path: Path, case: str
) -> None:
    """Verify and install share one checking path: every hostile archive is refused by both,
    with the same message, before anything is switched, cheaply."""
    mutate, message = CRAFTED[case]
    source = series.gigaam[series.mid]
    crafted = write_bundle(mutate(read_members(source)), tmp_path / "usb" / source.name)
    assert crafted.stat().st_size < 2 << 20  # the 1 GiB entries too: zstd squeezes them
    before = snapshot(target)
    outside = [tmp_path / "usb" / "escaped", target / "escaped", Path(ABSOLUTE)]
    outcomes, costs = {}, {}
    try:
        for command in ("verify", "install"):
            args = ("--target", target) if command == "install" else ()
            with measured() as costs[command]:
                outcomes[command] = invoke("bundle", command, crafted, *args,
                                           catch_exceptions=True)  # fmt: skip
        for command, cost in costs.items():
            assert cost.peak_bytes < COST_BOUND, (command, cost, outcomes[command])
            assert cost.written_bytes < COST_BOUND, (command, cost, outcomes[command])
        refused_alike(outcomes, 1, message)
        assert [p for p in outside if p.exists()] == []
    finally:
        Path(ABSOLUTE).unlink(missing_ok=True)
    assert_untouched(target, before, series.old)


def test_bundles_carry_the_goldens_and_install_checks_them(
    series: Series, target: Path, tmp_path: Path
) -> None:
    """The golden file is listed in bundle.json; one that no longer holds the decoded content
    the manifest pins (even with a bundle.json made to match) is refused at install."""
    source = series.gigaam[series.mid]
    golden = f"models/goldens/{GIGAAM}.json"
    assert golden in {f.path for f in contents_of(source).files}

    def edit(member: Member) -> Member:
        if member.name != golden:
            return member
        data = json.loads(member.data)
        data["decoded"]["segments"][0]["tokens"] = [7]
        return regular(member.name, json.dumps(data).encode())

    crafted = write_bundle(relisted([edit(m) for m in read_members(source)]),
                           tmp_path / "usb" / source.name)  # fmt: skip
    before = snapshot(target)
    refused(invoke("bundle", "install", crafted, "--target", target), 1,
            "does not hold the golden output the manifest pins")  # fmt: skip
    assert_untouched(target, before, series.old)


@pytest.mark.parametrize(("flags", "lock"), [([], "requirements.lock"), (["--ray"], RAY_LOCK)])
def test_the_wheelhouse_comes_from_the_lock_its_nodes_need(
    series: Series, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, flags: list[str], lock: str
) -> None:
    """`--with-wheels` packs the runtime's lock; `--ray` the lock with the `ray` extra."""
    asked: list[Path] = []

    def download(lock_file: Path, wheelhouse: Path) -> Path:
        asked.append(lock_file)
        wheelhouse.mkdir(parents=True, exist_ok=True)
        (wheelhouse / "fake-1.0-py3-none-any.whl").write_bytes(b"wheel")
        return wheelhouse

    monkeypatch.setattr("offline_asr.delivery.envpack.download_wheels", download)
    bundle = build(series.store_a, tmp_path / "dist", "--models", GIGAAM, "--with-wheels", *flags,
                   locks=series.locks)  # fmt: skip
    assert asked == [series.locks / lock]
    assert "wheels/fake-1.0-py3-none-any.whl" in {m.name for m in read_members(bundle)}


def test_ray_wheels_need_a_wheelhouse(series: Series, tmp_path: Path) -> None:
    outcome = invoke("bundle", "build", "--out", tmp_path / "dist", "--locks-from", series.locks,
                     "--ray", "--manifest", series.store_a.manifest_path)  # fmt: skip
    assert outcome.exit_code == 2 and "add --with-wheels" in outcome.text, outcome.text
    assert not (tmp_path / "dist").exists()


def test_a_store_without_its_golden_file_is_not_bundled(series: Series, tmp_path: Path) -> None:
    store = copy_store(series.store_a, tmp_path / "store")
    store.golden_file(GIGAAM).unlink()
    outcome = invoke("bundle", "build", "--out", tmp_path / "dist", "--locks-from", series.locks,
                     "--models", GIGAAM, "--manifest", store.manifest_path)  # fmt: skip
    refused(outcome, 2, f"the golden file {store.golden_file(GIGAAM)} is missing")
    assert not (tmp_path / "dist").exists() or not any((tmp_path / "dist").iterdir())


def test_a_current_release_without_its_manifest_is_named(series: Series, target: Path) -> None:
    """A target left without a manifest (by an install before this check existed, or by hand):
    every command with --target names the missing file, not "no current release"."""
    (target / "current" / MANIFEST).unlink()
    missing = f"{target}/current/{MANIFEST} is missing"
    refused(invoke("doctor", "--target", target), 2, missing, "bundle rollback")
    refused(invoke("transcribe", EN, "--model", GIGAAM, "--target", target), 2, missing)
    refused(invoke("doctor", "--target", target.parent / "nowhere"), 2, "has no current release")


def test_delta_without_its_base_is_refused(series: Series, target: Path, tmp_path: Path) -> None:
    """The target has `old`, not `mid` (the delta's base); an empty target has nothing."""
    before = snapshot(target)
    refused(invoke("bundle", "install", series.delta, "--target", target), 1,
            f"a delta over manifest_version {series.mid}", "install the full bundle")  # fmt: skip
    assert_untouched(target, before, series.old)

    empty = tmp_path / "empty"
    refused(invoke("bundle", "install", series.delta, "--target", empty), 1, "not installed")
    assert not (empty / "current").exists()
    assert releases_in(empty) == []


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 4 MB tmpfs (a 100 kB one cannot hold even one release: the locks alone are 1.2 MB);
    the tests fill it up to the free space they want."""
    mount_point = tmp_path / "disk"
    mount_point.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mount_point)],
                             capture_output=True, text=True, check=False)  # fmt: skip
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs: {mounted.stderr.strip()}")
    try:
        yield mount_point
    finally:
        if subprocess.run(["umount", str(mount_point)], check=False).returncode != 0:
            subprocess.run(["umount", "-l", str(mount_point)], check=False)


def fill(disk: Path, leave: int) -> int:
    """Write a filler file so that between `leave` and `leave + PAGE` bytes stay free."""
    stats = os.statvfs(disk)
    free = stats.f_bavail * stats.f_frsize
    assert free > leave, (free, leave)
    with (disk / "filler").open("wb") as sink:
        sink.write(b"\0" * ((free - leave) // PAGE * PAGE))
    stats = os.statvfs(disk)
    return stats.f_bavail * stats.f_frsize


def test_full_disk_is_refused_before_writing(series: Series, small_disk: Path) -> None:
    target = small_disk / "target"
    install(series.gigaam[series.old], target)
    needed = contents_of(series.gigaam[series.mid]).size
    fill(small_disk, needed // 2)
    before = snapshot(target)
    refused(invoke("bundle", "install", series.gigaam[series.mid], "--target", target), 1,
            "not enough disk space", "the release needs about")  # fmt: skip
    assert_untouched(target, before, series.old)


def test_disk_usage_reporting_too_little_space_is_refused(
    series: Series, target: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    needed = contents_of(series.gigaam[series.mid]).size

    class Usage(NamedTuple):
        total: int
        used: int
        free: int

    monkeypatch.setattr(shutil, "disk_usage", lambda path: Usage(10 * needed, 9 * needed, 1000))
    before = snapshot(target)
    refused(invoke("bundle", "install", series.gigaam[series.mid], "--target", target), 1,
            "not enough disk space", "1,000 are free")  # fmt: skip
    assert_untouched(target, before, series.old)


def test_disk_filling_up_during_install_is_a_clean_refusal(
    series: Series, small_disk: Path
) -> None:
    """BUG (see the report): the free-space check counts file bytes only; when the disk still
    fills up while unpacking (block rounding, bundle.json, another writer), the OSError
    (ENOSPC) escapes as a traceback instead of a refusal."""
    target = small_disk / "target"
    install(series.gigaam[series.old], target)
    needed = contents_of(series.gigaam[series.mid]).size
    free = fill(small_disk, needed)
    assert needed <= free < needed + PAGE  # passes the check, but cannot hold the release
    before = snapshot(target)
    outcome = invoke("bundle", "install", series.gigaam[series.mid], "--target", target,
                     catch_exceptions=True)  # fmt: skip
    refused(outcome, 1, "space")
    assert_untouched(target, before, series.old)


def test_concurrent_install_is_refused(series: Series, target: Path) -> None:
    before = snapshot(target)
    with (target / ".install.lock").open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        bundle = series.gigaam[series.mid]
        refused(invoke("bundle", "install", bundle, "--target", target), 2, "another install")
        refused(invoke("bundle", "rollback", "--target", target), 2, "another install")
        refused(invoke("bundle", "prune", "--target", target), 2, "another install")
        assert_untouched(target, before, series.old)
        fcntl.flock(lock, fcntl.LOCK_UN)
    install(series.gigaam[series.mid], target)
    assert_current(target, series.mid)


def test_reinstalling_the_current_release_is_refused(series: Series, target: Path) -> None:
    before = snapshot(target)
    refused(invoke("bundle", "install", series.gigaam[series.old], "--target", target), 2,
            f"release v{series.old} is already the current one")  # fmt: skip
    assert_untouched(target, before, series.old)


def test_missing_bundle_or_sidecar_is_refused(series: Series, target: Path, tmp_path: Path) -> None:
    before = snapshot(target)
    refused(invoke("bundle", "install", tmp_path / "nothing.tar.zst", "--target", target), 2,
            "no such bundle file")  # fmt: skip
    bundle = copy_bundle(series.gigaam[series.mid], tmp_path / "usb")
    bundle.with_name(bundle.name + ".sha256").unlink()
    refused(invoke("bundle", "install", bundle, "--target", target), 1, ".sha256 is missing")
    assert_untouched(target, before, series.old)


def test_empty_sidecar_is_refused(series: Series, target: Path, tmp_path: Path) -> None:
    """BUG (see the report): a `.sha256` copied as an empty file (an interrupted copy) makes
    `check_sidecars` fail with IndexError (`read_text().split()[0]`): a traceback."""
    bundle = copy_bundle(series.gigaam[series.mid], tmp_path / "usb")
    bundle.with_name(bundle.name + ".sha256").write_text("")
    before = snapshot(target)
    verified = invoke("bundle", "verify", bundle, catch_exceptions=True)
    installed = invoke("bundle", "install", bundle, "--target", target, catch_exceptions=True)
    refused(verified, 1, ".sha256")
    refused(installed, 1, ".sha256")
    assert_untouched(target, before, series.old)


@pytest.mark.parametrize("how", ["absolute", "dotdot"])
def test_crafted_delta_taking_a_file_from_outside_the_base_is_refused(
    series: Series, target: Path, tmp_path: Path, how: str
) -> None:
    """BUG (see the report): `from_base` paths in bundle.json are never checked like archive
    members are; one outside the release makes `_take_from_base` link/copy the file onto
    itself (shutil.SameFileError): a traceback instead of a refusal. (Nothing is written:
    base and staging are siblings, so both joins name the same file.)"""
    members = read_members(series.gigaam[series.mid])
    config = next(m for m in members if m.name == f"{GIGAAM_DIR}/config.json")
    head, *rest = relisted([m for m in members if m is not config])
    outside = tmp_path / "secret.txt"
    outside.write_text("not part of any release\n")
    base = target / "releases" / f"v{series.old}"
    path = str(outside) if how == "absolute" else os.path.relpath(outside, base)
    contents = BundleContents.model_validate_json(head.data)

    def delta(*taken: tuple[str, bytes]) -> Path:
        from_base = [BundleFile.model_construct(path=name, sha256=hashlib.sha256(data).hexdigest(),
                                size=len(data)) for name, data in taken]  # fmt: skip
        made = contents.model_copy(
            update={"base_manifest_version": series.old, "from_base": from_base}
        )
        folder = tmp_path / f"usb-{len(taken)}"
        members = [regular(CONTENTS_NAME, made.to_json().encode()), *rest]
        return write_bundle(members, folder / series.gigaam[series.mid].name)

    before = snapshot(target)
    outcome = invoke("bundle", "install", delta((path, outside.read_bytes()),
                     (config.name, config.data)), "--target", target,
                     catch_exceptions=True)  # fmt: skip
    refused(outcome, 1, path)
    assert_untouched(target, before, series.old)
    # Control: the same hand-made delta, taking only the real unchanged file, installs.
    install(delta((config.name, config.data)), target)
    assert_current(target, series.mid)
    assert (target / "current" / config.name).stat().st_ino == (base / config.name).stat().st_ino


@pytest.fixture
def read_only_copy(series: Series, small_disk: Path) -> Path:
    """The gigaam-only `mid` bundle on a read-only file system (a write-protected USB stick)."""
    bundle = copy_bundle(series.gigaam[series.mid], small_disk / "usb")
    remounted = subprocess.run(["mount", "-o", "remount,ro", str(small_disk)],
                               capture_output=True, text=True, check=False)  # fmt: skip
    if remounted.returncode != 0:
        pytest.skip(f"cannot remount read-only: {remounted.stderr.strip()}")
    return bundle


def test_bundle_on_read_only_media_installs_and_verifies(
    series: Series, target: Path, read_only_copy: Path
) -> None:
    """BUG (see the report): `verify_bundle` creates its scratch folder `.verify-PID` beside
    the bundle, even for an unencrypted one, so `bundle verify` on read-only media fails with
    OSError (EROFS): a traceback. (`bundle install` decrypts into the target and works.)"""
    install(read_only_copy, target)
    assert_current(target, series.mid)
    verified = invoke("bundle", "verify", read_only_copy, catch_exceptions=True)
    assert verified.exit_code == 0, (verified.text, verified.exception)
    assert "OK" in verified.text


# --- 3. SIGKILL during install -----------------------------------------------------------------

KILL_AT = """
import os, pathlib, signal, sys
import pyrage
import offline_asr.asr.release_check as release_check
import offline_asr.delivery.bundle.install as install

def _die(*args, **kwargs):
    os.kill(os.getpid(), signal.SIGKILL)

def _after_decryption(*args, **kwargs):
    real_decrypt(*args, **kwargs)
    _die()

def _replace(self, target):
    if self.name.startswith(".current-"):
        _die()
    return real_replace(self, target)

def _pause(*args, **kwargs):
    os.kill(os.getpid(), signal.SIGSTOP)
    return real_verify(*args, **kwargs)

point = sys.argv[1]
real_decrypt, real_replace = pyrage.decrypt_file, pathlib.Path.replace
real_verify = release_check.verify_models  # install checks a release through it
if point == "decrypted":
    pyrage.decrypt_file = _after_decryption
elif point == "link":
    pathlib.Path.replace = _replace
elif point == "pause":
    release_check.verify_models = _pause
elif point == "verify_models":
    release_check.verify_models = _die
else:
    setattr(install, point, _die)
from offline_asr.cli import app
sys.argv = ["offline-asr", *sys.argv[2:]]
app()
"""
"""`python -c KILL_AT POINT ARGS...`: the CLI `offline-asr ARGS`, SIGKILLed the moment
install.POINT (or `verify_models`, which install's release check calls) runs; or at
`decrypted` (the bundle was just decrypted), `link` (the temporary `.current-PID` link is about
to replace `current`); or stopped (SIGSTOP) at `pause`, before the unpacked release is
verified."""


def kill_when(process: subprocess.Popen[bytes], ready: Callable[[], bool], what: str) -> None:
    """SIGKILL the process as soon as `ready()`; fail if it ends on its own first."""
    deadline = time.monotonic() + 180
    while not ready():
        if process.poll() is not None:
            pytest.fail(f"the install ended ({process.returncode}) before {what}")
        if time.monotonic() > deadline:
            process.kill()
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.002)
    os.kill(process.pid, signal.SIGKILL)
    assert process.wait(timeout=60) == -signal.SIGKILL, what


def killed_at(point: str, bundle: Path, target: Path, log: Path, *args: str | Path) -> None:
    """`bundle install BUNDLE --target TARGET ARGS`, SIGKILLed at `point` (see KILL_AT)."""
    killed(point, log, "bundle", "install", bundle, "--target", target, *args)


def killed(point: str, log: Path, *command: str | Path) -> None:
    with log.open("ab") as sink:
        done = subprocess.run(
            [sys.executable, "-c", KILL_AT, point, *map(str, command)],
            stdout=sink, stderr=subprocess.STDOUT, timeout=300, check=False,
        )  # fmt: skip
    assert done.returncode == -signal.SIGKILL, log.read_text(errors="replace")


def leftovers(target: Path) -> list[str]:
    """What killed installs and rollbacks leave: staging folders and temporary links."""
    staging = [f"releases/{p.name}" for p in (target / "releases").glob(".staging-*")]
    return sorted(staging + [p.name for p in target.glob(".current-*")])


ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"


def only_owner_can_read(path: Path, root: Path) -> bool:
    """The file, or a folder between it and `root`, gives group and others no access."""
    chain = [path, *(p for p in path.parents if p.is_relative_to(root) and p != root)]
    return any(p.stat().st_mode & 0o077 == 0 for p in chain)


@pytest.mark.slow
def test_killed_installs_leave_no_readable_plaintext_and_are_cleaned_up(
    series: Series, armed: Armed, target: Path, tmp_path: Path
) -> None:
    log = tmp_path / "install.log"
    killed_at("decrypted", armed.encrypted, target, log, "--identity", armed.identity)
    plaintext = [p for p in (target / "releases").rglob("*")
                 if p.is_file() and p.read_bytes()[:4] == ZSTD_MAGIC]  # fmt: skip
    assert plaintext, "the kill should have left the decrypted bundle behind"
    exposed = [p for p in plaintext if not only_owner_can_read(p, target)]
    assert exposed == [], [(p, oct(p.stat().st_mode)) for p in exposed]
    assert [name.split("-")[0] for name in leftovers(target)] == ["releases/.staging"]
    pruned = invoke("bundle", "prune", "--target", target, "--keep", "5")
    assert pruned.exit_code == 0, pruned.text
    assert "removed 1 leftovers of killed installs: releases/.staging-" in pruned.text
    assert leftovers(target) == []

    killed_at("verify_models", series.gigaam[series.mid], target, log)
    assert [name.split("-")[0] for name in leftovers(target)] == ["releases/.staging"]
    killed_at("link", series.gigaam[series.mid], target, log)  # v{mid} complete, not current
    assert [name.split("-")[0] for name in leftovers(target)] == [".current"]  # staging cleaned
    assert_current(target, series.old)
    assert invoke("bundle", "prune", "--target", target, "--keep", "5").exit_code == 0
    assert leftovers(target) == []
    assert releases_in(target) == [f"v{series.old}", f"v{series.mid}"]
    assert_current(target, series.old)

    # The next install cleans up too, and a killed rollback leaves a link that prune removes.
    killed_at("link", series.gigaam[series.mid], target, log)
    assert leftovers(target) != []
    install(series.gigaam[series.mid], target)
    assert leftovers(target) == []
    assert_current(target, series.mid)
    killed("link", log, "bundle", "rollback", "--target", target)
    assert_current(target, series.mid)
    assert [name for name in leftovers(target) if name.startswith(".current-")] != []
    assert invoke("bundle", "prune", "--target", target, "--keep", "5").exit_code == 0
    assert leftovers(target) == []


def test_cleaning_up_never_touches_a_live_install(series: Series, target: Path) -> None:
    """An install stopped half-way holds the install lock: prune, rollback and another install
    are refused and its staging folder stays; resumed, it finishes."""
    process = subprocess.Popen(
        [sys.executable, "-c", KILL_AT, "pause", "bundle", "install",
         str(series.gigaam[series.mid]), "--target", str(target)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        _, status = os.waitpid(process.pid, os.WUNTRACED)
        assert os.WIFSTOPPED(status), status
        live = leftovers(target)
        assert live == [f"releases/.staging-{process.pid}"], live
        for args in (("prune", "--keep", "1"), ("rollback",),
                     ("install", series.gigaam[series.new])):  # fmt: skip
            outcome = invoke("bundle", *args, "--target", target)
            refused(outcome, 2, "another install or rollback is running")
            assert leftovers(target) == live
    finally:
        os.kill(process.pid, signal.SIGCONT)
    output, _ = process.communicate(timeout=120)
    assert process.returncode == 0, output.decode(errors="replace")
    assert leftovers(target) == []
    assert_current(target, series.mid)


@pytest.mark.slow
def test_sigkill_during_install_keeps_the_previous_release(
    series: Series, full_mid: Path, target: Path, tmp_path: Path
) -> None:
    releases = target / "releases"
    log = tmp_path / "install.log"
    tiny_size = next(
        a.size
        for m in series.store_a.load().models
        for a in m.artifacts
        if f"models/{a.path}" == TINY_BIN
    )

    def staged(process: subprocess.Popen[bytes], relative: str, size: int = 0) -> bool:
        path = releases / f".staging-{process.pid}" / relative
        return path.is_file() and path.stat().st_size >= size

    points: list[tuple[str, Callable[[subprocess.Popen[bytes], float], bool]]] = [
        ("0.05 s after the start", lambda p, start: time.monotonic() - start >= 0.05),
        ("the staging folder appears", lambda p, start: (releases / f".staging-{p.pid}").is_dir()),
        ("the lock files are unpacked", lambda p, start: staged(p, "locks/uv.lock")),
        ("model.bin is half written", lambda p, start: staged(p, TINY_BIN, tiny_size // 2)),
    ]
    for what, ready in points:
        with log.open("ab") as sink:
            process = subprocess.Popen(
                [str(EXE), "bundle", "install", str(full_mid), "--target", str(target)],
                stdout=sink, stderr=subprocess.STDOUT,
            )  # fmt: skip
        kill_when(process, functools.partial(ready, process, time.monotonic()), what)
        assert_current(target, series.old)
        assert f"v{series.mid}" not in releases_in(target), what

    # Everything unpacked, being checked against the manifest.
    killed_at("verify_models", full_mid, target, log)
    assert_current(target, series.old)
    stale = [name for name in releases_in(target) if name.startswith(".staging-")]
    assert stale, "the kills should have left staging folders behind"

    outcome = install(full_mid, target)
    assert "Traceback" not in outcome.text
    assert releases_in(target) == [f"v{series.old}", f"v{series.mid}"]  # stale staging removed
    assert_current(target, series.mid)


def test_sigkill_between_rename_and_switch_leaves_a_usable_target(
    series: Series, target: Path, tmp_path: Path
) -> None:
    """BUG (see the report): killed after `releases/.staging-*` was renamed to `releases/vN`
    but before `current` moved, the complete release stays; the next install of that bundle
    is then refused ("already installed") and neither `rollback` nor `prune` can help."""
    bundle = series.gigaam[series.mid]
    killed_at("switch_current", bundle, target, tmp_path / "install.log")
    assert_current(target, series.old)
    outcome = invoke("bundle", "install", bundle, "--target", target)
    assert outcome.exit_code == 0, outcome.text
    assert_current(target, series.mid)


# --- 4. rollback and prune ---------------------------------------------------------------------


def listed(target: Path) -> list[str]:
    outcome = invoke("bundle", "list", "--target", target)
    assert outcome.exit_code == 0, outcome.text
    return [" ".join(line.split()[:2]) if line.startswith("*") else line.split()[0]
            for line in outcome.stdout.splitlines()]  # fmt: skip


def test_rollback_list_and_prune(series: Series, tmp_path: Path) -> None:
    old, mid, new = series.old, series.mid, series.new
    target = tmp_path / "target"
    empty = invoke("bundle", "rollback", "--target", target)
    refused(empty, 2, "no current release")
    for version in (old, mid, new):
        install(series.gigaam[version], target)
    assert listed(target) == [f"v{old}", f"v{mid}", f"* v{new}"]
    info = invoke("bundle", "list", "--target", target).stdout
    assert series.gigaam[new].name in info

    back = invoke("bundle", "rollback", "--target", target)
    assert back.exit_code == 0 and f"current -> v{mid}" in back.text, back.text
    assert listed(target) == [f"v{old}", f"* v{mid}", f"v{new}"]
    assert_current(target, mid)
    assert invoke("bundle", "rollback", "--target", target).exit_code == 0
    assert_current(target, old)
    before = snapshot(target)
    refused(invoke("bundle", "rollback", "--target", target), 2,
            f"v{old} is the oldest release; nothing to roll back to")  # fmt: skip
    assert_untouched(target, before, old)

    # Keep the newest one and, always, the current one.
    pruned = invoke("bundle", "prune", "--keep", "1", "--target", target)
    assert pruned.exit_code == 0 and f"removed v{mid}" in pruned.text, pruned.text
    assert listed(target) == [f"* v{old}", f"v{new}"]
    assert_current(target, old)
    assert invoke("bundle", "prune", "--keep", "0", "--target", target).exit_code == 2

    # Current is the newest: prune --keep 1 leaves it alone.
    other = tmp_path / "other"
    install(series.gigaam[old], other)
    install(series.gigaam[mid], other)
    pruned = invoke("bundle", "prune", "--keep", "1", "--target", other)
    assert pruned.exit_code == 0 and f"removed v{old}" in pruned.text, pruned.text
    assert listed(other) == [f"* v{mid}"]
    assert_current(other, mid)
    again = invoke("bundle", "prune", "--keep", "1", "--target", other)
    assert "removed nothing" in again.text
    refused(invoke("bundle", "rollback", "--target", other), 2, "oldest release")
    assert_current(other, mid)


def _altered_file(release: Path) -> str:
    path = release / GIGAAM_DIR / "v3_vocab.txt"
    data = bytearray(path.read_bytes())
    data[0] ^= 1
    path.write_bytes(bytes(data))
    return f"{GIGAAM_DIR}/v3_vocab.txt"


def _missing_file(release: Path) -> str:
    (release / GIGAAM_DIR / "config.json").unlink()
    return f"{GIGAAM_DIR}/config.json"


def _missing_manifest(release: Path) -> str:
    (release / MANIFEST).unlink()
    return MANIFEST


def _unlisted_file(release: Path) -> str:
    (release / GIGAAM_DIR / "extra.onnx").write_bytes(b"loaded by nobody, listed nowhere")
    return f"{GIGAAM_DIR}/extra.onnx"


def _manifest_of_another_release(release: Path) -> str:
    manifest = json.loads((release / MANIFEST).read_text())
    manifest["manifest_version"] += 1
    (release / MANIFEST).write_text(json.dumps(manifest))
    return MANIFEST


@pytest.mark.parametrize(
    "damage",
    [_altered_file, _missing_file, _missing_manifest, _unlisted_file, _manifest_of_another_release],
    ids=["altered", "missing", "no-manifest", "unlisted", "other-version"],
)
def test_rollback_to_a_damaged_release_is_refused(
    series: Series, tmp_path: Path, damage: Callable[[Path], str]
) -> None:
    """The release rolled back to is verified first: refused, naming the file, nothing switched."""
    target = tmp_path / "target"
    install(series.gigaam[series.old], target)
    install(series.gigaam[series.mid], target)
    named = damage(target / "releases" / f"v{series.old}")
    before = snapshot(target)
    refused(invoke("bundle", "rollback", "--target", target, catch_exceptions=True), 1,
            f"v{series.old}", named, "Nothing was switched")  # fmt: skip
    assert_untouched(target, before, series.mid)


# --- 5. delta bundles --------------------------------------------------------------------------


def test_delta_holds_only_the_changed_artifacts(series: Series) -> None:
    before = Manifest.model_validate_json(series.manifest_a.read_text())
    after = series.store_b.load()
    old = {(a.path, a.sha256) for m in before.models for a in m.artifacts}
    changed = {f"models/{a.path}" for m in after.models for a in m.artifacts
               if (a.path, a.sha256) not in old}  # fmt: skip
    assert changed == {f"{GIGAAM_DIR}/v3_ctc.onnx"}  # the retrained weights, nothing else

    contents = contents_of(series.delta)
    assert contents.manifest_version == series.new
    assert contents.base_manifest_version == series.mid
    assert sorted(contents.models) == sorted(m.id for m in after.models)
    artifacts = {f.path for f in contents.files} - {"INSTALL.txt", "models/manifest.json"}
    artifacts -= {f"locks/{name}" for name in LOCK_FILES}
    artifacts = {p for p in artifacts if not p.endswith("/checksum.txt")}
    # The golden files always travel (a few kB): install checks them against the manifest.
    goldens = {p for p in artifacts if p.startswith("models/goldens/")}
    # gigaam was re-prepared without one; every other model keeps its golden
    assert goldens == {f"models/goldens/{m.id}.json" for m in after.models if m.id != GIGAAM}
    assert f"models/goldens/{TINY}.json" in goldens
    assert artifacts - goldens == changed
    every = {f"models/{a.path}" for m in after.models for a in m.artifacts}
    assert {f.path for f in contents.from_base} == every - changed
    assert TINY_BIN in {f.path for f in contents.from_base}
    assert [m.name for m in read_members(series.delta)][1:] == [f.path for f in contents.files]
    install_text = next(m for m in read_members(series.delta) if m.name == "INSTALL.txt").data
    assert f"Delta over manifest_version {series.mid}".encode() in install_text


@pytest.mark.slow
def test_delta_installs_over_its_base(
    series: Series, full_mid: Path, tmp_path: Path, record_property: Callable[[str, object], None]
) -> None:
    full_new = build(series.store_b, tmp_path / "full-new", locks=series.locks)
    full_size, delta_size = full_new.stat().st_size, series.delta.stat().st_size
    record_property("bundle_sizes", {"full": full_size, "delta": delta_size})
    print(f"\nfull bundle v{series.new}: {full_size:,} bytes; delta over v{series.mid}: "
          f"{delta_size:,} bytes ({delta_size / full_size:.2%})")  # fmt: skip
    assert delta_size * 20 < full_size

    target = tmp_path / "target"
    install(full_mid, target)
    base = target / "releases" / f"v{series.mid}"

    # An altered file in the base release is not taken over.
    config = base / GIGAAM_DIR / "config.json"
    original = config.read_bytes()
    config.write_bytes(original.replace(b"64", b"65"))
    refused(invoke("bundle", "install", series.delta, "--target", target), 1,
            f"{GIGAAM_DIR}/config.json in the base release v{series.mid} was altered")  # fmt: skip
    config.write_bytes(original)
    assert_current(target, series.mid)
    assert releases_in(target) == [f"v{series.mid}"]

    install(series.delta, target)
    assert_current(target, series.new)
    new = target / "releases" / f"v{series.new}"
    assert (new / "models" / "manifest.json").read_bytes() == (
        series.store_b.manifest_path.read_bytes()
    )
    # Unchanged files are hard links to the base release's; the changed one is new.
    for item in contents_of(series.delta).from_base:
        assert (new / item.path).stat().st_ino == (base / item.path).stat().st_ino, item.path
    onnx = f"{GIGAAM_DIR}/v3_ctc.onnx"
    assert (new / onnx).stat().st_ino != (base / onnx).stat().st_ino
    assert sha256_of(new / onnx) != sha256_of(base / onnx)
    # The base release is still complete: rolling back to it works.
    assert invoke("bundle", "rollback", "--target", target).exit_code == 0
    assert_current(target, series.mid)
