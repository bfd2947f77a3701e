"""Config files agree with settings: .env.example, README table, devcontainer env and ports.

The devcontainer runs deploy/compose.yaml plus .devcontainer/compose.override.yaml (its app).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml

from pixelpipe.settings import Settings, load_settings

ROOT = Path(__file__).resolve().parent.parent
SETTING_NAMES = {name.upper() for name in Settings.model_fields}
# read by libraries rather than pixelpipe.settings
EXTERNAL_NAMES = {"MLFLOW_S3_ENDPOINT_URL", "PIXELPIPE_EXTERNAL_STACK"}


def _merge(base: Any, extra: Any, key: str = "") -> Any:
    """Compose's merge of a later file into an earlier one (the parts these files use)."""
    if isinstance(base, dict) and isinstance(extra, dict):
        out = dict(base)
        for name, value in extra.items():
            out[name] = _merge(base[name], value, name) if name in base else value
        return out
    if key in {"ports", "volumes"} and isinstance(base, list) and isinstance(extra, list):
        return base + extra
    return extra


def _spec() -> dict:
    return json.loads((ROOT / ".devcontainer" / "devcontainer.json").read_text())


def _compose_files() -> list[Path]:
    files = _spec()["dockerComposeFile"]
    names = [files] if isinstance(files, str) else files
    return [(ROOT / ".devcontainer" / name).resolve() for name in names]


def _compose() -> dict:
    """The compose project the devcontainer runs: its files merged in order."""
    merged: dict = {}
    for path in _compose_files():
        merged = _merge(merged, yaml.safe_load(path.read_text()))
    return merged


def _running(services: dict, name: str) -> set[str]:
    """`name` and everything it depends on: what `docker compose up name` starts."""
    todo, seen = [name], set()
    while todo:
        current = todo.pop()
        if current not in seen:
            seen.add(current)
            todo.extend(services[current].get("depends_on", {}))
    return seen


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


def test_devcontainer_reuses_the_deploy_stack() -> None:
    files = _compose_files()
    assert files[0] == ROOT / "deploy" / "compose.yaml"
    assert all(path.is_file() for path in files)
    spec = _spec()
    services = _compose()["services"]
    assert spec["service"] in services
    assert set(spec.get("runServices", [spec["service"]])) <= set(services)
    # compose resolves every file's relative paths against the first file's directory
    build = services[spec["service"]]["build"]
    context = (files[0].parent / build["context"]).resolve()
    assert (context / build["dockerfile"]).is_file()
    assert context == ROOT


def test_devcontainer_env_names_match_settings_and_values_parse() -> None:
    spec = _spec()
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
    spec = _spec()
    services = _compose()["services"]
    env = services[spec["service"]]["environment"]
    s3 = urlsplit(env["S3_ENDPOINT_URL"])
    assert s3.hostname in services
    rustfs = services[s3.hostname]
    assert f":{s3.port}" in rustfs["command"]  # the address RustFS listens on
    assert s3.port in _published(rustfs)
    mlflow_url = urlsplit(env["MLFLOW_TRACKING_URI"])
    mlflow = services[mlflow_url.hostname]
    assert f"--port {mlflow_url.port}" in " ".join(mlflow["command"])
    assert mlflow_url.port in _published(mlflow)
    running = set()
    for name in spec.get("runServices", [spec["service"]]):
        running |= _running(services, name)
    assert {s3.hostname, mlflow_url.hostname, "create-buckets"} <= running
    host_ports = [p for name in running for p in _published(services[name]).values()]
    assert len(host_ports) == len(set(host_ports)), host_ports  # no clash among what runs
    assert set(spec["forwardPorts"]) <= set(host_ports)
    # the buckets the stack creates are the ones the app is told to use
    made = " ".join(services["create-buckets"]["command"])
    for name in ("RAW_BUCKET", "AUGMENTED_BUCKET", "NORMALIZED_BUCKET", "ARTIFACTS_BUCKET"):
        assert env[name] in made
    assert f"s3://{env['ARTIFACTS_BUCKET']}/" in " ".join(mlflow["command"])
    # the same credentials everywhere
    assert rustfs["environment"]["RUSTFS_ACCESS_KEY"] == env["AWS_ACCESS_KEY_ID"]
    assert mlflow["environment"]["AWS_SECRET_ACCESS_KEY"] == env["AWS_SECRET_ACCESS_KEY"]
