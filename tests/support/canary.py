"""A loopback listener that counts who calls: it stands in for a hub, a proxy or any address
that input names, so a test can show that nothing was asked of it."""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field


@dataclass
class Canary:
    """Accepts connections on loopback and records the first bytes of each."""

    sock: socket.socket
    calls: list[str] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)

    @property
    def url(self) -> str:
        host, port = self.sock.getsockname()[:2]
        return f"http://{host}:{port}"

    def serve(self) -> None:
        while not self.stop.is_set():
            try:
                client, peer = self.sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            with client:
                client.settimeout(1)
                with contextlib.suppress(OSError):
                    self.calls.append(f"{peer}: {client.recv(200)!r}")


@contextlib.contextmanager
def canary() -> Iterator[Canary]:
    with socket.create_server(("127.0.0.1", 0)) as sock:
        sock.settimeout(0.2)
        watcher = Canary(sock)
        thread = threading.Thread(target=watcher.serve, daemon=True)
        thread.start()
        try:
            yield watcher
        finally:
            watcher.stop.set()
            thread.join(timeout=5)
