"""Label Studio on loopback: its own virtual environment, one server process, a personal token.

Label Studio pins Django, numpy and friends differently from pixelpipe, so it lives in a venv of
its own (default `.venv-label-studio/` beside `.venv/`), created on first use with
`pip install label-studio==1.23.2` (about 1 GB, 1-2 minutes from PyPI), plus a migrated empty
database that each new data directory starts from (a fresh migration costs ~50 s of CPU).

Label Studio 1.23 refuses the legacy `Authorization: Token` header unless an organization turns
legacy tokens back on. We keep its default and use personal access tokens: log in once with
the admin's password (a session, as the browser does), create the user's personal access token
(a JWT refresh token, `POST /api/token/`), and exchange it for short-lived access tokens
(`POST /api/token/refresh/`, sent as `Authorization: Bearer`). The personal token is also what
label-studio-sdk takes as `api_key`.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from pixelpipe.devstack.processes import HOST, StackError, alive, pick_ports, stop_pid, wait_http

LABEL_STUDIO_VERSION = "1.23.2"
DEFAULT_VENV = Path(".venv-label-studio")
STATE_FILE = "label-studio.json"
ADMIN_EMAIL = "pixelpipe@example.com"  # Label Studio users are e-mail addresses
DB_NAME = "label_studio.sqlite3"
_STAMP = f".pixelpipe-label-studio-{LABEL_STUDIO_VERSION}"
# label-studio leaves sentry-sdk unbounded and its settings pass `send_default_pii`, which
# sentry-sdk 3 rejects at import time, so the server could not even migrate its database
SENTRY_PIN = "sentry-sdk<3"
# no PyPI request at every start, no usage reports
_QUIET = {"LATEST_VERSION_CHECK": "false", "COLLECT_ANALYTICS": "false"}


class LabelStudioError(StackError):
    """Label Studio could not be installed, started or reached."""


def executable(venv: Path = DEFAULT_VENV) -> Path:
    """The `label-studio` console script of the venv."""
    return Path(venv).resolve() / "bin" / "label-studio"


def template_db(venv: Path = DEFAULT_VENV) -> Path:
    """An empty, fully migrated Label Studio database kept beside the venv."""
    return Path(venv).resolve() / "pixelpipe-template" / DB_NAME


def ensure_installed(venv: Path = DEFAULT_VENV, echo: Callable[[str], None] = print) -> Path:
    """Create the venv, install label-studio and migrate the template database, unless done.

    A new data directory starts from a copy of the template, which Label Studio finds up to
    date, so its start-up skips the migrations.
    """
    venv = Path(venv).resolve()
    log = venv.parent / f"{venv.name}-install.log"
    started = time.monotonic()
    steps = []
    if not ((venv / _STAMP).exists() and executable(venv).exists()):
        # The base interpreter, not ours: the new venv must not see pixelpipe's packages.
        base = getattr(sys, "_base_executable", sys.executable)
        steps += [
            [base, "-m", "venv", str(venv)],
            [str(venv / "bin" / "python"), "-m", "pip", "install", "--disable-pip-version-check",
             "-q", f"label-studio=={LABEL_STUDIO_VERSION}", SENTRY_PIN],
        ]  # fmt: skip
    if not steps and template_db(venv).exists():
        return executable(venv)
    echo(f"installing label-studio=={LABEL_STUDIO_VERSION} into {venv} (log {log}) ...")
    with log.open("a") as out:
        for cmd in steps:
            _run(cmd, out, log, _clean_env())
        (venv / _STAMP).write_text(f"installed in {time.monotonic() - started:.0f}s\n")
        template = template_db(venv).parent
        template.mkdir(exist_ok=True)
        manage = next((venv / "lib").glob("python3*/site-packages/label_studio/manage.py"))
        env = _clean_env({"LABEL_STUDIO_BASE_DATA_DIR": str(template), **_QUIET})
        _run([str(venv / "bin" / "python"), str(manage), "migrate", "--no-color", "-v", "0"],
             out, log, {**env, "SECRET_KEY": secrets.token_urlsafe(40)})  # fmt: skip
    echo(f"label-studio installed in {time.monotonic() - started:.0f}s")
    return executable(venv)


def _run(cmd: list[str], out: Any, log: Path, env: dict[str, str]) -> None:
    done = subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT, env=env)
    if done.returncode != 0:
        tail = log.read_text(errors="replace")[-3000:]
        raise LabelStudioError(f"`{' '.join(cmd)}` exited {done.returncode}; log {log}:\n{tail}")


def _clean_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """Our environment without what would leak pixelpipe's interpreter into Label Studio's."""
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in {"PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "DJANGO_SETTINGS_MODULE"}
    }
    return {**env, **(extra or {})}


@dataclass
class LabelStudioInfo:
    """A running server: where it listens, its admin and that admin's personal access token."""

    url: str
    port: int
    pid: int
    email: str
    password: str
    token: str
    secret_key: str
    data_dir: str


