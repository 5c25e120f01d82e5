"""Run names: `<base>-<dataset>_<method>_<peft>_<quant_tag>` and `<base>-base[_<quant_tag>]`,
optionally followed by `.v<8 hex digits>`: the variant suffix a study gives every folder it builds,
the first digits of the job's identity hash (settings the name cannot show, such as the learning
rate or the seed, and the identities of its inputs), so two recipes never share a folder.

Components are sanitised so a name is always one safe folder name: the base keeps letters,
digits, `.` and `-`; a dataset keeps `-` only when it is a registered task name (so the
`<base>-<dataset>` split stays unambiguous); `_` separates the fields.

Names a user types (a metrics name, an output folder, `train.output_dir`) follow the same rule
through `checked_name` / `output_folder`: already safe, or refused with the sanitised suggestion,
so no name ever becomes a path outside its folder.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from ftlab.errors import FtlabError
from ftlab.kinds.peft import PEFT_NAMES
from ftlab.kinds.quant import parse_quant_tag
from ftlab.kinds.tasks import TASK_NAMES

METHODS = ("SFT", "PT")
BASE_DATASET = "base"
_MAX_LEN = 200
_VARIANT_RE = re.compile(r"\.v([0-9a-f]{8})$")
VARIANT_DIGITS = 8


def sanitize_component(text: str, keep: str = ".-", sep: str = "-") -> str:
    """Letters, digits and `keep` survive; every other run (slashes, spaces, `_`) becomes `sep`."""
    text = str(text).strip()
    allowed = re.escape(keep)
    out = re.sub(rf"[^A-Za-z0-9{allowed}]+", sep, text)
    out = re.sub(r"-{2,}", "-", out)
    out = re.sub(r"\.{2,}", ".", out)  # never `..`
    out = out.strip("-.")
    if not out:
        raise FtlabError(f"name component {text!r} is empty after sanitising; use letters or digits")
    return out[:_MAX_LEN]


def checked_name(name: str, what: str) -> str:
    """A user-given name that becomes one file or folder name, returned unchanged when the run-name
    sanitiser leaves it as it is (letters, digits, `.`, `-`, `_`; no separator, `..`, leading dot or
    control character); otherwise refused, naming the option and a safe spelling."""
    text = str(name)
    try:
        safe = sanitize_component(text, keep="._-", sep="_")
    except FtlabError:
        safe = None
    if safe != text:
        last = re.split(r"[/\\]", text.rstrip("/\\"))[-1]  # a path-looking name: suggest its last part
        try:
            hint = f"; use e.g. {sanitize_component(last, keep='._-', sep='_')!r}"
        except FtlabError:
            hint = ""
        raise FtlabError(f"{what} {text!r} is not a plain name (letters, digits, '.', '-', '_'; no path separators, "
                         f"'..', leading dot or control characters){hint}")
    return text


def output_folder(value: str | os.PathLike, parent: Path, what: str) -> Path:
    """The folder a user-given output name or path means, always directly inside `parent`
    (Models/): `X`, `Models/X` (relative to the workspace root, `parent.parent`) or an absolute
    path inside `parent`; anything else is refused with one line."""
    text = str(value)
    if "/" not in text and "\\" not in text and not text.startswith("~"):
        return parent / checked_name(text, what)
    path = Path(text).expanduser()
    if not path.is_absolute():
        path = parent.parent / path
    resolved, home = path.resolve(), parent.resolve()
    if resolved.parent != home:
        raise FtlabError(f"{what} {text!r} is outside {home}; give a folder name (written to {home}/NAME) "
                         "or use --workdir for another workspace")
    return parent / checked_name(resolved.name, what)


def base_component(model_ref: str) -> str:
    """`Qwen/Qwen3-0.6B` -> `Qwen3-0.6B`; `path/to/model.gguf` -> `model`."""
    ref = str(model_ref).rstrip("/\\")
    ref = re.split(r"[/\\]", ref)[-1]
    if ref.lower().endswith(".gguf"):
        ref = ref[: -len(".gguf")]
    if ref.startswith("scratch:"):
        ref = "scratch-" + ref.split(":", 1)[1]
    return sanitize_component(ref)


def _task_components() -> dict[str, str]:
    return {dataset_component(n): n for n in TASK_NAMES.names()}


def dataset_component(dataset: str) -> str:
    """Registered tasks keep their name (with `_` -> `-`); custom names lose `-` too."""
    if dataset in TASK_NAMES:
        return sanitize_component(TASK_NAMES.canonical(dataset).replace("_", "-"))
    stem = re.split(r"[/\\]", str(dataset).rstrip("/\\"))[-1]
    stem = re.sub(r"\.(jsonl|json|parquet|csv|txt|md)$", "", stem, flags=re.I)
    return sanitize_component(stem, keep=".", sep=".")


def peft_tag(method: str, r: int | None = None) -> str:
    """The run name's PEFT field (`NoPeft`, `LoRa16`), as the PEFT kind registry defines it."""
    if method not in PEFT_NAMES.names():  # exact spelling: the tag is part of a folder name
        raise FtlabError(f"unknown PEFT method {method!r}; valid: {', '.join(PEFT_NAMES.names())}")
    return PEFT_NAMES.get(method).tag(r)


