"""One training attempt: load the model, build TRL's SFTTrainer around it, train, evaluate.

`train_once` returns an `Outcome` (the trainer and what was measured); the OOM back-off
(ftlab.train.oom) calls it again with cheaper settings, and ftlab.train.output writes the folder.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from ftlab.config import TrainRunConfig
from ftlab.env import PeakMemory
from ftlab.errors import FtlabError
from ftlab.models.sources import load_model
from ftlab.paths import Workspace
from ftlab.train.base_quant import base_quant
from ftlab.train.checkpoints import prepare_checkpoint_dir, resume_checkpoint
from ftlab.train.fast_head import compact_fused_head
from ftlab.train.peft_methods import build_peft_config, get_kind, trainable_parameters
from ftlab.train.ranks import barrier
from ftlab.train.settings import cuda_available, report_to, resolve_mixed_precision

log = logging.getLogger(__name__)


@dataclass
class Outcome:
    trainer: Any
    tokenizer: Any
    cfg: TrainRunConfig
    targets: list[str]
    peft_config: Any
    train_metrics: dict
    eval_metrics: dict
    runtime_s: float
    peak_memory: dict
    trainable: dict
    resumed_from: str | None
    tokens: int
    precision: str
    early_stopped: bool = False
    extra: dict = field(default_factory=dict)


def _sft_config(cfg: TrainRunConfig, ckpt_dir: Path, has_eval: bool, precision: str, fmt: str):
    from trl import SFTConfig  # lazy: trl imports torch and transformers

    t = cfg.train
    eval_strategy = "steps" if (has_eval and t.eval_steps) else "no"
    save_steps = t.save_steps
    if t.early_stopping_patience and not save_steps:
        save_steps = t.eval_steps  # the best model is restored from a checkpoint
    kwargs: dict[str, Any] = dict(
        output_dir=str(ckpt_dir),
        learning_rate=t.learning_rate,
        num_train_epochs=t.epochs,
        max_steps=t.max_steps,
        per_device_train_batch_size=t.batch_size,
        per_device_eval_batch_size=t.batch_size,
        gradient_accumulation_steps=t.grad_accum,
        warmup_steps=t.warmup_ratio,
        lr_scheduler_type=t.lr_scheduler,
        weight_decay=t.weight_decay,
        optim=t.optim,
        max_grad_norm=t.max_grad_norm,
        seed=t.seed,
        data_seed=t.seed,
        logging_steps=t.logging_steps,
        logging_first_step=True,
        eval_strategy=eval_strategy,
        eval_steps=t.eval_steps or None,
        save_strategy="steps" if save_steps else "no",
        save_steps=save_steps or 500,
        save_total_limit=t.save_total_limit,
        load_best_model_at_end=bool(t.early_stopping_patience),
        metric_for_best_model="eval_loss" if t.early_stopping_patience else None,
        greater_is_better=False if t.early_stopping_patience else None,
        report_to=report_to(cfg),
        bf16=precision == "bf16",
        fp16=precision == "fp16",
        use_cpu=not cuda_available(),
        # Recomputing activations costs a third more compute per step; only on when asked.
        gradient_checkpointing=t.gradient_checkpointing,
        max_length=cfg.data.max_length,
        packing=t.packing,
        padding_free=t.padding_free,
        completion_only_loss=t.completion_only_loss if fmt == "prompt-completion" else None,
        train_sampling_strategy="group_by_length" if (t.group_by_length and not t.packing) else "random",
        dataset_num_proc=None,
        disable_tqdm=False,
        save_only_model=False,
        dataloader_num_workers=0,
    )
    if t.padding_free and not t.packing:
        # TRL refuses max_length here (it cannot truncate flattened rows); _drop_overlong enforces it.
        kwargs["max_length"] = None
    if t.gradient_checkpointing:
        kwargs["gradient_checkpointing_kwargs"] = {"use_reentrant": False}
    if not cuda_available():
        import torch.distributed as dist  # lazy: torch takes 3.3 s to import

        if int(os.environ.get("WORLD_SIZE", "1")) > 1 and (not dist.is_available() or dist.is_gloo_available()):
            kwargs["ddp_backend"] = "gloo"
    return SFTConfig(**kwargs)


def _datasets(data, tokenizer, cfg: TrainRunConfig):
    from datasets import Dataset  # lazy: datasets takes 2.3 s

    train_rows, val_rows, fmt = data.train_rows, data.val_rows, data.format
    if fmt == "prompt-completion" and not getattr(tokenizer, "chat_template", None):
        # No chat template (raw base model): the same plain transcript evaluation uses.
        from ftlab.data.prompts import render_prompt  # lazy: ftlab.data.prompts imports numpy

        def flat(row):
            return {"prompt": render_prompt(tokenizer, row["prompt"]),
                    "completion": " " + row["completion"][0]["content"]}

        train_rows, val_rows = [flat(r) for r in train_rows], [flat(r) for r in val_rows]
    train = Dataset.from_list(train_rows)
    val = Dataset.from_list(val_rows) if val_rows else None
    return train, val


def train_once(cfg: TrainRunConfig, source, data, ckpt_dir: Path, workspace: Workspace,
                callbacks: Sequence[Any], is_main: bool) -> Outcome:
    from transformers import EarlyStoppingCallback  # lazy: transformers takes 1.3 s (and torch)
    from transformers.trainer_callback import ProgressCallback  # lazy: transformers takes 1.3 s (and torch)
    from trl import SFTTrainer  # lazy: trl imports torch and transformers

    from ftlab.train.callbacks import LossProgressCallback, add_perplexity  # lazy: ftlab.train.callbacks imports transformers

    precision = resolve_mixed_precision(cfg.train.mixed_precision)
    quant = base_quant(cfg)
    model, tokenizer, _ = load_model(
        source, workspace=workspace, dtype=quant.model_dtype(cfg), quantization_config=quant.load_config(quant.spec(cfg)),
        trust_remote_code=cfg.model.trust_remote_code, revision=cfg.model.revision, seed=cfg.train.seed,
        attn_implementation=cfg.model.attn_implementation,
    )
    peft_config, targets = build_peft_config(cfg.peft, model)
    train_ds, eval_ds = _datasets(data, tokenizer, cfg)
    if cfg.train.padding_free and not cfg.train.packing:
        train_ds, eval_ds = _drop_overlong(train_ds, eval_ds, tokenizer, cfg)

    resume = resume_checkpoint(cfg, ckpt_dir, is_main)
    if is_main:
        prepare_checkpoint_dir(cfg, ckpt_dir, resume)
    barrier()
    args = _sft_config(cfg, ckpt_dir, eval_ds is not None, precision, data.format)

    class FtlabSFTTrainer(SFTTrainer):
        def log(self, logs, start_time=None):
            super().log(add_perplexity(logs), start_time)

    cbs = list(callbacks)
    if cfg.train.early_stopping_patience:
        cbs.append(EarlyStoppingCallback(early_stopping_patience=cfg.train.early_stopping_patience))
    trainer = FtlabSFTTrainer(model=model, args=args, train_dataset=train_ds, eval_dataset=eval_ds,
                              processing_class=tokenizer, peft_config=peft_config, callbacks=cbs)
    get_kind(cfg.peft.method).after_trainer(trainer.model, ckpt_dir, is_main)  # e.g. VeRA dtypes, PiSSA's initial adapter
    head = "trl"
    if not cuda_available():  # TRL already scores only labelled positions on Triton (GPU) devices

        base = trainer.model.get_base_model() if hasattr(trainer.model, "get_base_model") else trainer.model
        head = "compact" if compact_fused_head(base) else "trl"
    attention = choose_attention(trainer, cfg)
    quantized_layers = quant.quantized_layers(trainer.model)
    # Swap the stock bar for one that also shows the loss (removal matches subclasses too, so
    # the stock one goes first).
    trainer.remove_callback(ProgressCallback)
    trainer.add_callback(LossProgressCallback())
    trainable = trainable_parameters(trainer.model)
    log.info("trainable parameters: %d of %d (%.3f%%)", trainable["trainable"], trainable["total"],
             100 * trainable["share"])

    with PeakMemory() as mem:
        start, cpu_start = time.perf_counter(), time.process_time()
        result = trainer.train(resume_from_checkpoint=resume)
        runtime = time.perf_counter() - start
        cpu_time = time.process_time() - cpu_start
        eval_metrics = trainer.evaluate() if eval_ds is not None else {}
    tokens = int(getattr(trainer, "_total_train_tokens", 0) or trainer.state.num_input_tokens_seen or 0)
    train_metrics = dict(result.metrics)
    early = bool(cfg.train.early_stopping_patience) and trainer.state.global_step < trainer.state.max_steps
    return Outcome(trainer, tokenizer, cfg, targets, peft_config, train_metrics, add_perplexity(dict(eval_metrics)),
                   runtime, mem.as_dict(), trainable, resume, tokens, precision, early,
                   extra={"cpu_time_s": round(cpu_time, 3), "quantized_linear_layers": quantized_layers,
                          "lm_head_scoring": head,
                          "attn_implementation": attention})


EAGER_ATTENTION_BUDGET_BYTES = 1 << 30


def choose_attention(trainer, cfg: TrainRunConfig) -> str:
    """Attention kernel for this run. Asked for explicitly: kept. On CPU with short rows: eager.

    PyTorch's CPU flash-attention backward is slow on short sequences (measured on SmolLM2-135M,
    ~75-token rows: eager makes the whole LoRA step 20% faster), but eager keeps every layer's
    batch x heads x L x L probabilities for backward, so it is only chosen when that fits in
    EAGER_ATTENTION_BUDGET_BYTES for the longest training row."""
    base = trainer.model.get_base_model() if hasattr(trainer.model, "get_base_model") else trainer.model
    current = getattr(base.config, "_attn_implementation", None) or "sdpa"
    if cfg.model.attn_implementation or cuda_available() or current == "eager" or not hasattr(base, "set_attn_implementation"):
        return current
    lengths = trainer.train_dataset["input_ids"] if "input_ids" in trainer.train_dataset.column_names else None
    if not lengths:
        return current
    if cfg.train.padding_free or cfg.train.packing:
        longest = cfg.data.max_length * (1 if cfg.train.packing else cfg.train.batch_size)
        rows = 1
    else:
        longest, rows = max(len(x) for x in lengths), cfg.train.batch_size
    text = base.config.get_text_config()
    heads = getattr(text, "num_attention_heads", 0) or 0
    layers = getattr(text, "num_hidden_layers", 0) or 0
    estimate = rows * heads * longest * longest * 4 * 2 * layers  # fp32 probabilities + their dropout mask
    if not heads or not layers or estimate > EAGER_ATTENTION_BUDGET_BYTES:
        return current
    try:
        base.set_attn_implementation("eager")
    except (ValueError, ImportError) as exc:
        log.debug("cannot switch to eager attention: %s", exc)
        return current
    return "eager"


def _drop_overlong(train_ds, eval_ds, tokenizer, cfg: TrainRunConfig):
    """Padding-free without packing: TRL cannot truncate there, so rows longer than max_length are
    dropped up front (with a warning) rather than silently trained at full length."""
    limit = cfg.data.max_length

    def fits(row) -> bool:
        if "text" in row:
            text = row["text"]
        elif isinstance(row["prompt"], list):
            text = tokenizer.apply_chat_template(row["prompt"] + row["completion"], tokenize=False)
        else:
            text = row["prompt"] + row["completion"]
        return len(tokenizer(text, add_special_tokens=False)["input_ids"]) < limit

    n = len(train_ds)
    train_ds = train_ds.filter(fits)
    if len(train_ds) < n:
        log.warning("padding_free: %d of %d training rows exceed data.max_length=%d and were dropped",
                    n - len(train_ds), n, limit)
    if not len(train_ds):
        raise FtlabError(f"every training row is longer than data.max_length={limit}; raise it")
    if eval_ds is not None:
        eval_ds = eval_ds.filter(fits)
        eval_ds = eval_ds if len(eval_ds) else None
    return train_ds, eval_ds
