"""lm-evaluation-harness tasks as dataset entries: `lmeval:NAME` and `lmeval:PATH.yaml`.

NAME is a task, group or tag of lm-eval's registry (`lmeval:gsm8k`, `lmeval:mmlu`,
`lmeval:hellaswag`); PATH.yaml a task file of the user's (its `include:` and `!function` resolve
from its folder, as in lm-eval). lm-eval's TaskManager builds the tasks:
documents, prompts, few-shot examples, filters and metrics are lm-eval's own definitions, never
copied into ftlab.

Machines without a dataset hub point a registry task at local files with `eval.lmeval_data`
(`{gsm8k: {test: gsm8k-test.jsonl, train: gsm8k-train.jsonl}}`, split names as the task's YAML
names them): ftlab loads, from a temporary folder, a task file of the same name that `include:`s
the registry's and replaces only `dataset_path`/`dataset_name`/`dataset_kwargs` (what a user would
write by hand; prompts, shots, filters and metrics stay the registry's).
"""

from __future__ import annotations

import contextlib
import difflib
import functools
import hashlib
import logging
import tempfile
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any, Iterator

import yaml
from tqdm import tqdm

from ftlab.errors import FtlabError

log = logging.getLogger(__name__)

PREFIX = "lmeval:"
# lm-eval's default few-shot seed (simple_evaluate's fewshot_random_seed): the same shots as its CLI.
FEWSHOT_SEED = 1234
SPLIT_KEYS = ("training_split", "validation_split", "test_split", "fewshot_split")
_FORMATS = {".json": "json", ".jsonl": "json", ".parquet": "parquet", ".csv": "csv"}
INSTALL_HINT = "install lm-evaluation-harness: pip install 'ftlab[lmeval]' (or uv sync --extra lmeval)"


def is_lmeval(entry: str) -> bool:
    return str(entry).startswith(PREFIX)


@dataclass(frozen=True)
class LmEvalTask:
    """What an evaluation plan holds for an `lmeval:` entry (the fields the evaluator reads of a task)."""

    name: str  # registry name or task file path, as written after `lmeval:`
    answer_kind: str | None = None  # lm-eval's metrics score it, not an ftlab answer kind
    instruction: str | None = None
    max_new_tokens: int | None = None  # each request carries lm-eval's own max_gen_toks
    labels: tuple[str, ...] = ()
    doc: str = "an lm-evaluation-harness task"

    @property
    def path(self) -> Path | None:
        return Path(self.name).expanduser() if self.name.endswith((".yaml", ".yml")) else None


def lm_eval_version() -> str:
    try:
        return version("lm_eval")
    except PackageNotFoundError:
        raise FtlabError(f"lmeval: entries need lm-evaluation-harness, which is not installed; {INSTALL_HINT}") from None


@functools.lru_cache(maxsize=1)
def _manager():
    """lm-eval's TaskManager over its own registry: scanning it takes about 6 s (plus 4.5 s to
    import lm_eval), so one per process. Task files and local-data overrides are loaded by path
    through it, never added as search folders (lm-eval scans a search folder recursively)."""
    lm_eval_version()
    from lm_eval.tasks import TaskManager  # lazy: lm_eval imports its whole task index

    return TaskManager()


def resolve(entry: str) -> LmEvalTask:
    """The task an `lmeval:` entry names, checked against lm-eval's registry (no data is read)."""
    name = str(entry)[len(PREFIX):].strip()
    if not name:
        raise FtlabError(f"eval.datasets: {entry!r} names no task; write lmeval:NAME (e.g. lmeval:gsm8k) or lmeval:FILE.yaml")
    task = LmEvalTask(name)
    if task.path is not None:
        if not task.path.is_file():
            raise FtlabError(f"eval.datasets: {entry!r}: task file {task.path} not found; give an existing lm-eval task YAML")
        return task
    manager = _manager()
    if name not in manager.all_tasks:
        close = difflib.get_close_matches(name, manager.all_tasks, n=5)
        hint = f" (close: {', '.join(close)})" if close else ""
        raise FtlabError(f"eval.datasets: {entry!r} is not a task, group or tag of lm-eval {lm_eval_version()}{hint}; "
                         "`python -m lm_eval ls tasks` lists them, or give a task file: lmeval:PATH.yaml")
    return task


