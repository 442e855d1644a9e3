"""`batch --ray` and `serve --ray` on a real two-node Ray cluster on loopback: the same
transcripts as the local path, a node whose store has one altered byte refuses, and nothing of
the cluster or the job connects anywhere but loopback (traced)."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx2 as httpx
import pytest

from offline_asr.constants import CLIPS_DIR
from offline_asr.registry.store import ModelStore
from support.batch_files import distinct_speech, outcome, read_lines
from support.bundles import copy_store
from support.helpers import run_cli
from support.ray_cluster import HEAD, Cluster, free_port, two_node_cluster
from support.syscalls import TRACED_NETWORK, Call, connections, traced

TINY = "whisper-tiny.en"
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def cluster(full_store: ModelStore, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    root = tmp_path_factory.mktemp("second-node")
    base = full_store.get(full_store.load(), "whisper-base").path
    second = copy_store(full_store, root / "store", without=[base])
    with two_node_cluster(second.manifest_path, root) as running:
        yield running


@pytest.fixture(scope="module")
def speech(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return distinct_speech(tmp_path_factory.mktemp("speech") / "in", 4)


def _batch(store: ModelStore, *args: str | Path) -> tuple[int, str]:
    result = run_cli("batch", *args, "--model", TINY, "--manifest", store.manifest_path)
    return result.exit_code, result.stderr


def test_batch_on_ray_gives_the_local_transcripts_from_both_nodes(
    full_store: ModelStore, cluster: Cluster, speech: Path, tmp_path: Path
) -> None:
    local, on_ray = tmp_path / "local.jsonl", tmp_path / "ray.jsonl"
    assert _batch(full_store, speech, "--out", local)[0] == 0
    code, stderr = _batch(full_store, speech, "--out", on_ray, "--ray", cluster.address)
    assert code == 0, stderr
    assert outcome(on_ray) == outcome(local)
    nodes = {line["node"] for line in read_lines(on_ray)}
    assert len(nodes) == 2 and any(str(cluster.second_manifest) in node for node in nodes)


@pytest.fixture
def altered_second_node(cluster: Cluster) -> Iterator[Path]:
    """One byte of the second node's whisper-tiny.en weights flipped, size unchanged."""
    weights = cluster.second_manifest.parent / "whisper" / "tiny.en" / "model.bin"
    original = weights.read_bytes()
    weights.write_bytes(original[:1000] + bytes([original[1000] ^ 1]) + original[1001:])
    yield weights
    weights.write_bytes(original)


def test_a_node_with_one_altered_byte_refuses_and_the_job_says_which(
    full_store: ModelStore,
    cluster: Cluster,
    speech: Path,
    tmp_path: Path,
    altered_second_node: Path,
) -> None:
    local, on_ray = tmp_path / "local.jsonl", tmp_path / "ray.jsonl"
    assert _batch(full_store, speech, "--out", local)[0] == 0
    code, stderr = _batch(full_store, speech, "--out", on_ray, "--ray", cluster.address)
    assert code == 1, stderr
    flat = " ".join(stderr.split())
    assert f"(store {cluster.second_manifest}) refused to load {TINY}" in flat
    assert "whisper/tiny.en/model.bin has sha256" in flat
    # Every file was still done, and only by the node whose weights verified.
    assert outcome(on_ray) == outcome(local)
    assert not any(str(cluster.second_manifest) in line["node"] for line in read_lines(on_ray))


