"""The server works with no network at all: it transcribes in a network namespace that has only
loopback, its sockets point at loopback only while it works, and the hub libraries are switched
offline in its process whatever its environment says.

A namespace hides attempts to reach out (a lookup there fails silently), so these tests cannot
show that nothing tries: tests/test_egress.py traces every syscall for that.

The namespace test needs root and iproute2 (`ip netns`); it skips, saying why, without them.
It starts the server itself rather than through `running_server(prefix=["ip", "netns", ...])`:
that helper polls /ready from the host's namespace, where the server's port does not exist, so
the readiness polling and the transcription both run inside the namespace.
"""

from __future__ import annotations

import contextlib
import errno
import ipaddress
import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import httpx2
import pyrage
import pytest

from offline_asr.asr.smoke import word_error_rate
from offline_asr.constants import CLIPS_DIR
from offline_asr.offline import HUB_OFFLINE, TELEMETRY_OFF
from offline_asr.registry.store import ModelStore
from support.canary import Canary, canary
from support.helpers import REPO
from support.server import Server, free_port, running_server

pytestmark = pytest.mark.slow

MODEL = "whisper-tiny.en"
CLIP = CLIPS_DIR / "en_short.wav"
REFERENCE: str = json.loads((CLIPS_DIR / "references.json").read_text())[CLIP.name]
READY_TIMEOUT = 120.0
REQUEST_TIMEOUT = 120.0
# TEST-NET-1 (RFC 5737), a documentation address: the namespace has no route at all, so a
# connect fails at once without a packet; it only shows that there is no way out.
UNROUTABLE = ("192.0.2.1", 80)

# Runs inside the namespace: proves there is no route out, waits for /ready, transcribes.
# Standard library only, no proxies: it talks to 127.0.0.1 of the namespace and nothing else.
NAMESPACE_CLIENT = r"""
import errno, json, socket, sys, time, urllib.error, urllib.request, uuid

url, clip, model, ready_s, request_s = sys.argv[1:6]
http = urllib.request.build_opener(urllib.request.ProxyHandler({}))
out = {}
try:
    socket.create_connection((sys.argv[6], int(sys.argv[7])), timeout=2).close()
    out["outside"] = "connected"
except OSError as error:
    out["outside"] = errno.errorcode.get(error.errno or 0, str(error))
deadline = time.monotonic() + float(ready_s)
out["ready"] = False
while time.monotonic() < deadline and not out["ready"]:
    try:
        with http.open(url + "/ready", timeout=2) as response:
            out["ready"] = response.status == 200
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        time.sleep(0.2)
if out["ready"]:
    boundary = uuid.uuid4().hex
    with open(clip, "rb") as audio:
        body = (
            f'--{boundary}\r\nContent-Disposition: form-data; name="model"\r\n\r\n{model}\r\n'
            f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="clip.wav"'
            "\r\nContent-Type: audio/wav\r\n\r\n"
        ).encode() + audio.read() + f"\r\n--{boundary}--\r\n".encode()
    request = urllib.request.Request(
        url + "/v1/audio/transcriptions", data=body,
        headers={"Content-Type": f"multipart/form-data; boundary={boundary}"},
    )
    try:
        with http.open(request, timeout=float(request_s)) as response:
            out["status"], out["body"] = response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        out["status"], out["body"] = error.code, error.read().decode()
print(json.dumps(out))
"""

# `python -c PROBE offline-asr serve ...`: the real CLI in the real process, which records
# the environment and huggingface_hub's offline switch as they are once the app is built.
ENV_PROBE = r"""
import json, os, sys
from pathlib import Path

import offline_asr.service.server as server
from offline_asr.offline import HUB_OFFLINE, TELEMETRY_OFF

build = server.build_app

def build_app(settings, **options):
    app = build(settings, **options)
    import huggingface_hub.constants as hub

    seen = {name: os.environ.get(name) for name in {**HUB_OFFLINE, **TELEMETRY_OFF}}
    probe = {"environ": seen, "hub_offline": hub.HF_HUB_OFFLINE, "pid": os.getpid()}
    Path(os.environ["OFFLINE_ASR_TEST_PROBE"]).write_text(json.dumps(probe))
    return app

server.build_app = build_app
sys.argv = sys.argv[1:]
from offline_asr.cli import app

app()
"""


