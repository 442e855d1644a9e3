"""The `offline-asr` command line: one module per command group, assembled here.

The console script is `offline_asr.cli:app`.
"""

from __future__ import annotations

from typing import Annotated

import typer

from offline_asr import __version__
from offline_asr.cli import (
    audit,
    batch,
    bundle,
    doctor,
    env,
    listen,
    models,
    serve,
    smoke,
    transcribe,
)
from offline_asr.cli.common import out
from offline_asr.offline import go_offline

app = typer.Typer(
    help="Offline speech recognition: a verified registry of Whisper and GigaAM models.",
    add_completion=False,
    rich_markup_mode="markdown",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
app.add_typer(models.app, name="models")
models.app.command("smoke")(smoke.smoke)
app.add_typer(bundle.app, name="bundle")
app.add_typer(env.app, name="env")
app.add_typer(audit.app, name="audit")
app.command("transcribe")(transcribe.transcribe)
app.command("batch")(batch.batch)
app.command("serve")(serve.serve)
app.command("listen")(listen.listen)
app.command("doctor")(doctor.doctor)


def _version(value: bool) -> None:
    if value:
        out.print(f"offline-asr {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    ctx: typer.Context,
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version.")
    ] = False,
) -> None:
    """Offline speech recognition with an audit trail."""
    if ctx.invoked_subcommand != "models":  # `models` decides per command, below
        go_offline()
