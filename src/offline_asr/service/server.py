"""Start-up: go offline, verify and load the models, and only then open the port."""

from __future__ import annotations

from fastapi import FastAPI

from offline_asr.audio import AudioLimits
from offline_asr.audit import AuditLog
from offline_asr.offline import go_offline
from offline_asr.registry.store import ModelStore
from offline_asr.service.app import create_app
from offline_asr.service.metrics import Metrics
from offline_asr.service.pool import ModelPool
from offline_asr.service.settings import ServiceSettings


def build_app(settings: ServiceSettings) -> FastAPI:
    """Verify and load every model named in the settings; raises before any port is bound."""
    go_offline()
    metrics = Metrics()
    pool = ModelPool(
        ModelStore(settings.manifest),
        audit=AuditLog(settings.audit_log, include_text=settings.audit_text),
        limits=AudioLimits(settings.max_upload_bytes, settings.max_audio_seconds),
        metrics=metrics,
        lazy_load=settings.lazy_load,
        idle_unload_s=settings.idle_unload_s,
        threads=settings.threads,
    )
    pool.preload(settings.models)
    return create_app(settings, pool, metrics)


def serve(settings: ServiceSettings) -> None:
    import uvicorn

    app = build_app(settings)
    uvicorn.run(app, host=settings.host, port=settings.port, log_level="info", access_log=False)