# --- sockets of a process ----------------------------------------------------------------


@dataclass(frozen=True)
class Connection:
    proto: str
    local: str
    remote: str


def _address(hex_address: str) -> tuple[ipaddress.IPv4Address | ipaddress.IPv6Address, int]:
    """An address of /proc/net/{tcp,udp}[6]: host-order 32-bit words in hex, then the port."""
    host, port = hex_address.split(":")
    raw = bytes.fromhex(host)
    words = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
    address = ipaddress.ip_address(words)
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped, int(port, 16)
    return address, int(port, 16)


def _local_only(hex_address: str) -> bool:
    address, _ = _address(hex_address)
    return address.is_loopback or address.is_unspecified


def connections_of(pid: int) -> set[Connection]:
    """The process's TCP and UDP sockets, from its fds and /proc/PID/net/{tcp,udp}[6]."""
    inodes = set()
    with contextlib.suppress(FileNotFoundError):
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            with contextlib.suppress(OSError):
                target = str(fd.readlink())
                if target.startswith("socket:["):
                    inodes.add(target[len("socket:[") : -1])
    found = set()
    for proto in ("tcp", "tcp6", "udp", "udp6"):
        with contextlib.suppress(FileNotFoundError):
            for line in Path(f"/proc/{pid}/net/{proto}").read_text().splitlines()[1:]:
                fields = line.split()
                if len(fields) > 9 and fields[9] in inodes:
                    found.add(Connection(proto, fields[1], fields[2]))
    return found


def outbound(connections: set[Connection]) -> list[str]:
    """Sockets bound to or connected to anything but loopback (or nothing yet)."""
    return [
        f"{c.proto} {_address(c.local)} -> {_address(c.remote)}"
        for c in sorted(connections, key=repr)
        if not (_local_only(c.local) and _local_only(c.remote))
    ]


def test_the_socket_watch_sees_a_socket_aimed_outside() -> None:
    """The detector itself: a UDP socket connected to a documentation address (a UDP connect
    sends no packet) is reported; loopback TCP, listening or connected, is not."""
    with contextlib.ExitStack() as stack:
        listener = stack.enter_context(socket.create_server(("127.0.0.1", 0)))
        stack.enter_context(socket.create_connection(listener.getsockname()[:2], timeout=5))
        stack.enter_context(listener.accept()[0])
        assert outbound(connections_of(os.getpid())) == []
        aimed = stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_DGRAM))
        try:
            aimed.connect(UNROUTABLE)
        except OSError as error:
            pytest.skip(f"no route to aim a socket with ({error}); the watch is not checked")
        reported = outbound(connections_of(os.getpid()))
    assert len(reported) == 1 and "192.0.2.1" in reported[0], reported


@dataclass
class Watched:
    server: Server
    canary: Canary
    probe: Path