class LabelStudioServer:
    """Start, describe and stop the Label Studio whose data and state live in `data_dir`."""

    def __init__(self, data_dir: Path | str, venv: Path | str = DEFAULT_VENV) -> None:
        self.data_dir = Path(data_dir).resolve()
        self.venv = Path(venv)

    @property
    def state_path(self) -> Path:
        return self.data_dir / STATE_FILE

    @property
    def log_path(self) -> Path:
        return self.data_dir / "label-studio.log"

    def _state(self) -> dict[str, Any]:
        return json.loads(self.state_path.read_text()) if self.state_path.exists() else {}

    def _save(self, state: dict[str, Any]) -> None:
        self.state_path.write_text(json.dumps(state, indent=2))
        self.state_path.chmod(0o600)  # it holds the admin password and token

    def info(self) -> LabelStudioInfo | None:
        """The recorded server if its process is alive and answers /health, else None."""
        state = self._state()
        if not state.get("pid") or not alive(state["pid"]) or not state.get("token"):
            return None
        try:
            httpx.get(f"{state['url']}/health", timeout=5).raise_for_status()
        except httpx.HTTPError:
            return None
        return LabelStudioInfo(**state)

    def start(self, timeout: float = 180.0, echo: Callable[[str], None] = print) -> LabelStudioInfo:
        """Install if needed, start on a free loopback port, wait for /health, get a token."""
        self.launch(echo)
        return self.ready(timeout)

    def launch(self, echo: Callable[[str], None] = print) -> None:
        """Start the server process (installing it first if needed) without waiting for it."""
        if self.info():
            return
        self.stop()
        cli = ensure_installed(self.venv, echo)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        state = self._state()
        # The same secret key on every start keeps the saved personal token valid.
        state.setdefault("secret_key", secrets.token_urlsafe(40))
        state.setdefault("email", ADMIN_EMAIL)
        state.setdefault("password", secrets.token_urlsafe(18))
        (port,) = pick_ports(1, grpc=False)
        cmd = [
            str(cli), "start", "--no-browser", "--port", str(port), "--internal-host", HOST,
            "--username", state["email"], "--password", state["password"],
        ]  # fmt: skip
        env = _clean_env(
            {
                "LABEL_STUDIO_BASE_DATA_DIR": str(self.data_dir),
                "SECRET_KEY": state["secret_key"],
                **_QUIET,
            }
        )
        if not (self.data_dir / DB_NAME).exists():
            shutil.copyfile(template_db(self.venv), self.data_dir / DB_NAME)
        with self.log_path.open("ab") as log:
            proc = subprocess.Popen(
                cmd,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,
                cwd=self.data_dir,
            )
        state.update(
            url=f"http://{HOST}:{port}", port=port, pid=proc.pid, data_dir=str(self.data_dir)
        )
        self._save(state)

    def ready(self, timeout: float = 180.0) -> LabelStudioInfo:
        """Wait until the launched server answers /health, then make sure it has a token."""
        running = self.info()
        if running:
            return running
        state = self._state()
        if not state.get("pid"):
            raise LabelStudioError(f"no Label Studio launched from {self.data_dir}")
        try:
            wait_http(f"{state['url']}/health", timeout, state["pid"], self.log_path)
            self._check_port(state["port"])
            if not state.get("token") or not _token_works(state["url"], state["token"]):
                state["token"] = personal_access_token(
                    state["url"], state["email"], state["password"]
                )
                self._save(state)
        except BaseException:
            self.stop()
            raise
        return LabelStudioInfo(**state)

    def _check_port(self, port: int) -> None:
        # `label-studio start` quietly moves to another port when the asked one is taken.
        marker = f"Starting development server at http://{HOST}:{port}/"
        if marker not in self.log_path.read_text(errors="replace"):
            raise LabelStudioError(f"Label Studio did not bind {HOST}:{port}; see {self.log_path}")

    def stop(self) -> list[int]:
        """Stop exactly the process this data directory started (its data stays)."""
        state = self._state()
        pid = int(state.get("pid") or 0)
        if not pid:
            return []
        stopped = []
        if alive(pid) and str(self.data_dir) == _environ_of(pid).get("LABEL_STUDIO_BASE_DATA_DIR"):
            stop_pid(pid, signal.SIGTERM)
            stopped.append(pid)
        state["pid"] = 0
        self._save(state)
        return stopped


