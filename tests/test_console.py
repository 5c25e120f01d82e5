"""What a user sees while a GPTQ/AWQ folder loads on CPU: one line saying the kernel compiles, once.

gptqmodel's CPU torch kernel compiles its de-quantization with torch.compile during the first
forwards of a process (20-80 s measured, benchmarks/ptq.md); silence there looks like a hang. A real
load is covered by tests/test_quant_portable.py; here a stand-in gptqmodel package (importable like
the real one, printing a banner on import) makes the console check fast and exact.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

FAKE_GPTQMODEL = '''
import sys
print("GPT-QModel FAKE BANNER")
print("WARNING: FAKE GIL advice", file=sys.stderr)


class BACKEND:
    TORCH, AUTO = "torch", "auto"


class _Wrapped:
    def __init__(self):
        import torch

        self.model = torch.nn.Linear(2, 2)


class GPTQModel:
    @staticmethod
    def load(path, **kwargs):
        print(f"stand-in load {kwargs['backend']}", file=sys.__stdout__, flush=True)
        return _Wrapped()
'''

DRIVER = '''
import sys
from ftlab import console
console.setup()
from ftlab.quant.registry import load_quantized
from ftlab.quant.spec import QuantizationSpec
folder = sys.argv[1]
for method in ("GPTQ", "GPTQ", "AWQ"):  # three loads in one process: the note is said once
    load_quantized(folder, QuantizationSpec(method, bits=4, group_size=32), device_map="cpu")
print("loaded", flush=True)
'''


def test_gptq_cpu_load_says_once_that_a_kernel_compiles(tmp_path):
    fake = tmp_path / "site" / "gptqmodel"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text(textwrap.dedent(FAKE_GPTQMODEL))
    folder = tmp_path / "Models" / "tiny_GPTQ_w4_g32"
    folder.mkdir(parents=True)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join([str(fake.parent), str(REPO)])}
    r = subprocess.run([sys.executable, "-c", DRIVER, str(folder)], capture_output=True, text=True, env=env,
                       cwd=tmp_path, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    # The stand-in was used for every load, and its import banner and advice did not reach the console.
    assert r.stdout.splitlines() == ["stand-in load torch"] * 3 + ["loaded"], r.stdout
    lines = r.stderr.splitlines()
    assert len(lines) == 1, r.stderr
    assert lines[0].startswith("INFO ftlab.quant.engines.gptq: GPTQ/AWQ on CPU: the first forwards compile")
    assert "torch.compile" in lines[0] and "s on 2 idle cores, up to 80 s on a busy machine" in lines[0]
