"""Test reports land as artifacts: every file, the browser tests' screenshots/ folder included, is
in the artifacts bucket and in an MLflow run of the test-reports experiment."""

from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient
from PIL import Image

from pixelpipe import manifests as mf
from pixelpipe.reports import upload_reports
from pixelpipe.settings import Settings

pytestmark = pytest.mark.stack


def test_reports_and_screenshots_land_in_s3_and_mlflow(
    settings: Settings, s3, tmp_path: Path
) -> None:
    (tmp_path / "pytest.log").write_text("3 passed\n")
    (tmp_path / "screenshots").mkdir()
    Image.new("RGB", (8, 8), (200, 30, 30)).save(tmp_path / "screenshots" / "dagster-catalog.png")

    # an experiment of its own: the suite's real reports go to pixelpipe-test-reports afterwards
    result = upload_reports(tmp_path, settings, experiment=f"{settings.mlflow_experiment}-reports")

    bucket, prefix = mf.split_uri(result["s3_uri"])
    listed = s3.list_objects_v2(Bucket=bucket, Prefix=prefix)
    assert {o["Key"].removeprefix(prefix) for o in listed["Contents"]} == {
        "pytest.log",
        "screenshots/dagster-catalog.png",
    }
    assert result["mlflow_artifacts"] == [
        "reports/pytest.log",
        "reports/screenshots/dagster-catalog.png",
    ]
    client = MlflowClient(settings.mlflow_tracking_uri)
    png = client.download_artifacts(
        result["mlflow_run_id"], "reports/screenshots/dagster-catalog.png", str(tmp_path / "back")
    )
    assert Image.open(png).size == (8, 8)
    s3.delete_objects(  # test-reports/ is for the suite's real reports
        Bucket=bucket, Delete={"Objects": [{"Key": o["Key"]} for o in listed["Contents"]]}
    )
