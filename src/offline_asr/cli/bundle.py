"""`offline-asr bundle ...`: build, verify, install, list, roll back, prune, keygen."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer

from offline_asr.cli.common import (
    IdentityOption,
    ManifestOption,
    PublicKeyOption,
    open_store,
    out,
    read_settings,
    reports_errors,
)
from offline_asr.errors import OfflineAsrError

NotifyOption = Annotated[
    str | None,
    typer.Option(
        metavar="URL|PIDFILE",
        help="Then ask the running server to reload: its URL (POST /admin/reload, with the key "
        "in OFFLINE_ASR_ADMIN_KEY; waits for the switch) or its pidfile (SIGHUP)",
    ),
]

app = typer.Typer(
    help="Offline bundles: build, verify, install, list, roll back, prune, keygen.",
    no_args_is_help=True,
)


def key_files(public_key: str | None, identity: str | None) -> tuple[Path | None, Path | None]:
    """The bundle key files asked for; an empty setting is an error, never "no key"."""
    from offline_asr.delivery.bundle.signing import public_key_setting

    if identity is not None and not identity.strip():
        raise OfflineAsrError("--identity is empty: give the age identity file, or leave it out")
    return public_key_setting(public_key, os.environ), Path(identity) if identity else None


@app.command("build")
@reports_errors
def bundle_build(
    models: Annotated[
        list[str] | None, typer.Option("--models", help="Models to pack (default: all)")
    ] = None,
    out_dir: Annotated[Path, typer.Option("--out", help="Output folder")] = Path("dist"),
    with_wheels: Annotated[
        bool, typer.Option(help="Also pack a wheelhouse for the lock (downloads from PyPI)")
    ] = False,
    ray: Annotated[
        bool,
        typer.Option(
            "--ray",
            help="With --with-wheels: the wheelhouse of requirements-ray.lock (the runtime and "
            "the `ray` extra, for the nodes of a cluster)",
        ),
    ] = False,
    recipient: Annotated[
        list[str] | None, typer.Option(help="Encrypt to this age public key (repeatable)")
    ] = None,
    sign_key: Annotated[Path | None, typer.Option(help="Ed25519 private key to sign with")] = None,
    base_manifest: Annotated[
        Path | None, typer.Option(help="Delta: pack only artifacts changed since this manifest")
    ] = None,
    locks_from: Annotated[Path, typer.Option(help="Folder with the lock files")] = Path(),
    manifest: ManifestOption = None,
) -> None:
    """Pack exactly what the manifest lists into offline_bundle_v{N}.tar.zst (+ .sha256, .sig).
    Rebuilding from the same inputs gives the same bytes (unless encrypted)."""
    import tempfile

    from offline_asr.delivery.bundle.build import RAY_LOCK, build_bundle

    if ray and not with_wheels:
        raise typer.BadParameter("--ray chooses the wheelhouse's lock: add --with-wheels")
    with tempfile.TemporaryDirectory() as tmp:
        wheels = None
        if with_wheels:
            from offline_asr.delivery.envpack import download_wheels

            lock = locks_from / (RAY_LOCK if ray else "requirements.lock")
            wheels = download_wheels(lock, Path(tmp))
        result = build_bundle(
            open_store(read_settings(manifest=manifest)), out_dir, model_ids=models,
            recipients=recipient, sign_key=sign_key,
            base_manifest=base_manifest, locks_dir=locks_from, wheels=wheels,
        )  # fmt: skip
    kind = "delta " if result.contents.base_manifest_version is not None else ""
    out.print(f"built {kind}bundle {result.path} ({result.size:,} bytes)", highlight=False)
    out.print(f"sha256 {result.sha256}", highlight=False)
    out.print(f"models {', '.join(result.contents.models)}; {len(result.contents.files)} files")
    if result.signature is not None:
        out.print(f"signature {result.signature}", highlight=False)


@app.command("verify")
@reports_errors
def bundle_verify(
    bundle: Annotated[Path, typer.Argument(metavar="FILE", help="The bundle")],
    public_key: PublicKeyOption = None,
    identity: Annotated[
        str | None,
        typer.Option(metavar="FILE", help="age identity, to check an encrypted bundle's contents"),
    ] = None,
) -> None:
    """Every check `bundle install` makes of the bundle itself (the same code): the .sha256
    sidecar, the signature (when a public key is given), bundle.json, the manifest and their
    agreement, every file. Only checks of an install target (free disk, a delta's base release)
    are left to install. An encrypted bundle's contents need --identity."""
    from offline_asr.delivery.bundle.reader import verify_bundle

    key, age = key_files(public_key, identity)
    checked = verify_bundle(bundle, public_key=key, identity=age)
    signed = " and signature" if key else ""
    if checked is None:
        out.print(f"OK {bundle.name}: sha256{signed} match; encrypted, contents not checked "
                  "(give --identity to check them)")  # fmt: skip
        return
    contents = checked.contents
    out.print(
        f"OK {bundle.name}: sha256{signed} match; {len(contents.files)} files match bundle.json "
        f"and the manifest (manifest_version {contents.manifest_version}, models "
        f"{', '.join(contents.models)})",
        highlight=False,
    )


@app.command("install")
@reports_errors
def bundle_install(
    bundle: Annotated[Path, typer.Argument(metavar="FILE", help="The bundle")],
    target: Annotated[Path, typer.Option(help="Install root (releases/, current)")],
    identity: IdentityOption = None,
    public_key: PublicKeyOption = None,
    notify: NotifyOption = None,
) -> None:
    """Make every check of `bundle verify` (and that the release fits on disk) while unpacking
    safely into a new release, then check a delta's base release and every artifact as
    written, and switch TARGET/current to it atomically. The previous release stays for
    rollback; what killed installs left behind is removed first. With --notify, a running
    `serve --target` is asked to switch to it (exit 1 if it refuses)."""
    from offline_asr.delivery.bundle.install import install_bundle

    key, age = key_files(public_key, identity)
    admin_key = read_settings().admin_key if notify else None
    release = install_bundle(bundle, target, public_key=key, identity=age)
    out.print(f"installed v{release.version} into {release.path}; current -> v{release.version}")
    _notify(notify, admin_key)


def _notify(where: str | None, admin_key: str | None) -> None:
    if where is not None:
        from offline_asr.delivery.running_server import notify

        out.print(notify(where, admin_key), highlight=False)


@app.command("list")
@reports_errors
def bundle_list(target: Annotated[Path, typer.Option(help="Install root")]) -> None:
    """Installed releases; `*` marks the current one."""
    from offline_asr.delivery.bundle.install import list_releases

    releases = list_releases(target)
    if not releases:
        out.print(f"no releases in {target}")
    for release in releases:
        mark = "*" if release.current else " "
        line = f"{mark} v{release.version}  {release.bundle or ''}  {release.installed_at or ''}"
        out.print(line, highlight=False)


@app.command("rollback")
@reports_errors
def bundle_rollback(
    target: Annotated[Path, typer.Option(help="Install root")], notify: NotifyOption = None
) -> None:
    """Switch TARGET/current back to the previous release, atomically, once every artifact of
    that release is verified against its manifest (exit 1, nothing switched, if one is not).
    With --notify, a running `serve --target` is asked to switch too."""
    from offline_asr.delivery.bundle.install import rollback

    admin_key = read_settings().admin_key if notify else None
    release = rollback(target)
    out.print(f"current -> v{release.version}")
    _notify(notify, admin_key)


@app.command("prune")
@reports_errors
def bundle_prune(
    target: Annotated[Path, typer.Option(help="Install root")],
    keep: Annotated[int, typer.Option(min=1, help="Releases to keep (the current one always)")] = 2,
) -> None:
    """Delete old releases, keeping the newest KEEP and the current one, and what killed
    installs left behind (staging folders, temporary links)."""
    from offline_asr.delivery.bundle.install import prune

    removed, leftovers = prune(target, keep)
    out.print("removed " + (", ".join(f"v{v}" for v in removed) or "nothing"))
    if leftovers:
        names = ", ".join(str(p.relative_to(target)) for p in leftovers)
        out.print(f"removed {len(leftovers)} leftovers of killed installs: {names}",
                  highlight=False)  # fmt: skip


@app.command("keygen")
@reports_errors
def bundle_keygen(
    private: Annotated[Path, typer.Option(help="Private key file (kept secret, mode 0600)")] = Path(
        "offline-asr-signing.key"
    ),
    public: Annotated[Path, typer.Option(help="Public key file (for the air-gapped hosts)")] = Path(
        "offline-asr-signing.pub"
    ),
) -> None:
    """Make an Ed25519 key pair for signing bundles."""
    from offline_asr.delivery.bundle.signing import generate_keypair

    key_id = generate_keypair(private, public)
    out.print(f"wrote {private} and {public} (key id {key_id})")