def data_overrides(task: LmEvalTask, lmeval_data: dict) -> dict[str, dict[str, str]]:
    """eval.lmeval_data checked: task name -> {split: absolute file}."""
    out: dict[str, dict[str, str]] = {}
    for name, splits in (lmeval_data or {}).items():
        if not isinstance(splits, dict) or not splits:
            raise FtlabError(f"eval.lmeval_data.{name} must map split names to files, e.g. {{test: FILE, train: FILE}}")
        files, formats = {}, set()
        for split, file in splits.items():
            path = Path(str(file)).expanduser()
            if path.suffix.lower() not in _FORMATS:
                raise FtlabError(f"eval.lmeval_data.{name}.{split}: {path} is not a .json/.jsonl/.parquet/.csv file")
            if not path.is_file():
                raise FtlabError(f"eval.lmeval_data.{name}.{split}: {path} not found; give an existing file")
            files[str(split)] = str(path.resolve())
            formats.add(_FORMATS[path.suffix.lower()])
        if len(formats) > 1:
            raise FtlabError(f"eval.lmeval_data.{name}: the splits' files must share one format (got {', '.join(sorted(formats))})")
        out[str(name)] = files
    return out


def settings(task: LmEvalTask, lmeval_data: dict, num_fewshot: int | None) -> dict:
    """What identifies this entry's result beyond ftlab's own settings: lm-eval's version (its
    registry's task definitions), the task file's contents, the local data and the shots."""
    out: dict[str, Any] = {"lm_eval": lm_eval_version(), "task": task.name, "num_fewshot": num_fewshot,
                           "fewshot_seed": FEWSHOT_SEED}
    if task.path is not None:
        folder = task.path.parent
        digest = hashlib.sha256()
        for f in sorted(folder.glob("*")):
            if f.suffix in (".yaml", ".yml", ".py") and f.is_file():
                digest.update(f.name.encode() + b"\0" + f.read_bytes())
        out["task_files"] = digest.hexdigest()[:16]
    data = data_overrides(task, lmeval_data)
    if data:
        out["data"] = {name: {split: {"file": f, "bytes": Path(f).stat().st_size} for split, f in splits.items()}
                       for name, splits in sorted(data.items())}
    return out


def _registry_config(yaml_path, resolve_func: bool = False) -> dict:
    """A task YAML with its `include:`s merged (`!function`s resolved only when asked)."""
    # lm-eval's own reader: the include rules are lm-eval's.
    from lm_eval.tasks._yaml_loader import load_yaml  # lazy: lm_eval imports torch and its task index

    try:
        return load_yaml(yaml_path, resolve_func=resolve_func)
    except (OSError, ValueError, yaml.YAMLError, ImportError, AttributeError) as exc:
        raise FtlabError(f"lm-eval task file {yaml_path} cannot be read ({type(exc).__name__}: {exc}); fix the YAML") from None


@dataclass(frozen=True)
class _Search:
    """A name to load from an extra search folder (a group file)."""

    folder: str
    name: str


@contextlib.contextmanager
def _spec(task: LmEvalTask, data: dict[str, dict[str, str]]) -> Iterator[str | _Search]:
    """What TaskManager.load is given: the task file's path, the registry name, or (local data)
    the path of a temporary task file that `include:`s the registry's and points it at the files."""
    if task.path is not None:
        config = _registry_config(task.path.resolve())
        if "group" not in config:
            yield str(task.path.resolve())
            return
        # A group file is loaded by name from a search folder holding only a file that includes it:
        # lm-eval 0.4.13 cannot load a group by path (it names the entry after the `task:` list) nor
        # as a config dict (the group's own keys reach its tasks), and a search folder is scanned
        # recursively, so the user's own folder is not one.
        with tempfile.TemporaryDirectory(prefix="ftlab-lmeval-") as tmp:
            Path(tmp, "group.yaml").write_text(yaml.safe_dump({"include": str(task.path.resolve())}), encoding="utf-8")
            yield _Search(tmp, str(config["group"]))
        return
    files = data.get(task.name)
    if files is None:
        if data and task.name in _manager().all_groups + _manager().all_tags:
            raise FtlabError(f"eval.lmeval_data points single tasks at local files; lmeval:{task.name} is a group or tag: "
                             "evaluate its tasks one by one (lmeval:TASK) or write a group file (lmeval:FILE.yaml)")
        yield task.name
        return
    entry = _manager().task_index.get(task.name)
    if entry is None or getattr(entry, "yaml_path", None) is None or task.name not in _manager().all_subtasks:
        raise FtlabError(f"eval.lmeval_data.{task.name}: lm-eval's {task.name!r} is not a task defined by a YAML file; "
                         "point a task (not a group or tag) at local files")
    fmt = _FORMATS[Path(next(iter(files.values()))).suffix.lower()]
    override = {"include": str(entry.yaml_path), "task": task.name, "dataset_path": fmt, "dataset_name": None,
                "dataset_kwargs": {"data_files": files}}
    # A split the task names but the files do not provide is dropped (lm-eval would look it up).
    config = _registry_config(entry.yaml_path)
    for key in SPLIT_KEYS:
        if config.get(key) is not None and config[key] not in files:
            override[key] = None
    if not any(config.get(k) in files for k in ("test_split", "validation_split")):
        wanted = [config[k] for k in ("test_split", "validation_split") if config.get(k)]
        raise FtlabError(f"eval.lmeval_data.{task.name}: give the split lm-eval evaluates ({' or '.join(wanted)}); "
                         f"got {', '.join(files)}")
    with tempfile.TemporaryDirectory(prefix="ftlab-lmeval-") as tmp:
        path = Path(tmp, f"{task.name}.yaml")
        path.write_text(yaml.safe_dump(override), encoding="utf-8")
        yield str(path)


