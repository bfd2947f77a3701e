"""Map image references as Label Studio writes them to object keys in the raw bucket.

Reference forms and the key each maps to (raw_prefix has its slashes trimmed; an empty
prefix adds nothing):

- ``s3://<bucket>/<key>`` (also ``gs://``, ``azure-blob://``): ``<key>``; the bucket must be
  raw_bucket, any other bucket is a RefError.
- ``http(s)://...`` presigned or public object URLs: the URL path, when the bucket is named by
  the host (``<bucket>.s3...``) or by the first path segment (path-style); query strings such
  as presign signatures are dropped. ``http(s)://host/data/local-files/...`` and
  ``.../data/upload/...`` are handled as the forms below.
- ``/data/local-files/?d=<relpath>`` (URL-encoded or not): ``<raw_prefix>/<relpath>``, or
  ``<relpath>`` itself when it already starts with ``<raw_prefix>/``. Local-files paths are
  relative to Label Studio's document root, which need not mirror the bucket, so RefIndex
  then tries shorter trailing parts of relpath under raw_prefix and finally a unique basename.
- ``/data/upload/<project>/<8 hex>-<name>`` (also ``upload/...``): ``<raw_prefix>/<name>``, with
  the 8-hex-digit prefix Label Studio adds to uploads removed.
- plain relative names ``name.jpg`` or ``dir/name.jpg``: like local-files paths.

Absolute filesystem paths, ``data:`` URIs, other schemes, empty refs and paths with ``..``
raise RefError with the reason.
"""

from __future__ import annotations

import posixpath
import re
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from urllib.parse import parse_qs, unquote, urlsplit

CLOUD_SCHEMES = ("s3", "gs", "azure-blob")
_UPLOAD_HASH = re.compile(r"^[0-9a-fA-F]{8}-(?=.)")


