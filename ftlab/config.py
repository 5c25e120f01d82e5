"""Typed configuration: stage dataclasses, defaults < YAML < `key=value` overrides, all problems at once.

Every field carries a one-line doc in `metadata["doc"]`; `ftlab train --help-config` prints them.
A dataclass may define `validate(self) -> list[str]` returning problems (field name + fix).
"""

from __future__ import annotations

import dataclasses
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, TypeVar

import yaml

from ftlab.errors import ConfigError, FtlabError
from ftlab.io import atomic_write_text
from ftlab.kinds.eval import PROMPT_FORMAT_NAMES, SCORING_MODE_NAMES
from ftlab.kinds.peft import PEFT_NAMES, is_adapter, run_problems
from ftlab.kinds.quant import QUANT_METHODS, TRAINING_METHODS
from ftlab.kinds.tracking import tracker_problems
from ftlab.registry import closest

C = TypeVar("C")


# What a setting changes, on the field itself (`effect=`): the study's job identity and the training
# checkpoint's fingerprint are both derived from it (`keys_with_effect`), so they cannot drift apart.
PRODUCT = "product"  # what the job produces (the default)
RUN_ONLY = "run-only"  # only how it runs: threads, logging, checkpoint cadence, where inputs are read from
AFTER_TRAINING = "after-training"  # what is saved once training ended, not the optimisation (merging)
EFFECTS = (PRODUCT, RUN_ONLY, AFTER_TRAINING)


def doc_field(default: Any = dataclasses.MISSING, doc: str = "", *, effect: str = PRODUCT, **kw: Any) -> Any:
    """A dataclass field with a one-line doc and what it changes (`effect`, one of EFFECTS); lists
    and dicts get a default factory."""
    if effect not in EFFECTS:
        raise ValueError(f"effect={effect!r}; valid: {', '.join(EFFECTS)}")
    metadata = {"doc": doc, "effect": effect}
    if isinstance(default, (list, dict)):
        value = default
        return field(default_factory=lambda: type(value)(value), metadata=metadata, **kw)
    return field(default=default, metadata=metadata, **kw)


def keys_with_effect(cls: type, *effects: str) -> frozenset[tuple[str, str]]:
    """(section, key) of every field of config class `cls` (sections of dataclasses) whose effect is
    one of `effects`."""
    return frozenset((section.name, f.name) for section in dataclasses.fields(cls)
                     for f in dataclasses.fields(_section_type(cls, section))
                     if f.metadata.get("effect", PRODUCT) in effects)


def _section_type(cls: type, section: dataclasses.Field) -> type:
    hints = typing.get_type_hints(cls)
    return hints[section.name]


DTYPES = ("auto", "bf16", "fp16", "fp32")


@dataclass
class ModelConfig:
    name: str = doc_field("smollm2-135m-instruct", "hub id, local folder, .gguf file, built-in name (see `ftlab models`) or scratch:<preset>")
    revision: str | None = doc_field(None, "hub revision (branch, tag or commit) to pin")
    trust_remote_code: bool = doc_field(False, "allow model code from the hub; off unless you trust the repo")
    dtype: str = doc_field("auto", "weights dtype: auto (bf16 where supported, else fp32), bf16, fp16, fp32")
    attn_implementation: str | None = doc_field(None, "attention kernel passed to transformers (sdpa, eager, flash_attention_2)")

    def validate(self) -> list[str]:
        out = []
        if not self.name:
            out.append("model.name is empty; set a hub id, folder, built-in name or scratch:<preset>")
        if self.dtype not in DTYPES:
            out.append(f"model.dtype={self.dtype!r} is not one of {', '.join(DTYPES)}")
        return out