def _peft_field_ok(text: str) -> bool:
    """True when `text` is a PEFT field some registered kind writes (`NoPeft`, `<kind><rank>`)."""
    m = re.fullmatch(r"([A-Za-z]+?)(\d*)", text)
    if not m or m.group(1) not in PEFT_NAMES.names():
        return False
    kind = PEFT_NAMES.get(m.group(1))
    return bool(m.group(2)) == kind.adapter


def peft_rank(text: str | None) -> int | None:
    """The rank in a run name's PEFT field (`LoRa16` -> 16); None for a kind without a rank
    (`NoPeft`) or a field no registered kind writes."""
    m = re.fullmatch(r"([A-Za-z]+?)(\d+)", text or "")
    if not m or m.group(1) not in PEFT_NAMES.names() or not PEFT_NAMES.get(m.group(1)).adapter:
        return None
    return int(m.group(2))


def _peft_field_doc() -> str:
    return ", ".join(f"{n}<r>" if k.adapter else n for n, k in PEFT_NAMES.items())


@dataclass(frozen=True)
class RunName:
    base: str
    dataset: str  # the name component; "base" for a base snapshot
    method: str | None = None
    peft: str | None = None
    quant_tag: str = "NoQuant"
    variant: str | None = None  # `.v<hex>` suffix of study-built folders

    @property
    def is_base_snapshot(self) -> bool:
        return self.dataset == BASE_DATASET

    def render(self) -> str:
        suffix = f".v{self.variant}" if self.variant else ""
        if self.is_base_snapshot:
            name = f"{self.base}-{BASE_DATASET}"
            return (name if self.quant_tag == "NoQuant" else f"{name}_{self.quant_tag}") + suffix
        return f"{self.base}-{self.dataset}_{self.method}_{self.peft}_{self.quant_tag}{suffix}"

    def with_quant_tag(self, tag: str) -> "RunName":
        parse_quant_tag(tag)
        return RunName(self.base, self.dataset, self.method, self.peft, tag, self.variant)

    def with_variant(self, variant: str | None) -> "RunName":
        if variant is not None and not re.fullmatch(rf"[0-9a-f]{{{VARIANT_DIGITS}}}", variant):
            raise FtlabError(f"variant {variant!r} must be {VARIANT_DIGITS} lowercase hex digits")
        return RunName(self.base, self.dataset, self.method, self.peft, self.quant_tag, variant)

    def __str__(self) -> str:
        return self.render()


def build_run_name(base_model: str, dataset: str | None, method: str = "SFT", peft: str = "NoPeft",
                   quant_tag: str = "NoQuant") -> RunName:
    base = base_component(base_model)
    if dataset is None:
        return RunName(base, BASE_DATASET, quant_tag=quant_tag)
    if method not in METHODS:
        raise FtlabError(f"unknown training method {method!r}; valid: {', '.join(METHODS)}")
    if not _peft_field_ok(peft):
        raise FtlabError(f"bad PEFT tag {peft!r}; expected {_peft_field_doc()}")
    parse_quant_tag(quant_tag)
    return RunName(base, dataset_component(dataset), method, peft, quant_tag)


def parse_run_name(name: str) -> RunName:
    """Inverse of `RunName.render`; raises FtlabError naming what does not fit."""
    m = _VARIANT_RE.search(name)
    if m:
        return _parse_plain(name[: m.start()]).with_variant(m.group(1))
    return _parse_plain(name)


def _parse_plain(name: str) -> RunName:
    head, _, rest = name.partition("_")
    known = sorted([*_task_components(), BASE_DATASET], key=len, reverse=True)
    base = dataset = None
    for comp in known:
        if head.endswith("-" + comp) and len(head) > len(comp) + 1:
            base, dataset = head[: -len(comp) - 1], comp
            break
    if base is None:
        if "-" not in head:
            raise FtlabError(f"run name {name!r} has no '<base>-<dataset>' part")
        base, dataset = head.rsplit("-", 1)
    if dataset == BASE_DATASET:
        tag = rest or "NoQuant"
        parse_quant_tag(tag)
        return RunName(base, dataset, quant_tag=tag)
    fields = rest.split("_", 2)
    if len(fields) < 3:
        raise FtlabError(f"run name {name!r} must look like <base>-<dataset>_<method>_<peft>_<quant_tag>")
    method, peft, tag = fields
    if method not in METHODS:
        raise FtlabError(f"run name {name!r}: unknown method {method!r}; valid: {', '.join(METHODS)}")
    if not _peft_field_ok(peft):
        raise FtlabError(f"run name {name!r}: bad PEFT part {peft!r}; expected {_peft_field_doc()}")
    parse_quant_tag(tag)
    return RunName(base, dataset, method, peft, tag)


def with_quant_tag(name: str, tag: str) -> str:
    """The folder name of a PTQ output: the source's name with its quant tag replaced."""
    return parse_run_name(name).with_quant_tag(tag).render()
