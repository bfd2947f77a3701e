"""Output size variants: parse NORMALIZE_SIZES and describe each variant."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal, TypeGuard

Mode = Literal["fit", "letterbox", "stretch"]
MODES: tuple[str, ...] = ("fit", "letterbox", "stretch")
SIZES_FORMAT = "NAME:WIDTHxHEIGHT[:MODE], comma-separated, MODE one of fit|letterbox|stretch"

_ITEM = re.compile(
    r"^(?P<name>[A-Za-z0-9][A-Za-z0-9_.-]*):(?P<w>\d+)x(?P<h>\d+)(?::(?P<mode>\w+))?$"
)
MAX_SIDE = 16384
MAX_NAME = 64  # a variant name is the first segment of every stage-2 key


def is_mode(value: str) -> TypeGuard[Mode]:
    """True when value is one of MODES."""
    return value in MODES


@dataclass(frozen=True)
class Variant:
    """One normalized output size: a name, a target size and how to reach it."""

    name: str
    width: int
    height: int
    mode: Mode = "fit"

    def spec(self) -> str:
        return f"{self.name}:{self.width}x{self.height}:{self.mode}"


def parse_sizes(text: str) -> list[Variant]:
    """Parse 'small:224x224,medium:384x384:letterbox' into variants; ValueError says why not."""
    items = [part.strip() for part in text.split(",") if part.strip()]
    if not items:
        raise ValueError(f"expected at least one variant as {SIZES_FORMAT}")
    variants: list[Variant] = []
    seen: set[str] = set()
    for item in items:
        match = _ITEM.match(item)
        if not match:
            raise ValueError(f"expected {SIZES_FORMAT}; got {item!r}")
        name, width, height = match["name"], int(match["w"]), int(match["h"])
        if len(name) > MAX_NAME:
            raise ValueError(f"variant name {name[:20]!r}... is longer than {MAX_NAME} characters")
        mode = match["mode"] or "fit"
        if not is_mode(mode):
            raise ValueError(f"{item!r} has mode {mode!r}; expected one of {', '.join(MODES)}")
        if not (0 < width <= MAX_SIDE and 0 < height <= MAX_SIDE):
            raise ValueError(f"{item!r} needs a width and height between 1 and {MAX_SIDE}")
        if name in seen:
            raise ValueError(f"variant name {name!r} appears twice; names must be unique")
        seen.add(name)
        variants.append(Variant(name, width, height, mode))
    return variants
