"""Inference service: Open Inference Protocol v2, /metrics, health."""