def _environ_of(pid: int) -> dict[str, str]:
    """A process's environment (to be sure a recorded PID is still our server)."""
    try:
        raw = Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return {}
    pairs = (item.split(b"=", 1) for item in raw.split(b"\0") if b"=" in item)
    return {k.decode(errors="replace"): v.decode(errors="replace") for k, v in pairs}


def personal_access_token(url: str, email: str, password: str) -> str:
    """Log in with a session as the browser does, then create the user's personal access token."""
    with httpx.Client(base_url=url, timeout=30) as session:
        session.get("/user/login/").raise_for_status()
        form = {
            "email": email,
            "password": password,
            "csrfmiddlewaretoken": session.cookies.get("csrftoken", ""),
        }
        login = session.post("/user/login/", data=form)
        if login.status_code != 302 or "sessionid" not in session.cookies:
            raise LabelStudioError(f"login as {email} at {url} failed ({login.status_code})")
        created = session.post(
            "/api/token/", headers={"X-CSRFToken": session.cookies.get("csrftoken") or ""}
        )
        if created.status_code == 409:
            raise LabelStudioError(
                f"{email} already has a personal access token that this state file lost; "
                f"revoke it in Label Studio (Account & Settings) or start on a new data dir"
            )
        created.raise_for_status()
        return str(created.json()["token"])


def _token_works(url: str, token: str) -> bool:
    try:
        return httpx.post(f"{url}/api/token/refresh/", json={"refresh": token}).status_code == 200
    except httpx.HTTPError:
        return False


class LabelStudioClient:
    """The few REST calls the human-in-the-loop cycle needs, with Bearer access tokens."""

    def __init__(self, url: str, token: str, timeout: float = 60.0) -> None:
        self.url = url.rstrip("/")
        self.token = token
        self._http = httpx.Client(base_url=self.url, timeout=timeout)
        self._access = ""

    def _refresh(self) -> None:
        resp = self._http.post("/api/token/refresh/", json={"refresh": self.token})
        if resp.status_code != 200:
            raise LabelStudioError(f"token refresh at {self.url} failed: {resp.text[:300]}")
        self._access = resp.json()["access"]

    def request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        """One API call; an expired access token (they live 5 minutes) is renewed once."""
        for attempt in (1, 2):
            if not self._access:
                self._refresh()
            headers = {"Authorization": f"Bearer {self._access}", **kwargs.pop("headers", {})}
            resp = self._http.request(method, path, headers=headers, **kwargs)
            if resp.status_code == 401 and attempt == 1:
                self._access = ""
                continue
            if resp.status_code >= 400:
                raise LabelStudioError(f"{method} {path} -> {resp.status_code}: {resp.text[:500]}")
            return resp
        raise AssertionError("unreachable")

    def create_project(self, title: str, label_config: str) -> dict[str, Any]:
        body = {"title": title, "label_config": label_config}
        return dict(self.request("POST", "/api/projects/", json=body).json())

    def project(self, project_id: int) -> dict[str, Any]:
        return dict(self.request("GET", f"/api/projects/{project_id}/").json())

    def import_tasks(self, project_id: int, tasks: list[dict[str, Any]]) -> dict[str, Any]:
        """Tasks as a Label Studio JSON import (predictions included); returns its counts."""
        return dict(self.request("POST", f"/api/projects/{project_id}/import", json=tasks).json())

    def tasks(self, project_id: int) -> list[dict[str, Any]]:
        """Every task of the project with its predictions and annotations, in id order."""
        out: list[dict[str, Any]] = []
        page = 1
        while True:
            params = {"project": project_id, "fields": "all", "page": page, "page_size": 100}
            body = self.request("GET", "/api/tasks/", params=params).json()
            out += body["tasks"]
            if len(out) >= body["total"] or not body["tasks"]:
                return sorted(out, key=lambda t: t["id"])
            page += 1

    def export(self, project_id: int) -> list[dict[str, Any]]:
        """The project in Label Studio's JSON export format (what "Export > JSON" downloads)."""
        params = {"exportType": "JSON", "download_all_tasks": "true"}
        return list(self.request("GET", f"/api/projects/{project_id}/export", params=params).json())

    def close(self) -> None:
        self._http.close()


if __name__ == "__main__":
    # `python -m pixelpipe.devstack.label_studio install [VENV]`: what `make test` runs first.
    if sys.argv[1:2] != ["install"]:
        sys.exit("usage: python -m pixelpipe.devstack.label_studio install [VENV]")
    try:
        ensure_installed(Path(sys.argv[2]) if len(sys.argv) > 2 else DEFAULT_VENV)
    except LabelStudioError as exc:
        sys.exit(str(exc))