@dataclass
class DataConfig:
    dataset: str | None = doc_field("synthetic-arith", "task name (see `ftlab datasets list`) or a custom file; None = base snapshot")
    trunc_train: int | None = doc_field(None, "use only the first N training rows (deterministic); None = all")
    val_size: int = doc_field(64, "held-out rows taken from the training split for eval loss / early stopping; 0 = none")
    max_length: int = doc_field(512, "maximum tokens per training example (prompt + answer); longer ones are truncated")
    source_dir: str | None = doc_field(None, "folder with train-*/test-*.parquet to read instead of Datasets/ or the hub", effect=RUN_ONLY)
    system_prompt: str | None = doc_field(None, "system message prepended to every prompt (None = the tokenizer's default)")
    seed: int = doc_field(0, "seed for shuffling and synthetic data")

    def validate(self) -> list[str]:
        out = []
        if self.trunc_train is not None and self.trunc_train <= 0:
            out.append(f"data.trunc_train={self.trunc_train} must be positive or None")
        if self.val_size < 0:
            out.append(f"data.val_size={self.val_size} must be >= 0")
        if self.max_length < 16:
            out.append(f"data.max_length={self.max_length} is too small; use at least 16 tokens")
        return out


@dataclass
class PeftConfig:
    method: str = doc_field("LoRa", f"PEFT kind: {', '.join(PEFT_NAMES.names())} (NoPeft = full fine-tune; the README says what each does)")
    r: int = doc_field(16, "adapter rank (VeRA: rank of the shared random matrices, typically 256)")
    alpha: float | None = doc_field(None, "LoRA alpha; None = 2*r (rsLoRA scales by alpha/sqrt(r))")
    dropout: float = doc_field(0.05, "dropout on the adapter input")
    target_modules: list[str] = doc_field(["all-linear"], "modules to adapt: all-linear, qkvo, or explicit names")
    vera_d_initial: float = doc_field(0.1, "VeRA: initial value of the trainable d vector")
    vera_prng_key: int = doc_field(0, "VeRA: seed of the frozen shared random projections")

    def validate(self) -> list[str]:
        out = []
        kinds = PEFT_NAMES.names()
        if self.method not in kinds:
            hint = closest(self.method, kinds)
            out.append(f"peft.method={self.method!r} is unknown" + (f" (did you mean {hint!r}?)" if hint else "") + f"; valid: {', '.join(kinds)}")
        if is_adapter(self.method) and self.r <= 0:
            out.append(f"peft.r={self.r} must be a positive integer (e.g. peft.r=16)")
        if not 0 <= self.dropout < 1:
            out.append(f"peft.dropout={self.dropout} must be in [0, 1)")
        if not self.target_modules:
            out.append("peft.target_modules is empty; use all-linear, qkvo or module names")
        return out


@dataclass
class QuantConfig:
    method: str = doc_field("NoQuant", "training-time base quantization: " + "; ".join(
        f"{n} ({m.doc})" for n, m in QUANT_METHODS.items() if m.training))
    bits: int = doc_field(4, "bits of a quantized base: " + "; ".join(
        f"{n}: {' or '.join(map(str, m.base_bits))}" for n, m in QUANT_METHODS.items() if m.base_bits))
    double_quant: bool = doc_field(True, "4-bit: also quantize the quantization constants")
    compute_dtype: str = doc_field("auto", "dtype for matmuls on the dequantized base: auto, bf16, fp16, fp32")
    lm_head_dtype: str | None = doc_field("bf16", "dtype the output head stays in (it is never quantized); recorded in the tag")

    def validate(self) -> list[str]:
        out = []
        if self.method not in TRAINING_METHODS:
            out.append(f"quant.method={self.method!r} is not a training-time method; use {' or '.join(TRAINING_METHODS)} "
                       "(post-training methods: ftlab quantize)")
        elif (m := QUANT_METHODS.get(self.method)).base_bits and self.bits not in m.base_bits:
            out.append(f"quant.bits={self.bits} is not supported by {m.title}; use {' or '.join(map(str, m.base_bits))}")
        if self.compute_dtype not in DTYPES:
            out.append(f"quant.compute_dtype={self.compute_dtype!r} is not one of {', '.join(DTYPES)}")
        return out