class RefError(ValueError):
    """A reference that cannot be mapped to a raw object key; `reason` says why."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class ParsedRef:
    """What a reference names: a full bucket key (`exact`) or a path relative to raw_prefix."""

    path: str
    exact: bool
    bucket: str | None = None


def parse_ref(ref: str) -> ParsedRef:
    """Split a reference into the path it names; no bucket or prefix applied yet."""
    if not isinstance(ref, str) or not ref.strip():
        raise RefError("empty image reference")
    ref = ref.strip()
    parts = urlsplit(ref)
    scheme = parts.scheme.lower()
    if scheme in CLOUD_SCHEMES:
        return _cloud_ref(ref, parts.netloc, parts.path)
    if scheme in ("http", "https"):
        return _http_ref(ref)
    if scheme == "data":
        raise RefError("inline data: URI has no object key")
    if scheme and len(scheme) > 1:
        raise RefError(f"unsupported scheme {scheme!r} in {ref!r}")
    return _ls_path_ref(ref)


def ref_path(ref: str) -> str:
    """The object path a reference names (local-files path, upload name, bucket key, URL path)."""
    return parse_ref(ref).path


def resolve_ref(ref: str, raw_bucket: str, raw_prefix: str) -> str:
    """The raw object key (relative to raw_bucket) that a Label Studio image reference names."""
    parsed = parse_ref(ref)
    if parsed.exact:
        if parsed.bucket is not None and parsed.bucket != raw_bucket:
            raise RefError(
                f"{ref!r} is in bucket {parsed.bucket!r}, not the raw bucket {raw_bucket!r}"
            )
        return parsed.path
    return _under_prefix(parsed.path, raw_prefix)


def _under_prefix(path: str, raw_prefix: str) -> str:
    prefix = raw_prefix.strip("/")
    if not prefix or path.startswith(prefix + "/"):
        return path
    return f"{prefix}/{path}"


def _clean_path(path: str, ref: str) -> str:
    if "\x00" in path:
        raise RefError(f"NUL byte in {ref!r}")
    norm = posixpath.normpath(path.replace("\\", "/")).lstrip("/")
    if norm in ("", ".") or norm == ".." or norm.startswith("../"):
        raise RefError(f"{ref!r} names no file inside the store")
    return norm


def _cloud_ref(ref: str, bucket: str, path: str) -> ParsedRef:
    if not bucket:
        raise RefError(f"{ref!r} names no bucket")
    return ParsedRef(path=_clean_path(path, ref), exact=True, bucket=bucket)


def _http_ref(ref: str) -> ParsedRef:
    parts = urlsplit(ref)
    path = unquote(parts.path)
    if path.startswith(("/data/local-files", "/data/upload")):
        rest = path + (f"?{parts.query}" if parts.query else "")
        return _ls_path_ref(rest)
    host = (parts.hostname or "").lower()
    segments = [s for s in path.split("/") if s]
    if not segments:
        raise RefError(f"{ref!r} has no object path")
    # Virtual-hosted URLs carry the bucket in the host; other hosts are path-style.
    if ".s3" in host or host.endswith(".storage.googleapis.com"):
        bucket = host.split(".s3")[0].removesuffix(".storage.googleapis.com")
        return ParsedRef(path=_clean_path("/".join(segments), ref), exact=True, bucket=bucket)
    if len(segments) < 2:
        raise RefError(f"{ref!r} names no bucket in its host or first path segment")
    key = _clean_path("/".join(segments[1:]), ref)
    return ParsedRef(path=key, exact=True, bucket=segments[0])


def _ls_path_ref(ref: str) -> ParsedRef:
    parts = urlsplit(ref)
    path = parts.path
    if path.startswith("/data/local-files"):
        values = parse_qs(parts.query, keep_blank_values=True).get("d")
        if not values or not values[-1]:
            raise RefError(f"local-files reference {ref!r} has no d= path")
        return ParsedRef(path=_clean_path(values[-1], ref), exact=False)
    if path.startswith(("/data/upload/", "upload/", "/upload/")):
        name = posixpath.basename(unquote(path))
        return ParsedRef(path=_clean_path(_UPLOAD_HASH.sub("", name), ref), exact=False)
    if path.startswith("/data/"):
        raise RefError(f"unknown Label Studio data URL {ref!r}")
    if ref.startswith("/") or re.match(r"^[A-Za-z]:[\\/]", ref):
        raise RefError(f"absolute filesystem path {ref!r} has no place in the raw bucket")
    return ParsedRef(path=_clean_path(ref, ref), exact=False)


class RefIndex:
    """Resolves references to keys that exist, given the list of raw keys in the bucket.

    Order of tries: the key resolve_ref gives; for prefix-relative refs (local-files, uploads,
    plain names) the shorter trailing parts of the path under raw_prefix; then a basename that
    exactly one existing key has. Bucket URIs and URLs name a full key and must match exactly.
    """

    def __init__(self, keys: Iterable[str], raw_bucket: str, raw_prefix: str) -> None:
        self.raw_bucket = raw_bucket
        self.raw_prefix = raw_prefix
        self.keys = frozenset(keys)
        self._by_basename: dict[str, list[str]] = defaultdict(list)
        for key in sorted(self.keys):
            self._by_basename[posixpath.basename(key)].append(key)

    def resolve(self, ref: str) -> str:
        """The existing raw key for ref; RefError when none or more than one fits."""
        parsed = parse_ref(ref)
        key = resolve_ref(ref, self.raw_bucket, self.raw_prefix)
        if key in self.keys:
            return key
        if parsed.exact:
            raise RefError(f"{ref!r}: no object {key!r} in bucket {self.raw_bucket!r}")
        segments = parsed.path.split("/")
        for start in range(1, len(segments)):
            candidate = _under_prefix("/".join(segments[start:]), self.raw_prefix)
            if candidate in self.keys:
                return candidate
        return self._by_unique_basename(ref, segments[-1])

    def _by_unique_basename(self, ref: str, name: str) -> str:
        found = self._by_basename.get(name, [])
        if len(found) == 1:
            return found[0]
        if not found:
            raise RefError(f"{ref!r}: no raw object named {name!r} under {self.raw_prefix!r}")
        raise RefError(f"{ref!r}: basename {name!r} is ambiguous: {', '.join(found)}")
