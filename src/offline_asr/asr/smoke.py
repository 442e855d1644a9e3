"""Smoke tests: a fixed clip through a model, checked against its reference and golden output.

The verdict rests on the decoded content (README, "Reproducibility"): on a machine of the
golden's reproducibility class it must be byte-identical; scores only have to agree within a
tolerance. When it differs, the weights are re-hashed first and the runtime differences named
after. A machine outside the class is told the manifest's goldens do not apply to it, and
compares with fleet-local goldens if it has them (`models smoke --record-local`).
"""

from __future__ import annotations

import getpass
import json
import platform
import re
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

import jiwer

from offline_asr import __version__
from offline_asr.asr.audio import decode_audio
from offline_asr.asr.base import SCORE_TOLERANCE, DecodeOptions, TranscriptionResult, fingerprint
from offline_asr.asr.goldens import (
    GoldenError,
    GoldenFile,
    decoded_differences,
    describe_class,
    local_golden_path,
    read_golden,
    reproducibility_class,
    runtime_differences,
    score_differences,
    verify_manifest_golden,
    write_golden,
)
from offline_asr.asr.loader import LoadOptions, load_entry
from offline_asr.constants import CLIPS_DIR, EXIT_BAD_INPUT, EXIT_CHECK_FAILED
from offline_asr.errors import IntegrityError, OfflineAsrError
from offline_asr.fsutil import sha256_file
from offline_asr.registry.integrity import verify_models
from offline_asr.registry.prepare import SmokeRecorder
from offline_asr.registry.schemas import Manifest, ModelMetadata, SmokeTest
from offline_asr.registry.store import ModelStore, diff_model, golden_path, restore_files

CLIP_LANGUAGE = {"en_short.wav": "en", "en_second.wav": "en", "ru_short.wav": "ru"}
VERSION_KEYS = ("ctranslate2", "faster-whisper", "onnx-asr", "onnxruntime", "numpy")
SHOWN_DIFFERENCES = 6
RECORDS_NAME = "RECORDS.jsonl"


class SmokeTestError(OfflineAsrError):
    """A model failed its smoke test."""

    exit_code = EXIT_CHECK_FAILED


_CAUSES: dict[str, tuple[str, str | None]] = {
    # runtime key: (why it changes the output, the variable that pins it)
    "arch": ("another CPU architecture", None),
    "ct2_cpu_isa": ("CTranslate2 runs other CPU kernels", "CT2_FORCE_CPU_ISA"),
    "onednn_isa": ("oneDNN runs other kernels", "ONEDNN_MAX_CPU_ISA"),
    "gemm": ("CTranslate2 multiplies with another library (mkl or onednn)", "CT2_USE_MKL"),
    "mkl_cbwr": ("MKL takes another code path", "MKL_CBWR"),
    "numpy_simd": ("NumPy's feature extraction runs other SIMD code", "NPY_DISABLE_CPU_FEATURES"),
    "openblas_core": ("OpenBLAS (feature extraction) runs other kernels", "OPENBLAS_CORETYPE"),
    "openblas_threads": ("OpenBLAS splits feature extraction differently", "OPENBLAS_NUM_THREADS"),
    "onnxruntime_kernels": ("onnxruntime picks its kernels by CPU; it has no switch", None),
    "compute_type": ("the model runs at another compute type", None),
    "precision": ("the model runs at another precision", None),
    "device": ("the model runs on another device", None),
    "loaded_before_pins": ("these libraries were imported before offline-asr pinned them", None),
    "user_pins": ("pins set in the environment", None),
}


def normalize(text: str) -> str:
    """Lowercase, drop punctuation, read Russian yo as ye: WER counts words, not typography."""
    text = text.lower().replace("\u0451", "\u0435")
    return " ".join(re.sub(r"[^\w\s']", " ", text).split())


