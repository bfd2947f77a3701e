"""A lean keep-alive HTTP/1.1 client that speaks just what object GET and PUT need.

http.client parses every response header block with the email package; at thousands of small
objects per second that parsing, under the GIL, was the largest cost left in the transfer engine.
"""

from __future__ import annotations

import os
import socket
import ssl
import threading
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

RECV_SIZE = 256 * 1024
SMALL_BODY = 256 * 1024
MAX_HEAD = 64 * 1024


class UnusableUrl(ValueError):
    """A URL the client refuses to send (no host, or characters that would split the request)."""


def host_header(origin: str) -> str:
    """The Host header a signer covers: the netloc without a default port."""
    parts = urlsplit(origin)
    default = {"http": 80, "https": 443}.get(parts.scheme)
    if parts.port is not None and parts.port == default:
        return parts.netloc.rsplit(":", 1)[0]
    return parts.netloc


def _number(text: str | bytes, base: int = 10) -> int:
    try:
        return int(text, base)
    except ValueError:
        raise ConnectionError(f"malformed number in response: {text[:40]!r}") from None


class Response:
    """Status, lower-cased headers and a body that must be read (or the connection dropped)."""

    def __init__(self, conn: Connection, status: int, reason: str, headers: dict[str, str]) -> None:
        self.status = status
        self.reason = reason
        self.headers = headers
        self._conn = conn
        self.chunked = "chunked" in headers.get("transfer-encoding", "").lower()
        length = headers.get("content-length")
        self.length = _number(length) if length is not None and not self.chunked else None
        self._keep_alive = headers.get("connection", "").lower() != "close"

    @property
    def framed(self) -> bool:
        """True when the body's end is known (a length or chunks), so a cut is detectable."""
        return self.chunked or self.length is not None

    def chunks(self) -> Iterator[bytes]:
        if self.chunked:
            yield from self._conn.read_chunked()
        elif self.length is not None:
            yield from self._conn.read_exact(self.length)
        else:
            yield from self._conn.read_to_close()
        if not self._keep_alive:
            self._conn.close()

    def read(self) -> bytes:
        return b"".join(self.chunks())


class Connection:
    """One keep-alive client connection."""

    def __init__(self, scheme: str, host: str, port: int, timeout: float, tls: Any) -> None:
        sock = socket.create_connection((host, port), timeout=timeout)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock = tls.wrap_socket(sock, server_hostname=host) if scheme == "https" else sock
        self.pending = b""
        self.closed = False

    def close(self) -> None:
        self.closed = True
        self.sock.close()

    def _fill(self) -> None:
        data = self.sock.recv(RECV_SIZE)
        if not data:
            raise ConnectionError("connection closed by the server")
        self.pending += data

    def _read_line(self) -> bytes:
        while (end := self.pending.find(b"\r\n")) < 0:
            if len(self.pending) > MAX_HEAD:
                raise ConnectionError("response line too long")
            self._fill()
        line, self.pending = self.pending[:end], self.pending[end + 2 :]
        return line

    def request(
        self, method: str, target: str, host: str, headers: dict[str, str], body: bytes | None
    ) -> Response:
        lines = [f"{method} {target} HTTP/1.1", f"Host: {host}"]
        lines += [f"{name}: {value}" for name, value in headers.items()]
        head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
        if body and len(body) <= SMALL_BODY:
            self.sock.sendall(head + body)
        else:
            self.sock.sendall(head)
            if body:
                self.sock.sendall(body)
        while True:
            status, reason, fields = self._read_head()
            if not 100 <= status < 200:  # skip interim responses
                return Response(self, status, reason, fields)

    def _read_head(self) -> tuple[int, str, dict[str, str]]:
        while (end := self.pending.find(b"\r\n\r\n")) < 0:
            if len(self.pending) > MAX_HEAD:
                raise ConnectionError("response header too large")
            self._fill()
        head, self.pending = self.pending[:end], self.pending[end + 4 :]
        status_line, *lines = head.split(b"\r\n")
        version, _, rest = status_line.partition(b" ")
        code, _, reason = rest.partition(b" ")
        if not version.startswith(b"HTTP/1.") or not code.isdigit():
            raise ConnectionError(f"not an HTTP/1.x response: {status_line[:80]!r}")
        fields = {}
        for line in lines:
            name, _, value = line.partition(b":")
            fields[name.strip().lower().decode("latin-1")] = value.strip().decode("latin-1")
        return int(code), reason.decode("latin-1"), fields

    def read_exact(self, size: int) -> Iterator[bytes]:
        if self.pending:
            take, self.pending = self.pending[:size], self.pending[size:]
            size -= len(take)
            yield take
        while size > 0:
            data = self.sock.recv(min(size, RECV_SIZE))
            if not data:
                raise ConnectionError("connection closed mid-body")
            size -= len(data)
            yield data

    def read_chunked(self) -> Iterator[bytes]:
        while size := _number(self._read_line().split(b";")[0], 16):
            yield from self.read_exact(size)
            if self._read_line():
                raise ConnectionError("malformed chunked body")
        while self._read_line():  # trailer fields, then the blank line
            pass

    def read_to_close(self) -> Iterator[bytes]:
        if self.pending:
            data, self.pending = self.pending, b""
            yield data
        while data := self.sock.recv(RECV_SIZE):
            yield data
        self.close()


class Connections:
    """One keep-alive connection per (thread, scheme, host); all closed at the end."""

    def __init__(self, timeout: float = 120.0) -> None:
        self._local = threading.local()
        self._timeout = timeout
        self._tls: ssl.SSLContext | None = None
        self._lock = threading.Lock()
        self._opened: list[Connection] = []

    def _pool(self) -> dict[tuple[str, str], Connection]:
        pool = getattr(self._local, "pool", None)
        if pool is None:
            pool = self._local.pool = {}
        return pool

    def _open(self, scheme: str, host: str, port: int | None) -> Connection:
        if scheme == "https" and self._tls is None:
            self._tls = ssl.create_default_context(cafile=os.environ.get("AWS_CA_BUNDLE"))
        default = 443 if scheme == "https" else 80
        conn = Connection(scheme, host, port or default, self._timeout, self._tls)
        with self._lock:
            self._opened.append(conn)
        return conn

    def send(
        self,
        method: str,
        url: str,
        body: bytes | None = None,
        headers: dict[str, str] | None = None,
    ) -> Response:
        parts = urlsplit(url)
        target = parts.path + (f"?{parts.query}" if parts.query else "")
        if any(c in target for c in " \r\n") or not parts.hostname:
            raise UnusableUrl(f"unusable URL from the signer: {url[:120]!r}")
        pool = self._pool()
        conn = pool.get((parts.scheme, parts.netloc))
        if conn is None or conn.closed:
            conn = self._open(parts.scheme, parts.hostname, parts.port)
            pool[(parts.scheme, parts.netloc)] = conn
        # The Host header is the one the signature covers (no default port), not the netloc.
        host = host_header(f"{parts.scheme}://{parts.netloc}")
        return conn.request(method, target, host, headers or {}, body)

    def drop(self) -> None:
        """Close this thread's connections (after an error or an abandoned body)."""
        pool = self._pool()
        for conn in pool.values():
            conn.close()
        pool.clear()

    def close_all(self) -> None:
        with self._lock:
            opened, self._opened = self._opened, []
        for conn in opened:
            conn.close()
