"""Batch transfers stage exactly the right bytes, fail per object with a reason, and never leave
half-written or out-of-root files."""

from __future__ import annotations

import hashlib
import os
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.config import Config
from conftest import Stack

from pixelpipe.bench.transfer import run_bench, summarize
from pixelpipe.storage.sigv4 import GetSigner
from pixelpipe.storage.transfer import Failed, Want, download_keys, download_many, upload_many


def payload(i: int) -> bytes:
    return hashlib.sha256(str(i).encode()).digest() * (i % 40)  # 0 .. 1248 bytes


def put_all(s3: Any, bucket: str, objects: dict[str, bytes]) -> None:
    for key, body in objects.items():
        s3.put_object(Bucket=bucket, Key=key, Body=body)


def no_part_files(root: Path) -> bool:
    return not [p for p in root.rglob("*.part")]


def test_download_many_stages_every_byte(s3: Any, bucket: str, tmp_path: Path) -> None:
    objects = {f"raw/{i % 4}/{i:03d}.jpg": payload(i) for i in range(120)}
    upload = upload_many(lambda: s3, bucket, _sources(tmp_path, objects), concurrency=8)
    assert (upload.count, upload.failures) == (120, [])
    items = [(key, tmp_path / "out" / key) for key in objects]
    report = download_many(lambda: s3, bucket, items, concurrency=8, checksum=True)
    assert report.failures == []
    assert report.count == 120
    assert report.bytes == sum(len(b) for b in objects.values())
    for result in report.results:
        assert result.path.read_bytes() == objects[result.key]
        assert result.sha256 == hashlib.sha256(objects[result.key]).hexdigest()
    assert no_part_files(tmp_path / "out")


def _sources(tmp_path: Path, objects: dict[str, bytes]) -> list[tuple[Path, str]]:
    items = []
    for i, (key, body) in enumerate(objects.items()):
        path = tmp_path / "src" / f"{i:04d}.bin"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(body)
        items.append((path, key))
    return items


def test_worker_processes_stage_the_same_files(s3: Any, bucket: str, tmp_path: Path) -> None:
    objects = {f"p/{i:02d}.jpg": payload(i) for i in range(30)}
    put_all(s3, bucket, objects)
    items = [(key, tmp_path / key) for key in objects] + [("p/none.jpg", tmp_path / "none")]
    report = download_many(lambda: s3, bucket, items, concurrency=4, processes=2, checksum=True)
    assert report.failures == [Failed("p/none.jpg", "NoSuchKey (HTTP 404)", "gone")]
    assert sorted(r.key for r in report.results) == sorted(objects)
    for result in report.results:
        assert result.path.read_bytes() == objects[result.key]
        assert result.sha256 == hashlib.sha256(objects[result.key]).hexdigest()


def test_missing_object_fails_alone_and_leaves_no_file(
    s3: Any, bucket: str, tmp_path: Path
) -> None:
    put_all(s3, bucket, {"a.jpg": b"A" * 10, "c.jpg": b"C"})
    blocker = tmp_path / "blocker"
    blocker.write_text("a file where a directory is needed")
    items = [
        ("a.jpg", tmp_path / "a.jpg"),
        ("missing.jpg", tmp_path / "missing.jpg"),
        ("c.jpg", blocker / "c.jpg"),
    ]
    report = download_many(lambda: s3, bucket, items, concurrency=2)
    assert [r.key for r in report.results] == ["a.jpg"]
    failed = {f.key: f for f in report.failures}
    assert failed["missing.jpg"] == Failed("missing.jpg", "NoSuchKey (HTTP 404)", "gone")
    # the local disk is not the object's fault, and is not retried as if it were the network
    assert failed["c.jpg"].reason.startswith("cannot create") and failed["c.jpg"].kind == "local"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.jpg", "blocker"]


