"""Smoke checks that the resources a Terraform/OpenTofu variant reports exist and are set up."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from pixelpipe.settings import Settings

VARIANTS = ("aws", "local")
TERRAFORM_ROOT = Path(__file__).resolve().parent.parent / "terraform"
BUCKET_ROLES = ("raw", "augmented", "normalized", "artifacts")
SSE_ALGORITHMS = {"AES256", "aws:kms", "aws:kms:dsse"}
MISSING_CODES = {
    "404",
    "NoSuchBucket",
    "NotFound",
    "RepositoryNotFoundException",
    "ResourceNotFoundException",
    "AWS.SimpleQueueService.NonExistentQueue",
    "QueueDoesNotExist",
}


class OutputsError(ValueError):
    """The Terraform outputs could not be read or do not name what the variant needs."""


@dataclass(frozen=True)
class Check:
    """One verified fact: what was checked (name), on which resource (target), and the outcome."""

    name: str
    target: str
    ok: bool
    detail: str


# --- outputs --------------------------------------------------------------------------------


def load_outputs(source: str | Path | Mapping[str, Any]) -> dict[str, Any]:
    """`terraform output -json` as {name: value}: from a path, JSON text, '-' (stdin) or a dict."""
    if isinstance(source, Mapping):
        data: Any = dict(source)
    else:
        data = _parse_json(_read_source(source))
    if not isinstance(data, dict):
        raise OutputsError("expected a JSON object of outputs, as `terraform output -json` prints")
    return {name: _unwrap(entry) for name, entry in data.items()}


def _read_source(source: str | Path) -> str:
    if str(source) == "-":
        return sys.stdin.read()
    if isinstance(source, str) and source.lstrip().startswith("{"):
        return source
    path = Path(source)
    # not is_file(): `--outputs <(tofu output -json)` passes a pipe such as /dev/fd/63
    if not path.exists():
        raise OutputsError(f"{path}: no such file (expected `terraform output -json` saved there)")
    if path.is_dir():
        raise OutputsError(f"{path} is a directory, not `terraform output -json` output")
    return path.read_text()


def _parse_json(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise OutputsError(f"not JSON ({exc.msg} at line {exc.lineno})") from None


def _unwrap(entry: Any) -> Any:
    # `terraform output -json` wraps each value as {"value": ..., "type": ..., "sensitive": ...}.
    if (
        isinstance(entry, dict)
        and "value" in entry
        and set(entry) <= {"value", "type", "sensitive"}
    ):
        return entry["value"]
    return entry


def terraform_binary() -> str | None:
    """`tofu` or `terraform`, whichever is on PATH (OpenTofu first)."""
    return shutil.which("tofu") or shutil.which("terraform")


def outputs_from_state(variant: str, root: Path = TERRAFORM_ROOT) -> dict[str, Any]:
    """Run `tofu|terraform output -json` in the variant's directory and load the result."""
    binary = terraform_binary()
    if binary is None:
        raise OutputsError("neither tofu nor terraform is on PATH; pass --outputs FILE instead")
    directory = root / _check_variant(variant)
    done = subprocess.run(
        [binary, "output", "-json", "-no-color"],
        cwd=directory,
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        raise OutputsError(f"{binary} output failed in {directory}: {done.stderr.strip()}")
    outputs = load_outputs(done.stdout)
    if not outputs:
        raise OutputsError(f"{directory} has no outputs: run `{binary} apply` there first")
    return outputs


def bucket_names(outputs: Mapping[str, Any]) -> list[str]:
    """The buckets the outputs name: `bucket_names`, the `<role>_bucket` outputs, or `app_env`."""
    names: list[str] = []
    mapped = outputs.get("bucket_names")
    if isinstance(mapped, Mapping):
        names += [str(v) for v in mapped.values()]
    names += [str(outputs[f"{r}_bucket"]) for r in BUCKET_ROLES if outputs.get(f"{r}_bucket")]
    env = outputs.get("app_env")
    if isinstance(env, Mapping):
        names += [
            str(env[f"{r.upper()}_BUCKET"]) for r in BUCKET_ROLES if env.get(f"{r.upper()}_BUCKET")
        ]
    return list(dict.fromkeys(names))


# --- verification ---------------------------------------------------------------------------


def verify(
    variant: str,
    outputs: Mapping[str, Any],
    s3_client: Any,
    ecr_client: Any = None,
    scheduler_client: Any = None,
    sqs_client: Any = None,
) -> list[Check]:
    """Check with the given boto3 clients that every resource the outputs name exists.

    local: the buckets. aws: the buckets (also private and encrypted), the ECR repositories
    (immutable tags, scan on push), the schedules (enabled) and the ingest queues when deployed.
    """
    hardened = _check_variant(variant) == "aws"
    if hardened and None in (ecr_client, scheduler_client, sqs_client):
        raise ValueError("the aws variant needs ecr_client, scheduler_client and sqs_client")
    names = bucket_names(outputs)
    checks = [c for name in names for c in _bucket_checks(s3_client, name, hardened)]
    if not names:
        checks.append(_missing_output("bucket_names"))
    if hardened:
        checks += _repository_checks(ecr_client, outputs)
        checks += _schedule_checks(scheduler_client, outputs)
        checks += _queue_checks(sqs_client, outputs)
    return checks


def _check_variant(variant: str) -> str:
    if variant not in VARIANTS:
        raise ValueError(f"variant {variant!r}: expected one of {', '.join(VARIANTS)}")
    return variant


def _missing_output(name: str) -> Check:
    return Check(
        "output", name, False, "not in the Terraform outputs (outputs of another variant?)"
    )


def _error(exc: Exception) -> tuple[str, str]:
    """(code, readable reason) of a boto3 failure."""
    if isinstance(exc, ClientError):
        err = exc.response.get("Error", {})
        code = str(err.get("Code", "?"))
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        message = err.get("Message") or ""
        return code, " ".join(str(p) for p in (status, code, message) if p)
    return type(exc).__name__, str(exc)


def _attempt(
    name: str, target: str, call: Callable[[], Check], missing: str = "does not exist"
) -> Check:
    try:
        return call()
    except (ClientError, BotoCoreError) as exc:
        code, reason = _error(exc)
        if code in MISSING_CODES:
            return Check(name, target, False, f"{missing} ({reason})")
        return Check(name, target, False, f"could not check: {reason}")


def _bucket_checks(s3: Any, bucket: str, hardened: bool) -> list[Check]:
    exists = _attempt("bucket", bucket, lambda: _head_bucket(s3, bucket))
    if not exists.ok or not hardened:
        return [exists]
    return [
        exists,
        _attempt(
            "bucket public access",
            bucket,
            lambda: _public_access(s3, bucket),
            missing="no public access block",
        ),
        _attempt("bucket encryption", bucket, lambda: _encryption(s3, bucket)),
    ]


def _head_bucket(s3: Any, bucket: str) -> Check:
    s3.head_bucket(Bucket=bucket)
    return Check("bucket", bucket, True, "exists")


def _public_access(s3: Any, bucket: str) -> Check:
    try:
        config = s3.get_public_access_block(Bucket=bucket)["PublicAccessBlockConfiguration"]
    except ClientError as exc:
        if _error(exc)[0] == "NoSuchPublicAccessBlockConfiguration":
            return Check("bucket public access", bucket, False, "no public access block")
        raise
    open_flags = sorted(flag for flag, on in config.items() if not on)
    if open_flags:
        return Check("bucket public access", bucket, False, f"not blocked: {', '.join(open_flags)}")
    return Check("bucket public access", bucket, True, "all public access blocked")


def _encryption(s3: Any, bucket: str) -> Check:
    try:
        rules = s3.get_bucket_encryption(Bucket=bucket)["ServerSideEncryptionConfiguration"][
            "Rules"
        ]
    except ClientError as exc:
        if _error(exc)[0] == "ServerSideEncryptionConfigurationNotFoundError":
            return Check("bucket encryption", bucket, False, "no default encryption")
        raise
    algorithms = [
        r.get("ApplyServerSideEncryptionByDefault", {}).get("SSEAlgorithm") for r in rules
    ]
    ok = any(a in SSE_ALGORITHMS for a in algorithms)
    detail = f"default encryption {', '.join(str(a) for a in algorithms) or 'none'}"
    return Check("bucket encryption", bucket, ok, detail)


def _named(outputs: Mapping[str, Any], key: str) -> list[str] | None:
    value = outputs.get(key)
    if isinstance(value, Mapping):
        return [str(v) for v in value.values()]
    if isinstance(value, list):
        return [str(v) for v in value]
    return None


def _repository_checks(ecr: Any, outputs: Mapping[str, Any]) -> list[Check]:
    names = _named(outputs, "ecr_repository_names")
    if not names:
        return [_missing_output("ecr_repository_names")]
    return [_attempt("ecr repository", n, partial(_repository, ecr, n)) for n in names]


def _repository(ecr: Any, name: str) -> Check:
    repo = ecr.describe_repositories(repositoryNames=[name])["repositories"][0]
    problems = []
    if repo.get("imageTagMutability") != "IMMUTABLE":
        problems.append(f"tags are {repo.get('imageTagMutability', 'MUTABLE')}, not IMMUTABLE")
    if not repo.get("imageScanningConfiguration", {}).get("scanOnPush"):
        problems.append("scan on push is off")
    if problems:
        return Check("ecr repository", name, False, "; ".join(problems))
    return Check("ecr repository", name, True, f"exists: {repo['repositoryUri']}, immutable tags")


def _schedule_checks(scheduler: Any, outputs: Mapping[str, Any]) -> list[Check]:
    names = _named(outputs, "schedule_names")
    if not names:
        return [_missing_output("schedule_names")]
    group = str(outputs.get("schedule_group") or "default")
    return [
        _attempt("schedule", f"{group}/{n}", partial(_schedule, scheduler, group, n)) for n in names
    ]


def _schedule(scheduler: Any, group: str, name: str) -> Check:
    found = scheduler.get_schedule(Name=name, GroupName=group)
    state = found.get("State", "ENABLED")
    target = found.get("Target", {}).get("Arn", "?")
    detail = f"{state}, {found.get('ScheduleExpression')}, target {target}"
    return Check("schedule", f"{group}/{name}", state == "ENABLED", detail)


def _queue_checks(sqs: Any, outputs: Mapping[str, Any]) -> list[Check]:
    url, dlq_url = outputs.get("sqs_queue_url"), outputs.get("sqs_dlq_url")
    if not url and not dlq_url:
        return [Check("sqs queue", "enable_sqs_ingest", True, "not deployed (optional)")]
    checks = []
    if url:
        expected_arn = outputs.get("sqs_queue_arn")
        checks.append(
            _attempt("sqs queue", url, lambda: _queue(sqs, "sqs queue", url, expected_arn))
        )
    if dlq_url:
        name = "sqs dead-letter queue"
        checks.append(_attempt(name, dlq_url, lambda: _queue(sqs, name, dlq_url)))
    return checks


def _queue(sqs: Any, name: str, url: str, expected_arn: str | None = None) -> Check:
    attrs = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["All"])["Attributes"]
    arn = attrs.get("QueueArn", "?")
    if expected_arn and arn != expected_arn:
        return Check(name, url, False, f"ARN is {arn}, the outputs say {expected_arn}")
    detail = f"exists: {arn}"
    if "RedrivePolicy" in attrs:
        policy = json.loads(attrs["RedrivePolicy"])
        target = str(policy.get("deadLetterTargetArn", "?")).rsplit(":", 1)[-1]
        detail += f", dead letters to {target} after {policy.get('maxReceiveCount')} receives"
    return Check(name, url, True, detail)


