"""Training rows built with the evaluation prompt builder, so a model is tested on what it learned.

SFT rows use TRL's conversational prompt-completion format: `prompt` = `build_messages(...)`,
`completion` = the assistant's `build_target(...)`. TRL renders both with the tokenizer's chat
template and masks the prompt when `completion_only_loss` is on. PT rows are `{"text": ...}`.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass, field
from pathlib import Path

from ftlab.config import TrainRunConfig
from ftlab.errors import FtlabError
from ftlab.paths import Workspace

log = logging.getLogger(__name__)

RAW_TEXT_SUFFIXES = (".txt", ".md")


@dataclass
class TrainData:
    name: str  # dataset reference as given (task name or file)
    train_rows: list[dict]
    val_rows: list[dict]
    content_hash: str
    format: str  # "prompt-completion" or "text"
    extra: dict = field(default_factory=dict)

    def describe(self) -> dict:
        return {"name": self.name, "train_rows": len(self.train_rows), "val_rows": len(self.val_rows),
                "content_hash": self.content_hash, "format": self.format, **self.extra}


def _split(rows: list, cfg: TrainRunConfig, what: str) -> tuple[list, list]:
    """First `trunc_train` rows train, the `val_size` rows after them are held out."""
    n_val = cfg.data.val_size
    if n_val and len(rows) <= n_val:
        raise FtlabError(
            f"data.val_size={n_val} leaves no training rows ({what} has {len(rows)}); lower data.val_size"
        )
    n_train = len(rows) - n_val
    if cfg.data.trunc_train is not None:
        n_train = min(n_train, cfg.data.trunc_train)
    return rows[:n_train], rows[n_train:n_train + n_val]


def _read_raw_text(path: Path) -> list[str]:
    """Paragraphs (blank-line separated) of a plain-text file, for pre-training."""
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise FtlabError(f"data.dataset file {path} is not UTF-8 text") from None
    paras = [p.strip() for p in text.replace("\r\n", "\n").split("\n\n")]
    paras = [p for p in paras if p]
    if not paras:
        raise FtlabError(f"data.dataset file {path} has no text")
    return paras


def load_train_data(cfg: TrainRunConfig, workspace: Workspace) -> TrainData:
    """Reads, splits and formats the training data named by `cfg.data.dataset`."""

    ref = cfg.data.dataset
    if ref is None:
        raise FtlabError("data.dataset is None (base snapshot); there is nothing to train on")
    path = Path(str(ref)).expanduser()
    if path.suffix.lower() in RAW_TEXT_SUFFIXES:
        if cfg.train.method != "PT":
            raise FtlabError(
                f"data.dataset={ref} is raw text, which only pre-training uses; set train.method=PT "
                "or give an SFT dataset (task name, json/jsonl/parquet/csv)"
            )
        if not path.is_file():
            raise FtlabError(f"data.dataset file {path} not found")
        paras = _read_raw_text(path)
        train, val = _split(paras, cfg, str(path))
        digest = hashlib.sha256("\n\n".join(paras).encode()).hexdigest()[:16]
        return TrainData(str(ref), [{"text": t} for t in train], [{"text": t} for t in val], digest, "text")

    from ftlab.data.loading import dataset_fingerprint, is_custom_file, load_examples, resolve_task  # lazy: ftlab.data.loading imports numpy
    from ftlab.data.prompts import build_messages, build_target  # lazy: ftlab.data.prompts imports numpy

    task = resolve_task(str(ref))
    limit = cfg.data.trunc_train + cfg.data.val_size if cfg.data.trunc_train else None
    # custom files are read by path (a Task object would be looked up as a registered source)
    source = str(ref) if is_custom_file(str(ref)) else task
    examples = load_examples(source, "train", workspace=workspace, limit=limit, source_dir=cfg.data.source_dir)
    train_ex, val_ex = _split(examples, cfg, f"dataset {task.name}")
    digest = dataset_fingerprint(train_ex + val_ex)

    if cfg.train.method == "PT":
        def to_row(ex) -> dict:
            return {"text": f"{ex.question}\n{build_target(task, ex)}"}
        fmt = "text"
    else:
        def to_row(ex) -> dict:
            return {"prompt": build_messages(task, ex, system=cfg.data.system_prompt),
                    "completion": [{"role": "assistant", "content": build_target(task, ex)}]}
        fmt = "prompt-completion"
    return TrainData(str(ref), [to_row(e) for e in train_ex], [to_row(e) for e in val_ex], digest, fmt,
                     extra={"task": task.name})
