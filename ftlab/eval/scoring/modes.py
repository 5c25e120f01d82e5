"""Scoring modes: how an answer is judged, selected per task.

`eval.scoring` is the mode of dataset entries without a suffix; a suffix picks a mode for one
entry (`arc:ll`). The metrics document keys a task result by the entry with its mode's suffix, so
`arc` (generative) and `arc:ll` (log-likelihood) are separate results that can come from one
evaluation.
"""

from __future__ import annotations

from dataclasses import dataclass

from ftlab.errors import FtlabError
from ftlab.eval.scoring.answer_kinds import ANSWER_KINDS
from ftlab.kinds.eval import GENERATE, LOGLIKELIHOOD, PLAIN
from ftlab.registry import Registry


@dataclass(frozen=True)
class ScoringMode:
    name: str  # eval.scoring value
    suffix: str | None  # dataset-entry suffix that selects it (`arc:ll`); None: plain entries
    runner: str  # key in ftlab.eval.runners.RUNNERS
    doc: str
    # What eval.prompt_format=auto means in this mode; None: the chat template when the model
    # learned one (ftlab.eval.prompt_format).
    auto_prompt_format: str | None = None

    def key(self, ref: str) -> str:
        """The metrics-document key of task `ref` scored in this mode."""
        return f"{ref}:{self.suffix}" if self.suffix else ref

    def answer_kinds(self) -> list[str]:
        """The answer kinds whose definitions say this mode can score them."""
        return [name for name, kind in ANSWER_KINDS.items() if self.name in kind.modes]

    def check(self, entry: str, answer_kind: str) -> None:
        if self.name not in ANSWER_KINDS.get(answer_kind).modes:
            raise FtlabError(
                f"eval.datasets: {entry!r} has {answer_kind} answers; {self.name} scoring needs "
                f"{' or '.join(self.answer_kinds())} answers (score it generatively: eval.scoring=generate and no "
                f":{self.suffix} suffix)")


# One behaviour per name in ftlab.kinds.eval.SCORING_MODE_NAMES (the names the config accepts).
SCORING_MODES: Registry[ScoringMode] = Registry("scoring mode")
SCORING_MODES.add(GENERATE, ScoringMode(
    GENERATE, None, "generate",
    "the model writes an answer; the answer in its \\boxed{} is extracted and matched (knowledge and format)"))
SCORING_MODES.add(LOGLIKELIHOOD, ScoringMode(
    LOGLIKELIHOOD, "ll", "loglikelihood",
    "each option's log-probability as the continuation of the prompt; the likeliest option is the "
    "answer (knowledge, whatever the output format)",
    # Plain text for every model, as lm-evaluation-harness does by default: a base model and its
    # fine-tune then answer the same text, so a paired comparison compares the models, not two
    # prompt formats. Measured on SmolLM2-135M-Instruct, 200 rows, plain vs chat: ARC acc 0.245
    # vs 0.240, acc_norm 0.245 vs 0.245; BoolQ acc 0.38 vs 0.40, acc_norm 0.54 vs 0.61.
    # eval.prompt_format=chat uses the template.
    auto_prompt_format=PLAIN))


def split_entry(entry: str) -> tuple[str, ScoringMode | None]:
    """`arc:ll` -> ("arc", the log-likelihood mode); `arc` -> ("arc", None)."""
    for _, mode in SCORING_MODES.items():
        if mode.suffix and entry.endswith(":" + mode.suffix) and len(entry) > len(mode.suffix) + 1:
            return entry[: -len(mode.suffix) - 1], mode
    return entry, None


def resolve_entry(entry: str, default_mode: str) -> tuple[str, ScoringMode]:
    """(task reference, scoring mode) of a dataset entry; `default_mode` is eval.scoring."""
    ref, mode = split_entry(entry)
    return ref, mode or SCORING_MODES.get(default_mode)
