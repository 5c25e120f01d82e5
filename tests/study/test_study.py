"""`ftlab study`: expansion, identity hashing, validation, plans, and whole studies on scratch:tiny
through the real CLI (crash safety, concurrent drivers, failure isolation, Ray)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
import yaml

from ftlab.errors import ConfigError, FtlabError
from ftlab.io import read_jsonl
from ftlab.paths import Workspace

REPO = Path(__file__).resolve().parents[2]

TINY_TRAIN = {"train.max_steps": 2, "train.batch_size": 4, "data.trunc_train": 16, "data.val_size": 0,
              "data.max_length": 64, "train.report_to": ["none"]}


def study_file(tmp_path: Path, **changes) -> Path:
    spec = {
        "name": "tiny",
        "bases": ["scratch:tiny"],
        "datasets": ["synthetic-arith"],
        "train": {"fixed": dict(TINY_TRAIN), "grid": {"peft.method": ["LoRa", "rsLoRa"]}, "seeds": [0]},
        "quantize": {"variants": [{"method": "HQQ", "bits": 4, "group_size": 64}]},
        "evaluate": {"datasets": ["synthetic-arith"], "limit": 6, "settings": {"eval.max_new_tokens": 6}},
    }
    for key, value in changes.items():
        node = spec
        parts = key.split("__")
        for p in parts[:-1]:
            node = node[p]
        node[parts[-1]] = value
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def graph_of(path: Path):
    from ftlab.study.graph import build_graph
    from ftlab.study.spec import load_study

    spec, recipes = load_study(path)
    return spec, recipes, build_graph(spec, recipes, Workspace(path.parent))


def ids(graph) -> dict[tuple[str, str], str]:
    """(kind, recipe/seed/quant) -> job id."""
    return {(j.kind, f"{j.info['recipe']}|{j.info['seed']}|{j.info['quant']}"): j.id for j in graph.jobs}


def ftlab_cmd(ws: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "ftlab", "--workdir", str(ws), *args]


def run_cli(ws: Path, *args: str, timeout: int = 900) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(ftlab_cmd(ws, *args), capture_output=True, text=True, timeout=timeout, env=env, cwd=ws)


def journal(ws: Path) -> list[dict]:
    return read_jsonl(ws / "Testing" / ".jobs" / "journal.jsonl")


def assert_each_done_once(ws: Path, graph) -> None:
    done = Counter(e["id"] for e in journal(ws) if e["event"] == "done")
    assert set(done) == {j.id for j in graph.jobs}, done
    assert max(done.values()) == 1, done


# ---------------------------------------------------------------------------------------------
# expansion, identity, validation (no model is loaded)


def test_grid_seeds_include_exclude_expand_to_labelled_recipes(tmp_path):
    path = study_file(tmp_path, train__grid={"peft.method": ["LoRa", "DoRa"], "peft.r": [8, 16]},
                      train__seeds=[0, 1],
                      train__include=[{"peft.method": "VeRa", "peft.r": 256}],
                      train__exclude=[{"peft.method": "DoRa", "peft.r": 16}])
    spec, recipes, graph = graph_of(path)
    assert [r.label for r in recipes] == [
        "peft.method=LoRa, peft.r=8", "peft.method=LoRa, peft.r=16", "peft.method=DoRa, peft.r=8",
        "peft.method=VeRa, peft.r=256"]
    counts = graph.counts()
    # 4 recipes x 2 seeds trained, each quantized once; everything plus the base evaluated.
    assert counts == {"snapshot": 1, "evaluate": 1 + 8 + 8, "train": 8, "quantize": 8}
    names = [j.name for j in graph.jobs if j.kind != "evaluate"]
    assert len(names) == len(set(names))  # two seeds of one recipe never share a folder
    from ftlab.naming import parse_run_name

    for job in graph.jobs:
        if job.kind != "evaluate":
            assert parse_run_name(job.name).variant == job.id[:8]  # the name carries the identity
            assert parse_run_name(job.name).render() == job.name


def test_a_changed_key_changes_exactly_its_jobs_and_their_dependants(tmp_path):
    grid = {"peft.method": ["LoRa"], "peft.r": [8, 16]}
    _, _, before = graph_of(study_file(tmp_path, train__grid=grid))
    a = ids(before)
    assert ids(graph_of(study_file(tmp_path, train__grid=grid))[2]) == a  # deterministic

    # A new grid value: the r=8 jobs keep their ids, the r=32 jobs are new.
    b = ids(graph_of(study_file(tmp_path, train__grid={"peft.method": ["LoRa"], "peft.r": [8, 32]}))[2])
    kept = {k for k in a if "peft.r=8|" in k[1] or k[1].startswith("base|")}
    assert {k: a[k] for k in kept} == {k: b[k] for k in kept}
    assert not set(b.values()) & {a[k] for k in a if k not in kept}

    # Another learning rate: every training job and what depends on it changes; the base does not.
    fixed = {**TINY_TRAIN, "train.learning_rate": 1e-3}
    c = ids(graph_of(study_file(tmp_path, train__grid=grid, train__fixed=fixed))[2])
    for key, value in a.items():
        assert (c[key] == value) == key[1].startswith("base|"), key

    # Another PTQ group size: only quantize jobs and their evaluations change.
    d = ids(graph_of(study_file(tmp_path, train__grid=grid,
                                quantize={"variants": [{"method": "HQQ", "bits": 4, "group_size": 32}]}))[2])
    changed = {k[0] for k in a if k in d and a[k] != d[k]} | {k[0] for k in d if k not in a}
    assert changed == {"quantize", "evaluate"}
    assert all(a[k] == d[k] for k in a if k in d and k[0] != "evaluate" and k[0] != "quantize")
    unquantized_evals = [k for k in a if k[0] == "evaluate" and not k[1].endswith("HQQ_w4_g64")]
    assert all(a[k] == d[k] for k in unquantized_evals)

    # A larger evaluation: only evaluation jobs change.
    e = ids(graph_of(study_file(tmp_path, train__grid=grid, evaluate={"datasets": ["synthetic-arith"], "limit": 9}))[2])
    assert {k[0] for k in a if a[k] != e[k]} == {"evaluate"}


def test_every_problem_of_a_study_file_is_reported_at_once(tmp_path):
    path = study_file(tmp_path, train__fixed={**TINY_TRAIN, "train.lerning_rate": 1e-4, "train.seed": 3},
                      train__grid={"peft.method": ["LoRa", "NoSuchPeft"], "peft.r": "8"},
                      quantize={"variants": [{"method": "HQQQ"}, {"methd": "GPTQ"}]},
                      evaluate={"datasets": [], "limt": 5})
    with pytest.raises(ConfigError) as exc:
        graph_of(path)
    text = "\n".join(exc.value.problems)
    for expected in ("train.seed is set by the study", "train.grid.peft.r must be a non-empty list",
                     "quantize.variants[1] must be a mapping with at least method",
                     "unknown key 'evaluate.limt' (did you mean 'evaluate.limit'?)"):
        assert expected in text, text
    with pytest.raises(ConfigError) as exc:
        graph_of(study_file(tmp_path, train__fixed={**TINY_TRAIN, "train.lerning_rate": 1e-4},
                            train__grid={"peft.method": ["LoRa", "NoSuchPeft"]},
                            quantize={"variants": [{"method": "HQQQ"}]}))
    text = "\n".join(exc.value.problems)
    assert "recipe [peft.method=LoRa]: unknown key 'train.lerning_rate' (did you mean 'train.learning_rate'?)" in text
    assert "recipe [peft.method=NoSuchPeft]: " in text and "NoSuchPeft" in text
    assert "quantize.variants[0]:" in text and "HQQQ" in text


def test_resources_reach_the_jobs_and_their_problems_are_reported_at_once(tmp_path):
    from ftlab.jobs.engine import Resources

    path = study_file(tmp_path, resources={"train": {"cpus": 2, "memory_gb": 4, "custom": {"big_gpu": 1}},
                                           "evaluate": {"gpus": 0}})
    _, _, graph = graph_of(path)
    by_kind = {j.kind: j.resources for j in graph.jobs}
    assert by_kind["train"] == Resources(cpus=2, gpus=0.0, memory_gb=4.0, custom=(("big_gpu", 1.0),))
    assert by_kind["evaluate"] == Resources() and by_kind["snapshot"] == Resources()
    assert by_kind["train"].needs(1) == {"CPU": 2.0, "memory": 4 * 2 ** 30, "big_gpu": 1.0}
    from ftlab.study.run import format_plan, open_study

    study = open_study(path, Workspace(tmp_path))
    assert ("each job reserves (N: --threads): snapshot N CPU(s); evaluate N CPU(s); train 2 CPU(s), 4 GB memory, "
            "1 big_gpu;") in format_plan(study, study.engine().plan()) + ";"
    # Where a job runs is not what it computes: resources leave every job's identity unchanged.
    assert {j.id for j in graph.jobs} == {j.id for j in graph_of(study_file(tmp_path))[2].jobs}
    with pytest.raises(ConfigError) as exc:
        graph_of(study_file(tmp_path, resources={"train": {"cpus": 0, "custom": {"GPU": 1, "big_gpu": -1}},
                                                 "evaluate": {"gpus": -1, "memory_gb": -2}, "quantise": {}}))
    text = "\n".join(exc.value.problems)
    for expected in ("resources.train.cpus=0 must be a whole number of CPUs >= 1",
                     "resources.train.custom.GPU: a built-in Ray resource; use resources.train.cpus, .gpus or .memory_gb",
                     "resources.train.custom.big_gpu=-1 must be a positive amount, e.g. 1",
                     "resources.evaluate.gpus=-1", "resources.evaluate.memory_gb=-2",
                     "unknown key 'resources.quantise' (did you mean 'resources.quantize'?)"):
        assert expected in text, text


def test_evaluation_tasks_and_quant_options_are_checked_before_anything_runs(tmp_path, capsys):
    # Both used to pass `--dry-run` ("6 of 6 jobs would run"): the task typo failed the first
    # evaluation after every training had run, and bits: four surfaced as a bad quant tag.
    path = study_file(tmp_path, quantize={"variants": [{"method": "GPTQ", "bits": "four"}, {"method": "HQQ", "group_size": 6.5}]},
                      evaluate={"datasets": ["synthetic-arithm", "arc:ll", "synthetic-arith:ll"], "limit": 8})
    with pytest.raises(ConfigError) as exc:
        graph_of(path)
    text = "\n".join(exc.value.problems)
    assert "evaluate.datasets: 'synthetic-arithm': unknown task 'synthetic-arithm' (did you mean 'synthetic-arith'?)" in text
    assert "'synthetic-arith:ll'" in text  # a numeric task has no options to score by likelihood
    assert "'arc:ll'" not in text
    assert "quantize.variants[0].bits='four' must be a whole number (e.g. 4)" in text
    assert "quantize.variants[1].group_size=6.5 must be a whole number (e.g. 128)" in text
    assert len(exc.value.problems) == 4, text

    from ftlab.cli import main

    assert main(["--workdir", str(tmp_path), "study", "run", str(path), "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert "4 config problems" in err and "Traceback" not in err
    assert not (tmp_path / "Testing" / "studies").exists()  # nothing written


def test_baseline_must_name_one_recipe(tmp_path):
    with pytest.raises(FtlabError, match="matches 2 recipes"):
        graph_of(study_file(tmp_path, baseline={"train.max_steps": 2}))
    spec, recipes, _ = graph_of(study_file(tmp_path, baseline={"peft.method": "LoRa"}))
    from ftlab.study.spec import baseline_recipe

    assert baseline_recipe(spec, recipes).label == "peft.method=LoRa"


def test_plan_reports_done_to_run_and_stale_with_reasons(tmp_path):
    from ftlab.jobs.engine import DONE, STALE, TODO
    from ftlab.study.run import format_plan, open_study

    ws = Workspace(tmp_path)
    study = open_study(study_file(tmp_path), ws)
    snap = next(j for j in study.graph.jobs if j.kind == "snapshot")
    train = next(j for j in study.graph.jobs if j.kind == "train")
    from ftlab.schema import write_training_metadata

    (ws.models_dir / snap.name).mkdir(parents=True)
    write_training_metadata(ws.models_dir / snap.name, {"run_name": snap.name})
    (ws.models_dir / train.name).mkdir()  # a folder ftlab did not finish
    rows = {r.job.id: r for r in study.engine().plan()}
    assert rows[snap.id].state == DONE
    assert rows[train.id].state == STALE and "not a finished ftlab model folder" in rows[train.id].why
    assert all(r.state == TODO for i, r in rows.items() if i not in (snap.id, train.id))
    text = format_plan(study, list(rows.values()))
    assert text.splitlines()[0] == ("study tiny: 10 jobs (1 snapshot, 5 evaluate, 2 train, 2 quantize); "
                                    "1 done, 8 to run, 1 stale")
    assert "9 of 10 jobs would run" in text


def test_dry_run_warns_that_one_seed_cannot_support_recipe_claims(tmp_path, capsys):
    from ftlab.jobs.engine import EngineSettings
    from ftlab.study.run import ONE_SEED_WARNING, execute, open_study

    ws = Workspace(tmp_path)
    assert execute(open_study(study_file(tmp_path), ws), EngineSettings(), dry_run=True) == 0
    out = capsys.readouterr().out
    assert out.rstrip().endswith(f"warning: {ONE_SEED_WARNING}")
    assert "recipe-level claims need at least 2 seeds per recipe" in ONE_SEED_WARNING
    execute(open_study(study_file(tmp_path, train__seeds=[0, 1]), ws), EngineSettings(), dry_run=True)
    assert "warning" not in capsys.readouterr().out


# ---------------------------------------------------------------------------------------------
# whole studies through the CLI


@pytest.mark.slow
def test_study_end_to_end_failure_isolation_and_noop_rerun(tmp_path):
    ws = tmp_path
    # The third recipe cannot train (no such module to adapt): only its own jobs are affected.
    path = study_file(tmp_path, train__include=[{"peft.method": "LoRa", "peft.target_modules": ["no_such_proj"]}])
    _, _, graph = graph_of(path)
    dry = run_cli(ws, "study", "run", str(path), "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert "0 done, 14 to run, 0 stale" in dry.stdout and "14 of 14 jobs would run" in dry.stdout

    r = run_cli(ws, "study", "run", str(path), "--workers", "2")
    assert r.returncode == 4, r.stdout + r.stderr  # the failed training and its three skipped dependants
    assert "FAILED  train " in r.stdout and "no_such_proj" in r.stdout
    assert "10 jobs ran, 0 were already done, 1 failed, 3 skipped" in r.stdout
    assert "Traceback" not in r.stdout + r.stderr
    bad = next(j for j in graph.jobs if j.kind == "train" and "no_such_proj" in j.info["recipe"])
    record = json.loads((ws / "Testing" / ".jobs" / f"{bad.id}.json").read_text())
    assert record["state"] == "failed" and "no_such_proj" in record["error"]
    for job in graph.jobs:
        if job.kind != "evaluate":
            assert (ws / "Models" / job.name / "training_metadata.json").is_file() == (bad.id not in (job.id, *job.deps))
    report = ws / "Testing" / "studies" / "tiny"
    for name in ("report.md", "report.html", "frame.parquet", "frame.csv", "plan.json"):
        assert (report / name).is_file(), name
    assert "peft.method=rsLoRa" in (report / "report.md").read_text()

    t0 = time.monotonic()
    again = run_cli(ws, "study", "run", str(path), "--skip-failed", "--no-report")
    assert again.returncode == 4, again.stdout + again.stderr
    assert "0 jobs ran, 10 were already done, 1 failed, 3 skipped" in again.stdout
    assert time.monotonic() - t0 < 30  # (benchmarks/study.md measures the no-op rerun: ~1 s)
    done = Counter(e["id"] for e in journal(ws) if e["event"] == "done")
    assert max(done.values()) == 1 and len(done) == 10


def _small_study(tmp_path: Path) -> Path:
    # One recipe, canned answers: the jobs are short but real processes with real outputs.
    return study_file(tmp_path, train__grid={"peft.method": ["LoRa"]}, quantize={"variants": []},
                      evaluate={"datasets": ["synthetic-arith"], "limit": 4,
                                "settings": {"eval.backend": "canned",
                                             "eval.backend_options": {"response": "\\boxed{4}"}}})


@pytest.mark.slow
def test_kill9_of_the_driver_then_rerun_finishes_every_job_once(tmp_path):
    ws = tmp_path
    path = _small_study(tmp_path)
    _, _, graph = graph_of(path)
    train = next(j for j in graph.jobs if j.kind == "train")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(ftlab_cmd(ws, "study", "run", str(path), "--no-report"), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, env=env, cwd=ws)
    deadline = time.time() + 600
    while time.time() < deadline and not any(e["event"] == "start" and e["id"] == train.id for e in journal(ws)):
        assert proc.poll() is None
        time.sleep(0.05)
    time.sleep(1.0)  # the training process is loading
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    time.sleep(2.0)
    assert not (ws / "Models" / train.name).exists()  # the training died with its driver
    plan = run_cli(ws, "study", "run", str(path), "--dry-run")
    assert "2 done, 2 to run" in plan.stdout, plan.stdout  # the base and its evaluation ran first
    r = run_cli(ws, "study", "run", str(path), "--no-report")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "2 jobs ran, 2 were already done, 0 failed, 0 skipped" in r.stdout
    assert_each_done_once(ws, graph)
    starts = Counter(e["id"] for e in journal(ws) if e["event"] == "start")
    assert starts[train.id] == 2  # started by the killed driver, finished by the rerun
    assert not list((ws / "Testing" / ".jobs" / ".locks").glob("*.lock"))
    assert not list((ws / "Models" / ".locks").glob("*.lock"))  # the train process's output claim


@pytest.mark.slow
def test_two_drivers_on_one_study_run_each_job_once(tmp_path):
    ws = tmp_path
    path = _small_study(tmp_path)
    _, _, graph = graph_of(path)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    procs = [subprocess.Popen(ftlab_cmd(ws, "study", "run", str(path), "--no-report"), stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, env=env, cwd=ws) for _ in range(2)]
    outs = [p.communicate(timeout=900) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    assert_each_done_once(ws, graph)
    ran = [sum(ln.startswith("done    ") for ln in out.splitlines()) for out, _ in outs]
    assert sum(ran) == len(graph.jobs), outs


@pytest.mark.slow
@pytest.mark.ray
def test_ray_backend_runs_a_study(tmp_path):
    pytest.importorskip("ray", reason="the optional ray extra is not installed (uv sync --extra ray)")
    ws = tmp_path
    path = _small_study(tmp_path)
    _, _, graph = graph_of(path)
    r = run_cli(ws, "study", "run", str(path), "--backend", "ray", "--threads", "1", "--no-report")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "4 jobs ran, 0 were already done" in r.stdout
    assert_each_done_once(ws, graph)
