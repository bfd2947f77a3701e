"""Dagster resources: the settings, S3 and MLflow clients."""
