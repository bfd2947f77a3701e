"""Dagster assets: thin wiring around the cores."""