def test_download_keys_turns_unsafe_keys_into_failures(
    s3: Any, bucket: str, tmp_path: Path
) -> None:
    put_all(s3, bucket, {"in/ok/a b+é.jpg": b"ok"})
    root = tmp_path / "stage"
    keys = ["in/ok/a b+é.jpg", "in/../../etc/passwd", "in/a//x.jpg", "in/a\x00.jpg", "other/x.jpg"]
    report = download_keys(lambda: s3, bucket, keys, root, concurrency=4, prefix="in")
    assert [r.path for r in report.results] == [root.resolve() / "ok" / "a b+é.jpg"]
    reasons = {f.key: f.reason for f in report.failures}
    assert all(f.kind == "unsafe" for f in report.failures)
    assert reasons["in/../../etc/passwd"] == "unsafe key: '..' segment"
    assert reasons["in/a//x.jpg"] == "unsafe key: empty segment ('//')"
    assert reasons["in/a\x00.jpg"] == "unsafe key: NUL or control character"
    assert reasons["other/x.jpg"] == "unsafe key: not under prefix 'in'"
    assert [p for p in tmp_path.rglob("*") if p.is_file()] == [root / "ok" / "a b+é.jpg"]


def test_existing_file_is_replaced_whole(s3: Any, bucket: str, tmp_path: Path) -> None:
    put_all(s3, bucket, {"x.jpg": b"new"})
    target = tmp_path / "x.jpg"
    target.write_bytes(b"old content that is longer")
    report = download_many(lambda: s3, bucket, [("x.jpg", target)])
    assert report.count == 1
    assert target.read_bytes() == b"new"


def test_longest_legal_file_name_downloads(s3: Any, bucket: str, tmp_path: Path) -> None:
    key = "n/" + "é" * 127  # 254 bytes: no room for a ".part" suffix in the same name
    put_all(s3, bucket, {key: b"long"})
    report = download_keys(lambda: s3, bucket, [key], tmp_path, prefix="n")
    assert report.failures == []
    assert (tmp_path / ("é" * 127)).read_bytes() == b"long"
    assert no_part_files(tmp_path)


def test_large_objects_take_the_multipart_path(s3: Any, bucket: str, tmp_path: Path) -> None:
    big = os.urandom(300_000)
    src = tmp_path / "big.bin"
    src.write_bytes(big)
    up = upload_many(lambda: s3, bucket, [(src, "big.bin")], large_threshold=100_000)
    assert (up.count, up.failures) == (1, [])
    assert s3.get_object(Bucket=bucket, Key="big.bin")["Body"].read() == big
    out = tmp_path / "out" / "big.bin"
    down = download_many(
        lambda: s3, bucket, [("big.bin", out)], checksum=True, large_threshold=100_000
    )
    assert down.failures == []
    assert out.read_bytes() == big
    assert down.results[0].sha256 == hashlib.sha256(big).hexdigest()
    assert no_part_files(tmp_path)


def test_upload_sets_content_type_and_refuses_bad_input(
    s3: Any, bucket: str, tmp_path: Path
) -> None:
    jpg = tmp_path / "a.jpg"
    jpg.write_bytes(b"\xff\xd8")
    items = [(jpg, "x/a.jpg"), (jpg, "x/a.data"), (tmp_path / "gone.jpg", "x/g.jpg"), (jpg, "/abs")]
    report = upload_many(lambda: s3, bucket, items, concurrency=2)
    assert sorted(r.key for r in report.results) == ["x/a.data", "x/a.jpg"]
    assert s3.head_object(Bucket=bucket, Key="x/a.jpg")["ContentType"] == "image/jpeg"
    assert (
        s3.head_object(Bucket=bucket, Key="x/a.data")["ContentType"] == "application/octet-stream"
    )
    reasons = {f.key: f.reason for f in report.failures}
    assert reasons["/abs"] == "unsafe key: absolute path"
    assert reasons["x/g.jpg"].startswith("cannot read")
    fixed = upload_many(lambda: s3, bucket, [(jpg, "y/a.bin")], content_type="image/png")
    assert fixed.count == 1
    assert s3.head_object(Bucket=bucket, Key="y/a.bin")["ContentType"] == "image/png"


@pytest.mark.parametrize("signature", ["s3v4", "s3"])
def test_clients_signing_either_way_round_trip(
    stack: Stack, bucket: str, tmp_path: Path, signature: str
) -> None:
    """AWS S3 in most regions accepts only SigV4; "s3" (SigV2) keeps botocore's presign."""
    client = boto3.session.Session().client(
        "s3",
        endpoint_url=stack.s3_endpoint,
        aws_access_key_id=stack.access_key,
        aws_secret_access_key=stack.secret_key,
        region_name=stack.region,
        config=Config(signature_version=signature, s3={"addressing_style": "path"}),
    )
    src = tmp_path / "a.png"
    src.write_bytes(b"png bytes")
    assert upload_many(lambda: client, bucket, [(src, "v/a b+é.png")]).count == 1
    report = download_many(lambda: client, bucket, [("v/a b+é.png", tmp_path / "back.png")])
    assert report.failures == []
    assert (tmp_path / "back.png").read_bytes() == b"png bytes"


