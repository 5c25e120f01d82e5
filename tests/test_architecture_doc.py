"""docs/ARCHITECTURE.md is tested against the code: every path and public name it cites exists.

How the doc is read (kept simple on purpose; the doc follows these conventions):
- Only inline code (`...`) outside fenced blocks is checked.
- A path (`ftlab/io.py`, `ftlab/train/`, `tests/conftest.py`, `quantization_utils.py`) must exist.
- A dotted name starting with `ftlab.` is imported: the longest importable module prefix, then the
  rest as attributes (`ftlab.eval.records.results.stale_tasks`, `ftlab.eval.backends.sizing.PREFILL_TOKEN_BUDGET`).
- An unqualified name is checked when it is a call (`atomic_write_text(path, text)`), CamelCase
  (`RunName`) or UPPER_CASE (`TASKS`); other bare words (`tiny`, `numeric`) are values, not names, and
  values the doc means literally are written quoted (`"LoRa16"`). It must exist in a module of its
  table row (first column) or its paragraph / bullet; failing that, in a module of the foundation
  table. `Class.attr` checks the attribute too; `.attr` is an attribute of the last class cited
  before it in the same block.
- Where a call lists parameters, each listed name must be a parameter of the function (for a class,
  of its constructor, or one of its base classes: `ConfigError(FtlabError)`).
Sample-line fields are checked against lines a real (tiny) evaluation writes.
"""

from __future__ import annotations

import ast
import dataclasses
import importlib
import inspect
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DOC = REPO / "docs" / "ARCHITECTURE.md"

_CODE = re.compile(r"`([^`\n]+)`")
_PATH = re.compile(r"^(ftlab|tests|benchmarks|docs|tools|examples|Fine-tuning|Testing)/[\w./-]*$|^[\w-]+\.py$")
_NAME = re.compile(r"^(?P<name>\.?[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*)"
                   r"(?P<call>\((?P<args>[^()]*(?:\([^()]*\)[^()]*)*)\))?(?:\s*->.*)?$")
# Workspace folders (`Testing/metrics/`) and files inside model folders (`README.md`) are not repo paths.
_NOT_CHECKED = re.compile(r"^Testing/(metrics|studies|\.jobs)\b|\.(md|json|jsonl|yaml|lock|parquet|gguf|jinja|safetensors)$")


def _blocks(text: str) -> list[str]:
    """Table rows, bullets and paragraphs (fenced code removed): the unit a module attribution spans."""
    text = re.sub(r"```.*?```", "", text, flags=re.S)
    blocks, current = [], []
    for line in text.splitlines():
        starts_new = line.startswith(("|", "- ", "#")) or not line.strip()
        if starts_new and current:
            blocks.append(" ".join(current))
            current = []
        if line.strip():
            current.append(line)
        if line.startswith(("|", "#")):
            blocks.append(" ".join(current))
            current = []
    if current:
        blocks.append(" ".join(current))
    return blocks


def _module_of_path(path: str) -> str | None:
    if path.startswith("ftlab/") and path.endswith(".py"):
        return path[:-3].replace("/", ".").removesuffix(".__init__")
    if path.startswith("ftlab/") and path.endswith("/"):
        return path.rstrip("/").replace("/", ".")
    return None


def _import_dotted(dotted: str):
    """(module, remaining attribute parts) for the longest importable prefix of an `ftlab.` name."""
    parts = dotted.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            return importlib.import_module(".".join(parts[:cut])), parts[cut:]
        except ModuleNotFoundError as exc:
            if not (".".join(parts[:cut]) + ".").startswith(f"{exc.name}."):
                raise  # a module that exists failed to import: a real error
    raise AssertionError(f"{dotted}: no importable module")


def _has_attr(obj, name: str) -> bool:
    """An attribute of a class includes dataclass fields, constructor parameters and `self.x = ...`."""
    if hasattr(obj, name):
        return True
    if inspect.isclass(obj):
        if dataclasses.is_dataclass(obj) and name in {f.name for f in dataclasses.fields(obj)}:
            return True
        for klass in obj.__mro__:
            if klass.__module__ == "builtins":
                continue
            try:
                if re.search(rf"\bself\.{re.escape(name)}\s*[:=]", inspect.getsource(klass)):
                    return True
            except (OSError, TypeError):
                pass
    return False


_MISSING = object()