def word_error_rate(reference: str, hypothesis: str) -> float:
    return float(jiwer.wer(normalize(reference), normalize(hypothesis) or "<empty>"))


def clip_path(store: ModelStore, audio: str) -> Path:
    """A smoke clip: relative to the store if it is there, else one that ships with offline-asr."""
    in_store = store.root / audio
    return in_store if in_store.is_file() else CLIPS_DIR / audio


def default_smoke(model: ModelMetadata) -> SmokeTest:
    """English clip for Whisper, Russian for GigaAM; no WER bound for a structural test model."""
    name = "en_short.wav" if model.engine == "whisper" else "ru_short.wav"
    references = json.loads((CLIPS_DIR / "references.json").read_text(encoding="utf-8"))
    is_test_model = model.is_test_model
    return SmokeTest(
        audio=name,
        audio_sha256=sha256_file(CLIPS_DIR / name).sha256,
        language=CLIP_LANGUAGE[name],
        reference_text=references[name],
        max_wer=None if is_test_model else 0.15 if model.engine == "whisper" else 0.3,
    )


def smoke_options(smoke: SmokeTest) -> DecodeOptions:
    return DecodeOptions(language=smoke.language, word_timestamps=smoke.word_timestamps)


def _run(
    store: ModelStore,
    model: ModelMetadata,
    smoke: SmokeTest,
    manifest_version: int,
    options: LoadOptions,
) -> tuple[TranscriptionResult, tuple[str, ...]]:
    """The smoke clip's transcription, and the engine's class keys."""
    path = clip_path(store, smoke.audio)
    if not path.is_file():
        raise IntegrityError(f"smoke clip {smoke.audio} of {model.id!r} is missing ({path})")
    actual = sha256_file(path).sha256
    if actual != smoke.audio_sha256:
        raise IntegrityError(
            f"smoke clip {path} has sha256 {actual}, the manifest says {smoke.audio_sha256}"
        )
    engine = load_entry(store, model, manifest_version, options)
    return engine.transcribe(decode_audio(path), smoke_options(smoke)), engine.class_keys


def record_golden(
    store: ModelStore,
    model: ModelMetadata,
    smoke: SmokeTest,
    manifest_version: int,
    *,
    options: LoadOptions,
) -> GoldenFile:
    """Run the smoke clip and make its golden output; the WER bound must hold."""
    result, keys = _run(store, model, smoke, manifest_version, options)
    wer = word_error_rate(smoke.reference_text, result.text)
    if smoke.max_wer is not None and wer > smoke.max_wer:
        raise SmokeTestError(
            f"model {model.id!r} transcribed the smoke clip {smoke.audio} as {result.text!r}: "
            f"word error rate {wer:.2f} is above {smoke.max_wer}; nothing was recorded"
        )
    decoded = result.decoded()
    return GoldenFile(
        model_id=model.id,
        fingerprint=result.fingerprint,
        audio=smoke.audio,
        audio_sha256=smoke.audio_sha256,
        options=result.options,
        reproducibility_class=reproducibility_class(result.runtime, keys),
        recorded_at=datetime.now(UTC).replace(microsecond=0),
        recorded_with=__version__,
        runtime=result.runtime,
        decoded_sha256=decoded.sha256(),
        decoded=decoded,
        score_tolerance=SCORE_TOLERANCE,
        scores=result.scores(),
    )


def record_smoke(
    store: ModelStore, model: ModelMetadata, manifest_version: int, *, options: LoadOptions
) -> tuple[SmokeTest, GoldenFile]:
    """The model's smoke test (its own, else the default) recorded on this machine.

    The caller writes the golden file (`ModelStore.replace_goldens`) before it saves the
    manifest that lists it.
    """
    base = model.smoke or default_smoke(model)
    smoke = base.model_copy(update={"word_timestamps": True, "golden": golden_path(model.id)})
    golden = record_golden(store, model, smoke, manifest_version, options=options)
    versions = {key: golden.runtime[key] for key in VERSION_KEYS if key in golden.runtime}
    return smoke.model_copy(update={
        "golden_sha256": golden.decoded_sha256,
        "golden_class": golden.reproducibility_class,
        "runtime": versions,
    }), golden  # fmt: skip


