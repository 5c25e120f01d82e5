"""`ftlab study run` against the same steps run one after another by a shell script.

The study: SmolLM2-135M-Instruct, a 2 x 2 grid (LoRA / rsLoRA x rank 4 / 16), 2 PTQ variants
(HQQ 4-bit, bitsandbytes int8), 1 task (synthetic-arith): 1 snapshot + 4 trainings + 8
quantizations + 13 evaluations = 26 jobs. Each side runs in its own fresh workspace:

- shell: the exact commands the study's jobs run (`python -m ftlab train|quantize|evaluate ...`),
  written into a bash script in dependency order and run with `bash`, all cores per command;
- study, 1 worker: `ftlab study run FILE --workers 1` (all cores per job);
- study, 2 workers: `ftlab study run FILE --workers 2` (one core per job, two jobs at once);
- no-op rerun: `ftlab study run FILE` again on the finished workspace (median of 5);
- plan: `ftlab study run FILE --dry-run` on the finished workspace.

The answers are compared: each model's sample responses in the study workspaces against the
shell workspace (same seeds; thread counts differ between the 2-worker run and the others).

    uv run python benchmarks/study.py --out benchmarks/study.results.json
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

STUDY = """\
name: bench
bases: [smollm2-135m-instruct]
datasets: [synthetic-arith]
train:
  fixed:
    train.max_steps: 8
    train.batch_size: 8
    train.learning_rate: 4.0e-4
    train.merge_after_train: true
    data.max_length: 256
    data.val_size: 0
  grid:
    peft.method: [LoRa, rsLoRa]
    peft.r: [4, 16]
  seeds: [0]
quantize:
  variants:
    - {method: HQQ, bits: 4, group_size: 64}
    - {method: BNB_INT8}
evaluate:
  datasets: [synthetic-arith]
  limit: 32
"""


def ftlab(ws: Path, *args: str, threads: int | None = None) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    return subprocess.run([sys.executable, "-m", "ftlab", "--workdir", str(ws), *args], capture_output=True,
                          text=True, env=env, cwd=REPO)


def timed(fn) -> tuple[float, object]:
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def shell_side(study_file: Path, ws: Path, threads: int) -> float:
    """The study's jobs as plain commands in a bash script, one after another."""
    from ftlab.jobs.engine import JOB_KINDS
    from ftlab.jobs.process import ftlab_argv
    from ftlab.paths import Workspace
    from ftlab.study.run import open_study

    workspace = Workspace(ws)
    study = open_study(study_file, workspace)
    lines = ["set -euo pipefail", f"export OMP_NUM_THREADS={threads}"]
    for job in study.engine().jobs:  # dependency order
        argv = ftlab_argv(ws, *JOB_KINDS.get(job.kind).command(job, workspace))
        lines.append(" ".join(shlex.quote(a) for a in argv) + " > /dev/null")
    script = ws / "steps.sh"
    script.write_text("\n".join(lines) + "\n")
    seconds, r = timed(lambda: subprocess.run(["bash", str(script)], capture_output=True, text=True, cwd=REPO))
    if r.returncode:
        raise SystemExit(f"shell script failed:\n{r.stderr[-3000:]}")
    return seconds


def study_side(study_file: Path, ws: Path, workers: int, threads: int) -> float:
    seconds, r = timed(lambda: ftlab(ws, "study", "run", str(study_file), "--workers", str(workers),
                                     "--threads", str(threads), "--no-report"))
    if r.returncode:
        raise SystemExit(f"study run failed:\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}")
    return seconds


def responses(ws: Path) -> dict[tuple[str, int], str]:
    from ftlab.io import read_jsonl

    out = {}
    for path in sorted((ws / "Testing" / "metrics").glob("*.samples.jsonl")):
        model = path.name[: -len(".samples.jsonl")]
        for line in read_jsonl(path):
            out[(model, line["index"])] = line.get("response")
    return out


def agreement(a: dict, b: dict) -> dict:
    keys = sorted(set(a) & set(b))
    same = sum(a[k] == b[k] for k in keys)
    return {"compared": len(keys), "identical": same, "share": same / len(keys) if keys else None,
            "missing": len(set(a) ^ set(b))}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=None, help="write the results JSON here")
    ap.add_argument("--keep", default=None, help="folder for the workspaces (default: a temp folder)")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="cores (default: all)")
    args = ap.parse_args()
    root = Path(args.keep or tempfile.mkdtemp(prefix="ftlab-study-bench-"))
    root.mkdir(parents=True, exist_ok=True)
    study_file = root / "bench-study.yaml"
    study_file.write_text(STUDY)
    load_before = os.getloadavg()

    results: dict = {"machine": {"cpus": os.cpu_count(), "load_before": load_before}, "study": STUDY}
    # The built-in model is converted once per machine (cached); do it before any timing.
    ftlab(root / "warm", "study", "run", str(study_file), "--dry-run")
    sides = [("shell", lambda ws: shell_side(study_file, ws, args.threads)),
             ("study_1_worker", lambda ws: study_side(study_file, ws, 1, args.threads)),
             ("study_2_workers", lambda ws: study_side(study_file, ws, 2, max(1, args.threads // 2)))]
    for name, run in sides:
        ws = root / name
        seconds = run(ws)
        results[name] = {"wall_s": round(seconds, 1)}
        print(f"{name}: {seconds:.1f} s", flush=True)
    shell = responses(root / "shell")
    for name in ("study_1_worker", "study_2_workers"):
        results[name]["answers_vs_shell"] = agreement(shell, responses(root / name))
    ws = root / "study_1_worker"
    noop = [timed(lambda: ftlab(ws, "study", "run", str(study_file), "--no-report"))[0] for _ in range(5)]
    plan_s, plan = timed(lambda: ftlab(ws, "study", "run", str(study_file), "--dry-run"))
    results["noop_rerun_s"] = {"median": round(statistics.median(noop), 2), "runs": [round(x, 2) for x in noop]}
    results["plan"] = {"seconds": round(plan_s, 2), "first_line": plan.stdout.splitlines()[0],
                       "last_line": plan.stdout.splitlines()[-1]}
    results["ratio_shell_over_study_1_worker"] = round(results["shell"]["wall_s"] / results["study_1_worker"]["wall_s"], 3)
    results["ratio_shell_over_study_2_workers"] = round(results["shell"]["wall_s"] / results["study_2_workers"]["wall_s"], 3)
    results["machine"]["load_after"] = os.getloadavg()
    print(json.dumps(results, indent=2))
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
