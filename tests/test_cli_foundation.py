import os
import subprocess
import sys

import pytest

from ftlab.cli import main


def test_help(capsys):
    assert main([]) == 0
    out = capsys.readouterr().out
    for cmd in ("train", "quantize", "evaluate", "orchestrate", "compare", "score", "datasets", "models", "chat", "demo", "doctor"):
        assert cmd in out


def test_datasets_prepare_from_shared(workspace, shared_datasets, capsys):
    assert main(["datasets", "prepare", "--from", str(shared_datasets)]) == 0
    files = sorted(p.name for p in workspace.datasets_dir.iterdir())
    assert "train-ai2_arc.parquet" in files and "test-squad_v2.parquet" in files and "test-synthetic-arith.parquet" in files
    import pandas as pd

    arc = pd.read_parquet(workspace.datasets_dir / "train-ai2_arc.parquet")
    assert set(arc["answer"]) == {"A", "B", "C", "D"}
    assert main(["datasets", "list"]) == 0
    assert str(workspace.datasets_dir) in capsys.readouterr().out


def test_datasets_prepare_bad_from_writes_nothing(workspace, tmp_path, capsys):
    assert main(["datasets", "prepare", "--from", str(tmp_path / "nope")]) == 2
    assert "error: --from" in capsys.readouterr().err
    assert not workspace.datasets_dir.exists() or not any(workspace.datasets_dir.iterdir())


def test_datasets_show_and_validate(workspace, capsys):
    assert main(["datasets", "show", "synthetic-arith", "-n", "1"]) == 0
    assert "\\boxed" in capsys.readouterr().out
    assert main(["datasets", "validate", "synthetic-arith"]) == 0


def test_models_and_doctor(workspace, capsys):
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    assert "smollm2-135m-instruct" in out and "scratch:tiny" in out
    assert main(["doctor"]) == 0
    out = capsys.readouterr().out
    assert "bitsandbytes" in out and "disk_free_gb" in out


def test_doctor_on_a_fresh_workdir_prints_only_its_report(tmp_path):
    r = subprocess.run([sys.executable, "-m", "ftlab", "--workdir", "new-ws", "doctor"], capture_output=True, text=True,
                       cwd=tmp_path, env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=300)
    assert r.returncode == 0 and r.stderr == "", r.stderr[-2000:]
    assert f"{tmp_path / 'new-ws'} (not created yet)" in r.stdout and "GPT-QModel" not in r.stdout
    assert not (tmp_path / "new-ws").exists()


def test_console_script_exit_code_for_bad_input(tmp_path):
    r = subprocess.run([sys.executable, "-m", "ftlab", "datasets", "validate", str(tmp_path / "x.jsonl")],
                       capture_output=True, text=True, cwd=tmp_path)
    assert r.returncode == 2 and r.stderr.strip().startswith("error:") and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


def test_tools_prepare_datasets_script(tmp_path, shared_datasets):
    from pathlib import Path

    import pandas as pd

    from ftlab.paths import Workspace

    repo = Path(__file__).resolve().parents[1]
    r = subprocess.run([sys.executable, str(repo / "tools" / "prepare_datasets.py"), "--workdir", str(tmp_path), "--tasks", "arc", "--from", str(shared_datasets)],
                       capture_output=True, text=True, timeout=300)
    # --workdir belongs to the top-level parser; the script forwards its args after `datasets prepare`.
    assert r.returncode == 0, r.stderr[-2000:]
    # It wrote arc (both splits, the same rows as the shared copy) into the given workspace, and only arc.
    datasets_dir = Workspace(tmp_path).datasets_dir
    assert sorted(p.name for p in datasets_dir.glob("*.parquet")) == ["test-ai2_arc.parquet", "train-ai2_arc.parquet"]
    for name in ("test-ai2_arc.parquet", "train-ai2_arc.parquet"):
        written, shared = pd.read_parquet(datasets_dir / name), pd.read_parquet(shared_datasets / name)
        assert len(written) == len(shared) > 0 and set(written["answer"]) == {"A", "B", "C", "D"}


