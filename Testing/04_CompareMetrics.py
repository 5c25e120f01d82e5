#!/usr/bin/env python
"""Compare every evaluated model: wide table, Testing/metrics_summary.csv, deltas vs the base
snapshot, paired significance (--pair A B) and charts (--plot DIR).

`Testing/04_CompareMetrics.py [--task T] [--base B] [--peft P] [--quant Q] [--markdown]
[--csv PATH] [--baseline MODEL] [--pair A B] [--plot DIR]` is the same as `ftlab compare ...`.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ftlab.cli import run_entry  # noqa: E402

if __name__ == "__main__":
    sys.exit(run_entry("compare"))