@dataclass
class TrainConfig:
    method: str = doc_field("SFT", "SFT (supervised fine-tuning) or PT (pre-training on raw text, scratch models)")
    learning_rate: float = doc_field(2e-4, "peak learning rate")
    epochs: float = doc_field(1.0, "passes over the training data (ignored when max_steps > 0)")
    max_steps: int = doc_field(-1, "optimizer steps to run; -1 = use epochs")
    batch_size: int = doc_field(8, "examples per device per step")
    grad_accum: int = doc_field(1, "gradient accumulation steps")
    warmup_ratio: float = doc_field(0.03, "share of steps with linear warm-up")
    lr_scheduler: str = doc_field("cosine", "learning-rate schedule (transformers name: cosine, linear, constant, ...)")
    weight_decay: float = doc_field(0.0, "AdamW weight decay")
    optim: str = doc_field("adamw_torch", "optimizer (transformers name, e.g. adamw_torch, adamw_bnb_8bit, paged_adamw_8bit)")
    max_grad_norm: float = doc_field(1.0, "gradient clipping norm")
    completion_only_loss: bool = doc_field(True, "loss only on the assistant's answer")
    packing: bool = doc_field(False, "pack several examples per sequence")
    padding_free: bool = doc_field(False, "padding-free batching (flattened sequences)")
    group_by_length: bool = doc_field(True, "batch examples of similar length together (less padding, faster)")
    gradient_checkpointing: bool = doc_field(False, "recompute activations to save memory")
    mixed_precision: str = doc_field("auto", "auto, bf16, fp16 or no")
    logging_steps: int = doc_field(5, "log every N steps", effect=RUN_ONLY)
    eval_steps: int = doc_field(0, "evaluate on the held-out split every N steps; 0 = only at the end")
    save_steps: int = doc_field(0, "checkpoint every N steps; 0 = no intermediate checkpoints", effect=RUN_ONLY)
    save_total_limit: int = doc_field(2, "keep the last K checkpoints", effect=RUN_ONLY)
    early_stopping_patience: int = doc_field(0, "stop after N evaluations without improvement; 0 = off")
    resume: str = doc_field("auto", "auto (newest checkpoint if any), never, or a checkpoint path", effect=RUN_ONLY)
    merge_after_train: bool = doc_field(False, "save the merged full model instead of the adapter", effect=AFTER_TRAINING)
    oom_backoff: bool = doc_field(True, "on out-of-memory, retry with smaller settings (see docs)", effect=RUN_ONLY)
    max_oom_retries: int = doc_field(5, "attempts the OOM back-off may make", effect=RUN_ONLY)
    report_to: list[str] = doc_field(["tensorboard"], "loggers: tensorboard, wandb, mlflow, none", effect=RUN_ONLY)
    seed: int = doc_field(42, "training seed")
    threads: int | None = doc_field(None, "torch CPU threads; None = all cores", effect=RUN_ONLY)
    output_dir: str | None = doc_field(None, "output folder name under Models/; None = Models/<run name>", effect=RUN_ONLY)
    overwrite: bool = doc_field(False, "replace an existing output folder", effect=RUN_ONLY)

    def validate(self) -> list[str]:
        out = []
        if self.method not in ("SFT", "PT"):
            out.append(f"train.method={self.method!r} is unknown; valid: SFT, PT")
        if self.learning_rate <= 0:
            out.append(f"train.learning_rate={self.learning_rate} must be > 0")
        if self.batch_size <= 0:
            out.append(f"train.batch_size={self.batch_size} must be >= 1")
        if self.grad_accum <= 0:
            out.append(f"train.grad_accum={self.grad_accum} must be >= 1")
        if self.max_steps == 0 or self.max_steps < -1:
            out.append(f"train.max_steps={self.max_steps} must be -1 (use epochs) or positive")
        if self.max_steps == -1 and self.epochs <= 0:
            out.append(f"train.epochs={self.epochs} must be > 0 when max_steps=-1")
        if self.mixed_precision not in ("auto", "bf16", "fp16", "no"):
            out.append(f"train.mixed_precision={self.mixed_precision!r}; valid: auto, bf16, fp16, no")
        if self.early_stopping_patience < 0:
            out.append(f"train.early_stopping_patience={self.early_stopping_patience} must be >= 0")
        return out


