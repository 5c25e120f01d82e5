"""`ftlab train` and `Fine-tuning/01_Train.py` end to end in a temporary workspace."""

from __future__ import annotations

import os
import runpy
import subprocess
import sys
from pathlib import Path

import pytest

from ftlab.cli import main as ftlab_main
from ftlab.config import TrainRunConfig, load_config
from ftlab.schema import load_training_metadata
from tiny_models import tiny_overrides

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "Fine-tuning" / "01_Train.py"


def _env(tmp_path: Path) -> dict:
    return dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false",
                HF_HUB_OFFLINE="1", FTLAB_HOME=str(tmp_path), PYTHONPATH=str(REPO))


def test_ftlab_train_cli(tiny_model_dir, tmp_path, capsys):
    rc = ftlab_main(["--workdir", str(tmp_path), "train", *tiny_overrides(tiny_model_dir, train__max_steps=2)])
    assert rc == 0
    folder = tmp_path / "Models" / "tiny-synthetic-arith_SFT_LoRa16_NoQuant"
    assert capsys.readouterr().out.strip().endswith(str(folder))
    assert load_training_metadata(folder)["results"]["global_step"] == 2


def test_ftlab_train_cli_bad_input_exits_2(tiny_model_dir, tmp_path, capsys):
    rc = ftlab_main(["--workdir", str(tmp_path), "train", *tiny_overrides(tiny_model_dir), "peft.method=LoRA2",
                     "train.batch_size=0"])
    err = capsys.readouterr().err.strip()
    assert rc == 2
    assert err.startswith("error: 2 config problems") and "peft.method='LoRA2'" in err and "train.batch_size=0" in err
    assert len(err.splitlines()) == 1
    assert not (tmp_path / "Models").exists()


def test_help_config_lists_keys(capsys):
    assert ftlab_main(["train", "--help-config"]) == 0
    out = capsys.readouterr().out
    assert "peft.method = 'LoRa'" in out and "train.group_by_length = True" in out


def test_script_block_maps_onto_config():
    ns = runpy.run_path(str(SCRIPT), run_name="not_main")
    cfg = load_config(TrainRunConfig, base=ns["BASE"])
    assert cfg.model.name == ns["MODEL_NAME"] and cfg.data.dataset == ns["DATASET_CHOICE"]
    assert cfg.peft.method == ns["PEFT_CONFIG"] and cfg.peft.r == ns["LORA_RANK"]
    assert cfg.quant.method == ns["QUANT_METHOD"] and cfg.data.trunc_train == ns["TRUNC_TRAIN"]
    assert cfg.train.merge_after_train == ns["MERGE_AFTER_TRAIN"] and cfg.train.method == ns["FINETUNING"]


def test_script_end_to_end_with_config_file_and_overrides(tiny_model_dir, tmp_path, capsys):
    cfg_file = tmp_path / "run.yaml"
    cfg_file.write_text("peft:\n  method: rsLoRa\n  r: 4\ntrain:\n  merge_after_train: true\n")
    overrides = [o for o in tiny_overrides(tiny_model_dir, train__max_steps=2)]
    proc = subprocess.run([sys.executable, str(SCRIPT), "--config", str(cfg_file), *overrides],
                          env=_env(tmp_path), cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    folder = tmp_path / "Models" / "tiny-synthetic-arith_SFT_rsLoRa4_NoQuant"
    meta = load_training_metadata(folder)
    assert meta["merged"] and meta["peft"]["method"] == "rsLoRa" and meta["peft"]["r"] == 4

    # the same command again: the folder exists -> one-line error, exit 2 (in-process: same entry point)
    from ftlab.commands.train import main_script

    ns = runpy.run_path(str(SCRIPT), run_name="not_main")
    rc = main_script(ns["BASE"], ["--workdir", str(tmp_path), "--config", str(cfg_file), *overrides])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and err[-1].startswith("error: output folder") and "overwrite" in err[-1]


@pytest.mark.slow
def test_two_process_accelerate_launch(tiny_model_dir, tmp_path):
    """DDP on CPU (gloo): both ranks train, only rank 0 writes the folder."""
    overrides = tiny_overrides(tiny_model_dir, train__max_steps=3, train__batch_size=4)
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", "2", "--num_machines", "1",
           "--mixed_precision", "no", "--dynamo_backend", "no", "--multi_gpu", str(SCRIPT), *overrides]
    proc = subprocess.run(cmd, env=_env(tmp_path), cwd=tmp_path, capture_output=True, text=True, timeout=600)
    # A failing rank's own error is buried under the other rank's barrier traceback: show both.
    rank_lines = "\n".join(ln for ln in proc.stderr.splitlines() if "[rank1]" in ln or "Error" in ln)
    assert proc.returncode == 0, rank_lines[-4000:] + "\n---\n" + proc.stderr[-1500:]
    folder = tmp_path / "Models" / "tiny-synthetic-arith_SFT_LoRa16_NoQuant"
    meta = load_training_metadata(folder)
    assert meta["training_args"]["world_size"] == 2
    assert meta["training_args"]["effective_batch"] == 8
    assert meta["results"]["global_step"] == 3
    assert not list((tmp_path / "Models").glob(".staging-*"))
