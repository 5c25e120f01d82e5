"""The eval names the foundation reads (ftlab.kinds.eval) and the behaviour the eval stage
registers against them hold the same names: a name without behaviour, or behaviour without a
name, fails here."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from ftlab.config import EvalRunConfig, load_config
from ftlab.errors import ConfigError
from ftlab.eval.scoring.answer_kinds import ANSWER_KINDS
from ftlab.eval.scoring.modes import SCORING_MODES
from ftlab.eval.prompt_format import PROMPT_FORMATS
from ftlab.kinds import eval as eval_kinds

ROOT = Path(__file__).resolve().parents[2]


def test_behaviour_registries_and_name_lists_are_equal():
    assert SCORING_MODES.names() == list(eval_kinds.SCORING_MODE_NAMES)
    assert PROMPT_FORMATS.names() == list(eval_kinds.PROMPT_FORMAT_NAMES)
    # The answer kinds name only modes that exist.
    assert {m for _, k in ANSWER_KINDS.items() for m in k.modes} <= set(eval_kinds.SCORING_MODE_NAMES)


def test_the_names_module_imports_nothing_above_it():
    tree = ast.parse((ROOT / "ftlab" / "kinds" / "eval.py").read_text())
    imported = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    imported |= {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    assert {m for m in imported if m.startswith("ftlab")} <= {"ftlab.errors", "ftlab.registry"}


def test_config_checks_scoring_and_prompt_format_against_the_names():
    with pytest.raises(ConfigError, match=r"eval.scoring='loglikelihod' is unknown \(did you mean 'loglikelihood'\?\); "
                                          r"valid: generate, loglikelihood"):
        load_config(EvalRunConfig, overrides=["eval.scoring=loglikelihod"])
    with pytest.raises(ConfigError, match=r"eval.prompt_format='xyz' is unknown; valid: auto, chat, plain"):
        load_config(EvalRunConfig, overrides=["eval.prompt_format=xyz"])
    cfg = load_config(EvalRunConfig, overrides=["eval.scoring=loglikelihood", "eval.prompt_format=plain"])
    assert (cfg.eval.scoring, cfg.eval.prompt_format) == ("loglikelihood", "plain")
