"""MLflow resource: a small typed wrapper around MlflowClient (no global state)."""

from __future__ import annotations

import dagster as dg
from mlflow.tracking import MlflowClient

from pixelpipe.settings import Settings


class MlflowResource(dg.ConfigurableResource):
    """Tracking server, experiment and registered model name for training and serving."""

    tracking_uri: str
    experiment: str = "pixelpipe"
    registered_model_name: str = "pixelpipe-detector"

    @classmethod
    def from_settings(cls, settings: Settings) -> MlflowResource:
        return cls(
            tracking_uri=settings.mlflow_tracking_uri,
            experiment=settings.mlflow_experiment,
            registered_model_name=settings.registered_model_name,
        )

    def client(self) -> MlflowClient:
        return MlflowClient(tracking_uri=self.tracking_uri)

    def experiment_id(self) -> str:
        """The experiment's id, created on first use."""
        client = self.client()
        found = client.get_experiment_by_name(self.experiment)
        return found.experiment_id if found else client.create_experiment(self.experiment)

    def run_url(self, run_id: str) -> str:
        return f"{self.tracking_uri}/#/experiments/{self.experiment_id()}/runs/{run_id}"
