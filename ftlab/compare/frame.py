"""Metrics JSON documents -> one tidy pandas DataFrame (a row per model x task x metric).

The tidy frame is the single source for the CLI table, the summary CSV, deltas and plots, so a
notebook user calling `load_metrics()` sees exactly the numbers `ftlab compare` prints.
"""

from __future__ import annotations

import logging
import math
import os
from pathlib import Path
from typing import Iterable

import pandas as pd

from ftlab.errors import FtlabError
from ftlab.io import dir_size_bytes
from ftlab.kinds.peft import PEFT_NAMES
from ftlab.naming import RunName, parse_run_name, peft_rank
from ftlab.paths import MetricsFiles, Workspace

log = logging.getLogger(__name__)

ID_COLUMNS = ["model", "base", "dataset", "method", "peft", "rank", "quant"]
COLUMNS = [*ID_COLUMNS, "task", "metric", "group", "value", "ci_low", "ci_high", "n",
           "size_on_disk_bytes", "path", "scoring_version"]
# Row groups: task scores go in the wide table; "format"/"speed" are diagnostics; "summary" is the
# document's own cross-task aggregate (task "overall").
SCORE, FORMAT, SPEED, SUMMARY = "score", "format", "speed", "summary"
OVERALL_TASK = "overall"
_SUFFIXES = MetricsFiles.other_suffixes()


def metrics_dir_of(source: Workspace | str | os.PathLike) -> Path:
    """A Workspace, a workspace root (holding Testing/metrics) or the metrics folder itself."""
    if isinstance(source, Workspace):
        return source.metrics_dir
    path = Path(source)
    as_root = Workspace(path.resolve()).metrics_dir
    return as_root if as_root.is_dir() else path


def metrics_files(metrics_dir: Path) -> list[Path]:
    """Each model's `<model>.json`; error reports, samples and hidden/temp files are not metrics."""
    if not metrics_dir.is_dir():
        return []
    return sorted(
        p for p in metrics_dir.glob("*.json")
        if p.is_file() and not p.name.startswith(".") and not p.name.endswith(_SUFFIXES)
    )


def _name_fields(model: str, meta: dict) -> dict:
    fields = meta.get("name_fields") if isinstance(meta, dict) else None
    if isinstance(fields, dict) and fields.get("base"):
        out = {k: fields.get(k) for k in ("base", "dataset", "method", "peft", "quant_tag")}
    else:
        try:
            rn = parse_run_name(meta.get("run_name") or model)
            out = {"base": rn.base, "dataset": rn.dataset, "method": rn.method, "peft": rn.peft,
                   "quant_tag": rn.quant_tag}
        except FtlabError:
            # Models named outside the convention (a hub id evaluated directly) still compare.
            out = {"base": model, "dataset": None, "method": None, "peft": None, "quant_tag": None}
    return out


def _rank(meta: dict, peft_tag: str | None) -> float:
    """The adapter rank from the metadata, else from the run name; NaN for kinds without one."""

    peft = meta.get("peft") if isinstance(meta, dict) else None
    if isinstance(peft, dict) and isinstance(peft.get("r"), (int, float)):
        method = peft.get("method")
        if method not in PEFT_NAMES.names() or PEFT_NAMES.get(method).adapter:
            return float(peft["r"])
        return math.nan
    rank = peft_rank(peft_tag)
    return float(rank) if rank is not None else math.nan


def _num(value) -> float:
    if isinstance(value, bool):
        return float(value)
    if isinstance(value, (int, float)):
        return float(value)
    return math.nan


def model_size_bytes(doc: dict, workspace: Workspace | None) -> float:
    """Size recorded at evaluation time, else measured from the model folder if it still exists."""
    model = doc.get("model") or {}
    meta = model.get("metadata") or {}
    size = meta.get("size_on_disk_bytes")
    if isinstance(size, (int, float)) and size > 0:
        return float(size)
    candidates = []
    if model.get("path"):
        candidates.append(Path(model["path"]))
    if workspace is not None and model.get("name"):
        candidates.append(workspace.models_dir / model["name"])
    for folder in candidates:
        if folder.is_dir():
            return float(dir_size_bytes(folder))
    return math.nan


