"""Nothing leaves the machine and nothing is written where offline-asr has no business: every
process of a whole session runs under strace, and the trace is judged syscall by syscall.

A connection fails the test when it goes anywhere but loopback, a Unix socket or the kernel
(netlink); a DNS lookup fails it too (port 53 anywhere, or a local lookup daemon's socket),
whether or not it would have been answered. A file opened for writing, created, renamed or
removed fails it when it is outside the store, the test's own folder (cwd, TMPDIR, outputs, the
audit log) and Python's byte-code cache of the installed code. HOME is a folder of its own that
must stay empty.

The traced processes get an environment that asks for the opposite of offline: every switch
turned the wrong way, and no CI variable (onnxruntime takes one as a reason to stay silent by
itself). So the trace shows what offline-asr does on its own, on any machine.
"""

from __future__ import annotations

import base64
import json
import os
import re
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import urljoin, urlsplit

import httpx2
import pytest
from typer.testing import CliRunner
from websockets.sync.client import connect

from offline_asr.asr.smoke import word_error_rate
from offline_asr.cli import app
from offline_asr.constants import CLIPS_DIR
from offline_asr.offline import HUB_OFFLINE, TELEMETRY_OFF
from offline_asr.registry.store import ModelStore
from support.audio_fixtures import long_russian
from support.canary import Canary, canary
from support.helpers import REPO
from support.server import free_port, wait_ready
from support.syscalls import (
    CI_VARIABLES,
    judge,
    network_problem,
    parse,
    run_traced,
    stopped_on_exit,
    traced,
    written_path,
)

EN = CLIPS_DIR / "en_short.wav"
REFERENCE: str = json.loads((CLIPS_DIR / "references.json").read_text())[EN.name]
EXE = Path(sys.executable).with_name("offline-asr")
TIMEOUT = 180.0
# The opposite of every offline and telemetry switch we know of: the product must override them.
LURES = {
    "ORT_DISABLE_TELEMETRY": "0",
    "HF_HUB_OFFLINE": "0",
    "TRANSFORMERS_OFFLINE": "0",
    "HF_DATASETS_OFFLINE": "0",
    "HF_HUB_DISABLE_TELEMETRY": "0",
    "DO_NOT_TRACK": "0",
    "RAY_USAGE_STATS_ENABLED": "1",
}
# Python's byte-code cache of the code it imports, in the interpreter and in the checkout.
PYCACHE = re.compile(
    "(?:{})/.*/__pycache__(?:/[^/]+)?".format(
        "|".join(re.escape(p) for p in sorted({sys.prefix, sys.base_prefix, str(REPO)}))
    )
)
# /dev/null, and the POSIX semaphores of `multiprocessing` (in memory, unlinked at once).
ALLOWED_FILES = [PYCACHE, re.compile(r"/dev/null"), re.compile(r"/dev/shm/sem\.[^/]+")]


@dataclass(frozen=True)
class Folders:
    work: Path  # the test's own folder: cwd, TMPDIR, outputs, audit logs, traces
    home: Path  # HOME of the traced processes: must stay empty
    store: ModelStore

    def env(self) -> dict[str, str]:
        """Ours without CI markers and XDG folders; HOME and TMPDIR moved; switches turned."""
        inherited = {
            name: value for name, value in os.environ.items()
            if name not in CI_VARIABLES and name not in LURES and not name.startswith("XDG_")
        }  # fmt: skip
        tmp = self.work / "tmp"
        tmp.mkdir(exist_ok=True)
        return {**inherited, **LURES, "HOME": str(self.home), "TMPDIR": str(tmp)}

    def manifest_args(self) -> list[str]:
        return ["--manifest", str(self.store.manifest_path)]

    def output_args(self) -> list[str]:
        return [
            "--output-dir",
            str(self.work / "out"),
            "--audit-log",
            str(self.work / "audit.jsonl"),
        ]

    def assert_clean(self, log: Path, problems: list[str] | None = None) -> None:
        """Fails with every connection and write the trace shows, what HOME holds, and the
        caller's own `problems`."""
        found = judge(log, self.work, [self.work, self.store.root], ALLOWED_FILES)
        leftovers = sorted(str(path) for path in self.home.rglob("*"))
        if not found.clean or leftovers or problems:
            report = "\n".join([*(problems or []), str(found), f"left in HOME: {leftovers}"])
            pytest.fail(report, pytrace=False)


