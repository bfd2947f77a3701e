"""Dagster IO managers: NVMe staging between S3 and local disk."""
