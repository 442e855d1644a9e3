"""A real `offline-asr serve` process on a free loopback port, for tests against HTTP."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass
class Server:
    url: str
    process: subprocess.Popen[str]
    log: Path

    def output(self) -> str:
        return self.log.read_text(errors="replace")


def wait_ready(url: str, process: subprocess.Popen[str], timeout: float) -> bool:
    """Poll /ready until 200; False if the process exits first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            return False
        try:
            with urllib.request.urlopen(f"{url}/ready", timeout=2) as response:
                if response.status == 200:
                    return True
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(0.2)
    raise TimeoutError(f"server at {url} not ready after {timeout} s")


@contextmanager
def serve_process(
    command: list[str],
    *,
    env: dict[str, str],
    log: Path,
    url: str,
    timeout: float = 120,
    cwd: Path | None = None,
) -> Iterator[subprocess.Popen[str]]:
    """Run a server command until /ready answers at `url`; stop it afterwards."""
    with log.open("w") as sink:
        process = subprocess.Popen(
            command, stdout=sink, stderr=subprocess.STDOUT, text=True, env=env, cwd=cwd
        )
    try:
        if not wait_ready(url, process, timeout):
            raise RuntimeError(f"server exited with {process.returncode}:\n{log.read_text()}")
        yield process
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@contextmanager
def running_server(
    manifest: Path,
    *args: str,
    env: dict[str, str] | None = None,
    log: Path,
    timeout: float = 120,
    prefix: list[str] | None = None,
) -> Iterator[Server]:
    """Start `offline-asr serve --manifest M --port P ARGS`, wait for /ready, stop it after.

    `prefix` runs the command under another program (e.g. `ip netns exec NAME`).
    """
    port = free_port()
    exe = Path(sys.executable).with_name("offline-asr")
    command = [*(prefix or []), str(exe), "serve", "--manifest", str(manifest),
               "--host", "127.0.0.1", "--port", str(port), *args]  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    with serve_process(
        command, env={**os.environ, **(env or {})}, log=log, url=url, timeout=timeout
    ) as process:
        yield Server(url, process, log)
