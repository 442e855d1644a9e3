"""Start-up: go offline, verify and load the models, and only then open the port."""

from __future__ import annotations

import secrets
import sys
from pathlib import Path

from fastapi import FastAPI

from offline_asr.asr.audio import AudioLimits
from offline_asr.asr.audit import SECRET_BYTES, AuditLog, load_secret
from offline_asr.asr.loader import LoadOptions
from offline_asr.offline import go_offline
from offline_asr.registry.snapshot import ManifestSnapshot
from offline_asr.registry.store import ModelStore
from offline_asr.service.app import create_app
from offline_asr.service.keys import KeyRing
from offline_asr.service.metrics import Metrics
from offline_asr.service.pidfile import Pidfile
from offline_asr.service.pool import ModelPool
from offline_asr.service.reload import Reloader, catch_early_hangups
from offline_asr.service.settings import ServiceSettings


def build_app(
    settings: ServiceSettings, *, target: Path | None = None, pidfile: Pidfile | None = None
) -> FastAPI:
    """Verify and load every model named in the settings; raises before any port is bound.

    With `target`, the server can follow its `current` later (service/reload.py); the release
    it starts with is the one `settings.manifest` (resolved once by the caller) belongs to.
    """
    go_offline()
    metrics = Metrics()
    keys = key_ring(settings)
    plan = settings.worker_plan()
    options = LoadOptions.from_settings(settings, threads=plan.threads, workers=plan.workers)
    pool = ModelPool(
        ManifestSnapshot.read(ModelStore(settings.manifest)),  # one release until a reload
        options=options,
        limits=AudioLimits(settings.max_upload_bytes, settings.max_audio_seconds),
        metrics=metrics,
        lazy_load=settings.lazy_load,
        idle_unload_s=settings.idle_unload_s,
    )
    pool.preload(settings.models)
    audit = AuditLog(settings.audit_log, include_text=settings.audit_text)
    reloader = Reloader(
        pool, target, options=options, metrics=metrics, audit=audit, pidfile=pidfile
    )
    return create_app(settings, pool, metrics, audit=audit, keys=keys, reloader=reloader)


def key_ring(settings: ServiceSettings) -> KeyRing:
    """The API keys with their audit ids; the secret is read (or made) only when keys are set.

    The start-up log names each key's id (never the key), in the order configured.
    """
    keys = settings.all_api_keys()
    if not keys:
        return KeyRing([], b"")
    path = settings.audit_secret_path()
    if path is None:
        _say(
            "no place for the audit secret (set OFFLINE_ASR_AUDIT_LOG or "
            "OFFLINE_ASR_AUDIT_SECRET_FILE): API key ids in the audit log change at every start"
        )
        secret = secrets.token_bytes(SECRET_BYTES)
    else:
        secret = load_secret(path)
    ring = KeyRing(keys, secret)
    for number, ident in enumerate(ring.ids, start=1):
        _say(f"API key {number} of {len(keys)} appears in the audit log as {ident}")
    return ring


def _say(message: str) -> None:
    print(f"offline-asr: {message}", file=sys.stderr, flush=True)


def serve(settings: ServiceSettings, *, target: Path | None = None) -> None:
    """Run until stopped; the pidfile (when asked) is claimed first and removed at the end."""
    import uvicorn

    catch_early_hangups()
    pidfile = None
    if settings.pidfile is not None:
        pidfile = Pidfile(settings.pidfile, url=f"http://{settings.host}:{settings.port}")
        pidfile.claim()
    try:
        app = build_app(settings, target=target, pidfile=pidfile)
        uvicorn.run(app, host=settings.host, port=settings.port, log_level="info",
                    access_log=False)  # fmt: skip
    finally:
        if pidfile is not None:
            pidfile.remove()
