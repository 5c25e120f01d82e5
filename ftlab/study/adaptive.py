"""`ftlab study run FILE` for a study with an `adaptive:` section: rounds that spend seeds and
items only where the verdict is undecided.

per round: the round's design (rounds.json) -> its job graph (the fixed study's jobs, with the
round's seeds per recipe and items per model) -> run what is not done -> the look
(`ftlab.study.sequential.decide`: which comparisons are decided, at what alpha; what the next
round adds, from the measured job times) -> recorded in rounds.json -> the next round, until
nothing is open, a ceiling or the budget is reached. A recorded decision is never made again, so
a rerun after kill -9 runs the same rounds and each job once. The report adds the rounds.
"""

from __future__ import annotations

import math
from typing import Callable

import numpy as np
import pandas as pd

from ftlab.jobs.backends import backend_session, run_engine
from ftlab.jobs.engine import DONE, EngineSettings, Outcome
from ftlab.jobs.kinds import EVALUATE
from ftlab.study.analysis import NO_QUANT, config_of, normalize_samples
from ftlab.study.graph import build_graph
from ftlab.study.rounds import read_rounds, write_rounds
from ftlab.study.run import (
    Study,
    analysis_settings,
    finished_results,
    finish,
    format_plan,
    report_study,
)
from ftlab.study.sequential import (
    BEST,
    DIFFERENT,
    EQUIVALENT,
    FUTILE,
    OPEN,
    STOP_BUDGET,
    STOP_CEILING,
    STOP_DECIDED,
    STOP_FUTILE,
    Costs,
    Decision,
    Limits,
    decide,
    next_designs,
)
from ftlab.study.spec import BASE


def limits(study: Study) -> Limits:
    spec, a = study.spec, study.spec.adaptive
    max_seeds, max_items = a.ceiling(spec)
    return Limits(alpha=spec.analysis.alpha, margin=a.margin(spec), max_seeds=max_seeds, max_items=max_items,
                  item_growth=a.item_growth, spending=a.spending, pair_seeds=spec.analysis.pair_seeds,
                  seed_spread=spec.analysis.seed_spread, futility=a.futility,
                  budget_s=a.budget_hours * 3600 if a.budget_hours is not None else None)


def measured_costs(study: Study) -> Costs | None:
    """Seconds per training, quantization and evaluated item, from the ledger's finished jobs of the
    current graph. An evaluation's time is spread over its items and tasks (its loading cost
    included, which overstates small evaluations). None before a training and an evaluation ran."""
    ledger = study.engine().ledger
    tasks = len(study.spec.evaluate.datasets)
    times: dict[str, list[float]] = {}
    for job in study.graph.jobs:
        runtime = ledger.runtime(job.id)
        if runtime is None:
            continue
        if job.kind == EVALUATE:
            runtime /= max(1, (job.data["options"]["limit"] or 1) * tasks)
        times.setdefault(job.kind, []).append(runtime)
    if not times.get("train") or not times.get(EVALUATE):
        return None
    variants = len(study.spec.quantize.variants)
    return Costs(train_s=float(np.mean(times["train"])), quantize_s=float(np.mean(times.get("quantize") or [0.0])),
                 eval_item_s=float(np.mean(times[EVALUATE])), tasks=tasks, variants=variants,
                 base_variants=variants if study.spec.quantize.base else 0)


def arms(study: Study) -> dict[str, dict]:
    """Task -> configuration (recipe label, or the base) -> its unquantized models x items."""
    samples, _, _ = finished_results(study)
    df = normalize_samples(samples)
    df = df[df["quant"] == NO_QUANT]
    return {task: {recipe: config_of(g) for recipe, g in rows.groupby("recipe", sort=True)}
            for task, rows in df.groupby("task", sort=False)}


def _look(study: Study, round_no: int, rounds: list[dict]) -> Decision:
    earlier = Decision.from_dict(rounds[-2]["decision"]) if len(rounds) > 1 else None
    frontier = earlier.next_frontier if earlier else (study.spec.adaptive.seeds, study.spec.adaptive.items)
    return decide(arms(study), baseline=analysis_settings(study).baseline, limits=limits(study), round_no=round_no,
                  frontier=tuple(frontier), designs=rounds[-1]["designs"], earlier=earlier,
                  costs=measured_costs(study))


def _seeded(study: Study) -> dict[str, bool]:
    return {BASE: False, **{r.label: True for r in study.recipes}}


def _regraph(study: Study, designs: dict) -> None:
    study.graph = build_graph(study.spec, study.recipes, study.workspace, designs)


def run_rounds(study: Study, settings: EngineSettings, echo: Callable[[str], None] = print) -> list[Outcome]:
    """Every round until the study stops; returns the outcomes of the jobs run (or found done)."""
    with backend_session(settings):  # Ray, when it runs the jobs, starts once for all rounds
        return _rounds(study, settings, echo)


