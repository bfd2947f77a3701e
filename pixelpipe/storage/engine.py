"""Move one object between S3 and local disk over a presigned URL, and say why it failed.

Every failure carries a kind, because callers must tell an object's own fault from a fault of
the infrastructure: `gone` (404 NoSuchKey: deleted since it was listed), `changed` (412, or a
different ETag: overwritten since it was listed), `unsafe` (a key that must not become a
path), `local` (the local disk: full, unwritable, a file where a folder must be) and `error`
(everything else after retries: transport, auth, server). Only local disk errors are never
retried: another attempt cannot free the disk.
"""

from __future__ import annotations

import hashlib
import os
import random
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar

from pixelpipe.storage.http1 import Connections, Response, UnusableUrl
from pixelpipe.storage.sigv4 import URL_EXPIRES_SECONDS, GetSigner

LARGE_THRESHOLD = 64 * 1024 * 1024
MULTIPART_CHUNK = 16 * 1024 * 1024
READ_CHUNK = 1024 * 1024
# 409 ConditionalRequestConflict: another conditional write of the key is in flight; retry.
RETRY_STATUSES = frozenset({408, 409, 429, 500, 502, 503, 504})
FailureKind = Literal["gone", "changed", "unsafe", "local", "error"]


class TransferError(Exception):
    """One object could not be moved; the message is the reason, `kind` says whose fault."""

    def __init__(self, reason: str, kind: FailureKind = "error") -> None:
        super().__init__(reason)
        self.kind: FailureKind = kind


class _Retryable(Exception):
    """A response worth another attempt (throttling, 5xx, a conflicting conditional write)."""


@dataclass(frozen=True)
class ObjectResult:
    """One object moved: its key, local path, size, sha256 (when asked), and whether an
    identical object was already there (an upload with If-None-Match answered 412)."""

    key: str
    path: Path
    bytes: int
    sha256: str | None = None
    existed: bool = False


@dataclass(frozen=True)
class Large:
    """An object above the large threshold, moved afterwards by boto3's transfer manager."""

    key: str
    path: Path
    size: int
    etag: str | None = None


@dataclass(frozen=True)
class Job:
    """One object to move, with a URL presigned by the submitting thread.

    For downloads, `etag` and `size` are what the listing pinned: the GET sends If-Match and
    the body must have exactly that size. For uploads, `if_none_match` never overwrites.
    """

    key: str
    path: Path
    url: str
    content_type: str = ""
    etag: str | None = None
    size: int | None = None
    if_none_match: bool = False


Outcome = ObjectResult | Large
T = TypeVar("T")


def part_path(path: Path) -> Path:
    """The temporary name a download streams into before it is renamed into place."""
    name = path.name + ".part"
    if len(name.encode("utf-8")) > 255:
        # A 255-byte file name has no room for the suffix; a hashed hidden name does.
        name = "." + hashlib.sha1(path.name.encode("utf-8")).hexdigest() + ".part"
    return path.with_name(name)


def _local(action: str, path: Path, exc: OSError) -> TransferError:
    return TransferError(f"cannot {action} {path}: {exc.strerror or exc}", "local")


class _Dirs:
    """mkdir -p each parent once per batch (a stat per object adds up over thousands)."""

    def __init__(self) -> None:
        self._made: set[Path] = set()

    def ensure(self, directory: Path) -> None:
        if directory not in self._made:
            try:
                directory.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise _local("create", directory, exc) from None
            self._made.add(directory)


def _write_body(resp: Response, part: Path, digest: Any) -> int:
    """Stream the body into `part`; local errors are TransferError("local"), network ones
    stay OSError so that they are retried."""
    written = 0
    try:
        out = open(part, "wb")  # noqa: SIM115 - closed below
    except OSError as exc:
        raise _local("write", part, exc) from None
    try:
        for chunk in resp.chunks():
            if digest is not None:
                digest.update(chunk)
            try:
                out.write(chunk)
            except OSError as exc:
                raise _local("write", part, exc) from None
            written += len(chunk)
    finally:
        try:
            out.close()
        except OSError as exc:  # a full disk often shows only when the buffer is flushed
            raise _local("write", part, exc) from None
    return written


