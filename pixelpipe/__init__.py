"""pixelpipe: image ML data platform on Dagster."""