@dataclass
class EvalConfig:
    datasets: list[str] = doc_field(["openmath", "arc", "boolq", "squad_v2"], "tasks to evaluate (see `ftlab datasets list`)")
    limit: int | None = doc_field(None, "evaluate only the first N test rows of each task; None = all")
    batch_size: int | None = doc_field(None, "prompts generated together; None = auto (what a quarter of free "
                                             "memory holds for the KV cache, at most 128 on CPU and 256 on GPU)")
    max_new_tokens: int | None = doc_field(None, "cap on generated tokens; None = each task's default")
    enable_thinking: bool = doc_field(False, "let models whose chat template has a thinking mode think")
    system_prompt: str | None = doc_field(None, "system message (None = the tokenizer's default)")
    bootstrap_samples: int = doc_field(1000, "bootstrap resamples for the accuracy interval")
    seed: int = doc_field(0, "seed for bootstrap and any sampling")
    threads: int | None = doc_field(None, "torch CPU threads; None = all cores", effect=RUN_ONLY)
    source_dir: str | None = doc_field(None, "folder with test-*.parquet to read instead of Datasets/ or the hub", effect=RUN_ONLY)
    backend: str = doc_field("hf", "generation backend: hf (transformers, continuous batching, greedy), hf-generate "
                                   "(fixed batches through model.generate, the reference path), llama.cpp (a GGUF run by "
                                   "llama.cpp's llama-server: its scores as deployed); canned is for tests only")
    backend_options: dict = doc_field({}, "backend-specific options (canned: response or responses_file)")
    stop_at_box: bool = doc_field(True, "stop each answer when its \\boxed{...} closes (else only at EOS/max_new_tokens)")
    numeric_rel_tol: float | None = doc_field(None, "numeric answers: relative tolerance for non-integer golds "
                                                    "(integer golds match exactly); None = each task's documented tolerance")
    numeric_abs_tol: float | None = doc_field(None, "numeric answers: absolute tolerance for non-integer golds; None = the task's")
    perplexity_max_length: int = doc_field(512, "perplexity task: tokens per text window")
    scoring: str = doc_field("generate", "how entries without a suffix are scored: generate (boxed answer) or "
                                         "loglikelihood (likeliest option; choice and boolean tasks); `arc:ll` picks it per task")
    num_fewshot: int = doc_field(0, "solved examples from the task's train split shown before each question")
    prompt_format: str = doc_field("auto", "chat (the chat template), plain (text the model continues) or auto "
                                           "(chat when the model learned its template; plain for lmeval: tasks, as lm-eval)")
    lmeval_num_fewshot: int | None = doc_field(None, "lmeval: tasks: few-shot examples; None = each task's own (gsm8k: 5)")
    lmeval_data: dict = doc_field({}, "lmeval: tasks read from local files, {task: {split: file}} "
                                      "(e.g. {gsm8k: {test: gsm8k-test.jsonl, train: gsm8k-train.jsonl}})")

    def validate(self) -> list[str]:
        out = []
        if any(t is not None and t < 0 for t in (self.numeric_rel_tol, self.numeric_abs_tol)):
            out.append("eval.numeric_rel_tol and eval.numeric_abs_tol must be >= 0 (or None for the task's tolerance)")
        if self.max_new_tokens is not None and self.max_new_tokens <= 0:
            out.append(f"eval.max_new_tokens={self.max_new_tokens} must be positive or None")
        if not self.datasets:
            out.append("eval.datasets is empty; name at least one task")
        if self.limit is not None and self.limit <= 0:
            out.append(f"eval.limit={self.limit} must be positive or None")
        if self.batch_size is not None and self.batch_size <= 0:
            out.append(f"eval.batch_size={self.batch_size} must be >= 1 (or None for auto)")
        if self.num_fewshot < 0:
            out.append(f"eval.num_fewshot={self.num_fewshot} must be >= 0")
        if self.lmeval_num_fewshot is not None and self.lmeval_num_fewshot < 0:
            out.append(f"eval.lmeval_num_fewshot={self.lmeval_num_fewshot} must be >= 0 (or None for each task's own)")
        for key, value, valid in (("scoring", self.scoring, list(SCORING_MODE_NAMES)),
                                  ("prompt_format", self.prompt_format, list(PROMPT_FORMAT_NAMES))):
            if value not in valid:
                hint = closest(value, valid)
                out.append(f"eval.{key}={value!r} is unknown" + (f" (did you mean {hint!r}?)" if hint else "")
                           + f"; valid: {', '.join(valid)}")
        return out


