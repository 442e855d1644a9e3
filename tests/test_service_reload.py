"""Zero-downtime model updates: `serve --target` follows the target's `current` (SIGHUP,
`POST /admin/reload`, opt-in polling), verifies a release completely before it switches, lets
requests in flight finish on the release they started on, and refuses a damaged release while
the old one keeps serving."""

from __future__ import annotations

import json
import os
import shutil
import signal
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx2 as httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from offline_asr.constants import CLIPS_DIR
from offline_asr.delivery.bundle.build import LOCK_FILES
from offline_asr.registry.store import ModelStore
from support.bundles import copy_store, invoke, prepare_retrained_gigaam
from support.helpers import REPO
from support.server import Server, free_port, running_server, serve_process

GIGAAM = "gigaam-v3-ctc-testtiny"
ONNX = "models/gigaam/v3-ctc-testtiny/v3_ctc.onnx"
RU = CLIPS_DIR / "ru_short.wav"
KEY = "reload-test-key"
EXE = Path(sys.executable).with_name("offline-asr")
PHASE_S = 6.0  # load before, between and after the switches: about 25 s in all

pytestmark = pytest.mark.slow


@dataclass(frozen=True)
class Releases:
    old: int
    new: int
    bundles: dict[int, Path]


def _build(store: ModelStore, out: Path, locks: Path) -> Path:
    outcome = invoke("bundle", "build", "--out", out, "--locks-from", locks, "--models", GIGAAM,
                     "--manifest", store.manifest_path)  # fmt: skip
    assert outcome.exit_code == 0, outcome.text
    return next(p for p in out.glob("offline_bundle_v*.tar.zst"))


@pytest.fixture(scope="module")
def releases(full_store: ModelStore, tmp_path_factory: pytest.TempPathFactory) -> Releases:
    """Two GigaAM-only bundles: `old`, and `new` with the model retrained (its smoke test and
    golden output recorded again)."""
    work = tmp_path_factory.mktemp("reload")
    locks = work / "locks"
    locks.mkdir()
    for name in LOCK_FILES:
        shutil.copy2(REPO / name, locks / name)
    store_a = copy_store(full_store, work / "a", without=["whisper"])
    old = store_a.load().manifest_version
    bundle_old = _build(store_a, work / "dist-old", locks)
    store_b = copy_store(store_a, work / "b")
    prepare_retrained_gigaam(store_b, work / "retrained")  # its smoke test recorded again
    new = store_b.load().manifest_version
    assert new == old + 1
    return Releases(old, new, {old: bundle_old, new: _build(store_b, work / "dist-new", locks)})


def _install(bundle: Path, target: Path, *args: str | Path, env: dict[str, str] | None = None
             ) -> str:  # fmt: skip
    outcome = invoke("bundle", "install", bundle, "--target", target, *args, env=env)
    assert outcome.exit_code == 0, outcome.text
    return outcome.text


@contextmanager
def _serving(target: Path, log: Path, *args: str, env: dict[str, str] | None = None
             ) -> Iterator[Server]:  # fmt: skip
    nowhere = log.parent / "no-store" / "manifest.json"  # --target wins over --manifest
    environment = {"OFFLINE_ASR_API_KEYS": KEY, **(env or {})}
    with running_server(nowhere, "--target", str(target), "--model", GIGAAM, *args,
                        env=environment, log=log) as server:  # fmt: skip
        yield server


def _client(url: str) -> httpx.Client:
    return httpx.Client(base_url=url, timeout=60, headers={"Authorization": f"Bearer {KEY}"})


def _transcribe(http: httpx.Client, request_id: str = "") -> httpx.Response:
    return http.post(
        "/v1/audio/transcriptions",
        files={"file": (RU.name, RU.read_bytes(), "audio/wav")},
        data={"model": GIGAAM, "response_format": "verbose_json"},
        headers={"X-Request-ID": request_id} if request_id else {},
    )


def _served_version(response: httpx.Response) -> int:
    """The release that served a transcription, as the body and the header name it."""
    assert response.status_code == 200, response.text
    version = int(response.json()["x_offline_asr"]["manifest_version"])
    assert int(response.headers["x-manifest-version"]) == version
    return version


