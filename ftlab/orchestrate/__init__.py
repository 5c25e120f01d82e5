"""Crash-safe evaluation sweeps over Models/: `ftlab.orchestrate.sweep.orchestrate(workspace,
EvalOptions(...), SweepSettings(...))`; `discovery` decides which models need evaluating.

The package imports nothing itself, so reading one of its modules does not load the others."""