@pytest.fixture(scope="module")
def watched_server(
    full_store: ModelStore, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Watched]:
    """A server whose environment asks for the hub, online, through proxies: all the canary."""
    folder = tmp_path_factory.mktemp("offline")
    probe = folder / "probe.json"
    with canary() as watcher:
        lure = watcher.url
        env = {
            "HF_ENDPOINT": lure,
            **{name: "0" for name in HUB_OFFLINE},
            **{name: "1" if value == "0" else "0" for name, value in TELEMETRY_OFF.items()},
            **{name: lure for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY")},
            **{name: lure for name in ("http_proxy", "https_proxy", "all_proxy")},
            "NO_PROXY": "",
            "no_proxy": "",
            "OFFLINE_ASR_TEST_PROBE": str(probe),
        }
        with running_server(
            full_store.manifest_path, "--model", MODEL, env=env, log=folder / "server.log",
            prefix=[sys.executable, "-c", ENV_PROBE],
        ) as running:  # fmt: skip
            yield Watched(running, watcher, probe)


def _transcribe(url: str) -> httpx2.Response:
    with httpx2.Client(timeout=REQUEST_TIMEOUT, trust_env=False) as client:
        return client.post(
            f"{url}/v1/audio/transcriptions",
            files={"file": (CLIP.name, CLIP.read_bytes(), "audio/wav")},
            data={"model": MODEL},
        )


def test_no_socket_of_the_server_leaves_loopback_while_it_transcribes(
    watched_server: Watched,
) -> None:
    server = watched_server.server
    pid = server.process.pid
    assert "serve" in Path(f"/proc/{pid}/cmdline").read_text(), "not the server process"
    seen = connections_of(pid)
    with ThreadPoolExecutor(1) as pool:
        answer = pool.submit(_transcribe, server.url)
        deadline = time.monotonic() + REQUEST_TIMEOUT + 10
        while not answer.done() and time.monotonic() < deadline:
            seen |= connections_of(pid)
            time.sleep(0.02)
        response = answer.result(timeout=max(0.0, deadline - time.monotonic()))
    seen |= connections_of(pid)
    assert response.status_code == 200, response.text
    text = response.json()["text"]
    assert word_error_rate(REFERENCE, text) <= 0.15, text
    assert any(c.proto.startswith("tcp") for c in seen), "sampling saw no socket at all"
    assert outbound(seen) == [], outbound(seen)
    assert watched_server.canary.calls == [], watched_server.canary.calls


def test_hub_libraries_are_offline_in_the_server_whatever_its_environment(
    watched_server: Watched,
) -> None:
    """/proc/PID/environ only shows the environment the process started with (here the
    opposite of offline, on purpose): the server switches itself offline in-process, which
    the probe records from inside the same process, after the app is built."""
    pid = watched_server.server.process.pid
    initial = dict(
        entry.split("=", 1)
        for entry in Path(f"/proc/{pid}/environ").read_text().split("\0")
        if "=" in entry
    )
    assert initial["HF_HUB_OFFLINE"] == "0"  # what the server was started with
    probe = json.loads(watched_server.probe.read_text())
    assert probe["pid"] == pid
    assert probe["environ"] == {**HUB_OFFLINE, **TELEMETRY_OFF}
    assert probe["hub_offline"] is True, "huggingface_hub read HF_HUB_OFFLINE before it was set"


# --- a namespace with nothing but loopback -----------------------------------------------


@contextlib.contextmanager
def loopback_namespace() -> Iterator[tuple[str, str]]:
    """`ip netns add offasr-RANDOM` with lo up; yields (name, path of ip); deleted after."""
    ip = shutil.which("ip")
    if ip is None:
        pytest.skip("iproute2 is not installed (`ip` not on PATH)")
    if os.geteuid() != 0:
        pytest.skip("network namespaces need root")
    name = f"offasr-{secrets.token_hex(4)}"
    added = subprocess.run(
        [ip, "netns", "add", name], capture_output=True, text=True, timeout=30, check=False
    )
    if added.returncode != 0:
        subprocess.run([ip, "netns", "delete", name],
                       capture_output=True, timeout=30, check=False)  # fmt: skip
        pytest.skip(f"`ip netns add` is not permitted here: {added.stderr.strip()}")
    try:
        subprocess.run([ip, "-n", name, "link", "set", "lo", "up"],
                       capture_output=True, text=True, timeout=30, check=True)  # fmt: skip
        yield name, ip
    finally:
        subprocess.run([ip, "netns", "delete", name],
                       capture_output=True, timeout=30, check=False)  # fmt: skip


def _stop(process: subprocess.Popen[str]) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=20)


