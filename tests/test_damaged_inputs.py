"""Damaged inputs never crash or escape (issue 13), through the real CLI.

Each class is fixed at one root (model resolver + loader, row validation, the name sanitiser, the
staging/claim/disk-full helpers in ftlab.io); these tests drive every entry point named in the
issue into it and check what a user sees: exit code 2, a single `error:` line, no traceback, no
third-party lines, and nothing written. Subprocess runs are grouped (each costs ~3-10 s of
imports); the full option x value matrices run in-process through `ftlab.cli.main`, which is the
same parser and error guard.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ftlab.cli import main as ftlab_main
from ftlab.quant.engines.hqq import WEIGHTS_FILE as HQQ_WEIGHTS  # the file HQQ writes (no pickle)
from tiny_models import tiny_overrides

REPO = Path(__file__).resolve().parents[1]
TINY_TRAIN = ["data.dataset=synthetic-arith", "data.trunc_train=16", "data.val_size=0", "train.max_steps=2",
              "train.batch_size=8", "train.report_to=none", "data.max_length=96", "train.mixed_precision=no"]
QUANT_FAST = ["--method", "HQQ", "--calib-dataset", "synthetic-arith", "--no-perplexity", "--threads", "1"]


def _env(**extra: str) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONPATH": str(REPO),
           "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    env.update(extra)
    return env


def ftlab(workdir: Path, *args: str, env: dict | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ftlab", "--workdir", str(workdir), *args], capture_output=True,
                          text=True, env=env or _env(), cwd=workdir, timeout=timeout)


# ftlab's own log lines and progress bars (tqdm redraws split into pieces at "\r").
_OWN = re.compile(r"^(INFO|WARNING|ERROR|DEBUG) ftlab[.:]|\d+%\||\d+/\d+ \[|^\s*$")


def foreign_lines(stderr: str) -> list[str]:
    """Console lines that are neither ftlab's own nor its progress bars nor the error line."""
    return [ln for ln in stderr.splitlines() if not _OWN.search(ln) and not ln.startswith("error: ")]


def one_error(r: subprocess.CompletedProcess, *fragments: str, only_line: bool = True) -> str:
    """The run failed with exit 2 and exactly one `error:` line containing `fragments`, no
    traceback; with `only_line` nothing else at all was printed."""
    assert r.returncode == 2, f"rc={r.returncode}\n{r.stderr[-3000:]}"
    assert "Traceback" not in r.stderr, r.stderr[-3000:]
    errors = [ln for ln in r.stderr.splitlines() if ln.startswith("error: ")]
    assert len(errors) == 1, r.stderr[-3000:]
    if only_line:
        assert r.stderr.strip() == errors[0] and not r.stdout.strip(), r.stderr[-3000:] + r.stdout
    else:
        assert foreign_lines(r.stderr) == [], r.stderr[-3000:]
    for f in fragments:
        assert f in errors[0], errors[0]
    return errors[0][len("error: "):]


def in_process(capsys, workdir: Path, *args: str) -> str:
    """`ftlab ARGS` in this process: exit 2 and one `error:` line (returned without the prefix)."""
    rc = ftlab_main(["--workdir", str(workdir), *args])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and err.startswith("error: ") and len(err.splitlines()) == 1 and "Traceback" not in err, err
    return err[len("error: "):]


