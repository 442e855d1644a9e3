"""`offline-asr env ...`: the Python environment against the lock, packed for offline use."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from offline_asr.cli.common import (
    JsonOption,
    LockOption,
    ManifestOption,
    open_store,
    out,
    read_settings,
    reports_errors,
)
from offline_asr.constants import EXIT_CHECK_FAILED

app = typer.Typer(
    help="The Python environment: check it against the lock, pack it for offline machines.",
    no_args_is_help=True,
)


@app.command("check")
@reports_errors
def env_check(
    json_: JsonOption = False,
    lock: LockOption = Path("requirements.lock"),
    manifest: ManifestOption = None,
) -> None:
    """Python, packages, CTranslate2, ONNX Runtime, FFmpeg, CUDA, CPU ISA and free disk
    against the lock; exit 1 on a mismatch that matters, with what to do about it."""
    from offline_asr.delivery.envcheck import check_environment

    report = check_environment(lock, open_store(read_settings(manifest=manifest)).root)
    if json_:
        out.print_json(json.dumps(report.to_dict()))
    else:
        out.print(report.render_table())
    if not report.ok:
        raise typer.Exit(EXIT_CHECK_FAILED)


@app.command("pack")
@reports_errors
def env_pack(
    out_dir: Annotated[Path, typer.Option("--out", help="Output folder")] = Path("envs"),
    lock: LockOption = Path("requirements.lock"),
    platform_tag: Annotated[
        str | None,
        typer.Option(help="cpu or cuda12 (default: cuda12 when a CUDA device is visible)"),
    ] = None,
) -> None:
    """Wheelhouse + lock + INSTALL.txt as envs/python{XY}_{cpu|cuda12}.tar.gz (+ .sha256),
    for `pip install --no-index --require-hashes` on a machine without network."""
    from offline_asr.delivery.envpack import pack_environment

    result = pack_environment(lock, out_dir, platform_tag=platform_tag)
    out.print(f"wrote {result.archive} ({result.size:,} bytes, {len(result.wheels)} wheels)")
    out.print(f"sha256 {result.sha256} ({result.checksum_file.name})", highlight=False)
