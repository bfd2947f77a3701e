"""Concurrent transfers of many objects between S3 and local disk (NVMe staging).

Small objects dominate image datasets, and boto3's per-request cost (~1 ms of Python in
botocore, GIL-bound, more through the transfer manager) caps a thread pool at a few hundred
objects/s. So the calling thread presigns one URL per object and a pool of threads sends
them over keep-alive HTTP/1.1 connections of their own, streaming each body to
`<path>.part` and renaming it into place. Endpoint, credentials, addressing style and
signature version stay botocore's business: uploads use its presign, and downloads use a
local SigV4 signer only after it reproduced botocore's signatures at batch start.
Objects above `large_threshold` bytes go through boto3's transfer manager (parallel ranged
GETs, multipart uploads), where per-object overhead does not matter.

Measured (1,000 x 50 KB from SeaweedFS on loopback, 16 workers): about 0.8-0.9x the rate of
`s5cmd cp` on two cores, ~0.6x on sixteen, where one GIL caps a process near 1,500
objects/s; `processes=N` spreads very large batches over N spawned processes.

Limits of the lean path: it ignores HTTP(S)_PROXY and trusts the system CA store (or
AWS_CA_BUNDLE). A failed object is reported in `failures`, never left half-written.
"""

from __future__ import annotations

import hashlib
import hmac
import mimetypes
import os
import random
import re
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, quote, urlsplit

from pixelpipe.storage.keys import UnsafeKeyError, check_key, key_to_path, relative_key

LARGE_THRESHOLD = 64 * 1024 * 1024
MULTIPART_CHUNK = 16 * 1024 * 1024
URL_EXPIRES_SECONDS = 3600
READ_CHUNK = 1024 * 1024
RECV_SIZE = 256 * 1024
SMALL_BODY = 256 * 1024
MAX_HEAD = 64 * 1024
RETRY_STATUSES = frozenset({408, 429, 500, 502, 503, 504})
ClientFactory = Callable[[], Any]
ContentType = str | Callable[[str], str] | None


@dataclass(frozen=True)
class ObjectResult:
    """One object moved: its key, local path, size and (when asked for) sha256."""

    key: str
    path: Path
    bytes: int
    sha256: str | None = None


@dataclass
class TransferReport:
    """What a batch transfer did: totals, per-object results and failures with reasons."""

    bytes: int = 0
    seconds: float = 0.0
    count: int = 0
    failures: list[tuple[str, str]] = field(default_factory=list)
    results: list[ObjectResult] = field(default_factory=list)

    @property
    def objects_per_second(self) -> float:
        return self.count / self.seconds if self.seconds > 0 else 0.0

    @property
    def mb_per_second(self) -> float:
        return self.bytes / 1e6 / self.seconds if self.seconds > 0 else 0.0


class TransferError(Exception):
    """One object could not be moved; the message is the reason reported in `failures`."""


class _Retryable(Exception):
    """A response worth another attempt (throttling, 5xx)."""


@dataclass(frozen=True)
class _Large:
    key: str
    path: Path
    size: int


def _number(text: str | bytes, base: int = 10) -> int:
    try:
        return int(text, base)
    except ValueError:
        raise ConnectionError(f"malformed number in response: {text[:40]!r}") from None


class _Response:
    """Status, lower-cased headers and a body that must be read (or the connection dropped)."""

    def __init__(self, conn: _Conn, status: int, reason: str, headers: dict[str, str]) -> None:
        self.status = status
        self.reason = reason
        self.headers = headers
        self._conn = conn
        self.chunked = "chunked" in headers.get("transfer-encoding", "").lower()
        length = headers.get("content-length")
        self.length = _number(length) if length is not None and not self.chunked else None
        self._keep_alive = headers.get("connection", "").lower() != "close"

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


class _Conn:
    """A keep-alive HTTP/1.1 client connection that speaks just what object GET/PUT need.

    http.client parses every response header block with the email package; at thousands of
    small objects per second that parsing, under the GIL, was the largest cost left.
    """

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
    ) -> _Response:
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
                return _Response(self, status, reason, fields)

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


