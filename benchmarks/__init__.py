"""Reproducible benchmarks of pgtenancy, printed as ratios against a baseline run in the same process."""