def rows_from_document(doc: dict, workspace: Workspace | None = None) -> list[dict]:
    model_info = doc.get("model") or {}
    model = model_info.get("name")
    if not model:
        raise FtlabError("metrics document has no model.name")
    meta = model_info.get("metadata") or {}
    nf = _name_fields(model, meta)
    ident = {
        "model": model, "base": nf["base"], "dataset": nf["dataset"], "method": nf["method"],
        "peft": nf["peft"], "rank": _rank(meta, nf["peft"]), "quant": nf["quant_tag"],
        "size_on_disk_bytes": model_size_bytes(doc, workspace), "path": model_info.get("path"),
    }
    rows: list[dict] = []

    def add(task, metric, group, value, n=math.nan, interval=None, version=math.nan):
        lo = hi = math.nan
        if isinstance(interval, (list, tuple)) and len(interval) == 2:
            lo, hi = _num(interval[0]), _num(interval[1])
        rows.append({**ident, "task": task, "metric": metric, "group": group, "value": _num(value),
                     "ci_low": lo, "ci_high": hi, "n": _num(n), "scoring_version": version})

    for task, res in (doc.get("datasets") or {}).items():
        if not isinstance(res, dict):
            continue
        n = res.get("n", math.nan)
        version = _num(res.get("scoring_version"))
        intervals = res.get("intervals") or {}
        for metric, value in (res.get("metrics") or {}).items():
            # Settings echoed beside the scores (a tolerance dict, a label) are not metrics.
            if isinstance(value, (int, float)) or value is None:
                add(task, metric, SCORE, value, n, intervals.get(metric), version)
        for metric in ("format_success_rate", "flexible_accuracy", "cut_off_rate"):
            if metric in res:
                add(task, metric, FORMAT, res[metric], n, intervals.get(metric), version)
        for key, metric in (("latency_s", "latency_mean_s"), ("new_tokens", "new_tokens_mean")):
            if isinstance(res.get(key), dict) and "mean" in res[key]:
                add(task, metric, SPEED, res[key]["mean"], n)
        if "samples_per_s" in res:
            add(task, "samples_per_s", SPEED, res["samples_per_s"], n)
    summary = doc.get("summary") or {}
    if "mean_accuracy" in summary:
        add(OVERALL_TASK, "mean_accuracy", SUMMARY, summary["mean_accuracy"], summary.get("total_samples", math.nan))
    return rows


def load_document(path: Path) -> dict:
    """Reads one metrics JSON, upgraded to the current schema version by the evaluator's
    registered upgraders (ftlab.eval.records.documents)."""
    from ftlab.eval.records.documents import load_metrics_document  # lazy: ftlab.eval.records.documents imports numpy

    return load_metrics_document(path)


def load_documents(source: Workspace | str | os.PathLike) -> list[dict]:
    """Every model's metrics document. Each task block in a document is a finished result, so a
    document whose latest run is still going (or was killed) contributes its finished tasks. A task
    scored by an older scoring rule is reported, never silently set beside newer ones."""
    from ftlab.eval.evaluator import outdated_scoring  # lazy: ftlab.eval.evaluator imports numpy

    mdir = metrics_dir_of(source)
    docs = []
    for path in metrics_files(mdir):
        doc = load_document(path)
        if doc.get("kind", "metrics") != "metrics":
            log.debug("skipping %s: kind %r", path, doc.get("kind"))
            continue
        if doc.get("status", "complete") != "complete":
            log.info("%s: a run is in progress or was interrupted; showing its finished tasks", path.name)
        old = outdated_scoring(doc)
        if old:
            name = (doc.get("model") or {}).get("name", path.stem)
            tasks = ", ".join(f"{k} (scoring v{a}, current v{b})" for k, (a, b) in old.items())
            log.warning("%s: %s scored by an older rule; `ftlab evaluate %s --datasets %s` (or ftlab orchestrate) "
                        "rescores them from the stored responses", name, tasks, name, " ".join(old))
        docs.append(doc)
    return docs


def frame_from_documents(docs: Iterable[dict], workspace: Workspace | None = None) -> pd.DataFrame:
    rows = [r for doc in docs for r in rows_from_document(doc, workspace)]
    df = pd.DataFrame(rows, columns=COLUMNS)
    for col in ("value", "ci_low", "ci_high", "n", "rank", "size_on_disk_bytes", "scoring_version"):
        df[col] = pd.to_numeric(df[col], errors="coerce").astype(float)
    return df.sort_values(["base", "model", "task", "metric"], kind="stable", na_position="last").reset_index(drop=True)


def load_metrics(source: Workspace | str | os.PathLike | None = None) -> pd.DataFrame:
    """Every metrics document under `source` (a Workspace, a workspace root or a metrics folder) as
    a tidy frame with columns `COLUMNS`; old document versions are upgraded through ftlab.schema."""
    if source is None:
        source = Workspace.default()
    workspace = source if isinstance(source, Workspace) else None
    if workspace is None and Workspace.at(source).metrics_dir.is_dir():
        workspace = Workspace.at(source)
    if workspace is None:
        # A bare metrics folder sits at <root>/Testing/metrics; its root still finds Models/.
        mdir = Path(source).resolve()
        if Workspace(mdir.parent.parent).metrics_dir == mdir:
            workspace = Workspace(mdir.parent.parent)
    return frame_from_documents(load_documents(source), workspace)


# ---------------------------------------------------------------------------------------------
# Views of the tidy frame


