"""What an evaluation runner is: the plan of one dataset entry (`DatasetPlan`), what a runner gets
for it (`RunContext`), and the registry of runners by name (`RUNNERS`). The evaluator
(ftlab.eval.evaluator) registers the generation and perplexity runners, ftlab.eval.scoring.loglikelihood
the log-likelihood one and ftlab.eval.lmeval.runner the lm-evaluation-harness one; they import this
module, and none of them the evaluator."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable

from ftlab.config import EvalRunConfig
from ftlab.errors import FtlabError
from ftlab.eval.records.results import SampleStore, settings_key
from ftlab.paths import MetricsFiles
from ftlab.registry import Registry

if TYPE_CHECKING:  # generation imports transformers; a plan needs none of it
    from ftlab.eval.backends.api import Generator


PERPLEXITY = "perplexity"
LOGLIKELIHOOD = "loglikelihood"
LMEVAL = "lmeval"
# Scoring version of runners that score with no answer-kind scorer (a perplexity is a perplexity).
# Bump the log-likelihood one when ftlab.eval.scoring.loglikelihood changes a stored prediction or metric,
# the lmeval one when ftlab.eval.lmeval changes what it stores (lm-eval's own version is in its settings).
RUNNER_SCORING_VERSIONS = {PERPLEXITY: 1, LOGLIKELIHOOD: 1, LMEVAL: 1}


def prompt_hash(prompt: str) -> str:
    return hashlib.sha256(prompt.encode("utf-8")).hexdigest()[:16]


@dataclass
class DatasetPlan:
    name: str  # key in the metrics document
    runner: str  # key in RUNNERS
    task: Any  # ftlab.data.tasks.Task
    rows: str = ""  # the task or file the rows come from
    examples: list = field(default_factory=list)  # empty until loaded (ftlab.eval.evaluator)
    shots: list = field(default_factory=list)  # few-shot examples (eval.num_fewshot), ftlab.eval.fewshot
    source: Any = None  # what the runner reads instead of rows: lm-eval's loaded tasks (ftlab.eval.lmeval)


class RunContext:
    """What a runner gets for one task: the config, the generator (built on first use: a run whose
    tasks are all up to date never loads the model), this task's settings and the stored sample
    lines it may reuse."""

    def __init__(self, cfg: EvalRunConfig, plan: DatasetPlan, settings: dict, store: SampleStore,
                 files: MetricsFiles, previous: dict, make_generator: Callable[[], Generator]):
        self.cfg = cfg
        self.settings = settings
        self.settings_key = settings_key(settings)
        self.files = files  # the model's files in Testing/metrics/
        self.samples_path = files.samples
        self.previous = previous  # the document's blocks before this run (task key -> block)
        self._plan_name = plan.name
        self._store = store
        self._make_generator = make_generator
        self._generator: Generator | None = None
        # (task key, row index) -> the last line written for that row under this task's settings.
        self.done = {(plan.name, i): line for i, line in store.latest(plan.name, self.settings_key).items()}

    @property
    def generator(self) -> Generator:
        if self._generator is None:
            self._generator = self._make_generator()
        return self._generator

    def model_generator(self, what: str = "") -> Generator:
        """The generator, for runners that read the model's log-probabilities rather than its answers
        (`what`: which of their requests do, for the error)."""
        g = self.generator
        if getattr(g, "model", None) is None:
            asks = f" ({what})" if what else ""
            raise FtlabError(f"eval.datasets: {self._plan_name} needs model weights{asks}; the {g.name!r} backend has "
                             "none (use eval.backend=hf)")
        return g

    def reusable(self, index: int, prompt_hash: str) -> dict | None:
        """A stored line of this row asked with exactly this prompt under this task's settings."""
        last = self.done.get((self._plan_name, index))
        if last is not None and last.get("prompt_hash") == prompt_hash:
            return last
        return self._store.find(self._plan_name, self.settings_key, index, prompt_hash)


RUNNERS: Registry[Callable[[DatasetPlan, RunContext], dict]] = Registry("evaluation runner")