class _Connections:
    """One keep-alive connection per (thread, scheme, host); all closed at the end."""

    def __init__(self, timeout: float = 120.0) -> None:
        self._local = threading.local()
        self._timeout = timeout
        self._tls: ssl.SSLContext | None = None
        self._lock = threading.Lock()
        self._opened: list[_Conn] = []

    def _pool(self) -> dict[tuple[str, str], _Conn]:
        pool = getattr(self._local, "pool", None)
        if pool is None:
            pool = self._local.pool = {}
        return pool

    def _open(self, scheme: str, host: str, port: int | None) -> _Conn:
        if scheme == "https" and self._tls is None:
            self._tls = ssl.create_default_context(cafile=os.environ.get("AWS_CA_BUNDLE"))
        default = 443 if scheme == "https" else 80
        conn = _Conn(scheme, host, port or default, self._timeout, self._tls)
        with self._lock:
            self._opened.append(conn)
        return conn

    def send(
        self,
        method: str,
        url: str,
        body: bytes | None = None,
        headers: dict[str, str] | None = None,
    ) -> _Response:
        parts = urlsplit(url)
        target = parts.path + (f"?{parts.query}" if parts.query else "")
        if any(c in target for c in " \r\n") or not parts.hostname:
            raise TransferError(f"unusable URL from the signer: {url[:120]!r}")
        pool = self._pool()
        conn = pool.get((parts.scheme, parts.netloc))
        if conn is None or conn.closed:
            conn = self._open(parts.scheme, parts.hostname, parts.port)
            pool[(parts.scheme, parts.netloc)] = conn
        return conn.request(method, target, parts.netloc, headers or {}, body)

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


class _GetSigner:
    """Presigned GET URLs signed locally (SigV4 query), ~10x cheaper than botocore's presign.

    Used only when it provably agrees with botocore: at batch start it signs probe keys with
    botocore's own S3SigV4QueryAuth and with itself, at the same timestamp, and compares.
    Anything unusual (no credentials, a non-SigV4 client, a mismatch) keeps botocore.
    """

    PROBES = ("pixelpipe/probe.jpg", "pixelpipe/a b+~!*'()é%&=;:@,$[]{}^`|.jpg")

    def __init__(self, client: Any, bucket: str, origin: str, prefix: str) -> None:
        self._client = client
        self._origin = origin  # scheme://netloc
        self._prefix = prefix  # the URL path before the quoted key
        self._host = _host_header(origin)
        self._region = client.meta.region_name or "us-east-1"
        self._stamp = 0.0
        self._rekey(time.time())

    def _rekey(self, now: float) -> None:
        creds = self._client._get_credentials().get_frozen_credentials()
        amz_date = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(now))
        self._set_key(creds, amz_date)
        self._stamp = now

    def _set_key(self, creds: Any, amz_date: str) -> None:
        day = amz_date[:8]
        scope = f"{day}/{self._region}/s3/aws4_request"
        params = {
            "X-Amz-Algorithm": "AWS4-HMAC-SHA256",
            "X-Amz-Credential": f"{creds.access_key}/{scope}",
            "X-Amz-Date": amz_date,
            "X-Amz-Expires": str(URL_EXPIRES_SECONDS),
            "X-Amz-SignedHeaders": "host",
        }
        if creds.token:
            params["X-Amz-Security-Token"] = creds.token
        query = "&".join(
            f"{quote(k, safe='-_.~')}={quote(v, safe='-_.~')}" for k, v in sorted(params.items())
        )
        key = f"AWS4{creds.secret_key}".encode()
        for part in (day, self._region, "s3", "aws4_request"):
            key = hmac.new(key, part.encode(), hashlib.sha256).digest()
        # One assignment, so a retry signing on another thread never sees half a re-key.
        self._state = (query, f"AWS4-HMAC-SHA256\n{amz_date}\n{scope}\n", key)

    def url(self, key: str) -> str:
        now = time.time()
        if now - self._stamp > 300:  # fresh timestamps and (refreshable) credentials
            self._rekey(now)
        query, sts_head, signing_key = self._state
        path = self._prefix + quote(key, safe="/~")
        request = f"GET\n{path}\n{query}\nhost:{self._host}\n\nhost\nUNSIGNED-PAYLOAD"
        digest = hashlib.sha256(request.encode()).hexdigest()
        signature = hmac.new(signing_key, (sts_head + digest).encode(), hashlib.sha256)
        return f"{self._origin}{path}?{query}&X-Amz-Signature={signature.hexdigest()}"

    @classmethod
    def build(cls, client: Any, bucket: str) -> _GetSigner | None:
        """A verified signer for this client and bucket, or None to keep botocore's."""
        try:
            if getattr(client.meta.config, "signature_version", None) not in (None, "s3v4"):
                return None
            creds = client._get_credentials()
            if creds is None:
                return None
            sample = urlsplit(
                client.generate_presigned_url(
                    "get_object", Params={"Bucket": bucket, "Key": cls.PROBES[0]}
                )
            )
            quoted = quote(cls.PROBES[0], safe="/~")
            if not sample.path.endswith(quoted):
                return None
            origin = f"{sample.scheme}://{sample.netloc}"
            signer = cls(client, bucket, origin, sample.path[: -len(quoted)])
            return signer if all(signer._agrees(k, creds) for k in cls.PROBES) else None
        except Exception:  # any surprise: botocore's presign is always correct
            return None

    def _agrees(self, key: str, creds: Any) -> bool:
        from botocore.auth import S3SigV4QueryAuth
        from botocore.awsrequest import AWSRequest

        frozen = creds.get_frozen_credentials()
        request = AWSRequest(method="GET", url=self._origin + self._prefix + quote(key, safe="/~"))
        S3SigV4QueryAuth(frozen, "s3", self._region, expires=URL_EXPIRES_SECONDS).add_auth(request)
        reference = urlsplit(request.url)
        amz_date = dict(parse_qsl(reference.query))["X-Amz-Date"]
        self._set_key(frozen, amz_date)
        ours = urlsplit(self.url(key))
        self._rekey(time.time())
        return (ours.path, sorted(parse_qsl(ours.query))) == (
            reference.path,
            sorted(parse_qsl(reference.query)),
        )


