"""The training sweep's plots: epoch time vs dataset, images/s vs instances, loader vs training."""

from __future__ import annotations

from pathlib import Path
from typing import Any

PLOTS = ("epoch_time_vs_images.png", "throughput_vs_instances.png", "loader_vs_training.png")


def _errors(sel: list[dict[str, Any]], name: str) -> tuple[list[float], list[list[float]]]:
    """Medians and their (below, above) distances to the min and max over repeats."""
    med = [r[f"{name}_median"] for r in sel]
    below = [m - r[f"{name}_min"] for m, r in zip(med, sel, strict=True)]
    above = [r[f"{name}_max"] - m for m, r in zip(med, sel, strict=True)]
    return med, [below, above]


def plot_all(rows: list[dict[str, Any]], out: Path) -> list[Path]:
    """Write the three PNGs into out; return their paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import ScalarFormatter

    strong = [r for r in rows if r["scaling"] == "strong"]
    paths = [out / name for name in PLOTS]

    fig, ax = plt.subplots(figsize=(6, 4))
    for n, loader in sorted({(r["instances"], r["loader"]) for r in strong}):
        sel = sorted(
            (r for r in strong if (r["instances"], r["loader"]) == (n, loader)),
            key=lambda r: r["images"],
        )
        med, err = _errors(sel, "epoch_s")
        ax.errorbar([r["images"] for r in sel], med, yerr=err, marker="o",
                    label=f"{n} instance(s), {loader}")  # fmt: skip
    ax.set_xscale("log", base=2)
    ax.set_yscale("log", base=2)
    sizes = sorted({r["images"] for r in strong})
    ax.set_xticks(sizes, [str(s) for s in sizes])
    ax.minorticks_off()
    ax.yaxis.set_major_formatter(ScalarFormatter())
    ax.set(xlabel="dataset images", ylabel="training epoch (s)", title="Epoch time vs dataset")
    ax.legend()
    fig.tight_layout()
    fig.savefig(paths[0], dpi=100)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(6, 4))
    groups = sorted({(r["scaling"], r["images"] // r["instances"] if r["scaling"] == "weak"
                      else r["images"], r["loader"]) for r in rows})  # fmt: skip
    for scaling, size, loader in groups:
        sel = sorted(
            (r for r in rows if (r["scaling"], r["loader"]) == (scaling, loader)
             and (r["images"] // r["instances"] if scaling == "weak" else r["images"]) == size),
            key=lambda r: r["instances"],
        )  # fmt: skip
        med, err = _errors(sel, "images_per_s")
        label = f"{size} images/node (weak)" if scaling == "weak" else f"{size} images"
        style = "--" if scaling == "weak" else "-"
        ax.errorbar([r["instances"] for r in sel], med, yerr=err, marker="o", linestyle=style,
                    label=f"{label}, {loader}")  # fmt: skip
    ax.set_xticks(sorted({r["instances"] for r in rows}))
    ax.set(xlabel="instances", ylabel="training images / s (all instances)",
           title="Training throughput vs instances")  # fmt: skip
    ax.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(paths[1], dpi=100)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(7, 4))
    labels = [f"{r['images']}x{r['instances']}\n{r['loader']}" for r in strong]
    xs = range(len(strong))
    ax.bar([x - 0.2 for x in xs], [r["loader_images_per_s_median"] for r in strong], 0.4,
           label="loader alone (no model)")  # fmt: skip
    ax.bar([x + 0.2 for x in xs], [r["images_per_s_median"] for r in strong], 0.4,
           label="training")  # fmt: skip
    ax.set_xticks(list(xs), labels, fontsize="small")
    ax.set_yscale("log")  # the loader is often many times faster than training
    ax.set(xlabel="dataset images x instances", ylabel="images / s",
           title="Loader vs training throughput")  # fmt: skip
    ax.legend()
    fig.tight_layout()
    fig.savefig(paths[2], dpi=100)
    plt.close(fig)
    return paths
