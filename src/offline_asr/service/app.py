"""The FastAPI app: the routers (`transcription`, `status`), the middleware and the web page,
around a pool whose models were verified and loaded already."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware
from fastapi.staticfiles import StaticFiles

from offline_asr import __version__
from offline_asr.asr.audit import AuditLog
from offline_asr.service import admin, status, transcription
from offline_asr.service.admission import Admission
from offline_asr.service.audit_trail import AuditTrail
from offline_asr.service.dependencies import ServiceState
from offline_asr.service.docs import add_docs
from offline_asr.service.errors import install_handlers
from offline_asr.service.keys import KeyRing
from offline_asr.service.metrics import Metrics
from offline_asr.service.pool import ModelPool
from offline_asr.service.realtime import realtime_router
from offline_asr.service.reload import Reloader, following
from offline_asr.service.settings import ServiceSettings
from offline_asr.service.upload_limit import FORM_OVERHEAD, UploadLimit


def create_app(
    settings: ServiceSettings,
    pool: ModelPool,
    metrics: Metrics,
    *,
    audit: AuditLog,
    keys: KeyRing,
    reloader: Reloader,
) -> FastAPI:
    """Build the app around a pool whose models were verified and loaded already."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        """Unload idle lazily loaded models in the background, when configured; follow the
        target's `current` (SIGHUP, polling) while the app runs."""

        async def unload_idle() -> None:
            while True:
                await asyncio.sleep(min(pool.idle_unload_s, 30))
                await asyncio.to_thread(pool.unload_idle)

        task = asyncio.create_task(unload_idle()) if pool.idle_unload_s > 0 else None
        reloader.publish()  # the pidfile's state: what is served from now on
        async with following(reloader, settings.reload_poll_s):
            yield
        if task is not None:
            task.cancel()

    app = FastAPI(
        title="offline-asr",
        version=__version__,
        summary="OpenAI-compatible speech recognition that never leaves the building",
        lifespan=lifespan,
        docs_url=None,  # served by add_docs from local files, not from a CDN
        redoc_url=None,
    )
    add_docs(app)
    admission = Admission(settings.max_concurrency, settings.max_queue, metrics)
    app.state.service = ServiceState(settings, pool, metrics, audit, keys, admission, reloader)
    install_handlers(app)
    app.include_router(transcription.router)
    app.include_router(status.router)
    app.include_router(admin.router)
    app.include_router(realtime_router(settings, pool, metrics, audit, keys))
    app.mount("/static", StaticFiles(directory=status.STATIC), name="static")
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware, allow_origins=settings.cors_origins, allow_methods=["GET", "POST"],
            allow_headers=["Authorization", "Content-Type"],
        )  # fmt: skip
    app.add_middleware(UploadLimit, max_bytes=settings.max_upload_bytes + FORM_OVERHEAD)
    app.add_middleware(
        AuditTrail, audit=audit, metrics=metrics, keys=keys, serving=lambda: pool.current.version
    )  # sees every answer
    return app
