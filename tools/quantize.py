#!/usr/bin/env python
"""Post-training quantization of a model folder: `tools/quantize.py --model Models/X --method GPTQ`.

Same as `ftlab quantize ...`; run from the repository root (or pass --workdir).
"""

import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("FTLAB_HOME", str(Path(__file__).resolve().parents[1]))

from ftlab.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(["quantize", *sys.argv[1:]]))
