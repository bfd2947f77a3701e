"""Embedded S3 + MLflow servers on loopback for a bare machine."""
