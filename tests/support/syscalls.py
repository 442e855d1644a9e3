"""Run a command under strace and judge what it did: connections that leave loopback (DNS
included) and files written outside the places it may write to.

strace is started with `-f` (children and threads), `--seccomp-bpf` (only the traced syscalls
stop the process, so the engines run at nearly full speed) and `-yy` (every descriptor printed
with what it is: a path, or a socket's two ends). That last part is what lets a `sendto()` on an
already connected socket be judged by where the socket points.
"""

from __future__ import annotations

import ipaddress
import os
import re
import shutil
import signal
import subprocess
import time
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

import pytest

NETWORK_CALLS = frozenset({"connect", "sendto", "sendmsg", "sendmmsg"})
# syscall -> (index of the directory descriptor or None, index of the path written)
PATH_CALLS: dict[str, tuple[int | None, int]] = {
    "open": (None, 0),
    "openat": (0, 1),
    "openat2": (0, 1),
    "creat": (None, 0),
    "mkdir": (None, 0),
    "mkdirat": (0, 1),
    "rename": (None, 1),
    "renameat": (2, 3),
    "renameat2": (2, 3),
    "link": (None, 1),
    "linkat": (2, 3),
    "symlink": (None, 1),
    "symlinkat": (1, 2),
    "truncate": (None, 0),
    "unlink": (None, 0),
    "unlinkat": (0, 1),
    "rmdir": (None, 0),
}
OPEN_CALLS = frozenset({"open", "openat", "openat2"})
WRITE_FLAGS = re.compile(r"\bO_(WRONLY|RDWR|CREAT|TRUNC|APPEND)\b")
# Followed so that a relative path in `mkdir("x")` and the like is judged where it lands.
CHDIR_CALLS = frozenset({"chdir", "fchdir"})
TRACED = ",".join(sorted({"network", *PATH_CALLS, *CHDIR_CALLS}))
# Connections only: for processes whose writes are not ours to judge (a Ray node's session files).
TRACED_NETWORK = ",".join(sorted(NETWORK_CALLS))

# Names ORT (and others) take as "running in CI" and then stay silent by themselves: a traced
# process must not inherit them, or the trace would prove nothing about offline-asr's own switches.
CI_VARIABLES = (
    "CI", "TF_BUILD", "GITHUB_ACTIONS", "GITLAB_CI", "CIRCLECI", "TRAVIS", "JENKINS_URL",
    "CODEBUILD_BUILD_ID", "BUILDKITE", "TEAMCITY_VERSION", "APPVEYOR", "BITBUCKET_BUILD_NUMBER",
    "SYSTEM_TEAMFOUNDATIONCOLLECTIONURI", "ORT_RUNNING_UNIT_TESTS",
)  # fmt: skip

_LINE = re.compile(r"^(?P<pid>\d+)\s+(?P<call>\w+)\((?P<rest>.*)$")
_IPV4 = re.compile(r'sin_port=htons\((?P<port>\d+)\), sin_addr=inet_addr\("(?P<addr>[^"]+)"\)')
_IPV6 = re.compile(
    r'sin6_port=htons\((?P<port>\d+)\).*?inet_pton\(AF_INET6, "(?P<addr>[^"]+)"', re.DOTALL
)
# A descriptor decoded by -yy: 13<UDP:[10.0.0.2:40000->10.255.255.53:53]>
_SOCKET_FD = re.compile(r"<(?:TCP|UDP)(?:v6)?:\[(?P<ends>.*?)\]>")
_UNIX_PATH = re.compile(r'sun_path=(?:@)?"(?P<path>[^"]*)"')
_FAMILY = re.compile(r"sa_family=(?P<family>AF_\w+)")
# A directory descriptor decoded by -yy: 6</tmp/dir> or AT_FDCWD</current/dir>
_FD_PATH = re.compile(r"^(?:\d+|AT_FDCWD)<(?P<path>.*)>$")
_LOCAL_FAMILIES = {"AF_UNIX", "AF_NETLINK", "AF_UNSPEC", "AF_INET", "AF_INET6"}
# Unix sockets of local name-lookup daemons: a lookup through them is a DNS lookup too.
_RESOLVER_SOCKETS = ("nscd", "systemd/resolve")
DNS_PORT = 53


@dataclass(frozen=True)
class Call:
    pid: int
    name: str
    args: list[str]
    line: str