def _host_header(origin: str) -> str:
    parts = urlsplit(origin)
    default = {"http": 80, "https": 443}.get(parts.scheme)
    if parts.port is not None and parts.port == default:
        return parts.netloc.rsplit(":", 1)[0]
    return parts.netloc


def _error_reason(resp: _Response) -> str:
    body = resp.read()
    match = re.search(rb"<Code>([^<]{1,100})</Code>", body)
    code = match.group(1).decode("utf-8", "replace") if match else resp.reason
    return f"{code} (HTTP {resp.status})"


def _with_retries(fn: Callable[[], Any], conns: _Connections, attempts: int) -> Any:
    last: Exception | None = None
    for attempt in range(attempts):
        try:
            return fn()
        except (_Retryable, OSError) as exc:
            last = exc
            conns.drop()
            if attempt + 1 < attempts:
                time.sleep(min(2.0, 0.05 * 2**attempt) * random.uniform(0.5, 1.0))
    raise TransferError(f"gave up after {attempts} attempts: {last}")


def _part_path(path: Path) -> Path:
    name = path.name + ".part"
    if len(name.encode("utf-8")) > 255:
        # A 255-byte file name has no room for the suffix; a hashed hidden name does.
        name = "." + hashlib.sha1(path.name.encode("utf-8")).hexdigest() + ".part"
    return path.with_name(name)


class _Dirs:
    """mkdir -p each parent once per batch (a stat per object adds up over thousands)."""

    def __init__(self) -> None:
        self._made: set[Path] = set()

    def ensure(self, directory: Path) -> None:
        if directory not in self._made:
            try:
                directory.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise TransferError(f"cannot create {directory}: {exc.strerror or exc}") from None
            self._made.add(directory)


def _write_body(resp: _Response, part: Path, digest: Any) -> int:
    try:
        out = open(part, "wb")  # noqa: SIM115 - closed below
    except OSError as exc:
        raise TransferError(f"cannot write {part}: {exc.strerror or exc}") from None
    written = 0
    with out:
        for chunk in resp.chunks():
            if digest is not None:
                digest.update(chunk)
            try:
                out.write(chunk)
            except OSError as exc:
                raise TransferError(f"cannot write {part}: {exc.strerror or exc}") from None
            written += len(chunk)
    return written


@dataclass(frozen=True)
class _Job:
    """One object to move, with a URL presigned by the submitting thread."""

    key: str
    path: Path
    url: str
    content_type: str = ""


