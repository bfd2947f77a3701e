"""User-supplied S3 keys never become local paths outside the staging root, and output keys
planned from them are bounded and never collide."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pixelpipe.storage.keys import (
    MAX_NAME_BYTES,
    MAX_STEM_BYTES,
    UnsafeKeyError,
    bounded_stem,
    check_key,
    content_key,
    key_to_path,
    relative_key,
    staged_path,
)

SEGMENTS = st.sampled_from(["..", ".", "", "a", "b.jpg", "\\", "..\\x", "\x00", "é", "/"])
KEYS = st.one_of(
    st.text(max_size=300),
    st.lists(st.one_of(SEGMENTS, st.text(max_size=8)), max_size=8).map("/".join),
)


@given(key=KEYS)
@settings(max_examples=400, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_no_generated_key_escapes_the_root(tmp_path: Path, key: str) -> None:
    root = tmp_path / "root"
    try:
        path = key_to_path(root, key)
    except UnsafeKeyError as exc:
        assert exc.reason
        return
    base = root.resolve()
    assert path.is_relative_to(base)
    assert path != base
    assert ".." not in path.relative_to(base).parts
    assert path.relative_to(base).as_posix() == key


@pytest.mark.parametrize(
    ("key", "reason"),
    [
        ("", "empty key"),
        ("../etc/passwd", "'..' segment"),
        ("a/../../b", "'..' segment"),
        ("/etc/passwd", "absolute path"),
        ("a\\..\\b", "backslash"),
        ("a\x00b", "NUL or control character"),
        ("a\nb.jpg", "NUL or control character"),
        ("a\x7fb", "NUL or control character"),
        ("a//b", "empty segment ('//')"),
        ("./a", "'.' segment"),
        ("a/./b", "'.' segment"),
        ("photos/", "directory marker (ends with '/')"),
        ("x" * 256, "segment longer than 255 bytes"),
        ("é" * 128, "segment longer than 255 bytes"),
        ("/".join(["x" * 200] * 6), "longer than 1024 bytes"),
        ("a\ud800b", "not valid UTF-8"),
    ],
)
def test_each_refusal_names_its_reason(tmp_path: Path, key: str, reason: str) -> None:
    with pytest.raises(UnsafeKeyError) as info:
        key_to_path(tmp_path, key)
    assert info.value.reason == reason
    assert info.value.key == key


def test_ordinary_keys_map_below_the_root(tmp_path: Path) -> None:
    assert (
        key_to_path(tmp_path, "cats/2024/img 01.jpg") == tmp_path.resolve() / "cats/2024/img 01.jpg"
    )
    assert key_to_path(tmp_path, "é/..jpg/a..b") == tmp_path.resolve() / "é" / "..jpg" / "a..b"
    assert check_key("x" * 255) == ["x" * 255]


def test_symlink_inside_root_pointing_out_is_refused(tmp_path: Path) -> None:
    root = tmp_path / "root"
    outside = tmp_path / "outside"
    root.mkdir()
    outside.mkdir()
    os.symlink(outside, root / "link")
    with pytest.raises(UnsafeKeyError) as info:
        key_to_path(root, "link/secret.jpg")
    assert info.value.reason == "resolves outside the root (symlink)"


def test_root_that_is_a_symlink_still_works(tmp_path: Path) -> None:
    real = tmp_path / "real"
    real.mkdir()
    os.symlink(real, tmp_path / "alias")
    assert key_to_path(tmp_path / "alias", "a/b.jpg") == real.resolve() / "a" / "b.jpg"


def test_relative_key_strips_only_a_whole_prefix() -> None:
    assert relative_key("incoming/a/b.jpg", "incoming") == "a/b.jpg"
    assert relative_key("incoming/a/b.jpg", "incoming/") == "a/b.jpg"
    assert relative_key("a/b.jpg", "") == "a/b.jpg"
    with pytest.raises(UnsafeKeyError, match="not under prefix"):
        relative_key("incomingX/a.jpg", "incoming")
    with pytest.raises(UnsafeKeyError, match="'..' segment"):
        relative_key("incoming/../a.jpg", "incoming")
    with pytest.raises(UnsafeKeyError, match="empty key"):
        relative_key("incoming/", "incoming")


def test_output_stems_are_bounded_and_never_collide() -> None:
    long_segment = "é" * 150  # 300 bytes
    stems = {
        key: bounded_stem(key)
        for key in ["cat.jpg", "cat.png", f"a/{long_segment}.jpg", f"a/{long_segment}.png",
                    "/".join(["d" * 200] * 5) + "/x.jpg", "/".join(["d" * 200] * 5) + "/y.jpg"]
    }  # fmt: skip
    assert stems["cat.jpg"] == "cat.jpg" and stems["cat.png"] == "cat.png"
    assert len(set(stems.values())) == len(stems)
    for stem in stems.values():
        assert len(stem.encode()) <= MAX_STEM_BYTES
        assert all(0 < len(s.encode()) <= MAX_NAME_BYTES for s in stem.split("/"))
    assert bounded_stem(f"a/{long_segment}.jpg") == bounded_stem(f"a/{long_segment}.jpg")


def test_staged_paths_give_every_key_a_folder_of_its_own(tmp_path: Path) -> None:
    file_key = staged_path(tmp_path, "in/x.jpg")
    folder_key = staged_path(tmp_path, "in/x.jpg/y.jpg")
    assert file_key.name == "x.jpg" and folder_key.name == "y.jpg"
    assert file_key.parent != folder_key.parent
    assert file_key.parent.parent == folder_key.parent.parent == tmp_path.resolve()
    long_name = staged_path(tmp_path, "in/" + "e" * 300 + ".jpg").name
    assert len(long_name.encode()) <= 255 and long_name.endswith(".jpg")
    with pytest.raises(UnsafeKeyError, match="'..' segment"):
        staged_path(tmp_path, "in/../../x.jpg")


def test_content_keys_name_their_bytes() -> None:
    digest = "ab" * 32
    assert content_key("b-1/cat.png__c0", digest) == f"b-1/cat.png__c0-{'ab' * 6}.jpg"