def smoke_recorder(options: LoadOptions) -> SmokeRecorder:
    """`record_smoke` as preparation takes it (`registry.prepare.prepare_model`)."""

    def record(
        store: ModelStore, model: ModelMetadata, manifest_version: int
    ) -> tuple[SmokeTest, str]:
        smoke, golden = record_smoke(store, model, manifest_version, options=options)
        return smoke, golden.to_json()

    return record


def record_manifest_goldens(
    store: ModelStore, ids: list[str] | None, *, options: LoadOptions
) -> Manifest:
    """Record the manifest's goldens again on this machine (it defines their class).

    One manifest_version bump and one CHANGELOG entry for all the models whose smoke changed.
    """
    with store.locked():
        manifest = store.load()
        chosen = [store.get(manifest, i) for i in ids] if ids else manifest.models
        recorded = {m.id: record_smoke(store, m, manifest.manifest_version + 1, options=options)
                    for m in chosen}  # fmt: skip
        models = [
            m.model_copy(update={"smoke": recorded[m.id][0]}) if m.id in recorded else m
            for m in manifest.models
        ]
        changes = [c for old, new in zip(manifest.models, models, strict=True)
                   if (c := diff_model(old, new)) is not None]  # fmt: skip
        changed = {change.model_id for change in changes}
        previous = store.replace_goldens({
            model.id: recorded[model.id][1].to_json() for model in models
            if model.id in changed or (model.id in recorded and not _golden_intact(store, model))
        })  # fmt: skip
        try:
            return store.save(manifest.model_copy(update={"models": models}), changes)
        except BaseException:
            restore_files(previous)
            raise


def _golden_intact(store: ModelStore, model: ModelMetadata) -> bool:
    try:
        verify_manifest_golden(store.root, model)
    except GoldenError:
        return False
    return True


@dataclass
class LocalRecord:
    model_id: str
    path: Path
    sha256: str


def record_local_goldens(
    store: ModelStore,
    models: list[ModelMetadata],
    manifest_version: int,
    folder: Path,
    *,
    options: LoadOptions,
) -> list[LocalRecord]:
    """Record fleet-local goldens for this machine's class; the manifest is not touched.

    Each file names its class, weights, clip and the machine it was recorded on, and a line is
    appended to RECORDS.jsonl in the folder (who, where, when, sha256): copy the folder to the
    other machines of the class and keep it with the installation's records.
    """
    done = []
    for model in models:
        smoke = _require_smoke(model)
        golden = record_golden(store, model, smoke, manifest_version, options=options)
        if smoke.golden is not None and golden.reproducibility_class == smoke.golden_class:
            raise GoldenError(
                f"this machine is in the class of the manifest's golden output of {model.id!r} "
                f"({describe_class(smoke.golden_class)}): `offline-asr models smoke` compares "
                "with it; nothing was recorded"
            )
        path = local_golden_path(folder, golden.reproducibility_class, model.id)
        try:
            write_golden(path, golden)
        except OSError as error:
            raise GoldenError(
                f"cannot write fleet-local goldens into {folder} ({error.strerror}); choose "
                "another folder with --local-goldens"
            ) from error
        digest = sha256_file(path).sha256
        record = {
            "time": golden.recorded_at.isoformat(), "model_id": model.id,
            "file": str(path.relative_to(folder)), "sha256": digest,
            "fingerprint": golden.fingerprint, "manifest_version": manifest_version,
            "class": golden.reproducibility_class, "host": platform.node(),
            "user": getpass.getuser(), "offline_asr": __version__,
        }  # fmt: skip
        with (folder / RECORDS_NAME).open("a", encoding="utf-8") as log:
            log.write(json.dumps(record, ensure_ascii=False) + "\n")
        done.append(LocalRecord(model.id, path, digest))
    return done


