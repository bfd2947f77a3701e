"""Benchmark serving: our OIP service against `mlflow models serve` on one model, CSV + plot.

Both servers run as subprocesses on loopback ports of their own, one process each, and are
driven in turn by the same async client with the same image at the same concurrency:

* `ours-infer`: POST /v2/models/{name}/infer, the image as a base64 BYTES input;
* `mlflow-invocations`: POST /invocations, {"dataframe_split": {"columns": ["image"], ...}};
* `ours-predict`: POST /predict, the image as a multipart file.

Each row: requests, errors, req/s, p50/p99/mean latency, and req/s relative to MLflow's.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pixelpipe.bench.load import (
    Tally,
    drive,
    infer_request,
    mlflow_request,
    predict_request,
    summarize,
)
from pixelpipe.bench.publish import write_csv
from pixelpipe.settings import Settings

HOST = "127.0.0.1"
MLFLOW_TARGET = "mlflow-invocations"
TARGETS = ("ours-infer", MLFLOW_TARGET, "ours-predict")


@dataclass(frozen=True)
class Server:
    """A server subprocess (its own process group) and where it answers."""

    name: str
    process: subprocess.Popen[bytes]
    base_url: str
    ready_path: str
    log: Path


def bench_image(width: int = 640, height: int = 480, seed: int = 0) -> bytes:
    """A photo-like JPEG: smooth gradients plus a few shapes and noise (generated, not stored)."""
    import cv2

    from pixelpipe.imaging.decode import encode_jpeg

    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    rgb = np.stack([xx / width * 200, yy / height * 200, (xx + yy) / (width + height) * 255], -1)
    image = np.ascontiguousarray(rgb.astype(np.uint8))
    for _ in range(6):
        center = (int(rng.integers(0, width)), int(rng.integers(0, height)))
        color = tuple(int(c) for c in rng.integers(0, 256, 3))
        cv2.circle(image, center, int(rng.integers(10, min(width, height) // 4)), color, -1)
    noise = rng.normal(0, 6, image.shape)
    return encode_jpeg(np.clip(image + noise, 0, 255).astype(np.uint8), 90)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def _server_env(settings: Settings) -> dict[str, str]:
    env = dict(os.environ)
    bin_dir = str(Path(sys.executable).parent)
    env["PATH"] = bin_dir + os.pathsep + env.get("PATH", "")
    env["MLFLOW_TRACKING_URI"] = settings.mlflow_tracking_uri
    env.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
    return env


def _spawn(name: str, cmd: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("wb") as handle:
        # a session of its own: `mlflow models serve` runs uvicorn as a child, stopped with it
        return subprocess.Popen(
            cmd, env=env, stdout=handle, stderr=subprocess.STDOUT, start_new_session=True
        )


def start_ours(settings: Settings, model: str, log_dir: Path, extra: Sequence[str] = ()) -> Server:
    """`python -m pixelpipe.serving.app --model NAME@ALIAS` on a free loopback port."""
    port = free_port()
    cmd = [sys.executable, "-m", "pixelpipe.serving.app", "--host", HOST, "--port", str(port)]
    cmd += ["--model", model, *extra]
    log = log_dir / "ours.log"
    process = _spawn("ours", cmd, _server_env(settings), log)
    return Server("ours", process, f"http://{HOST}:{port}", "/v2/health/ready", log)


def start_mlflow(settings: Settings, model_uri: str, log_dir: Path, workers: int = 1) -> Server:
    """`mlflow models serve -m URI --env-manager local` on a free loopback port."""
    port = free_port()
    mlflow_bin = str(Path(sys.executable).parent / "mlflow")
    cmd = [mlflow_bin, "models", "serve", "-m", model_uri, "--env-manager", "local"]
    cmd += ["-p", str(port), "--host", HOST, "-w", str(workers)]
    log = log_dir / "mlflow.log"
    process = _spawn("mlflow", cmd, _server_env(settings), log)
    return Server("mlflow", process, f"http://{HOST}:{port}", "/ping", log)


def _tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def wait_ready(server: Server, timeout: float = 180.0) -> None:
    """Poll the server's readiness URL; RuntimeError with its log tail if it dies or times out."""
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise RuntimeError(
                f"{server.name} server exited with {server.process.returncode}:\n"
                + _tail(server.log)
            )
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(server.base_url + server.ready_path, timeout=2).status_code == 200:
                return
        time.sleep(0.3)
    raise RuntimeError(f"{server.name} server not ready after {timeout:.0f}s:\n{_tail(server.log)}")


