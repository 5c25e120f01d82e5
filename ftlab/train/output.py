"""The finished model folder: weights or adapter, tokenizer, config, logs, metadata and card, built
in a staging directory and renamed into place (nothing half-written is ever visible)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from ftlab.config import TrainRunConfig, config_to_dict, save_config
from ftlab.io import atomic_write_json, atomic_write_text, staging_dir
from ftlab.kinds.quant import QuantizationSpec
from ftlab.paths import Workspace
from ftlab.schema import model_metadata, write_model_metadata
from ftlab.train.attempt import Outcome
from ftlab.train.base_quant import base_quant
from ftlab.train.card import model_card
from ftlab.train.peft_methods import get_kind, peft_summary


def _training_args_summary(out: Outcome) -> dict:
    a = out.trainer.args
    t = out.cfg.train
    return {
        "learning_rate": a.learning_rate, "epochs": a.num_train_epochs, "max_steps": a.max_steps,
        "batch_size": a.per_device_train_batch_size, "grad_accum": a.gradient_accumulation_steps,
        "world_size": a.world_size,
        "effective_batch": a.per_device_train_batch_size * a.gradient_accumulation_steps * a.world_size,
        "warmup_ratio": t.warmup_ratio, "lr_scheduler": str(getattr(a.lr_scheduler_type, "value", a.lr_scheduler_type)),
        "weight_decay": a.weight_decay, "optim": str(getattr(a.optim, "value", a.optim)),
        "max_grad_norm": a.max_grad_norm, "mixed_precision": out.precision,
        "gradient_checkpointing": a.gradient_checkpointing, "packing": a.packing, "padding_free": t.padding_free,
        "group_by_length": t.group_by_length and not t.packing, "max_length": out.cfg.data.max_length,
        "completion_only_loss": t.completion_only_loss, "seed": a.seed,
        "attn_implementation": out.extra.get("attn_implementation"),
        "lm_head_scoring": out.extra.get("lm_head_scoring"),
        "eval_steps": t.eval_steps, "save_steps": a.save_steps if a.save_strategy != "no" else 0,
        "early_stopping_patience": t.early_stopping_patience,
    }


def base_model_info(source) -> dict:
    info = source.describe()
    folder = source.definition.model_folder(source)  # a built-in's cached conversion, not just its name
    if folder is not None:
        info["path"] = str(folder)
    return info


def _copy_tensorboard(ckpt_dir: Path, folder: Path) -> None:
    runs = ckpt_dir / "runs"
    if runs.is_dir():
        shutil.copytree(runs, folder / "runs", dirs_exist_ok=True)


def write_folder(out: Outcome, requested: TrainRunConfig, source, data, workspace: Workspace,
                 final_dir: Path, name: str, ckpt_dir: Path, attempts: list[dict]) -> Path:
    """Builds the model folder in a staging directory and renames it into place: weights or adapter
    (saved the way the PEFT kind says), tokenizer, resolved config, logs, metadata, card."""

    cfg = out.cfg
    kind = get_kind(cfg.peft.method)
    quant = base_quant(cfg)
    spec = quant.spec(cfg)
    merge = kind.adapter and cfg.train.merge_after_train
    trainer = out.trainer
    state = trainer.state
    peft = peft_summary(cfg.peft, out.targets)
    with staging_dir(final_dir, overwrite=cfg.train.overwrite) as stage:
        model = trainer.model
        if merge:
            scratch = stage / ".adapter"  # where a merge that reloads the base saves the adapter first
            quant.merge(model, cfg, source, workspace, lambda folder: kind.save(model, folder, ckpt_dir),
                        scratch).save_pretrained(stage)
            shutil.rmtree(scratch, ignore_errors=True)
            if quant.merged_into:
                spec.extra["merged_into"] = quant.merged_into
        else:
            notes = kind.save(model, stage, ckpt_dir)
            if peft is not None:
                peft.update(notes)
        if kind.adapter and not merge:
            _point_adapter_at_base(stage, base_model_info(source))
        out.tokenizer.save_pretrained(stage)
        save_config(cfg, stage / "resolved_config.yaml")
        _copy_tensorboard(ckpt_dir, stage)
        atomic_write_json(stage / "log_history.json", state.log_history)

        train_loss = out.train_metrics.get("train_loss")
        # the training loop alone (Trainer's clock), so tokens/s excludes set-up and saving
        train_runtime = out.train_metrics.get("train_runtime") or out.runtime_s
        losses = [h["loss"] for h in state.log_history if "loss" in h]
        results = {
            "global_step": state.global_step, "max_steps": state.max_steps, "epoch": state.epoch,
            "train_loss": train_loss, "first_logged_loss": losses[0] if losses else None,
            "last_logged_loss": losses[-1] if losses else None,
            "eval_loss": out.eval_metrics.get("eval_loss"), "eval_perplexity": out.eval_metrics.get("eval_perplexity"),
            "best_metric": state.best_metric, "best_checkpoint": state.best_model_checkpoint,
            "early_stopped": out.early_stopped, "runtime_s": round(out.runtime_s, 3),
            "train_runtime_s": train_runtime,
            "tokens": out.tokens, "tokens_per_s": out.tokens / train_runtime if train_runtime else None,
            "peak_memory": out.peak_memory, "trainable_parameters": out.trainable,
            "resumed_from": out.resumed_from, **out.extra,
        }
        meta = model_metadata(
            run_name=name, base_model=base_model_info(source), dataset=data.describe(), method=cfg.train.method,
            peft=peft, adapter_only=kind.adapter and not merge, merged=merge, quantization=spec.to_dict(),
            training_args=_training_args_summary(out), results=results,
            oom_backoff={"attempts": attempts, "final_settings": attempts[-1]["settings"], "changed": len(attempts) > 1},
            requested_config=config_to_dict(requested) if len(attempts) > 1 else None,
        )
        write_model_metadata(stage, meta)
        atomic_write_text(stage / "README.md", model_card(meta))
    return final_dir


def write_snapshot(cfg: TrainRunConfig, model, tokenizer, source, final_dir: Path, name: str) -> Path:
    """The untrained base as a model folder (the evaluation baseline of its fine-tunes)."""

    with staging_dir(final_dir, overwrite=cfg.train.overwrite) as stage:
        model.save_pretrained(stage)
        tokenizer.save_pretrained(stage)
        save_config(cfg, stage / "resolved_config.yaml")
        meta = model_metadata(run_name=name, base_model=base_model_info(source),
                              quantization=QuantizationSpec().to_dict(),
                              results={"parameters": sum(p.numel() for p in model.parameters())})
        write_model_metadata(stage, meta)
        atomic_write_text(stage / "README.md", model_card(meta))
    return final_dir


def _point_adapter_at_base(folder: Path, base: dict) -> None:
    """adapter_config.json names a loadable base (the built-in cache folder, a local path or hub id)
    so plain `AutoModelForCausalLM.from_pretrained(adapter_folder)` works too."""

    path = folder / "adapter_config.json"
    cfg = json.loads(path.read_text())
    cfg["base_model_name_or_path"] = base.get("path") or base.get("ref")
    atomic_write_json(path, cfg)
