"""On a Ray node, before any work: the node's store must hold the driver's manifest (same
manifest_version, same entries) and its weights must verify against it.

Each node reads its own copy of the store: `MODEL_REGISTRY_PATH` in the environment its Ray
node was started with, else the driver's manifest path (the same path on every node).
"""

from __future__ import annotations

import os
import socket
from pathlib import Path

from offline_asr.constants import DEFAULT_BUNDLE_HINT, EXIT_CHECK_FAILED, MANIFEST_ENV
from offline_asr.errors import OfflineAsrError
from offline_asr.registry.integrity import check_before_load
from offline_asr.registry.schemas import Manifest
from offline_asr.registry.snapshot import ManifestSnapshot
from offline_asr.registry.store import ModelStore


class ClusterError(OfflineAsrError):
    """A node refused (other manifest, altered weights) or was lost; or no node could work."""

    exit_code = EXIT_CHECK_FAILED


def node_name() -> str:
    """This Ray node as people find it in `ray status` and their inventory."""
    import ray

    node_id = ray.get_runtime_context().get_node_id()
    address = next((n["NodeManagerAddress"] for n in ray.nodes() if n["NodeID"] == node_id), "?")
    return f"node {address} ({socket.gethostname()}, id {node_id[:12]})"


def node_store(driver_manifest: Path) -> ModelStore:
    return ModelStore(Path(os.environ.get(MANIFEST_ENV) or driver_manifest))


def node_snapshot(store: ModelStore, manifest_json: str, model_ids: list[str]) -> ManifestSnapshot:
    """The job's manifest over this node's store, once the node's own manifest is the same
    release: another manifest_version, or the models listed otherwise, is a refusal."""
    driver = Manifest.model_validate_json(manifest_json)
    mine = store.load()
    if mine.manifest_version != driver.manifest_version:
        raise ClusterError(
            f"its manifest {store.manifest_path} is manifest_version {mine.manifest_version}, "
            f"the job's is {driver.manifest_version}; install the same bundle on every node"
        )
    for model_id in model_ids:
        if mine.get(model_id) != driver.get(model_id):
            raise ClusterError(
                f"its manifest {store.manifest_path} lists {model_id!r} otherwise than the job's "
                "manifest of the same version; install the same bundle on every node"
            )
    return ManifestSnapshot(store, driver)


def check_node(manifest_json: str, driver_manifest: str, model_ids: list[str]) -> str | None:
    """Run on one node: its refusal (node named), or None when it may serve these models."""
    store = node_store(Path(driver_manifest))
    node = f"{node_name()} (store {store.manifest_path})"
    try:
        snapshot = node_snapshot(store, manifest_json, model_ids)
        for model_id in model_ids:
            check_before_load(store.root, snapshot.entry(model_id), hint=DEFAULT_BUNDLE_HINT)
    except Exception as error:  # every refusal is reported by name, never raised into Ray
        return f"{node} refused to serve: {error}"
    return None


def refusing_nodes(manifest_json: str, driver_manifest: str, model_ids: list[str]) -> list[str]:
    """The gate on every alive node of the cluster, side by side."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    task = ray.remote(num_cpus=0)(check_node)
    checks = [
        task.options(
            scheduling_strategy=NodeAffinitySchedulingStrategy(node["NodeID"], soft=False)
        ).remote(manifest_json, driver_manifest, model_ids)
        for node in ray.nodes()
        if node.get("Alive")
    ]
    return [refusal for refusal in ray.get(checks) if refusal is not None]