def _ready(http: httpx.Client) -> dict[str, Any]:
    response = http.get("/ready")
    assert response.status_code == 200, response.text
    payload: dict[str, Any] = response.json()
    return payload


def _wait_serving(http: httpx.Client, version: int, timeout: float = 120) -> float:
    """Poll /ready until it says `version` is served; the time it did."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if _ready(http)["manifest_version"] == version:
            return time.monotonic()
        time.sleep(0.05)
    pytest.fail(f"the server did not switch to v{version}: {_ready(http)}")


@dataclass
class Answer:
    request_id: str
    sent: float
    done: float
    version: int | None
    failure: str | None


@dataclass
class Load:
    """`clients` threads sending transcriptions back to back until stopped."""

    url: str
    clients: int = 4
    answers: list[Answer] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _threads: list[threading.Thread] = field(default_factory=list)

    def _run(self, number: int) -> None:
        with _client(self.url) as http:
            count = 0
            while not self._stop.is_set():
                count += 1
                request_id, sent = f"load-{number}-{count}", time.monotonic()
                try:
                    response = _transcribe(http, request_id)
                    version, failure = _served_version(response), None
                except (AssertionError, httpx.HTTPError, ValueError, KeyError) as error:
                    version, failure = None, repr(error)
                self.answers.append(Answer(request_id, sent, time.monotonic(), version, failure))

    def __enter__(self) -> Load:
        for number in range(self.clients):
            thread = threading.Thread(target=self._run, args=(number,), daemon=True)
            thread.start()
            self._threads.append(thread)
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=120)


def _metric(url: str, name: str, **labels: str) -> list[tuple[dict[str, str], float]]:
    with _client(url) as http:
        text = http.get("/metrics").text
    return [
        (sample.labels, sample.value)
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == name and labels.items() <= sample.labels.items()
    ]


def test_updates_and_a_rollback_under_load_fail_no_request(
    releases: Releases, tmp_path: Path
) -> None:
    """4 clients transcribe without pause while a new release (the model retrained) is
    installed and the server asked to reload (URL, with the key from the environment), then
    rolled back (pidfile: SIGHUP). No request fails; each names the old or the new release,
    and every request sent after a switch names the release switched to."""
    old, new = releases.old, releases.new
    target, pidfile, audit = tmp_path / "srv", tmp_path / "run" / "serve.pid", tmp_path / "a.jsonl"
    _install(releases.bundles[old], target)
    env = {"OFFLINE_ASR_AUDIT_LOG": str(audit)}
    with (
        _serving(target, tmp_path / "serve.log", "--pidfile", str(pidfile), env=env) as server,
        _client(server.url) as http,
    ):
        assert int(pidfile.read_text()) == server.process.pid
        with Load(server.url) as load:
            time.sleep(PHASE_S)
            notified = _install(releases.bundles[new], target, "--notify", server.url,
                                env={"OFFLINE_ASR_ADMIN_KEY": KEY})  # fmt: skip
            assert f"serves v{new}" in notified, notified
            switched_new = time.monotonic()
            assert _ready(http)["manifest_version"] == new  # the answer came after the switch
            time.sleep(PHASE_S)
            rolling_back = time.monotonic()
            rolled = invoke("bundle", "rollback", "--target", target, "--notify", pidfile)
            assert rolled.exit_code == 0, rolled.text
            assert f"SIGHUP to {server.process.pid}" in rolled.text, rolled.text
            switched_old = _wait_serving(http, old)
            time.sleep(PHASE_S)
        rows = {row["id"]: row for row in http.get("/v1/models").json()["data"]}
    answers = load.answers
    assert [a for a in answers if a.failure] == []
    assert {a.version for a in answers} == {old, new}
    before = [a.version for a in answers if a.done < switched_new - PHASE_S / 2]
    on_new = [a.version for a in answers if a.sent > switched_new and a.done < rolling_back]
    after = [a.version for a in answers if a.sent > switched_old]
    assert before and on_new and after, (len(before), len(on_new), len(after))
    assert set(before) == {old} and set(on_new) == {new} and set(after) == {old}
    # The audit log agrees with every answer, request by request.
    lines = [json.loads(line) for line in audit.read_text().splitlines()]
    logged = {line["request_id"]: line for line in lines if line["event"] == "transcription"}
    assert {a.request_id: a.version for a in answers} == {
        a.request_id: logged[a.request_id]["manifest_version"] for a in answers
    }
    reloads = [line for line in lines if line["event"] == "reload"]
    assert [(r["outcome"], r["manifest_version"]) for r in reloads] == [
        ("switched", new), ("switched", old)
    ]  # fmt: skip
    # After the switches, only the release switched to is held.
    assert rows[GIGAAM]["manifest_version"] == old
    assert rows[GIGAAM]["loaded_from"] == [old]


def test_a_release_with_one_altered_byte_is_refused_and_the_old_keeps_serving(
    releases: Releases, tmp_path: Path
) -> None:
    old, new = releases.old, releases.new
    target = tmp_path / "srv"
    _install(releases.bundles[old], target)
    log = tmp_path / "serve.log"
    with _serving(target, log) as server, _client(server.url) as http:
        _install(releases.bundles[new], target)  # current -> v{new}; the server keeps v{old}
        assert _served_version(_transcribe(http)) == old
        damaged = target / "releases" / f"v{new}" / ONNX
        data = bytearray(damaged.read_bytes())
        data[len(data) // 2] ^= 0x01
        damaged.write_bytes(bytes(data))

        without_key = httpx.post(f"{server.url}/admin/reload", timeout=60)
        assert without_key.status_code == 401, without_key.text
        refused = http.post("/admin/reload")
        assert refused.status_code == 422, refused.text
        assert refused.json()["error"]["code"] == "release_refused"
        assert "v3_ctc.onnx" in refused.json()["error"]["message"]
        assert "sha256" in refused.json()["error"]["message"]

        ready = _ready(http)
        assert ready["manifest_version"] == old
        assert ready["reload"]["outcome"] == "refused"
        assert ready["reload"]["manifest_version"] == new
        assert "v3_ctc.onnx" in ready["reload"]["error"]
        assert _served_version(_transcribe(http)) == old
        refusals = _metric(server.url, "offline_asr_reload_refused")
        assert len(refusals) == 1 and refusals[0][1] == 1, refusals
        assert "v3_ctc.onnx" in refusals[0][0]["reason"]
        assert refusals[0][0]["manifest_version"] == str(new)
        assert _metric(server.url, "offline_asr_reloads_total", outcome="refused")[0][1] == 1
        assert _metric(server.url, "offline_asr_serving_manifest_version")[0][1] == old

        os.kill(server.process.pid, signal.SIGHUP)  # the same refusal, in the log
        deadline = time.monotonic() + 60
        while server.output().count("v3_ctc.onnx") < 2 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert server.output().count("v3_ctc.onnx") >= 2, server.output()
        assert server.process.poll() is None
        assert _served_version(_transcribe(http)) == old
        rows = {row["id"]: row for row in http.get("/v1/models").json()["data"]}
        assert rows[GIGAAM]["loaded_from"] == [old]


def test_polling_follows_current_when_asked(releases: Releases, tmp_path: Path) -> None:
    old, new = releases.old, releases.new
    target = tmp_path / "srv"
    _install(releases.bundles[old], target)
    env = {"OFFLINE_ASR_RELOAD_POLL_S": "0.5"}
    with _serving(target, tmp_path / "serve.log", env=env) as server, _client(server.url) as http:
        assert _served_version(_transcribe(http)) == old
        _install(releases.bundles[new], target)
        _wait_serving(http, new)
        assert _served_version(_transcribe(http)) == new


def test_a_second_reload_while_one_runs_is_refused(releases: Releases, tmp_path: Path) -> None:
    """One reload at a time: requests that come while one runs are told so (409), not queued."""
    target = tmp_path / "srv"
    _install(releases.bundles[releases.old], target)
    with _serving(target, tmp_path / "serve.log") as server:
        _install(releases.bundles[releases.new], target)
        start = threading.Barrier(3)
        answers: list[httpx.Response] = []

        def ask() -> None:
            with _client(server.url) as http:
                start.wait()
                answers.append(http.post("/admin/reload"))

        threads = [threading.Thread(target=ask) for _ in range(3)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=120)
    outcomes = sorted(
        a.json()["status"] if a.status_code == 200 else a.json()["error"]["code"] for a in answers
    )
    assert outcomes.count("switched") == 1, outcomes
    assert "reload_in_progress" in outcomes, outcomes
    assert set(outcomes) <= {"switched", "reload_in_progress", "unchanged"}, outcomes
    assert {a.status_code for a in answers} <= {200, 409}


# A server SIGKILLed at a point of the switch: `python -c KILL_AT MODULE:ATTR ARGS` runs
# `offline-asr ARGS` with MODULE.ATTR made to SIGKILL the process when it is called.
KILL_AT = """
import importlib, os, signal, sys
module, attr = sys.argv[1].split(":")
owner = importlib.import_module(module)
*path, name = attr.split(".")
for part in path:
    owner = getattr(owner, part)
