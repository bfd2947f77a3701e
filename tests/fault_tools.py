"""Tools that cause real faults for the fault-injection tests: a proxy that kills the S3 server at
a chosen request, a small full filesystem, and the table of what each fault left behind."""

from __future__ import annotations

import contextlib
import csv
import os
import signal
import socket
import subprocess
import tempfile
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

Rule = Callable[[str, str], bool]
ROOT = Path(__file__).resolve().parent.parent
TABLE = ROOT / "reports" / "faults.csv"  # written afresh by every pytest run (conftest)
COLUMNS = ["fault", "runs", "raw_images", "expected_outputs", "outputs", "lost", "duplicated",
           "mismatched", "false_failures", "seconds"]  # fmt: skip


@dataclass
class _Trigger:
    matches: Rule
    action: Callable[[], None]
    fired: threading.Event = field(default_factory=threading.Event)


class FaultProxy:
    """A TCP proxy in front of an S3 server that runs an action (e.g. SIGKILL the server) just
    before it forwards the first request a rule matches. Not a mock: every byte goes to the
    real server, which then really dies; clients see what they would see in production."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream = ("127.0.0.1", upstream_port)
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]
        self.triggers: list[_Trigger] = []
        self._lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def on(self, matches: Rule, action: Callable[[], None]) -> threading.Event:
        """Run `action` once, before forwarding the first request with matches(method, path)."""
        trigger = _Trigger(matches, action)
        self.triggers.append(trigger)
        return trigger.fired

    def close(self) -> None:
        self.server.close()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.server.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _fire(self, method: str, path: str) -> None:
        with self._lock:
            for trigger in self.triggers:
                if not trigger.fired.is_set() and trigger.matches(method, path):
                    trigger.action()
                    trigger.fired.set()

    def _serve(self, client: socket.socket) -> None:
        upstream: socket.socket | None = None
        pending = b""
        try:
            while True:
                while b"\r\n\r\n" not in pending:
                    data = client.recv(65536)
                    if not data:
                        return
                    pending += data
                head, _, pending = pending.partition(b"\r\n\r\n")
                method, path = head.split(b" ", 2)[:2]
                length = 0
                lines = head.split(b"\r\n")
                for line in lines[1:]:
                    name, _, value = line.partition(b":")
                    if name.strip().lower() == b"content-length":
                        length = int(value.strip())
                # the client would wait for a "100 Continue" this proxy never sends
                head = b"\r\n".join(
                    line for line in lines if not line.lower().startswith(b"expect:")
                )
                while len(pending) < length:
                    data = client.recv(65536)
                    if not data:
                        return
                    pending += data
                body, pending = pending[:length], pending[length:]
                self._fire(method.decode(), path.decode())
                if upstream is None:
                    upstream = socket.create_connection(self.upstream, timeout=30)
                    threading.Thread(target=_relay, args=(upstream, client), daemon=True).start()
                upstream.sendall(head + b"\r\n\r\n" + body)
        except OSError:
            return
        finally:
            for sock in (client, upstream):
                if sock is not None:
                    with contextlib.suppress(OSError):
                        sock.close()


def _relay(src: socket.socket, dst: socket.socket) -> None:
    try:
        while data := src.recv(65536):
            dst.sendall(data)
    except OSError:
        pass
    finally:
        for sock in (src, dst):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)


def kill_process_group(pid: int) -> None:
    """SIGKILL a server and everything it started (it leads its own session)."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGKILL)


@contextlib.contextmanager
def small_filesystem(size_bytes: int) -> Iterator[Path]:
    """A tmpfs of `size_bytes`: a disk that really fills up (needs root, as CI runs)."""
    path = Path(tempfile.mkdtemp(prefix="pixelpipe-small-fs-"))
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size_bytes}", "tmpfs", str(path)],
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        path.rmdir()
        raise PermissionError(f"cannot mount a tmpfs: {done.stderr.strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)
        path.rmdir()


def fill(path: Path, leave_bytes: int) -> Path:
    """Fill the filesystem at `path` until only about `leave_bytes` are free."""
    stat = os.statvfs(path)
    free = stat.f_bavail * stat.f_frsize
    filler = path / "filler.bin"
    with filler.open("wb") as out:
        out.truncate(0)
        remaining = max(0, free - leave_bytes)
        chunk = b"\0" * (1 << 20)
        while remaining > 0:
            out.write(chunk[: min(len(chunk), remaining)])
            remaining -= min(len(chunk), remaining)
    return filler


def record(fault: str, runs: int, row: dict[str, Any], seconds: float) -> None:
    """Append one row to reports/faults.csv (stored with the other test reports)."""
    TABLE.parent.mkdir(parents=True, exist_ok=True)
    new = not TABLE.exists()
    with TABLE.open("a", newline="") as out:
        writer = csv.DictWriter(out, fieldnames=COLUMNS)
        if new:
            writer.writeheader()
        writer.writerow({"fault": fault, "runs": runs, **row, "seconds": round(seconds, 1)})
