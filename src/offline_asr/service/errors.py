"""Errors in OpenAI's shape: {"error": {"message", "type", "param", "code"}}."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from offline_asr.asr.audio import AudioError, AudioTooLargeError
from offline_asr.asr.base import EngineError, UnsupportedLanguageError
from offline_asr.errors import IntegrityError, ModelNotFoundError, OfflineAsrError


class ApiError(HTTPException):
    """An error answer: HTTP status, OpenAI error type, the parameter at fault, a code.

    An HTTPException, so that FastAPI passes it through unchanged even when it is raised while
    the request body is being parsed (the upload limit does that).
    """

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type_: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(status, message, headers)
        self.status, self.message, self.type = status, message, type_
        self.param, self.code = param, code


def error_body(message: str, type_: str, param: str | None, code: str | None) -> dict[str, Any]:
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


def _response(error: ApiError) -> JSONResponse:
    body = error_body(error.message, error.type, error.param, error.code)
    return JSONResponse(body, status_code=error.status, headers=error.headers or {})


def from_domain(error: OfflineAsrError) -> ApiError:
    """Map our errors to HTTP: bad audio 400/413, unknown model 404, broken weights 503."""
    if isinstance(error, AudioTooLargeError):
        return ApiError(413, str(error), param="file", code="file_too_large")
    if isinstance(error, AudioError):
        return ApiError(400, str(error), param="file", code=type(error).__name__)
    if isinstance(error, ModelNotFoundError):
        return ApiError(404, str(error), param="model", code="model_not_found")
    if isinstance(error, IntegrityError):
        return ApiError(503, str(error), type_="server_error", code="model_integrity")
    if isinstance(error, UnsupportedLanguageError):
        return ApiError(400, str(error), param="language", code="unsupported_language")
    if isinstance(error, EngineError):
        return ApiError(400, str(error), code="unsupported")
    return ApiError(400, str(error))


def install_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def _api(request: Request, error: ApiError) -> JSONResponse:
        return _response(error)

    @app.exception_handler(OfflineAsrError)
    async def _domain(request: Request, error: OfflineAsrError) -> JSONResponse:
        return _response(from_domain(error))

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, error: RequestValidationError) -> JSONResponse:
        first = error.errors()[0] if error.errors() else {"loc": (), "msg": "invalid request"}
        location = [str(part) for part in first.get("loc", ()) if part not in ("body", "query")]
        param = ".".join(location) or None
        message = f"{param}: {first['msg']}" if param else str(first["msg"])
        return _response(ApiError(400, message, param=param, code="invalid_value"))

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, error: StarletteHTTPException) -> JSONResponse:
        type_ = "invalid_request_error" if error.status_code < 500 else "server_error"
        return _response(ApiError(error.status_code, str(error.detail), type_=type_))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, error: Exception) -> JSONResponse:
        message = "internal error; see the server log (request id in X-Request-ID)"
        return _response(ApiError(500, message, type_="server_error"))