def _rounds(study: Study, settings: EngineSettings, echo: Callable[[str], None]) -> list[Outcome]:
    rounds = read_rounds(study.folder, study.spec, study.recipes)
    outcomes: list[Outcome] = []
    while True:
        round_no = len(rounds)
        _regraph(study, rounds[-1]["designs"])
        if rounds[-1]["decision"] is not None and rounds[-1]["decision"]["stop"]:
            return _merge(outcomes, run_engine(study.engine(settings)))  # stopped earlier: a no-op rerun
        echo(f"round {round_no}: {design_line(rounds[-1]['designs'])}")
        ran = run_engine(study.engine(settings))
        outcomes = _merge(outcomes, ran)
        failed = [o for o in ran if o.state != DONE]
        if failed:
            echo(f"round {round_no} did not finish ({len(failed)} job(s) failed or were skipped); fix them and run "
                 f"`ftlab study run {study.path}` again: it resumes this round")
            return outcomes
        decision = _look(study, round_no, rounds)
        rounds[-1]["decision"] = decision.to_dict()
        if not decision.stop:
            rounds.append({"designs": next_designs(rounds[-1]["designs"], decision, _seeded(study)),
                           "decision": None})
        write_rounds(study.folder, study.spec, study.recipes, rounds)  # the commitment: never decided again
        echo(round_line(decision))
        if decision.stop:
            return outcomes


def _merge(outcomes: list[Outcome], ran: list[Outcome]) -> list[Outcome]:
    """One outcome per job over the rounds: a job a round ran, else its latest state (every round's
    graph holds the jobs of the rounds before it, found done)."""
    merged = {o.job.id: o for o in outcomes}
    for o in ran:
        if o.job.id not in merged or o.ran or not merged[o.job.id].ran:
            merged[o.job.id] = o
    return list(merged.values())


def design_line(designs: dict) -> str:
    groups: dict[tuple, list[str]] = {}
    for name, d in designs.items():
        groups.setdefault(tuple(d), []).append(name)
    return "; ".join(f"{', '.join(names)}: {('1 model' if s == 1 and names == [BASE] else f'{s} seeds')} x {n} items"
                     for (s, n), names in groups.items())


def _counts(decision: Decision) -> str:
    states = [r.state for r in decision.rows]
    futile = f", {states.count(FUTILE)} futile" if FUTILE in states else ""
    return (f"{states.count(DIFFERENT)} decided different, {states.count(EQUIVALENT)} equivalent{futile}, "
            f"{states.count(OPEN)} open")


def round_line(decision: Decision) -> str:
    head = (f"round {decision.round} look: information {decision.information:.2f}, alpha {_alpha(decision.alpha)} "
            f"(spent {_alpha(decision.spent)}); {_counts(decision)}")
    if decision.stop:
        return f"{head}; stopped: {decision.stop} ({decision.why})"
    return f"{head}; next: {decision.why}"


def _alpha(a: float) -> str:
    return f"{a:.2g}" if a else "0"


def rounds_of(study: Study) -> list[Decision]:
    return [Decision.from_dict(r["decision"]) for r in read_rounds(study.folder, study.spec, study.recipes)
            if r["decision"] is not None]


# ---------------------------------------------------------------------------------------------
# Report


_STOPS = {STOP_DECIDED: "every comparison was decided", STOP_CEILING: "the ceiling was reached with comparisons open",
          STOP_BUDGET: "the compute budget would have been exceeded",
          STOP_FUTILE: "every comparison was decided but those the ceiling was unlikely to decide (futility)"}


def _comparison(r) -> str:
    against = "the best" if r.kind == BEST else "the baseline"
    return f"`{r.recipe}` vs {against} `{r.other}` {r.estimate:+.4f} (round {r.decided_round})" if r.decided_round \
        else f"`{r.recipe}` vs {against} `{r.other}` {r.estimate:+.4f}"


def verdict_sentences(decisions: list[Decision], margin: float) -> list[str]:
    if not decisions:
        return ["Adaptive study: no round has been decided yet."]
    last = decisions[-1]
    where = f"stopped after round {last.round}: {_STOPS.get(last.stop, last.stop)}" if last.stop else \
        f"round {last.round + 1} is next"
    out = [f"Adaptive study ({len(decisions)} look(s), alpha spent {_alpha(last.spent)}), {where}."]
    for state, what in ((DIFFERENT, "Decided different (Holm at the look's alpha)"),
                        (EQUIVALENT, f"Decided equivalent (interval inside +-{margin:g})"),
                        (FUTILE, "Stopped for futility, undecided (predictive power at the ceiling below the "
                                 "study's threshold)"),
                        (OPEN, "Still open")):
        rows = [r for r in last.rows if r.state == state]
        if rows:
            out.append(f"{what}: " + "; ".join(_comparison(r) for r in rows) + ".")
    return out


