"""Crash-safe evaluation sweeps over Models/: `orchestrate(workspace, EvalOptions(...), SweepSettings(...))`."""

from ftlab.orchestrate.discovery import EvalOptions, PlanItem, plan_sweep
from ftlab.orchestrate.sweep import Sweep, SweepReport, SweepSettings, orchestrate

__all__ = ["EvalOptions", "PlanItem", "plan_sweep", "Sweep", "SweepReport", "SweepSettings", "orchestrate"]
