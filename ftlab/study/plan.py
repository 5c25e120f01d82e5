"""`ftlab study plan FILE`: before spending the compute, is the study big enough to detect the
smallest recipe difference that matters (`analysis.min_difference`)?

resolve the study -> where its variance comes from (an earlier study's results, else this
study's own finished results with 2+ seeds, else the file's `analysis.expected_*`) -> per task, the power of the planned
design and the items needed for the asked power at several seed counts -> the compute each would
take, from measured job times.

The variance model is `ftlab.compare.crossed.VarianceModel` (seed spread, recipe x item
interaction, model x item residual), and the power is that of the verdict's own test (the crossed
generalized test, over what the study could estimate). The planned comparison is two
trained recipes, paired by seed unless `analysis.pair_seeds` is false; alpha is divided by the
number of comparisons with the best in a task (Bonferroni), which is what Holm's correction asks
of the smallest p-value, so the plan is conservative for the rest.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ftlab.compare.crossed import VarianceModel, items_for_power
from ftlab.errors import FtlabError
from ftlab.study.levels import POOLED
from ftlab.study.run import finished_results

SEED_COUNTS = (2, 3, 5, 8, 10, 20)
MAX_ITEMS = 100_000


@dataclass(frozen=True)
class Variance:
    model: VarianceModel
    score: float
    source: str  # where the numbers came from, in words


def assumed_variance(settings) -> Variance | None:
    """From the study file: score p, seed std, discordance (default 2p(1-p), independent errors).
    All the discordance is counted as recipe x item (none averages out over seeds): conservative."""
    p, sd = settings.expected_score, settings.expected_seed_std
    if p is None or sd is None:
        return None
    psi = settings.expected_discordance if settings.expected_discordance is not None else 2 * p * (1 - p)
    how = ("analysis.expected_discordance" if settings.expected_discordance is not None
           else "2 p (1 - p), two models' errors independent")
    return Variance(VarianceModel(seed_var=sd**2, item_var=psi, cell_var=0.0), p,
                    f"the study file: score {p:g}, seed std {sd:g}, discordance {psi:.3g} ({how}), counted as "
                    f"recipe x item variance that more seeds do not average out (conservative)")


def measured_variance(samples, task: str, what: str) -> Variance | None:
    """The components measured on a finished study's unquantized recipes with 2+ seeds
    (`ftlab.study.sequential.components`: the mean seed component and model x item residual over
    recipes, the recipe x item variance over pairs of them). None when no recipe has 2 seeds."""
    from ftlab.study.analysis import NO_QUANT, config_of, normalize_samples  # lazy: ftlab.study.analysis imports numpy and pandas; only when measuring
    from ftlab.study.sequential import common_items, components  # lazy: ftlab.study.sequential imports scipy; only when measuring

    df = normalize_samples(samples)
    rows = df[(df["task"] == task) & (df["quant"] == NO_QUANT) & df["seed"].notna()]
    configs = [c for c in (config_of(g) for _, g in rows.groupby("recipe", sort=True)) if len(c.models) >= 2]
    model = components(configs)
    if model is None:
        return None
    items = common_items(configs)
    score = float(np.mean([c.on(items).score.mean() for c in configs]))
    how = (f"{len(configs) * (len(configs) - 1) // 2} pair(s) of recipes" if len(configs) > 1
           else "one recipe only, so the recipe x item part is assumed 2 p (1 - p)")
    return Variance(model, score,
                    f"{what}: {len(configs)} recipe(s) with {', '.join(str(len(c.models)) for c in configs)} seeds "
                    f"on {items.size} items ({how}); seed std {math.sqrt(model.seed_var):.4f} beyond item noise, "
                    f"score {score:.4f}")


def comparisons_per_task(spec, recipes) -> int:
    """Comparisons with the best in one task: per PTQ table, its configurations (recipes and base
    snapshots) minus one."""
    bases = len(spec.bases)
    unquantized = len(recipes) + bases - 1
    quantized = (len(recipes) + (bases if spec.quantize.base else 0) - 1) * len(spec.quantize.variants)
    return max(1, unquantized + quantized)


@dataclass(frozen=True)
class JobTimes:
    """Measured seconds: per training, per quantization, per evaluated item and task."""

    train_s: float
    quantize_s: float
    eval_item_s: float
    runs: int

    def compute_s(self, spec, recipes: int, seeds: int, items: int) -> float:
        variants = len(spec.quantize.variants)
        models = recipes * seeds * (1 + variants) + 1 + (variants if spec.quantize.base else 0)
        tasks = len(spec.evaluate.datasets)
        return (recipes * seeds * (self.train_s + variants * self.quantize_s)
                + models * tasks * items * self.eval_item_s)


def job_times(study) -> JobTimes | None:
    """Mean runtimes of the study's finished jobs from the ledger; None without a training and an
    evaluation measured. Evaluation time is taken as proportional to items x tasks (its fixed
    loading cost spread over them, which overstates small evaluations)."""
    engine = study.engine()
    items = (study.spec.evaluate.limit or 0) * len(study.spec.evaluate.datasets)
    kinds: dict[str, list[float]] = {}
    for job in study.graph.jobs:
        runtime = engine.ledger.runtime(job.id)
        if runtime is not None:
            kinds.setdefault(job.kind, []).append(runtime / items if job.kind == "evaluate" else runtime)
    if not kinds.get("train") or not kinds.get("evaluate") or not items:
        return None
    quantize = kinds.get("quantize") or [0.0]
    return JobTimes(float(np.mean(kinds["train"])), float(np.mean(quantize)), float(np.mean(kinds["evaluate"])),
                    sum(len(v) for v in kinds.values()))


def _hours(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    return f"{seconds / 3600:.1f} h" if seconds >= 3600 else f"{seconds / 60:.0f} min"


def plan_text(study, earlier=None, items: int | None = None) -> str:
    """The plan, as printed by `ftlab study plan`."""
    spec, settings = study.spec, study.spec.analysis
    d = settings.min_difference
    if d is None:
        raise FtlabError("analysis.min_difference is not set: give the smallest score difference between recipes "
                         "that matters (e.g. analysis.min_difference=0.03 or an analysis: section in the study file)")
    n = items or spec.evaluate.limit or (spec.adaptive.max_items if spec.adaptive.on else None)  # adaptive: its ceiling
    if not n:
        raise FtlabError("evaluate.limit is not set, so the planned number of items is unknown; set it or pass --items N")
    seeds = len(spec.train.seeds)
    pooled = len(study.recipes) if settings.seed_spread == POOLED else None
    paired = settings.pair_seeds and not pooled
    how = (f"with one seed spread pooled over {len(study.recipes)} recipes (analysis.seed_spread)" if pooled else
           "paired by seed" if paired else "with independent seeds")
    m = comparisons_per_task(spec, study.recipes)
    alpha = settings.alpha / m
    lines = [f"Plan for study {spec.name} ({study.path}): {len(study.recipes)} recipe(s) x {seeds} seed(s), "
             f"{n} items per task",
             f"  difference that matters: {d:g} (analysis.min_difference) between two recipes "
             f"{how}, power {settings.power:g}; alpha "
             f"{settings.alpha:g} over {m} comparison(s) with the best per task: {alpha:.3g} each (Bonferroni, "
             f"what Holm asks of the smallest p)"]
    if seeds < 2:
        lines.append("  warning: one seed per recipe can only compare trained models, not recipes; "
                     "recipe-level claims need at least 2 seeds (train.seeds)")
    times_from = earlier or study
    times = job_times(times_from)
    lines.append(f"  job times: {_times_line(times, times_from)}")
    variances = _variances(study, earlier, settings)
    for task, var in variances:
        design = var.model.design(max(seeds, 2), n, paired=paired, pooled=pooled)
        power = design.power(d, alpha)
        mdd = design.mdd(alpha, settings.power)
        lines += [f"{task}:", f"  variance from {var.source}"]
        shown = f"{mdd:.4f}" if mdd <= 1 else "none on the score scale"
        planned = (f"  planned design ({seeds} seeds x {n} items): power {power:.2f} for a difference of {d:g}; "
                   f"minimum detectable difference {shown}")
        if seeds < 2:
            planned = f"  planned design has 1 seed: no recipe-level test; with 2 seeds x {n} items: power {power:.2f}"
        lines.append(planned)
        lines.append(f"  {'seeds':>5}  {'items for ' + format(settings.power, '.0%') + ' power':>20}  "
                     f"{'trainings':>9}  {'compute':>9}")
        needs = {}
        for s in sorted(set(SEED_COUNTS) | ({seeds} if seeds >= 2 else set())):
            need = needs[s] = items_for_power(var.model, d, s, alpha=alpha, power=settings.power,
                                              max_items=MAX_ITEMS, paired=paired, pooled=pooled)
            shown = f"{need:,}" if need else "not reachable"
            compute = times.compute_s(spec, len(study.recipes), s, need) if (times and need) else None
            mark = " <- planned" if s == seeds else ""
            lines.append(f"  {s:>5}  {shown:>20}  {len(study.recipes) * s:>9}  {_hours(compute):>9}{mark}")
        if needs[max(SEED_COUNTS)] is None:
            lines.append(f"  not reachable: the seed spread alone keeps the power below {settings.power:g} "
                         f"with {max(SEED_COUNTS)} seeds, whatever the items")
    if times:
        lines.append(f"compute of the planned design: {_hours(times.compute_s(spec, len(study.recipes), seeds, n))}")
    return "\n".join(lines)


def _times_line(times: JobTimes | None, study) -> str:
    if times is None:
        return (f"none measured yet for {study.spec.name} (they appear once its jobs ran; `--from` a study that "
                f"ran gives them)")
    quantize = f"quantization {times.quantize_s:.0f} s, " if study.spec.quantize.variants else ""
    return (f"measured on {times.runs} finished job(s) of {study.spec.name}: training {times.train_s:.0f} s, "
            f"{quantize}evaluation {times.eval_item_s:.3f} s per item and task")


def _variances(study, earlier, settings) -> list[tuple[str, Variance]]:
    tasks = list(study.spec.evaluate.datasets)
    if earlier is not None:
        samples, _, _ = finished_results(earlier)
        out = [(t, measured_variance(samples, t, f"the results of study {earlier.spec.name}")) for t in tasks]
        missing = [t for t, v in out if v is None]
        if missing:
            raise FtlabError(f"study {earlier.spec.name} has no recipe with 2+ seeds evaluated on "
                             f"{', '.join(missing)}; plan from another study or from analysis.expected_*")
        return out
    samples, _, _ = finished_results(study, require=False)
    if samples is not None:  # what this study measured beats what its file assumed
        out = [(t, measured_variance(samples, t, "this study's results")) for t in tasks]
        if all(v is not None for _, v in out):
            return out
    assumed = assumed_variance(settings)
    if assumed is not None:
        return [("every task", assumed)]
    raise FtlabError("no variance to plan from: set analysis.expected_score and analysis.expected_seed_std in the "
                     "study file, run the study with 2+ seeds first, or pass --from an earlier study file")