def stop(server: Server, timeout: float = 20.0) -> None:
    """SIGTERM the server's process group (SIGKILL if it lingers)."""
    if server.process.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(server.process.pid, signal.SIGTERM)
        try:
            server.process.wait(timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(server.process.pid, signal.SIGKILL)
            server.process.wait(timeout)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(server.process.pid, signal.SIGTERM)  # any child left behind in the group


@contextlib.contextmanager
def running(server: Server, timeout: float = 180.0) -> Iterator[Server]:
    try:
        wait_ready(server, timeout)
        yield server
    finally:
        stop(server)


def group_cpu_seconds(pgid: int) -> float | None:
    """User + system CPU seconds of every live process in process group pgid (Linux /proc)."""
    proc = Path("/proc")
    if not proc.is_dir():
        return None
    total = 0
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue  # exited meanwhile
        if int(fields[2]) == pgid:
            total += int(fields[11]) + int(fields[12])
    return total / os.sysconf("SC_CLK_TCK")


def _cpu_of(server: Server) -> Callable[[], float | None]:
    """The CPU seconds the server's process group has used so far, read when called."""
    return lambda: group_cpu_seconds(server.process.pid)


def _model_refs(model_name: str, ref: str) -> tuple[str, str]:
    """(our --model argument, MLflow model URI) for an alias or a version number."""
    if ref.isdigit():
        return f"{model_name}/{ref}", f"models:/{model_name}/{ref}"
    return f"{model_name}@{ref}", f"models:/{model_name}@{ref}"


def plot(rows: Sequence[dict[str, Any]], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [r["target"] for r in rows]
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    left.bar(names, [r["req_per_s"] for r in rows], color=["C0", "C1", "C2"][: len(rows)])
    left.set_ylabel("requests / s")
    left.set_title(f"throughput at concurrency {rows[0]['concurrency']}")
    x = np.arange(len(rows))
    right.bar(x - 0.2, [r["p50_ms"] or 0 for r in rows], 0.4, label="p50")
    right.bar(x + 0.2, [r["p99_ms"] or 0 for r in rows], 0.4, label="p99")
    right.set_xticks(x, names)
    right.set_ylabel("latency (ms)")
    right.legend()
    for ax in (left, right):
        ax.tick_params(axis="x", labelrotation=15)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def run_bench(
    settings: Settings,
    model_name: str,
    ref: str = "champion",
    concurrency: int = 8,
    seconds: float = 10.0,
    out_dir: str | Path = "reports/bench/serve",
    *,
    rounds: int = 3,
    image: bytes | None = None,
    max_requests: int = 200_000,
    mlflow_workers: int = 1,
    ours_args: Sequence[str] = (),
    make_plot: bool = True,
) -> list[dict[str, Any]]:
    """Start both servers for NAME@ref (alias or version), measure each target, write serve.csv.

    Each target gets `seconds` in total, split over `rounds` that alternate between targets,
    so that load from elsewhere on the machine hits all of them alike. Rows in TARGETS order;
    `vs_mlflow` = req/s divided by MLflow's req/s.
    """
    if concurrency < 1 or seconds <= 0 or rounds < 1:
        raise ValueError("concurrency and rounds must be >= 1 and seconds > 0")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    blob = image or bench_image()
    ours_model, mlflow_uri = _model_refs(model_name, ref)
    logs = out / "logs"
    ours = start_ours(settings, ours_model, logs, ours_args)
    mlflow_server = start_mlflow(settings, mlflow_uri, logs, mlflow_workers)
    tallies = {target: Tally() for target in TARGETS}
    try:
        with running(ours), running(mlflow_server):
            plans = {
                "ours-infer": (infer_request(ours.base_url, model_name, blob), ours),
                MLFLOW_TARGET: (mlflow_request(mlflow_server.base_url, blob), mlflow_server),
                "ours-predict": (predict_request(ours.base_url, blob), ours),
            }
            per_round = max(1, max_requests // rounds)
            for _ in range(rounds):
                for target in TARGETS:
                    request, server = plans[target]
                    drive(
                        request,
                        concurrency,
                        seconds / rounds,
                        per_round,
                        tallies[target],
                        _cpu_of(server),
                    )
    finally:
        stop(ours)
        stop(mlflow_server)
    rows = [summarize(target, concurrency, tallies[target]) for target in TARGETS]
    baseline = rows[TARGETS.index(MLFLOW_TARGET)]["req_per_s"]
    for row in rows:
        row["vs_mlflow"] = round(row["req_per_s"] / baseline, 2) if baseline else None
        row["image_bytes"] = len(blob)
    write_csv(out / "serve.csv", rows)
    if make_plot:
        plot(rows, out / "serve.png")
    return rows


def main(argv: Sequence[str] | None = None) -> None:
    from pixelpipe.serving.registry import parse_ref
    from pixelpipe.settings import load_settings

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="NAME@ALIAS or NAME/VERSION")
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path("reports/bench/serve"))
    args = parser.parse_args(argv)
    model = parse_ref(args.model)
    rows = run_bench(
        load_settings(),
        model.name,
        model.version or model.alias or "champion",
        args.concurrency,
        args.seconds,
        args.out,
        rounds=args.rounds,
    )
    for row in rows:
        print(
            f"{row['target']:>20}: {row['req_per_s']:8.1f} req/s  p50 {row['p50_ms']} ms  "
            f"p99 {row['p99_ms']} ms  x{row['vs_mlflow']} vs mlflow  "
            f"server CPU {row['server_cpu_ms_per_req']} ms/req  errors {row['errors']}"
        )


if __name__ == "__main__":
    main()