def _resolve(obj, parts: list[str]):
    """`obj.a.b` for parts [a, b], or _MISSING; an instance attribute without a class value gives None."""
    for part in parts:
        if obj is None or not _has_attr(obj, part):
            return _MISSING
        obj = getattr(obj, part, None)
    return obj


def _params_ok(obj, args: str) -> list[str]:
    """Problems with the parameter names a doc call lists (`f(a, *, b=None) -> x`)."""
    if not args.strip() or args.strip() == "...":
        return []
    try:
        sig = inspect.signature(obj)
    except (TypeError, ValueError):
        return []
    params = set(sig.parameters)
    bases = {k.__name__ for k in obj.__mro__} if inspect.isclass(obj) else set()
    problems = []
    try:
        listed = ast.parse(f"f({args})", mode="eval").body
        names = [a.id for a in listed.args if isinstance(a, ast.Name)] + [k.arg for k in listed.keywords]
    except SyntaxError:  # annotated / `x=` forms: take each top-level item's leading identifier
        names = []
        depth, item = 0, ""
        for ch in args + ",":
            if ch == "," and depth == 0:
                m = re.match(r"\s*\*{0,2}\s*([A-Za-z_]\w*)", item)
                if m:
                    names.append(m.group(1))
                item = ""
                continue
            depth += ch in "([{"
            depth -= ch in ")]}"
            item += ch
    for n in names:
        if n not in params and n not in bases:
            problems.append(f"parameter {n!r} (has {', '.join(sig.parameters) or 'none'})")
    return problems


def _lookup_qualified(name: str):
    """(object, problem) for an `ftlab.`-qualified name."""
    try:
        obj, rest = _import_dotted(name)
    except AssertionError as exc:
        return None, str(exc)
    where = obj.__name__
    for part in rest:
        if not _has_attr(obj, part):
            return None, f"{name}: {where} has no {part!r}"
        obj, where = getattr(obj, part, None), f"{where}.{part}"
    return obj, None


def _lookup_in(modules: list[str], name: str):
    """The object `name` names in the first of `modules` that has it, or _MISSING."""
    for mod_name in modules:
        mod, rest = _import_dotted(mod_name)
        mod = _resolve(mod, rest)
        parts = name.split(".")
        if parts[0] == mod_name.rsplit(".", 1)[-1] and len(parts) > 1:
            parts = parts[1:]  # `cli.COMMANDS` in the row of ftlab/cli.py
        obj = _resolve(mod, parts)
        if obj is not _MISSING:
            return obj
    return _MISSING


def _block_modules(block: str, codes: list[str]) -> list[str]:
    """The modules a table row (its first column) or a paragraph cites: where its bare names live."""
    cited = _CODE.findall(block.split("|")[1]) if block.startswith("|") else []
    out = [m for c in cited + codes if (m := _module_of_path(c))]
    return out + [c for c in codes if c.startswith("ftlab.") and _NAME.match(c) and "(" not in c]


def check_doc(text: str, repo: Path = REPO) -> list[str]:
    """Every problem with the paths and names `text` cites, one line each; [] when all exist."""
    problems: list[str] = []
    blocks = _blocks(text)
    foundation = [m for b in blocks if b.startswith("|") for m in _block_modules(b, [])]
    for block in blocks:
        codes = [c.strip() for c in _CODE.findall(block)]
        local = _block_modules(block, codes)
        last_class = None
        for code in codes:
            if _NOT_CHECKED.search(code):
                continue
            if _PATH.match(code):
                if not (repo / code).exists():
                    problems.append(f"{code}: no such path")
                continue
            m = _NAME.match(code)
            if not m:
                continue  # a value, an expression, a JSON shape
            name, call, args = m.group("name"), m.group("call"), m.group("args") or ""
            first = name.lstrip(".").split(".")[0]
            if name.startswith("ftlab."):
                obj, problem = _lookup_qualified(name)
                if problem:
                    problems.append(problem)
                    continue
            elif name.startswith("."):
                if last_class is not None and not _has_attr(last_class, name[1:].split(".")[0]):
                    problems.append(f"{code}: {last_class.__name__} has no {name[1:]!r}")
                continue
            elif "." in name and not first[0].isupper() and first not in {m.rsplit(".", 1)[-1] for m in local}:
                continue  # `logging.getLogger(...)`, `base_model.ref`: another library, or a document path
            elif call or (first[0].isupper() and len(first) > 1) or "." in name:
                obj = _lookup_in(local + [f for f in foundation if f not in local], name)
                if obj is _MISSING:
                    where = ", ".join(dict.fromkeys(local)) or "the foundation table's modules"
                    problems.append(f"{code}: {name} not found in {where}")
                    continue
            else:
                continue  # a bare lowercase word (`tiny`, `numeric`) is a value
            if inspect.isclass(obj):
                last_class = obj
            if call and callable(obj):
                problems += [f"{code}: {p}" for p in _params_ok(obj, args)]
    return problems


