"""Dagster resources: S3 and MLflow clients."""
