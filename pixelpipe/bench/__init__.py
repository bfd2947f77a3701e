"""Benchmarks (PT1, PT2, stage 1, serving) with CSV, plots and uploads."""
