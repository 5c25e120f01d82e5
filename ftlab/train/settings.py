"""Settings a training run resolves before anything loads: precision, the QLoRA spec, loggers, names.

`auto` dtypes follow ftlab's one dtype rule (ftlab.dtypes): the `compute` role for mixed precision
and QLoRA's matmul dtype.
"""

from __future__ import annotations

from pathlib import Path

from ftlab.config import TrainRunConfig
from ftlab.errors import FtlabError
from ftlab.paths import Workspace

REPORTERS = {"tensorboard": "tensorboard", "wandb": "wandb", "mlflow": "mlflow"}


def cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def resolve_mixed_precision(value: str) -> str:
    """`auto` -> the compute dtype rule (bf16 on bf16 GPUs and native-bf16 CPUs, fp16 on older GPUs,
    else no mixed precision)."""
    from ftlab.dtypes import auto_dtype

    if value == "auto":
        return {"fp32": "no"}.get(auto_dtype("compute"), auto_dtype("compute"))
    if value == "fp16" and not cuda_available():
        raise FtlabError("train.mixed_precision=fp16 needs a CUDA GPU; use bf16 or no on CPU")
    return value


def resolve_compute_dtype(value: str) -> str:
    from ftlab.dtypes import dtype_name

    return dtype_name(value, "compute")


def quantization_spec(cfg: TrainRunConfig):
    from ftlab.quant.spec import QuantizationSpec, QuantMethod

    if cfg.quant.method != "QLORA":
        return QuantizationSpec()
    return QuantizationSpec(
        method=QuantMethod.QLORA, bits=cfg.quant.bits, lm_head_dtype=cfg.quant.lm_head_dtype,
        backend="bitsandbytes", double_quant=cfg.quant.double_quant if cfg.quant.bits == 4 else None,
        compute_dtype=resolve_compute_dtype(cfg.quant.compute_dtype),
        extra={"quant_type": "nf4"} if cfg.quant.bits == 4 else {"quant_type": "llm.int8"},
    )


def bnb_config(cfg: TrainRunConfig):
    if cfg.quant.method != "QLORA":
        return None
    from transformers import BitsAndBytesConfig

    from ftlab.dtypes import torch_dtype

    compute = torch_dtype(cfg.quant.compute_dtype, "compute")
    if cfg.quant.bits == 8:
        return BitsAndBytesConfig(load_in_8bit=True)
    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                              bnb_4bit_use_double_quant=cfg.quant.double_quant, bnb_4bit_compute_dtype=compute)


def model_dtype(cfg: TrainRunConfig) -> str:
    """QLoRA: the unquantized modules (norms, embeddings, head) in the head dtype; else as asked."""
    if cfg.quant.method == "QLORA" and cfg.model.dtype == "auto":
        return cfg.quant.lm_head_dtype or resolve_compute_dtype(cfg.quant.compute_dtype)
    return cfg.model.dtype


def report_to(cfg: TrainRunConfig) -> list[str]:
    import importlib.util

    names = [n.strip().lower() for n in cfg.train.report_to if n.strip()]
    if names in ([], ["none"]):
        return []
    out = []
    for n in names:
        if n not in REPORTERS:
            raise FtlabError(f"train.report_to has {n!r}; valid: tensorboard, wandb, mlflow, none")
        if importlib.util.find_spec(REPORTERS[n]) is None:
            raise FtlabError(f"train.report_to includes {n} but the {n} package is not installed; "
                             f"pip install {n}, or drop it from train.report_to")
        out.append(n)
    return out


def run_name(cfg: TrainRunConfig, base_name: str) -> str:
    from ftlab.naming import build_run_name, peft_tag
    from ftlab.quant.spec import tag_quant

    tag = tag_quant(quantization_spec(cfg))
    if cfg.data.dataset is None:
        return build_run_name(base_name, None, quant_tag=tag).render()
    return build_run_name(base_name, cfg.data.dataset, cfg.train.method, peft_tag(cfg.peft.method, cfg.peft.r),
                          tag).render()


def final_dir_for(cfg: TrainRunConfig, workspace: Workspace, name: str) -> Path:
    if cfg.train.output_dir:
        from ftlab.naming import output_folder

        return output_folder(cfg.train.output_dir, workspace.models_dir, "train.output_dir")
    return workspace.models_dir / name


def check_can_run(cfg: TrainRunConfig, workspace: Workspace, name: str) -> Path:
    """The output folder, after the checks that need this machine but no model: the PEFT kind's
    device, the loggers, an existing folder."""
    from ftlab.train.peft_methods import check_device

    check_device(cfg.peft.method, cuda_available())
    report_to(cfg)  # fail on a missing logger before any weights load
    final_dir = final_dir_for(cfg, workspace, name)
    if final_dir.exists() and not cfg.train.overwrite:
        raise FtlabError(f"output folder {final_dir} already exists; set train.overwrite=true to replace it")
    return final_dir