def tree(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


@pytest.fixture
def tiny_ws(tmp_path, tiny_model_dir) -> Path:
    """A workspace with Models/tiny (a 400-token Llama that trains in a second)."""
    shutil.copytree(tiny_model_dir, tmp_path / "Models" / "tiny")
    return tmp_path


# ---------------------------------------------------------------------------------------------
# 1. damaged model folders


def _cut(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _missing_shard(folder: Path) -> None:
    (folder / "model.safetensors").rename(folder / "model-00001-of-00002.safetensors")
    weight_map = {"model.embed_tokens.weight": "model-00001-of-00002.safetensors",
                  "model.norm.weight": "model-00002-of-00002.safetensors"}
    (folder / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))


# name -> (how to damage a copy of the tiny model, the file the error must name, what it must say)
DAMAGE = {
    "config-not-json": (lambda f: _cut(f / "config.json"), "config.json", "cut short"),
    "config-empty": (lambda f: (f / "config.json").write_text("{}"), "config.json", "no model_type"),
    "weights-cut": (lambda f: _cut(f / "model.safetensors"), "model.safetensors", "cut short"),
    "shard-missing": (_missing_shard, "model.safetensors.index.json", "model-00002-of-00002.safetensors, which is missing"),
    "tokenizer-cut": (lambda f: _cut(f / "tokenizer.json"), "tokenizer.json", "cut short"),
}


def damaged_copy(tiny_ws: Path, kind: str) -> Path:
    folder = tiny_ws / "Models" / f"tiny-{kind}"
    shutil.copytree(tiny_ws / "Models" / "tiny", folder)
    DAMAGE[kind][0](folder)
    return folder


def entry_args(entry: str, model: str) -> list[str]:
    return {
        "train": ["train", f"model.name={model}", *TINY_TRAIN],
        "evaluate": ["evaluate", model, "--datasets", "synthetic-arith", "--limit", "1"],
        "quantize": ["quantize", "--model", model, *QUANT_FAST],
        "chat": ["chat", model, "--prompt", "2+2?", "--max-new-tokens", "2"],
    }[entry]


@pytest.mark.parametrize("kind", list(DAMAGE))
@pytest.mark.parametrize("entry", ["train", "evaluate", "quantize", "chat"])
def test_damaged_model_folder_is_one_line_for_every_entry_point(entry, kind, tiny_ws, capsys):
    folder = damaged_copy(tiny_ws, kind)
    before = tree(tiny_ws)
    msg = in_process(capsys, tiny_ws, *entry_args(entry, f"Models/{folder.name}"))
    _, file, what = DAMAGE[kind]
    assert msg.startswith(f"model folder {folder} is damaged: {file}") and what in msg, msg
    assert msg.endswith("re-copy or re-create it"), msg
    assert tree(tiny_ws) == before  # nothing written


@pytest.mark.parametrize("entry, kind", [("train", "config-not-json"), ("evaluate", "weights-cut"),
                                         ("quantize", "shard-missing"), ("chat", "tokenizer-cut")])
def test_damaged_model_folder_through_the_console(entry, kind, tiny_ws):
    folder = damaged_copy(tiny_ws, kind)
    before = tree(tiny_ws)
    r = ftlab(tiny_ws, *entry_args(entry, f"Models/{folder.name}"))
    one_error(r, f"model folder Models/{folder.name} is damaged: {DAMAGE[kind][1]}", "re-copy or re-create it")
    assert tree(tiny_ws) == before


def test_orchestrator_records_the_same_line_for_a_damaged_folder(tiny_ws):
    from ftlab.schema import write_training_metadata

    folder = damaged_copy(tiny_ws, "config-empty")
    write_training_metadata(folder, {"kind": "model", "run_name": folder.name, "base_model": {"ref": "x"},
                                     "quantization": {"method": "NoQuant"}, "history": []})
    r = ftlab(tiny_ws, "orchestrate", "--datasets", "synthetic-arith", "--limit", "1")
    assert r.returncode == 1 and "Traceback" not in r.stderr + r.stdout, r.stderr[-2000:]
    report = json.loads((tiny_ws / "Testing" / "metrics" / f"{folder.name}.error.json").read_text())
    expected = f"model folder {folder} is damaged: config.json has no model_type (it is empty or not a model config); re-copy or re-create it"
    assert report["error"] == expected
    assert report["traceback_tail"] == [f"error: {expected}"]  # the worker printed that line and nothing else
    assert not (tiny_ws / "Testing" / "metrics" / f"{folder.name}.json").exists()


def test_weights_that_do_not_fit_the_config_are_one_line(tiny_ws, capsys):
    """What the cheap checks cannot see ends in one line too, and a tensor missing from the weights
    is an error (transformers 5 would fill it with random values and only log a report)."""
    from safetensors.torch import load_file, save_file

    shape = tiny_ws / "Models" / "tiny-wrong-shape"
    shutil.copytree(tiny_ws / "Models" / "tiny", shape)
    cfg = json.loads((shape / "config.json").read_text())
    (shape / "config.json").write_text(json.dumps({**cfg, "hidden_size": 128}))
    msg = in_process(capsys, tiny_ws, "chat", f"Models/{shape.name}", "--prompt", "hi")
    assert msg == f"model folder {shape} is damaged: its weights have other shapes than config.json describes; re-copy or re-create it"
    missing = tiny_ws / "Models" / "tiny-missing-tensor"
    shutil.copytree(tiny_ws / "Models" / "tiny", missing)
    weights = load_file(missing / "model.safetensors")
    del weights["model.norm.weight"]
    save_file(weights, missing / "model.safetensors", metadata={"format": "pt"})
    msg = in_process(capsys, tiny_ws, "evaluate", f"Models/{missing.name}", "--datasets", "synthetic-arith", "--limit", "1")
    assert msg == (f"model folder {missing} is damaged: its weights lack 1 tensor(s) that config.json needs "
                   "(e.g. model.norm.weight); re-copy or re-create it")
    assert not (tiny_ws / "Testing").exists()


def test_folder_checks_pass_intact_models_and_name_each_damage(tiny_model_dir, tmp_path):
    from ftlab.errors import FtlabError
    from ftlab.models.integrity import check_model_folder, check_safetensors

    check_model_folder(tiny_model_dir)  # an intact folder passes
    folder = tmp_path / "m"
    shutil.copytree(tiny_model_dir, folder)
    with open(folder / "model.safetensors", "ab") as fh:
        fh.write(b"\0" * 10)
    with pytest.raises(FtlabError, match="has 10 bytes more than its tensors"):
        check_safetensors(folder, "model.safetensors")
    (folder / "model.safetensors").write_bytes(b"\x01")
    with pytest.raises(FtlabError, match=r"cut short \(1 bytes, not even a header\)"):
        check_model_folder(folder)


# ---------------------------------------------------------------------------------------------
# 2. data that cannot teach anything


EMPTY_ROWS = {  # format -> (a usable row, rows that teach nothing)
    "alpaca": ({"instruction": "2+2?", "input": "", "output": "4"},
               [{"instruction": "1+1?", "input": "", "output": ""}, {"instruction": " ", "input": "", "output": "3"}]),
    "chat": ({"messages": [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"}]},
             [{"messages": [{"role": "system", "content": "S"}, {"role": "user", "content": "1+1?"}]},
              {"messages": [{"role": "user", "content": "1+1?"}, {"role": "assistant", "content": "  "}]}]),
    "sharegpt": ({"conversations": [{"from": "human", "value": "2+2?"}, {"from": "gpt", "value": "4"}]},
                 [{"conversations": [{"from": "human", "value": "1+1?"}]},
                  {"conversations": [{"from": "gpt", "value": "2"}]}]),
    "qa": ({"question": "2+2?", "answer": "4"}, [{"question": "1+1?", "answer": ""}, {"question": "", "answer": "2"}]),
}


def _jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.mark.parametrize("fmt", list(EMPTY_ROWS))
def test_rows_without_question_or_answer_are_dropped_and_reported(fmt, tmp_path, caplog):
    from ftlab.data.loading import load_examples
    from ftlab.errors import FtlabError

    good, empty = EMPTY_ROWS[fmt]
    path = _jsonl(tmp_path / f"{fmt}.jsonl", [good, *empty])
    with caplog.at_level("WARNING", logger="ftlab.data.loading"):
        examples = load_examples(str(path), "train")
    assert [(e.question, e.answer) for e in examples] == [("2+2?", "4")]
    assert "dropped" in caplog.text
    only_empty = _jsonl(tmp_path / f"{fmt}-empty.jsonl", empty)
    with pytest.raises(FtlabError, match=r"has no usable rows: all 2 have an empty question or answer"):
        load_examples(str(only_empty), "train")


def test_train_on_all_empty_answers_fails_before_anything_is_written(tiny_ws):
    data = _jsonl(tiny_ws / "empty.jsonl", [{"instruction": f"{i}+1?", "input": "", "output": ""} for i in range(20)])
    before = tree(tiny_ws)
    r = ftlab(tiny_ws, "train", "model.name=Models/tiny", f"data.dataset={data}",
              *[a for a in TINY_TRAIN if not a.startswith("data.dataset")])
    one_error(r, "dataset empty", "has no usable rows: all 20 have an empty question or answer")
    assert tree(tiny_ws) == before  # no model folder, checkpoints, locks or staging


# ---------------------------------------------------------------------------------------------
# 3. names that escape their folder


def _bad_names(tiny_ws: Path) -> list[str]:
    return ["../../escaped", "../Models/tiny/config", str(tiny_ws.parent / "escaped-abs"), "sub/dir", "..",
            "tab\tname", "new\nline", "nul\x00x", "bell\x07"]


NAME_OPTIONS = {
    "evaluate --name": (lambda v: ["evaluate", "Models/tiny", "--datasets", "synthetic-arith", "--limit", "1", "--name", v],
                        "--name"),
    "quantize --output": (lambda v: ["quantize", "--model", "Models/tiny", *QUANT_FAST, "--output", v], "--output"),
    "export --output": (lambda v: ["export", "--model", "Models/tiny", "--type", "f16", "--output", v], "--output"),
    "train train.output_dir": (lambda v: ["train", "model.name=Models/tiny", *TINY_TRAIN, f"train.output_dir={v}"],
                               "train.output_dir"),
}


@pytest.mark.parametrize("option", list(NAME_OPTIONS))
def test_every_name_option_refuses_paths_and_control_characters(option, tiny_ws, capsys):
    build, flag = NAME_OPTIONS[option]
    config = (tiny_ws / "Models" / "tiny" / "config.json").read_bytes()
    before = tree(tiny_ws)
    for value in _bad_names(tiny_ws):
        msg = in_process(capsys, tiny_ws, *build(value))
        assert msg.startswith(f"{flag} {value!r} ") and ("not a plain name" in msg or "is outside" in msg), msg
    assert tree(tiny_ws) == before
    assert (tiny_ws / "Models" / "tiny" / "config.json").read_bytes() == config  # the destroyed model
    assert not list(tiny_ws.parent.glob("escaped*"))


def test_study_names_are_refused_before_anything_runs(tiny_ws, capsys):
    import yaml

    for value in _bad_names(tiny_ws):
        study = tiny_ws / "bad-study.yaml"
        study.write_text(yaml.safe_dump({"name": value, "bases": ["Models/tiny"], "datasets": ["synthetic-arith"],
                                         "train": {"fixed": {"train.max_steps": 1}},
                                         "evaluate": {"datasets": ["synthetic-arith"], "limit": 1}}))
        before = tree(tiny_ws)
        msg = in_process(capsys, tiny_ws, "study", "run", str(study), "--dry-run")
        assert f"name {value!r} is not a plain name" in msg, msg
        assert tree(tiny_ws) == before
    assert not list(tiny_ws.parent.glob("escaped*"))


def test_name_options_through_the_console_and_a_plain_name_still_works(tiny_ws, capsys):
    one_error(ftlab(tiny_ws, *NAME_OPTIONS["evaluate --name"][0]("../../Models/tiny/config")), "--name", "use e.g. 'config'")
    one_error(ftlab(tiny_ws, *NAME_OPTIONS["quantize --output"][0]("/tmp/../etc")), "--output '/tmp/../etc' is outside")
    assert ftlab_main(["--workdir", str(tiny_ws), *NAME_OPTIONS["quantize --output"][0]("Models/tiny-hqq")]) == 0
    assert capsys.readouterr().out.strip() == str(tiny_ws / "Models" / "tiny-hqq")


def test_name_rules():
    from ftlab.errors import FtlabError
    from ftlab.naming import checked_name, output_folder, sanitize_component

    for ok in ("tiny-synthetic-arith_SFT_LoRa16_NoQuant", "org__name", "v1.2"):
        assert checked_name(ok, "--name") == ok
    for text in ("../x", "Ärger/ü", " spaced", "a\\b", "x" * 300):
        assert checked_name(sanitize_component(text, keep="._-", sep="_"), "n")  # suggestions are always accepted
    models = Path("/ws/Models")
    assert output_folder("x", models, "o") == models / "x"
    assert output_folder("Models/x", models, "o") == models / "x"
    assert output_folder("/ws/Models/x", models, "o") == models / "x"
    for bad in ("/ws/x", "Models/a/b", "~", "Models/..", "../Models/x/.."):
        with pytest.raises(FtlabError):
            output_folder(bad, models, "o")


# ---------------------------------------------------------------------------------------------
# 4. a mistyped local path is not a hub failure


def test_mistyped_folder_is_did_you_mean_without_a_hub_attempt(tiny_ws):
    # No offline flag and an endpoint that refuses connections: a hub attempt would show up.
    env = _env(HF_ENDPOINT="http://127.0.0.1:9")
    env.pop("HF_HUB_OFFLINE")
    r = ftlab(tiny_ws, "evaluate", "Models/tiny-bse", "--datasets", "synthetic-arith", env=env)
    assert one_error(r) == "model folder Models/tiny-bse does not exist; did you mean Models/tiny?"
    r = ftlab(tiny_ws, "quantize", "--model", "Models/does-not-exist", "--method", "HQQ", env=env)
    msg = one_error(r, "model folder Models/does-not-exist does not exist")
    assert "hub" not in msg


@pytest.mark.parametrize("ref, expected", [
    ("./Modles/tiny", "model folder ./Modles/tiny does not exist; did you mean Models/tiny?"),
    ("Models/tny/", "model folder Models/tny/ does not exist; did you mean Models/tiny?"),
    ("tny", "model 'tny' (did you mean 'tiny'?) is not a folder"),
])
def test_typos_in_chat_and_train(ref, expected, tiny_ws, capsys, monkeypatch):
    monkeypatch.chdir(tiny_ws)
    assert in_process(capsys, tiny_ws, "chat", ref, "--prompt", "hi").startswith(expected)
    assert in_process(capsys, tiny_ws, "train", f"model.name={ref}", *TINY_TRAIN).startswith(expected)


# ---------------------------------------------------------------------------------------------
# 5. faults beyond bad input


def test_adapter_whose_base_is_gone(tiny_ws, capsys, tiny_model_dir):
    from ftlab.config import TrainRunConfig, load_config
    from ftlab.paths import Workspace
    from ftlab.train.runner import run_training

    base = tiny_ws / "Models" / "my-base"
    shutil.copytree(tiny_model_dir, base)
    cfg = load_config(TrainRunConfig, None, tiny_overrides(base, train__max_steps=1, train__output_dir="adapter"))
    adapter = run_training(cfg, Workspace(tiny_ws))
    capsys.readouterr()
    shutil.rmtree(base)
    expected = f"adapter {adapter} was trained on base {base}, which no longer exists"
    assert one_error(ftlab(tiny_ws, "evaluate", "Models/adapter", "--datasets", "synthetic-arith")).startswith(expected)
    assert in_process(capsys, tiny_ws, "chat", "Models/adapter", "--prompt", "hi").startswith(expected)
    assert in_process(capsys, tiny_ws, "quantize", "--model", "Models/adapter", *QUANT_FAST).startswith(expected)


def test_datasets_prepare_is_all_or_nothing(tmp_path, capsys):
    import pandas as pd

    src = tmp_path / "src"
    src.mkdir()
    for split in ("train", "test"):
        pd.DataFrame({"question": ["Which?"] * 3, "answer": ["A", "B", "C"]}).to_parquet(src / f"{split}-ai2_arc.parquet")
    pd.DataFrame({"question": ["Is it?"], "answer": [True], "context": ["c"]}).to_parquet(src / "train-boolq.parquet")
    (src / "test-boolq.parquet").write_bytes(b"not parquet")  # the last file of the set fails
    tiny_ws = tmp_path / "ws"
    (tiny_ws / "Datasets").mkdir(parents=True)
    (tiny_ws / "Datasets" / "train-ai2_arc.parquet").write_bytes(b"previous")
    msg = in_process(capsys, tiny_ws, "datasets", "prepare", "--from", str(src), "--tasks", "arc", "boolq")
    assert "test-boolq.parquet" in msg
    assert tree(tiny_ws / "Datasets") == ["train-ai2_arc.parquet"]  # nothing new, no staging folder
    assert (tiny_ws / "Datasets" / "train-ai2_arc.parquet").read_bytes() == b"previous"
    shutil.copy(src / "train-boolq.parquet", src / "test-boolq.parquet")
    assert ftlab_main(["--workdir", str(tiny_ws), "datasets", "prepare", "--from", str(src), "--tasks", "arc", "boolq"]) == 0
    assert tree(tiny_ws / "Datasets") == sorted(f"{s}-{t}.parquet" for s in ("train", "test") for t in ("ai2_arc", "boolq"))


HOLD = """
import signal, sys, time
from pathlib import Path
from ftlab.cli import main
from ftlab.quant.engines.hqq import HqqEngine

# Ctrl-C as a terminal delivers it: a pytest started in the background by a non-interactive shell
# passes SIGINT on ignored, and the child would never see the signal this test sends.
signal.signal(signal.SIGINT, signal.default_int_handler)

real = HqqEngine.quantize

def quantize(self, job):  # the real engine, then a pause with its weights in the staging folder
    real(self, job)
    Path(sys.argv[1]).write_text(str(job.out_dir))
    time.sleep(300)

HqqEngine.quantize = quantize
sys.exit(main(sys.argv[2:]))
"""


@pytest.mark.slow
@pytest.mark.parametrize("sig, code, said", [(signal.SIGINT, 130, "interrupted"), (signal.SIGTERM, 143, "terminated")])
def test_signal_during_quantize_removes_its_staging_folder(sig, code, said, tiny_ws):
    """`ftlab quantize` (the real CLI, paused inside the engine) is interrupted while its staging
    folder holds weights; export builds its folder with the same ftlab.io.staging_dir and guard."""
    marker = tiny_ws / "staging.txt"
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(marker), "--workdir", str(tiny_ws), "quantize",
                             "--model", "Models/tiny", *QUANT_FAST], env=_env(), cwd=tiny_ws,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 240
        while not marker.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        staging = Path(marker.read_text())
        assert staging.name.startswith(".staging-") and (staging / HQQ_WEIGHTS).is_file()
        proc.send_signal(sig)
        out, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == code and err.strip().splitlines()[-1] == said and "Traceback" not in err, err[-2000:]
    assert not staging.exists() and sorted(p.name for p in (tiny_ws / "Models").iterdir()) == ["tiny"]


@pytest.mark.slow
def test_two_trains_to_one_name_publish_one_folder(tiny_ws):
    args = ["train", "model.name=Models/tiny", *TINY_TRAIN, "train.max_steps=30"]
    runs = [subprocess.Popen([sys.executable, "-m", "ftlab", "--workdir", str(tiny_ws), *args], env=_env(), cwd=tiny_ws,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    results = [(p.wait(timeout=300), *p.communicate()) for p in runs]
    assert sorted(rc for rc, _, _ in results) == [0, 2], [err[-1500:] for _, _, err in results]
    (_, _, err), = [r for r in results if r[0] == 2]
    line = one_error(subprocess.CompletedProcess(args, 2, "", err), only_line=False)
    # Whoever came second was refused before training: the folder is claimed (or already published).
    assert "is being built by another process" in line or "already exists" in line, line
    assert "step 1:" not in err
    folder = tiny_ws / "Models" / "tiny-synthetic-arith_SFT_LoRa16_NoQuant"
    from ftlab.schema import load_training_metadata

    assert load_training_metadata(folder)["results"]["global_step"] == 30
    # No staging or checkpoint folder, no lock left (the takeover guard file may stay in .locks).
    assert sorted(p.name for p in (tiny_ws / "Models").iterdir() if p.name != ".locks") == ["tiny", folder.name]
    assert not list((tiny_ws / "Models").rglob("*.lock"))


def test_claimed_output_refuses_a_second_train_before_loading(tiny_ws):
    from ftlab.jobs.locks import output_claim

    folder = tiny_ws / "Models" / "tiny-synthetic-arith_SFT_LoRa16_NoQuant"
    with output_claim(folder):  # held by this (live) process
        r = ftlab(tiny_ws, "train", "model.name=Models/tiny", *TINY_TRAIN)
    one_error(r, f"output folder {folder} is being built by another process (pid {os.getpid()} on ", only_line=False)
    assert not folder.exists() and "trainable parameters" not in r.stderr
    assert sorted(p.name for p in (tiny_ws / "Models").iterdir() if p.name != ".locks") == ["tiny"]
    assert not list((tiny_ws / "Models").rglob("*.lock"))


def test_a_claim_on_the_run_name_does_not_block_another_output_folder(tiny_ws):
    # Study seeds of one recipe share a run name and train at once, each into its own
    # train.output_dir; a claim on Models/<run name> must not refuse the others (it did, and
    # failed a Ray study in CI whenever two seeds happened to start together).
    from ftlab.jobs.locks import output_claim
    from ftlab.schema import load_training_metadata

    run_folder = tiny_ws / "Models" / "tiny-synthetic-arith_SFT_LoRa16_NoQuant"
    seed_folder = tiny_ws / "Models" / "tiny-synthetic-arith_SFT_LoRa16_NoQuant.seed2"
    with output_claim(run_folder):
        r = ftlab(tiny_ws, "train", "model.name=Models/tiny", *TINY_TRAIN, "train.max_steps=2",
                  f"train.output_dir={seed_folder}")
    assert r.returncode == 0, r.stderr[-1500:]
    assert load_training_metadata(seed_folder)["results"]["global_step"] == 2 and not run_folder.exists()
    assert not list((tiny_ws / "Models").rglob("*.lock"))


def test_publish_never_replaces_a_folder_that_appeared_meanwhile(tmp_path):
    from ftlab.errors import FtlabError
    from ftlab.io import staging_dir

    final = tmp_path / "Models" / "run"
    with pytest.raises(FtlabError, match="was published by another process"):
        with staging_dir(final) as stage:
            (stage / "mine.txt").write_text("mine")
            final.mkdir()
            (final / "theirs.txt").write_text("theirs")
    assert sorted(p.name for p in final.iterdir()) == ["theirs.txt"]
    assert sorted(p.name for p in final.parent.iterdir()) == ["run"]


def test_disk_full_is_one_line_even_when_the_writer_does_not_say_so(tmp_path, monkeypatch, capsys):
    """torch.save reports a full disk as `unexpected pos N vs M`; errno-less failures on a disk
    with (almost) no free space are named as a full disk too, here simulated at the one helper."""
    import errno

    import ftlab.io as fio
    from ftlab.cli import guarded
    from ftlab.errors import FtlabError

    def torch_save_on_full_disk():
        raise RuntimeError("[enforce fail at inline_container.cc:671] . unexpected pos 304256 vs 304208")

    assert fio.disk_full_error(RuntimeError("unexpected pos"), tmp_path) is None  # plenty of space here
    monkeypatch.setattr(fio, "disk_free_bytes", lambda path: 4096)
    monkeypatch.setenv("FTLAB_HOME", str(tmp_path))
    assert guarded(torch_save_on_full_disk) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: disk full: no space left on /") and f"files under {tmp_path}" in err
    monkeypatch.setattr(fio, "disk_free_bytes", lambda path: 10 << 30)
    final = tmp_path / "Models" / "run"
    with pytest.raises(FtlabError, match=f"disk full: .* while writing {final}"):
        with fio.staging_dir(final):
            raise OSError(errno.ENOSPC, "No space left on device")
    assert not final.parent.exists() or list(final.parent.iterdir()) == []


FULL_DISK_DRIVER = r"""
import json, os, shutil, subprocess, sys
from pathlib import Path

disk, tiny, out = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3])
subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(disk)], check=True)
shutil.copytree(tiny, disk / "Models" / "tiny")
# Earlier results that a failed run must leave as they are.
for name in ("tiny-synthetic-arith_SFT_LoRa16_NoQuant", "tiny_HQQ_w4_g64"):
    (disk / "Models" / name).mkdir()
    (disk / "Models" / name / "previous.txt").write_text("previous")
(disk / "Testing" / "metrics").mkdir(parents=True)
(disk / "Testing" / "metrics" / "other.json").write_text("previous")
runs = {
    "train": (150, ["train", "model.name=Models/tiny", "train.merge_after_train=true", "train.overwrite=true"]
                   + sys.argv[4].split()),
    "quantize": (150, ["quantize", "--model", "Models/tiny", "--overwrite"] + sys.argv[5].split()),
    "evaluate": (8, ["evaluate", "Models/tiny", "--datasets", "synthetic-arith", "--limit", "3"]),
}
results = {}
for what, (keep_kb, args) in runs.items():
    filler = disk / "filler"
    filler.unlink(missing_ok=True)
    free = shutil.disk_usage(disk).free
    with open(filler, "wb") as fh:
        fh.truncate(0)
        os.posix_fallocate(fh.fileno(), 0, max(0, free - keep_kb * 1024))
    r = subprocess.run([sys.executable, "-m", "ftlab", "--workdir", str(disk), *args], capture_output=True, text=True)
    filler.unlink()
    results[what] = {"rc": r.returncode, "stderr": r.stderr, "stdout": r.stdout,
                     "tree": sorted(str(p.relative_to(disk)) for p in disk.rglob("*")),
                     "previous": sorted(p.read_text() for p in disk.rglob("previous.txt"))
                                 + [(disk / "Testing" / "metrics" / "other.json").read_text()],
                     "metrics": (disk / "Testing" / "metrics" / "tiny.json").read_text()
                                if (disk / "Testing" / "metrics" / "tiny.json").exists() else None}
out.write_text(json.dumps(results))
"""


def _mount_namespace() -> list[str] | None:
    """A command prefix giving a private mount namespace where a tmpfs can be mounted (root: -m;
    otherwise a user namespace, -rm), or None where neither is allowed."""
    if not shutil.which("unshare") or not shutil.which("mount"):
        return None
    for prefix in (["unshare", "-m"], ["unshare", "-rm"]):
        probe = subprocess.run([*prefix, "mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", "/tmp"],
                               capture_output=True, timeout=30)
        if probe.returncode == 0:
            return prefix
    return None


@pytest.mark.slow
def test_full_disk_fails_in_one_line_naming_the_disk(tmp_path, tiny_model_dir):
    """train, quantize and evaluate on a 4 MB tmpfs filled to a few KB: one line naming the disk,
    no finished-looking output, earlier results untouched."""
    prefix = _mount_namespace()
    if prefix is None:
        pytest.skip("cannot mount a tmpfs here (no root and no user namespaces); the simulated test covers the logic")
    disk, out = tmp_path / "disk", tmp_path / "results.json"
    disk.mkdir()
    train = " ".join(a for a in TINY_TRAIN)
    r = subprocess.run([*prefix, sys.executable, "-c", FULL_DISK_DRIVER, str(disk), str(tiny_model_dir), str(out),
                        train, " ".join(QUANT_FAST)], env=_env(), capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    results = json.loads(out.read_text())
    for what, res in results.items():
        line = one_error(subprocess.CompletedProcess(what, res["rc"], res["stdout"], res["stderr"]),
                         f"disk full: no space left on {disk.resolve()} (tmpfs)", only_line=False)
        assert "nothing was published and earlier results are untouched" in line
        assert res["previous"] == ["previous"] * 3, what
        assert not [p for p in res["tree"] if ".staging-" in p or ".replaced-" in p or p.endswith(".tmp")], res["tree"]
    assert "Models/tiny-synthetic-arith_SFT_LoRa16_NoQuant/config.json" not in results["train"]["tree"]
    assert f"Models/tiny_HQQ_w4_g64/{HQQ_WEIGHTS}" not in results["quantize"]["tree"]
    metrics = results["evaluate"]["metrics"]
    assert metrics is None or json.loads(metrics)["status"] != "complete"  # nothing that looks finished


# ---------------------------------------------------------------------------------------------
# a quiet console (issue 14 §5)


# `python -m ftlab ARGS`, and at exit the quantization engines' packages it imported, into a file.
_IMPORTED_ENGINES = """
import atexit, json, runpy, sys
out, sys.argv = sys.argv[1], ["ftlab", *sys.argv[2:]]
engines = ("gptqmodel", "awq", "auto_gptq", "llama_cpp")
atexit.register(lambda: open(out, "w").write(json.dumps(sorted(m for m in engines if m in sys.modules))))
runpy.run_module("ftlab", run_name="__main__")
"""


def test_train_prints_only_ftlab_lines(tiny_ws, tmp_path):
    imported = tmp_path / "imported.json"
    r = subprocess.run([sys.executable, "-c", _IMPORTED_ENGINES, str(imported), "--workdir", str(tiny_ws), "train",
                        "model.name=Models/tiny", *TINY_TRAIN], capture_output=True, text=True, env=_env(), cwd=tiny_ws,
                       timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    # A plain LoRA run does not import gptqmodel (whose import prints a banner and GIL advice) or the
    # other quantization packages; ftlab's engine modules import theirs only inside the methods that
    # use them. hqq and bitsandbytes are not asserted: `import peft` itself imports both when they
    # are installed (measured with peft 0.21.2), silently.
    assert json.loads(imported.read_text()) == []
    assert foreign_lines(r.stderr) == [], r.stderr[-3000:]
    for noise in ("GPT-QModel", "GIL", "_pytree", "FutureWarning", "kernels-community"):
        assert noise not in r.stderr + r.stdout
    assert r.stdout.strip() == str(tiny_ws / "Models" / "tiny-synthetic-arith_SFT_LoRa16_NoQuant")
