#!/usr/bin/env python
"""Builds llama.cpp's llama-quantize, llama-simple and llama-perplexity into ftlab's cache
(`~/.cache/ftlab/llama.cpp/<version>/bin`, or under $FTLAB_CACHE), where ftlab finds them.

`python tools/build_llama_cpp.py [--jobs 2] [--if-missing] [--force]`; needs cmake and a C++ compiler
(about 7 CPU-minutes). Reuses a finished build. Same as `python -m ftlab.quant.llama_cpp`;
the logic, the pinned source and the lookup order live in ftlab/quant/llama_cpp.py.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ftlab.quant.llama_cpp import main  # noqa: E402  (stdlib only: runs before the model stack is installed)

if __name__ == "__main__":
    sys.exit(main())