Verdict = Literal["match", "differs", "not applicable", "not recorded"]


@dataclass
class SmokeReport:
    model_id: str
    text: str
    reference: str
    wer: float
    max_wer: float | None
    reproducibility_class: dict[str, str]
    verdict: Verdict = "not recorded"
    golden: str | None = None  # the golden file compared with
    problems: list[str] = field(default_factory=list)  # each fails the check
    notes: list[str] = field(default_factory=list)  # worth knowing, not failures
    differences: list[str] = field(default_factory=list)  # decoded fields that differ

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_dict(self) -> dict[str, object]:
        return asdict(self) | {"ok": self.ok}


def explain_difference(recorded: dict[str, str], current: dict[str, str]) -> str:
    """Name the runtime differences that can change the output."""
    causes = []
    for line in runtime_differences(recorded, current):
        key = line.split(":", 1)[0]
        cause, variable = _CAUSES.get(key, ("another version" if key in VERSION_KEYS else "", None))
        if variable is not None:
            cause += f"; {variable} pins it"
        causes.append(f"{line} ({cause})" if cause else line)
    if not causes:
        return (
            "nothing recorded about the runtime differs, so the decoding itself changed "
            "(offline-asr or a library): report it with this output"
        )
    return "runtime differences: " + "; ".join(causes)


def _require_smoke(model: ModelMetadata) -> SmokeTest:
    if model.smoke is None:
        raise IntegrityError(
            f"model {model.id!r} has no smoke test; prepare it again to record one"
        )
    return model.smoke


def check_smoke(
    store: ModelStore,
    model: ModelMetadata,
    manifest_version: int,
    *,
    local_goldens: Path | None = None,
    options: LoadOptions,
) -> SmokeReport:
    """Run a model's smoke test; compare with its reference text and, when one applies to this
    machine's class, its golden output. A bad golden file raises `GoldenError` (exit code 2)."""
    smoke = _require_smoke(model)
    result, keys = _run(store, model, smoke, manifest_version, options)
    klass = reproducibility_class(result.runtime, keys)
    wer = word_error_rate(smoke.reference_text, result.text)
    report = SmokeReport(model.id, result.text, smoke.reference_text, wer, smoke.max_wer, klass)
    if smoke.max_wer is not None and wer > smoke.max_wer:
        report.problems.append(f"word error rate {wer:.2f} is above the bound {smoke.max_wer}")
    found = _golden_for(store, model, smoke, klass, local_goldens, report)
    if found is not None:
        _compare(store, model, smoke, *found, result, report)
    return report


