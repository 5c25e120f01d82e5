#!/usr/bin/env python
"""Evaluate every model under Models/ that needs it (metrics missing, incomplete, stale; failed
ones with --retry-failed), each in its own process; safe to kill and re-run at any time.

`Testing/03_EvaluationOrchestrator.py [--dry-run] [--datasets ...] [--limit N] [--batch-size B]
[--config FILE] [--backend local|ray] [key=value ...]` is the same as `ftlab orchestrate ...`.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ftlab.cli import run_entry  # noqa: E402

if __name__ == "__main__":
    sys.exit(run_entry("orchestrate"))