def test_sigterm_exits_143_and_removes_staging_folder(tmp_path, capsys):
    import os
    import signal
    import time

    from ftlab.cli import guarded
    from ftlab.io import staging_dir

    if signal.getsignal(signal.SIGTERM) != signal.SIG_DFL:
        pytest.skip("SIGTERM already has a handler in this process")

    def body():
        with staging_dir(tmp_path / "Models" / "run") as tmp:
            (tmp / "model.safetensors").write_text("half written")
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(30)  # the handler raises before this returns
        return 0

    assert guarded(body) == 143
    assert list((tmp_path / "Models").iterdir()) == []
    assert "terminated" in capsys.readouterr().err
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL  # restored for the rest of the process


def test_command_help_has_one_source():
    """`ftlab --help`, each subcommand's description and the scripts' parsers all read cli.SUMMARY;
    no command module keeps a second copy that could drift."""
    import argparse
    import re
    from pathlib import Path

    from ftlab.cli import COMMANDS, SUMMARY, build_parser

    assert set(COMMANDS) == set(SUMMARY)
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    assert {name: p.description for name, p in sub.choices.items()} == SUMMARY
    root = Path(__file__).resolve().parents[1]
    for module in COMMANDS.values():
        source = (root / (module.replace(".", "/") + ".py")).read_text()
        assert not re.search(r"^HELP\s*=", source, re.M), module
    # one naming rule: `ftlab X` is ftlab/commands/X.py, and that folder holds nothing else
    modules = {p.stem for p in (root / "ftlab" / "commands").glob("*.py")} - {"__init__"}
    assert modules == set(SUMMARY)


def test_method_lists_people_read_name_every_registered_method(capsys):
    """The help texts, the training script's edit block and the README's opening name every PEFT
    kind, post-training quantization method and generation backend the registries hold (they once
    named 5 of the 8 PEFT kinds and left out GGUF and hf-generate)."""
    from pathlib import Path

    from ftlab.cli import SUMMARY
    from ftlab.config import EvalRunConfig, TrainRunConfig, describe_config
    from ftlab.eval.backends.registry import GENERATORS
    from ftlab.quant.registry import ENGINES
    from ftlab.train.peft_methods import PEFT_KINDS

    root = Path(__file__).resolve().parents[1]
    readme_opening = (root / "README.md").read_text().split("\n## ", 1)[0].lower()
    edit_block = (root / "Fine-tuning" / "01_Train.py").read_text().split("# ===", 2)[1].lower()
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    train_help = capsys.readouterr().out.lower()
    train_keys = "\n".join(describe_config(TrainRunConfig)).lower()
    backend_doc = next(line for line in describe_config(EvalRunConfig) if line.lstrip().startswith("eval.backend ")).lower()
    texts = {
        "PEFT kind": (PEFT_KINDS.names(), {"ftlab train --help": train_help, "ftlab --help (train)": SUMMARY["train"].lower(),
                                           "ftlab train --help-config": train_keys, "Fine-tuning/01_Train.py": edit_block,
                                           "README opening": readme_opening}),
        "quant method": (ENGINES.names(), {"ftlab --help (quantize)": SUMMARY["quantize"].lower(),
                                           "README opening": readme_opening}),
        "generation backend": (GENERATORS.names(), {"eval.backend doc": backend_doc}),
    }
    missing = [f"{kind} {name} not in {where}" for kind, (names, places) in texts.items()
               for name in names for where, text in places.items() if name.lower() not in text]
    assert not missing, missing


def test_top_level_help_imports_no_stage_and_no_heavy_library():
    """`ftlab --help` stays as fast as the command framework: it names every command from
    cli.SUMMARY without importing a stage module, torch or numpy (0.05 s on this machine)."""
    code = ("import sys, contextlib, io\nfrom ftlab.cli import main\n"
            "with contextlib.redirect_stdout(io.StringIO()):\n    main(['--help'])\n"
            "print(' '.join(sorted(m for m in sys.modules if m.startswith(('ftlab', 'torch', 'numpy', 'yaml')))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert set(out) <= {"ftlab", "ftlab.cli", "ftlab.errors", "ftlab.console"}, out