setattr(owner, name, lambda *args, **kwargs: os.kill(os.getpid(), signal.SIGKILL))
from offline_asr.cli import app
sys.argv = ["offline-asr", *sys.argv[2:]]
app()
"""


@pytest.mark.parametrize(
    "point",
    [
        "offline_asr.service.reload:snapshot_problems",  # hashing the new release
        "offline_asr.service.reload:smoke_problems",  # its smoke tests
        "offline_asr.service.pool:ModelPool.switch",  # its models loaded beside the old ones
        "offline_asr.service.served_release:ServedRelease.unload",  # switched, unloading the old
    ],
    ids=["verifying", "smoke-testing", "loaded-beside", "unloading-old"],
)
def test_a_server_killed_during_a_switch_restarts_on_one_whole_release(
    releases: Releases, tmp_path: Path, point: str
) -> None:
    """SIGKILL at each step of a switch (the install had switched `current` already); the
    restarted server serves one whole release (every model, every answer, its state file)."""
    old, new = releases.old, releases.new
    target, pidfile = tmp_path / "srv", tmp_path / "serve.pid"
    _install(releases.bundles[old], target)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    args = ["serve", "--target", str(target), "--model", GIGAAM, "--port", str(port),
            "--pidfile", str(pidfile)]  # fmt: skip
    env = {**os.environ, "OFFLINE_ASR_API_KEYS": KEY}
    log = tmp_path / "killed.log"
    with serve_process([sys.executable, "-c", KILL_AT, point, *args], env=env, log=log,
                       url=url) as process:  # fmt: skip
        _install(releases.bundles[new], target)
        os.kill(process.pid, signal.SIGHUP)
        assert process.wait(timeout=120) == -signal.SIGKILL, log.read_text()
    stale = invoke("doctor", "--target", target, "--server", pidfile, "--json")
    server_check = [c for c in json.loads(stale.stdout)["checks"] if c["area"] == "server"]
    assert [c["status"] for c in server_check] == ["fail"], server_check
    assert "no server" in server_check[0]["detail"], server_check

    with (
        serve_process([str(EXE), *args], env=env, log=tmp_path / "again.log", url=url) as again,
        _client(url) as http,
    ):
        assert _ready(http)["manifest_version"] == new
        rows = [row for row in http.get("/v1/models").json()["data"] if row["engine"] != "router"]
        assert {row["manifest_version"] for row in rows} == {new}
        assert {tuple(row["loaded_from"]) for row in rows if row["loaded"]} == {(new,)}
        assert _served_version(_transcribe(http)) == new
        state = json.loads(pidfile.with_name(pidfile.name + ".json").read_text())
        assert (state["pid"], state["manifest_version"]) == (again.pid, new)
        doctor = invoke("doctor", "--target", target, "--server", pidfile, "--json")
        server_check = [c for c in json.loads(doctor.stdout)["checks"] if c["area"] == "server"]
        assert [c["status"] for c in server_check] == ["ok"], server_check
        assert f"serves v{new}" in server_check[0]["detail"]
        assert str(again.pid) in server_check[0]["detail"]
        by_url = invoke("doctor", "--target", target, "--server", url, "--json")
        assert f"serves v{new}" in by_url.stdout
