"""A real two-node Ray cluster on loopback for the cluster tests: a head and a second node with
its own CPU, a custom resource and its own copy of the model store (`MODEL_REGISTRY_PATH`)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

RAY = Path(sys.executable).with_name("ray")


@dataclass
class Cluster:
    address: str
    second_manifest: Path  # the second node's store


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _start(args: list[str], env: dict[str, str]) -> None:
    result = subprocess.run([str(RAY), "start", *args], env=env, capture_output=True, text=True,
                            timeout=300, check=False)  # fmt: skip
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]


@contextmanager
def two_node_cluster(second_manifest: Path) -> Iterator[Cluster]:
    """Started with usage stats and the dashboard off; every process of it ends with the block
    (found by its session folder, so no other Ray on the machine is touched)."""
    temp = Path(tempfile.mkdtemp(prefix="oasr-ray-"))  # short: Ray's socket paths are limited
    env = {
        **os.environ, "RAY_USAGE_STATS_ENABLED": "0",
        # Nodes start slowly on a loaded 2-core machine: give the raylet time to see its agents.
        "RAY_raylet_start_wait_time_s": "180",
    }  # fmt: skip
    env.pop("MODEL_REGISTRY_PATH", None)
    port = free_port()
    common = ["--node-ip-address=127.0.0.1", "--num-cpus=1", f"--temp-dir={temp}",
              "--disable-usage-stats"]  # fmt: skip
    try:
        _start(["--head", f"--port={port}", "--include-dashboard=false", *common], env)
        _start([f"--address=127.0.0.1:{port}", '--resources={"second_node": 1}', *common],
               env | {"MODEL_REGISTRY_PATH": str(second_manifest)})  # fmt: skip
        yield Cluster(f"127.0.0.1:{port}", second_manifest)
    finally:
        _kill_session(temp)


def _kill_session(temp: Path) -> None:
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            command = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if str(temp).encode() in command:
            with suppress(ProcessLookupError):
                os.kill(int(entry.name), signal.SIGKILL)