def _golden_for(
    store: ModelStore,
    model: ModelMetadata,
    smoke: SmokeTest,
    klass: dict[str, str],
    local_goldens: Path | None,
    report: SmokeReport,
) -> tuple[GoldenFile, Path, bool] | None:
    """The golden that applies here: (golden, its file, whether it is the manifest's own)."""
    if smoke.golden is None:
        older = (
            " (the one listed was recorded by an older offline-asr)" if smoke.golden_sha256 else ""
        )
        report.notes.append(
            f"no readable golden output is recorded{older}; record one on the machine that "
            f"prepares the models: `offline-asr models smoke --record {model.id}`"
        )
        return None
    if smoke.golden_class == klass:
        path = store.root / smoke.golden
        golden = read_golden(path, model.id)
        if golden.reproducibility_class != smoke.golden_class:
            raise GoldenError(
                f"{path} was recorded for the class {describe_class(golden.reproducibility_class)}"
                f", but the manifest lists it for {describe_class(smoke.golden_class)}; restore "
                "it from git or from the bundle"
            )
        return golden, path, True
    outside = "; ".join(runtime_differences(smoke.golden_class, klass))
    if local_goldens is not None:
        path = local_golden_path(local_goldens, klass, model.id)
        if path.exists() or path.is_symlink():
            golden = read_golden(path, model.id)
            if golden.reproducibility_class != klass:
                raise GoldenError(
                    f"{path} was recorded for the class "
                    f"{describe_class(golden.reproducibility_class)}, not for this machine's "
                    f"({describe_class(klass)}); record it again with `offline-asr models smoke "
                    "--record-local`"
                )
            if (golden.fingerprint, golden.audio_sha256, golden.options) == (
                fingerprint(model),
                smoke.audio_sha256,
                smoke_options(smoke),
            ):
                return golden, path, False
            report.verdict = "not applicable"
            report.notes.append(
                f"the fleet-local golden {path} was recorded for other weights, another clip or "
                f"other options; record it again: `offline-asr models smoke --record-local "
                f"{model.id}`"
            )
            return None
    report.verdict = "not applicable"
    where = f" (into {local_goldens})" if local_goldens is not None else ""
    report.notes.append(
        f"the manifest's golden output was recorded in another reproducibility class ({outside}),"
        " so it does not apply here and was not compared; this is not a fault. To "
        "check machines of this class, record fleet-local goldens on one of them with "
        f"`offline-asr models smoke --record-local`{where} and copy that folder to the others"
    )
    return None


def _compare(
    store: ModelStore,
    model: ModelMetadata,
    smoke: SmokeTest,
    golden: GoldenFile,
    path: Path,
    from_manifest: bool,
    result: TranscriptionResult,
    report: SmokeReport,
) -> None:
    report.golden = str(path)
    pinned = smoke.golden_sha256 if from_manifest else golden.decoded_sha256
    edited = golden.decoded.sha256() != pinned
    if edited:
        report.problems.append(
            f"the golden file {path} does not match its sha256 "
            f"{'in the manifest' if from_manifest else 'recorded in it'} ({pinned}): it was "
            "changed after it was recorded; restore it from git or from the bundle"
        )
    now = result.decoded()
    differences = decoded_differences(golden.decoded, now)
    if not differences:
        report.verdict = "match"
        scores = score_differences(golden.scores, result.scores(), golden.score_tolerance)
        if scores:
            shown = "; ".join(str(d) for d in scores[:SHOWN_DIFFERENCES])
            report.notes.append(
                f"the decoded output matches; {len(scores)} scores differ by more than "
                f"{golden.score_tolerance}: {shown}. "
                + explain_difference(golden.runtime, result.runtime)
            )
        return
    report.verdict = "differs"
    report.differences = [f"{model.id}, {d}" for d in differences]
    shown = "; ".join(str(d) for d in differences[:SHOWN_DIFFERENCES])
    if len(differences) > SHOWN_DIFFERENCES:
        shown += f"; and {len(differences) - SHOWN_DIFFERENCES} more"
    (weights,) = verify_models(store.root, [model])
    if not weights.ok:
        listed = "; ".join(f"{p.path}: {p.problem}" for p in weights.problems)
        cause = (
            f"the weights differ from the manifest ({listed}): reinstall the bundle or "
            "`bundle rollback`"
        )
    else:
        cause = (
            f"the weights are not the cause: all {weights.files_checked} files were hashed "
            "again and match the manifest; "
            + (
                "the golden file was changed (above)"
                if edited
                else explain_difference(golden.runtime, result.runtime)
            )
        )
    report.problems.append(
        f"the decoded output of {model.id} differs from the golden output {path}: {shown}. {cause}"
    )


def smoke_exit_code(reports: list[SmokeReport], bad_inputs: int) -> int:
    """2 when a golden file could not be used, 1 when a check failed, else 0."""
    if bad_inputs:
        return EXIT_BAD_INPUT
    return 0 if all(r.ok for r in reports) else EXIT_CHECK_FAILED
