"""GPTQ and AWQ through gptqmodel (the maintained successor of auto-gptq).

auto-gptq refuses to quantize without CUDA and autoawq does not import with transformers 5, so
both methods use gptqmodel, which quantizes on CPU with its torch kernels.
"""

from __future__ import annotations

import contextlib
import inspect
import logging
import os
import sys
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from ftlab.console import quiet_third_party
from ftlab.dtypes import torch_dtype
from ftlab.errors import FtlabError
from ftlab.kinds.quant import QuantizationSpec
from ftlab.quant.engine_api import Capabilities, QuantEngine, QuantJob, register_engine

log = logging.getLogger(__name__)

# Decoder families gptqmodel ships definitions for that ftlab's loaders also handle.
GPTQMODEL_ARCHITECTURES = ("llama", "mistral", "mixtral", "qwen2", "qwen3", "gemma", "gemma2", "gemma3",
                           "gemma3_text", "phi3", "granite", "olmo2", "starcoder2", "cohere")


@contextlib.contextmanager
def _preserve_env(*names: str):
    # gptqmodel (via tokenicer) points HF_HOME at a temp folder on import unless it is set;
    # the user's cache must stay where it was for every later load in this process.
    saved = {n: os.environ.get(n) for n in names}
    try:
        yield
    finally:
        for n, v in saved.items():
            if v is None:
                os.environ.pop(n, None)
            else:
                os.environ[n] = v


def import_gptqmodel():
    """Imports gptqmodel once with HF_HOME and friends preserved and a CPU worker count that fits."""
    # gptqmodel's thread pool reserves a 2-worker loader pool inside its CPU pool, so fewer than 2
    # CPU workers fails at the first load; more than the cores oversubscribes small machines.
    os.environ.setdefault("GPTQMODEL_CPU_WORKERS", str(max(2, min(4, os.cpu_count() or 2))))
    with _preserve_env("HF_HOME", "HF_HUB_CACHE", "TRANSFORMERS_CACHE", "HF_DATASETS_CACHE"):
        try:
            with quiet_third_party():  # its banner and GIL/environment advice, unless -v
                import gptqmodel  # lazy: gptqmodel takes 16 s
        except ImportError as exc:
            raise FtlabError(f"gptqmodel is not importable ({exc}); install it with `uv sync`") from None
    return gptqmodel


class _GptqModelEngine(QuantEngine):
    config_class_name: str

    def _quantize_config(self, spec: QuantizationSpec):
        from gptqmodel.quantization import config as qconfig  # lazy: gptqmodel takes 16 s

        cls = getattr(qconfig, self.config_class_name)
        # offload_to_disk streams layers through a temp folder: slower and pointless for models
        # that fit in RAM, which is every model this CPU path is meant for.
        return cls(bits=spec.bits, group_size=spec.group_size, offload_to_disk=False)

    def _device(self, device_map: Any) -> str:
        import torch  # lazy: torch takes 3.3 s to import

        if isinstance(device_map, str) and device_map not in ("auto",):
            return device_map
        return "cuda" if torch.cuda.is_available() else "cpu"

    def quantize(self, job: QuantJob) -> None:
        import_gptqmodel()
        from gptqmodel import GPTQModel  # lazy: gptqmodel takes 16 s

        if not job.calib_texts:
            raise FtlabError(f"{self.method.value} needs calibration texts; set --calib-samples to a positive number")
        # gptqmodel prints its loader notes, per-layer tables and its own bars (about 3,000 lines for
        # SmolLM2-135M when the output is a file); ftlab shows one bar over the decoder layers
        # instead, driven by gptqmodel's layer-complete callback. `-v` shows gptqmodel's output.
        with quiet_third_party():
            model = GPTQModel.load(str(job.source_dir), self._quantize_config(job.spec), device=job.device,
                                   dtype=torch_dtype(job.spec.compute_dtype))
        # The bar is made before the output is redirected, so it writes to the real stderr.
        with _LayerProgress(model, f"{self.method.value} layers") as progress, quiet_third_party():
            model.layer_callback = progress
            # Calibration rows are sorted by length inside gptqmodel, so batches pad little; batching
            # cuts the per-row Python overhead of the layer-by-layer forwards several-fold on CPU.
            model.quantize(job.calib_texts, tokenizer=job.tokenizer, batch_size=job.calib_batch_size)
            model.save(str(job.out_dir))
        # gptqmodel's per-layer log is a debugging aid, not part of the model.
        with contextlib.suppress(FileNotFoundError):
            (job.out_dir / "quant_log.csv").unlink()

    def load(self, folder: Path, spec: QuantizationSpec, dtype: Any = None, device_map: Any = None):
        import_gptqmodel()
        from gptqmodel import BACKEND, GPTQModel  # lazy: gptqmodel takes 16 s

        device = self._device(device_map)
        # The torch kernels are the ones with autograd, so LoRA can train on top of the reload;
        # gptqmodel's auto choice on CPU (avx512 kernels) has none.
        backend = BACKEND.TORCH if device == "cpu" else BACKEND.AUTO
        with quiet_third_party():  # its loader notes and generation_config dumps
            wrapped = GPTQModel.load(str(folder), device=device, backend=backend, dtype=torch_dtype(dtype))
        if device == "cpu":
            eager_dequantization(wrapped.model)
        return wrapped.model


