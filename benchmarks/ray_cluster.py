"""A study on a 3-node Ray cluster simulated on this machine, against the same study on local workers;
then the time from a node's death to its job running again elsewhere.

The study: scratch:tiny, LoRA / rsLoRA x 2 seeds, 1 task (synthetic-arith, 8 questions, 6 new
tokens): 1 snapshot + 4 trainings + 5 evaluations = 10 jobs. Each side runs in its own fresh
workspace, one after the other, with 3 jobs at once of 1 thread each:

- local: `ftlab study run FILE --workers 3 --threads 1` (jobs forked from the local zygote, which
  imported torch and transformers once);
- local, fresh processes: the same with the zygote switched off (every job a fresh `python -m
  ftlab` process that imports torch itself, as every Ray job does): what separates Ray from the
  local backend beyond the process start;
- ray: `ray.cluster_utils.Cluster` with a head and two worker nodes of 1 CPU each, then
  `ftlab study run FILE --backend ray --ray-address ADDR --threads 1` (every job a Ray task that
  starts a fresh `python -m ftlab` process on its node).

Per job, the driver's overhead is the time from its claim (journal `start`) to its recorded end
(journal `done`) minus its process's own runtime (the ledger's runtime_s): scheduling, the worker,
the result's way back. The answers of the two runs are compared model by model.

Node death (repeated --repeats times): a head (1 CPU) and two nodes declaring `fake_gpu: 1`; a
study of one training (60 steps, a checkpoint every 3) that asks for `fake_gpu`; once a
checkpoint exists, the training's node is killed (SIGKILL to its raylet and workers). Measured from
the kill: the driver recording the attempt as lost, the retry claimed, and the new training
process running on the other node; and the step it resumed from.

    uv run python benchmarks/ray_cluster.py --out benchmarks/ray_cluster.results.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

import psutil
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

TRAIN = {"train.max_steps": 8, "train.batch_size": 4, "data.trunc_train": 32, "data.val_size": 0,
         "data.max_length": 64, "train.report_to": ["none"]}
FAST_HEALTH = {"health_check_initial_delay_ms": 0, "health_check_period_ms": 500, "health_check_failure_threshold": 3}


def study(ws: Path, **changes) -> Path:
    spec = {"name": "bench", "bases": ["scratch:tiny"], "datasets": ["synthetic-arith"],
            "train": {"fixed": dict(TRAIN), "grid": {"peft.method": ["LoRa", "rsLoRa"]}, "seeds": [0, 1]},
            "evaluate": {"datasets": ["synthetic-arith"], "limit": 8, "settings": {"eval.max_new_tokens": 6}}}
    spec.update(changes)
    path = ws / "study.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def env() -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1", "RAY_AUTH_MODE": "disabled"}


def ftlab(ws: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "ftlab", "--workdir", str(ws), *args]


def stamp(text: str) -> float:
    return datetime.fromisoformat(text).timestamp()


def journal(ws: Path) -> list[dict]:
    path = ws / "Testing" / ".jobs" / "journal.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


def overheads(ws: Path) -> dict:
    """Per job: claim-to-end in the journal minus the process's runtime in the ledger."""
    starts = {e["id"]: stamp(e["time"]) for e in journal(ws) if e["event"] == "start"}
    per_job, runtimes = [], {}
    for e in journal(ws):
        if e["event"] != "done":
            continue
        record = json.loads((ws / "Testing" / ".jobs" / f"{e['id']}.json").read_text())
        per_job.append(stamp(e["time"]) - starts[e["id"]] - record["runtime_s"])
        runtimes.setdefault(e["kind"], []).append(record["runtime_s"])
    return {"jobs": len(per_job), "overhead_s_median": round(statistics.median(per_job), 3),
            "overhead_s_max": round(max(per_job), 3),
            "process_runtime_s_mean": {k: round(statistics.mean(v), 2) for k, v in sorted(runtimes.items())}}


def responses(ws: Path) -> dict:
    out = {}
    for path in sorted((ws / "Testing" / "metrics").glob("*.samples.jsonl")):
        for line in path.read_text().splitlines():
            row = json.loads(line)
            out[(path.name, row["index"])] = row.get("response")
    return out


# `python -m ftlab` with the local zygote off (ftlab.jobs.zygote.supported() False): jobs start fresh.
NO_ZYGOTE = ("import sys, ftlab.jobs.zygote as z; z.supported = lambda: False; "
             "from ftlab.cli import main; sys.exit(main(sys.argv[1:]))")


