"""Settings a training run resolves before anything loads: precision, loggers, names.

`auto` dtypes follow ftlab's one dtype rule (ftlab.dtypes): the `compute` role for mixed precision.
The training-time base quantization (QLoRA) is a definition of `ftlab/train/base_quant.py`.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

from ftlab.config import TrainRunConfig
from ftlab.dtypes import auto_dtype
from ftlab.errors import FtlabError
from ftlab.kinds.peft import check_device
from ftlab.kinds.tracking import EXTRA, TRACKER_NAMES
from ftlab.naming import build_run_name, output_folder, peft_tag
from ftlab.paths import Workspace
from ftlab.tracking.mlflow_tracker import local_store
from ftlab.train.base_quant import quantization_spec

REPORTERS = {"tensorboard": "tensorboard", "wandb": "wandb", "mlflow": "mlflow"}


def cuda_available() -> bool:
    import torch  # lazy: torch takes 3.3 s to import

    return torch.cuda.is_available()


def resolve_mixed_precision(value: str) -> str:
    """`auto` -> the compute dtype rule (bf16 on bf16 GPUs and native-bf16 CPUs, fp16 on older GPUs,
    else no mixed precision)."""

    if value == "auto":
        return {"fp32": "no"}.get(auto_dtype("compute"), auto_dtype("compute"))
    if value == "fp16" and not cuda_available():
        raise FtlabError("train.mixed_precision=fp16 needs a CUDA GPU; use bf16 or no on CPU")
    return value


def report_to(cfg: TrainRunConfig) -> list[str]:
    names = [n.strip().lower() for n in cfg.train.report_to if n.strip()]
    if names in ([], ["none"]):
        return []
    out = []
    for n in names:
        if n not in REPORTERS:
            raise FtlabError(f"train.report_to has {n!r}; valid: tensorboard, wandb, mlflow, none")
        if importlib.util.find_spec(REPORTERS[n]) is None:
            install = f"pip install 'ftlab[{EXTRA}]' (or uv sync --extra {EXTRA})" if n in TRACKER_NAMES else f"pip install {n}"
            raise FtlabError(f"train.report_to includes {n} but the {n} package is not installed; "
                             f"{install}, or drop it from train.report_to")
        out.append(n)
    return out


def run_name(cfg: TrainRunConfig, base_name: str) -> str:
    tag = quantization_spec(cfg).tag
    if cfg.data.dataset is None:
        return build_run_name(base_name, None, quant_tag=tag).render()
    return build_run_name(base_name, cfg.data.dataset, cfg.train.method, peft_tag(cfg.peft.method, cfg.peft.r),
                          tag).render()


def final_dir_for(cfg: TrainRunConfig, workspace: Workspace, name: str) -> Path:
    if cfg.train.output_dir:
        return output_folder(cfg.train.output_dir, workspace.models_dir, "train.output_dir")
    return workspace.models_dir / name


def check_can_run(cfg: TrainRunConfig, workspace: Workspace, name: str) -> Path:
    """The output folder, after the checks that need this machine but no model: the PEFT kind's
    device, the loggers, an existing folder."""

    check_device(cfg.peft.method, cuda_available())
    if "mlflow" in report_to(cfg) and not os.environ.get("MLFLOW_TRACKING_URI"):  # (fails on a missing logger)
        # transformers' MLflow callback writes where MLFLOW_TRACKING_URI says; unset, the workspace's
        # store (the one `--track mlflow` fills) rather than a ./mlruns folder MLflow 3 refuses.
        workspace.tracking_dir.mkdir(parents=True, exist_ok=True)
        os.environ["MLFLOW_TRACKING_URI"] = local_store(workspace)
    final_dir = final_dir_for(cfg, workspace, name)
    if final_dir.exists() and not cfg.train.overwrite:
        raise FtlabError(f"output folder {final_dir} already exists; set train.overwrite=true to replace it")
    return final_dir