@dataclass
class TrainRunConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    peft: PeftConfig = field(default_factory=PeftConfig)
    quant: QuantConfig = field(default_factory=QuantConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def validate(self) -> list[str]:
        """Cross-section rules that need no model, so they fail before any weights load."""
        out = run_problems(self)  # the PEFT kind's own rules (QLoRA base, merge, ...)
        t, scratch = self.train, self.model.name.startswith("scratch:")
        if t.method == "PT" and not scratch and self.data.dataset is None:
            out.append("train.method=PT needs data.dataset (raw text or SFT data)")
        if t.method == "PT" and scratch and is_adapter(self.peft.method) and self.data.dataset is not None:
            out.append(f"train.method=PT on {self.model.name} trains every weight of a random model; "
                       "set peft.method=NoPeft (an adapter on random weights learns nothing useful)")
        if t.early_stopping_patience and not t.eval_steps:
            out.append("train.early_stopping_patience needs train.eval_steps > 0 (it counts evaluations)")
        if t.early_stopping_patience and not self.data.val_size:
            out.append("train.early_stopping_patience needs a held-out split: set data.val_size > 0")
        if t.eval_steps and not self.data.val_size:
            out.append("train.eval_steps > 0 needs a held-out split: set data.val_size > 0")
        if t.early_stopping_patience and t.eval_steps and t.save_steps and t.save_steps % t.eval_steps:
            out.append(f"train.save_steps={t.save_steps} must be a multiple of train.eval_steps="
                       f"{t.eval_steps} with early stopping (the best checkpoint is restored)")
        if not 0 <= t.warmup_ratio < 1:
            out.append(f"train.warmup_ratio={t.warmup_ratio} must be in [0, 1) (a share of the steps)")
        return out


@dataclass
class TrackingConfig:
    """Where runs are logged besides ftlab's own files (`--track NAME`, a study file's `tracking:`);
    a tracker that is down never fails or loses a job: the next run logs what it missed."""

    to: str = doc_field("none", "experiment tracker: none, mlflow or wandb", effect=RUN_ONLY)
    uri: str | None = doc_field(None, "mlflow: tracking server URI (default: a local store in Testing/tracking/); "
                                      "wandb: the server's base URL (default: your wandb login)", effect=RUN_ONLY)
    experiment: str | None = doc_field(None, "mlflow experiment / wandb project (default: the study's name; "
                                             "`ftlab-evaluate` for evaluations)", effect=RUN_ONLY)

    @property
    def on(self) -> bool:
        return self.to.lower() != "none"

    def validate(self) -> list[str]:
        return tracker_problems(self.to.lower())


@dataclass
class EvalRunConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)


# ---------------------------------------------------------------------------------------------
# Generic loading


