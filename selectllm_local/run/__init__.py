"""A run directory and its stages: the plan/select pipeline, the store, preflight checks."""
