"""Per-task result identity: what makes a task's result, which stored samples a run may reuse, and
when a stored result is stale.

`Testing/metrics/<model>.json` holds one block per task key (`arc`, `boolq`, `perplexity:arc`,
...). Every block carries `settings`: everything that changes that task's answers or its scores
(scoring mode and version, prompt, shots, generation limits, stop rule, tolerance, rows, model
dtype, backend). A task is current when its stored settings equal the settings the current config
gives it; tasks are added, replaced and reported stale one at a time, never as a whole document.

`settings_key` hashes the part of the settings that changes a single response (mode, model,
backend, generation limits); every sample line carries it. Reuse is keyed by (task key, row index,
prompt hash, settings key): raising `limit` reuses the finished rows, changing a scoring rule or a
tolerance rescores the stored responses without generating again, and lines of superseded
settings stay in the samples file (a run that returns to those settings reuses them).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

from ftlab.config import EvalConfig, ModelConfig, config_to_dict, dotted_changes
from ftlab.io import read_jsonl

# The groups of `settings` that change one response; their hash is the sample lines' `settings_key`.
# (The prompt text is checked per line by its own hash, so prompt settings are not in the key.)
SAMPLE_KEY_GROUPS = ("scoring_mode", "model", "backend", "generation", "perplexity")
MODEL_SETTINGS = ("revision", "dtype", "attn_implementation")
NOT_EVALUATED = "not evaluated yet"


@dataclass(frozen=True)
class TaskSpec:
    """One task of an evaluation, as far as its result identity goes (no rows, no model)."""

    key: str  # key in the metrics document
    runner: str  # scoring mode: the evaluation runner ("generate", "perplexity", ...)
    task: str
    answer_kind: str | None
    instruction: str | None  # None when unknown (results upgraded from schema v1)
    max_new_tokens: int | None  # effective cap (generative tasks)
    tolerance: dict | None  # effective numeric tolerance (numeric tasks)
    scoring_version: int
    runner_settings: dict | None = None  # what else identifies the runner's result (lmeval: lm-eval's version, task, data)


def _defaults() -> tuple[dict, dict]:
    return config_to_dict(EvalConfig()), config_to_dict(ModelConfig())


def task_settings(spec: TaskSpec, eval_cfg: dict, model_cfg: dict) -> dict:
    """The settings that identify one task's result, from the `eval:` and `model:` config sections
    (plain dicts, as `config_to_dict` or a stored document gives them; missing keys are defaults)."""
    eval_defaults, model_defaults = _defaults()
    e = {**eval_defaults, **(eval_cfg or {})}
    m = {**model_defaults, **(model_cfg or {})}
    settings: dict[str, Any] = {
        "task": spec.task,
        "answer_kind": spec.answer_kind,
        "scoring_mode": spec.runner,
        "scoring_version": spec.scoring_version,
        "model": {k: m.get(k) for k in MODEL_SETTINGS},
        "backend": {"name": e.get("backend"), "options": e.get("backend_options") or {}},
        "prompt": {"instruction": spec.instruction, "system_prompt": e.get("system_prompt"),
                   "enable_thinking": bool(e.get("enable_thinking")), "num_fewshot": int(e.get("num_fewshot") or 0),
                   "prompt_format": e.get("prompt_format") or "auto"},
        "rows": {"limit": e.get("limit"), "source_dir": e.get("source_dir")},
        "bootstrap": {"samples": e.get("bootstrap_samples"), "seed": e.get("seed")},
    }
    if spec.runner == "generate":
        settings["generation"] = {"max_new_tokens": spec.max_new_tokens, "stop_at_box": bool(e.get("stop_at_box"))}
    if spec.runner == "perplexity":
        settings["perplexity"] = {"max_length": e.get("perplexity_max_length")}
    if spec.tolerance is not None:
        settings["tolerance"] = dict(spec.tolerance)
    if spec.runner_settings is not None:
        settings[spec.runner] = dict(spec.runner_settings)
    return settings


def _hash(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def settings_key(settings: dict) -> str:
    """Hash of the settings that change a single response (stored in every sample line)."""
    return _hash({group: settings.get(group) for group in SAMPLE_KEY_GROUPS})


def settings_hash(settings: dict) -> str:
    return _hash(settings)


def request_hash(expected: dict[str, dict]) -> str:
    """One hash for a whole request (task key -> settings); failure reports are matched on it."""
    return _hash({key: settings_hash(s) for key, s in expected.items()})


def _show(value: Any) -> str:
    text = json.dumps(value, default=str)
    return text if len(text) <= 40 else "(changed)"


def settings_changes(old: dict | None, new: dict) -> list[str]:
    """`generation.max_new_tokens 24 -> 32`, one line per differing setting."""
    out = []
    # The scoring rule first: it is the change a reader most needs to see.
    for path, a, b in sorted(dotted_changes(old, new), key=lambda c: c[0] != "scoring_version"):
        va, vb = _show(a), _show(b)
        out.append(f"{path} changed" if "(changed)" in (va, vb) else f"{path} {va} -> {vb}")
    return out


def task_status(doc: dict | None, key: str, settings: dict) -> str | None:
    """None when the document holds a current result for `key`; else why not."""
    block = ((doc or {}).get("datasets") or {}).get(key)
    if not isinstance(block, dict):
        return NOT_EVALUATED
    if block.get("settings") == settings:
        return None
    changes = settings_changes(block.get("settings"), settings)
    return "; ".join(changes[:4]) + (f"; +{len(changes) - 4} more" if len(changes) > 4 else "")


def stale_tasks(doc: dict | None, expected: dict[str, dict]) -> dict[str, str]:
    """Task key -> reason, for every expected task the document does not hold a current result for."""
    out = {}
    for key, settings in expected.items():
        reason = task_status(doc, key, settings)
        if reason is not None:
            out[key] = reason
    return out


# ---------------------------------------------------------------------------------------------
# Sample lines


def line_key(line: dict, legacy: dict[tuple[str, str], str]) -> str | None:
    """The settings key of a sample line. Lines of schema-v1 evaluations carry only the
    evaluation's config hash; the upgraded document maps (task, that hash) to the task's key."""
    key = line.get("settings_key")
    if key:
        return key
    old = line.get("eval_config_hash")
    return legacy.get((line.get("dataset"), old), old)


def legacy_keys(doc: dict | None) -> dict[tuple[str, str], str]:
    out = {}
    for key, block in ((doc or {}).get("datasets") or {}).items():
        if isinstance(block, dict) and block.get("legacy_eval_config_hash") and block.get("settings_key"):
            out[(key, block["legacy_eval_config_hash"])] = block["settings_key"]
    return out


class SampleStore:
    """The sample lines of one model, indexed for reuse: per (task key, settings key), the last
    line of each row, and every line by (row, prompt hash)."""

    def __init__(self, lines: list[dict], doc: dict | None = None):
        legacy = legacy_keys(doc)
        self._last: dict[tuple[str, str], dict[int, dict]] = {}
        self._by_prompt: dict[tuple[str, str], dict[tuple[int, str], dict]] = {}
        for line in lines:
            if not isinstance(line, dict) or "dataset" not in line or "index" not in line:
                continue
            group = (line["dataset"], line_key(line, legacy))
            self._last.setdefault(group, {})[line["index"]] = line
            self._by_prompt.setdefault(group, {})[(line["index"], line.get("prompt_hash"))] = line

    @classmethod
    def read(cls, path, doc: dict | None = None) -> "SampleStore":
        return cls(read_jsonl(path), doc)

    def latest(self, dataset: str, key: str) -> dict[int, dict]:
        """Row index -> the last line written for it under these settings."""
        return dict(self._last.get((dataset, key), {}))

    def find(self, dataset: str, key: str, index: int, prompt_hash: str) -> dict | None:
        """Any line of this row asked with this exact prompt under these settings."""
        return self._by_prompt.get((dataset, key), {}).get((index, prompt_hash))

    def count(self, expected: dict[str, dict]) -> int:
        """Lines already done for the expected tasks (resumable work)."""
        return sum(len(self._last.get((k, settings_key(s)), {})) for k, s in expected.items())


def current_samples(doc: dict, lines: list[dict]) -> list[dict]:
    """The sample lines behind the document's current task results: for each task block, the last
    line of each of its rows under the block's settings key (superseded settings, rows beyond the
    block's `n` and corrupt lines are left out)."""
    store = SampleStore(lines, doc)
    out = []
    for key, block in (doc.get("datasets") or {}).items():
        if not isinstance(block, dict) or not block.get("settings_key"):
            continue
        n = int(block.get("n") or 0)
        rows = store.latest(key, block["settings_key"])
        out += [rows[i] for i in sorted(rows) if i < n]
    return out