def _split_list(values) -> list[str]:
    out: list[str] = []
    for v in values or ():
        out += [p.strip() for p in str(v).split(",") if p.strip()]
    return out


def filter_frame(df: pd.DataFrame, *, task=None, base=None, peft=None, quant=None, model=None,
                 metric=None) -> pd.DataFrame:
    """Keeps rows matching any of the given values per column (values may be comma-separated);
    an unknown value is an error naming the valid ones rather than a silently empty table."""
    out = df
    for col, wanted, flag in (("task", task, "--task"), ("base", base, "--base"), ("peft", peft, "--peft"),
                              ("quant", quant, "--quant"), ("model", model, "--model"),
                              ("metric", metric, "--metric")):
        values = _split_list(wanted)
        if not values:
            continue
        available = sorted({str(v) for v in df[col].dropna().unique()})
        lowered = {a.lower(): a for a in available}
        missing = [v for v in values if v.lower() not in lowered]
        if missing:
            raise FtlabError(f"{flag} {', '.join(missing)} matches no metrics; available: {', '.join(available) or 'none'}")
        keep = {lowered[v.lower()] for v in values}
        out = out[out[col].astype(str).isin(keep)]
    return out.reset_index(drop=True)


def baseline_for(model: str, base: str | None) -> str | None:
    """The default baseline: the un-quantized base snapshot of the same family, `<base>-base`."""
    if not base:
        return None

    return RunName(base, "base").render()


def add_deltas(df: pd.DataFrame, baseline: str | None = None) -> pd.DataFrame:
    """Adds `baseline`, `baseline_value` and `delta` (value - baseline value, same task and metric).

    With `baseline` every model is compared with that one model; otherwise each model with its own
    family's base snapshot. A missing baseline leaves NaN, never a silent zero.
    """
    out = df.copy()
    if baseline is not None:
        if baseline not in set(df["model"]):
            raise FtlabError(f"--baseline {baseline!r} has no metrics; evaluated models: {', '.join(sorted(set(df['model'])))}")
        out["baseline"] = baseline
    else:
        out["baseline"] = [baseline_for(m, b) for m, b in zip(out["model"], out["base"])]
    ref = df[["model", "task", "metric", "value"]].rename(columns={"model": "baseline", "value": "baseline_value"})
    out = out.merge(ref, on=["baseline", "task", "metric"], how="left")
    out["delta"] = out["value"] - out["baseline_value"]
    return out


def wide_table(df: pd.DataFrame, *, value: str = "value", groups=(SCORE, SUMMARY)) -> pd.DataFrame:
    """Models x `task/metric` columns, led by the name fields so the CSV is self-describing."""
    sub = df[df["group"].isin(groups)]
    if sub.empty:
        return pd.DataFrame(columns=ID_COLUMNS)
    sub = sub.assign(column=sub["task"] + "/" + sub["metric"])
    table = sub.pivot_table(index="model", columns="column", values=value, aggfunc="first", dropna=False)
    # Overall aggregate last, tasks alphabetically: stable columns across runs make diffs readable.
    cols = sorted(table.columns, key=lambda c: (c.startswith(OVERALL_TASK + "/"), c))
    table = table[cols]
    table = table.dropna(axis=1, how="all")
    ids = df.drop_duplicates("model").set_index("model")[ID_COLUMNS[1:]]
    out = ids.join(table, how="inner").reset_index()
    out["rank"] = out["rank"].round().astype("Int64")  # LoRA ranks are integers; NaN stays <NA>
    return out.sort_values(["base", "model"], kind="stable", na_position="last").reset_index(drop=True)


def to_markdown(table: pd.DataFrame, floatfmt: str = "{:.4f}") -> str:
    """A GitHub markdown table without the optional `tabulate` dependency."""
    def fmt(v) -> str:
        if v is None or v is pd.NA or (isinstance(v, float) and math.isnan(v)):
            return ""
        if isinstance(v, float):
            return str(int(v)) if v.is_integer() and abs(v) >= 1000 else floatfmt.format(v)
        return str(v).replace("|", "\\|")

    cols = [str(c) for c in table.columns]
    lines = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    for row in table.itertuples(index=False):
        lines.append("| " + " | ".join(fmt(v) for v in row) + " |")
    return "\n".join(lines)


def to_text(table: pd.DataFrame, floatfmt: str = "{:.4f}") -> str:
    def fmt(v):
        if isinstance(v, float):
            return "" if math.isnan(v) else floatfmt.format(v)
        return "" if v is None or v is pd.NA else str(v)

    # Nullable integer columns (rank) print <NA> regardless of na_rep; blank them like floats.
    table = table.assign(**{c: table[c].map(lambda v: "" if pd.isna(v) else str(v))
                            for c in table.columns if str(table[c].dtype) == "Int64"})
    return table.to_string(index=False, formatters={c: fmt for c in table.columns}, na_rep="")