def test_local_signer_is_used_for_the_stack_client(s3: Any, bucket: str) -> None:
    """The fast path stays on: it is only taken when it reproduces botocore's signatures."""
    assert GetSigner.build(s3, bucket) is not None


def test_wrong_credentials_fail_every_object_with_the_reason(
    stack: Stack, bucket: str, tmp_path: Path
) -> None:
    bad = stack.client(secret_key="not-the-secret")
    report = download_many(lambda: bad, bucket, [("a.jpg", tmp_path / "a.jpg")])
    assert report.count == 0
    assert report.failures[0].kind == "error"  # auth is the infrastructure's fault, not the image's
    assert report.failures[0].reason in {
        "SignatureDoesNotMatch (HTTP 403)",
        "AccessDenied (HTTP 403)",
    }
    assert list(tmp_path.iterdir()) == []


def test_bench_writes_rows_for_three_engines(
    stack: Stack, s3: Any, bucket: str, tmp_path: Path
) -> None:
    extra = tmp_path / "img.jpg"
    extra.write_bytes(b"\xff\xd8" * 100)
    rows = run_bench(
        lambda: s3,
        bucket,
        stack.s3_endpoint,
        stack.access_key,
        stack.secret_key,
        sizes=[(12, 2_000)],
        repeats=1,
        concurrency=4,
        work_dir=tmp_path / "bench",
        extra_files=[extra],
    )
    assert {(r["dataset"], r["engine"]) for r in rows} == {
        (d, e) for d in ("12x2000", "extra") for e in ("ours", "boto3_sequential", "s5cmd")
    }
    assert all(r["objects_per_s"] > 0 for r in rows)
    lines = (tmp_path / "bench" / "transfer.csv").read_text().splitlines()
    assert lines[0].startswith("engine,dataset,objects,object_bytes,repeat,seconds")
    assert len(lines) == 1 + len(rows)
    summary = {(s["dataset"], s["engine"]): s for s in summarize(rows)}
    assert summary[("12x2000", "ours")]["ours_over_this"] == 1.0
    assert summary[("12x2000", "s5cmd")]["ours_over_this"] > 0


class _AwkwardS3(BaseHTTPRequestHandler):
    """Serves GETs the ways real servers and proxies sometimes answer: chunked bodies, a 503
    before success, no Content-Length, and keep-alive connections closed without notice."""

    protocol_version = "HTTP/1.1"
    hits: dict[str, int] = {}

    def log_message(self, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        name = self.path.split("?")[0].rsplit("/", 1)[-1]
        self.hits[name] = self.hits.get(name, 0) + 1
        body = f"body of {name}".encode() * 100
        if name == "slow.bin" and self.hits[name] == 1:
            error = b"<Error><Code>SlowDown</Code></Error>"
            self.send_response(503)
            self.send_header("Content-Length", str(len(error)))
            self.end_headers()
            self.wfile.write(error)
            return
        self.send_response(200)
        if name == "chunked.bin":
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            for i in range(0, len(body), 700):
                piece = body[i : i + 700]
                self.wfile.write(f"{len(piece):x};ext=1\r\n".encode() + piece + b"\r\n")
            self.wfile.write(b"0\r\nx-trailer: 1\r\n\r\n")
            return
        if name == "unsized.bin":
            self.send_header("Connection", "close")
            self.end_headers()
            self.wfile.write(body)
            self.close_connection = True
            return
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
        # "drop.bin": the server forgets the keep-alive connection without saying so
        self.close_connection = name == "drop.bin"


def test_http_client_survives_awkward_servers(tmp_path: Path) -> None:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _AwkwardS3)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        client = boto3.session.Session().client(
            "s3",
            endpoint_url=f"http://127.0.0.1:{server.server_port}",
            aws_access_key_id="k",
            aws_secret_access_key="s",
            region_name="us-east-1",
            config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 1}),
        )
        names = ["drop.bin", "after-drop.bin", "chunked.bin", "slow.bin", "unsized.bin", "z.bin"]
        items = [(name, tmp_path / name) for name in names]
        report = download_many(lambda: client, "b", items, concurrency=1)
    finally:
        server.shutdown()
    # a body with neither a length nor chunks could have been cut short: never saved as whole
    (unsized,) = report.failures
    assert unsized.key == "unsized.bin" and "without Content-Length" in unsized.reason
    assert unsized.kind == "error" and not (tmp_path / "unsized.bin").exists()
    for name in names:
        if name != "unsized.bin":
            assert (tmp_path / name).read_bytes() == f"body of {name}".encode() * 100
    assert _AwkwardS3.hits["slow.bin"] == 2


