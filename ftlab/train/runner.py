"""`run_training(cfg, workspace) -> Path`: one fine-tuning / pre-training run into `Models/<run name>/`.

Flow: resolve the model -> name the run -> load and split data -> train with TRL's SFTTrainer
(retrying with cheaper settings on out-of-memory) -> build the model folder in a staging
directory (weights or adapter, tokenizer + chat template, metadata, config, card, TensorBoard
logs) -> rename it into place. Checkpoints live in `Models/.checkpoints/<output folder name>/` so a killed
run resumes from the newest one; they are deleted once the folder is in place.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from ftlab.config import TrainRunConfig, config_to_dict, save_config
from ftlab.errors import FtlabError
from ftlab.paths import Workspace

log = logging.getLogger(__name__)

CHECKPOINTS_DIRNAME = ".checkpoints"
RUN_FINGERPRINT_FILE = "ftlab_run.json"
# Settings that do not change the optimisation; a checkpoint stays valid when only these differ.
_NON_TRAINING_KEYS = {("train", "resume"), ("train", "overwrite"), ("train", "output_dir"), ("train", "report_to"),
                      ("train", "logging_steps"), ("train", "threads"), ("train", "merge_after_train"),
                      ("train", "oom_backoff"), ("train", "max_oom_retries"), ("train", "save_steps"),
                      ("train", "save_total_limit")}
REPORTERS = {"tensorboard": "tensorboard", "wandb": "wandb", "mlflow": "mlflow"}


# --- settings resolution ---------------------------------------------------------------------


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def cpu_has_native_bf16() -> bool:
    """AVX512-BF16 or AMX: bf16 autocast is a speed-up there, elsewhere an emulated slow-down."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def resolve_mixed_precision(value: str) -> str:
    """`auto` -> bf16 (GPU with bf16, or CPU with native bf16), fp16 (older GPU), else no."""
    import torch

    if value == "auto":
        if _cuda():
            return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        return "bf16" if cpu_has_native_bf16() else "no"
    if value == "fp16" and not _cuda():
        raise FtlabError("train.mixed_precision=fp16 needs a CUDA GPU; use bf16 or no on CPU")
    return value


def resolve_compute_dtype(value: str) -> str:
    from ftlab.env import cpu_supports_bf16

    if value != "auto":
        return value
    if _cuda():
        import torch

        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return "bf16" if cpu_supports_bf16() else "fp32"


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

    from ftlab.models.sources import resolve_dtype

    compute = resolve_dtype(resolve_compute_dtype(cfg.quant.compute_dtype))
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


def check_combination(cfg: TrainRunConfig, source) -> None:
    """Cross-field problems the config dataclasses cannot see (they need the resolved model)."""
    problems = []
    if cfg.train.method == "PT" and source.kind == "scratch" and cfg.peft.method != "NoPeft":
        problems.append(f"train.method=PT on {source.ref} trains every weight of a random model; "
                        f"set peft.method=NoPeft (an adapter on random weights learns nothing useful)")
    if cfg.train.early_stopping_patience and not cfg.train.eval_steps:
        problems.append("train.early_stopping_patience needs train.eval_steps > 0 (it counts evaluations)")
    if cfg.train.early_stopping_patience and not cfg.data.val_size:
        problems.append("train.early_stopping_patience needs a held-out split: set data.val_size > 0")
    if cfg.train.eval_steps and not cfg.data.val_size:
        problems.append("train.eval_steps > 0 needs a held-out split: set data.val_size > 0")
    if (cfg.train.early_stopping_patience and cfg.train.save_steps
            and cfg.train.save_steps % cfg.train.eval_steps):
        problems.append(f"train.save_steps={cfg.train.save_steps} must be a multiple of train.eval_steps="
                        f"{cfg.train.eval_steps} with early stopping (the best checkpoint is restored)")
    if not 0 <= cfg.train.warmup_ratio < 1:
        problems.append(f"train.warmup_ratio={cfg.train.warmup_ratio} must be in [0, 1) (a share of the steps)")
    if problems:
        from ftlab.errors import ConfigError

        raise ConfigError(problems)


