"""`ftlab compare`: table of every evaluated model, deltas, paired significance and plots."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from ftlab.compare.frame import (
    ID_COLUMNS, SCORE, SUMMARY, add_deltas, filter_frame, load_metrics, to_markdown, to_text, wide_table,
)
from ftlab.compare.pair import compare_pair, describe_pair
from ftlab.errors import FtlabError
from ftlab.io import atomic_write_text
from ftlab.paths import Workspace

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--task", action="append", metavar="TASK", help="only these tasks (repeat or comma-separate)")
    parser.add_argument("--base", action="append", metavar="BASE", help="only models of these base families")
    parser.add_argument("--peft", action="append", metavar="PEFT", help="only these PEFT tags (e.g. LoRa16, NoPeft)")
    parser.add_argument("--quant", action="append", metavar="TAG", help="only these quant tags (e.g. NoQuant)")
    parser.add_argument("--model", action="append", metavar="MODEL", help="only these models")
    parser.add_argument("--metric", action="append", metavar="METRIC", help="only these metrics (e.g. accuracy, f1)")
    parser.add_argument("--markdown", action="store_true", help="print tables as GitHub markdown")
    parser.add_argument("--csv", metavar="PATH", help="also write the (filtered) tidy frame with deltas to PATH")
    parser.add_argument("--no-summary", action="store_true",
                        help="do not (re)write Testing/metrics_summary.csv")
    parser.add_argument("--baseline", metavar="MODEL",
                        help="model to compute deltas against (default: each family's <base>-base snapshot)")
    parser.add_argument("--pair", nargs=2, metavar=("A", "B"),
                        help="paired significance of B vs A on the samples both answered")
    parser.add_argument("--bootstrap", type=int, default=10_000, metavar="N", help="paired bootstrap resamples (default 10000)")
    parser.add_argument("--confidence", type=float, default=0.95, help="interval level for --pair (default 0.95)")
    parser.add_argument("--seed", type=int, default=0, help="bootstrap seed")
    parser.add_argument("--plot", metavar="DIR", help="write PNG charts into DIR")


def _render(table, markdown: bool) -> str:
    return to_markdown(table) if markdown else to_text(table)


def run(args: argparse.Namespace) -> int:
    ws = Workspace.at(getattr(args, "workdir", None))
    full = load_metrics(ws)
    if full.empty:
        raise FtlabError(f"no metrics documents in {ws.metrics_dir}; run `ftlab evaluate MODEL` or `ftlab orchestrate` first")
    df = filter_frame(full, task=args.task, base=args.base, peft=args.peft, quant=args.quant, model=args.model,
                      metric=args.metric)
    if df.empty:
        raise FtlabError("the filters leave no metrics; loosen --task/--base/--peft/--quant/--model/--metric")
    if args.baseline is not None and args.baseline not in set(full["model"]):
        raise FtlabError(f"--baseline {args.baseline!r} has no metrics; evaluated: {', '.join(sorted(set(full['model'])))}")
    pair_result = None
    if args.pair:
        # Computed before anything is written: an unknown or unevaluated model is bad input.
        tasks = sorted(set(df["task"])) if args.task else None
        pair_result = compare_pair(ws, *args.pair, resamples=args.bootstrap, confidence=args.confidence,
                                   seed=args.seed, tasks=tasks)
    if args.plot and Path(args.plot).exists() and not Path(args.plot).is_dir():
        raise FtlabError(f"--plot {args.plot} is a file; give a folder")
    # Written only once the arguments are known good, so a typo changes no file.
    if not args.no_summary:
        # Always the unfiltered table: the summary file must not depend on the flags of the last call.
        atomic_write_text(ws.summary_csv, wide_table(full).to_csv(index=False))
        log.info("wrote %s", ws.summary_csv)
    # Deltas come from the unfiltered frame so a filter on --model/--quant never hides the baseline.
    with_deltas = add_deltas(full, args.baseline)
    with_deltas = with_deltas.merge(df[["model", "task", "metric"]], on=["model", "task", "metric"], how="inner")

    print(_render(wide_table(df), args.markdown))
    scored = with_deltas[with_deltas["group"].isin([SCORE, SUMMARY])]
    if scored["delta"].notna().any():
        deltas = wide_table(scored[scored["model"] != scored["baseline"]], value="delta")
        if not deltas.empty:
            label = args.baseline or "each family's <base>-base"
            print(f"\ndelta vs {label}:")
            print(_render(deltas.drop(columns=[c for c in ID_COLUMNS[1:] if c in deltas.columns]), args.markdown))
    from ftlab.compare import recovery  # lazy: ftlab.compare imports pandas

    # Quantized models against their own sources (delta vs base is the wrong reference for them).
    rec = recovery.recovery_table(ws, df, resamples=args.bootstrap, confidence=args.confidence, seed=args.seed)
    if not rec.empty:
        print(f"\n{recovery.HEADER}")
        print(recovery.render(rec, args.confidence, args.markdown))
    if args.csv:
        atomic_write_text(args.csv, with_deltas.to_csv(index=False))
        print(f"\nwrote {args.csv}")
    if args.pair:
        print()
        print(describe_pair(pair_result, *args.pair, args.confidence))
    if args.plot:
        from ftlab.compare.plots import write_plots  # lazy: ftlab.compare.plots imports numpy

        written = write_plots(df, args.plot)
        rec_png = recovery.plot_recovery(rec, Path(args.plot) / "recovery.png")
        for path in written + ([rec_png] if rec_png else []):
            print(f"wrote {path}")
    return 0
