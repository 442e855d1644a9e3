"""Status routes: the model list, health, readiness, Prometheus metrics, the web page."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Depends, Response
from fastapi.responses import FileResponse, PlainTextResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from offline_asr.service.dependencies import ApiKeyId, Service, authorize

STATIC = Path(__file__).resolve().parent / "static"

router = APIRouter()


@router.get("/v1/models")
async def list_models(key_id: ApiKeyId, service: Service) -> dict[str, Any]:
    """Registered models with engine, manifest_version, fingerprint and whether loaded."""
    return {"object": "list", "data": service.pool.describe()}


@router.get("/health")
async def health() -> dict[str, str]:
    """The process is up."""
    return {"status": "ok"}


@router.get("/ready")
async def ready(service: Service) -> Response:
    """Every model named at start is verified and loaded; which release is served, and the
    outcome of the last reload (a refused one names the file: the old release serves on)."""
    status, code = ("ready", 200) if service.pool.ready else ("loading", 503)
    body = {"status": status, **service.reloader.state()}
    return Response(json.dumps(body), code, media_type="application/json")


@router.get("/metrics", dependencies=[Depends(authorize)])
async def prometheus(service: Service) -> Response:
    """Prometheus text format; needs a key when the server has keys (model ids, traffic)."""
    return PlainTextResponse(
        generate_latest(service.metrics.registry), media_type=CONTENT_TYPE_LATEST
    )


@router.get("/", include_in_schema=False)
async def index() -> FileResponse:
    return FileResponse(STATIC / "index.html")
