"""What a user sees while gptqmodel quantizes or loads a GPTQ/AWQ folder: ftlab's lines and one bar.

gptqmodel prints its import banner, loader notes, generation_config dumps, per-layer tables and its
own bars (about 3,000 lines for one SmolLM2-135M quantization written to a file). ftlab swallows them
and shows a bar over the decoder layers, driven by gptqmodel's layer-complete callback. A real run is
covered by tests/quant/test_quant_portable.py; here a stand-in gptqmodel package (importable like the real
one, printing like it) makes the console check fast and exact.
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


class _Config:
    num_hidden_layers = 3


class _Wrapped:
    def __init__(self):
        import torch

        self.model = torch.nn.Linear(2, 2)
        self.model.config = _Config()
        self.layer_callback = None

    def quantize(self, texts, tokenizer=None, batch_size=1):
        for i in range(3):
            print(f"INFO  | quantizing layer {i} | table |")
            print(f"Quantizing layer {i} of 2 [bar]", file=sys.stderr)
            self.layer_callback.layer_complete(layer_idx=i, submodule_finalized=False)
            self.layer_callback.layer_complete(layer_idx=i, submodule_finalized=True)

    def save(self, path):
        print("INFO  Saved Quantize Config")
        open(path + "/model.safetensors", "w").close()


class GPTQModel:
    @staticmethod
    def load(path, *args, **kwargs):
        print("INFO  Loader: loading model directly to CPU")
        print("Loading weights: 100%", file=sys.stderr)
        print(f"stand-in load {kwargs.get('backend', 'quantize')}", file=sys.__stdout__, flush=True)
        return _Wrapped()
'''

FAKE_CONFIG = '''
class GPTQConfig:
    def __init__(self, **kwargs):
        self.kwargs = kwargs
'''

DRIVER = '''
import sys
from pathlib import Path
from ftlab import console
console.setup()
from ftlab.quant.registry import QuantJob, get_engine, load_quantized
from ftlab.kinds.quant import QuantizationSpec
folder = Path(sys.argv[1])
spec = QuantizationSpec("GPTQ", bits=4, group_size=32, compute_dtype="bf16")
get_engine("GPTQ").quantize(QuantJob(source_dir=folder, out_dir=folder, spec=spec, tokenizer=None, calib_texts=["a"]))
for method in ("GPTQ", "AWQ"):
    load_quantized(folder, QuantizationSpec(method, bits=4, group_size=32), device_map="cpu")
print("done", flush=True)
'''


def test_gptq_quantize_and_load_show_only_ftlabs_bar(tmp_path):
    fake = tmp_path / "site" / "gptqmodel"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text(textwrap.dedent(FAKE_GPTQMODEL))
    (fake / "quantization").mkdir()
    (fake / "quantization" / "__init__.py").write_text("")
    (fake / "quantization" / "config.py").write_text(textwrap.dedent(FAKE_CONFIG))
    folder = tmp_path / "Models" / "tiny_GPTQ_w4_g32"
    folder.mkdir(parents=True)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join([str(fake.parent), str(REPO)])}
    r = subprocess.run([sys.executable, "-c", DRIVER, str(folder)], capture_output=True, text=True, env=env,
                       cwd=tmp_path, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    # The stand-in did the work (one quantize load, two CPU loads with the torch kernel) ...
    assert r.stdout.splitlines() == ["stand-in load quantize", "stand-in load torch", "stand-in load torch",
                                     "done"], r.stdout
    assert (folder / "model.safetensors").is_file()
    # ... and nothing it printed reached the console: stderr is ftlab's bar alone, one step per layer
    # (the finalizer's second call per layer is not counted).
    states = [s.strip() for s in r.stderr.replace("\r", "\n").splitlines() if s.strip()]
    assert states and all(s.startswith("GPTQ layers:") for s in states), r.stderr
    assert "3/3" in states[-1] and not any("4/3" in s for s in states), states


GGUF_DRIVER = '''
from ftlab import console
console.setup()
from ftlab.models.builtins import BUILTIN_MODELS
from ftlab.models.sources import load_model
load_model(str(BUILTIN_MODELS.get("smollm2-135m-instruct").locate()))
print("done", flush=True)
'''


def test_reading_a_gguf_shows_none_of_transformers_bars(tmp_path):
    """transformers de-quantizing a GGUF draws two bars of its own ("Converting and de-quantizing GGUF
    tensors", "Loading weights"); a local read is silent unless -v (ftlab.models.integrity.quiet_loading)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    r = subprocess.run([sys.executable, "-c", GGUF_DRIVER], capture_output=True, text=True, env=env, cwd=tmp_path,
                       timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.splitlines() == ["done"], r.stdout
    assert "de-quantizing" not in r.stderr and "Loading weights" not in r.stderr, r.stderr[-2000:]
