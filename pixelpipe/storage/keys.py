"""Map S3 object keys to local paths (refusing any key that could leave its root) and name outputs.

Output keys are planned before any work is done, so a long source key is shortened once, the
same way every time, instead of failing at upload: every segment of an output stem fits in
MAX_NAME_BYTES (room for the copy and digest suffixes and a temporary name under the 255-byte
file-name limit) and the whole stem in MAX_STEM_BYTES (room for the partition, the variant and
two digests under S3's 1,024-byte keys). A shortened part ends in `~` and 16 hex digits of the
sha256 of what it replaced, so two source keys never share an output.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

MAX_KEY_BYTES = 1024
MAX_SEGMENT_BYTES = 255
MAX_NAME_BYTES = 200
MAX_STEM_BYTES = 800
DIGEST_CHARS = 12


class UnsafeKeyError(ValueError):
    """A key that must not become a local path; `reason` says why, `key` is the offender."""

    def __init__(self, reason: str, key: str | None = None) -> None:
        self.reason = reason
        self.key = key
        shown = "" if key is None else f": {key[:120]!r}"
        super().__init__(f"unsafe key ({reason}){shown}")


def _is_control(char: str) -> bool:
    code = ord(char)
    return code < 0x20 or 0x7F <= code <= 0x9F


def check_key(key: str, max_segment: int | None = MAX_SEGMENT_BYTES) -> list[str]:
    """Validate a key's shape and return its '/'-separated segments; UnsafeKeyError if unsafe.

    Empty or '.' segments are refused rather than normalised: two different keys
    ('a//b', 'a/b') must never share one local file. `max_segment=None` accepts segments of
    any length (S3 allows them), for callers that never use a segment as a file name.
    """
    if not key:
        raise UnsafeKeyError("empty key", key)
    try:
        size = len(key.encode("utf-8"))
    except UnicodeEncodeError:
        raise UnsafeKeyError("not valid UTF-8", key) from None
    if size > MAX_KEY_BYTES:
        raise UnsafeKeyError(f"longer than {MAX_KEY_BYTES} bytes", key)
    if any(_is_control(c) for c in key):
        raise UnsafeKeyError("NUL or control character", key)
    if "\\" in key:
        raise UnsafeKeyError("backslash", key)
    if key.startswith("/"):
        raise UnsafeKeyError("absolute path", key)
    if key.endswith("/"):
        raise UnsafeKeyError("directory marker (ends with '/')", key)
    segments = key.split("/")
    for segment in segments:
        if segment == "":
            raise UnsafeKeyError("empty segment ('//')", key)
        if segment == ".":
            raise UnsafeKeyError("'.' segment", key)
        if segment == "..":
            raise UnsafeKeyError("'..' segment", key)
        if max_segment is not None and len(segment.encode("utf-8")) > max_segment:
            raise UnsafeKeyError(f"segment longer than {max_segment} bytes", key)
    return segments


def key_to_path(root: Path, key: str) -> Path:
    """The local path for `key` under `root` (absolute, strictly inside the resolved root)."""
    segments = check_key(key)
    base = Path(root).resolve()
    path = base.joinpath(*segments)
    # A symlink already inside root could still point out of it.
    try:
        resolved = path.resolve()
    except (OSError, RuntimeError):
        raise UnsafeKeyError("does not resolve (symlink loop)", key) from None
    if resolved == base or not resolved.is_relative_to(base):
        raise UnsafeKeyError("resolves outside the root (symlink)", key)
    return path


def relative_key(key: str, prefix: str, max_segment: int | None = MAX_SEGMENT_BYTES) -> str:
    """`key` without `prefix` ('raw/a.jpg', 'raw' -> 'a.jpg'); UnsafeKeyError if not under it."""
    stem = prefix.strip("/")
    if not stem:
        rest = key
    elif key.startswith(stem + "/"):
        rest = key[len(stem) + 1 :]
    else:
        raise UnsafeKeyError(f"not under prefix {prefix!r}", key)
    check_key(rest, max_segment)
    return rest


def staged_path(root: Path, key: str) -> Path:
    """Where a downloaded object is staged: root/<16 hex of sha256(key)>/<its last segment>.

    Each key gets a folder of its own, so 'x.jpg' and 'x.jpg/y.jpg' (a file and a folder of one
    name, which S3 allows) both stage, and nothing a key says can leave root. Unsafe keys are
    refused first (`check_key`), so they fail by name instead of being staged.
    """
    name = check_key(key, max_segment=None)[-1]
    if len(name.encode("utf-8")) > MAX_SEGMENT_BYTES:  # S3 allows it; a file name cannot
        _, dot, ext = name.rpartition(".")
        ext = f".{ext}" if dot and len(ext) <= 8 else ""
        name = _shorten(name.removesuffix(ext), MAX_SEGMENT_BYTES - len(ext), whole=name) + ext
    digest = hashlib.sha256(key.encode("utf-8")).hexdigest()[:16]
    return Path(root).resolve() / digest / name


def _shorten(text: str, limit: int, whole: str | None = None) -> str:
    raw = text.encode("utf-8")
    if len(raw) <= limit:
        return text
    tag = "~" + hashlib.sha256((whole or text).encode("utf-8")).hexdigest()[:16]
    keep = raw[: limit - len(tag)].decode("utf-8", "ignore").rstrip("/")
    return keep + tag


def bounded_stem(stem: str) -> str:
    """`stem` with each segment <= MAX_NAME_BYTES and the whole <= MAX_STEM_BYTES (hashed tails)."""
    out = "/".join(_shorten(segment, MAX_NAME_BYTES) for segment in stem.split("/"))
    return _shorten(out, MAX_STEM_BYTES, whole=stem)


def content_key(stem: str, sha256_hex: str, suffix: str = ".jpg") -> str:
    """'<stem>-<12 hex of the content's sha256><suffix>': a key that names its bytes."""
    return f"{stem}-{sha256_hex[:DIGEST_CHARS]}{suffix}"