@contextlib.contextmanager
def quiet_lm_eval() -> Iterator[None]:
    """lm-eval's per-task "Building contexts" bar and INFO lines off while it builds requests: only
    ftlab's own lines and bars belong on the console (lm-eval writes them through module globals)."""
    import lm_eval.api.task as task_module  # lazy: lm_eval imports torch and its task machinery

    loggers = [logging.getLogger(n) for n in ("lm_eval", "lm-eval")]
    levels = [lg.level for lg in loggers]
    original = task_module.tqdm
    task_module.tqdm = functools.partial(tqdm, disable=True)
    for lg in loggers:
        lg.setLevel(max(lg.level, logging.WARNING) if log.isEnabledFor(logging.DEBUG) else logging.ERROR)
    try:
        yield
    finally:
        task_module.tqdm = original
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def load(task: LmEvalTask, lmeval_data: dict, num_fewshot: int | None) -> dict:
    """lm-eval's loaded tasks and groups (TaskManager.load: {"tasks", "groups", "group_map"}), with
    their documents read and the few-shot settings applied as lm-eval's simple_evaluate applies
    them. A dataset that cannot be read fails in one line naming it and how to use local files."""
    data = data_overrides(task, lmeval_data)
    with _spec(task, data) as spec, quiet_lm_eval():
        try:
            if isinstance(spec, _Search):
                from lm_eval.tasks import TaskManager  # lazy: lm_eval imports its whole task index

                loaded = TaskManager(include_path=spec.folder).load([spec.name])
            else:
                loaded = _manager().load([spec])
        except FtlabError:
            raise
        except Exception as exc:  # datasets raises many kinds (offline, missing config, bad file)
            raise _data_error(task, exc) from None
    for obj in loaded["tasks"].values():
        if num_fewshot is not None:
            obj.set_config(key="num_fewshot", value=num_fewshot)
        elif obj.get_config("num_fewshot") is None:
            obj.set_config(key="num_fewshot", value=0)
        obj.set_fewshot_seed(seed=FEWSHOT_SEED)
    if not loaded["tasks"]:
        raise FtlabError(f"eval.datasets: lmeval:{task.name} holds no tasks")
    return loaded


def _data_error(task: LmEvalTask, exc: Exception) -> FtlabError:
    first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
    where = ""
    if task.path is None:
        entry = _manager().task_index.get(task.name)
        yaml_path = getattr(entry, "yaml_path", None)
        if yaml_path is not None:
            try:
                cfg = _registry_config(yaml_path)
                where = f" (dataset {cfg.get('dataset_path')}" + (f"/{cfg['dataset_name']}" if cfg.get("dataset_name") else "") + ")"
            except FtlabError:
                where = ""
    return FtlabError(
        f"lmeval:{task.name}: its data cannot be loaded{where}: {type(exc).__name__}: {first}; without a hub, point the "
        f"task at local files: eval.lmeval_data='{{{task.name}: {{test: FILE, train: FILE}}}}' (or a task file "
        "with dataset_path/dataset_kwargs.data_files)")
