"""Map S3 object keys to local paths, refusing any key that could leave its root."""

from __future__ import annotations

from pathlib import Path

MAX_KEY_BYTES = 1024
MAX_SEGMENT_BYTES = 255


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


def check_key(key: str) -> list[str]:
    """Validate a key's shape and return its '/'-separated segments; UnsafeKeyError if unsafe.

    Empty or '.' segments are refused rather than normalised: two different keys
    ('a//b', 'a/b') must never share one local file.
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
        if len(segment.encode("utf-8")) > MAX_SEGMENT_BYTES:
            raise UnsafeKeyError(f"segment longer than {MAX_SEGMENT_BYTES} bytes", key)
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


def relative_key(key: str, prefix: str) -> str:
    """`key` without `prefix` ('raw/a.jpg', 'raw' -> 'a.jpg'); UnsafeKeyError if not under it."""
    stem = prefix.strip("/")
    if not stem:
        rest = key
    elif key.startswith(stem + "/"):
        rest = key[len(stem) + 1 :]
    else:
        raise UnsafeKeyError(f"not under prefix {prefix!r}", key)
    check_key(rest)
    return rest
