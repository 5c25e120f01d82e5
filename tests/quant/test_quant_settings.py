"""`QuantRunConfig` (ftlab/quant/settings.py), the one typed config of the quantize stage: the
`ftlab quantize` flags generated from it, a study's quantize variants checked against it at plan
time (engine options included), the study's quantize job running the real stage with it, and the
job identity derived from each field's effect."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pytest
import yaml

from ftlab.errors import ConfigError
from ftlab.paths import Workspace
from ftlab.commands.quantize import add_arguments, flags_of, load_cli_config
from ftlab.quant.registry import complete_spec
from ftlab.quant.settings import SETTINGS, QuantRunConfig, identity, load_quant_config

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "study"))  # the study helpers of tests/study/test_study.py
from test_study import graph_of, ids, study_file  # noqa: E402


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return parser.parse_args(list(argv))


# ---------------------------------------------------------------------------------------------
# the CLI


def test_every_setting_has_one_flag_and_the_flags_fill_the_config(tmp_path):
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    flags = {opt for action in parser._actions for opt in action.option_strings}
    assert all(flags_of(s)[0] in flags for s in SETTINGS.values())
    cfg = load_cli_config(parse("--model", "Models/x", "--method", "hqq", "--bits", "3", "--group-size", "32",
                                "--lm-head", "BF16", "--option", "axis=0", "--option", "optimize=true",
                                "--calib-dataset", "arc", "--calib-samples", "16", "--ppl-dataset", "boolq",
                                "--ppl-samples", "8", "--no-perplexity", "--max-length", "96", "--data-dir", "d",
                                "--output", "out", "--overwrite", "--threads", "2"))
    assert (cfg.quant.method, cfg.quant.bits, cfg.quant.group_size, cfg.quant.lm_head) == ("hqq", 3, 32, "BF16")
    assert cfg.quant.options == {"axis": "0", "optimize": "true"}
    assert (cfg.data.calib_dataset, cfg.data.calib_samples, cfg.data.fidelity_dataset, cfg.data.fidelity_samples,
            cfg.data.fidelity, cfg.data.max_length, cfg.data.data_dir) == ("arc", 16, "boolq", 8, False, 96, "d")
    assert (cfg.run.model, cfg.run.output, cfg.run.overwrite, cfg.run.threads) == ("Models/x", "out", True, 2)
    spec = complete_spec(cfg.spec())
    assert spec.extra == {"axis": 0, "optimize": True, "round_zero": True}  # parsed by the engine's options
    assert spec.lm_head_dtype == spec.compute_dtype == "bf16" and spec.tag == "HQQ_w3_g32_headbf16"

    # Nothing given: the config's defaults, not argparse's.
    cfg = load_cli_config(parse("--model", "m", "--method", "GPTQ"))
    assert cfg == load_quant_config(overrides=["run.model=m", "quant.method=GPTQ"])
    # calib_dataset None: the source model's training task, else openmath (ftlab.quant.pipeline.default_task)
    assert cfg.data.calib_dataset is None and cfg.data.fidelity and cfg.quant.options == {}


def test_config_file_then_flags_then_key_value_overrides(tmp_path):
    path = tmp_path / "q.yaml"
    path.write_text(yaml.safe_dump({"quant": {"method": "HQQ", "bits": 2, "options": {"axis": 0}},
                                    "data": {"calib_samples": 16}, "run": {"model": "Models/x"}}))
    cfg = load_cli_config(parse("--config", str(path), "--bits", "3", "--option", "optimize=true",
                                "quant.bits=8", "data.max_length=64"))
    assert cfg.quant.bits == 8 and cfg.quant.options == {"axis": 0, "optimize": "true"}
    assert (cfg.data.calib_samples, cfg.data.max_length, cfg.run.model) == (16, 64, "Models/x")


def test_quantize_reports_every_problem_at_once_naming_the_flags(tmp_path, capsys):
    from ftlab.cli import main

    rc = main(["--workdir", str(tmp_path), "quantize", "--model", "x", "--method", "HQQ", "--option", "optimise=true",
               "--option", "axis=3", "--calib-samples", "0"])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and err.startswith("error: 3 config problems: "), err
    assert "--option: HQQ has no option 'optimise' (did you mean 'optimize'?); valid: axis, optimize, round_zero" in err
    assert "--option: HQQ option axis=3 is not one of [0, 1]" in err
    assert "--calib-samples=0 must be a positive integer" in err
    # Set in a file or as key=value, a problem names the key.
    path = tmp_path / "q.yaml"
    path.write_text(yaml.safe_dump({"quant": {"method": "GPTQ"}, "data": {"max_length": 0}}))
    assert main(["--workdir", str(tmp_path), "quantize", "--config", str(path), "data.calib_samples=0"]) == 2
    err = capsys.readouterr().err
    assert "data.max_length=0 must be a positive integer" in err and "data.calib_samples=0 must be" in err
    assert main(["--workdir", str(tmp_path), "quantize", "--model", "x", "--method", "HQQ", "--option", "axis"]) == 2
    assert "--option 'axis' must look like NAME=VALUE" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------
# a study's quantize variants


def test_engine_option_typos_in_a_study_are_reported_at_plan_time_with_every_other_problem(tmp_path, capsys):
    path = study_file(tmp_path, train__grid={"peft.method": ["LoRa", "NoSuchPeft"]},
                      quantize={"variants": [{"method": "HQQ", "bits": 4, "options": {"optimise": True}},
                                             {"method": "GPTQ", "bits": "four"},
                                             {"method": "HQQ", "options": {"axis": 2}, "calib_sample": 8,
                                              "threads": 2}]})
    with pytest.raises(ConfigError) as exc:
        graph_of(path)
    problems = exc.value.problems
    expected = [
        "quantize.variants[0]: options: HQQ has no option 'optimise' (did you mean 'optimize'?); "
        "valid: axis, optimize, round_zero",
        "quantize.variants[1].bits='four' must be a whole number (e.g. 4)",
        "quantize.variants[2]: options: HQQ option axis=2 is not one of [0, 1]",
        "quantize.variants[2].threads is set by the study (use `ftlab study run --threads`)",
    ]
    for line in expected:
        assert line in problems, problems
    assert any(p.startswith("unknown key quantize.variants[2].calib_sample (did you mean 'calib_samples'?)")
               for p in problems), problems
    assert any(p.startswith("recipe [peft.method=NoSuchPeft]") for p in problems), problems
    assert len(problems) == 6, problems

    from ftlab.cli import main

    assert main(["--workdir", str(tmp_path), "study", "run", str(path), "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert "6 config problems" in err and "did you mean 'optimize'?" in err and "Traceback" not in err
    assert not (tmp_path / "Testing" / "studies").exists()


def test_run_only_settings_leave_a_quantize_jobs_identity_and_product_settings_change_it(tmp_path):
    def ident(*overrides: str) -> dict:
        cfg = load_quant_config(overrides=["quant.method=HQQ", "run.model=Models/a", *overrides])
        return identity(cfg, complete_spec(cfg.spec()))

    plain = ident()
    for run_only in ("run.threads=3", "run.output=elsewhere", "run.overwrite=true", "data.data_dir=/data",
                     "run.model=Models/b"):  # the source job's id stands for the source model
        assert ident(run_only) == plain, run_only
    for product in ("quant.bits=3", "quant.options.optimize=true", "data.calib_samples=16", "data.max_length=64",
                    "data.fidelity_samples=8", "data.fidelity=false", "data.calib_dataset=arc"):
        assert ident(product) != plain, product
    # An engine option given at its default is the same job as one left out (the completed spec).
    assert ident("quant.options.axis=1", "quant.bits=4", "quant.group_size=64") == plain

    # In a study: another data folder changes no model-building job (evaluations hash their own
    # settings); an engine option changes the quantize jobs and their evaluations only; an option
    # at its default changes nothing.
    variant = {"method": "HQQ", "bits": 4, "group_size": 64}
    a = ids(graph_of(study_file(tmp_path))[2])
    moved = ids(graph_of(study_file(tmp_path, data_dir=str(tmp_path / "data")))[2])
    assert {k: v for k, v in moved.items() if k[0] != "evaluate"} == {k: v for k, v in a.items() if k[0] != "evaluate"}
    assert sum(k[0] == "quantize" for k in a) == 2
    assert ids(graph_of(study_file(tmp_path, quantize={"variants": [{**variant, "options": {"axis": 1}}]}))[2]) == a
    b = ids(graph_of(study_file(tmp_path, quantize={"variants": [{**variant, "options": {"optimize": True}}]}))[2])
    changed = {k for k in a if a[k] != b[k]}
    assert {k[0] for k in changed} == {"quantize", "evaluate"}
    assert all(k[1].endswith("HQQ_w4_g64") for k in changed)


def test_a_study_variant_sets_an_engine_option_end_to_end(tmp_path):
    """Plan a study whose variant sets HQQ's own options, build its jobs, run the base snapshot and
    the quantize job's command (the real `ftlab quantize` on scratch:tiny): the options land in the
    output's metadata."""
    from ftlab.cli import main
    from ftlab.jobs.engine import DONE, JOB_KINDS
    from ftlab.schema import load_training_metadata

    variant = {"method": "HQQ", "bits": 4, "group_size": 32, "options": {"optimize": True, "axis": 0},
               "fidelity_samples": 4, "max_length": 64}
    spec, _, graph = graph_of(study_file(tmp_path, quantize={"variants": [variant], "base": True}))
    ws = Workspace(tmp_path)
    snap = next(j for j in graph.jobs if j.kind == "snapshot")
    job = next(j for j in graph.jobs if j.kind == "quantize" and j.deps == (snap.id,))
    assert job.info["quant"] == "HQQ_w4_g32" and job.name.endswith(f"HQQ_w4_g32.v{job.id[:8]}")

    argv = JOB_KINDS.get("quantize").command(job, ws)
    assert argv[:2] == ["quantize", "--config"] and len(argv) == 3  # no flag map: the config itself
    written = yaml.safe_load(Path(argv[2]).read_text())
    assert written["quant"]["options"] == {"optimize": True, "axis": 0}
    assert written["data"]["calib_dataset"] == "synthetic-arith"  # the study's training dataset
    assert written["run"]["model"] == str(ws.models_dir / snap.name)
    assert isinstance(load_quant_config(argv[2]), QuantRunConfig)

    assert main(["--workdir", str(tmp_path), *JOB_KINDS.get("snapshot").command(snap, ws)]) == 0
    assert main(["--workdir", str(tmp_path), *argv, "run.threads=1"]) == 0
    assert JOB_KINDS.get("quantize").status(job, ws).state == DONE
    meta = load_training_metadata(ws.models_dir / job.name)
    assert meta["quantization"]["extra"] == {"optimize": True, "axis": 0, "round_zero": True}
    assert meta["quantization"]["calib_dataset"] is None  # HQQ needs no calibration
    assert meta["results"]["ptq"]["fidelity"]["samples"] == 4