def _serve(store: ModelStore, cluster: Cluster, port: int) -> subprocess.Popen[str]:
    exe = Path(sys.executable).with_name("offline-asr")
    return subprocess.Popen(
        [str(exe), "serve", "--ray", cluster.address, "--replicas", "2", "--port", str(port),
         "--model", TINY, "--manifest", str(store.manifest_path)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip


def _stop(process: subprocess.Popen[str]) -> str:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
    output, _ = process.communicate(timeout=120)
    return output


def test_serve_on_ray_answers_like_the_local_server(
    full_store: ModelStore, cluster: Cluster
) -> None:
    port = free_port()
    process = _serve(full_store, cluster, port)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 400
        while True:
            assert process.poll() is None, _stop(process)
            assert time.monotonic() < deadline, "serve --ray did not become ready"
            try:
                if httpx.get(f"{url}/ready", timeout=5).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(1)
        texts = set()
        for _ in range(4):
            with (CLIPS_DIR / "en_short.wav").open("rb") as audio:
                answer = httpx.post(
                    f"{url}/v1/audio/transcriptions", files={"file": audio},
                    data={"model": TINY, "response_format": "verbose_json"}, timeout=120,
                )  # fmt: skip
            assert answer.status_code == 200, answer.text
            texts.add(answer.json()["text"])
        local = run_cli("transcribe", CLIPS_DIR / "en_short.wav", "--model", TINY,
                        "--manifest", full_store.manifest_path)  # fmt: skip
        assert texts == {local.stdout.strip()}
    finally:
        _stop(process)


def test_serve_on_ray_refuses_to_start_with_an_altered_node(
    full_store: ModelStore, cluster: Cluster, altered_second_node: Path
) -> None:
    process = _serve(full_store, cluster, free_port())
    try:
        code = process.wait(timeout=300)
    finally:
        output = _stop(process)
    assert code == 1, output
    flat = " ".join(output.split())
    assert f"(store {cluster.second_manifest}) refused to serve" in flat
    assert "whisper/tiny.en/model.bin has sha256" in flat


def test_the_cluster_and_a_job_on_it_stay_on_loopback(
    full_store: ModelStore, cluster: Cluster, speech: Path, tmp_path: Path
) -> None:
    """The driver of `batch --ray` and every process of both nodes under strace: no connection
    leaves loopback and no name is looked up, though the driver's environment asks Ray to
    report usage; on the nodes, only Ray's cloud-metadata question at start (see `ray_node`).
    The driver is given the head as 127.0.0.1, which Ray would swap for the host's address.
    The nodes' traces hold whatever the earlier tests of this module did too."""
    log, out = tmp_path / "driver.trace", tmp_path / "ray.jsonl"
    exe = Path(sys.executable).with_name("offline-asr")
    head = cluster.address.replace(HEAD, "127.0.0.1")  # the head listens on every address
    command = [str(exe), "batch", str(speech), "--out", str(out), "--model", TINY,
               "--manifest", str(full_store.manifest_path), "--ray", head]  # fmt: skip
    env = os.environ | {"RAY_USAGE_STATS_ENABLED": "1"}
    done = subprocess.run(traced(command, log, TRACED_NETWORK), env=env, capture_output=True,
                          text=True, timeout=600, check=False)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert len(read_lines(out)) == 4
    for trace, tolerated in [(log, failed_lookup), *((t, ray_node) for t in cluster.traces)]:
        outbound, local = connections(trace, tolerated)
        assert not outbound, f"{trace.name}:\n" + "\n".join(outbound[:20])
        assert local > 0, f"{trace.name} saw no connection at all: the trace proves nothing"


def failed_lookup(call: Call) -> bool:
    """A connect to a name-lookup daemon (nscd, systemd-resolved) that failed sent nothing:
    libc asks them first when Ray looks up "localhost"; a lookup that went on to DNS is judged
    on its own datagrams. Failed: its result says so, or (a call strace split in two shows no
    result) no such daemon listens here."""
    socket = LOOKUP_SOCKET.search(call.line) if call.name == "connect" else None
    if socket is None:
        return False
    return ") = -1 " in call.line or not Path(socket["path"]).exists()


LOOKUP_SOCKET = re.compile(r'sun_path="(?P<path>[^"]*(?:nscd|systemd/resolve)[^"]*)"')

# What Ray 2.60's head does at start whatever the settings (ray/_common/usage/usage_lib.py,
# get_cloud_from_metadata_requests, run by the dashboard's usage-stats module even with usage
# stats off): ask the cloud metadata services whether it runs on a cloud VM. Tolerated by
# destination and content only; the README names it.
METADATA = "169.254.169.254:80"
METADATA_CONNECT = 'htons(80), sin_addr=inet_addr("169.254.169.254")'
METADATA_REQUESTS = ('"GET /metadata/instance?', '"GET /latest/meta-data/',
                     '"GET /computeMetadata/v1')  # fmt: skip
METADATA_NAME = "\\10metadata\\6google\\10internal"  # a DNS question, as strace prints it


def ray_node(call: Call) -> bool:
    if failed_lookup(call):
        return True
    if call.name == "connect":
        # A UDP connect sends nothing (Ray's `ray start` finds its address this way); what a
        # socket sends is judged where it is sent.
        return "<UDP:" in call.args[0] or METADATA_CONNECT in call.line
    if METADATA in call.line:
        return any(request in call.line for request in METADATA_REQUESTS)
    return ":53]>" in call.args[0] and METADATA_NAME in call.line
