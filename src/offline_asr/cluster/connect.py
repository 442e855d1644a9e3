"""Joining a Ray cluster from an air-gapped host: offline switches first, nothing else started."""

from __future__ import annotations

import os

from offline_asr.cluster.gate import ClusterError
from offline_asr.offline import go_offline


def connect(address: str) -> None:
    """Attach to the running cluster at `address` (host:port of its head's GCS).

    Ray's usage statistics are off (`offline.py` sets `RAY_USAGE_STATS_ENABLED=0` on import,
    and the workers import offline_asr first); the dashboard is the head's business: start it
    with `--include-dashboard=false` or `--dashboard-host=127.0.0.1` (README).
    """
    go_offline()
    # Ray swaps a loopback head address (127.0.0.1, localhost) for "this node's address", which
    # it finds with a UDP connect() towards 8.8.8.8:53; this switch (read when Ray is imported)
    # keeps loopback as loopback and probes nothing. It also stops `ray start` of a worker
    # node, which this process never runs.
    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    try:
        import ray
    except ImportError as error:
        raise ClusterError(
            "Ray is not installed: install offline-asr with the `ray` extra "
            "(pip install 'offline-asr[ray]', or the wheelhouse of `env pack`)"
        ) from error
    try:
        ray.init(address=address, logging_level="warning", log_to_driver=False,
                 configure_logging=False)  # fmt: skip
    except (ConnectionError, RuntimeError, ValueError) as error:
        raise ClusterError(f"cannot join the Ray cluster at {address}: {error}") from error