class _LayerProgress:
    """A bar over the model's decoder layers, advanced by gptqmodel's `layer_callback` (called with
    `submodule_finalized=False` once per layer when its quantization is done, then `True`, possibly
    from a finalizer thread: only the first kind is counted)."""

    def __init__(self, wrapped, desc: str):
        self.total = _num_layers(wrapped)
        self.desc = desc

    def __enter__(self):
        # sys.stderr as it is now, before gptqmodel's output is redirected; a layer takes a second or
        # more, so every step is drawn (mininterval=0).
        self.bar = tqdm(total=self.total, desc=self.desc, unit="layer", file=sys.stderr, leave=False,
                        dynamic_ncols=True, mininterval=0)
        return self

    def layer_complete(self, layer_idx: int, submodule_finalized: bool) -> None:
        if not submodule_finalized:
            self.bar.update(1)

    def __exit__(self, *exc) -> None:
        self.bar.close()


def _num_layers(wrapped) -> int | None:
    cfg = getattr(getattr(wrapped, "model", None), "config", None)
    cfg = getattr(cfg, "text_config", None) or cfg
    n = getattr(cfg, "num_hidden_layers", None)
    return n if isinstance(n, int) else None


def eager_dequantization(model) -> int:
    """Undoes the `torch.compile` that gptqmodel's CPU torch kernel (`TorchLinear.optimize`) wraps
    around each layer's de-quantization; returns how many layers it changed.

    On CPU the compiled form is slower at every step measured, with the same KL and the same answers
    (SmolLM2-135M GPTQ 4-bit, 2 threads, medians of 2 fresh processes each: benchmarks/ptq.md, "The
    CPU de-quantization kernel"): the first 64-text fidelity pass takes 30.8 s compiled against 5.4 s
    eager, the second 7.5 s against 5.4 s, and answering 100 questions 37.2 s against 11.2 s
    (generation's new shapes recompile). The compiled function is an instance attribute over the
    class's own method, so deleting it restores the eager method."""
    changed = 0
    for module in model.modules():
        fn = vars(module).get("dequantize_weight")
        if fn is not None and hasattr(fn, "_torchdynamo_orig_callable"):
            del module.dequantize_weight
            changed += 1
    return changed


def linear_in_features(config: dict) -> dict[str, int]:
    """Input widths of a decoder's quantized linear layers, from config.json (text config for
    multimodal): q/k/v/gate/up read hidden_size, o_proj heads x head_dim, down_proj intermediate_size."""
    cfg = config.get("text_config") or config
    out = {}
    for key in ("hidden_size", "intermediate_size"):
        if isinstance(cfg.get(key), int):
            out[key] = cfg[key]
    heads, head_dim = cfg.get("num_attention_heads"), cfg.get("head_dim")
    if isinstance(heads, int) and isinstance(head_dim, int) and heads * head_dim != out.get("hidden_size"):
        out["num_attention_heads*head_dim"] = heads * head_dim
    return out


class _GroupedEngine(_GptqModelEngine):
    """GPTQ and AWQ pack groups along each layer's input: the group size must divide every width.
    AWQ's scale search fails mid-run otherwise; a GPTQ folder quantizes but plain transformers
    refuses to load it (`in_features 576 must be divisible by group_size 128`, SmolLM2)."""

    def fitting_group_sizes(self, config: dict) -> list[int]:
        widths = linear_in_features(config).values()
        return [g for g in self.caps.group_sizes if g <= 0 or all(w % g == 0 for w in widths)]

    def default_group_size(self, config: dict | None) -> int | None:
        fits = [g for g in self.fitting_group_sizes(config or {}) if 0 < g <= self.caps.default_group_size]
        return max(fits) if fits else self.caps.default_group_size

    def model_problems(self, spec: QuantizationSpec, config: dict) -> list[str]:
        g = spec.group_size
        if g is None or g <= 0:
            return []
        bad = {k: v for k, v in linear_in_features(config).items() if v % g}
        if not bad:
            return []
        widths = ", ".join(f"{k}={v}" for k, v in bad.items())
        fits = [x for x in self.fitting_group_sizes(config) if x > 0]
        return [f"{self.name} group_size={g} must divide every quantized layer's input width ({widths}) for the "
                f"output to load anywhere; use --group-size {' or '.join(map(str, fits)) if fits else 'another value'}"]


