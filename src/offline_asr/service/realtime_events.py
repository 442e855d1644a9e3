"""The shapes of OpenAI's Realtime API for transcription sessions: the session configuration a
`session.update` may change, and the server events (as the `openai` SDK's
`openai.types.realtime` types define them)."""

from __future__ import annotations

import secrets
from dataclasses import dataclass, replace
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from offline_asr.service.turns import RATES, ServerVad

DEFAULT_VAD = ServerVad()  # OpenAI's default for transcription sessions
CLIENT_EVENTS = (
    "session.update",
    "input_audio_buffer.append",
    "input_audio_buffer.commit",
    "input_audio_buffer.clear",
)


class ProtocolError(Exception):
    """A client event the session cannot take: becomes an `error` event, the session goes on."""

    def __init__(self, message: str, *, code: str, param: str | None = None) -> None:
        super().__init__(message)
        self.message, self.code, self.param = message, code, param


def new_id(prefix: str) -> str:
    return f"{prefix}_{secrets.token_hex(8)}"


def event(type_: str, **fields: Any) -> dict[str, Any]:
    """A server event with its own id."""
    return {"type": type_, "event_id": new_id("event"), **fields}


def error_event(
    message: str,
    *,
    code: str,
    param: str | None = None,
    type_: str = "invalid_request_error",
    event_id: str | None = None,
) -> dict[str, Any]:
    """OpenAI's `error` event; `event_id` in the error names the client event at fault."""
    error = {"type": type_, "code": code, "message": message, "param": param, "event_id": event_id}
    return event("error", error=error)


@dataclass(frozen=True)
class SessionConfig:
    """What a transcription session uses now; `session.update` changes the fields it names."""

    model: str
    language: str | None = None
    prompt: str | None = None
    rate: int = RATES[0]
    vad: ServerVad | None = DEFAULT_VAD

    def describe(self, session_id: str, expires_at: int) -> dict[str, Any]:
        """The session object of `session.created` / `session.updated`."""
        vad = None if self.vad is None else {"type": "server_vad", **self.vad.__dict__}
        return {
            "id": session_id,
            "object": "realtime.transcription_session",
            "type": "transcription",
            "expires_at": expires_at,
            "include": [],
            "audio": {
                "input": {
                    "format": {"type": "audio/pcm", "rate": self.rate},
                    "transcription": {
                        "model": self.model, "language": self.language, "prompt": self.prompt,
                    },
                    "turn_detection": vad,
                    "noise_reduction": None,
                }
            },
        }  # fmt: skip


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class _Format(_Strict):
    type: Literal["audio/pcm"] = "audio/pcm"
    rate: Literal[24000, 16000] = 24000


class _Transcription(_Strict):
    model: str | None = Field(None, min_length=1)
    language: str | None = None
    prompt: str | None = None


class _ServerVad(_Strict):
    type: Literal["server_vad"]
    threshold: float | None = Field(None, ge=0.0, le=1.0)
    prefix_padding_ms: int | None = Field(None, ge=0, le=10_000)
    silence_duration_ms: int | None = Field(None, ge=32, le=10_000)
    # OpenAI's response switches: a transcription session creates no responses.
    create_response: bool | None = None
    interrupt_response: bool | None = None


class _Input(_Strict):
    format: _Format | None = None
    transcription: _Transcription | None = None
    turn_detection: _ServerVad | None = None
    noise_reduction: dict[str, Any] | None = None  # accepted, not applied (README)


class _Audio(_Strict):
    input: _Input | None = None


class _Session(_Strict):
    type: Literal["transcription"]
    audio: _Audio | None = None
    include: list[str] | None = None  # logprobs are not sent


def updated(config: SessionConfig, session: object) -> SessionConfig:
    """`config` with the fields a `session.update`'s `session` names; raises `ProtocolError`."""
    if isinstance(session, dict) and session.get("type") == "realtime":
        raise ProtocolError(
            "this server transcribes only: send a transcription session "
            '({"type": "transcription", ...}) and connect with ?intent=transcription',
            code="invalid_value", param="session.type",
        )  # fmt: skip
    try:
        parsed = _Session.model_validate(session)
    except ValidationError as error:
        problem = error.errors()[0]
        where = ".".join(str(part) for part in ("session", *problem["loc"]))
        message = f"{where}: {problem['msg']}"
        if problem["type"] == "extra_forbidden":
            message = f"{where}: unknown or unsupported parameter"
        raise ProtocolError(message, code="invalid_value", param=where) from error
    given = parsed.audio.input if parsed.audio and parsed.audio.input else None
    if given is None:
        return config
    changes: dict[str, Any] = {}
    if given.format is not None:
        changes["rate"] = given.format.rate
    if given.transcription is not None:
        for name in given.transcription.model_fields_set:
            value = getattr(given.transcription, name)
            if name == "model" and value is None:
                raise ProtocolError(
                    "session.audio.input.transcription.model: give a model id (GET /v1/models)",
                    code="invalid_value", param="session.audio.input.transcription.model",
                )  # fmt: skip
            changes[name] = value or None
    if "turn_detection" in given.model_fields_set:
        changes["vad"] = _vad(given.turn_detection, config.vad)
    return replace(config, **changes)


def _vad(given: _ServerVad | None, current: ServerVad | None) -> ServerVad | None:
    if given is None:
        return None
    base = current or ServerVad()
    fields = {
        name: getattr(given, name)
        for name in ("threshold", "prefix_padding_ms", "silence_duration_ms")
        if getattr(given, name) is not None
    }
    return replace(base, **fields)