def final_dir_for(cfg: TrainRunConfig, workspace: Workspace, name: str) -> Path:
    if cfg.train.output_dir:
        from ftlab.naming import output_folder

        return output_folder(cfg.train.output_dir, workspace.models_dir, "train.output_dir")
    return workspace.models_dir / name


def checkpoint_dir_for(workspace: Workspace, name: str) -> Path:
    return workspace.models_dir / CHECKPOINTS_DIRNAME / name


def training_fingerprint(cfg: TrainRunConfig) -> str:
    d = config_to_dict(cfg)
    for section, key in _NON_TRAINING_KEYS:
        d.get(section, {}).pop(key, None)
    return hashlib.sha256(json.dumps(d, sort_keys=True, default=str).encode()).hexdigest()[:16]


# --- checkpoints -----------------------------------------------------------------------------


def resume_checkpoint(cfg: TrainRunConfig, ckpt_dir: Path, is_main: bool) -> str | None:
    """The checkpoint to resume from (`train.resume`), after checking it belongs to this config."""
    mode = cfg.train.resume
    if mode == "never":
        return None
    if mode != "auto":
        path = Path(mode).expanduser()
        if not (path / "trainer_state.json").is_file():
            raise FtlabError(f"train.resume={mode} is not a checkpoint folder (no trainer_state.json); "
                             "use auto, never or a checkpoint-<step> folder")
        return str(path)
    if not ckpt_dir.is_dir():
        return None
    fp_file = ckpt_dir / RUN_FINGERPRINT_FILE
    expected = training_fingerprint(cfg)
    try:
        found = json.loads(fp_file.read_text()).get("fingerprint")
    except (OSError, ValueError):
        found = None
    if found != expected:
        if is_main and any(ckpt_dir.glob("checkpoint-*")):
            log.warning("checkpoints in %s come from different settings; starting from scratch", ckpt_dir)
        return None
    last = newest_complete_checkpoint(ckpt_dir)
    if last:
        log.info("resuming from %s", last)
    return last


def newest_complete_checkpoint(ckpt_dir: Path) -> str | None:
    """Trainer writes trainer_state.json last, so a checkpoint without a readable one was cut
    short by the crash; fall back to the one before it."""
    found = []
    for path in ckpt_dir.glob("checkpoint-*"):
        step = path.name.split("-", 1)[1]
        if path.is_dir() and step.isdigit():
            found.append((int(step), path))
    for _, path in sorted(found, reverse=True):
        try:
            json.loads((path / "trainer_state.json").read_text())
            return str(path)
        except (OSError, ValueError):
            log.warning("skipping incomplete checkpoint %s", path)
    return None


def prepare_checkpoint_dir(cfg: TrainRunConfig, ckpt_dir: Path, resume: str | None) -> None:
    from ftlab.io import atomic_write_json

    if resume is None and ckpt_dir.exists():
        shutil.rmtree(ckpt_dir, ignore_errors=True)  # stale checkpoints of other settings or 'never'
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_json(ckpt_dir / RUN_FINGERPRINT_FILE, {"fingerprint": training_fingerprint(cfg),
                                                        "config": config_to_dict(cfg)})


# --- one training attempt --------------------------------------------------------------------


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
    from trl import SFTConfig

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
        use_cpu=not _cuda(),
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
    if not _cuda():
        import torch.distributed as dist

        if int(os.environ.get("WORLD_SIZE", "1")) > 1 and (not dist.is_available() or dist.is_gloo_available()):
            kwargs["ddp_backend"] = "gloo"
    return SFTConfig(**kwargs)


