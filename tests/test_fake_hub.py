"""huggingface_hub (2.4.0) works against ``support.fake_hub`` -- and how it downloads.

These tests pin the client behaviour ``models prepare --hf-repo`` relies on: which requests are
made, which errors come back, and what happens to a download that is cut off.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from huggingface_hub import HfApi, constants, hf_hub_download, snapshot_download
from huggingface_hub.errors import (
    RemoteEntryNotFoundError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)
from huggingface_hub.utils._runtime import is_xet_available

from support.fake_hub import FakeHub, HubRequest, compute_commit, serve_repo

REPO = "acme/whisper-tiny-test"
MIB = 1024 * 1024
# huggingface_hub writes what it receives in DOWNLOAD_CHUNK_SIZE (10 MiB) pieces, so a resumed
# transfer restarts at a multiple of it: the model file must be larger for a Range to show up.
CHUNK = constants.DOWNLOAD_CHUNK_SIZE
MODEL_SIZE = CHUNK + 2 * MIB


@pytest.fixture(scope="session")
def repo_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("repo")
    (root / "config.json").write_text('{"alignment_heads": [[1, 0]], "lang_ids": [1]}\n')
    (root / "tokenizer").mkdir()
    (root / "tokenizer" / "vocabulary.txt").write_text("hello\nworld\n")
    (root / "model.bin").write_bytes(random.Random(0).randbytes(MODEL_SIZE))
    return root


@pytest.fixture(autouse=True)
def isolated_hf(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No token, no telemetry, no offline mode, no shared cache -- whatever the caller's env says.

    huggingface_hub reads its env vars once, at import, so the module constants are patched too.
    """
    for var in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf_home"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "HF_HUB_DISABLE_TELEMETRY", True)
    monkeypatch.setattr(constants, "HF_HUB_DISABLE_IMPLICIT_TOKEN", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf_home" / "hub"))


@pytest.fixture
def hub(repo_dir: Path) -> Iterator[FakeHub]:
    with FakeHub(repo_dir, REPO, lfs_min_size=MIB) as running:
        yield running


def _download(hub: FakeHub, tmp_path: Path, revision: str) -> Path:
    return Path(
        snapshot_download(
            REPO,
            revision=revision,
            local_dir=tmp_path / "model",
            cache_dir=tmp_path / "cache",  # else the shared cache is read and refs/ written there
            endpoint=hub.endpoint,
            token=False,
        )
    )


def _assert_same_files(repo_dir: Path, local_dir: Path) -> None:
    expected = {p.relative_to(repo_dir).as_posix() for p in repo_dir.rglob("*") if p.is_file()}
    got = {
        p.relative_to(local_dir).as_posix()
        for p in local_dir.rglob("*")
        if p.is_file() and ".cache" not in p.relative_to(local_dir).parts
    }
    assert got == expected
    for name in expected:
        assert (local_dir / name).read_bytes() == (repo_dir / name).read_bytes(), name


def _content_gets(hub: FakeHub, name: str) -> list[HubRequest]:
    return [r for r in hub.file_requests(name, "GET") if r.status in (200, 206)]


def test_model_info_resolves_branch_and_tag(repo_dir: Path) -> None:
    commit = compute_commit(repo_dir)
    with serve_repo(repo_dir, REPO, branches={"main": commit}, commit=commit) as endpoint:
        api = HfApi(endpoint=endpoint, token=False)
        info = api.model_info(REPO, revision="main")
        assert info.sha == commit
        assert info.id == REPO
        assert info.siblings is not None
        assert {s.rfilename for s in info.siblings} == {
            "config.json",
            "model.bin",
            "tokenizer/vocabulary.txt",
        }
        assert api.model_info(REPO).sha == commit  # no revision: /api/models/{repo} = main

    with FakeHub(repo_dir, REPO, tags={"v1": commit}) as hub:
        api = HfApi(endpoint=hub.endpoint, token=False)
        assert api.model_info(REPO, revision="v1").sha == commit
        assert sorted(api.list_repo_files(REPO, revision="v1")) == [
            "config.json",
            "model.bin",
            "tokenizer/vocabulary.txt",
        ]
        refs = api.list_repo_refs(REPO)
        assert [(b.name, b.target_commit) for b in refs.branches] == [("main", commit)]
        assert [(t.name, t.target_commit) for t in refs.tags] == [("v1", commit)]
        assert not any(r.authorized for r in hub.requests)


@pytest.mark.parametrize("lfs_min_size", [None, MIB], ids=["plain", "lfs-redirect"])
def test_snapshot_download_of_pinned_commit(
    repo_dir: Path, tmp_path: Path, lfs_min_size: int | None
) -> None:
    with FakeHub(repo_dir, REPO, lfs_min_size=lfs_min_size) as hub:
        local_dir = _download(hub, tmp_path, hub.commit)

        assert local_dir == (tmp_path / "model").resolve()
        _assert_same_files(repo_dir, local_dir)
        # A commit id is not resolved through model_info; the file list comes from /tree.
        api_paths = [r.path for r in hub.requests if r.file is None]
        assert api_paths == [f"/api/models/{REPO}/tree/{hub.commit}"]
        for name in hub.files:
            heads = hub.file_requests(name, "HEAD")
            assert [r.status for r in heads] == [302 if hub.files[name].lfs else 200]
            gets = _content_gets(hub, name)
            assert [(r.status, r.range) for r in gets] == [(200, None)]
            assert gets[0].path.startswith("/cdn/" if hub.files[name].lfs else f"/{REPO}/resolve/")
        # No Xet (no xet-read-token call), no auth, nothing the fake hub does not know.
        assert all(r.status < 400 for r in hub.requests)
        assert not any(r.authorized for r in hub.requests)

        # Same commit again: the tree listing and per-file metadata in local_dir/.cache/huggingface
        # answer it without a single request.
        hub.clear_requests()
        _download(hub, tmp_path, hub.commit)
        assert hub.requests == []


def test_snapshot_download_of_branch_asks_model_info_first(
    hub: FakeHub, repo_dir: Path, tmp_path: Path
) -> None:
    local_dir = _download(hub, tmp_path, "main")
    _assert_same_files(repo_dir, local_dir)
    assert [r.path for r in hub.requests if r.file is None][:2] == [
        f"/api/models/{REPO}/revision/main",
        f"/api/models/{REPO}/tree/{hub.commit}",
    ]
    assert (tmp_path / "cache" / f"models--{REPO.replace('/', '--')}" / "refs" / "main").read_text(
        encoding="utf-8"
    ) == hub.commit


@pytest.mark.parametrize("revision", ["no-such-branch", "0" * 40])
def test_unknown_revision_raises_revision_not_found(
    hub: FakeHub, tmp_path: Path, revision: str
) -> None:
    with pytest.raises(RevisionNotFoundError):
        HfApi(endpoint=hub.endpoint, token=False).model_info(REPO, revision=revision)
    with pytest.raises(RevisionNotFoundError):
        _download(hub, tmp_path, revision)
    assert not (tmp_path / "model" / "model.bin").exists()


def test_unknown_repo_and_file(hub: FakeHub, tmp_path: Path) -> None:
    api = HfApi(endpoint=hub.endpoint, token=False)
    with pytest.raises(RepositoryNotFoundError):
        api.model_info("acme/nope", revision="main")
    for revision in ("main", hub.commit):
        with pytest.raises(RepositoryNotFoundError):
            snapshot_download(
                "acme/nope",
                revision=revision,
                local_dir=tmp_path / "nope",
                cache_dir=tmp_path / "cache",
                endpoint=hub.endpoint,
                token=False,
            )
    with pytest.raises(RemoteEntryNotFoundError):
        hf_hub_download(
            REPO,
            "missing.bin",
            revision=hub.commit,
            local_dir=tmp_path / "model",
            cache_dir=tmp_path / "cache",
            endpoint=hub.endpoint,
            token=False,
        )


def test_connection_dropped_mid_file_resumes_with_range(repo_dir: Path, tmp_path: Path) -> None:
    """Within one process a broken transfer is retried from the last whole 10 MiB chunk."""
    cut = CHUNK + MIB
    with FakeHub(repo_dir, REPO, lfs_min_size=MIB, interrupt_after_bytes=cut) as hub:
        local_dir = _download(hub, tmp_path, hub.commit)

        _assert_same_files(repo_dir, local_dir)
        gets = _content_gets(hub, "model.bin")
        assert [(r.status, r.range) for r in gets] == [(200, None), (206, f"bytes={CHUNK}-")]
        assert hub.bytes_sent["model.bin"] == cut + (MODEL_SIZE - CHUNK)


# -- interruption of a whole process ----------------------------------------------------------

_DOWNLOAD_SCRIPT = textwrap.dedent(
    """
    import json, sys
    from huggingface_hub import snapshot_download
    args = json.loads(sys.argv[1])
    snapshot_download(
        args["repo"], revision=args["revision"], local_dir=args["local_dir"],
        cache_dir=args["cache_dir"], endpoint=args["endpoint"], token=False,
    )
    print("DONE", flush=True)
    """
)


def _subprocess_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGING"))}
    for var in ("DO_NOT_TRACK", "DISABLE_TELEMETRY", "TRANSFORMERS_OFFLINE"):
        env.pop(var, None)
    env.update(
        HF_HOME=str(tmp_path / "hf_home"),
        HF_HUB_DISABLE_TELEMETRY="1",
        HF_HUB_DISABLE_IMPLICIT_TOKEN="1",
        HF_HUB_DISABLE_PROGRESS_BARS="1",
    )
    env.update(extra)
    return env


def _start_download(hub: FakeHub, tmp_path: Path) -> subprocess.Popen[str]:
    args = {
        "repo": REPO,
        "revision": hub.commit,
        "local_dir": str(tmp_path / "model"),
        "cache_dir": str(tmp_path / "cache"),
        "endpoint": hub.endpoint,
    }
    return subprocess.Popen(
        [sys.executable, "-c", _DOWNLOAD_SCRIPT, json.dumps(args)],
        env=_subprocess_env(tmp_path),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _wait_for_bytes(hub: FakeHub, name: str, n: int, proc: subprocess.Popen[str]) -> None:
    deadline = time.monotonic() + 30
    while hub.bytes_sent.get(name, 0) < n:
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "download did not start"
        time.sleep(0.02)


@pytest.mark.slow
def test_killed_process_leaves_orphan_and_next_run_starts_over(
    repo_dir: Path, tmp_path: Path
) -> None:
    """No cross-process resume in 2.4.0: each attempt writes a uniquely named temp file."""
    with FakeHub(repo_dir, REPO, lfs_min_size=MIB, bytes_per_second=8 * MIB) as hub:
        proc = _start_download(hub, tmp_path)
        _wait_for_bytes(hub, "model.bin", 2 * MIB, proc)
        proc.kill()
        proc.wait(timeout=10)

        download_dir = tmp_path / "model" / ".cache" / "huggingface" / "download"
        etag = hub.files["model.bin"].etag
        orphans = sorted(download_dir.glob(f"*.{etag}.*.incomplete"))
        assert len(orphans) == 1  # <hash>.<etag>.<8 hex>.incomplete
        assert not (tmp_path / "model" / "model.bin").exists()

        _wait_until_quiet(hub)  # the dead connection's server thread may still send one chunk
        hub.clear_requests()
        local_dir = _download(hub, tmp_path, hub.commit)

        _assert_same_files(repo_dir, local_dir)
        assert [r.range for r in _content_gets(hub, "model.bin")] == [None]
        assert hub.bytes_sent["model.bin"] == MODEL_SIZE
        assert orphans[0].exists()  # never reused, never cleaned up


def _wait_until_quiet(hub: FakeHub, still: float = 0.5, timeout: float = 10.0) -> None:
    """Wait until the server has sent nothing for `still` seconds."""
    deadline = time.monotonic() + timeout
    last = dict(hub.bytes_sent)
    while time.monotonic() < deadline:
        time.sleep(still)
        current = dict(hub.bytes_sent)
        if current == last:
            return
        last = current


@pytest.mark.slow
def test_sigint_lets_running_file_downloads_finish(repo_dir: Path, tmp_path: Path) -> None:
    """Ctrl-C raises KeyboardInterrupt only after the in-flight files are complete."""
    with FakeHub(repo_dir, REPO, lfs_min_size=MIB, bytes_per_second=8 * MIB) as hub:
        proc = _start_download(hub, tmp_path)
        _wait_for_bytes(hub, "model.bin", 2 * MIB, proc)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)

        assert proc.returncode != 0
        assert "KeyboardInterrupt" in err
        assert "DONE" not in out
        assert hub.bytes_sent["model.bin"] == MODEL_SIZE
        _assert_same_files(repo_dir, tmp_path / "model")

        hub.clear_requests()
        _download(hub, tmp_path, hub.commit)
        assert hub.requests == []


@pytest.mark.slow
def test_explicit_endpoint_wins_over_hf_endpoint(hub: FakeHub, tmp_path: Path) -> None:
    """``endpoint=`` is enough; HF_ENDPOINT only matters for telemetry's agent registry."""
    script = textwrap.dedent(
        """
        import sys
        from huggingface_hub import HfApi, snapshot_download
        endpoint, repo, local_dir, cache_dir = sys.argv[1:5]
        sha = HfApi(endpoint=endpoint, token=False).model_info(repo, revision="main").sha
        snapshot_download(repo, revision=sha, local_dir=local_dir, cache_dir=cache_dir,
                          endpoint=endpoint, token=False)
        print(sha)
        """
    )

    def run(**env: str) -> str:
        result = subprocess.run(
            [
                sys.executable,
                "-c",
                script,
                hub.endpoint,
                REPO,
                str(tmp_path / "model"),
                str(tmp_path / "cache"),
            ],
            env=_subprocess_env(tmp_path, **env),
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
        return result.stdout.strip()

    # HF_ENDPOINT pointing at a closed port does not matter.
    assert run(HF_ENDPOINT="http://127.0.0.1:9") == hub.commit
    assert (tmp_path / "model" / "model.bin").stat().st_size == MODEL_SIZE
    assert not any(r.path == "/api/agent-harnesses" for r in hub.requests)

    # With telemetry on, the first request also fetches {HF_ENDPOINT}/api/agent-harnesses (from
    # huggingface.co when HF_ENDPOINT is unset) and caches it in HF_HOME.
    run(HF_ENDPOINT=hub.endpoint, HF_HUB_DISABLE_TELEMETRY="0")
    assert any(r.path == "/api/agent-harnesses" for r in hub.requests)
    assert (tmp_path / "hf_home" / ".agent_harnesses.json").exists()


def test_xet_client_is_installed_but_unused(hub: FakeHub, tmp_path: Path) -> None:
    """hf_xet being importable is not enough: Xet is only used when the server sends Xet headers."""
    pytest.importorskip("hf_xet")
    assert is_xet_available()  # HF_HUB_DISABLE_XET is not needed against the fake hub
    _download(hub, tmp_path, hub.commit)
    assert not any("xet" in r.path for r in hub.requests)
    assert all(r.status < 400 for r in hub.requests)
