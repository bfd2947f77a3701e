"""Embedded stack: a SeaweedFS S3 server and an MLflow server on loopback, owned by PID."""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pixelpipe.devstack.processes import (
    GRPC_OFFSET,
    HOST,
    alive,
    bin_path,
    cmdline,
    pick_ports,
    pids_matching,
    port_free,
    stop_pid,
    wait_http,
)
from pixelpipe.settings import Settings

if TYPE_CHECKING:
    from pixelpipe.devstack.label_studio import LabelStudioServer

S3_SERVICES = ("s3", "master", "volume", "filer", "admin")
STATE_FILE = "stack.json"
MAX_VOLUMES = 2000
VOLUME_SIZE_MB = 64
PORTS_FILE = "ports.json"  # kept across restarts: clients of a restarted stack keep working
PORT_WAIT_SECONDS = 15.0
# The instance the daemon and `dagster dev` use on the devstack: one run per batch partition at a
# time, Dagster's run retries for failed batches (RUN_RETRIES is the per-run limit, sent as the
# dagster/max_retries tag), and run monitoring for runs whose process died.
DAGSTER_YAML = """\
telemetry:
  enabled: false
run_coordinator:
  module: dagster
  class: QueuedRunCoordinator
  config:
    max_concurrent_runs: 4
    tag_concurrency_limits:
      - key: pixelpipe/batch
        value: {applyLimitPerUniqueValue: true}
        limit: 1
run_retries:
  enabled: true
  max_retries: 3
  retry_on_asset_or_op_failure: true
run_monitoring:
  enabled: true
  start_timeout_seconds: 180
  poll_interval_seconds: 30
"""


@dataclass
class StackInfo:
    """Where the running stack listens and how to reach it."""

    dir: Path
    s3_port: int
    mlflow_port: int
    access_key: str
    secret_key: str
    s3_pid: int
    mlflow_pid: int

    @property
    def s3_endpoint(self) -> str:
        return f"http://{HOST}:{self.s3_port}"

    @property
    def mlflow_uri(self) -> str:
        return f"http://{HOST}:{self.mlflow_port}"

    def env(self, settings: Settings) -> dict[str, str]:
        """Every variable a client of this stack needs, DAGSTER_HOME included."""
        return {
            "S3_ENDPOINT_URL": self.s3_endpoint,
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "AWS_REGION": settings.aws_region,
            "RAW_BUCKET": settings.raw_bucket,
            "AUGMENTED_BUCKET": settings.augmented_bucket,
            "NORMALIZED_BUCKET": settings.normalized_bucket,
            "ARTIFACTS_BUCKET": settings.artifacts_bucket,
            "MLFLOW_TRACKING_URI": self.mlflow_uri,
            "MLFLOW_S3_ENDPOINT_URL": self.s3_endpoint,
            "DAGSTER_HOME": str((self.dir / "dagster").resolve()),
            "NVME_ROOT": str((self.dir / "nvme").resolve()),
        }


