"""A study's verdict as files: report.md, a self-contained report.html, the tidy frame, the tables.

`write_report()` analyses the engine's frames (`ftlab.study.analysis`) and renders one list of
blocks (heading, paragraph, bullets, table, image) twice: as markdown, whose images are PNG files
in `plots/`, and as HTML with the same PNGs embedded as base64 and inline CSS, so the page reads
offline and references nothing outside itself. Everything is rendered in memory before the first
file is written, and every file is written atomically.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
import os
import re
from pathlib import Path

import pandas as pd

from ftlab.compare.frame import to_markdown
from ftlab.compare.stats import format_p
from ftlab.errors import FtlabError
from ftlab.io import atomic_write_bytes
from ftlab.study import figures
from ftlab.study.analysis import MODEL, RECIPE, UNSEEDED, StudyAnalysis, StudyAnalysisSettings, analyze_study
from ftlab.study.levels import POOLED

PLOTS_DIR = "plots"
_PLOT_NAMES = ("scores.png", "recovery.png", "pareto.png")
_CSS = """body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:.8em 0;font-size:.85em}th,td{border:1px solid #ccc;padding:.25em .5em}
th{background:#f2f2f2}td{text-align:right}td:first-child,td.t{text-align:left}img{max-width:100%}
code{background:#f4f4f4;padding:0 .2em}li{margin:.3em 0}"""


def _num(v, fmt="{:.4f}") -> str:
    return "" if v is None or (isinstance(v, float) and math.isnan(v)) else fmt.format(v)


def _interval(lo, hi, fmt="{:.4f}") -> str:
    return "" if math.isnan(lo) else f"[{fmt.format(lo)}, {fmt.format(hi)}]"


def _mdd(v) -> str:
    return "none detectable" if v == math.inf else _num(v)


# ------------------------------------------------------------------------------------------ tables

_COVERS = {RECIPE: "seeds and items", MODEL: "items (one trained model)", UNSEEDED: "items (no seed)"}


def _ranking_table(a: StudyAnalysis) -> pd.DataFrame:
    r = a.ranking
    return pd.DataFrame({
        "task": r["task"], "quant": r["quant"], "rank": r["rank"].astype(str),
        "recipe": r["recipe"] + r["baseline"].map({True: " (baseline)", False: ""}),
        "seeds": r["seeds"].astype(str), "items": r["n_items"].astype(str), "score": r["mean"].map(_num),
        "seed std": r["seed_std"].map(_num),
        f"{a.settings.confidence:.0%} interval": [_interval(lo, hi) for lo, hi in zip(r["ci_low"], r["ci_high"])],
        "interval covers": r["level"].map(_COVERS),
    })


def _status(r) -> str:
    if r.significant:
        return "significant"
    if r.discordance == 0:
        return "identical outcomes"
    return "too small to detect" if r.undetectable else "not significant"


def _seeds(r, other: str) -> str:
    return f"{r.seeds} / {getattr(r, other)}"


def _baseline_table(a: StudyAnalysis) -> pd.DataFrame:
    rows = []
    for r in a.vs_baseline.itertuples(index=False):
        rows.append({"task": r.task, "quant": r.quant, "recipe": r.recipe, "baseline at": r.baseline_quant,
                     "level": r.level, "models (recipe / baseline)": _seeds(r, "baseline_seeds"),
                     "items": str(r.n_items), "diff": _num(r.diff, "{:+.4f}"),
                     "interval": _interval(r.ci_low, r.ci_high, "{:+.4f}"), "test": r.test,
                     "p": format_p(r.p_value), "Holm p": format_p(r.p_holm), "MDD": _mdd(r.mdd),
                     "verdict": _status(r)})
    return pd.DataFrame(rows)


def _best_table(a: StudyAnalysis) -> pd.DataFrame:
    rows = []
    for r in a.vs_best.itertuples(index=False):
        rows.append({"task": r.task, "quant": r.quant, "best": r.best, "recipe": r.recipe, "level": r.level,
                     "models (recipe / best)": _seeds(r, "best_seeds"), "items": str(r.n_items),
                     "diff": _num(r.diff, "{:+.4f}"), "interval": _interval(r.ci_low, r.ci_high, "{:+.4f}"),
                     "test": r.test, "p": format_p(r.p_value), "Holm p (all pairs in task)": format_p(r.p_holm),
                     "MDD": _mdd(r.mdd), "verdict": "tied" if r.tied else "below the best"})
    return pd.DataFrame(rows)


def _recovery_table(a: StudyAnalysis) -> pd.DataFrame:
    rows = []
    for r in a.recovery.itertuples(index=False):
        rows.append({"task": r.task, "recipe": r.recipe, "quant": r.quant, "level": r.level, "models": str(r.models),
                     "items": str(r.n_items), "source": _num(r.source_score), "quantized": _num(r.quant_score),
                     "ratio": _num(r.ratio, "{:.1%}"), "interval": _interval(r.ci_low, r.ci_high, "{:.1%}"),
                     "source-only / quant-only": f"{r.source_only} / {r.quant_only}", "test": r.test,
                     "p": format_p(r.p_value), "Holm p": format_p(r.p_holm)})
    return pd.DataFrame(rows)


def _pareto_table(a: StudyAnalysis) -> pd.DataFrame:
    p = a.pareto
    mark = {True: "yes", False: ""}
    return pd.DataFrame({
        "task": p["task"], "recipe": p["recipe"], "quant": p["quant"], "score": p["score"].map(_num),
        "size (MiB)": (p["size_bytes"] / 2**20).map(lambda v: _num(v, "{:.1f}")),
        "latency (s)": p["latency_mean_s"].map(lambda v: _num(v, "{:.4g}")),
        "size front": p["on_size_front"].map(mark), "latency front": p["on_latency_front"].map(mark),
    })


def _methods(s: StudyAnalysisSettings) -> list[str]:
    return [
        "Two sources of uncertainty: another training seed trains another model, and other items give other "
        "scores. Every trained model answers the same items (seeds and items are crossed), so a recipe with 2 or "
        "more seeds is inferred about as a recipe: its interval, its tests and the minimum detectable differences "
        "account for both (level `recipe`). A recipe with one seed is one trained model (level `model`): its "
        "comparisons say that these trained models differ on these items, not that a recipe wins. The base "
        "snapshot has no seed (one deterministic model) and only item variance.",
        "Recipe level (docs/study.md, `ftlab.compare.crossed`): Var(difference) = s2_A / S_A + s2_B / S_B + "
        "max(0, Var_i(delta_i) / n - MS_A / (S_A n) - MS_B / (S_B n)), where s2 is the variance of a recipe's "
        "per-model scores over its S seeds, delta_i the per-item difference of the recipes' seed means and MS the "
        "model x item residual of each recipe's two-way layout (the two-way cluster-robust variance of Cameron, "
        "Gelbach & Miller 2011 in ANOVA form). p-values and intervals are generalized (fiducial) inference "
        "(Tsui & Weerahandi 1989): each mean square's uncertainty from its own degrees of freedom (1 per recipe "
        "at 2 seeds) is drawn and carried into the test, which keeps the false-positive rate at or below alpha "
        "where a t-test with Satterthwaite's degrees of freedom did not (benchmarks/verdict_calibration.md). "
        + ("One seed spread is pooled over the recipes of each task and quant variant (analysis.seed_spread: "
           "pooled): s2_seed solves sum_r k_r s2_r / (s2_seed + MS_r / n_r) = K over the recipes' K = sum (S_r - 1) "
           "degrees of freedom (Paule & Mandel 1982; its fiducial draws put a chi2_K draw in place of K, the "
           "Q-profile of Viechtbauer 2007), and each side's seed term is (s2_seed + MS / n) / S; seeds of "
           "different recipes are taken as independent samples. This assumes the recipes' seeds vary alike "
           "(docs/study.md). " if s.seed_spread == POOLED else
           "Two recipes trained with the same seeds are compared seed k against seed k (they share the data "
           "order; analysis.pair_seeds): the formula for one recipe applied to the per-seed differences. Other "
           "comparisons take the seeds as independent samples. " if s.pair_seeds else
           "Seeds of different recipes are taken as independent samples (analysis.pair_seeds: false). ")
        + "Score intervals use the same formula for one recipe.",
        f"Model level: two single models by the exact McNemar test, with the {s.confidence:.0%} percentile "
        f"bootstrap over items ({s.resamples} resamples, seed {s.bootstrap_seed}) of the score difference; several "
        "models against one by the same inference over items only, on the per-item means (a paired t over items). "
        "A single model's score interval is the bootstrap over items.",
        f"Holm-Bonferroni correction over the whole family of tests against the baseline (every recipe x quant x "
        f"task); significant means Holm-adjusted p <= {s.alpha:g}. Ties with the best: each recipe against "
        f"the top one of its task and quant variant, Holm-corrected over every pair of the task's configurations "
        f"(the best is chosen from the data, so the comparisons with it alone are not the family). Recovery tests (each "
        f"quantized model minus its own source, seed by seed, at recipe level) are their own family.",
        f"MDD (minimum detectable difference) at alpha {s.alpha:g} and power {s.power:g}: at recipe level the true "
        f"difference this test detects with that power when the estimated variances are the truth, averaged over "
        f"what the study could have estimated instead (seed spread included); for McNemar, Connor's (1987) "
        f"relation n = (z_a sqrt(psi) + z_b sqrt(psi - d^2))^2 / d^2 solved for d at the pair count n and "
        f"observed discordance psi. \"Too small to detect\": not significant and the observed difference below "
        f"the MDD.",
        f"p-values print in scientific notation below 0.001; a bootstrap p below 2/B prints as < 2/{s.resamples} "
        f"(the two-sided p moves in steps of 2/B, B = {s.resamples} resamples).",
    ]


# ------------------------------------------------------------------------------------------ blocks

def _blocks(a: StudyAnalysis, title: str, study_summary: dict, plots: dict[str, bytes],
            extra: list[tuple] = ()) -> list[tuple]:
    """The report's blocks; `extra` (an adaptive study's rounds) comes first after the summary."""
    s = a.settings
    summary = {**study_summary, "baseline": s.baseline, "alpha": s.alpha, "power": s.power,
               "bootstrap resamples": s.resamples, "confidence": s.confidence, "bootstrap seed": s.bootstrap_seed}
    if s.min_difference is not None:
        summary["difference that matters"] = s.min_difference
    summary_table = pd.DataFrame({"": list(summary), "value": [
        v if isinstance(v, str) else json.dumps(v, default=str) for v in summary.values()]})
    blocks: list[tuple] = [("h", 1, title), ("table", summary_table), *extra, ("h", 2, "Verdict")]
    for v in a.verdicts:
        blocks += [("h", 3, v.task), ("ul", v.sentences)]
    if a.notes:
        blocks += [("h", 2, "Not computed"), ("ul", a.notes)]
    blocks += [("h", 2, "Ranking"), ("p", "Per task and quantization variant, recipes by mean score over seeds."),
               ("table", _ranking_table(a)), ("img", "scores.png", "score by recipe")]
    blocks += [("h", 2, f"Against the baseline `{s.baseline}`"),
               ("p", "diff = recipe - baseline (score), with its interval from the row's test; level `recipe`: "
                     "seeds and items (generalized test), `model`: single trained models on these items; MDD is the "
                     "minimum detectable difference of the row's test.")]
    blocks.append(("table", _baseline_table(a)) if not a.vs_baseline.empty else ("p", "No recipe besides the baseline."))
    if not a.vs_best.empty:
        blocks += [("h", 2, "Ties with the best"), ("table", _best_table(a))]
    if not a.recovery.empty:
        blocks += [("h", 2, "Quantization recovery"),
                   ("p", "Each quantized model against its own unquantized source; at recipe level the "
                         "per-seed differences over seeds and items (generalized test), else McNemar."),
                   ("table", _recovery_table(a)), ("img", "recovery.png", "quantization recovery")]
    blocks += [("h", 2, "Pareto front"), ("table", _pareto_table(a)), ("img", "pareto.png", "Pareto fronts")]
    blocks += [("h", 2, "Methods"), ("ul", _methods(s))]
    return [b for b in blocks if b[0] != "img" or b[1] in plots]


def render_markdown(blocks: list[tuple]) -> str:
    out = []
    for kind, *rest in blocks:
        if kind == "h":
            out.append(f"{'#' * rest[0]} {rest[1]}")
        elif kind == "p":
            out.append(rest[0])
        elif kind == "ul":
            out.append("\n".join(f"- {item}" for item in rest[0]))
        elif kind == "table":
            out.append(to_markdown(rest[0]))
        elif kind == "img":
            out.append(f"![{rest[1]}]({PLOTS_DIR}/{rest[0]})")
    return "\n\n".join(out) + "\n"


def _inline(text: str) -> str:
    return re.sub(r"`([^`]+)`", r"<code>\1</code>", html.escape(text))


def _html_table(df: pd.DataFrame) -> str:
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in df.columns)
    body = "".join("<tr>" + "".join(f"<td>{_inline(str(v))}</td>" for v in row) + "</tr>"
                   for row in df.itertuples(index=False))
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def render_html(blocks: list[tuple], plots: dict[str, bytes]) -> str:
    out = []
    for kind, *rest in blocks:
        if kind == "h":
            out.append(f"<h{rest[0]}>{_inline(rest[1])}</h{rest[0]}>")
        elif kind == "p":
            out.append(f"<p>{_inline(rest[0])}</p>")
        elif kind == "ul":
            out.append("<ul>" + "".join(f"<li>{_inline(i)}</li>" for i in rest[0]) + "</ul>")
        elif kind == "table":
            out.append(_html_table(rest[0]))
        elif kind == "img":
            data = base64.b64encode(plots[rest[0]]).decode("ascii")
            out.append(f'<p><img alt="{html.escape(rest[1])}" src="data:image/png;base64,{data}"></p>')
    title = next((b[2] for b in blocks if b[0] == "h" and b[1] == 1), "study report")
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
            f"<style>{_CSS}</style></head><body>\n" + "\n".join(out) + "\n</body></html>\n")


# ------------------------------------------------------------------------------------------ files

def _parquet(df: pd.DataFrame) -> bytes:
    buf = io.BytesIO()
    df.to_parquet(buf, index=False)
    return buf.getvalue()


def render_report(analysis: StudyAnalysis, *, title: str, study_summary: dict,
                  extra_blocks: list[tuple] = ()) -> dict[str, bytes]:
    """Every file of the report, by its path relative to the output folder."""
    s = analysis.settings
    plots = {"scores.png": figures.scores_by_recipe(analysis.ranking, s.confidence),
             "recovery.png": figures.recovery(analysis.recovery, s.confidence),
             "pareto.png": figures.pareto(analysis.pareto)}
    plots = {name: png for name, png in plots.items() if png is not None}
    blocks = _blocks(analysis, title, study_summary, plots, list(extra_blocks))
    files = {"report.md": render_markdown(blocks).encode(), "report.html": render_html(blocks, plots).encode(),
             "frame.parquet": _parquet(analysis.tidy), "frame.csv": analysis.tidy.to_csv(index=False).encode()}
    for name in ("ranking", "vs_baseline", "vs_best", "recovery", "pareto"):
        files[f"{name}.csv"] = getattr(analysis, name).to_csv(index=False).encode()
    files.update({f"{PLOTS_DIR}/{name}": png for name, png in plots.items()})
    return files


def write_analysis(analysis: StudyAnalysis, out_dir: str | os.PathLike, *, title: str,
                   study_summary: dict, extra_blocks: list[tuple] = ()) -> dict[str, Path]:
    """Writes an analysed study's report into `out_dir`; returns {relative name: path written}."""
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise FtlabError(f"report folder {out} is a file; give a folder")
    files = render_report(analysis, title=title, study_summary=study_summary, extra_blocks=extra_blocks)
    written = {name: atomic_write_bytes(out / name, data) for name, data in files.items()}
    for name in _PLOT_NAMES:  # a chart this study no longer has must not linger beside the new report
        stale = out / PLOTS_DIR / name
        if f"{PLOTS_DIR}/{name}" not in files and stale.exists():
            stale.unlink()
    return written


def write_report(samples: pd.DataFrame, models: pd.DataFrame, settings: StudyAnalysisSettings,
                 out_dir: str | os.PathLike, *, title: str, study_summary: dict) -> dict[str, Path]:
    """Analyses the study and writes its report into `out_dir`; returns {relative name: path written}.

    Files: report.md (+ plots/*.png), report.html (self-contained), frame.parquet and frame.csv
    (the tidy frame), ranking.csv, vs_baseline.csv, vs_best.csv, recovery.csv, pareto.csv.
    Nothing is written when the input is bad (the analysis runs first).
    """
    return write_analysis(analyze_study(samples, models, settings), out_dir, title=title, study_summary=study_summary)
