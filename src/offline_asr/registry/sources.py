"""Where weights come from: installed packages, a folder, the Hugging Face Hub, a URL, or code.

Every fetcher returns the files it offers for the model folder, narrowed to what the engine's
layout needs, and a `Source` that pins where they came from.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

from offline_asr.errors import ChecksumMismatchError, SourceError
from offline_asr.progress import byte_progress
from offline_asr.registry.archives import extract_archive, is_archive
from offline_asr.registry.layouts import GigaamKind, Layout
from offline_asr.registry.schemas import Source

ChooseLayout = Callable[[list[str], str], Layout]

_PART = re.compile(r"^(?P<name>.+)\.part(?P<index>\d+)$")


@dataclass
class Offered:
    """Files for the model folder: each name maps to the parts that, joined in order, make it."""

    files: dict[str, list[Path]]
    source: Source
    layout: Layout
    where: str
    toolchain: dict[str, str] = field(default_factory=dict)
    download_dir: Path | None = None  # kept for resuming until the model is registered

    @property
    def size(self) -> int:
        return sum(part.stat().st_size for parts in self.files.values() for part in parts)


def join_parts(named: dict[str, Path], where: str) -> dict[str, list[Path]]:
    """Group `X.part1`, `X.part2`, ... into `X`; the numbering must start at 1 with no gaps."""
    files: dict[str, list[Path]] = {}
    parts: dict[str, dict[int, Path]] = {}
    for name, path in named.items():
        match = _PART.fullmatch(name)
        if match is None:
            files[name] = [path]
        else:
            parts.setdefault(match["name"], {})[int(match["index"])] = path
    for name, numbered in parts.items():
        expected = list(range(1, len(numbered) + 1))
        if sorted(numbered) != expected:
            missing = sorted(set(range(1, max(numbered) + 1)) - set(numbered))
            raise SourceError(
                f"{where}: {name} is split into parts but part(s) {missing or sorted(numbered)} "
                "are missing; give every package or file that carries a part"
            )
        if name in files:
            raise SourceError(f"{where}: both {name} and its .partN pieces are present")
        files[name] = [numbered[i] for i in expected]
    return files


def _offer(named: dict[str, Path], source: Source, where: str, choose: ChooseLayout) -> Offered:
    joined = join_parts(named, where)
    names = sorted(joined)
    layout = choose(names, where)
    layout.check(names, where)
    return Offered({n: joined[n] for n in layout.select(names)}, source, layout, where)


def from_packages(distributions: list[str], choose: ChooseLayout) -> Offered:
    """Data files of installed Python distributions (code and metadata are skipped)."""
    named: dict[str, Path] = {}
    pins = []
    for name in distributions:
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError as error:
            raise SourceError(
                f"Python package {name!r} is not installed. Install it (`uv sync --extra models` "
                f"in a checkout, or `pip install {name}`) and run the command again."
            ) from error
        pins.append(f"{dist.metadata['Name']}=={dist.version}")
        for file in dist.files or []:
            if ".dist-info" in file.parts[0] or file.suffix in (".py", ".pyc", ".typed"):
                continue
            path = Path(str(file.locate()))
            if file.name in named and named[file.name] != path:
                raise SourceError(f"packages {distributions} both carry a file named {file.name}")
            named[file.name] = path
    if not named:
        raise SourceError(f"packages {', '.join(distributions)} carry no data files")
    where = "package " + " + ".join(distributions)
    return _offer(named, Source(kind="pypi", packages=pins), where, choose)


def list_folder(folder: Path) -> dict[str, Path]:
    """Regular files below `folder` by relative posix path, skipping hidden files and folders."""
    named = {}
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for filename in filenames:
            path = Path(dirpath, filename)
            if filename.startswith(".") or path.is_symlink() or not path.is_file():
                continue
            named[path.relative_to(folder).as_posix()] = path
    return named


def from_dir(folder: Path, choose: ChooseLayout) -> Offered:
    """A folder such as a USB mount or an unpacked snapshot."""
    if not folder.is_dir():
        raise SourceError(f"{folder} is not a folder")
    source = Source(kind="local", path=str(folder.resolve()))
    return _offer(list_folder(folder), source, str(folder), choose)


def _download(url: str, target: Path) -> str:
    """Stream `url` into `target` and return the sha256 of what arrived."""
    digest = hashlib.sha256()
    try:
        with urllib.request.urlopen(url, timeout=60) as response:
            total = response.headers.get("Content-Length")
            with (
                target.open("wb") as sink,
                byte_progress(
                    f"downloading {target.name}", int(total) if total else None
                ) as advance,
            ):
                while chunk := response.read(1024 * 1024):
                    sink.write(chunk)
                    digest.update(chunk)
                    advance(len(chunk))
    except (urllib.error.URLError, TimeoutError) as error:
        reason = getattr(error, "reason", error)
        raise SourceError(f"cannot download {url}: {reason}") from error
    return digest.hexdigest()


def from_url(url: str, sha256: str, workdir: Path, choose: ChooseLayout) -> Offered:
    """A file or archive on an internal artifact server (http, https or file URL)."""
    parsed = urllib.parse.urlparse(url)
    if parsed.scheme not in ("http", "https", "file"):
        raise SourceError(f"{url}: only http, https and file URLs are supported")
    sha256 = sha256.lower()
    if not re.fullmatch(r"[0-9a-f]{64}", sha256):
        raise SourceError(f"--sha256 must be 64 hex characters, got {sha256!r}")
    name = Path(urllib.parse.unquote(parsed.path)).name or "download"
    workdir.mkdir(parents=True, exist_ok=True)
    target = workdir / name
    actual = _download(url, target)
    if actual != sha256:
        target.unlink()
        raise ChecksumMismatchError(
            f"{url} has sha256 {actual}, but {sha256} was pinned; nothing was registered. "
            "Check the URL and the pinned hash with whoever published the artifact."
        )
    if is_archive(name):
        extract_archive(target, workdir / "unpacked")
        named = list_folder(workdir / "unpacked")
    else:
        named = {name: target}
    return _offer(named, Source(kind="url", url=url, sha256=sha256), url, choose)


def from_hub(
    repo: str, revision: str, workdir: Path, choose: ChooseLayout, endpoint: str | None
) -> Offered:
    """A Hugging Face Hub repository pinned to the commit that `revision` resolves to.

    `workdir` survives an interruption: running the command again skips the files that were
    complete (a file cut in the middle starts over, as huggingface_hub does across processes).
    """
    from huggingface_hub import HfApi, snapshot_download
    from huggingface_hub.errors import (
        HfHubHTTPError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    where = f"{repo}@{revision}"
    try:
        info = HfApi(endpoint=endpoint, token=False).model_info(repo, revision=revision)
        assert info.sha is not None
        names = [s.rfilename for s in info.siblings or []]
        layout = choose(names, where)
        layout.check(names, where)
        wanted = layout.select(names)
        snapshot_download(
            repo,
            revision=info.sha,
            local_dir=workdir,
            cache_dir=workdir / ".hub-cache",
            allow_patterns=wanted,
            endpoint=endpoint,
            token=False,
        )
    except RevisionNotFoundError as error:
        raise SourceError(f"{repo} has no revision {revision!r}") from error
    except RepositoryNotFoundError as error:
        raise SourceError(f"no repository {repo!r} on the hub (or it needs a token)") from error
    except (HfHubHTTPError, OSError) as error:
        raise SourceError(f"cannot fetch {where} from the hub: {error}") from error
    source = Source(kind="huggingface", repo=repo, revision=revision, commit=info.sha)
    files = {name: [workdir / name] for name in wanted}
    return Offered(files, source, layout, where, download_dir=workdir)


def generated_test_model(workdir: Path, choose: ChooseLayout, kind: GigaamKind) -> Offered:
    """A structural GigaAM test model of one layout, written by our deterministic generator."""
    try:
        from offline_asr.testmodel import write_gigaam_test_model
    except ImportError as error:
        raise SourceError(
            f"the test model generator needs the `onnx` package ({error}); "
            "install the `models` extra: `uv sync --extra models`"
        ) from error
    shutil.rmtree(workdir, ignore_errors=True)
    write_gigaam_test_model(workdir, kind)
    source = Source(kind="generated", generator="offline_asr.testmodel:write_gigaam_test_model")
    offered = _offer(list_folder(workdir), source, "generated test model", choose)
    offered.toolchain["onnx"] = metadata.version("onnx")
    return offered
