"""The blocking checks' building blocks report what is really missing in S3."""

from __future__ import annotations

from pixelpipe.assets.common import missing_objects


def test_missing_objects_lists_only_absent_outputs(s3, bucket: str) -> None:
    for key in ("v/p/a.jpg", "v/p/b.jpg", "top.jpg"):
        s3.put_object(Bucket=bucket, Key=key, Body=b"x")
    uris = [
        f"s3://{bucket}/{k}"
        for k in ("v/p/a.jpg", "v/p/b.jpg", "v/p/c.jpg", "top.jpg", "w/none.jpg")
    ]
    assert missing_objects(s3, uris) == [f"s3://{bucket}/v/p/c.jpg", f"s3://{bucket}/w/none.jpg"]
