"""Out-of-memory back-off: a fixed, ordered protocol of cheaper settings tried one at a time.

Order (each retry applies the next step that still changes something):
shorter max_length -> lower rank -> the PEFT kind's own fallback (DoRA -> LoRA; declared by the
kind) -> fewer target modules -> batch 1 with more accumulation (same effective batch). Every attempt
is recorded in the training metadata.
"""

from __future__ import annotations

import copy
import gc
import logging
from dataclasses import dataclass
from typing import Callable, TypeVar

from ftlab.config import TrainRunConfig
from ftlab.errors import FtlabError
from ftlab.train.peft_methods import get_kind

log = logging.getLogger(__name__)

MIN_MAX_LENGTH = 64
T = TypeVar("T")


def is_oom(exc: BaseException) -> bool:
    import torch  # lazy: torch takes 3.3 s to import

    if isinstance(exc, torch.OutOfMemoryError):
        return True
    if isinstance(exc, (RuntimeError, MemoryError)):
        msg = str(exc).lower()
        return isinstance(exc, MemoryError) or "out of memory" in msg or "can't allocate memory" in msg
    return False


def release_memory() -> None:
    import torch  # lazy: torch takes 3.3 s to import

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


@dataclass(frozen=True)
class BackoffStep:
    name: str
    apply: Callable[[TrainRunConfig], str | None]  # mutates a copy; returns what changed, None if nothing
    label: Callable[[TrainRunConfig], str] | None = None  # the recorded step name, when it depends on cfg

    def name_for(self, cfg: TrainRunConfig) -> str:
        return self.label(cfg) if self.label else self.name


def _shorter_max_length(cfg: TrainRunConfig) -> str | None:
    old = cfg.data.max_length
    new = max(MIN_MAX_LENGTH, old // 2)
    if new >= old:
        return None
    cfg.data.max_length = new
    return f"data.max_length {old} -> {new}"


def _lower_rank(cfg: TrainRunConfig) -> str | None:
    if not get_kind(cfg.peft.method).adapter or cfg.peft.r <= 1:
        return None
    old = cfg.peft.r
    cfg.peft.r = max(1, old // 2)
    if cfg.peft.alpha is None:
        # Keep the adapter's scale (alpha/r) as the user had it, not a new 2*r default.
        cfg.peft.alpha = float(2 * old)
    return f"peft.r {old} -> {cfg.peft.r}"


def _peft_fallback(cfg: TrainRunConfig) -> str | None:
    fallback = get_kind(cfg.peft.method).oom_fallback
    if fallback is None:
        return None
    old, cfg.peft.method = cfg.peft.method, fallback[1]
    return f"peft.method {old} -> {cfg.peft.method}"


def _peft_fallback_name(cfg: TrainRunConfig) -> str:
    fallback = get_kind(cfg.peft.method).oom_fallback
    return fallback[0] if fallback else "peft_fallback"


_FEWER_TARGETS = {"all-linear": ["qkvo"], "qkvo": ["qv"]}


def _fewer_targets(cfg: TrainRunConfig) -> str | None:
    if not get_kind(cfg.peft.method).adapter:
        return None
    old = list(cfg.peft.target_modules)
    if len(old) == 1 and old[0] in _FEWER_TARGETS:
        new = _FEWER_TARGETS[old[0]]
    elif len(old) > 2:
        new = old[: len(old) // 2]
    else:
        return None
    cfg.peft.target_modules = new
    return f"peft.target_modules {old} -> {new}"


def _batch_one(cfg: TrainRunConfig) -> str | None:
    if cfg.train.batch_size <= 1:
        return None
    old_b, old_a = cfg.train.batch_size, cfg.train.grad_accum
    cfg.train.grad_accum = old_a * old_b
    cfg.train.batch_size = 1
    return f"train.batch_size {old_b} -> 1, train.grad_accum {old_a} -> {cfg.train.grad_accum}"


PROTOCOL: tuple[BackoffStep, ...] = (
    BackoffStep("shorter_max_length", _shorter_max_length),
    BackoffStep("lower_rank", _lower_rank),
    BackoffStep("peft_fallback", _peft_fallback, _peft_fallback_name),
    BackoffStep("fewer_target_modules", _fewer_targets),
    BackoffStep("batch_one", _batch_one),
)


def next_settings(cfg: TrainRunConfig, position: int) -> tuple[TrainRunConfig, str, str, int] | None:
    """From protocol index `position`, the first step that changes `cfg`:
    (new config, step name, change, next position) or None when the protocol is exhausted."""
    for i in range(position, len(PROTOCOL)):
        new = copy.deepcopy(cfg)
        change = PROTOCOL[i].apply(new)
        if change:
            return new, PROTOCOL[i].name_for(cfg), change, i + 1
    return None


def settings_summary(cfg: TrainRunConfig) -> dict:
    return {"max_length": cfg.data.max_length, "peft_method": cfg.peft.method,
            "r": cfg.peft.r if get_kind(cfg.peft.method).adapter else None,
            "alpha": cfg.peft.alpha, "target_modules": list(cfg.peft.target_modules),
            "batch_size": cfg.train.batch_size, "grad_accum": cfg.train.grad_accum}


def train_with_backoff(cfg: TrainRunConfig, attempt: Callable[[TrainRunConfig], T],
                       on_retry: Callable[[], None] = lambda: None) -> tuple[T, TrainRunConfig, list[dict]]:
    """Runs `attempt(settings)` until it does not run out of memory, stepping through PROTOCOL.

    Returns (its result, the settings that worked, every attempt as recorded in the metadata);
    `on_retry` runs before each retry (the runner drops the old settings' checkpoints there).
    Errors other than out-of-memory are re-raised as they are."""
    attempts: list[dict] = []
    current, position = cfg, 0
    while True:
        try:
            result = attempt(current)
            attempts.append({"settings": settings_summary(current), "status": "ok"})
            return result, current, attempts
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
            on_retry()
