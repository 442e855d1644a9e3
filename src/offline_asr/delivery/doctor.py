"""`offline-asr doctor`: the one command an operator runs on an air-gapped host.

Environment against the lock, every artifact against the manifest, every smoke test against the
golden output of this machine's reproducibility class; a summary with a verdict and what to do.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from offline_asr.asr.goldens import GoldenError
from offline_asr.asr.loader import LoadOptions
from offline_asr.asr.smoke import check_smoke
from offline_asr.delivery.envcheck import check_environment
from offline_asr.delivery.running_server import serving
from offline_asr.errors import OfflineAsrError
from offline_asr.registry.integrity import verify_models
from offline_asr.registry.schemas import ModelMetadata
from offline_asr.registry.store import ModelStore

Status = Literal["ok", "warn", "fail"]


@dataclass
class Check:
    area: str
    subject: str
    status: Status
    detail: str
    fix: str = ""


@dataclass
class DoctorReport:
    checks: list[Check] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(check.status != "fail" for check in self.checks)

    def next_steps(self) -> list[str]:
        return list(dict.fromkeys(c.fix for c in self.checks if c.status == "fail" and c.fix))


def run_doctor(
    store: ModelStore, lock: Path, options: LoadOptions, *, local_goldens: Path | None = None
) -> DoctorReport:
    """Run every check; a failing area does not stop the others.

    A store without a readable manifest or without models gets no verdict (`ManifestError`).
    """
    manifest = store.load_models("check")
    report = DoctorReport()
    environment = check_environment(lock, store.root)
    for finding in environment.findings:
        if finding.level != "ok":
            report.checks.append(
                Check("environment", finding.topic, finding.level, finding.detail, finding.fix)
            )
    if environment.ok:
        report.checks.append(Check("environment", "packages", "ok", f"match {lock}"))
    verified = {r.model_id: r for r in verify_models(store.root, manifest.models)}
    for model in manifest.models:
        integrity = verified[model.id]
        if not integrity.ok:
            problems = "; ".join(f"{p.path}: {p.problem}" for p in integrity.problems)
            report.checks.append(Check("integrity", model.id, "fail", problems,
                                       "reinstall the bundle or `bundle rollback`"))  # fmt: skip
            continue
        report.checks.append(
            Check("integrity", model.id, "ok", f"{integrity.files_checked} files verified")
        )
        if model.smoke is None:
            report.checks.append(Check("smoke", model.id, "warn", "no smoke test recorded"))
            continue
        report.checks.append(
            _smoke_check(store, model, manifest.manifest_version, options, local_goldens)
        )
    return report


def _smoke_check(
    store: ModelStore,
    model: ModelMetadata,
    manifest_version: int,
    options: LoadOptions,
    local_goldens: Path | None,
) -> Check:
    try:
        smoke = check_smoke(
            store, model, manifest_version, local_goldens=local_goldens, options=options
        )
    except GoldenError as error:
        fix = "restore the golden file: reinstall the bundle or `bundle rollback`"
        return Check("smoke", model.id, "fail", str(error), fix)
    except OfflineAsrError as error:
        return Check("smoke", model.id, "fail", str(error))
    bound = "" if smoke.max_wer is None else f" (bound {smoke.max_wer})"
    detail = "; ".join([f"WER {smoke.wer:.2f}{bound}, golden output: {smoke.verdict}",
                        *smoke.problems, *smoke.notes])  # fmt: skip
    if not smoke.ok:
        fix = "see the detail: it names the weights' state and the runtime differences"
        return Check("smoke", model.id, "fail", detail, fix)
    return Check("smoke", model.id, "warn" if smoke.notes else "ok", detail)


def server_check(where: str, current_release: Path | None) -> Check:
    """Which release the server at `where` (URL or pidfile) serves, against the target's
    `current`: ok when they agree, a warning while it serves another one, a failure when no
    server runs there or it refused the current release."""
    try:
        found = serving(where)
    except OfflineAsrError as error:
        return Check("server", where, "fail", str(error),
                     "start it: `offline-asr serve --target DIR --pidfile FILE`")  # fmt: skip
    detail = f"{found.server} serves v{found.manifest_version} ({found.release})"
    if current_release is None or Path(found.release) == current_release:
        return Check("server", where, "ok", detail + ("" if current_release is None else
                                                      ", the current release"))  # fmt: skip
    refused = found.reload or {}
    if refused.get("outcome") == "refused" and refused.get("release") == str(current_release):
        return Check("server", where, "fail", f"{detail}; it refused {current_release}: "
                     f"{refused.get('error')}", "install that release's bundle again or "
                     "`bundle rollback`, then reload the server")  # fmt: skip
    return Check("server", where, "warn", f"{detail}, not the current {current_release}",
                 "ask it to reload: `kill -HUP $(cat PIDFILE)`, POST /admin/reload, or "
                 "`bundle install/rollback --notify`")  # fmt: skip
