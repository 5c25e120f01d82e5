#!/usr/bin/env python
"""Writes Datasets/train-*.parquet and test-*.parquet: `tools/prepare_datasets.py --from ../shared/datasets`.

Same as `ftlab datasets prepare ...`; run from the repository root (or pass --workdir).
"""

import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("FTLAB_HOME", str(Path(__file__).resolve().parents[1]))

from ftlab.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(["datasets", "prepare", *sys.argv[1:]]))