Outcome = ObjectResult | _Large


@dataclass
class _Engine:
    """Shared state of one batch: the botocore client, connections, directories."""

    client: Any
    bucket: str
    checksum: bool
    large_threshold: int
    attempts: int
    conns: _Connections = field(default_factory=_Connections)
    dirs: _Dirs = field(default_factory=_Dirs)
    get_signer: _GetSigner | None = None

    def presign(self, op: str, key: str, **extra: str) -> str:
        if op == "get_object" and self.get_signer is not None:
            return self.get_signer.url(key)
        params = {"Bucket": self.bucket, "Key": key, **extra}
        return self.client.generate_presigned_url(op, Params=params, ExpiresIn=URL_EXPIRES_SECONDS)

    def _attempts(self, job: _Job, once: Callable[[str], Outcome], op: str, **extra: str) -> Any:
        """The first attempt uses the job's URL; a retry signs a fresh one if it can."""
        urls = iter([job.url])

        def url() -> str:
            fresh = next(urls, None)
            if fresh is None and self.client is None:  # a worker process: no signer here
                return job.url
            return fresh or self.presign(op, job.key, **extra)

        return _with_retries(lambda: once(url()), self.conns, self.attempts)

    def _get_once(self, job: _Job, url: str) -> Outcome:
        resp = self.conns.send("GET", url)
        if resp.status in RETRY_STATUSES:
            raise _Retryable(_error_reason(resp))
        if resp.status != 200:
            raise TransferError(_error_reason(resp))
        expected = -1 if resp.length is None else resp.length
        if expected > self.large_threshold:
            self.conns.drop()  # abandon the body; the large path fetches it in ranges
            return _Large(job.key, job.path, expected)
        part = _part_path(job.path)
        digest = hashlib.sha256() if self.checksum else None
        try:
            written = _write_body(resp, part, digest)
            if expected >= 0 and written != expected:
                raise ConnectionError(f"body of {written} bytes, expected {expected}")
            os.replace(part, job.path)
        except BaseException:
            part.unlink(missing_ok=True)
            raise
        return ObjectResult(job.key, job.path, written, digest.hexdigest() if digest else None)

    def download(self, job: _Job) -> Outcome:
        self.dirs.ensure(job.path.parent)
        return self._attempts(job, lambda url: self._get_once(job, url), "get_object")

    def download_large(self, item: _Large, concurrency: int) -> ObjectResult:
        part = _part_path(item.path)
        try:
            self.client.download_file(
                self.bucket, item.key, str(part), Config=self._transfer_config(concurrency)
            )
            os.replace(part, item.path)
        except Exception as exc:
            part.unlink(missing_ok=True)
            raise TransferError(f"large download failed: {exc}") from None
        size = item.path.stat().st_size
        return ObjectResult(item.key, item.path, size, self._file_sha256(item.path))

    def _put_once(self, job: _Job, data: bytes, url: str) -> None:
        headers = {"Content-Type": job.content_type, "Content-Length": str(len(data))}
        resp = self.conns.send("PUT", url, body=data, headers=headers)
        if resp.status in RETRY_STATUSES:
            raise _Retryable(_error_reason(resp))
        if resp.status != 200:
            raise TransferError(_error_reason(resp))
        resp.read()

    def upload(self, job: _Job) -> Outcome:
        try:
            size = job.path.stat().st_size
            if size > self.large_threshold:
                return _Large(job.key, job.path, size)
            data = job.path.read_bytes()
        except OSError as exc:
            raise TransferError(f"cannot read {job.path}: {exc.strerror or exc}") from None
        put = "put_object"
        self._attempts(
            job, lambda url: self._put_once(job, data, url), put, ContentType=job.content_type
        )
        sha = hashlib.sha256(data).hexdigest() if self.checksum else None
        return ObjectResult(job.key, job.path, len(data), sha)

    def upload_large(self, item: _Large, content_type: str, concurrency: int) -> ObjectResult:
        try:
            self.client.upload_file(
                str(item.path),
                self.bucket,
                item.key,
                ExtraArgs={"ContentType": content_type},
                Config=self._transfer_config(concurrency),
            )
        except Exception as exc:
            raise TransferError(f"large upload failed: {exc}") from None
        return ObjectResult(item.key, item.path, item.size, self._file_sha256(item.path))

    def _transfer_config(self, concurrency: int) -> Any:
        from boto3.s3.transfer import TransferConfig

        pool = getattr(self.client.meta.config, "max_pool_connections", 10) or 10
        return TransferConfig(
            multipart_threshold=self.large_threshold,
            multipart_chunksize=MULTIPART_CHUNK,
            max_concurrency=max(1, min(concurrency, pool)),
        )

    def _file_sha256(self, path: Path) -> str | None:
        if not self.checksum:
            return None
        digest = hashlib.sha256()
        with open(path, "rb") as src:
            while chunk := src.read(READ_CHUNK):
                digest.update(chunk)
        return digest.hexdigest()


