"""`pixelpipe bench training`: prepare (or reuse) the dataset, run the sweep, summarise it."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, get_args

from pixelpipe.bench.prepare import DEFAULT_INPUT, prepare
from pixelpipe.bench.training import Sweep, growth, mlflow_metrics, run_sweep
from pixelpipe.settings import Settings
from pixelpipe.training.config import LoaderName

Echo = Callable[[str], None]
TABLE_COLUMNS = (
    ("scaling", "scaling"), ("images", "images"), ("instances", "inst"), ("loader", "loader"),
    ("epoch_s_median", "epoch_s"), ("images_per_s_median", "img/s"),
    ("loader_images_per_s_median", "loader img/s"), ("data_wait_fraction_median", "wait"),
    ("scaling_efficiency", "eff"), ("gpu_util_pct", "gpu%"), ("shares_cores", "note"),
)  # fmt: skip


def int_list(text: str, option: str) -> tuple[int, ...]:
    """'1000,4000' -> (1000, 4000); ValueError names the option and the bad value."""
    try:
        values = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise ValueError(f"{option} {text!r}: expected comma-separated whole numbers") from None
    if not values or any(v < 1 for v in values):
        raise ValueError(f"{option} {text!r}: expected one or more numbers of at least 1")
    return values


def image_sizes(text: str) -> tuple[tuple[int, int], ...]:
    """'160x120,128x96' -> ((160, 120), (128, 96))."""
    try:
        pairs = [part.strip().lower().split("x") for part in text.split(",") if part.strip()]
        return tuple((int(w), int(h)) for w, h in pairs)
    except ValueError:
        expected = "expected WIDTHxHEIGHT[,WIDTHxHEIGHT...]"
        raise ValueError(f"--image-sizes {text!r}: {expected}") from None


def loaders(text: str) -> tuple[LoaderName, ...]:
    names = tuple(v.strip() for v in text.split(",") if v.strip())
    known = get_args(LoaderName)
    bad = [n for n in names if n not in known]
    if bad or not names:
        expected = f"expected a comma-separated list of {', '.join(known)}"
        raise ValueError(f"--loader {text!r}: {expected}")
    return names  # type: ignore[return-value]


@dataclass
class Outcome:
    """A finished sweep: rows, growth per doubling, MLflow metrics and the dataset it used."""

    rows: list[dict[str, Any]]
    growth: list[dict[str, Any]]
    metrics: dict[str, float]
    dataset: dict[str, Any] = field(default_factory=dict)


def table(rows: list[dict[str, Any]]) -> list[str]:
    """The rows as an aligned text table (medians over repeats)."""
    cells = [[head for _, head in TABLE_COLUMNS]]
    for r in rows:
        cells.append([
            f"{r[k]:.4g}" if isinstance(r.get(k), float) else str(r.get(k, ""))
            for k, _ in TABLE_COLUMNS
        ])  # fmt: skip
    widths = [max(len(row[i]) for row in cells) for i in range(len(TABLE_COLUMNS))]
    return ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip()
            for row in cells]  # fmt: skip


def bench_training(
    settings: Settings,
    sweep: Sweep,
    out: Path,
    *,
    variant: str | None = None,
    data_seed: int = 1234,
    sizes: tuple[tuple[int, int], ...] = ((160, 120), (128, 96)),
    input_spec: str = DEFAULT_INPUT,
    echo: Echo = print,
) -> Outcome:
    """Prepare the largest set once (or take `variant`), sweep it, write CSVs, plots, dataset."""
    out.mkdir(parents=True, exist_ok=True)
    if variant is None:
        prepared = prepare(settings, sweep.largest, seed=data_seed, image_sizes=sizes,
                           input_spec=input_spec, echo=echo)  # fmt: skip
        dataset = prepared.to_dict()
        variant = prepared.variant
    else:
        dataset = {"variant": variant, "index_uri": f"s3://{settings.artifacts_bucket}/"
                   f"datasets/{variant}/index.json", "prepared": False}  # fmt: skip
    (out / "dataset.json").write_text(json.dumps(dataset, indent=2))
    rows = run_sweep(settings, variant, sweep, out, echo=echo)
    for line in table(rows):
        echo(line)
    grown = growth(rows)
    for g in grown:
        echo(
            f"epoch time x{g['epoch_growth_per_doubling']:.2f} per doubling of the dataset "
            f"({g['instances']} instance(s), {g['loader']}, sizes {g['sizes']}; x2.00 = linear)"
        )
    return Outcome(rows, grown, mlflow_metrics(rows), dataset)