def _split_args(rest: str) -> list[str]:
    """The top-level arguments of `call(...)`: commas inside quotes, braces, brackets and the
    `<...>` of decoded descriptors do not split."""
    args, current, stack = [], [], []
    closing = {"(": ")", "{": "}", "[": "]", "<": ">"}
    i = 0
    while i < len(rest):
        char = rest[i]
        if char == '"':
            end = i + 1
            while end < len(rest) and rest[end] != '"':
                end += 2 if rest[end] == "\\" else 1
            current.append(rest[i : end + 1])
            i = end + 1
            continue
        if char in closing:
            stack.append(closing[char])
        elif stack and char == stack[-1]:
            stack.pop()
        elif char == ")" and not stack:
            break
        elif char == "," and not stack:
            args.append("".join(current).strip())
            current = []
            i += 1
            continue
        current.append(char)
        i += 1
    tail = "".join(current).replace("<unfinished ...>", "").strip()
    if tail:
        args.append(tail)
    return args


def parse(lines: Iterable[str]) -> Iterator[Call]:
    """Calls in the lines of an `strace -f -o LOG` file; a call split by another thread is read
    from its first half, which holds every argument."""
    for line in lines:
        match = _LINE.match(line)
        if match:
            yield Call(int(match["pid"]), match["call"], _split_args(match["rest"]), line)


def _ip_outside(address: str, port: int) -> bool:
    ip = ipaddress.ip_address(address.strip("[]"))
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return port == DNS_PORT or not (ip.is_loopback or ip.is_unspecified)