def _signed_encrypted_install(store: ModelStore, work: Path) -> Path:
    """Build a signed, age-encrypted bundle of MODEL, install it, return the target."""
    from typer.testing import CliRunner

    from offline_asr.cli import app

    identity = pyrage.x25519.Identity.generate()
    (work / "site.agekey").write_text(f"{identity}\n")
    key, pub = work / "signing.key", work / "signing.pub"

    def ok(*args: str) -> None:
        result = CliRunner().invoke(app, list(args))
        assert result.exit_code == 0, result.output

    ok("bundle", "keygen", "--private", str(key), "--public", str(pub))
    ok("bundle", "build", "--out", str(work / "dist"), "--models", MODEL, "--sign-key", str(key),
       "--recipient", str(identity.to_public()), "--locks-from", str(REPO),
       "--manifest", str(store.manifest_path))  # fmt: skip
    bundle = next((work / "dist").glob("offline_bundle_v*.tar.zst.age"))
    ok("bundle", "install", str(bundle), "--target", str(work / "target"),
       "--identity", str(work / "site.agekey"), "--public-key", str(pub))  # fmt: skip
    return work / "target"


@pytest.mark.parametrize("source", ["manifest", "installed signed and encrypted bundle"])
def test_server_transcribes_in_a_namespace_with_only_loopback(
    full_store: ModelStore, tmp_path: Path, source: str
) -> None:
    if source == "manifest":
        where = ["--manifest", str(full_store.manifest_path)]
    else:
        where = ["--target", str(_signed_encrypted_install(full_store, tmp_path))]
    with loopback_namespace() as (namespace, ip):
        netns = [ip, "netns", "exec", namespace]
        port = free_port()  # free on the host; the namespace starts with no sockets at all
        url = f"http://127.0.0.1:{port}"
        exe = Path(sys.executable).with_name("offline-asr")
        log = tmp_path / "server.log"
        with log.open("w") as sink:
            server = subprocess.Popen(
                [*netns, str(exe), "serve", *where,
                 "--host", "127.0.0.1", "--port", str(port), "--model", MODEL],
                stdout=sink, stderr=subprocess.STDOUT, text=True,
            )  # fmt: skip
        try:
            client = subprocess.Popen(
                [*netns, sys.executable, "-c", NAMESPACE_CLIENT, url, str(CLIP), MODEL,
                 str(READY_TIMEOUT), str(REQUEST_TIMEOUT), *map(str, UNROUTABLE)],
                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            )  # fmt: skip
            deadline = time.monotonic() + READY_TIMEOUT + REQUEST_TIMEOUT + 30
            seen: set[Connection] = set()
            while client.poll() is None and time.monotonic() < deadline:
                if server.poll() is not None:
                    client.kill()
                    break
                seen |= connections_of(server.pid)
                time.sleep(0.05)
            if client.poll() is None:
                client.kill()
            out, err = client.communicate(timeout=30)
            assert server.poll() is None, f"server exited:\n{log.read_text()[-3000:]}"
            # `ip netns exec` execs the command: the pid is the server's, in the namespace.
            host_net = Path("/proc/self/ns/net").readlink()
            assert Path(f"/proc/{server.pid}/ns/net").readlink() != host_net
            assert "serve" in Path(f"/proc/{server.pid}/cmdline").read_text()
        finally:
            _stop(server)
        assert client.returncode == 0, f"{err}\n{log.read_text()[-3000:]}"
        result = json.loads(out)
        assert result["outside"] == errno.errorcode[errno.ENETUNREACH], result
        assert result["ready"], f"not ready in the namespace:\n{log.read_text()[-3000:]}"
        assert result["status"] == 200, result
        text = json.loads(result["body"])["text"]
        assert word_error_rate(REFERENCE, text) <= 0.15, text
        assert outbound(seen) == [], outbound(seen)