def _max_attempts(client: Any) -> int:
    """Total attempts per object, as the client's retry config says (botocore counts the
    first try in `total_max_attempts`, not in `max_attempts`)."""
    retries = getattr(client.meta.config, "retries", None) or {}
    if retries.get("total_max_attempts"):
        return int(retries["total_max_attempts"])
    if retries.get("max_attempts") is not None:
        return int(retries["max_attempts"]) + 1
    return 5


def _content_type_for(content_type: ContentType, key: str) -> str:
    if content_type is None:
        return mimetypes.guess_type(key)[0] or "application/octet-stream"
    return content_type if isinstance(content_type, str) else content_type(key)


def _attempt(work: Callable[[_Job], Outcome], job: _Job) -> Outcome | tuple[str, str]:
    try:
        return work(job)
    except (TransferError, UnsafeKeyError) as exc:
        return (job.key, str(exc))


def _thread_outcomes(
    engine: _Engine,
    jobs: Iterable[_Job | tuple[str, str]],
    work: Callable[[_Job], Outcome],
    concurrency: int,
) -> list[Outcome | tuple[str, str]]:
    """This thread signs and submits, the pool's threads only move bytes.

    Signing in the workers measurably slowed them (GIL hand-offs); the bounded window
    keeps URLs fresh and memory flat for very large batches.
    """
    refused: list[Outcome | tuple[str, str]] = []
    window = threading.BoundedSemaphore(max(1, concurrency) * 8)
    futures = []
    with ThreadPoolExecutor(max_workers=max(1, concurrency)) as pool:
        for job in jobs:
            if isinstance(job, tuple):
                refused.append(job)
                continue
            window.acquire()
            future = pool.submit(_attempt, work, job)
            future.add_done_callback(lambda _: window.release())
            futures.append(future)
    engine.conns.close_all()
    return refused + [future.result() for future in futures]


def _download_chunk(
    jobs: list[_Job], threads: int, checksum: bool, large_threshold: int, attempts: int
) -> list[Outcome | tuple[str, str]]:
    """Worker-process entry: download presigned jobs on a thread pool of its own."""
    engine = _Engine(None, "", checksum, large_threshold, attempts)
    return _thread_outcomes(engine, jobs, engine.download, threads)


