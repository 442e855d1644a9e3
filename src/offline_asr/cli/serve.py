"""`offline-asr serve`: the OpenAI-compatible HTTP API."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from offline_asr.cli.common import ManifestOption, reports_errors


@reports_errors
def serve(
    model: Annotated[
        list[str] | None,
        typer.Option(help="Model to verify and load at start (repeatable; env APP_MODEL_ID)"),
    ] = None,
    host: Annotated[str | None, typer.Option(help="Address (default: 127.0.0.1)")] = None,
    port: Annotated[int | None, typer.Option(help="Port (default: 8000)")] = None,
    config: Annotated[
        Path | None,
        typer.Option(envvar="OFFLINE_ASR_CONFIG", help="TOML file with settings (see README)"),
    ] = None,
    workers: Annotated[
        int | None,
        typer.Option(help="Parallel transcriptions per model (default: one per usable core)"),
    ] = None,
    max_concurrency: Annotated[
        int | None, typer.Option(help="Transcriptions at a time (default: one per worker)")
    ] = None,
    max_queue: Annotated[
        int | None, typer.Option(help="Requests that may wait; more get 429 (default: 8)")
    ] = None,
    lazy_load: Annotated[
        bool | None, typer.Option(help="Load other registered models on first request")
    ] = None,
    realtime_max_sessions: Annotated[
        int | None, typer.Option(help="Live sessions (/v1/realtime) at a time; 0: off (default: 4)")
    ] = None,
    api_keys_file: Annotated[
        Path | None, typer.Option(help="File with one API key per line (Bearer auth)")
    ] = None,
    ray: Annotated[
        str | None,
        typer.Option(
            metavar="ADDRESS",
            help="Serve through Ray Serve on this cluster (host:port of its head)",
        ),
    ] = None,
    replicas: Annotated[
        int, typer.Option(min=1, help="With --ray: API replicas, each verifies its node's weights")
    ] = 1,
    pidfile: Annotated[
        Path | None,
        typer.Option(
            help="Write the pid here (and FILE.json: the release served), for "
            "`kill -HUP`, `bundle ... --notify FILE` and `doctor --server FILE`"
        ),
    ] = None,
    reload_poll_s: Annotated[
        float | None,
        typer.Option(
            help="With --target: reload when `current` changes, checked this often "
            "(default: 0, only on SIGHUP or POST /admin/reload)"
        ),
    ] = None,
    target: Annotated[
        Path | None,
        typer.Option(
            help="Installed bundle target: serve DIR/current, and follow it on "
            "SIGHUP, POST /admin/reload or --reload-poll-s (verified before a switch)"
        ),
    ] = None,
    manifest: ManifestOption = None,
) -> None:
    """Serve the OpenAI-compatible HTTP API. The models are verified and loaded before the
    port opens; a missing or altered file stops the start with exit code 1. With --target,
    a new release is verified completely (every file, smoke tests) and loaded beside the old
    one before new requests go to it; requests in flight finish on the old one."""
    from offline_asr.delivery.bundle.install import target_manifest
    from offline_asr.service.server import serve as run_server
    from offline_asr.service.settings import ServiceSettings

    settings = ServiceSettings.load(
        config,
        models=model or None,
        host=host,
        port=port,
        workers=workers,
        max_concurrency=max_concurrency,
        max_queue=max_queue,
        lazy_load=lazy_load,
        realtime_max_sessions=realtime_max_sessions,
        api_keys_file=api_keys_file,
        pidfile=pidfile,
        reload_poll_s=reload_poll_s,
        # `current` resolved now, once: the server keeps this release until it reloads.
        manifest=target_manifest(target).resolve() if target else manifest,
    )
    if ray is not None:
        from offline_asr.cluster.serve import serve_on_ray
        from offline_asr.service.server import build_app

        serve_on_ray(settings, ray, replicas, build_app)
        return
    run_server(settings, target=target.resolve() if target else None)