def test_pinned_downloads_refuse_objects_changed_or_gone_since_listing(
    s3: Any, bucket: str, tmp_path: Path
) -> None:
    """A listing pins ETag and size; what S3 holds now must be exactly that object."""
    for key in ("same.jpg", "changed.jpg", "deleted.jpg"):
        s3.put_object(Bucket=bucket, Key=key, Body=b"as listed")
    listed = {k: s3.head_object(Bucket=bucket, Key=k) for k in ("same.jpg", "changed.jpg")}
    s3.put_object(Bucket=bucket, Key="changed.jpg", Body=b"overwritten after the listing")
    s3.delete_object(Bucket=bucket, Key="deleted.jpg")
    wants = [
        Want(k, tmp_path / k, head["ETag"].strip('"'), head["ContentLength"])
        for k, head in listed.items()
    ]
    wants.append(Want("deleted.jpg", tmp_path / "deleted.jpg", "0" * 32, 9))
    report = download_many(lambda: s3, bucket, wants, checksum=True)
    assert [r.key for r in report.results] == ["same.jpg"]
    failed = {f.key: f for f in report.failures}
    assert failed["changed.jpg"].kind == "changed"
    assert failed["changed.jpg"].reason.startswith("changed since listed")
    assert failed["deleted.jpg"].kind == "gone"
    assert failed["deleted.jpg"].reason == "gone since listed: NoSuchKey (HTTP 404)"
    assert all(f.item_fault for f in report.failures)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["same.jpg"]


def test_upload_with_if_none_match_never_overwrites(s3: Any, bucket: str, tmp_path: Path) -> None:
    first, second = tmp_path / "1.jpg", tmp_path / "2.jpg"
    first.write_bytes(b"first")
    second.write_bytes(b"second")
    a = upload_many(lambda: s3, bucket, [(first, "k.jpg")], if_none_match=True)
    b = upload_many(lambda: s3, bucket, [(second, "k.jpg")], if_none_match=True)
    assert (a.count, a.existed, b.count, b.existed) == (1, 0, 1, 1)
    assert s3.get_object(Bucket=bucket, Key="k.jpg")["Body"].read() == b"first"


class _HostRecorder(BaseHTTPRequestHandler):
    """Answers every GET with a small body and records the Host header each key came with."""

    protocol_version = "HTTP/1.1"
    hosts: dict[str, str] = {}

    def log_message(self, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        name = self.path.split("?")[0].rsplit("/", 1)[-1]
        self.hosts[name] = self.headers.get("Host", "")
        body = f"body of {name}".encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@pytest.mark.parametrize("port", [80, 0], ids=["default-port", "own-port"])
def test_downloads_send_the_host_botocore_signs(tmp_path: Path, port: int) -> None:
    """Signers drop a default port from Host (http://h:80 signs `h`); a download must send the
    Host botocore signs and sends, or a real S3 refuses the signature."""
    try:
        server = ThreadingHTTPServer(("127.0.0.1", port), _HostRecorder)
    except OSError as exc:
        pytest.skip(f"cannot listen on 127.0.0.1:{port}: {exc}")
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        endpoint = f"http://127.0.0.1:{server.server_port}"
        client = boto3.session.Session().client(
            "s3",
            endpoint_url=endpoint,
            aws_access_key_id="k",
            aws_secret_access_key="s",
            region_name="us-east-1",
            config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 1}),
        )
        client.get_object(Bucket="b", Key="by-botocore.bin")["Body"].read()
        report = download_many(lambda: client, "b", [("ours.bin", tmp_path / "ours.bin")])
    finally:
        server.shutdown()
        server.server_close()
    assert report.failures == [] and (tmp_path / "ours.bin").read_bytes() == b"body of ours.bin"
    expected = "127.0.0.1" if port == 80 else f"127.0.0.1:{server.server_port}"
    assert _HostRecorder.hosts["ours.bin"] == _HostRecorder.hosts["by-botocore.bin"] == expected
