"""Reaching a running server from the command line (`bundle install/rollback --notify`,
`doctor --server`): ask it to reload, or ask which release it serves.

A server is named by its URL (`http://HOST:PORT`: `POST /admin/reload` with the admin key,
`GET /ready`) or by the pidfile `serve --pidfile` wrote (SIGHUP to the pid; FILE.json says what
it serves). A pidfile counts only while its server holds its lock: a stale one names no server.
"""

from __future__ import annotations

import json
import os
import signal
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from offline_asr.constants import ADMIN_RELOAD_PATH, EXIT_CHECK_FAILED, PIDFILE_STATE_SUFFIX
from offline_asr.errors import OfflineAsrError
from offline_asr.fsutil import lock_is_held

MAX_ANSWER = 1 << 20  # /ready, the reload's answer and the state file are small
RELOAD_TIMEOUT_S = 900  # the server answers once the release is verified, loaded and switched


class ServerError(OfflineAsrError):
    """No server answered, or it did not switch."""

    exit_code = EXIT_CHECK_FAILED


@dataclass(frozen=True)
class Serving:
    """What a running server says it serves."""

    server: str  # "pid N" or the URL
    manifest_version: int
    release: str
    reload: dict[str, Any] | None


def is_url(where: str) -> bool:
    return where.startswith(("http://", "https://"))


def _base(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"


def _call(method: str, url: str, key: str | None, timeout: float) -> tuple[int, dict[str, Any]]:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    request = urllib.request.Request(url, method=method, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            status, data = response.status, response.read(MAX_ANSWER)
    except urllib.error.HTTPError as error:
        status, data = error.code, error.read(MAX_ANSWER)
    except (urllib.error.URLError, OSError) as error:
        reason = getattr(error, "reason", error)
        raise ServerError(f"no server answered at {url}: {reason}") from error
    try:
        body = json.loads(data)
    except ValueError as error:
        raise ServerError(f"{url} answered {status} with something other than JSON") from error
    return status, body if isinstance(body, dict) else {}


def live_pid(pidfile: Path) -> int:
    """The pid of the server holding `pidfile`; `ServerError` if none does."""
    try:
        text = pidfile.read_text(encoding="ascii").strip()
    except FileNotFoundError as error:
        raise ServerError(f"no server is running: {pidfile} does not exist") from error
    except (OSError, UnicodeDecodeError) as error:
        raise OfflineAsrError(f"cannot read the pidfile {pidfile}: {error}") from error
    if not text.isdigit():
        raise OfflineAsrError(f"{pidfile} is not a pidfile (it should hold one number)")
    if not lock_is_held(pidfile):
        raise ServerError(
            f"no server is running with the pidfile {pidfile}: pid {text} left it behind "
            "(killed, or stopped before it could remove it)"
        )
    return int(text)


def notify(where: str, key: str | None) -> str:
    """Ask the server to reload; a sentence saying what happened. With a URL the answer comes
    once the server has switched (or refused: `ServerError`, the reason named); with a pidfile
    the SIGHUP is sent and the server reloads on its own."""
    if not is_url(where):
        pid = live_pid(Path(where))
        os.kill(pid, signal.SIGHUP)
        return (
            f"sent SIGHUP to {pid} (pidfile {where}): it verifies the release before it switches; "
            f"`offline-asr doctor --server {where}` says what it serves"
        )
    url = where if urlsplit(where).path not in ("", "/") else _base(where) + ADMIN_RELOAD_PATH
    status, body = _call("POST", url, key, RELOAD_TIMEOUT_S)
    if status != 200:
        message = body.get("error", {}).get("message", f"HTTP {status}")
        raise ServerError(f"the server at {_base(where)} did not switch: {message}")
    return (
        f"the server at {_base(where)} serves v{body['serving_manifest_version']} "
        f"({body['status']})"
    )


def serving(where: str) -> Serving:
    """Which release the server serves: `GET /ready` of a URL, or a live pidfile's state."""
    if is_url(where):
        _, body = _call("GET", _base(where) + "/ready", None, 30)
        return Serving(_base(where), body["manifest_version"], body["release"], body.get("reload"))
    pidfile = Path(where)
    pid = live_pid(pidfile)
    state_file = pidfile.with_name(pidfile.name + PIDFILE_STATE_SUFFIX)
    try:
        with state_file.open("rb") as stream:
            state = json.loads(stream.read(MAX_ANSWER))
    except (OSError, ValueError) as error:
        state = {"pid": None, "error": str(error)}
    if not isinstance(state, dict) or state.get("pid") != pid:
        raise ServerError(
            f"pid {pid} holds {pidfile}, but {state_file} does not describe it yet: it is "
            "probably still loading its models; ask again when /ready answers"
        )
    return Serving(f"pid {pid}", state["manifest_version"], state["release"], state.get("reload"))
