"""What every command module shares: the consoles, option types, the error wrapper, and the
settings and store read once per command (the edge)."""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, ParamSpec, TypeVar

import typer
from rich.console import Console
from rich.text import Text

from offline_asr.config import CONFIG_ENV, Settings
from offline_asr.constants import (
    EXIT_INTERRUPTED,
    LOCAL_GOLDENS_DIR,
    LOCAL_GOLDENS_ENV,
    MANIFEST_ENV,
    TARGET_LOCAL_GOLDENS_DIR,
)
from offline_asr.errors import OfflineAsrError
from offline_asr.registry.store import ModelStore

# Wide enough for tables when piped; a terminal uses its own width. Markup is off: ids, paths,
# transcripts and error messages hold `[...]` that rich would eat; colour comes from `Text`.
out = Console(width=None if sys.stdout.isatty() else 160, markup=False)
err = Console(stderr=True, markup=False)

P = ParamSpec("P")
R = TypeVar("R")
ManifestOption = Annotated[
    Path | None,
    typer.Option(
        "--manifest",
        envvar=MANIFEST_ENV,
        help="Manifest of the model store (default: models/manifest.json)",
        show_default=False,
    ),
]
IdsArgument = Annotated[
    list[str] | None, typer.Argument(metavar="ID", help="Models to use (default: all)")
]
TargetOption = Annotated[
    Path | None,
    typer.Option(help="Installed bundle target: use DIR/current/models/manifest.json"),
]
PublicKeyOption = Annotated[
    str | None,
    typer.Option(
        metavar="FILE",
        show_default=False,
        help="Ed25519 public key; when given, bundles must carry a valid signature "
        "(default: OFFLINE_ASR_BUNDLE_PUBLIC_KEY; set but empty is an error)",
    ),
]
IdentityOption = Annotated[
    str | None, typer.Option(metavar="FILE", help="age identity for encrypted bundles")
]
LockOption = Annotated[
    Path, typer.Option("--lock", help="Hash-pinned requirements lock to compare with or pack")
]
JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]
ThreadsOption = Annotated[
    int | None,
    typer.Option(
        envvar="OFFLINE_ASR_THREADS",
        help="CPU threads per model (0: the runtime's default) (default: 0)",
        show_default=False,
    ),
]


def tagged(tag: str, style: str, message: object) -> Text:
    """`tag` in colour, then `message` exactly as it is."""
    return Text.assemble((tag, style), " ", str(message))


def print_error(message: object) -> None:
    err.print(tagged("error:", "bold red", message), highlight=False, soft_wrap=True)


def write_json(payload: str) -> None:
    """JSON to stdout as it is (rich would highlight it line by line: slow on a big manifest)."""
    sys.stdout.write(payload + "\n")


def reports_errors(command: Callable[P, R]) -> Callable[P, R]:
    """Turn our errors into a one-paragraph message and the contract's exit code."""

    @functools.wraps(command)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return command(*args, **kwargs)
        except OfflineAsrError as error:
            print_error(error)
            raise typer.Exit(error.exit_code) from error
        except KeyboardInterrupt:
            note = "the manifest and the store were left as they were"
            err.print(tagged("interrupted:", "bold yellow", note))
            raise typer.Exit(EXIT_INTERRUPTED) from None

    return wrapper


def read_settings(**flags: object) -> Settings:
    """The settings of this command, read once: flags (None: not given) over environment over
    the TOML file named by OFFLINE_ASR_CONFIG over defaults."""
    config = os.environ.get(CONFIG_ENV)
    return Settings.load(Path(config) if config else None, **flags)


def open_store(settings: Settings, target: Path | None = None) -> ModelStore:
    """The store of `--target` (its current release), else of the manifest setting."""
    if target is not None:
        from offline_asr.delivery.bundle.install import target_manifest

        return ModelStore(target_manifest(target))
    if settings.manifest == Path():  # an empty --manifest or MODEL_REGISTRY_PATH: not "here"
        raise OfflineAsrError(
            f"--manifest / {MANIFEST_ENV} is set but empty: give the manifest file "
            "(models/manifest.json), or leave it unset"
        )
    return ModelStore(settings.manifest)


LocalGoldensOption = Annotated[
    Path | None,
    typer.Option(
        envvar=LOCAL_GOLDENS_ENV,
        help="Fleet-local goldens (default: TARGET/local-goldens with --target, else "
        "STORE/.local-goldens)",
        show_default=False,
    ),
]


def local_goldens_folder(store: ModelStore, target: Path | None, option: Path | None) -> Path:
    if option is not None:
        return option
    if target is not None:
        return target / TARGET_LOCAL_GOLDENS_DIR
    return store.root / LOCAL_GOLDENS_DIR