@pytest.fixture
def folders(full_store: ModelStore, tmp_path: Path) -> Folders:
    for name in ("work", "home"):
        (tmp_path / name).mkdir()
    return Folders(tmp_path / "work", tmp_path / "home", full_store)


# --- the switches ---------------------------------------------------------------------------


def test_importing_the_package_turns_telemetry_off_against_the_environment() -> None:
    env = {**os.environ, **LURES}
    shown = subprocess.run(
        [sys.executable, "-c", "import json, os, offline_asr; print(json.dumps(dict(os.environ)))"],
        env=env, capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    seen = json.loads(shown.stdout)
    assert {name: seen[name] for name in TELEMETRY_OFF} == TELEMETRY_OFF
    assert all(seen[name] == "0" for name in HUB_OFFLINE), "the hub goes offline per command"


@pytest.mark.parametrize(
    ("args", "offline"),
    [
        (["models", "list"], True),
        (["models", "verify"], True),
        (["doctor", "--help"], True),
        (["models", "prepare", "--help"], False),
        (["models", "sync", "--help"], False),
    ],
)
def test_commands_of_the_air_gapped_side_switch_the_hub_offline(
    args: list[str], offline: bool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`models prepare` and `models sync` fetch from a hub or mirror when asked to; every other
    command sets the hub libraries' switches before anything imports them."""
    for name in HUB_OFFLINE:
        monkeypatch.delenv(name, raising=False)
    manifest = ["--manifest", str(tmp_path / "models" / "manifest.json")]
    CliRunner().invoke(app, [*args, *manifest] if "--help" not in args else args)
    switched = {name: os.environ.get(name) for name in HUB_OFFLINE}
    assert switched == (HUB_OFFLINE if offline else dict.fromkeys(HUB_OFFLINE)), args


# --- the judge ------------------------------------------------------------------------------

OUTSIDE = [
    # onnxruntime's telemetry as it was seen: the resolver, then the query on that socket
    "9343  connect(13<UDP:[2712044]>, {sa_family=AF_INET, sin_port=htons(53), "
    'sin_addr=inet_addr("10.255.255.53")}, 16) = 0',
    '9343  sendto(13<UDP:[172.17.0.2:40000->10.255.255.53:53]>, "\\6mobile\\6events", 50, '
    "MSG_NOSIGNAL, NULL, 0) = 50",
    # a stub resolver on loopback is still a lookup
    "7 connect(3<UDP:[1]>, {sa_family=AF_INET, sin_port=htons(53), "
    'sin_addr=inet_addr("127.0.0.53")}, 16) = 0',
    "7 connect(3<TCPv6:[123]>, {sa_family=AF_INET6, sin6_port=htons(443), sin6_flowinfo=htonl(0), "
    'inet_pton(AF_INET6, "2001:db8::1", &sin6_addr), sin6_scope_id=0}, 28 <unfinished ...>',
    '7 connect(4<UNIX-STREAM:[99]>, {sa_family=AF_UNIX, sun_path="/var/run/nscd/socket"}, 110) '
    "= -1 ENOENT (No such file or directory)",
    "7 sendmsg(6<UDP:[55]>, {msg_name={sa_family=AF_INET, sin_port=htons(123), "
    'sin_addr=inet_addr("192.0.2.1")}, msg_namelen=16, msg_iov=[{iov_base="x", iov_len=1}], '
    "msg_iovlen=1, msg_controllen=0, msg_flags=0}, 0) = 1",
    '7 sendto(8<TCP:[[::ffff:10.0.0.2]:5000->[2001:db8::7]:443]>, "GET", 3, 0, NULL, 0) = 3',
    "7 connect(7<PACKET:[1]>, {sa_family=AF_PACKET, sll_protocol=htons(ETH_P_ALL)}, 20) = 0",
]
INSIDE = [
    '9075  sendto(11<TCP:[127.0.0.1:8765->127.0.0.1:54321]>, "HTTP/1.1 200 OK\\r\\n", 17, 0, '
    "NULL, 0) = 17",
    "7 connect(3<TCPv6:[1]>, {sa_family=AF_INET6, sin6_port=htons(8000), sin6_flowinfo=htonl(0), "
    'inet_pton(AF_INET6, "::ffff:127.0.0.1", &sin6_addr), sin6_scope_id=0}, 28) = 0',
    '7 connect(4<UNIX-STREAM:[99]>, {sa_family=AF_UNIX, sun_path="/run/user/0/bus"}, 110) = 0',
    "7 sendmsg(5<NETLINK:[ROUTE:1234]>, {msg_name={sa_family=AF_NETLINK, nl_pid=0, "
    "nl_groups=00000000}, msg_namelen=12}, 0) = 20",
    '7 sendto(9<UNIX-STREAM:[1->2]>, "\\0", 1, 0, NULL, 0) = 1',
]


@pytest.mark.parametrize("line", OUTSIDE)
def test_the_judge_flags_every_way_out(line: str) -> None:
    (call,) = parse([line])
    assert network_problem(call) is not None, line


@pytest.mark.parametrize("line", INSIDE)
def test_the_judge_lets_loopback_unix_and_netlink_pass(line: str) -> None:
    (call,) = parse([line])
    assert network_problem(call) is None, line


@pytest.mark.parametrize(
    ("line", "written"),
    [
        ('1 openat(AT_FDCWD</w>, "/h/.cache/x.db", O_RDWR|O_CREAT|O_CLOEXEC, 0644) = 3</h/x.db>',
         "/h/.cache/x.db"),
        ('1 openat(6</h/.cache/ort>, "deviceid.tmp", O_WRONLY|O_CREAT|O_EXCL, 0600) = 7',
         "/h/.cache/ort/deviceid.tmp"),
        ('1 openat(AT_FDCWD</w>, "out/a.txt", O_WRONLY|O_CREAT|O_TRUNC|O_CLOEXEC, 0666) = 3',
         "/w/out/a.txt"),
        ('1 openat(AT_FDCWD</w>, "/h/x", O_RDONLY|O_CLOEXEC) = 3', None),
        ('1 mkdir("/h/.cache", 0700) = 0', "/h/.cache"),
        ('1 mkdir("rel", 0777) = 0', "/start/rel"),
        ('1 rename("/w/a.tmp", "/h/a") = 0', "/h/a"),
        ('1 renameat2(AT_FDCWD</w>, "a", 5</h>, "b", RENAME_NOREPLACE) = 0', "/h/b"),
        ('1 unlinkat(5</h>, "x", 0) = 0', "/h/x"),
        ('1 symlinkat("/etc/passwd", AT_FDCWD</w>, "../h/l") = 0', "/h/l"),
    ],
)  # fmt: skip
def test_the_judge_finds_the_path_each_call_writes(line: str, written: str | None) -> None:
    (call,) = parse([line])
    path = written_path(call, Path("/start"))
    assert (None if path is None else str(path)) == written


def test_the_judge_follows_a_change_of_directory(tmp_path: Path) -> None:
    log = tmp_path / "trace"
    log.write_text('5 chdir("/h") = 0\n5 mkdir("sub", 0777) = 0\n6 mkdir("sub", 0777) = 0\n')
    found = judge(log, tmp_path, [tmp_path])
    assert [line.split(":")[0] for line in found.writes] == ["/h/sub"]


@pytest.mark.slow
def test_the_trace_sees_a_real_process_reach_out_and_write_home(folders: Folders) -> None:
    """strace, its options and the judge together, on a program that does what the checks
    look for: a UDP connect to a DNS server (a documentation address, and a UDP connect
    sends no packet), a lookup-daemon socket, files in HOME; and one allowed write."""
    program = (
        "import os, socket\n"
        "s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
        "try: s.connect(('192.0.2.1', 53))\n"
        "except OSError: pass\n"
        "u = socket.socket(socket.AF_UNIX)\n"
        "try: u.connect('/var/run/nscd/socket')\n"
        "except OSError: pass\n"
        "home = os.environ['HOME']\n"
        "os.makedirs(home + '/.cache/Vendor', exist_ok=True)\n"
        "open(home + '/.cache/Vendor/id', 'w').write('x')\n"
        "open('allowed.txt', 'w').write('fine')\n"
    )
    log = folders.work / "self.strace"
    done = run_traced([sys.executable, "-c", program], log, env=folders.env(), cwd=folders.work)
    assert done.returncode == 0, done.stderr
    found = judge(log, folders.work, [folders.work], ALLOWED_FILES)
    assert len(found.connections) == 2, found
    assert "192.0.2.1 port 53" in found.connections[0]
    assert "nscd" in found.connections[1]
    written = {line.split(": ")[0] for line in found.writes}
    home = folders.home
    assert written == {str(home / ".cache"), str(home / ".cache/Vendor"),
                       str(home / ".cache/Vendor/id")}, found  # fmt: skip
    assert (folders.work / "allowed.txt").read_text() == "fine"


# --- a whole session ------------------------------------------------------------------------


class _Links(HTMLParser):
    """Every src= and href= of a page."""

    def __init__(self) -> None:
        super().__init__()
        self.links: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.links += [value for name, value in attrs if name in ("src", "href") and value]


def _page_and_assets(client: httpx2.Client, url: str, path: str) -> list[str]:
    """GET a page and every asset it names; problems found (an asset on another host is
    never fetched: it is the problem)."""
    page = client.get(urljoin(url, path))
    if page.status_code != 200:
        return [f"{path}: {page.status_code}"]
    parser = _Links()
    parser.feed(page.text)
    problems = []
    for link in parser.links:
        target = urljoin(urljoin(url, path), link)
        if urlsplit(target).scheme in ("data", "blob"):
            continue
        if urlsplit(target).netloc != urlsplit(url).netloc:
            problems.append(f"{path} loads {link} from another host")
        elif (answer := client.get(target)).status_code != 200:
            problems.append(f"{path} names {link}, which answers {answer.status_code}")
    return problems


def _requests(url: str, long_clip: Path, playlist: Path) -> list[str]:
    """Every route, every engine, the VAD (GigaAM chunking), lazy loading and a hostile input."""
    problems = []
    with httpx2.Client(base_url=url, timeout=TIMEOUT, trust_env=False) as client:
        for path in ("/", "/docs"):
            problems += _page_and_assets(client, url, path)
        for path in ("/openapi.json", "/metrics", "/health", "/v1/models"):
            if (answer := client.get(path)).status_code != 200:
                problems.append(f"{path}: {answer.status_code}")

        def post(clip: Path, model: str, route: str = "transcriptions", **form: str) -> str:
            answer = client.post(
                f"/v1/audio/{route}", files={"file": (clip.name, clip.read_bytes())},
                data={"model": model, **form},
            )  # fmt: skip
            assert answer.status_code == 200, answer.text
            return answer.text

        text = json.loads(post(EN, "whisper-tiny.en"))["text"]
        assert word_error_rate(REFERENCE, text) <= 0.15, text
        assert "transcript.text.done" in post(EN, "whisper-tiny.en", stream="true")
        chunks = json.loads(
            post(long_clip, "gigaam-v3-ctc-testtiny", response_format="verbose_json")
        )
        assert len(chunks["segments"]) >= 3, chunks  # cut at the pauses the Silero VAD found
        assert "weather" in post(EN, "whisper-base", route="translations").lower()  # lazy load
        answer = client.post("/v1/audio/transcriptions",
                             files={"file": (playlist.name, playlist.read_bytes())},
                             data={"model": "whisper-tiny.en"})  # fmt: skip
        if answer.status_code != 400:
            problems.append(f"a playlist upload answered {answer.status_code}: {answer.text}")
    problems += _live_session(url)
    return problems


def _live_session(url: str) -> list[str]:
    """A /v1/realtime session: server VAD (Silero) ends a turn, which is transcribed."""
    pcm = EN.read_bytes()[44:] + bytes(32_000)  # the clip's samples, then a second of silence
    ws_url = url.replace("http://", "ws://") + "/v1/realtime?intent=transcription"
    with connect(ws_url, proxy=None, open_timeout=TIMEOUT) as ws:
        session = {"type": "transcription", "audio": {"input": {
            "format": {"type": "audio/pcm", "rate": 16000}}}}  # fmt: skip
        ws.send(json.dumps({"type": "session.update", "session": session}))
        for start in range(0, len(pcm), 3200):
            audio = base64.b64encode(pcm[start : start + 3200]).decode()
            ws.send(json.dumps({"type": "input_audio_buffer.append", "audio": audio}))
        while (event := json.loads(ws.recv(timeout=TIMEOUT)))["type"] not in (
            "conversation.item.input_audio_transcription.completed", "error"
        ):  # fmt: skip
            pass
    text = event.get("transcript", "")
    return [] if word_error_rate(REFERENCE, text) <= 0.15 else [f"live session: {event}"]


def _playlist(folder: Path, lure: Canary) -> Path:
    """An HLS playlist whose only segment is on the canary: FFmpeg fetches such URLs."""
    path = folder / "playlist.m3u8"
    path.write_text(f"#EXTM3U\n#EXT-X-TARGETDURATION:10\n#EXTINF:10.0,\n{lure.url}/seg0.ts\n"
                    "#EXT-X-ENDLIST\n")  # fmt: skip
    return path


@pytest.mark.slow
def test_a_server_session_stays_on_loopback_and_in_its_folders(folders: Folders) -> None:
    """`serve` with Whisper and the GigaAM test model preloaded, whisper-base loaded on
    demand, a minute of speech for GigaAM (VAD chunking), the web page, /docs, /redoc and their
    assets, /metrics, a playlist that names a URL, and a live session (/v1/realtime)."""
    work = folders.work
    log, port = work / "serve.strace", free_port()
    url = f"http://127.0.0.1:{port}"
    command = [str(EXE), "serve", "--manifest", str(folders.store.manifest_path),
               "--host", "127.0.0.1", "--port", str(port),
               "--model", "whisper-tiny.en", "--model", "gigaam-v3-ctc-testtiny"]  # fmt: skip
    env = {**folders.env(), "OFFLINE_ASR_AUDIT_LOG": str(work / "audit.jsonl")}
    with (work / "serve.log").open("w") as sink, canary() as lure:
        strace = subprocess.Popen(traced(command, log), env=env, cwd=work, stdout=sink,
                                  stderr=subprocess.STDOUT, text=True,
                                  start_new_session=True)  # fmt: skip
        with stopped_on_exit(strace):
            assert wait_ready(url, strace, TIMEOUT), (work / "serve.log").read_text()[-3000:]
            problems = _requests(url, long_russian(work / "long_ru.wav"), _playlist(work, lure))
    problems += [f"the server fetched what a playlist named: {call}" for call in lure.calls]
    folders.assert_clean(log, problems)


LOCK = str(REPO / "requirements.lock")
SCRIPTS = REPO / "scripts"
CLI_CASES: dict[str, Callable[[Folders], list[str]]] = {
    "transcribe, batched with the VAD": lambda f: [
        str(EXE), "transcribe", str(EN), "--model", "whisper-tiny.en", "--vad-filter",
        "--batch-size", "2", *f.output_args(), *f.manifest_args()],
    "transcribe a minute with GigaAM": lambda f: [
        str(EXE), "transcribe", str(long_russian(f.work / "long_ru.wav")),
        "--model", "gigaam-v3-ctc-testtiny", *f.output_args(), *f.manifest_args()],
    "models verify": lambda f: [str(EXE), "models", "verify", *f.manifest_args()],
    "doctor": lambda f: [str(EXE), "doctor", "--lock", LOCK, *f.manifest_args()],
    "scripts/check_env.py": lambda f: [
        sys.executable, str(SCRIPTS / "check_env.py"), "--json", "--lock", LOCK,
        *f.manifest_args()],
    "scripts/prepare_models.py, GigaAM test model with its smoke test": lambda f: [
        sys.executable, str(SCRIPTS / "prepare_models.py"), "--engine", "gigaam",
        "--variant", "v3-ctc-testtiny", "--manifest", str(f.work / "models" / "manifest.json")],
}  # fmt: skip


@pytest.mark.slow
@pytest.mark.parametrize("case", list(CLI_CASES))
def test_the_command_line_stays_on_loopback_and_in_its_folders(folders: Folders, case: str) -> None:
    command = CLI_CASES[case](folders)
    log = folders.work / "cli.strace"
    done = run_traced(command, log, env=folders.env(), cwd=folders.work)
    assert done.returncode == 0, f"{done.stdout[-2000:]}\n{done.stderr[-3000:]}"
    folders.assert_clean(log)


@pytest.mark.slow
def test_the_plans_server_entry_point_stays_on_loopback(folders: Folders) -> None:
    """`python app/main.py` (the plan's command) with the GigaAM test model: onnxruntime is
    imported and a session built before /ready answers."""
    work = folders.work
    log, port = work / "main.strace", free_port()
    url = f"http://127.0.0.1:{port}"
    command = [sys.executable, str(REPO / "app" / "main.py"), *folders.manifest_args(),
               "--host", "127.0.0.1", "--port", str(port)]  # fmt: skip
    env = {**folders.env(), "APP_MODEL_ID": "gigaam-v3-ctc-testtiny"}
    with (work / "main.log").open("w") as sink:
        strace = subprocess.Popen(traced(command, log), env=env, cwd=work, stdout=sink,
                                  stderr=subprocess.STDOUT, text=True,
                                  start_new_session=True)  # fmt: skip
        with stopped_on_exit(strace):
            assert wait_ready(url, strace, TIMEOUT), (work / "main.log").read_text()[-3000:]
    folders.assert_clean(log)


@pytest.mark.slow
def test_a_playlist_given_to_transcribe_is_refused_without_fetching_what_it_names(
    folders: Folders,
) -> None:
    """FFmpeg's HLS demuxer opens the URLs a `.m3u8` names (any host, any port): offline-asr
    reads only the file it is given."""
    with canary() as lure:
        playlist = _playlist(folders.work, lure)
        done = subprocess.run(
            [str(EXE), "transcribe", str(playlist), "--model", "whisper-tiny.en",
             *folders.manifest_args()],
            env=folders.env(), cwd=folders.work, capture_output=True, text=True, timeout=TIMEOUT,
            check=False,
        )  # fmt: skip
    assert lure.calls == [], "FFmpeg fetched the playlist's segment"
    assert done.returncode == 2, done.stderr
    assert "playlist.m3u8" in done.stderr and "refers to" in done.stderr, done.stderr