def error_code(resp: Response) -> tuple[str, str]:
    """(S3 error code or HTTP reason, 'Code (HTTP n)') of an error response; reads its body."""
    body = resp.read()
    match = re.search(rb"<Code>([^<]{1,100})</Code>", body)
    code = match.group(1).decode("utf-8", "replace") if match else resp.reason
    return code, f"{code} (HTTP {resp.status})"


def _with_retries(fn: Callable[[], Any], conns: Connections, attempts: int) -> Any:
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


@dataclass
class Engine:
    """Shared state of one batch: the botocore client, connections, directories."""

    client: Any
    bucket: str
    checksum: bool
    large_threshold: int
    attempts: int
    conns: Connections = field(default_factory=Connections)
    dirs: _Dirs = field(default_factory=_Dirs)
    get_signer: GetSigner | None = None

    def presign(self, op: str, key: str, **extra: str) -> str:
        if op == "get_object" and self.get_signer is not None:
            return self.get_signer.url(key)
        params = {"Bucket": self.bucket, "Key": key, **extra}
        url = self.client.generate_presigned_url(op, Params=params, ExpiresIn=URL_EXPIRES_SECONDS)
        return str(url)

    def _attempts(self, job: Job, once: Callable[[str], T], op: str, **extra: str) -> T:
        """The first attempt uses the job's URL; a retry signs a fresh one if it can."""
        urls = iter([job.url])

        def url() -> str:
            fresh = next(urls, None)
            if fresh is None and self.client is None:  # a worker process: no signer here
                return job.url
            return fresh or self.presign(op, job.key, **extra)

        try:
            result: T = _with_retries(lambda: once(url()), self.conns, self.attempts)
            return result
        except UnusableUrl as exc:
            raise TransferError(str(exc)) from None

    # --- downloads ---------------------------------------------------------------------------
    def _get_once(self, job: Job, url: str) -> Outcome:
        headers = {"If-Match": f'"{job.etag}"'} if job.etag else {}
        resp = self.conns.send("GET", url, headers=headers)
        if resp.status in RETRY_STATUSES:
            raise _Retryable(error_code(resp)[1])
        if resp.status != 200:
            code, reason = error_code(resp)
            if resp.status == 404 and code == "NoSuchKey":
                pinned = job.etag is not None or job.size is not None
                raise TransferError(f"gone since listed: {reason}" if pinned else reason, "gone")
            if resp.status == 412 and job.etag:
                reason = f"changed since listed: ETag is no longer {job.etag}"
                raise TransferError(reason, "changed")
            raise TransferError(reason)
        got = resp.headers.get("etag", "").strip('"')
        if job.etag and got and got != job.etag:  # a server that ignores If-Match
            self.conns.drop()
            raise TransferError(f"changed since listed: ETag {got}, listed {job.etag}", "changed")
        if not resp.framed:
            self.conns.drop()
            raise ConnectionError("200 without Content-Length or chunked encoding: a cut body "
                                  "could not be told from a whole one")  # fmt: skip
        expected = -1 if resp.length is None else resp.length
        if expected > self.large_threshold:
            self.conns.drop()  # abandon the body; the large path fetches it in ranges
            return Large(job.key, job.path, expected, job.etag)
        part = part_path(job.path)
        digest = hashlib.sha256() if self.checksum else None
        try:
            written = _write_body(resp, part, digest)
            if expected >= 0 and written != expected:
                raise ConnectionError(f"body of {written} bytes, expected {expected}")
            if job.size is not None and written != job.size:
                raise ConnectionError(f"body of {written} bytes, listed {job.size}")
            try:
                os.replace(part, job.path)
            except OSError as exc:
                raise _local("rename into", job.path, exc) from None
        except BaseException:
            part.unlink(missing_ok=True)
            raise
        return ObjectResult(job.key, job.path, written, digest.hexdigest() if digest else None)

    def download(self, job: Job) -> Outcome:
        self.dirs.ensure(job.path.parent)
        return self._attempts(job, lambda url: self._get_once(job, url), "get_object")

    def download_large(self, item: Large, concurrency: int) -> ObjectResult:
        import botocore.exceptions

        part = part_path(item.path)
        extra = {"IfMatch": f'"{item.etag}"'} if item.etag else {}
        try:
            self.client.download_file(
                self.bucket,
                item.key,
                str(part),
                ExtraArgs=extra,
                Config=self._transfer_config(concurrency),
            )
            os.replace(part, item.path)
        except botocore.exceptions.ClientError as exc:
            part.unlink(missing_ok=True)
            code = exc.response.get("Error", {}).get("Code", "")
            if code in {"NoSuchKey", "404"}:
                raise TransferError(f"gone since listed: {code}", "gone") from None
            if code in {"PreconditionFailed", "412"}:
                raise TransferError("changed since listed: ETag changed", "changed") from None
            raise TransferError(f"large download failed: {exc}") from None
        except OSError as exc:
            part.unlink(missing_ok=True)
            raise _local("write", part, exc) from None
        except Exception as exc:
            part.unlink(missing_ok=True)
            raise TransferError(f"large download failed: {exc}") from None
        size = item.path.stat().st_size
        return ObjectResult(item.key, item.path, size, self._file_sha256(item.path))

    # --- uploads -----------------------------------------------------------------------------
    def _put_once(self, job: Job, data: bytes, url: str) -> bool:
        headers = {"Content-Type": job.content_type, "Content-Length": str(len(data))}
        if job.if_none_match:
            headers["If-None-Match"] = "*"
        resp = self.conns.send("PUT", url, body=data, headers=headers)
        if resp.status in RETRY_STATUSES:
            raise _Retryable(error_code(resp)[1])
        if resp.status == 412 and job.if_none_match:
            resp.read()
            return True  # the key exists: with content-addressed keys, the same bytes
        if resp.status != 200:
            raise TransferError(error_code(resp)[1])
        resp.read()
        return False

    def upload(self, job: Job) -> Outcome:
        try:
            size = job.path.stat().st_size
            if size > self.large_threshold:
                return Large(job.key, job.path, size)
            data = job.path.read_bytes()
        except OSError as exc:
            raise _local("read", job.path, exc) from None
        existed = self._attempts(
            job,
            lambda url: self._put_once(job, data, url),
            "put_object",
            ContentType=job.content_type,
        )
        sha = hashlib.sha256(data).hexdigest() if self.checksum else None
        return ObjectResult(job.key, job.path, len(data), sha, existed=bool(existed))

    def upload_large(
        self, item: Large, content_type: str, concurrency: int, if_none_match: bool
    ) -> ObjectResult:
        import botocore.exceptions

        if if_none_match:  # the transfer manager cannot send If-None-Match; look first
            try:
                head = self.client.head_object(Bucket=self.bucket, Key=item.key)
                sha = self._file_sha256(item.path)
                return ObjectResult(item.key, item.path, int(head["ContentLength"]), sha, True)
            except botocore.exceptions.ClientError as exc:
                if exc.response.get("Error", {}).get("Code") not in {"404", "NoSuchKey"}:
                    raise TransferError(f"large upload failed: {exc}") from None
        try:
            self.client.upload_file(
                str(item.path),
                self.bucket,
                item.key,
                ExtraArgs={"ContentType": content_type},
                Config=self._transfer_config(concurrency),
            )
        except OSError as exc:
            raise _local("read", item.path, exc) from None
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


def max_attempts(client: Any) -> int:
    """Total attempts per object, as the client's retry config says (botocore counts the
    first try in `total_max_attempts`, not in `max_attempts`)."""
    retries = getattr(client.meta.config, "retries", None) or {}
    if retries.get("total_max_attempts"):
        return int(retries["total_max_attempts"])
    if retries.get("max_attempts") is not None:
        return int(retries["max_attempts"]) + 1
    return 5
