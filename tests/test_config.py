import pytest

from ftlab.config import EvalRunConfig, TrainRunConfig, describe_config, load_config, save_config
from ftlab.errors import ConfigError


def test_defaults_yaml_overrides_precedence(tmp_path):
    y = tmp_path / "c.yaml"
    y.write_text("peft:\n  r: 32\n  method: DoRa\ntrain:\n  learning_rate: 1.0e-3\n  merge_after_train: true\n")
    cfg = load_config(TrainRunConfig, y, ["peft.r=64", "train.merge_after_train=False"], base={"peft": {"r": 8, "dropout": 0.2}})
    assert cfg.peft.r == 64  # override beats YAML beats base
    assert cfg.peft.method == "DoRa"  # YAML beats default
    assert cfg.peft.dropout == 0.2  # base beats default
    assert cfg.train.learning_rate == 1e-3
    assert cfg.train.merge_after_train is False  # False overrides a YAML true
    assert cfg.train.batch_size == 8  # default


def test_zero_and_false_and_none_overrides():
    cfg = load_config(TrainRunConfig, overrides=["data.val_size=0", "train.completion_only_loss=0",
                                                 "data.trunc_train=None", "peft.alpha=null", "train.learning_rate=2e-4"])
    assert cfg.data.val_size == 0
    assert cfg.train.completion_only_loss is False
    assert cfg.data.trunc_train is None and cfg.peft.alpha is None
    assert cfg.train.learning_rate == pytest.approx(2e-4)


def test_list_overrides():
    cfg = load_config(TrainRunConfig, overrides=["peft.target_modules=q_proj,v_proj", "train.report_to=[none]"])
    assert cfg.peft.target_modules == ["q_proj", "v_proj"]
    assert cfg.train.report_to == ["none"]


def test_all_problems_collected_with_suggestions():
    with pytest.raises(ConfigError) as ei:
        load_config(TrainRunConfig, overrides=["trian.epochs=1", "peft.r=0", "peft.methd=LoRa", "train.batch_size=abc", "noequals"])
    probs = ei.value.problems
    text = str(ei.value)
    assert len(probs) == 5, probs
    assert "did you mean 'train'" in text
    assert "did you mean 'peft.method'" in text
    assert "peft.r=0 must be a positive integer" in text
    assert "train.batch_size='abc' is not an integer" in text
    assert "not key=value" in text


def test_unknown_peft_method_suggests():
    with pytest.raises(ConfigError, match="did you mean 'DoRa'"):
        load_config(TrainRunConfig, overrides=["peft.method=Dora2"])


def test_qlora_with_nopeft_rejected():
    with pytest.raises(ConfigError, match="QLORA needs an adapter"):
        load_config(TrainRunConfig, overrides=["quant.method=QLORA", "peft.method=NoPeft"])


def test_bad_yaml_and_missing_file(tmp_path):
    from ftlab.errors import FtlabError

    with pytest.raises(FtlabError, match="not found"):
        load_config(TrainRunConfig, tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("peft: [1, 2\n")
    with pytest.raises(FtlabError, match="not valid YAML"):
        load_config(TrainRunConfig, bad)
    scalar = tmp_path / "scalar.yaml"
    scalar.write_text("42\n")
    with pytest.raises(FtlabError, match="mapping"):
        load_config(TrainRunConfig, scalar)


def test_save_round_trip(tmp_path):
    cfg = load_config(EvalRunConfig, overrides=["eval.datasets=arc,boolq", "eval.limit=5"])
    path = save_config(cfg, tmp_path / "resolved.yaml")
    again = load_config(EvalRunConfig, path)
    assert again == cfg


def test_every_field_documented():
    lines = describe_config(TrainRunConfig) + describe_config(EvalRunConfig)
    assert all(line.split("# ", 1)[1].strip() for line in lines), [l for l in lines if not l.split("# ", 1)[1].strip()]


def _changed(value, hint):
    """Another value of a config field, whatever its type (the rule is checked without validation)."""
    if isinstance(value, bool):
        return not value
    if isinstance(value, (int, float)):
        return value + 1
    if isinstance(value, list):
        return [*value, "other"]
    if isinstance(value, dict):
        return {**value, "other": 1}
    if isinstance(value, str):
        return value + "-other"
    return 7 if "int" in str(hint) or "float" in str(hint) else "other"  # None defaults


def test_job_identity_and_checkpoint_fingerprint_follow_the_fields_effect():
    """Each training setting says what it changes (config field metadata): a study's training job
    identity changes with every setting but the run-only ones, and a checkpoint's fingerprint also
    ignores what happens after training (merging). Both are derived from that one mark."""
    import copy
    import dataclasses
    import typing

    from ftlab.config import AFTER_TRAINING, PRODUCT, RUN_ONLY, TrainRunConfig
    from ftlab.study.graph import identity_config
    from ftlab.train.checkpoints import training_fingerprint

    base = TrainRunConfig()
    seen = {PRODUCT: 0, RUN_ONLY: 0, AFTER_TRAINING: 0}
    for section in dataclasses.fields(TrainRunConfig):
        part = getattr(base, section.name)
        hints = typing.get_type_hints(type(part))
        for f in dataclasses.fields(part):
            if (section.name, f.name) == ("model", "name"):
                continue  # the snapshot job's id stands for the base model
            cfg = copy.deepcopy(base)
            setattr(getattr(cfg, section.name), f.name, _changed(getattr(part, f.name), hints[f.name]))
            effect = f.metadata["effect"]
            seen[effect] += 1
            key = f"{section.name}.{f.name} ({effect})"
            assert (identity_config(cfg) != identity_config(base)) == (effect != RUN_ONLY), key
            assert (training_fingerprint(cfg) != training_fingerprint(base)) == (effect == PRODUCT), key
    assert seen[RUN_ONLY] >= 10 and seen[AFTER_TRAINING] == 1 and seen[PRODUCT] > 30, seen


def test_dotted_keys_and_what_changed():
    from ftlab.config import dotted, dotted_changes

    tree = {"train": {"learning_rate": 1e-4, "report_to": ["tensorboard"], "extra": {}}, "seed": 3}
    assert dotted(tree) == {"train.learning_rate": 1e-4, "train.report_to": ["tensorboard"], "seed": 3}
    assert dotted(tree, keep_empty=True)["train.extra"] == {}
    assert dotted(tree, "run") == {"run.train.learning_rate": 1e-4, "run.train.report_to": ["tensorboard"], "run.seed": 3}
    assert dotted_changes({"a": {"b": 1, "c": 2}}, {"a": {"b": 1, "c": 3, "d": 4}}) == [("a.c", 2, 3), ("a.d", None, 4)]
    assert dotted_changes(None, {"x": 1}) == [("x", None, 1)] and dotted_changes(tree, tree) == []