def _process_outcomes(
    engine: _Engine, jobs: Iterable[_Job | tuple[str, str]], concurrency: int, processes: int
) -> list[Outcome | tuple[str, str]]:
    """Split presigned downloads over spawned processes: one GIL caps a pool near 1,500/s."""
    import multiprocessing

    signed = list(jobs)
    outcomes: list[Outcome | tuple[str, str]] = [j for j in signed if isinstance(j, tuple)]
    ready = [j for j in signed if not isinstance(j, tuple)]
    threads = max(1, concurrency // processes)
    chunks = [ready[i::processes] for i in range(processes)]
    context = multiprocessing.get_context("spawn")
    args = (threads, engine.checksum, engine.large_threshold, engine.attempts)
    with ProcessPoolExecutor(processes, mp_context=context) as pool:
        for part in pool.map(_download_chunk, chunks, *[[a] * processes for a in args]):
            outcomes += part
    return outcomes


def _report(
    outcomes: list[Outcome | tuple[str, str]],
    finish_large: Callable[[_Large], ObjectResult],
    started: float,
) -> TransferReport:
    """Sort outcomes into results and failures, then move the large objects one by one."""
    report = TransferReport()
    large: list[_Large] = []
    for outcome in outcomes:
        if isinstance(outcome, _Large):
            large.append(outcome)
        elif isinstance(outcome, ObjectResult):
            report.results.append(outcome)
        else:
            report.failures.append(outcome)
    for item in large:
        try:
            report.results.append(finish_large(item))
        except TransferError as exc:
            report.failures.append((item.key, str(exc)))
    report.count = len(report.results)
    report.bytes = sum(r.bytes for r in report.results)
    report.seconds = time.perf_counter() - started
    return report


def _engine(client_factory: ClientFactory, bucket: str, checksum: bool, large: int) -> _Engine:
    client = client_factory()
    return _Engine(client, bucket, checksum, large, _max_attempts(client))


def _signed(engine: _Engine, key: str, path: str | Path, op: str, ctype: str = "") -> Any:
    """A job with its presigned URL, or (key, reason) if the URL cannot be made."""
    extra = {"ContentType": ctype} if ctype else {}
    try:
        return _Job(key, Path(path), engine.presign(op, key, **extra), ctype)
    except Exception as exc:  # botocore refuses some keys/params before any request
        return (key, f"cannot sign request: {exc}")


def download_many(
    client_factory: ClientFactory,
    bucket: str,
    items: Iterable[tuple[str, str | Path]],
    concurrency: int = 16,
    *,
    processes: int = 1,
    checksum: bool = False,
    large_threshold: int = LARGE_THRESHOLD,
) -> TransferReport:
    """Download (key, local_path) pairs; each file appears complete or not at all.

    Paths are used as given: map untrusted keys with `download_keys` (or `key_to_path`).
    `processes` > 1 spreads the batch over that many spawned processes of
    `concurrency // processes` threads each: worth it on many-core hosts for thousands of
    objects (start-up costs ~0.1-0.3 s); one process already saturates two cores.
    """
    started = time.perf_counter()
    engine = _engine(client_factory, bucket, checksum, large_threshold)
    engine.get_signer = _GetSigner.build(engine.client, bucket)
    jobs = (_signed(engine, key, path, "get_object") for key, path in items)
    if processes > 1:
        outcomes = _process_outcomes(engine, jobs, concurrency, processes)
    else:
        outcomes = _thread_outcomes(engine, jobs, engine.download, concurrency)
    return _report(outcomes, lambda item: engine.download_large(item, concurrency), started)


def download_keys(
    client_factory: ClientFactory,
    bucket: str,
    keys: Iterable[str],
    root: Path,
    concurrency: int = 16,
    *,
    prefix: str = "",
    processes: int = 1,
    checksum: bool = False,
) -> TransferReport:
    """Download keys to `root`/<key without prefix>; unsafe keys become failures, never files."""
    started = time.perf_counter()
    items: list[tuple[str, Path]] = []
    refused: list[tuple[str, str]] = []
    for key in keys:
        try:
            items.append((key, key_to_path(root, relative_key(key, prefix))))
        except UnsafeKeyError as exc:
            refused.append((key, f"unsafe key: {exc.reason}"))
    report = download_many(
        client_factory, bucket, items, concurrency, processes=processes, checksum=checksum
    )
    report.failures = refused + report.failures
    report.seconds = time.perf_counter() - started
    return report


def upload_many(
    client_factory: ClientFactory,
    bucket: str,
    items: Iterable[tuple[str | Path, str]],
    concurrency: int = 16,
    content_type: ContentType = None,
    *,
    checksum: bool = False,
    large_threshold: int = LARGE_THRESHOLD,
) -> TransferReport:
    """Upload (local_path, key) pairs; content_type is fixed, a function of the key, or guessed.

    Keys are held to the same rules as downloads (`check_key`): an unsafe key is a failure.
    """
    started = time.perf_counter()
    engine = _engine(client_factory, bucket, checksum, large_threshold)

    def jobs() -> Iterator[_Job | tuple[str, str]]:
        for path, key in items:
            try:
                check_key(key)
            except UnsafeKeyError as exc:
                yield (key, f"unsafe key: {exc.reason}")
                continue
            yield _signed(engine, key, path, "put_object", _content_type_for(content_type, key))

    def finish(item: _Large) -> ObjectResult:
        return engine.upload_large(item, _content_type_for(content_type, item.key), concurrency)

    outcomes = _thread_outcomes(engine, jobs(), engine.upload, concurrency)
    return _report(outcomes, finish, started)