def test_every_cited_path_and_name_exists():
    assert check_doc(DOC.read_text()) == []


@pytest.mark.parametrize("snippet, expected", [
    ("| `ftlab/io.py` | `atomic_write_text(path, text)` |", []),
    ("| `ftlab/io.py` | `atomic_write_textt(path, text)` |", ["atomic_write_textt not found in ftlab.io"]),
    ("| `ftlab/io.py` | `atomic_write_text(path, body)` |", ["atomic_write_text(path, body): parameter 'body'"]),
    ("| `ftlab/nope.py` | x |", ["ftlab/nope.py: no such path"]),
    ("- `ftlab.schema.TRAINING_METADATA_VERSION` is gone.", ["ftlab.schema has no 'TRAINING_METADATA"]),
    ("- `ftlab.eval.nosuchmodule.run` too.", ["ftlab.eval.nosuchmodule.run: ftlab.eval has no 'nosuchmodule'"]),
    ("| `ftlab/models/sources.py` | `load_model(ref, *, for_training_x=False)` |", ["parameter 'for_training_x'"]),
    ("| `ftlab/paths.py` | `Workspace(root)`: `.models_dir`, `.nothing_here` |", ["Workspace has no 'nothing_here'"]),
    ("| `ftlab/errors.py` | `ConfigError(FtlabError)`, values such as `tiny` and `\"LoRa16\"` |", []),
])
def test_checker_catches_stale_names(snippet, expected):
    """The checker fails on fabricated stale citations (and passes their correct forms)."""
    problems = check_doc(snippet)
    assert len(problems) == len(expected), problems
    for problem, fragment in zip(problems, expected):
        assert fragment in problem, problems


# ---------------------------------------------------------------------------------------------
# sample lines: the fields the doc lists are the fields a real evaluation writes


def _doc_fields(label: str) -> set[str]:
    """The quoted field names in the inline code right after `label` in the doc."""
    text = DOC.read_text()
    at = text.index(label) + len(label)
    return set(re.findall(r'"(\w+)"', re.compile(r"`([^`]+)`").search(text, at).group(1)))


def test_sample_line_fields_match_what_evaluation_writes(workspace, shared_datasets):
    from ftlab.cli import main
    from ftlab.eval.records.documents import load_metrics_document
    from ftlab.eval.evaluator import metrics_paths
    from ftlab.io import read_jsonl

    assert main(["evaluate", "scratch:tiny", "--threads", "1", "--datasets", "synthetic-arith", "squad_v2", "arc:ll",
                 "--limit", "2", "eval.max_new_tokens=4", "eval.bootstrap_samples=10",
                 f"eval.source_dir={shared_datasets}"]) == 0
    lines = read_jsonl(metrics_paths(workspace, "scratch-tiny")[1])
    keys = {ln["dataset"]: set(ln) for ln in lines}
    generation = _doc_fields("Generation lines:")
    assert keys["synthetic-arith"] == generation
    assert keys["squad_v2"] == generation | _doc_fields("Span tasks add")
    assert keys["arc:ll"] == _doc_fields("Log-likelihood lines (`arc:ll`):")

    # Every field of the metrics document (top level, each task block, its settings) is in the doc's
    # schema block (one direction: the doc may describe optional fields this small run does not write).
    schema = re.search(r"### Metrics document.*?```(.*?)```", DOC.read_text(), re.S).group(1)
    documented = set(re.findall(r'"(\w+)"', schema))
    doc = load_metrics_document(metrics_paths(workspace, "scratch-tiny")[0])
    written = set(doc) | set(doc["model"]) | set(doc["summary"])
    for block in doc["datasets"].values():
        written |= set(block) | set(block["settings"])  # metric names are per task ("...task metrics")
        written |= {k for v in block["settings"].values() if isinstance(v, dict) for k in v}
    assert written - documented == set()
