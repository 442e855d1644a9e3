"""Following a target's `current` while serving (`serve --target`): verify the release it
points to completely (every byte, every golden file, the smoke tests of the models this server
preloads), load those models beside the old ones, switch new requests to it in one step, and
let the old release go when its last request ends. A refusal leaves the old release serving
and says why in the log, the audit log, `/ready` and `/metrics`. Triggered by SIGHUP,
`POST /admin/reload` and (opt-in) polling; one reload at a time, never queued."""

from __future__ import annotations

import asyncio
import signal
import sys
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from offline_asr.asr.audit import AuditLog
from offline_asr.asr.loader import LoadOptions
from offline_asr.asr.release_check import MANIFEST_IN_RELEASE, smoke_problems, snapshot_problems
from offline_asr.asr.router import AUTO_MODEL
from offline_asr.constants import EXIT_CHECK_FAILED, TARGET_LOCAL_GOLDENS_DIR
from offline_asr.errors import OfflineAsrError
from offline_asr.registry.snapshot import ManifestSnapshot
from offline_asr.registry.store import ModelStore
from offline_asr.service.metrics import Metrics
from offline_asr.service.pidfile import Pidfile
from offline_asr.service.pool import ModelPool

Outcome = Literal["switched", "unchanged", "refused"]
MAX_REASON = 300  # a metric label, not a report: the log and /ready have the whole message


class ReloadBusyError(OfflineAsrError):
    """A reload is running; another one is refused, not queued."""


class ReleaseRefusedError(OfflineAsrError):
    """The release `current` points to failed verification or loading; the old one serves."""

    exit_code = EXIT_CHECK_FAILED


class NoTargetError(OfflineAsrError):
    """The server was started with --manifest: there is no `current` to follow."""


@dataclass(frozen=True)
class ReloadOutcome:
    outcome: Outcome
    trigger: str
    release: str  # the folder `current` pointed to
    manifest_version: int | None  # of that release (None: its manifest could not be read)
    serving_manifest_version: int  # what new requests get now
    previous_manifest_version: int | None = None  # what they got before a switch
    error: str | None = None
    at: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _log(message: str) -> None:
    print(f"offline-asr: reload: {message}", file=sys.stderr, flush=True)