def _endpoint(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return host, int(port)


def network_problem(call: Call) -> str | None:
    """Why this connect/send leaves the machine or looks a name up, or None."""
    if call.name not in NETWORK_CALLS:
        return None
    text = ", ".join(call.args)
    for family in _FAMILY.findall(text):
        if family not in _LOCAL_FAMILIES:
            return f"{family} socket"
    for pattern in (_IPV4, _IPV6):
        for match in pattern.finditer(text):
            if _ip_outside(match["addr"], int(match["port"])):
                return f"to {match['addr']} port {match['port']}"
    for match in _SOCKET_FD.finditer(call.args[0] if call.args else ""):
        _, arrow, remote = match["ends"].partition("->")
        if arrow and _ip_outside(*_endpoint(remote)):
            return f"on a socket connected to {remote}"
    for match in _UNIX_PATH.finditer(text):
        if any(name in match["path"] for name in _RESOLVER_SOCKETS):
            return f"name lookup through {match['path']}"
    return None


def _unquote(arg: str) -> str | None:
    if not (arg.startswith('"') and arg.endswith('"')):
        return None
    return arg[1:-1].encode("latin-1", "backslashreplace").decode("unicode_escape")


def written_path(call: Call, cwd: Path) -> Path | None:
    """The path this call creates, changes or removes, or None when it only reads."""
    if call.name not in PATH_CALLS:
        return None
    dir_index, path_index = PATH_CALLS[call.name]
    if path_index + (call.name in OPEN_CALLS) >= len(call.args):
        return None
    if call.name in OPEN_CALLS and not WRITE_FLAGS.search(call.args[path_index + 1]):
        return None
    path = _unquote(call.args[path_index])
    if path is None:
        return None
    base = _directory(call.args[dir_index]) if dir_index is not None else None
    return Path(os.path.normpath((base or cwd) / path))


def _directory(arg: str) -> Path | None:
    match = _FD_PATH.match(arg)
    return Path(match["path"]) if match else None


def current_directory(call: Call, cwd: Path) -> Path:
    """The process's directory after this call: what a chdir sets, or what -yy shows of it."""
    if call.name == "chdir" and (path := _unquote(call.args[0])) is not None:
        return Path(os.path.normpath(cwd / path))
    if call.name == "fchdir":
        return _directory(call.args[0]) or cwd
    for arg in call.args:
        if arg.startswith("AT_FDCWD<"):
            return _directory(arg) or cwd
    return cwd


@dataclass(frozen=True)
class Findings:
    connections: list[str]
    writes: list[str]

    @property
    def clean(self) -> bool:
        return not (self.connections or self.writes)

    def __str__(self) -> str:
        parts = [f"connection {line}" for line in self.connections]
        parts += [f"write {line}" for line in self.writes]
        return "\n".join(parts) or "nothing"


def connections(
    log: Path, tolerated: Callable[[Call], bool] = lambda call: False
) -> tuple[list[str], int]:
    """What in the trace left loopback (each with its strace line) and is not `tolerated`, and
    how many connections stayed on the machine: a trace with none saw nothing, proves nothing."""
    problems, local = [], 0
    for call in parse(log.read_text(errors="replace").splitlines()):
        problem = network_problem(call)
        if problem is None:
            local += call.name == "connect"
        elif not tolerated(call):
            problems.append(f"{problem}: {call.line}")
    return problems, local


def _under(path: Path, roots: Iterable[Path]) -> bool:
    return any(path == root or root in path.parents for root in roots)


def judge(
    log: Path, cwd: Path, allowed: Sequence[Path], allowed_files: Sequence[re.Pattern[str]] = ()
) -> Findings:
    """Everything in the trace that left loopback, or wrote outside `allowed` (folders) and
    the `allowed_files` patterns (whole path), each with its strace line. `cwd` is where the
    traced command started."""
    roots = [Path(os.path.realpath(root)) for root in allowed] + list(allowed)
    connections, writes = [], []
    cwds: dict[int, Path] = {}
    for call in parse(log.read_text(errors="replace").splitlines()):
        problem = network_problem(call)
        if problem is not None:
            connections.append(f"{problem}: {call.line}")
        cwds[call.pid] = current_directory(call, cwds.get(call.pid, cwd))
        path = written_path(call, cwds[call.pid])
        if path is None or _under(path, roots):
            continue
        if not any(pattern.fullmatch(str(path)) for pattern in allowed_files):
            writes.append(f"{path}: {call.line}")
    return Findings(connections, writes)


def strace_path() -> str:
    """strace, or a failure (not a skip): `make test` installs it, and without it the promise
    that nothing leaves the machine goes untested."""
    found = shutil.which("strace")
    if found is None:
        pytest.fail(
            "strace is missing: run `make test`, which installs Debian's strace when run as "
            "root (or `apt-get install strace`)",
            pytrace=False,
        )
    return found


def traced(command: Sequence[str], log: Path, calls: str = TRACED) -> list[str]:
    """`command` under strace, writing its trace of `calls` to `log`."""
    return [strace_path(), "-f", "--seccomp-bpf", "-qq", "-yy", "-s", "4096", "-e", "signal=none",
            "-e", f"trace={calls}", "-o", str(log), *command]  # fmt: skip


def run_traced(
    command: Sequence[str], log: Path, *, env: dict[str, str], cwd: Path, timeout: float = 600
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        traced(command, log), env=env, cwd=cwd, capture_output=True, text=True,
        timeout=timeout, check=False,
    )  # fmt: skip


def tracee_of(strace: subprocess.Popen[str], timeout: float = 30) -> int:
    """The pid of the command strace started (its only child)."""
    children = Path(f"/proc/{strace.pid}/task/{strace.pid}/children")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        pids = children.read_text().split() if children.exists() else []
        if pids:
            return int(pids[0])
        time.sleep(0.05)
    raise TimeoutError(f"strace (pid {strace.pid}) started no command")


@contextmanager
def stopped_on_exit(strace: subprocess.Popen[str]) -> Iterator[None]:
    """Stop a traced command by SIGTERM to the command itself (strace holds on to its own
    SIGTERM while the command runs), then wait for strace to finish writing its trace.
    `strace` must lead its own session (`start_new_session=True`): whatever is left of it at
    the end is killed as a group, so no traced server outlives its test."""
    tracee = tracee_of(strace)
    try:
        yield
    finally:
        for sig in (signal.SIGTERM, signal.SIGKILL):
            if strace.poll() is not None:
                break
            with suppress(ProcessLookupError):
                os.kill(tracee, sig)
            with suppress(subprocess.TimeoutExpired):
                strace.wait(timeout=30)
        if strace.poll() is None:  # seen once in a full run: the server outlived SIGKILL's aim
            warnings.warn(f"strace {strace.pid} outlived its command {tracee}; killed its group",
                          stacklevel=1)  # fmt: skip
            with suppress(ProcessLookupError):
                os.killpg(strace.pid, signal.SIGKILL)
            strace.wait()
