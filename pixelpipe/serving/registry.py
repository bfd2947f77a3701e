"""Model registry access for serving: resolve an alias or version, download it, promote it."""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

CHAMPION_ALIAS = "champion"
CANDIDATE_ALIAS = "candidate"
CACHE_ENV = "SERVE_MODEL_CACHE"
DEFAULT_CACHE = Path(".pixelpipe/models")
_COMPLETE = ".complete"


class RegistryError(LookupError):
    """A model, version or alias the registry does not have; the message says which."""


@dataclass(frozen=True)
class ModelRef:
    """NAME@ALIAS or NAME/VERSION (a bare NAME means NAME@champion)."""

    name: str
    alias: str | None = None
    version: str | None = None

    def __str__(self) -> str:
        return f"{self.name}/{self.version}" if self.version else f"{self.name}@{self.alias}"

    @property
    def uri(self) -> str:
        return f"models:/{self}"


def parse_ref(text: str) -> ModelRef:
    """'name@alias', 'name/3', 'models:/name@alias' or 'name' (-> alias champion)."""
    ref = text.strip().removeprefix("models:/")
    if "@" in ref:
        name, alias = ref.rsplit("@", 1)
        if name and alias:
            return ModelRef(name, alias=alias)
    elif "/" in ref:
        name, version = ref.rsplit("/", 1)
        if name and version.isdigit():
            return ModelRef(name, version=version)
    elif ref:
        return ModelRef(ref, alias=CHAMPION_ALIAS)
    raise ValueError(f"model reference {text!r}: expected NAME@ALIAS, NAME/VERSION or NAME")


def _not_found(exc: Exception) -> bool:
    code = getattr(exc, "error_code", "")
    return code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE", "NOT_FOUND")


def _versions(client: Any, name: str) -> list[str]:
    try:
        found = client.search_model_versions(f"name = '{name}'")
    except Exception:  # the listing only decorates an error message
        return []
    return sorted((str(v.version) for v in found), key=int)


def resolve(client: Any, name: str, alias: str) -> Any:
    """The ModelVersion that `alias` (or a plain version number) of model `name` points at."""
    from mlflow.exceptions import MlflowException

    try:
        if alias.isdigit():
            return client.get_model_version(name, alias)
        return client.get_model_version_by_alias(name, alias)
    except MlflowException as exc:
        if not _not_found(exc):
            raise
        known = ", ".join(_versions(client, name)) or "none"
        what = f"version {alias}" if alias.isdigit() else f"alias {alias!r}"
        raise RegistryError(f"model {name!r} has no {what} (versions: {known})") from exc


def resolve_ref(client: Any, ref: ModelRef) -> Any:
    return resolve(client, ref.name, ref.version or ref.alias or CHAMPION_ALIAS)


def cache_root() -> Path:
    return Path(os.environ.get(CACHE_ENV) or DEFAULT_CACHE)


def _safe(part: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]", "_", part)


def download(
    model_version: Any, cache_dir: Path | None = None, tracking_uri: str | None = None
) -> Path:
    """Download a model version's files once into cache_dir/<name>/<version>; returns that dir.

    A version is immutable, so a complete cached copy is reused; a partial one (an interrupted
    download) is replaced because the copy is made in a temp dir and renamed at the end.
    """
    import mlflow.artifacts

    target = (cache_dir or cache_root()) / _safe(model_version.name) / _safe(model_version.version)
    if (target / _COMPLETE).is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".download-", dir=target.parent))
    try:
        source = f"models:/{model_version.name}/{model_version.version}"
        mlflow.artifacts.download_artifacts(
            artifact_uri=source, dst_path=str(staging), tracking_uri=tracking_uri
        )
        (staging / _COMPLETE).write_text(str(model_version.source))
        if target.exists():
            shutil.rmtree(target)
        staging.rename(target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def promote(client: Any, name: str, version: str | None = None) -> str:
    """Point alias 'champion' at `version` (default: the version alias 'candidate' points at)."""
    if version is None:
        try:
            chosen = resolve(client, name, CANDIDATE_ALIAS)
        except RegistryError as exc:
            raise RegistryError(
                f"model {name!r} has no {CANDIDATE_ALIAS!r} version to promote; "
                "train one or pass a version"
            ) from exc
    else:
        if not str(version).isdigit():
            raise RegistryError(f"version must be a number, got {version!r}")
        chosen = resolve(client, name, str(version))
    client.set_registered_model_alias(name, CHAMPION_ALIAS, str(chosen.version))
    return str(chosen.version)