def _field_types(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _is_dataclass_type(tp: Any) -> bool:
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


def _unwrap_optional(tp: Any) -> tuple[Any, bool]:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        optional = len(args) < len(typing.get_args(tp))
        return (args[0] if len(args) == 1 else typing.Union[tuple(args)]), optional
    return tp, False


_NONE_WORDS = {"none", "null", "~", ""}
_TRUE = {"true", "yes", "on", "1"}
_FALSE = {"false", "no", "off", "0"}


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Coerces a YAML value or a raw override string to `tp`; raises ValueError with the fix."""
    inner, optional = _unwrap_optional(tp)
    if value is None:
        if optional:
            return None
        raise ValueError(f"{key} cannot be None; give a value")
    if optional and isinstance(value, str) and value.strip().lower() in _NONE_WORDS - ({""} if inner is str else set()):
        return None
    if inner is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, int) and value in (0, 1):
            return bool(value)
        if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
            return value.strip().lower() in _TRUE
        raise ValueError(f"{key}={value!r} is not a boolean; use true or false")
    if inner is int:
        if isinstance(value, bool):
            raise ValueError(f"{key}={value!r} is not an integer")
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        try:
            return int(str(value).strip())
        except ValueError:
            raise ValueError(f"{key}={value!r} is not an integer") from None
    if inner is float:
        if isinstance(value, bool):
            raise ValueError(f"{key}={value!r} is not a number")
        try:
            return float(value)
        except (TypeError, ValueError):
            raise ValueError(f"{key}={value!r} is not a number (e.g. 2e-4)") from None
    if inner is str:
        if isinstance(value, (dict, list)):
            raise ValueError(f"{key} must be a string, got {type(value).__name__}")
        return str(value)
    origin = typing.get_origin(inner)
    if origin is list:
        (item_tp,) = typing.get_args(inner) or (Any,)
        if isinstance(value, str):
            text = value.strip()
            if text.startswith("["):
                value = yaml.safe_load(text)
            else:
                value = [v.strip() for v in text.split(",") if v.strip()]
        if not isinstance(value, (list, tuple)):
            value = [value]
        return [_coerce(v, item_tp, f"{key}[{i}]") if item_tp is not Any else v for i, v in enumerate(value)]
    if origin is dict or inner is dict:  # bare `dict` fields (eval.backend_options) have no origin
        if isinstance(value, str):
            value = yaml.safe_load(value)
        if not isinstance(value, dict):
            raise ValueError(f"{key} must be a mapping")
        return dict(value)
    return value


def _set_path(tree: dict, dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    node = tree
    for p in parts[:-1]:
        nxt = node.get(p)
        if not isinstance(nxt, dict):
            nxt = node[p] = {}
        node = nxt
    node[parts[-1]] = value


def parse_overrides(overrides: Iterable[str]) -> tuple[dict, list[str]]:
    """`["peft.r=64", "train.merge_after_train=false"]` -> nested dict of raw strings."""
    tree: dict = {}
    problems = []
    for item in overrides:
        if "=" not in item:
            problems.append(f"override {item!r} is not key=value (e.g. peft.r=64)")
            continue
        key, raw = item.split("=", 1)
        key = key.strip()
        if not key:
            problems.append(f"override {item!r} has an empty key")
            continue
        _set_path(tree, key, raw)
    return tree, problems


def _merge(base: dict, upd: dict) -> dict:
    out = dict(base)
    for k, v in upd.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _merge(out[k], v)
        else:
            out[k] = v
    return out


def _build(cls: type, data: dict, prefix: str, problems: list[str]) -> Any:
    hints = _field_types(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in data.items():
        full = f"{prefix}{key}"
        if key not in fields:
            hint = closest(str(key), list(fields))
            problems.append(
                f"unknown key {full!r}" + (f" (did you mean {prefix + hint!r}?)" if hint else "")
                + f"; valid keys{' under ' + prefix[:-1] if prefix else ''}: {', '.join(fields)}"
            )
            continue
        tp = hints[key]
        if _is_dataclass_type(tp):
            if not isinstance(value, dict):
                problems.append(f"{full} must be a section (mapping), got {value!r}")
                continue
            kwargs[key] = _build(tp, value, f"{full}.", problems)
        else:
            try:
                kwargs[key] = _coerce(value, tp, full)
            except ValueError as exc:
                problems.append(str(exc))
    for name, f in fields.items():
        if name not in kwargs and _is_dataclass_type(hints[name]):
            kwargs[name] = _build(hints[name], {}, f"{prefix}{name}.", problems)
    try:
        obj = cls(**kwargs)
    except TypeError as exc:  # a required field without default
        problems.append(f"{prefix or 'config'}: {exc}")
        return None
    return obj


def _validate_tree(obj: Any, problems: list[str]) -> None:
    if obj is None:
        return
    for f in dataclasses.fields(obj):
        child = getattr(obj, f.name)
        if dataclasses.is_dataclass(child):
            _validate_tree(child, problems)
    if hasattr(obj, "validate"):
        problems.extend(obj.validate())


def load_config(cls: type[C], yaml_path: str | os.PathLike | None = None, overrides: Iterable[str] = (),
                base: dict | None = None) -> C:
    """Defaults < `base` (e.g. a script's edit block) < YAML file < `key=value` overrides."""
    problems: list[str] = []
    tree: dict = dict(base or {})
    if yaml_path:
        path = Path(yaml_path)
        try:
            loaded = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except FileNotFoundError:
            raise FtlabError(f"config file not found: {path}; pass an existing YAML file to --config") from None
        except yaml.YAMLError as exc:
            raise FtlabError(f"config file {path} is not valid YAML: {str(exc).splitlines()[0]}") from None
        if not isinstance(loaded, dict):
            raise FtlabError(f"config file {path} must hold a mapping of sections (model:, data:, ...)")
        tree = _merge(tree, loaded)
    ov, ov_problems = parse_overrides(overrides)
    problems += ov_problems
    tree = _merge(tree, ov)
    cfg = _build(cls, tree, "", problems)
    _validate_tree(cfg, problems)
    if problems:
        raise ConfigError(problems)
    return cfg


def config_to_dict(cfg: Any) -> dict:
    return dataclasses.asdict(cfg)


def dotted(tree: Any, prefix: str = "", keep_empty: bool = False) -> dict[str, Any]:
    """A nested mapping as dotted keys (`train.learning_rate`), the spelling of `key=value` overrides;
    lists stay values. An empty mapping inside is dropped, or kept as a value with `keep_empty`."""
    if not isinstance(tree, dict):
        return {prefix: tree} if prefix else {}
    out: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}.{key}" if prefix else str(key)
        if isinstance(value, dict) and (value or not keep_empty):
            out.update(dotted(value, name, keep_empty))
        else:
            out[name] = value
    return out


def dotted_changes(old: dict | None, new: dict | None) -> list[tuple[str, Any, Any]]:
    """(dotted key, old value, new value) for every setting that differs (missing: None), by key."""
    a, b = dotted(old or {}), dotted(new or {})
    return [(k, a.get(k), b.get(k)) for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]


def config_without(cfg: Any, keys: Iterable[tuple[str, str]]) -> dict:
    """`config_to_dict(cfg)` less the (section, key) fields in `keys` (e.g. `keys_with_effect(...)`)."""
    tree = config_to_dict(cfg)
    for section, key in keys:
        tree.get(section, {}).pop(key, None)
    return tree


def save_config(cfg: Any, path: str | os.PathLike) -> Path:
    return atomic_write_text(path, yaml.safe_dump(config_to_dict(cfg), sort_keys=False))


def describe_config(cls: type, prefix: str = "") -> list[str]:
    """`key (type) = default  # doc` lines for help output."""
    lines = []
    hints = _field_types(cls)
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        if _is_dataclass_type(tp):
            lines += describe_config(tp, f"{prefix}{f.name}.")
            continue
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
        lines.append(f"{prefix}{f.name} = {default!r}  # {f.metadata.get('doc', '')}")
    return lines
