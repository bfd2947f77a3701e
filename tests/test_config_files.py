"""Config files agree with settings: .env.example, README table, devcontainer env and ports."""

from __future__ import annotations

import json
import re
from pathlib import Path
from urllib.parse import urlsplit

import yaml

from pixelpipe.settings import Settings, load_settings

ROOT = Path(__file__).resolve().parent.parent
SETTING_NAMES = {name.upper() for name in Settings.model_fields}
# read by libraries rather than pixelpipe.settings
EXTERNAL_NAMES = {"MLFLOW_S3_ENDPOINT_URL", "PIXELPIPE_EXTERNAL_STACK"}


def _compose() -> dict:
    return yaml.safe_load((ROOT / ".devcontainer" / "compose.yaml").read_text())


def test_env_example_lists_every_setting_and_parses() -> None:
    pairs = dict(
        line.split("=", 1)
        for line in (ROOT / ".env.example").read_text().splitlines()
        if line and not line.startswith("#")
    )
    assert set(pairs) == SETTING_NAMES
    load_settings(**{k.lower(): v for k, v in pairs.items() if v != ""})


def test_readme_configuration_table_lists_every_setting() -> None:
    readme = (ROOT / "README.md").read_text()
    documented = set(re.findall(r"^\| `([A-Z0-9_]+)` \|", readme, flags=re.M))
    assert documented >= SETTING_NAMES, SETTING_NAMES - documented


def test_devcontainer_env_names_match_settings_and_values_parse() -> None:
    spec = json.loads((ROOT / ".devcontainer" / "devcontainer.json").read_text())
    services = _compose()["services"]
    env = services[spec["service"]]["environment"]
    assert set(env) - SETTING_NAMES <= EXTERNAL_NAMES, set(env) - SETTING_NAMES - EXTERNAL_NAMES
    settings = load_settings(**{k.lower(): v for k, v in env.items() if k in SETTING_NAMES})
    assert settings.s3_endpoint_url == env["MLFLOW_S3_ENDPOINT_URL"]


def _published(service: dict) -> dict[int, int]:
    out = {}
    for mapping in service.get("ports", []):
        host, container = str(mapping).split(":")[-2:]
        out[int(container)] = int(host)
    return out


def test_devcontainer_ports_line_up() -> None:
    spec = json.loads((ROOT / ".devcontainer" / "devcontainer.json").read_text())
    services = _compose()["services"]
    env = services["app"]["environment"]
    s3 = urlsplit(env["S3_ENDPOINT_URL"])
    assert s3.hostname in services
    rustfs = services[s3.hostname]
    assert f":{s3.port}" in rustfs["command"]  # the address RustFS listens on
    assert s3.port in _published(rustfs)
    mlflow_url = urlsplit(env["MLFLOW_TRACKING_URI"])
    mlflow = services[mlflow_url.hostname]
    assert f"--port {mlflow_url.port}" in " ".join(mlflow["command"])
    assert mlflow_url.port in _published(mlflow)
    published = {p for svc in services.values() for p in _published(svc).values()}
    assert set(spec["forwardPorts"]) <= published
    # the buckets the stack creates are the ones the app is told to use
    made = " ".join(services["create-buckets"]["command"])
    for name in ("RAW_BUCKET", "AUGMENTED_BUCKET", "NORMALIZED_BUCKET", "ARTIFACTS_BUCKET"):
        assert env[name] in made
    assert f"s3://{env['ARTIFACTS_BUCKET']}/" in " ".join(mlflow["command"])
    # the same credentials everywhere
    assert rustfs["environment"]["RUSTFS_ACCESS_KEY"] == env["AWS_ACCESS_KEY_ID"]
    assert mlflow["environment"]["AWS_SECRET_ACCESS_KEY"] == env["AWS_SECRET_ACCESS_KEY"]
