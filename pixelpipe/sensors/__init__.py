"""Dagster sensors: S3 polling."""
