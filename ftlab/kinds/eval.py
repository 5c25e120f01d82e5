"""Names of the evaluation stage's kinds that the configuration checks: scoring modes and prompt formats.

`ftlab.config` (foundation) validates `eval.scoring` and `eval.prompt_format` against these names
without importing the eval stage; `ftlab.eval.scoring.modes` and `ftlab.eval.prompt_format` register each
name's behaviour, and tests/kinds/test_kinds_eval.py checks that the behaviour registries and these
lists hold the same names. Only the stdlib may be imported here.
"""

from __future__ import annotations

# Scoring modes (eval.scoring, or a dataset-entry suffix such as `arc:ll`).
GENERATE = "generate"
LOGLIKELIHOOD = "loglikelihood"
SCORING_MODE_NAMES: tuple[str, ...] = (GENERATE, LOGLIKELIHOOD)

# Prompt formats (eval.prompt_format): the chat template, plain text, or chosen per model.
AUTO = "auto"
CHAT = "chat"
PLAIN = "plain"
PROMPT_FORMAT_NAMES: tuple[str, ...] = (AUTO, CHAT, PLAIN)