def run_study(ws: Path, *args: str, zygote: bool = True) -> float:
    path = study(ws)
    argv = ftlab(ws, "study", "run", str(path), "--threads", "1", "--no-report", *args)
    if not zygote:
        argv = [sys.executable, "-c", NO_ZYGOTE, *argv[3:]]
    t0 = time.monotonic()
    proc = subprocess.run(argv, capture_output=True, text=True, env=env(), cwd=ws)
    wall = time.monotonic() - t0
    if proc.returncode != 0:
        raise SystemExit(f"study failed ({' '.join(args)}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return wall


def cluster(**workers):
    from ray.cluster_utils import Cluster

    c = Cluster(initialize_head=True, connect=False, head_node_args={"num_cpus": 1, "_system_config": FAST_HEALTH})
    nodes = [c.add_node(num_cpus=1, **workers) for _ in range(2)]
    c.wait_for_nodes()
    return c, nodes


def side_by_side(root: Path) -> dict:
    local_ws, fresh_ws, ray_ws = root / "local", root / "fresh", root / "ray"
    for ws in (local_ws, fresh_ws, ray_ws):
        ws.mkdir()
    local_wall = run_study(local_ws, "--workers", "3")
    fresh_wall = run_study(fresh_ws, "--workers", "3", zygote=False)
    t0 = time.monotonic()
    c, _ = cluster()
    start_s = time.monotonic() - t0
    try:
        ray_wall = run_study(ray_ws, "--backend", "ray", "--ray-address", c.address)
    finally:
        c.shutdown()
    a, b, f = responses(local_ws), responses(ray_ws), responses(fresh_ws)
    same = sum(a[k] == b.get(k) for k in a)
    return {"local": {"wall_s": round(local_wall, 1), **overheads(local_ws)},
            "local_fresh_processes": {"wall_s": round(fresh_wall, 1), **overheads(fresh_ws)},
            "ray_3_nodes": {"wall_s": round(ray_wall, 1), "cluster_start_s": round(start_s, 1), **overheads(ray_ws)},
            "ray_vs_local_wall": round(ray_wall / local_wall, 2),
            "ray_vs_local_fresh_wall": round(ray_wall / fresh_wall, 2),
            "identical_answers": f"{same} / {len(a)}", "answers_compared": len(a),
            "identical_answers_fresh": f"{sum(a[k] == f.get(k) for k in a)} / {len(a)}"}


def node_death(root: Path) -> dict:
    ws = root
    ws.mkdir()
    c, trainers = cluster(resources={"fake_gpu": 1})
    try:
        fixed = {**TRAIN, "train.max_steps": 60, "train.save_steps": 3}
        path = study(ws, train={"fixed": fixed, "grid": {"peft.method": ["LoRa"]}, "seeds": [0]},
                     resources={"train": {"custom": {"fake_gpu": 1}}})
        proc = subprocess.Popen(ftlab(ws, "study", "run", str(path), "--backend", "ray", "--ray-address", c.address,
                                      "--threads", "1", "--no-report"),
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env(), cwd=ws)
        ckpts = ws / "Models" / ".checkpoints"
        while not list(ckpts.glob("*/checkpoint-*")):
            if proc.poll() is not None:
                raise SystemExit(proc.stdout.read()[-3000:])
            time.sleep(0.1)
        pid = next(p.pid for p in psutil.process_iter(["cmdline"])
                   if "--config" in (p.info["cmdline"] or []) and "train" in (p.info["cmdline"] or [])
                   and str(ws) in " ".join(p.info["cmdline"] or []))
        raylets = {n.all_processes["raylet"][0].process.pid: n for n in trainers}
        proc_ = psutil.Process(pid)
        while proc_.pid not in raylets:
            proc_ = proc_.parent()
        victim = raylets[proc_.pid]
        killed = time.time()
        c.remove_node(victim, allow_graceful=False)
        respawned = None
        while respawned is None and proc.poll() is None:
            for p in psutil.process_iter(["cmdline", "create_time"]):
                cmd = p.info["cmdline"] or []
                if p.pid != pid and "--config" in cmd and "train" in cmd and str(ws) in " ".join(cmd):
                    respawned = p.info["create_time"]
            time.sleep(0.05)
        out, _ = proc.communicate(timeout=900)
        if proc.returncode != 0:
            raise SystemExit(out[-3000:])
    finally:
        c.shutdown()
    events = journal(ws)
    train = next(e for e in events if e["kind"] == "train")
    lost = next(e for e in events if e["id"] == train["id"] and e["event"] == "lost")
    retry = next(e for e in events if e["id"] == train["id"] and e["event"] == "start" and e.get("attempt") == 2)
    meta = json.loads((ws / "Models" / train["name"] / "training_metadata.json").read_text())
    return {"lost_recorded_s": round(stamp(lost["time"]) - killed, 2),
            "retry_claimed_s": round(stamp(retry["time"]) - killed, 2),
            "new_process_running_s": round(respawned - killed, 2) if respawned else None,
            "resumed_from": Path(meta["results"]["resumed_from"]).name, "final_step": meta["results"]["global_step"],
            "lost_error": lost["error"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--repeats", type=int, default=3, help="node deaths to time")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        doc = {"machine": f"{os.cpu_count()} cores", "date": time.strftime("%Y-%m-%d"),
               "study": side_by_side(root)}
        doc["node_death"] = [node_death(root / f"death{i}") for i in range(args.repeats)]
    print(json.dumps(doc, indent=2))
    args.out.write_text(json.dumps(doc, indent=2) + "\n")


if __name__ == "__main__":
    main()