def rounds_table(decisions: list[Decision]) -> pd.DataFrame:
    return pd.DataFrame([{
        "round": str(d.round), "seeds x items": f"{d.frontier[0]} x {d.frontier[1]}",
        "information": f"{d.information:.3f}", "alpha at this look": _alpha(d.alpha), "alpha spent": _alpha(d.spent),
        "different": str(sum(r.state == DIFFERENT for r in d.rows)),
        "equivalent": str(sum(r.state == EQUIVALENT for r in d.rows)),
        "futile": str(sum(r.state == FUTILE for r in d.rows)),
        "open": str(sum(r.state == OPEN for r in d.rows)),
        "open configurations": ", ".join(d.open) or "-",
        "then": f"stopped: {d.stop} ({d.why})" if d.stop else d.why,
    } for d in decisions])


def decisions_table(decision: Decision) -> pd.DataFrame:
    def p(v):
        return "" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.3g}"

    return pd.DataFrame([{
        "task": r.task, "comparison": "vs best" if r.kind == BEST else "vs baseline", "recipe": r.recipe,
        "against": r.other, "seeds": f"{r.seeds} vs {r.other_seeds}", "items": str(r.items),
        "diff": f"{r.estimate:+.4f}", "p": p(r.p_value), "p equivalence": p(r.p_equivalence),
        "predictive power": p(r.predictive_power), "decision": r.state,
        "round": str(r.decided_round or ""),
    } for r in decision.rows])


def report_blocks(decisions: list[Decision], limits_: Limits) -> list[tuple]:
    method = (f"Rounds add seeds or items only to configurations in a comparison still open. Each look spends part of "
              f"alpha = {limits_.alpha:g} ({limits_.spending} spending over information time, looks combined by the "
              f"union bound); a comparison is decided different when Holm's procedure at the look's alpha, over "
              f"every pair of configurations in every task, rejects it, equivalent when its two one-sided tests "
              f"against +-{limits_.margin:g} reject at the look's alpha divided by the number of those pairs. "
              f"Ceiling {limits_.max_seeds} seeds x {limits_.max_items} items. "
              + (f"A comparison whose predictive power of a decision at the ceiling fell below {limits_.futility:g} "
                 f"was stopped for futility: it got no more seeds or items for its own sake, and was still tested "
                 f"at every look. " if limits_.futility else "")
              + f"The tables after this section read the final data as a fixed design (descriptive: their p-values "
              f"do not account for the looks); the decisions here are the verdict.")
    blocks: list[tuple] = [("h", 2, "Adaptive rounds"), ("p", method), ("ul", verdict_sentences(decisions, limits_.margin))]
    if decisions:
        blocks += [("table", rounds_table(decisions)), ("h", 3, "Decisions at the last look"),
                   ("table", decisions_table(decisions[-1]))]
    return blocks


def dry_run(study: Study, settings: EngineSettings) -> str:
    """The rounds so far, the current round's jobs, and what the next round would add when this
    round is complete (the look computed, not recorded)."""
    rounds = read_rounds(study.folder, study.spec, study.recipes)
    decisions = [Decision.from_dict(r["decision"]) for r in rounds if r["decision"] is not None]
    lines = [f"adaptive study {study.spec.name}: {len(decisions)} round(s) decided"]
    lines += [f"  {round_line(d)}" for d in decisions]
    if rounds[-1]["decision"] is not None:
        lines.append("the study has stopped; `ftlab study report` writes its report")
        return "\n".join(lines)
    _regraph(study, rounds[-1]["designs"])
    rows = study.engine(settings).plan()
    lines += [f"round {len(rounds)}: {design_line(rounds[-1]['designs'])}", format_plan(study, rows)]
    if all(r.state == DONE for r in rows):
        lines.append(f"if run now: {round_line(_look(study, len(rounds), rounds))}")
    else:
        lines.append("the next round is decided once these jobs are done")
    return "\n".join(lines)


def execute(study: Study, settings: EngineSettings, *, dry_run_: bool = False, report: bool = True) -> int:
    """`study run` of an adaptive study: the rounds, then the report. Exit code as for a fixed study."""
    settings.validate()
    if dry_run_:
        print(dry_run(study, settings))
        return 0
    return finish(study, run_rounds(study, settings), print_report if report else None)


def print_report(study: Study) -> None:
    decisions = rounds_of(study)
    paths, verdict = report_study(study, extra_blocks=report_blocks(decisions, limits(study)))
    print("\n".join(f"- {s}" for s in verdict_sentences(decisions, limits(study).margin)))
    print("fixed-sample reading of the final data (descriptive; the adaptive decisions above are the verdict):")
    print(verdict)
    print(f"report: {paths['report.html']}")
