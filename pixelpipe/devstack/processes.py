"""Processes and ports of the embedded servers: pick free loopback ports, start, wait, stop."""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import socket
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

HOST = "127.0.0.1"
GRPC_OFFSET = 10000  # SeaweedFS puts each gRPC port at HTTP port + 10000
PORT_RANGE = (20000, 44000)  # keeps port + 10000 below 55000


class StackError(RuntimeError):
    """The embedded stack could not start, or is not running."""


def bin_path(name: str) -> str:
    """A console script from this interpreter's environment, else from PATH."""
    local = Path(sys.executable).parent / name
    if local.exists():
        return str(local)
    found = shutil.which(name)
    if not found:
        raise StackError(f"'{name}' is not installed; run `make install`")
    return found


def port_free(port: int) -> bool:
    """Whether nothing listens on `port` on loopback."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((HOST, port))
        except OSError:
            return False
    return True


def pick_ports(count: int, *, grpc: bool) -> list[int]:
    """`count` free loopback ports (and, with grpc, their +10000 twins), all below 55000."""
    rng = secrets.SystemRandom()
    for _ in range(200):
        base = rng.randrange(PORT_RANGE[0], PORT_RANGE[1] - count)
        ports = list(range(base, base + count))
        needed = ports + ([p + GRPC_OFFSET for p in ports] if grpc else [])
        if all(port_free(p) for p in needed):
            return ports
    raise StackError("no free loopback ports found between 20000 and 54000")


def alive(pid: int) -> bool:
    """Whether `pid` runs (a zombie counts as gone)."""
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, PermissionError):
        return False
    try:  # a zombie child of ours counts as gone
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return True


def cmdline(pid: int) -> str:
    """The command line of `pid`, or '' when it is gone."""
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def pids_matching(needle: str) -> list[int]:
    """PIDs whose command line contains needle (to find a stale server on our directory)."""
    out = []
    for entry in Path("/proc").iterdir():
        if (
            entry.name.isdigit()
            and int(entry.name) != os.getpid()
            and needle in cmdline(int(entry.name))
        ):
            out.append(int(entry.name))
    return out


def stop_pid(pid: int, sig: int, timeout: float = 20.0) -> None:
    """Signal a server's process group and wait for it; SIGKILL after `timeout`."""
    if not alive(pid):
        return
    try:
        os.killpg(pid, sig)  # each server leads its own session; its workers follow
    except (ProcessLookupError, PermissionError):
        os.kill(pid, sig)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not alive(pid):
            return
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)
        time.sleep(0.1)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)


def wait_http(url: str, timeout: float, pid: int, log: Path) -> None:
    """Wait until `url` answers below 500; StackError with the log's tail if `pid` dies."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not alive(pid):
            tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
            raise StackError(f"server for {url} exited during start-up; log {log}:\n{tail}")
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:
                if resp.status < 500:
                    return
        except urllib.error.HTTPError as exc:
            if exc.code < 500:
                return
        except OSError:
            pass
        time.sleep(0.2)
    raise StackError(f"{url} did not answer within {timeout:.0f}s; see {log}")