def _datasets(data, tokenizer, cfg: TrainRunConfig):
    from datasets import Dataset

    train_rows, val_rows, fmt = data.train_rows, data.val_rows, data.format
    if fmt == "prompt-completion" and not getattr(tokenizer, "chat_template", None):
        # No chat template (raw base model): the same plain transcript evaluation uses.
        from ftlab.data.prompts import render_prompt

        def flat(row):
            return {"prompt": render_prompt(tokenizer, row["prompt"]),
                    "completion": " " + row["completion"][0]["content"]}

        train_rows, val_rows = [flat(r) for r in train_rows], [flat(r) for r in val_rows]
    train = Dataset.from_list(train_rows)
    val = Dataset.from_list(val_rows) if val_rows else None
    return train, val


def _train_once(cfg: TrainRunConfig, source, data, ckpt_dir: Path, workspace: Workspace,
                callbacks: Sequence[Any], is_main: bool) -> Outcome:
    from transformers import EarlyStoppingCallback
    from transformers.trainer_callback import ProgressCallback
    from trl import SFTTrainer

    from ftlab.env import PeakMemory
    from ftlab.models.sources import load_model
    from ftlab.train.callbacks import LossProgressCallback, add_perplexity
    from ftlab.train.peft_methods import build_peft_config, trainable_parameters

    precision = resolve_mixed_precision(cfg.train.mixed_precision)
    model, tokenizer, _ = load_model(
        source, workspace=workspace, dtype=model_dtype(cfg), quantization_config=bnb_config(cfg),
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
    _barrier()
    args = _sft_config(cfg, ckpt_dir, eval_ds is not None, precision, data.format)

    class FtlabSFTTrainer(SFTTrainer):
        def log(self, logs, start_time=None):
            super().log(add_perplexity(logs), start_time)

    cbs = list(callbacks)
    if cfg.train.early_stopping_patience:
        cbs.append(EarlyStoppingCallback(early_stopping_patience=cfg.train.early_stopping_patience))
    trainer = FtlabSFTTrainer(model=model, args=args, train_dataset=train_ds, eval_dataset=eval_ds,
                              processing_class=tokenizer, peft_config=peft_config, callbacks=cbs)
    _align_vera_projections(trainer.model)
    head = "trl"
    if not _cuda():  # TRL already scores only labelled positions on Triton (GPU) devices
        from ftlab.train.fast_head import compact_fused_head

        base = trainer.model.get_base_model() if hasattr(trainer.model, "get_base_model") else trainer.model
        head = "compact" if compact_fused_head(base) else "trl"
    attention = choose_attention(trainer, cfg)
    quantized_layers = sum(type(m).__module__.startswith("bitsandbytes") and type(m).__name__ in
                           ("Linear4bit", "Linear8bitLt") for m in trainer.model.modules())
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
    if cfg.model.attn_implementation or _cuda() or current == "eager" or not hasattr(base, "set_attn_implementation"):
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


def _align_vera_projections(model) -> None:
    """TRL casts QLoRA's trainable adapter weights to bf16 but VeRA's frozen shared projections
    are buffers it does not touch; matmuls between the two then fail on dtype. Bring the
    projections to the dtype of VeRA's scaling vectors."""
    dtype = next((p.dtype for n, p in model.named_parameters() if "vera_lambda" in n), None)
    if dtype is None:
        return
    seen: set[int] = set()
    for module in model.modules():
        for attr in ("vera_A", "vera_B"):
            buffers = getattr(module, attr, None)
            if buffers is None or id(buffers) in seen or not hasattr(buffers, "keys"):
                continue
            seen.add(id(buffers))
            for key in list(buffers.keys()):
                if buffers[key].dtype != dtype:
                    buffers[key] = buffers[key].to(dtype)


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


def _barrier() -> None:
    from accelerate import PartialState

    state = PartialState()
    if state.num_processes > 1:
        state.wait_for_everyone()


def _is_main() -> bool:
    # torchrun / `accelerate launch` always set RANK; asked before the trainer set up the process
    # group, PartialState sometimes answered True on rank 1 too, and both ranks wrote the folder.
    rank = os.environ.get("RANK")
    if rank is not None:
        return int(rank) == 0
    from accelerate import PartialState

    return PartialState().is_main_process


# --- writing the folder ----------------------------------------------------------------------


def _dequantized_merge(cfg: TrainRunConfig, source, workspace: Workspace, adapter_dir: Path):
    """QLoRA merge: the adapter goes into the same 4/8-bit base it trained against, de-quantised
    to the compute dtype, so the merged weights reproduce the trained model."""
    from peft import PeftModel

    from ftlab.models.sources import load_model, resolve_dtype
    from ftlab.train.compat import ensure_peft_usable

    ensure_peft_usable()
    base, _, _ = load_model(source, workspace=workspace, dtype=model_dtype(cfg), quantization_config=bnb_config(cfg),
                            trust_remote_code=cfg.model.trust_remote_code, revision=cfg.model.revision,
                            seed=cfg.train.seed)
    base = base.dequantize(dtype=resolve_dtype(resolve_compute_dtype(cfg.quant.compute_dtype)))
    merged = PeftModel.from_pretrained(base, str(adapter_dir)).merge_and_unload()
    return merged


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


def _peft_summary(out: Outcome) -> dict | None:
    p = out.cfg.peft
    if p.method == "NoPeft":
        return None
    from ftlab.train.peft_methods import lora_alpha

    d = {"method": p.method, "r": p.r, "target_modules": out.targets, "dropout": p.dropout,
         "requested_target_modules": list(p.target_modules)}
    if p.method == "VeRa":
        d.update(d_initial=p.vera_d_initial, prng_key=p.vera_prng_key, alpha=None)
    else:
        d.update(alpha=lora_alpha(p), use_rslora=p.method == "rsLoRa", use_dora=p.method == "DoRa",
                 scaling=lora_alpha(p) / (math.sqrt(p.r) if p.method == "rsLoRa" else p.r))
    return d


def _base_model_info(source) -> dict:
    info = source.describe()
    if source.kind == "builtin":
        from ftlab.models.sources import builtin_folder

        info["path"] = str(builtin_folder(source.ref))
    return info


def _copy_tensorboard(ckpt_dir: Path, folder: Path) -> None:
    runs = ckpt_dir / "runs"
    if runs.is_dir():
        shutil.copytree(runs, folder / "runs", dirs_exist_ok=True)


def _write_folder(out: Outcome, requested: TrainRunConfig, source, data, workspace: Workspace,
                  final_dir: Path, name: str, ckpt_dir: Path, attempts: list[dict]) -> Path:
    from ftlab.env import environment_info, now_iso
    from ftlab.io import atomic_write_json, atomic_write_text, staging_dir
    from ftlab.naming import parse_run_name
    from ftlab.schema import write_training_metadata
    from ftlab.train.card import model_card

    cfg = out.cfg
    spec = quantization_spec(cfg)
    is_peft = cfg.peft.method != "NoPeft"
    merge = is_peft and cfg.train.merge_after_train
    trainer = out.trainer
    state = trainer.state
    with staging_dir(final_dir, overwrite=cfg.train.overwrite) as stage:
        model = trainer.model
        if merge and cfg.quant.method == "QLORA":
            adapter_tmp = stage / ".adapter"
            model.save_pretrained(adapter_tmp)
            merged = _dequantized_merge(cfg, source, workspace, adapter_tmp)
            merged.save_pretrained(stage)
            shutil.rmtree(adapter_tmp)
            spec.extra["merged_into"] = "dequantized base"
        elif merge:
            model.merge_and_unload().save_pretrained(stage)
        else:
            model.save_pretrained(stage)
        if is_peft and not merge:
            _point_adapter_at_base(stage, _base_model_info(source))
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
        meta = {
            "kind": "model", "run_name": name, "name_fields": vars(parse_run_name(name)),
            "base_model": _base_model_info(source), "dataset": data.describe(), "method": cfg.train.method,
            "peft": _peft_summary(out), "adapter_only": is_peft and not merge, "merged": merge,
            "quantization": spec.to_dict(), "history": [], "training_args": _training_args_summary(out),
            "results": results,
            "oom_backoff": {"attempts": attempts, "final_settings": attempts[-1]["settings"],
                            "changed": len(attempts) > 1},
            "requested_config": config_to_dict(requested) if len(attempts) > 1 else None,
            "environment": environment_info(), "created_at": now_iso(),
        }
        write_training_metadata(stage, meta)
        atomic_write_text(stage / "README.md", model_card(meta))
    return final_dir


def _point_adapter_at_base(folder: Path, base: dict) -> None:
    """adapter_config.json names a loadable base (the built-in cache folder, a local path or hub id)
    so plain `AutoModelForCausalLM.from_pretrained(adapter_folder)` works too."""
    from ftlab.io import atomic_write_json

    path = folder / "adapter_config.json"
    cfg = json.loads(path.read_text())
    cfg["base_model_name_or_path"] = base.get("path") or base.get("ref")
    atomic_write_json(path, cfg)


def save_base_snapshot(cfg: TrainRunConfig, workspace: Workspace, source) -> Path:
    """`data.dataset=None`: the untrained base saved as `<base>-base` (the evaluation baseline)."""
    from ftlab.env import environment_info, now_iso
    from ftlab.io import atomic_write_text, staging_dir
    from ftlab.models.sources import load_model
    from ftlab.naming import parse_run_name
    from ftlab.quant.spec import QuantizationSpec
    from ftlab.schema import write_training_metadata
    from ftlab.train.card import model_card

    if cfg.quant.method != "NoQuant":
        raise FtlabError("a base snapshot (data.dataset=None) is not trained, so quant.method=QLORA has no "
                         "meaning; set quant.method=NoQuant (quantize snapshots with `ftlab quantize`)")
    name = run_name(cfg, source.base_name)
    final_dir = final_dir_for(cfg, workspace, name)
    if final_dir.exists() and not cfg.train.overwrite:
        raise FtlabError(f"output folder {final_dir} already exists; set train.overwrite=true to replace it")
    if not _is_main():
        _barrier()
        return final_dir
    model, tok, _ = load_model(source, workspace=workspace, dtype=cfg.model.dtype,
                               trust_remote_code=cfg.model.trust_remote_code, revision=cfg.model.revision,
                               seed=cfg.train.seed)
    with staging_dir(final_dir, overwrite=cfg.train.overwrite) as stage:
        model.save_pretrained(stage)
        tok.save_pretrained(stage)
        save_config(cfg, stage / "resolved_config.yaml")
        meta = {
            "kind": "model", "run_name": name, "name_fields": vars(parse_run_name(name)),
            "base_model": _base_model_info(source), "dataset": None, "method": None, "peft": None,
            "adapter_only": False, "merged": False, "quantization": QuantizationSpec().to_dict(), "history": [],
            "training_args": None,
            "results": {"parameters": sum(p.numel() for p in model.parameters())},
            "environment": environment_info(), "created_at": now_iso(),
        }
        write_training_metadata(stage, meta)
        atomic_write_text(stage / "README.md", model_card(meta))
    _barrier()
    log.info("saved base snapshot %s", final_dir)
    return final_dir


# --- entry point -----------------------------------------------------------------------------


def run_training(cfg: TrainRunConfig, workspace: Workspace, *, callbacks: Sequence[Any] = ()) -> Path:
    """Trains (or snapshots) as `cfg` says and returns the finished model folder.

    `callbacks` are extra `transformers.TrainerCallback`s (progress hooks, tests injecting faults).
    """
    from ftlab.env import set_threads
    from ftlab.io import output_claim
    from ftlab.models.sources import resolve_model
    from ftlab.train.compat import ensure_peft_usable
    from ftlab.train.data import load_train_data

    if cfg.train.threads:
        set_threads(cfg.train.threads)
    source = resolve_model(cfg.model.name, workspace, revision=cfg.model.revision)
    if cfg.data.dataset is None:
        return save_base_snapshot(cfg, workspace, source)
    check_combination(cfg, source)
    report_to(cfg)  # fail on a missing logger before any weights load
    name = run_name(cfg, source.base_name)
    final_dir = final_dir_for(cfg, workspace, name)
    if final_dir.exists() and not cfg.train.overwrite:
        raise FtlabError(f"output folder {final_dir} already exists; set train.overwrite=true to replace it")
    data = load_train_data(cfg, workspace)
    log.info("run %s: %d training rows, %d held out", name, len(data.train_rows), len(data.val_rows))
    # Keyed by the output folder, not the run name: study variants of one run name (seeds, learning
    # rates) may train at the same time and must not share checkpoints.
    ckpt_dir = checkpoint_dir_for(workspace, final_dir.name)
    is_main = _is_main()
    with contextlib.ExitStack() as claims:
        if is_main:  # a second `ftlab train` aiming at the same folders fails here, before training
            for folder in dict.fromkeys([workspace.models_dir / name, final_dir]):  # checkpoints go by run name
                claims.enter_context(output_claim(folder))
        ensure_peft_usable()  # imports peft (seconds): after every cheap check and the claim
        return _train_and_publish(cfg, workspace, source, data, name, final_dir, ckpt_dir, callbacks, is_main)


def _train_and_publish(cfg: TrainRunConfig, workspace: Workspace, source, data, name: str, final_dir: Path,
                       ckpt_dir: Path, callbacks: Sequence[Any], is_main: bool) -> Path:
    from ftlab.train.oom import is_oom, next_settings, release_memory, settings_summary

    attempts: list[dict] = []
    current, position = cfg, 0
    while True:
        try:
            outcome = _train_once(current, source, data, ckpt_dir, workspace, callbacks, is_main)
            attempts.append({"settings": settings_summary(current), "status": "ok"})
            break
        except Exception as exc:  # noqa: BLE001 - only out-of-memory is retried, the rest re-raised
            if not is_oom(exc):
                raise
            release_memory()
            attempts.append({"settings": settings_summary(current), "status": "oom",
                             "error": str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__})
            retries = len(attempts)
            nxt = next_settings(current, position) if cfg.train.oom_backoff else None
            if nxt is None or retries > cfg.train.max_oom_retries:
                why = ("train.oom_backoff is off" if not cfg.train.oom_backoff
                       else f"train.max_oom_retries={cfg.train.max_oom_retries} reached" if nxt
                       else "the back-off protocol is exhausted")
                raise FtlabError(
                    f"out of memory after {retries} attempt(s) ({why}); lower data.max_length, "
                    "train.batch_size or peft.r, or use quant.method=QLORA"
                ) from None
            current, step, change, position = nxt
            attempts[-1].update(next_step=step, change=change)
            log.warning("out of memory; retrying with %s (%s)", step, change)
            if is_main and ckpt_dir.exists():
                shutil.rmtree(ckpt_dir, ignore_errors=True)  # its checkpoints belong to the old settings

    final_name = run_name(current, source.base_name)
    if final_name != name and not cfg.train.output_dir:
        final_dir = final_dir_for(current, workspace, final_name)
        log.warning("OOM back-off changed the run's name to %s", final_name)
    if is_main:
        _write_folder(outcome, cfg, source, data, workspace, final_dir, final_name, ckpt_dir, attempts)
        shutil.rmtree(ckpt_dir, ignore_errors=True)
        with contextlib.suppress(OSError):
            ckpt_dir.parent.rmdir()  # only when no other run's checkpoints remain
        log.info("saved %s", final_dir)
    _barrier()
    return final_dir
