"""`serve --ray`: the same OpenAI-compatible API as N Ray Serve replicas, each one gated.

A replica builds the app exactly as `offline-asr serve` does (`build_app`: verify and load the
models before anything is served), on its node's store, after checking that the store holds the
driver's manifest. A replica that refuses never serves; Ray Serve reports the deployment as
failed and the command stops with the refusal (node named) and exit code 1. Before deploying,
every alive node runs the same gate, and one refusal stops the start: Ray Serve may place a
replica on any node, and keeps retrying a refused one once another replica runs.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol, Self

from offline_asr.cluster.connect import connect
from offline_asr.cluster.gate import (
    ClusterError,
    node_name,
    node_snapshot,
    node_store,
    refusing_nodes,
)
from offline_asr.registry.store import ModelStore

APP_NAME = "offline-asr"


class ServeSettings(Protocol):
    """What this module needs of the server's settings (`service.settings.ServiceSettings`,
    which the command line passes in: the cluster stage does not import the service stage)."""

    manifest: Path
    models: list[str]
    host: str
    port: int
    max_concurrency: int
    max_queue: int

    def model_copy(self, *, update: dict[str, Any] | None = None, deep: bool = False) -> Self: ...


AppBuilder = Callable[[Any], Any]
"""`service.server.build_app`: settings -> the ASGI app, after the start-up integrity gate."""


def _replica_class() -> Any:
    from ray import serve

    @serve.ingress()
    class ApiReplica:
        """One copy of the API on one node; its app exists only once the gate has passed."""

        def __init__(
            self, settings: ServeSettings, manifest_json: str, build_app: AppBuilder
        ) -> None:
            store = node_store(settings.manifest)
            node = f"{node_name()} (store {store.manifest_path})"
            try:
                node_snapshot(store, manifest_json, [m for m in settings.models if m != "auto"])
                local = settings.model_copy(update={"manifest": store.manifest_path})
                self._app = build_app(local)
            except Exception as error:
                raise ClusterError(f"{node} refused to serve: {error}") from error

        def __serve_build_asgi_app__(self) -> Any:
            return self._app

    return ApiReplica


def serve_on_ray(
    settings: ServeSettings, address: str, replicas: int, build_app: AppBuilder
) -> None:
    """Deploy `replicas` gated replicas behind Ray Serve's proxy on `settings.host:port`, then
    wait for Ctrl-C or SIGTERM and take the deployment down."""
    manifest = ModelStore(settings.manifest)
    manifest_json = manifest.manifest_path.read_text(encoding="utf-8")
    absolute = settings.model_copy(update={"manifest": Path(manifest.manifest_path).resolve()})
    connect(address)
    import ray
    from ray import serve

    models = [m for m in settings.models if m != "auto"]
    refusals = refusing_nodes(manifest_json, str(absolute.manifest), models)
    if refusals:  # Ray Serve could place a replica there: fail closed, before deploying
        ray.shutdown()
        raise ClusterError("not serving: a node of the cluster refused\n" + "\n".join(refusals))

    serve.start(http_options={"host": settings.host, "port": settings.port})
    deployment = serve.deployment(
        _replica_class(), name="api", num_replicas=replicas,
        ray_actor_options={"num_cpus": 1},
        max_ongoing_requests=settings.max_concurrency + settings.max_queue,
        # A refusal is for good (other weights do not heal): fail the start, do not retry long.
        max_constructor_retry_count=replicas,
    )  # fmt: skip
    try:
        application = deployment.bind(absolute, manifest_json, build_app)
        serve.run(application, name=APP_NAME, route_prefix="/")
    except Exception as error:  # Ray's own error types; the replica's refusal is in the text
        serve.shutdown()
        raise ClusterError(f"the API could not start on the cluster: {error}") from error
    print(f"offline-asr: serving {replicas} replicas on http://{settings.host}:{settings.port}",
          flush=True)  # fmt: skip
    stop = threading.Event()
    for number in (signal.SIGINT, signal.SIGTERM):
        signal.signal(number, lambda *_: stop.set())
    stop.wait()
    serve.shutdown()
    ray.shutdown()
