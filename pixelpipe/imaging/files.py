"""Atomic local writes of outputs, and the error that fails a step instead of an image."""

from __future__ import annotations

import contextlib
import itertools
import os
import threading
from pathlib import Path

_COUNTER = itertools.count()


class WriteError(RuntimeError):
    """A local output could not be written (disk full, read-only, a file where a folder must be).

    Not the image's fault: it fails the whole step, which is then retried, instead of being
    listed as a bad image.
    """


def write_atomic(dest: Path, data: bytes) -> None:
    """Write via a short temporary name in the same folder, so a reader (or a re-run) never sees
    a half-written file under the final name, and a 200-byte name still fits its temp name."""
    tmp = dest.with_name(f".{os.getpid()}-{threading.get_ident()}-{next(_COUNTER)}.tmp")
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "wb") as out:
            out.write(data)
        os.replace(tmp, dest)
    except OSError as exc:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        raise WriteError(f"cannot write {dest}: {exc.strerror or exc}") from None