class Reloader:
    """Switches the pool to the release `target/current` points to, after checking it."""

    def __init__(
        self,
        pool: ModelPool,
        target: Path | None,
        *,
        options: LoadOptions,
        metrics: Metrics,
        audit: AuditLog,
        pidfile: Pidfile | None,
    ) -> None:
        self.pool, self.target, self.options = pool, target, options
        self.metrics, self.audit, self.pidfile = metrics, audit, pidfile
        self.last: ReloadOutcome | None = None
        self._running = threading.Lock()

    def _current(self) -> Path:
        assert self.target is not None
        return (self.target / "current").resolve()

    def pending(self) -> bool:
        """`current` points to a release that is neither served nor the one refused last."""
        if self.target is None or self._running.locked():
            return False
        folder = self._current()
        last = self.last
        refused = last is not None and last.outcome == "refused" and last.release == str(folder)
        return folder != self.pool.current.folder and not refused

    def reload(self, trigger: str) -> ReloadOutcome:
        """Check and switch to the release `current` points to; `ReleaseRefusedError` (the old
        release still serving) or `ReloadBusyError` when one is running."""
        if self.target is None:
            raise NoTargetError(
                "this server was started with --manifest, so it has no `current` to follow; "
                "start it with `offline-asr serve --target DIR` to update models while serving"
            )
        if not self._running.acquire(blocking=False):
            self.metrics.reloads.labels("busy").inc()
            raise ReloadBusyError(
                "a reload is already running; this one was not queued: wait for it to end "
                "(GET /ready shows its outcome), then ask again if needed"
            )
        try:
            return self._reload(trigger, self._current())
        finally:
            self._running.release()

    def _reload(self, trigger: str, folder: Path) -> ReloadOutcome:
        serving = self.pool.current
        if folder == serving.folder:
            return self._record(ReloadOutcome(
                "unchanged", trigger, str(folder), serving.version, serving.version
            ))  # fmt: skip
        _log(f"({trigger}) checking {folder}: every file, the golden outputs, smoke tests")
        version = None
        try:
            snapshot = ManifestSnapshot.read(ModelStore(folder / MANIFEST_IN_RELEASE))
            version = snapshot.version
            problems = snapshot_problems(snapshot) or smoke_problems(
                snapshot, [m for m in self.pool.preloaded if m != AUTO_MODEL], self.options,
                local_goldens=self.target / TARGET_LOCAL_GOLDENS_DIR if self.target else None,
            )  # fmt: skip
            if problems:
                raise ReleaseRefusedError("; ".join(problems))
            _log(f"v{version} verified; loading {', '.join(self.pool.preloaded)} beside "
                 f"v{serving.version}")  # fmt: skip
            prepared = self.pool.prepare(snapshot)
        except OfflineAsrError as error:
            message = (
                f"refused {folder} (manifest_version {version}): {error}. "
                f"v{serving.version} keeps serving; install that release's bundle again or "
                "`bundle rollback`, then reload"
            )
            self._record(ReloadOutcome(
                "refused", trigger, str(folder), version, serving.version, error=message
            ))  # fmt: skip
            raise ReleaseRefusedError(message) from error
        before = self.pool.switch(prepared)
        return self._record(ReloadOutcome(
            "switched", trigger, str(folder), prepared.version, prepared.version,
            previous_manifest_version=before.version,
        ))  # fmt: skip

    def _record(self, outcome: ReloadOutcome) -> ReloadOutcome:
        """Say it everywhere: log, audit log, metrics, /ready (self.last), the pidfile's state."""
        outcome = ReloadOutcome(**{**outcome.to_dict(), "at": _now()})
        self.metrics.reloads.labels(outcome.outcome).inc()
        if outcome.outcome != "unchanged":
            self.metrics.reload_refused.clear()
        if outcome.outcome == "refused" and outcome.error is not None:
            self.metrics.reload_refused.labels(
                str(outcome.manifest_version), outcome.error[:MAX_REASON]
            ).set(1)
        if outcome.outcome == "switched":
            before = outcome.previous_manifest_version
            _log(f"({outcome.trigger}) switched to v{outcome.manifest_version}; v{before} "
                 "unloads when its last request ends")  # fmt: skip
        elif outcome.outcome == "refused":
            _log(f"({outcome.trigger}) {outcome.error}")
        else:
            _log(f"({outcome.trigger}) v{outcome.manifest_version} is served already")
        self.audit.write("reload", outcome.to_dict())
        self.last = outcome
        self.publish()
        return outcome

    def publish(self) -> None:
        if self.pidfile is not None:
            self.pidfile.publish(self.state())

    def state(self) -> dict[str, Any]:
        """What is served, for /ready and the pidfile's state file."""
        current = self.pool.current
        state: dict[str, Any] = {
            "manifest_version": current.version, "release": str(current.folder)
        }  # fmt: skip
        if self.last is not None:
            state["reload"] = self.last.to_dict()
        return state

    def reload_in_background(self, trigger: str) -> None:
        """For SIGHUP and polling: the outcome is logged; nobody waits for an answer."""
        try:
            self.reload(trigger)
        except (ReleaseRefusedError, ReloadBusyError, NoTargetError) as error:
            if not isinstance(error, ReleaseRefusedError):  # a refusal was logged already
                _log(f"({trigger}) {error}")


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


@asynccontextmanager
async def following(reloader: Reloader, poll_s: float) -> AsyncIterator[None]:
    """While the app runs: SIGHUP reloads, and with `poll_s` > 0 a change of `current` does.
    A SIGHUP that came while the models were loading (`hangups_before_start`) counts too."""
    loop = asyncio.get_running_loop()
    tasks: set[asyncio.Future[None]] = set()

    def start(trigger: str) -> None:
        task = asyncio.ensure_future(asyncio.to_thread(reloader.reload_in_background, trigger))
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    async def poll() -> None:
        while True:
            await asyncio.sleep(poll_s)
            if await asyncio.to_thread(reloader.pending):
                await asyncio.to_thread(reloader.reload_in_background, "poll")

    # Signals reach only the main thread's loop; an app run elsewhere (a Ray Serve replica,
    # whose loop is on another thread) reloads on POST /admin/reload and polling only.
    hangups = threading.current_thread() is threading.main_thread()
    if hangups:
        loop.add_signal_handler(signal.SIGHUP, start, "SIGHUP")
    if HANGUPS_BEFORE_START.is_set():
        start("SIGHUP")
    poller = asyncio.ensure_future(poll()) if poll_s > 0 and reloader.target else None
    try:
        yield
    finally:
        if hangups:
            loop.remove_signal_handler(signal.SIGHUP)
        for task in [*tasks, *([poller] if poller else [])]:
            task.cancel()
            with suppress(asyncio.CancelledError, OfflineAsrError):
                await task


HANGUPS_BEFORE_START = threading.Event()


def catch_early_hangups() -> None:
    """Until the app runs, a SIGHUP (which would end the process) is remembered instead."""
    signal.signal(signal.SIGHUP, lambda *_: HANGUPS_BEFORE_START.set())
