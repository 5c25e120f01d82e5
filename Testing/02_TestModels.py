#!/usr/bin/env python
"""Evaluate one model: `Testing/02_TestModels.py MODEL [--datasets ...] [--limit N] [--batch-size B]
[--config FILE] [key=value ...]` writes Testing/metrics/<model>.json (same as `ftlab evaluate`)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ftlab.cli import run_entry  # noqa: E402

if __name__ == "__main__":
    sys.exit(run_entry("evaluate"))