@register_engine
class GptqEngine(_GroupedEngine):
    name = "GPTQ"
    backend = "gptqmodel:torch"
    config_class_name = "GPTQConfig"
    caps = Capabilities(bits=(2, 3, 4, 8), default_bits=4, group_sizes=(-1, 32, 64, 128), default_group_size=128,
                        architectures=GPTQMODEL_ARCHITECTURES, dtypes=("bf16", "fp16"), default_dtype="bf16",
                        needs_calibration=True, dtype_hint="gptqmodel packs and runs GPTQ layers in half precision")


def compute_best_clip_by_matmul(self, w, input_feat, n_grid=20, max_shrink=0.5, n_sample_token=512):
    """gptqmodel's AWQ clipping search with each candidate's outputs computed as one batched matmul
    per group instead of a broadcast multiply-and-sum.

    Same inputs, candidates, error and selection as `AWQProcessor._compute_best_clip` (gptqmodel
    7.x): for every output-channel batch and shrink step, clamp the weights to max_val, quantize
    them, and keep the step whose outputs on up to `n_sample_token` calibration tokens are closest
    to the unquantized ones. The broadcast form materialises a [channels, tokens, in_features]
    product each step; profiled on SmolLM2-135M with 2 threads it took 70% of AWQ's run
    (benchmarks/ptq.md, "AWQ speed"). The matmul gives the same sums up to float rounding.
    """
    import torch  # lazy: torch takes 3.3 s to import

    co, ci = w.shape
    group_size = self.qcfg.group_size if self.qcfg.group_size > 0 else ci
    n_group = ci // group_size
    x = input_feat.reshape(-1, ci)
    x = x[::max(1, x.shape[0] // n_sample_token)].to(w.device)
    xg = x.reshape(x.shape[0], n_group, group_size).permute(1, 0, 2)  # [group, token, gs]
    w4 = w.reshape(co, 1, n_group, group_size)
    oc_batch = 256 if co % 256 == 0 else 64
    assert co % oc_batch == 0
    scratch_clamp = torch.empty_like(w4[:oc_batch])
    scratch_quant = torch.empty_like(scratch_clamp)
    best_all = []
    with torch.inference_mode():
        for start in range(0, co, oc_batch):
            wb = w4[start:start + oc_batch]  # [cb, 1, group, gs]
            org_max = wb.abs().amax(dim=-1, keepdim=True)  # [cb, 1, group, 1]
            org_out = torch.bmm(xg, wb.reshape(-1, n_group, group_size).permute(1, 2, 0))  # [group, token, cb]
            errs, vals = [torch.full_like(org_max, float("inf"))], [org_max]
            for i_s in range(int(max_shrink * n_grid)):
                max_val = org_max * (1 - i_s / n_grid)
                torch.clamp(wb, -max_val, max_val, out=scratch_clamp)
                self._pseudo_quantize_tensor_into(scratch_clamp, scratch_quant, abs_max=max_val)
                cur = torch.bmm(xg, scratch_quant.reshape(-1, n_group, group_size).permute(1, 2, 0))
                err = (cur - org_out).pow_(2).mean(dim=1)  # [group, cb]
                errs.append(err.t().reshape(org_max.shape))
                vals.append(max_val)
            best = torch.stack(errs).nan_to_num(nan=torch.inf).argmin(dim=0)
            best_all.append(torch.gather(torch.stack(vals), 0, best.unsqueeze(0)).squeeze(0))
    return torch.cat(best_all, dim=0).squeeze(1)


@contextlib.contextmanager
def _fast_awq_clip():
    """Swaps in `compute_best_clip_by_matmul` for the run when gptqmodel's method is the one it
    replicates (same name and parameters); otherwise gptqmodel's own code runs unchanged."""

    from gptqmodel.looper import awq_processor  # lazy: gptqmodel takes 16 s

    cls = getattr(awq_processor, "AWQProcessor", None)
    original = getattr(cls, "_compute_best_clip", None)
    expected = ["self", "w", "input_feat", "n_grid", "max_shrink", "n_sample_token"]
    if original is None or list(inspect.signature(original).parameters) != expected:
        log.debug("gptqmodel's AWQ clip search changed; using it as is")
        yield
        return
    cls._compute_best_clip = compute_best_clip_by_matmul
    try:
        yield
    finally:
        cls._compute_best_clip = original


@register_engine
class AwqEngine(_GroupedEngine):
    name = "AWQ"
    backend = "gptqmodel:torch_awq"
    config_class_name = "AWQConfig"
    caps = Capabilities(bits=(4,), default_bits=4, group_sizes=(32, 64, 128), default_group_size=128,
                        architectures=GPTQMODEL_ARCHITECTURES, dtypes=("bf16", "fp16"), default_dtype="bf16",
                        needs_calibration=True,
                        dtype_hint="gptqmodel's torch AWQ kernel needs bf16/fp16 weights; fp32 fails on CPU")

    def quantize(self, job: QuantJob) -> None:
        import_gptqmodel()
        with _fast_awq_clip():
            super().quantize(job)
