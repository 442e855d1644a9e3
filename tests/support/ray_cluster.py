"""A real two-node Ray cluster on loopback for the cluster tests: a head and a second node with
its own CPU, a custom resource and its own copy of the model store (`MODEL_REGISTRY_PATH`).

Every process of both nodes (GCS, raylets, agents, the workers that run our actors) runs under
strace, tracing its connections, so a test can show that the cluster stays on loopback."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

from support.syscalls import TRACED_NETWORK, traced

RAY = Path(sys.executable).with_name("ray")
# Two loopback addresses, one a node, as two hosts would have: Ray swaps 127.0.0.1 itself for
# the host's network address (found with a UDP connect towards 8.8.8.8).
HEAD, SECOND = "127.0.0.2", "127.0.0.3"
# What the README tells operators to start every node with: no usage statistics, and the report
# that they are off (which Ray sends anyway to usage-stats.ray.io) goes nowhere.
NODE_ENVIRONMENT = {"RAY_USAGE_STATS_ENABLED": "0", "RAY_USAGE_STATS_REPORT_URL": "offline:"}
START_TIMEOUT = 300.0
STARTED = "Ray runtime started"


@dataclass
class Cluster:
    address: str
    second_manifest: Path  # the second node's store
    traces: list[Path]  # the connections of every process of each node, as strace logs them


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _start(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    """`ray start --block` under strace, once it says the node runs; its output goes to
    `<log>.out` (a file: a pipe nobody reads would stop the node)."""
    output = log.with_suffix(".out")
    with output.open("wb") as sink:
        node = subprocess.Popen(traced([str(RAY), "start", "--block", *args], log, TRACED_NETWORK),
                                env=env, stdout=sink, stderr=subprocess.STDOUT)  # fmt: skip
    deadline = time.monotonic() + START_TIMEOUT
    while STARTED not in output.read_text(errors="replace"):
        if node.poll() is not None or time.monotonic() > deadline:
            node.kill()
            raise AssertionError(f"ray start failed:\n{output.read_text(errors='replace')[-3000:]}")
        time.sleep(0.5)
    return node


@contextmanager
def two_node_cluster(second_manifest: Path, traces: Path) -> Iterator[Cluster]:
    """Started with usage stats and the dashboard off; every process of it ends with the block
    (found by its session folder, so no other Ray on the machine is touched)."""
    temp = Path(tempfile.mkdtemp(prefix="oasr-ray-"))  # short: Ray's socket paths are limited
    env = {
        **os.environ, **NODE_ENVIRONMENT,
        # Nodes start slowly on a loaded 2-core machine: give the raylet time to see its agents.
        "RAY_raylet_start_wait_time_s": "180",
    }  # fmt: skip
    env.pop("MODEL_REGISTRY_PATH", None)
    port = free_port()
    common = ["--num-cpus=1", f"--temp-dir={temp}", "--disable-usage-stats"]
    logs = [traces / "head.trace", traces / "second.trace"]
    nodes: list[subprocess.Popen[bytes]] = []
    with ExitStack() as stack:
        stack.callback(_stop_session, temp, nodes)
        nodes.append(_start([f"--node-ip-address={HEAD}", "--head", f"--port={port}",
                             "--include-dashboard=false", *common], env, logs[0]))  # fmt: skip
        nodes.append(_start([f"--node-ip-address={SECOND}", f"--address={HEAD}:{port}",
                             '--resources={"second_node": 1}', *common],
                            env | {"MODEL_REGISTRY_PATH": str(second_manifest)},
                            logs[1]))  # fmt: skip
        yield Cluster(f"{HEAD}:{port}", second_manifest, logs)


def _stop_session(temp: Path, straces: list[subprocess.Popen[bytes]]) -> None:
    """Kill the session's processes, then let strace finish its logs (it ends with its last
    tracee) before anything is left to kill."""
    spared = {strace.pid for strace in straces}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) in spared:
            continue
        try:
            command = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if str(temp).encode() in command:
            with suppress(ProcessLookupError):
                os.kill(int(entry.name), signal.SIGKILL)
    for strace in straces:
        try:
            strace.wait(timeout=60)
        except subprocess.TimeoutExpired:
            strace.kill()
            strace.wait()
