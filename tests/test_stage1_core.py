"""Protects the Stage 1 worker: seeded copies on disk, bad inputs isolated, pools match serial."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pixelpipe.imaging.augment import DEFAULT_SPEC, project_boxes, seed_for, spec_digest
from pixelpipe.imaging.boxes import Box
from pixelpipe.imaging.stage1 import (
    Stage1Task,
    baseline_loop,
    process_task,
    run_tasks,
    shutdown_pools,
)

DIGEST = spec_digest(DEFAULT_SPEC)
BOX = Box(label="dog", x=8.0, y=6.0, w=20.0, h=14.0)


@pytest.fixture(scope="module", autouse=True)
def _stop_pools() -> Iterator[None]:
    yield
    shutdown_pools()


def _image(path: Path, seed: int) -> str:
    pixels = np.random.default_rng(seed).integers(0, 256, (48, 64, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path, quality=92)
    return str(path)


def _task(source: str, out_dir: Path, key: str, copies: int = 3) -> Stage1Task:
    return Stage1Task(
        source_key=key,
        local_path=source,
        out_dir=str(out_dir),
        out_stem=f"b-0001/pets/{key}",
        copies=copies,
        spec=DEFAULT_SPEC,
        spec_digest=DIGEST,
        boxes=[BOX],
        quality=90,
    )


def test_good_and_corrupt_inputs(tmp_path: Path) -> None:
    good = _image(tmp_path / "good.jpg", 1)
    corrupt = tmp_path / "corrupt.jpg"
    corrupt.write_bytes(Path(good).read_bytes()[:300])
    out = tmp_path / "out"

    ok = process_task(_task(good, out, "good"))
    bad = process_task(_task(str(corrupt), out, "corrupt"))

    assert ok.ok and ok.reason is None
    assert [item["rel_path"] for item in ok.items] == [
        f"b-0001/pets/good__c{i}-{item['sha256'][:12]}.jpg" for i, item in enumerate(ok.items)
    ]
    for index, item in enumerate(ok.items):
        written = (out / item["rel_path"]).read_bytes()
        assert hashlib.sha256(written).hexdigest() == item["sha256"]
        assert item["bytes"] == len(written)
        assert item["copy_index"] == index
        assert item["seed"] == seed_for("good", index, DIGEST)
        assert item["record"]["seed"] == item["seed"]
        with Image.open(out / item["rel_path"]) as im:
            assert im.size == (item["width"], item["height"])
        assert [b["label"] for b in item["boxes"]] == [
            b["label"] for b in project_boxes([BOX], item["record"])
        ]
    assert len({item["seed"] for item in ok.items}) == 3
    assert ok.decode_s > 0 and ok.encode_s > 0
    assert not [p for p in out.rglob("*.tmp")]  # no temporary file left behind

    assert not bad.ok and bad.items == []
    assert bad.reason is not None and bad.reason.startswith("truncated file")
    assert not list((out / "b-0001/pets").glob("corrupt*"))


def test_rerun_writes_identical_bytes(tmp_path: Path) -> None:
    source = _image(tmp_path / "a.jpg", 2)
    first = process_task(_task(source, tmp_path / "one", "a"))
    second = process_task(_task(source, tmp_path / "two", "a"))
    assert [i["sha256"] for i in first.items] == [i["sha256"] for i in second.items]


def test_missing_and_non_image_files_fail_alone(tmp_path: Path) -> None:
    text = tmp_path / "readme.png"
    text.write_text("hello")
    tasks = [
        _task(str(tmp_path / "absent.jpg"), tmp_path / "out", "absent"),
        _task(str(text), tmp_path / "out", "text"),
        _task(_image(tmp_path / "fine.jpg", 3), tmp_path / "out", "fine", copies=1),
    ]
    results = run_tasks(tasks, workers=1)
    assert [r.source_key for r in results] == ["absent", "text", "fine"]
    assert results[0].reason is not None and "not found" in results[0].reason
    assert results[1].reason is not None and results[1].reason.startswith("not an image")
    assert results[2].ok and len(results[2].items) == 1


def test_two_workers_match_in_process(tmp_path: Path) -> None:
    sources = [_image(tmp_path / f"s{i}.jpg", 10 + i) for i in range(5)]
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"\xff\xd8\xff garbage")
    sources.insert(2, str(broken))

    local = run_tasks([_task(s, tmp_path / "local", f"k{i}", 2) for i, s in enumerate(sources)], 1)
    pooled = run_tasks([_task(s, tmp_path / "pool", f"k{i}", 2) for i, s in enumerate(sources)], 2)

    assert [r.source_key for r in pooled] == [f"k{i}" for i in range(len(sources))]
    assert [[i["sha256"] for i in r.items] for r in pooled] == [
        [i["sha256"] for i in r.items] for r in local
    ]
    assert [r.reason for r in pooled] == [r.reason for r in local]
    assert pooled[2].reason is not None and sum(r.ok for r in pooled) == 5


def test_baseline_loop_counts_readable_images(tmp_path: Path) -> None:
    paths = [_image(tmp_path / f"b{i}.jpg", 20 + i) for i in range(3)]
    (tmp_path / "junk.jpg").write_text("junk")
    assert baseline_loop([*paths, tmp_path / "junk.jpg"], DEFAULT_SPEC, 90) == 3


def test_a_full_disk_fails_the_task_loudly_not_as_a_bad_image(tmp_path: Path) -> None:
    """Writing an output is the step's business: a disk error is raised, never a failure entry."""
    from pixelpipe.imaging.files import WriteError

    source = _image(tmp_path / "a.jpg", 2)
    blocked = tmp_path / "out"
    blocked.write_text("a file where the output folder must be")
    with pytest.raises(WriteError, match="cannot write"):
        process_task(_task(source, blocked, "a"))
