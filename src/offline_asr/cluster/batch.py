"""`batch --ray`: one actor per node loads its engine once, after its gate, and takes files.

An actor whose node refuses (another manifest, altered weights) is reported and dropped before
any file is handed out; an actor never transcribes unless its gate passed. Files go to the
actor with the fewest in flight, as bytes through Ray's object store (no shared filesystem
needed).
"""

from __future__ import annotations

import io
import threading
from collections.abc import Iterator
from concurrent.futures import Future
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

from offline_asr.asr.audio import AudioLimits
from offline_asr.asr.base import DecodeOptions
from offline_asr.asr.loader import LoadOptions
from offline_asr.asr.transcriber import Transcriber
from offline_asr.batch.lines import Line, error_line
from offline_asr.batch.work import transcribe_one
from offline_asr.cluster.connect import connect
from offline_asr.cluster.gate import ClusterError, node_name, node_snapshot, node_store
from offline_asr.registry.snapshot import ManifestSnapshot


class BatchWorker:
    """Runs on one node: the gate at start, then files; never a result from unverified weights."""

    def __init__(
        self,
        manifest_json: str,
        driver_manifest: str,
        model_id: str,
        options: DecodeOptions,
        request: str,
        load: LoadOptions,
        limits: AudioLimits,
    ) -> None:
        import offline_asr.offline

        offline_asr.offline.go_offline()
        self.node = node_name()
        self.options, self.request = options, request
        self.transcriber: Transcriber | None = None
        self.refusal: str | None = None
        store = node_store(Path(driver_manifest))
        self.node = f"{self.node} (store {store.manifest_path})"
        try:
            ids = [] if model_id == "auto" else [model_id]
            snapshot = node_snapshot(store, manifest_json, ids)
            self.transcriber = Transcriber.load(snapshot, model_id, load, audit=None,
                                                limits=limits)  # fmt: skip
        except Exception as error:  # reported to the driver by `gate`, never raised into Ray
            self.refusal = f"{self.node} refused to load {model_id}: {error}"

    def gate(self) -> tuple[str, str | None]:
        return self.node, self.refusal

    def transcribe(self, data: bytes, path: str, audio_sha256: str) -> Line:
        if self.transcriber is None:
            raise ClusterError(self.refusal or f"{self.node}: weights not verified")
        line = transcribe_one(self.transcriber, io.BytesIO(data), path, audio_sha256,
                              self.options, self.request)  # fmt: skip
        return {**line, "node": self.node}


class RayRunner:
    """Hands files to the verified actors; see `offline_asr.batch.work.Runner`."""

    def __init__(self, actors: list[tuple[Any, str, int]], refusals: list[str], request: str,
                 model_id: str) -> None:  # fmt: skip
        self._actors = actors  # (handle, node, workers)
        self._in_flight = [0] * len(actors)
        self._counting = threading.Lock()  # results settle on Ray's threads, files go out here
        self._refusals, self._request, self._model_id = refusals, request, model_id
        self.capacity = 2 * sum(workers for _, _, workers in actors)

    def submit(self, path: Path, audio_sha256: str) -> Future[Line]:
        done: Future[Line] = Future()
        try:
            data = path.read_bytes()
        except OSError as error:
            done.set_result(error_line(str(path), audio_sha256, self._request, self._model_id,
                                       error))  # fmt: skip
            return done
        with self._counting:
            index = min(range(len(self._actors)), key=self._in_flight.__getitem__)
            self._in_flight[index] += 1
        actor, node, _ = self._actors[index]
        remote: Future[Line] = actor.transcribe.remote(data, str(path), audio_sha256).future()

        def settle(finished: Future[Line]) -> None:
            with self._counting:
                self._in_flight[index] -= 1
            error = finished.exception()
            if error is None:
                done.set_result(finished.result())
            else:
                done.set_exception(ClusterError(f"{node} failed while transcribing {path}: "
                                                f"{error}"))  # fmt: skip

        remote.add_done_callback(settle)
        return done

    def stop(self) -> None:
        import ray

        for actor, _, _ in self._actors:
            ray.kill(actor)

    def problems(self) -> list[str]:
        return list(self._refusals)


@contextmanager
def ray_runner(
    address: str,
    snapshot: ManifestSnapshot,
    model_id: str,
    options: DecodeOptions,
    request: str,
    load: LoadOptions,
    limits: AudioLimits,
) -> Iterator[RayRunner]:
    """One actor per alive node with CPUs (a worker per CPU, one thread each), gated first."""
    connect(address)
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    remote_class = ray.remote(BatchWorker)
    manifest_json = snapshot.manifest.model_dump_json()
    driver_manifest = str(snapshot.store.manifest_path.resolve())
    actors = []
    for node in ray.nodes():
        cpus = int(node.get("Resources", {}).get("CPU", 0))
        if not node.get("Alive") or cpus < 1:
            continue
        options_here = replace(load, workers=cpus, threads=1)
        actor = remote_class.options(
            num_cpus=cpus,
            max_concurrency=cpus,
            scheduling_strategy=NodeAffinitySchedulingStrategy(node["NodeID"], soft=False),
        ).remote(manifest_json, driver_manifest, model_id, options, request, options_here, limits)
        actors.append((actor, cpus))
    gates = ray.get([actor.gate.remote() for actor, _ in actors])
    refusals = [refusal for _, refusal in gates if refusal is not None]
    verified = [
        (actor, node, cpus)
        for (actor, cpus), (node, refusal) in zip(actors, gates, strict=True)
        if refusal is None
    ]
    for (actor, _), (_, refusal) in zip(actors, gates, strict=True):
        if refusal is not None:
            ray.kill(actor)
    if not verified:
        raise ClusterError("no node of the cluster can work:\n" + "\n".join(refusals or
                           ["the cluster has no alive node with a CPU"]))  # fmt: skip
    runner = RayRunner(verified, refusals, request, model_id)
    try:
        yield runner
    finally:
        runner.stop()
        ray.shutdown()
