#!/usr/bin/env python
"""Run a study: a grid of recipes trained, quantized and evaluated as one crash-safe job graph,
ending in a significance-tested verdict under Testing/studies/<name>/ (see docs/study.md).

`Testing/05_Study.py FILE [--dry-run] [--workers N] [--backend local|ray] [key=value ...]` is the
same as `ftlab study run FILE ...`; `Testing/05_Study.py report FILE` writes the verdict again.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ftlab.cli import run_entry  # noqa: E402

if __name__ == "__main__":
    args = sys.argv[1:]
    sys.exit(run_entry("study", args if args[:1] in (["run"], ["report"]) else ["run", *args]))
