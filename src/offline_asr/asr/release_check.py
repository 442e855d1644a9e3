"""Whether a release may be switched to: every byte against its manifest, every golden file,
and (for a server) the smoke tests of the models it will load.

One place for the checks that `bundle install`, `bundle rollback` and a server's reload share;
the smoke tests are `models smoke`'s and `doctor`'s own (`asr.smoke.check_smoke`).
"""

from __future__ import annotations

from pathlib import Path

from offline_asr.asr.goldens import GoldenError, verify_manifest_golden
from offline_asr.asr.loader import LoadOptions
from offline_asr.asr.smoke import check_smoke
from offline_asr.errors import OfflineAsrError
from offline_asr.registry.integrity import verify_models
from offline_asr.registry.snapshot import ManifestSnapshot
from offline_asr.registry.store import ModelStore

MANIFEST_IN_RELEASE = "models/manifest.json"


def release_problems(release: Path, version: int) -> list[str]:
    """Why the release folder is not a complete, unaltered v{version} (empty: it is).

    Its manifest must be there, valid, of that version and list models; then `snapshot_problems`.
    """
    manifest_path = release / MANIFEST_IN_RELEASE
    if not manifest_path.is_file():
        return [f"{MANIFEST_IN_RELEASE} is missing"]
    try:
        snapshot = ManifestSnapshot.read(ModelStore(manifest_path))
    except OfflineAsrError as error:
        return [f"{MANIFEST_IN_RELEASE} cannot be used: {error}"]
    if snapshot.version != version:
        return [f"{MANIFEST_IN_RELEASE} has manifest_version {snapshot.version}, not {version}"]
    return snapshot_problems(snapshot)


def snapshot_problems(snapshot: ManifestSnapshot) -> list[str]:
    """Every artifact hashed against the snapshot (sha256 and size, nothing unlisted in the
    model folders), every golden file against the decoded content it pins; paths are named
    from the release folder (`models/...`)."""
    manifest = snapshot.manifest
    if not manifest.models:
        return [f"{MANIFEST_IN_RELEASE} lists no models"]
    problems = [
        f"models/{problem.sentence()}"
        for report in verify_models(snapshot.root, manifest.models)
        for problem in report.problems
    ]
    for model in manifest.models:
        try:
            verify_manifest_golden(snapshot.root, model)
        except GoldenError as error:
            problems.append(str(error))
    return problems


def smoke_problems(
    snapshot: ManifestSnapshot,
    model_ids: list[str],
    options: LoadOptions,
    *,
    local_goldens: Path | None,
) -> list[str]:
    """The smoke test of each model (its clip against the reference and the golden output of
    this machine's class), as `models smoke` and `doctor` run it. A model without a recorded
    smoke test is a problem: nothing would show that it transcribes here."""
    problems = []
    for model_id in model_ids:
        try:
            report = check_smoke(snapshot.store, snapshot.entry(model_id), snapshot.version,
                                 local_goldens=local_goldens, options=options)  # fmt: skip
        except OfflineAsrError as error:
            problems.append(f"{model_id}: {error}")
            continue
        problems.extend(f"{model_id}: smoke test: {problem}" for problem in report.problems)
    return problems
