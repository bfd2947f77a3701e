"""One MLflow run on an explicit tracking URI (RunLogger) and the TrackingError it raises."""

from __future__ import annotations

import contextlib
import json
import warnings
from typing import Any

import mlflow
import pandas as pd
import torch
from mlflow.data.pandas_dataset import from_pandas
from mlflow.tracking import MlflowClient

from pixelpipe.training.mlflow_model import (
    PreprocessSpec,
    experiment_id,
    log_pyfunc_model,
    register_candidate,
    tracking_uri,
)


def _param_value(value: Any) -> str:
    text = json.dumps(value) if isinstance(value, list | dict) else str(value)
    return text[:6000]


class TrackingError(RuntimeError):
    """The MLflow server stopped answering during a run; says where, what and what to do."""


class RunLogger:
    """One MLflow run on an explicit tracking URI: params, inputs, epoch metrics, the model.

    Between start() and end() mlflow's fluent API points at this server and this run; end()
    restores the previous tracking/registry URIs.
    """

    def __init__(self, tracking_uri: str, experiment: str, registered_model_name: str) -> None:
        self.tracking_uri = tracking_uri
        self.experiment = experiment
        self.registered_model_name = registered_model_name
        self.client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
        self.run_id = ""
        self.experiment_id = ""
        self._context = contextlib.ExitStack()

    @property
    def run_url(self) -> str:
        return f"{self.tracking_uri}/#/experiments/{self.experiment_id}/runs/{self.run_id}"

    def start(self, run_name: str | None, params: dict[str, Any], tags: dict[str, str]) -> str:
        self.experiment_id = experiment_id(self.client, self.experiment)
        self._context.enter_context(tracking_uri(self.tracking_uri))
        try:
            run = mlflow.start_run(experiment_id=self.experiment_id, run_name=run_name, tags=tags)
        except BaseException:
            self._context.close()
            raise
        self.run_id = run.info.run_id
        mlflow.log_params({k: _param_value(v) for k, v in params.items()})
        return self.run_id

    def log_dataset(self, index_uri: str, index_doc: dict[str, Any], digest: str) -> None:
        """The dataset index as a run input (name, digest, source URI) and as an artifact."""
        frame = pd.DataFrame(
            [
                {
                    "partition": str(p.get("partition")),
                    "coco_uri": str(p.get("coco_uri")),
                    "images": int(p.get("images", 0)),
                    "annotations": int(p.get("annotations", 0)),
                }
                for p in index_doc.get("partitions", [])
            ]
        )
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "source could be interpreted several ways"
            dataset = from_pandas(
                frame,
                source=index_uri,
                name=f"pixelpipe-{index_doc.get('variant')}",
                digest=digest[:36],
            )
            mlflow.log_input(dataset, context="training")
        mlflow.log_dict(index_doc, "dataset/index.json")

    def _failed(self, what: str, exc: BaseException) -> TrackingError:
        reason = str(exc).splitlines()[0][:300] if str(exc) else type(exc).__name__
        return TrackingError(
            f"MLflow at MLFLOW_TRACKING_URI={self.tracking_uri!r} failed while {what} "
            f"(run {self.run_id or 'not started'}): {reason}. Nothing was registered; the run "
            "is retried as a whole once the server answers again"
        )

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        try:
            mlflow.log_metrics({k: float(v) for k, v in metrics.items()}, step=step)
        except Exception as exc:  # any client error here means the server is gone or broken
            raise self._failed(f"logging the metrics of epoch {step}", exc) from exc

    def log_model(
        self,
        model: torch.nn.Module,
        spec: PreprocessSpec,
        example_image: bytes,
        version_tags: dict[str, str],
    ) -> tuple[str, str]:
        """Log the pyfunc model, register it and alias it 'candidate'; (model_uri, version)."""
        try:
            info = log_pyfunc_model(model, spec, example_image)
            version = register_candidate(
                self.client, info.model_uri, self.registered_model_name, version_tags
            )
        except Exception as exc:
            raise self._failed("logging and registering the model", exc) from exc
        return info.model_uri, version

    def end(self, status: str) -> None:
        """End the run as FINISHED or FAILED and restore mlflow's global URIs.

        Marking a run FAILED is best effort: when the server is what failed, the run stays
        RUNNING there and the error that got us here is the one that is raised.
        """
        try:
            if self.run_id:
                mlflow.end_run(status=status)
        except Exception as exc:
            if status == "FINISHED":
                raise self._failed("finishing the run", exc) from exc
            import logging

            logging.getLogger("pixelpipe.training").warning(
                "could not mark MLflow run %s %s: %s", self.run_id, status, exc
            )
            with contextlib.suppress(Exception):
                while mlflow.active_run() is not None:
                    mlflow.tracking.fluent._active_run_stack.get().pop()
        finally:
            self._context.close()