# --- reporting and wiring -------------------------------------------------------------------


def summarize(variant: str, checks: Iterable[Check]) -> str:
    """A table a person reads: one line per check, failures marked, a count on top."""
    checks = list(checks)
    passed = sum(c.ok for c in checks)
    verdict = "all passed" if passed == len(checks) else f"{len(checks) - passed} FAILED"
    lines = [f"infra verify ({variant}): {passed}/{len(checks)} checks passed, {verdict}"]
    name_width = max((len(c.name) for c in checks), default=0)
    target_width = min(60, max((len(c.target) for c in checks), default=0))
    for c in checks:
        mark = "ok  " if c.ok else "FAIL"
        lines.append(f"  {mark}  {c.name:<{name_width}}  {c.target:<{target_width}}  {c.detail}")
    return "\n".join(lines)


def clients_for(variant: str, settings: Settings, region: str | None = None) -> dict[str, Any]:
    """boto3 clients for `verify`. local: S3 at the settings' endpoint. aws: AWS S3 (the endpoint
    setting is ignored), ECR, Scheduler and SQS in `region`, with the settings' keys if any, else
    the default credential chain (profile, SSO, instance role)."""
    import boto3

    from pixelpipe.storage.client import make_client

    region = region or settings.aws_region
    key, secret = settings.aws_access_key_id or None, settings.aws_secret_access_key or None
    if _check_variant(variant) == "local":
        return {"s3_client": make_client(settings.s3_endpoint_url, key, secret, region)}
    session = boto3.session.Session(
        aws_access_key_id=key, aws_secret_access_key=secret, region_name=region
    )
    clients = {f"{s}_client": session.client(s) for s in ("ecr", "scheduler", "sqs")}
    return {"s3_client": make_client(None, key, secret, region), **clients}


def verify_deployment(
    variant: str, settings: Settings, outputs_source: str | Path | None = None
) -> list[Check]:
    """`pixelpipe infra verify`: outputs from a file (or the variant's state), then the checks."""
    if outputs_source is None:
        outputs = outputs_from_state(variant)
    else:
        outputs = load_outputs(outputs_source)
    env = outputs.get("app_env")
    env = env if isinstance(env, Mapping) else {}
    endpoint = outputs.get("s3_endpoint") or env.get("S3_ENDPOINT_URL")
    if _check_variant(variant) == "local" and endpoint:
        # the server the outputs name, not whichever one the environment points at
        settings = settings.model_copy(update={"s3_endpoint_url": str(endpoint)})
    return verify(variant, outputs, **clients_for(variant, settings, env.get("AWS_REGION")))
