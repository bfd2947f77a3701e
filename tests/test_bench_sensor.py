"""`pixelpipe bench sensor` runs end to end on a small prefix and stores its CSV, plot and MLflow
run; with --json it prints the rows a script can read."""

from __future__ import annotations

import json
from pathlib import Path

from test_bench import _cli, _published, _rows

from pixelpipe.settings import Settings


def test_bench_sensor_rows_csv_plot_and_mlflow(settings: Settings, s3, tmp_path: Path) -> None:
    out = tmp_path / "sensor"
    done = _cli("sensor", "--objects", "300,600", "--repeats", "1", "--out", str(out), "--json")
    assert done.returncode == 0, done.stderr
    rows = json.loads(next(line for line in done.stdout.splitlines() if line.startswith("[")))
    assert [r["objects"] for r in rows] == [300, 600]
    for row in rows:
        assert row["objects_batched"] == row["objects"]
        assert {"idle_tick_s", "bare_list_s", "cursor_bytes", "peak_rss_mb"} <= set(row)
        assert row["idle_tick_s"] > 0 and row["bare_list_s"] > 0
        assert row["cursor_bytes"] < 1024  # a summary, whatever the prefix holds
    assert [int(r["objects"]) for r in _rows(out / "sensor.csv")] == [300, 600]
    assert (out / "sensor.png").stat().st_size > 1000
    _published(settings, s3, done.stdout, {"sensor.csv", "sensor.png"})