class DevStack:
    """Start, stop and describe the embedded stack whose state lives under `root`."""

    def __init__(self, root: Path | str, settings: Settings | None = None) -> None:
        self.root = Path(root).resolve()
        self.settings = settings or Settings()

    # --- state ---------------------------------------------------------------------------
    @property
    def state_path(self) -> Path:
        return self.root / STATE_FILE

    def _credentials(self) -> tuple[str, str]:
        path = self.root / "credentials.json"
        if path.exists():
            data = json.loads(path.read_text())
            return data["access_key"], data["secret_key"]
        access, secret = "pp" + secrets.token_hex(8), secrets.token_urlsafe(30)
        path.write_text(json.dumps({"access_key": access, "secret_key": secret}))
        path.chmod(0o600)
        return access, secret

    def info(self) -> StackInfo | None:
        """The recorded stack if both of its processes are alive, else None."""
        if not self.state_path.exists():
            return None
        data = json.loads(self.state_path.read_text())
        info = StackInfo(dir=self.root, **data)
        if alive(info.s3_pid) and alive(info.mlflow_pid):
            return info
        return None

    # --- lifecycle -------------------------------------------------------------------------
    def up(self, timeout: float = 90.0) -> StackInfo:
        """Start both servers (a no-op when they already run) and create the buckets."""
        running = self.info()
        if running:
            self._ensure_buckets(running)
            return running
        self.down()  # one half may be alive: stop it so ports and files are ours again
        ports = self._saved_ports()
        for sub in ("s3", "mlflow", "logs", "dagster", "nvme"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        self._write_dagster_yaml()
        access, secret = self._credentials()
        s3_pid, s3_ports = self._start_s3(access, secret, timeout, ports.get("s3"))
        try:
            info = StackInfo(self.root, s3_ports["s3"], 0, access, secret, s3_pid, 0)
            self._ensure_buckets(info)
            mlflow = self._start_mlflow(info, timeout, ports.get("mlflow"))
            info.mlflow_pid, info.mlflow_port = mlflow
        except BaseException:
            stop_pid(s3_pid, signal.SIGINT)
            raise
        state = {k: v for k, v in info.__dict__.items() if k != "dir"}
        self.state_path.write_text(json.dumps(state, indent=2))
        saved = {"s3": s3_ports, "mlflow": info.mlflow_port}
        (self.root / PORTS_FILE).write_text(json.dumps(saved))
        return info

    def _saved_ports(self, wait: float = PORT_WAIT_SECONDS) -> dict[str, object]:
        """The ports of the last start once they are all free again (a process just stopped
        may hold one for a moment); {} after `wait` seconds, or with no saved ports: pick new."""
        path = self.root / PORTS_FILE
        if not path.exists():
            return {}
        saved: dict[str, Any] = json.loads(path.read_text())
        s3 = dict(saved.get("s3") or {})
        wanted = [*s3.values(), *(p + GRPC_OFFSET for p in s3.values()), saved.get("mlflow")]
        if set(s3) != set(S3_SERVICES) or not all(isinstance(p, int) for p in wanted):
            return {}
        deadline = time.monotonic() + wait
        while not all(port_free(p) for p in wanted):
            if time.monotonic() >= deadline:
                return {}
            time.sleep(0.25)
        return saved

    @property
    def label_studio(self) -> LabelStudioServer:
        """The optional Label Studio beside the stack (`devstack up --with-label-studio`)."""
        from pixelpipe.devstack.label_studio import LabelStudioServer

        return LabelStudioServer(self.root / "label-studio")

    def down(self) -> list[int]:
        """Stop exactly the processes this directory started; return their PIDs."""
        stopped: list[int] = self.label_studio.stop()
        if self.state_path.exists():
            data = json.loads(self.state_path.read_text())
            for key, sig in (("mlflow_pid", signal.SIGTERM), ("s3_pid", signal.SIGINT)):
                pid = int(data.get(key) or 0)
                if pid and alive(pid) and str(self.root) in cmdline(pid):
                    stop_pid(pid, sig)
                    stopped.append(pid)
            self.state_path.unlink()
        # a server left behind by a crashed `up` on this directory still holds its files
        for pid in pids_matching(f"-dir={self.root / 's3' / 'data'}"):
            stop_pid(pid, signal.SIGINT)
            stopped.append(pid)
        return stopped

    def status(self) -> dict[str, object]:
        info = self.info()
        if not info:
            return {"running": False, "dir": str(self.root)}
        ls = self.label_studio.info()
        return {
            "running": True,
            "dir": str(self.root),
            "s3": {"endpoint": info.s3_endpoint, "pid": info.s3_pid},
            "mlflow": {"uri": info.mlflow_uri, "pid": info.mlflow_pid},
            "dagster_home": str(self.root / "dagster"),
            "logs": str(self.root / "logs"),
            **({"label_studio": {"url": ls.url, "pid": ls.pid}} if ls else {}),
        }

    # --- servers ---------------------------------------------------------------------------
    def _start_s3(
        self, access: str, secret: str, timeout: float, saved: object = None
    ) -> tuple[int, dict[str, int]]:
        data = self.root / "s3" / "data"
        data.mkdir(parents=True, exist_ok=True)
        # weed mini saves its flags in mini.options and prefers them on the next start;
        # remove it so the ports and config chosen now are the ones in force.
        (data / "mini.options").unlink(missing_ok=True)
        config = self.root / "s3" / "s3.json"
        identity = {
            "name": "pixelpipe",
            "credentials": [{"accessKey": access, "secretKey": secret}],
            "actions": ["Admin", "Read", "Write", "List", "Tagging"],
        }
        config.write_text(json.dumps({"identities": [identity]}))
        config.chmod(0o600)
        ports = dict(saved) if isinstance(saved, dict) else {}
        if not ports:
            ports = dict(zip(S3_SERVICES, pick_ports(len(S3_SERVICES), grpc=True), strict=True))
        cmd = [
            bin_path("weed"), "mini", f"-dir={data}", f"-ip={HOST}", f"-ip.bind={HOST}",
            f"-s3.config={config}", "-master.telemetry=false", "-webdav=false",
            # every bucket takes volumes of its own; by default their number is free disk / 1 GiB,
            # which a test session's many buckets (or a small disk) runs out of
            f"-volume.max={MAX_VOLUMES}", f"-master.volumeSizeLimitMB={VOLUME_SIZE_MB}",
            "-admin.ui=false", "-s3.port.iceberg=0", "-s3.port.lance=0",
            *(f"-{name}.port={port}" for name, port in ports.items()),
        ]  # fmt: skip
        log = self.root / "logs" / "s3.log"
        proc = subprocess.Popen(
            cmd, stdout=log.open("ab"), stderr=subprocess.STDOUT, start_new_session=True
        )
        wait_http(f"http://{HOST}:{ports['s3']}/", timeout, proc.pid, log)
        return proc.pid, ports

    def _start_mlflow(
        self, info: StackInfo, timeout: float, saved: object = None
    ) -> tuple[int, int]:
        (port,) = [saved] if isinstance(saved, int) else pick_ports(1, grpc=False)
        db = self.root / "mlflow" / "mlflow.db"
        cmd = [
            bin_path("mlflow"), "server", "--host", HOST, "--port", str(port), "-w", "1",
            "--backend-store-uri", f"sqlite:///{db}", "--serve-artifacts",
            "--artifacts-destination", f"s3://{self.settings.artifacts_bucket}/mlflow",
        ]  # fmt: skip
        env = {
            **os.environ,
            "MLFLOW_S3_ENDPOINT_URL": info.s3_endpoint,
            "AWS_ACCESS_KEY_ID": info.access_key,
            "AWS_SECRET_ACCESS_KEY": info.secret_key,
            "AWS_DEFAULT_REGION": self.settings.aws_region,
            "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
            "PATH": f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}",
        }
        log = self.root / "logs" / "mlflow.log"
        proc = subprocess.Popen(
            cmd, stdout=log.open("ab"), stderr=subprocess.STDOUT, env=env, start_new_session=True
        )
        wait_http(f"http://{HOST}:{port}/health", timeout, proc.pid, log)
        return proc.pid, port

    def _ensure_buckets(self, info: StackInfo) -> None:
        from pixelpipe.storage.client import make_client

        client = make_client(
            info.s3_endpoint, info.access_key, info.secret_key, self.settings.aws_region
        )
        ensure_buckets(client, bucket_names(self.settings))

    def _write_dagster_yaml(self) -> None:
        (self.root / "dagster" / "dagster.yaml").write_text(DAGSTER_YAML)


def bucket_names(settings: Settings) -> list[str]:
    """The buckets pixelpipe uses, in pipeline order."""
    return [
        settings.raw_bucket,
        settings.augmented_bucket,
        settings.normalized_bucket,
        settings.artifacts_bucket,
    ]


def ensure_buckets(client: Any, names: list[str]) -> None:
    """Create each bucket unless it exists (safe to repeat); client is a boto3 S3 client."""
    existing = {b["Name"] for b in client.list_buckets().get("Buckets", [])}
    for name in names:
        if name not in existing:
            client.create_bucket(Bucket=name)
