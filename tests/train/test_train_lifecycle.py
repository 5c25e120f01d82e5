"""Run lifecycle: resume after a kill, early stopping, OOM back-off, bad settings, snapshots, PT."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import TrainerCallback

from ftlab.config import TrainRunConfig, load_config
from ftlab.errors import ConfigError, FtlabError
from ftlab.schema import load_training_metadata
from ftlab.train.runner import run_training
from ftlab.train.checkpoints import checkpoint_dir_for
from tiny_models import tiny_overrides


def _cfg(model_dir, **extra) -> TrainRunConfig:
    return load_config(TrainRunConfig, None, tiny_overrides(model_dir, **extra))


class InjectedKill(Exception):
    pass


class KillAt(TrainerCallback):
    """Dies at the end of step `step`, like a process killed mid-run (after earlier checkpoints)."""

    def __init__(self, step: int):
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            raise InjectedKill(f"killed at step {state.global_step}")


class OomWhile(TrainerCallback):
    """Raises an out-of-memory error at train start while `predicate(args, model)` holds."""

    def __init__(self, predicate, limit: int = 99):
        self.predicate = predicate
        self.calls = 0
        self.limit = limit

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        if self.calls < self.limit and self.predicate(args, model):
            self.calls += 1
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (injected)")


def _history(folder):
    return json.loads((folder / "log_history.json").read_text())


def test_resume_after_kill_matches_uninterrupted_run(tiny_model_dir, workspace, tmp_path):
    common = dict(train__max_steps=8, train__save_steps=2, train__save_total_limit=2,
                  train__lr_scheduler="cosine", train__warmup_ratio=0.25, peft__dropout=0.0)
    ref = run_training(_cfg(tiny_model_dir, train__output_dir="ref", **common), workspace)

    cfg = _cfg(tiny_model_dir, **common)
    with pytest.raises(InjectedKill):
        run_training(cfg, workspace, callbacks=[KillAt(5)])
    name = "tiny-synthetic-arith_SFT_LoRa16_NoQuant"
    assert not (workspace.models_dir / name).exists()  # nothing that looks finished
    assert not list(workspace.models_dir.glob(".staging-*"))
    ckpts = sorted(p.name for p in checkpoint_dir_for(workspace, name).glob("checkpoint-*"))
    assert ckpts == ["checkpoint-2", "checkpoint-4"]

    folder = run_training(cfg, workspace)  # train.resume=auto (default)
    meta = load_training_metadata(folder)
    assert meta["results"]["resumed_from"].endswith("checkpoint-4")
    assert meta["results"]["global_step"] == 8
    assert not checkpoint_dir_for(workspace, name).exists()  # cleaned up once the folder is in place

    def per_step(history, key):
        return {h["step"]: h[key] for h in history if key in h}

    ref_lr, got_lr = per_step(_history(ref), "learning_rate"), per_step(_history(folder), "learning_rate")
    assert set(got_lr) == set(range(1, 9))
    assert got_lr == pytest.approx(ref_lr)  # same LR schedule, step for step
    ref_loss, got_loss = per_step(_history(ref), "loss"), per_step(_history(folder), "loss")
    assert [got_loss[s] for s in range(5, 9)] == pytest.approx([ref_loss[s] for s in range(5, 9)], rel=1e-4)


def test_stale_checkpoints_of_other_settings_are_not_resumed(tiny_model_dir, workspace):
    with pytest.raises(InjectedKill):
        run_training(_cfg(tiny_model_dir, train__max_steps=6, train__save_steps=2), workspace, callbacks=[KillAt(3)])
    folder = run_training(_cfg(tiny_model_dir, train__max_steps=6, train__save_steps=2,
                               train__learning_rate=1e-3), workspace)
    assert load_training_metadata(folder)["results"]["resumed_from"] is None


def test_early_stopping(tiny_model_dir, workspace):
    # A learning rate too small to move fp32 weights: the eval loss never improves.
    cfg = _cfg(tiny_model_dir, train__learning_rate=1e-12, train__max_steps=20, train__eval_steps=1,
               train__early_stopping_patience=2)
    meta = load_training_metadata(run_training(cfg, workspace))
    res = meta["results"]
    assert res["early_stopped"] is True
    assert res["global_step"] == 3  # eval 1 sets the best, evals 2 and 3 do not improve
    assert res["best_metric"] is not None and res["eval_loss"] is not None
    evals = [h for h in _history(workspace.models_dir / meta["run_name"]) if "eval_loss" in h]
    assert len(evals) >= 3 and all("eval_perplexity" in h for h in evals)


def test_oom_backoff_follows_protocol(tiny_model_dir, workspace):
    oom = OomWhile(lambda args, model: True, limit=3)  # the first three attempts run out of memory
    cfg = _cfg(tiny_model_dir, peft__method="DoRa", data__max_length=256, train__max_steps=2)
    folder = run_training(cfg, workspace, callbacks=[oom])
    meta = load_training_metadata(folder)
    attempts = meta["oom_backoff"]["attempts"]
    assert [a["status"] for a in attempts] == ["oom", "oom", "oom", "ok"]
    assert [a["next_step"] for a in attempts[:3]] == ["shorter_max_length", "lower_rank", "dora_off"]
    final = meta["oom_backoff"]["final_settings"]
    assert final == attempts[-1]["settings"]
    assert (final["max_length"], final["r"], final["peft_method"]) == (128, 8, "LoRa")
    assert final["alpha"] == 32.0  # the adapter scale the user asked for (2*16) is kept
    assert meta["peft"]["r"] == 8 and meta["training_args"]["max_length"] == 128
    assert folder.name == "tiny-synthetic-arith_SFT_LoRa8_NoQuant"  # named after what it holds
    assert meta["requested_config"]["peft"]["method"] == "DoRa"


def test_oom_backoff_reaches_batch_one(tiny_model_dir, workspace):
    oom = OomWhile(lambda args, model: args.per_device_train_batch_size > 1)
    cfg = _cfg(tiny_model_dir, peft__method="LoRa", peft__r=2, peft__target_modules="qv", data__max_length=64,
               train__max_steps=2, train__batch_size=4, train__grad_accum=2)
    meta = load_training_metadata(run_training(cfg, workspace, callbacks=[oom]))
    steps = [a.get("next_step") for a in meta["oom_backoff"]["attempts"]]
    # max_length already minimal: lower rank, fewer targets (qv -> none left), then batch 1
    assert steps == ["lower_rank", "batch_one", None]
    assert meta["training_args"]["batch_size"] == 1 and meta["training_args"]["grad_accum"] == 8


def test_oom_gives_up_cleanly(tiny_model_dir, workspace):
    cfg = _cfg(tiny_model_dir, train__max_oom_retries=1)
    with pytest.raises(FtlabError, match="out of memory after 2 attempt"):
        run_training(cfg, workspace, callbacks=[OomWhile(lambda args, model: True)])
    assert not workspace.models_dir.exists() or not [p for p in workspace.models_dir.iterdir()
                                                      if not p.name.startswith(".")]


@pytest.mark.parametrize("overrides, match", [
    ({"peft__r": 0}, "peft.r=0 must be a positive integer"),
    ({"quant__method": "QLORA", "peft__method": "NoPeft"}, "QLORA needs an adapter"),
    ({"peft__method": "VeRa", "peft__target_modules": "embed_tokens"}, "VeRa supports only linear layers"),
    ({"peft__target_modules": "c_attn"}, "'c_attn' is not a module"),
    ({"peft__target_modules": "lm_head"}, "output head"),
    ({"train__report_to": "wandb"}, r"wandb package is not installed; pip install 'ftlab\[track\]'"),
    ({"train__early_stopping_patience": 2}, "needs train.eval_steps"),
    ({"data__val_size": 500, "data__trunc_train": None}, None),
])
def test_bad_settings_rejected(overrides, match, tiny_model_dir, workspace, monkeypatch):
    import importlib.util

    if overrides.get("train__report_to") == "wandb":  # as if the `track` extra were not installed
        find_spec = importlib.util.find_spec
        monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else find_spec(name, *a))
    if match is None:  # val_size larger than the synthetic stream is fine; a tiny file is not
        path = workspace.root / "small.jsonl"
        path.write_text("\n".join(json.dumps({"question": f"q{i}", "answer": str(i)}) for i in range(5)))
        overrides = {"data__dataset": str(path), "data__val_size": 5}
        match = "leaves no training rows"
    with pytest.raises(FtlabError, match=match):
        run_training(_cfg(tiny_model_dir, **overrides), workspace)
    assert not workspace.models_dir.exists() or not any(workspace.models_dir.iterdir())


def test_existing_folder_needs_overwrite(tiny_model_dir, workspace):
    folder = run_training(_cfg(tiny_model_dir, train__max_steps=1), workspace)
    with pytest.raises(FtlabError, match="already exists"):
        run_training(_cfg(tiny_model_dir, train__max_steps=1), workspace)
    again = run_training(_cfg(tiny_model_dir, train__max_steps=2, train__overwrite=True), workspace)
    assert again == folder and load_training_metadata(folder)["results"]["global_step"] == 2


def test_base_snapshot(tiny_model_dir, workspace):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = run_training(_cfg(tiny_model_dir, data__dataset="None"), workspace)
    assert folder.name == "tiny-base"
    meta = load_training_metadata(folder)
    assert meta["dataset"] is None and meta["peft"] is None and meta["quantization"]["method"] == "NoQuant"
    assert meta["name_fields"]["dataset"] == "base"
    model = AutoModelForCausalLM.from_pretrained(folder)
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), base.state_dict().values()))
    assert AutoTokenizer.from_pretrained(folder).chat_template
    assert (folder / "README.md").read_text().startswith("# tiny-base")
    with pytest.raises(FtlabError, match="quant.method=NoQuant"):
        run_training(_cfg(tiny_model_dir, data__dataset="None", quant__method="QLORA", train__overwrite=True),
                     workspace)


def test_tensorboard_and_full_sequence_loss(tiny_model_dir, workspace):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    cfg = _cfg(tiny_model_dir, train__report_to="tensorboard", train__eval_steps=2, train__max_steps=4,
               train__completion_only_loss=False)
    folder = run_training(cfg, workspace)
    events = list((folder / "runs").rglob("events.out.tfevents.*"))
    assert events
    acc = EventAccumulator(str(events[0].parent))
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    assert {"train/loss", "train/learning_rate", "train/grad_norm", "train/perplexity", "eval/loss",
            "eval/perplexity"} <= tags
    meta = load_training_metadata(folder)
    assert meta["training_args"]["completion_only_loss"] is False


def test_padding_free_and_packing(tiny_model_dir, workspace, tmp_path):
    pf = run_training(_cfg(tiny_model_dir, train__padding_free=True, train__output_dir="pf"),
                      workspace)
    meta = load_training_metadata(pf)
    assert meta["training_args"]["padding_free"] is True
    assert meta["results"]["last_logged_loss"] < meta["results"]["first_logged_loss"]
    packed = run_training(_cfg(tiny_model_dir, train__packing=True, train__output_dir="pk"),
                          workspace)
    assert load_training_metadata(packed)["training_args"]["packing"] is True


def test_pretraining_from_scratch_on_raw_text(workspace):
    text = "\n\n".join(f"The number {i} is followed by {i + 1}, and {i} plus one is {i + 1}." for i in range(40))
    corpus = workspace.root / "corpus.txt"
    corpus.write_text(text)
    cfg = load_config(TrainRunConfig, None, [
        "model.name=scratch:tiny", f"data.dataset={corpus}", "data.val_size=4", "data.max_length=64",
        "train.method=PT", "peft.method=NoPeft", "train.max_steps=4", "train.batch_size=1", "train.grad_accum=2",
        "train.gradient_checkpointing=true", "train.mixed_precision=bf16", "train.packing=true",
        "train.learning_rate=3e-3", "train.logging_steps=1", "train.report_to=none", "train.warmup_ratio=0",
    ])
    folder = run_training(cfg, workspace)
    assert folder.name == "scratch-tiny-corpus_PT_NoPeft_NoQuant"
    meta = load_training_metadata(folder)
    args = meta["training_args"]
    assert args["gradient_checkpointing"] and args["mixed_precision"] == "bf16" and args["packing"]
    assert (args["batch_size"], args["grad_accum"]) == (1, 2)
    assert meta["dataset"]["format"] == "text" and meta["dataset"]["train_rows"] == 36
    assert meta["results"]["last_logged_loss"] < meta["results"]["first_logged_loss"]
    with pytest.raises(ConfigError, match="set peft.method=NoPeft"):
        run_training(load_config(TrainRunConfig, None, ["model.name=scratch:tiny", f"data.dataset={corpus}",
                                                         "train.method=PT", "peft.method=LoRa"]), workspace)


def test_resume_skips_checkpoint_cut_short(tmp_path):
    from ftlab.train.checkpoints import newest_complete_checkpoint

    for step in (2, 4, 6):
        (tmp_path / f"checkpoint-{step}").mkdir()
    (tmp_path / "checkpoint-2" / "trainer_state.json").write_text("{}")
    (tmp_path / "checkpoint-4" / "trainer_state.json").write_text("{}")
    (tmp_path / "checkpoint-6" / "trainer_state.json").write_text('{"global_st')  # killed mid-write
    assert newest_complete_checkpoint(tmp_path) == str(tmp_path / "checkpoint-4")
    assert newest_complete_checkpoint(tmp_path / "nothing-here") is None
