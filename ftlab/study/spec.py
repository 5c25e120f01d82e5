"""The study file: a grid of training recipes, the PTQ variants applied to each, the evaluation,
and the baseline every recipe is tested against. Loaded like every ftlab config (typed sections,
every problem reported at once, the closest valid key), then expanded into recipes.

```yaml
name: lora-vs-dora
bases: [smollm2-135m-instruct]
datasets: [synthetic-arith]
train:
  fixed: {train.max_steps: 80, train.batch_size: 16, train.learning_rate: 4.0e-4}
  grid: {peft.method: [LoRa, DoRa], peft.r: [8, 16]}
  seeds: [0, 1]
quantize:
  variants: [{method: HQQ, bits: 4, group_size: 64, options: {optimize: false}}]
evaluate:
  datasets: [synthetic-arith]
  limit: 100
baseline: base
```
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ftlab.config import TrackingConfig, TrainRunConfig, config_to_dict, doc_field, load_config
from ftlab.errors import ConfigError, FtlabError
from ftlab.naming import checked_name
from ftlab.orchestrate.discovery import EvalOptions
from ftlab.quant.registry import complete_spec, get_engine
from ftlab.quant.settings import (
    SETTINGS,
    QuantRunConfig,
    flat_problems,
    load_quant_config,
    tree_of,
    whole_number_problems,
)
from ftlab.quant.settings import identity as quant_identity
from ftlab.study.levels import PER_RECIPE, SEED_SPREADS
from ftlab.study.spending import DEFAULT as DEFAULT_SPENDING
from ftlab.study.spending import spending as spending_function

BASE = "base"  # baseline: the untrained base snapshot of each recipe's base model
# Keys the study sets itself; in `fixed` or `grid` they would silently fight the study.
MANAGED_KEYS = {
    "model.name": "list base models under bases:",
    "data.dataset": "list training datasets under datasets:",
    "train.seed": "list seeds under train.seeds:",
    "train.output_dir": "the study names every folder itself",
    "train.overwrite": "a study never overwrites a folder",
    "train.resume": "a study always resumes an interrupted job",
    "train.threads": "use `ftlab study run --threads`",
    "data.source_dir": "set data_dir: at the top of the study file",
}
@dataclass
class TrainSection:
    fixed: dict = doc_field({}, "`ftlab train` keys (dotted, e.g. train.max_steps) set the same for every recipe")
    grid: dict = doc_field({}, "keys to vary: key -> list of values; every combination is a recipe")
    seeds: list[int] = doc_field([0], "train.seed values; every recipe is trained once per seed")
    include: list[dict] = doc_field([], "extra recipes beyond the grid: mappings of keys to values (over fixed)")
    exclude: list[dict] = doc_field([], "recipes to drop: one whose values match every key of an entry is removed")


@dataclass
class QuantizeSection:
    variants: list[dict] = doc_field([], "PTQ variants applied to every trained model: mappings of `ftlab quantize` "
                                         "settings (ftlab.quant.settings), e.g. {method: HQQ, bits: 4, options: {axis: 0}}")
    base: bool = doc_field(False, "also quantize each base snapshot with every variant")


@dataclass
class EvaluateSection:
    datasets: list[str] = doc_field([], "tasks every model is evaluated on (as for `ftlab evaluate --datasets`)")
    limit: int | None = doc_field(None, "only the first N test rows of each task; None = all")
    settings: dict = doc_field({}, "other `ftlab evaluate` keys (dotted, e.g. eval.max_new_tokens)")


@dataclass
class KindResources:
    """What each job of one kind reserves where it runs; a backend starts it only on a node (or
    machine) that holds all of it (docs/study.md, "A study on a multi-node Ray cluster")."""

    cpus: int | None = doc_field(None, "CPUs each job reserves, also its torch threads (default: the run's --threads)")
    gpus: float | None = doc_field(None, "GPUs each job reserves (default: 1 when the driver's machine has a CUDA "
                                         "device, for train, quantize and evaluate; else 0)")
    memory_gb: float = doc_field(0.0, "memory each job reserves on its node, in GB (0: none declared)")
    custom: dict = doc_field({}, "custom Ray resources each job reserves, e.g. {big_gpu: 1} (--backend ray only)")

    def problems(self, kind: str) -> list[str]:
        out = []
        if self.cpus is not None and (not isinstance(self.cpus, int) or self.cpus < 1):
            out.append(f"resources.{kind}.cpus={self.cpus} must be a whole number of CPUs >= 1")
        if self.gpus is not None and self.gpus < 0:
            out.append(f"resources.{kind}.gpus={self.gpus} must be >= 0")
        if self.memory_gb < 0:
            out.append(f"resources.{kind}.memory_gb={self.memory_gb} must be >= 0")
        for name, amount in self.custom.items():
            if name in ("CPU", "GPU", "memory", "object_store_memory") or str(name).startswith("node:"):
                out.append(f"resources.{kind}.custom.{name}: a built-in Ray resource; use resources.{kind}.cpus, "
                           ".gpus or .memory_gb")
            elif isinstance(amount, bool) or not isinstance(amount, (int, float)) or not amount > 0:
                out.append(f"resources.{kind}.custom.{name}={amount!r} must be a positive amount, e.g. 1")
        return out


@dataclass
class ResourcesSection:
    snapshot: KindResources = field(default_factory=KindResources)
    train: KindResources = field(default_factory=KindResources)
    quantize: KindResources = field(default_factory=KindResources)
    evaluate: KindResources = field(default_factory=KindResources)

    def problems(self) -> list[str]:
        return [p for kind in self.__dataclass_fields__ for p in getattr(self, kind).problems(kind)]


@dataclass(frozen=True)
class StudyAnalysisSettings:
    """How the verdict is computed (the study file's `analysis:` section) and what `ftlab study
    plan` assumes before any result exists."""

    baseline: str = doc_field(BASE, "recipe every other is tested against (set by the study's top-level baseline:)")
    alpha: float = doc_field(0.05, "family-wise error rate of the Holm-corrected tests")
    power: float = doc_field(0.8, "power at which minimum detectable differences and plans are computed")
    confidence: float = doc_field(0.95, "level of every interval")
    resamples: int = doc_field(10_000, "bootstrap resamples (intervals of single trained models)")
    bootstrap_seed: int = doc_field(0, "seed of the bootstrap resampling")
    pair_seeds: bool = doc_field(True, "compare two recipes trained with the same seeds seed by seed (seed k with "
                                       "seed k, which share the data order); false: as independent samples")
    seed_spread: str = doc_field(PER_RECIPE, "a recipe's seed spread: per-recipe (from its own seeds), or pooled (one "
                                             "spread for a task's recipes: more degrees of freedom with few seeds, "
                                             "valid when the recipes' seeds vary alike; seeds taken as independent)")
    min_difference: float | None = doc_field(None, "smallest score difference between recipes that matters "
                                                   "(e.g. 0.03); `ftlab study plan` sizes the study for it")
    expected_score: float | None = doc_field(None, "planning before results exist: the score level of the recipes")
    expected_seed_std: float | None = doc_field(None, "planning: the standard deviation of a recipe's score "
                                                      "across training seeds (beyond item noise)")
    expected_discordance: float | None = doc_field(None, "planning: the share of items two models of different "
                                                         "recipes answer differently (default: 2 p (1 - p))")

    def validate(self) -> list[str]:
        problems = []
        if not self.baseline:
            problems.append("analysis.baseline must name a recipe ('base' for the base snapshot)")
        for name in ("alpha", "power", "confidence"):
            value = getattr(self, name)
            if not 0 < value < 1:
                problems.append(f"analysis.{name}={value} must lie strictly between 0 and 1")
        if self.seed_spread not in SEED_SPREADS:
            problems.append(f"analysis.seed_spread={self.seed_spread!r} is not one of: {', '.join(SEED_SPREADS)}")
        if self.resamples < 1:
            problems.append(f"analysis.resamples={self.resamples} must be >= 1 (e.g. 10000)")
        for name in ("min_difference", "expected_score", "expected_discordance"):
            value = getattr(self, name)
            if value is not None and not 0 < value <= 1:
                problems.append(f"analysis.{name}={value} must lie in (0, 1] (a share of the score scale)")
        if self.expected_seed_std is not None and not 0 <= self.expected_seed_std < 1:
            problems.append(f"analysis.expected_seed_std={self.expected_seed_std} must lie in [0, 1)")
        return problems


@dataclass
class AdaptiveSection:
    """An adaptive study (docs/study.md, "Adaptive studies"): rounds that add seeds and items only to
    comparisons still open. On when any key is set."""

    min_difference: float | None = doc_field(None, "smallest score difference that matters: a comparison whose "
                                                   "interval lies inside +-this is decided equivalent (default: "
                                                   "analysis.min_difference)")
    seeds: int = doc_field(2, "seeds per recipe in the first round (the first of train.seeds)")
    items: int | None = doc_field(None, "items per task in the first round")
    max_seeds: int | None = doc_field(None, "most seeds a recipe gets (default: as many as train.seeds lists)")
    max_items: int | None = doc_field(None, "most items per task a model gets (default: evaluate.limit)")
    item_growth: float = doc_field(2.0, "a round that adds items multiplies the open configurations' items by this")
    budget_hours: float | None = doc_field(None, "stop before a round that would take the study's compute past this "
                                                 "(estimated from measured job times); None = no budget")
    spending: str = doc_field(DEFAULT_SPENDING, "alpha spending function over the looks: hwang-shih-decani, obrien-fleming, pocock, "
                                             "or hwang-shih-decani:GAMMA (e.g. -16: closer to the fixed design's verdict, more compute)")
    futility: float = doc_field(0.0, "stop spending on a comparison whose predictive power of a decision at the "
                                     "ceiling is below this (e.g. 0.1); 0 = never (docs/study.md, \"Futility\")")

    @property
    def on(self) -> bool:
        return any(getattr(self, f) != getattr(AdaptiveSection(), f) for f in self.__dataclass_fields__)

    def margin(self, spec: StudySpec) -> float | None:
        """min_difference, else analysis.min_difference."""
        return self.min_difference if self.min_difference is not None else spec.analysis.min_difference

    def ceiling(self, spec: StudySpec) -> tuple[int, int | None]:
        """(max_seeds, max_items) with their defaults: every seed train.seeds lists, evaluate.limit."""
        return (self.max_seeds if self.max_seeds is not None else len(spec.train.seeds),
                self.max_items if self.max_items is not None else spec.evaluate.limit)

    def problems(self, spec: StudySpec) -> list[str]:
        out = []
        if self.min_difference is None and spec.analysis.min_difference is None:
            out.append("adaptive.min_difference: give the smallest score difference that matters (e.g. 0.05)")
        elif self.min_difference is not None and not 0 < self.min_difference <= 1:
            out.append(f"adaptive.min_difference={self.min_difference} must lie in (0, 1] (a share of the score scale)")
        elif (self.min_difference is not None and spec.analysis.min_difference is not None
              and self.min_difference != spec.analysis.min_difference):
            out.append(f"adaptive.min_difference={self.min_difference} differs from analysis.min_difference="
                       f"{spec.analysis.min_difference}; set one of them")
        if self.seeds < 2:
            out.append(f"adaptive.seeds={self.seeds}: a round's decisions are about recipes, which needs at least 2 seeds")
        max_seeds, max_items = self.ceiling(spec)
        if max_seeds < self.seeds:
            out.append(f"adaptive.max_seeds={max_seeds} is below adaptive.seeds={self.seeds}"
                       + ("" if self.max_seeds is not None else " (train.seeds lists the seeds a recipe may get: "
                          f"list at least {self.seeds}, e.g. {list(range(max(self.seeds, 3)))})"))
        elif len(spec.train.seeds) < max_seeds:
            out.append(f"train.seeds lists {len(spec.train.seeds)} seed(s); adaptive.max_seeds={max_seeds} draws them "
                       f"in order: list {max_seeds} (e.g. {list(range(max_seeds))})")
        if self.items is None or self.items < 2:
            out.append(f"adaptive.items={self.items}: give the first round's items per task (at least 2, e.g. 100)")
        if max_items is None:
            out.append("adaptive.max_items: give the most items per task (or set evaluate.limit)")
        elif self.items is not None and max_items < self.items:
            out.append(f"adaptive.max_items={max_items} is below adaptive.items={self.items}")
        if not self.item_growth > 1:
            out.append(f"adaptive.item_growth={self.item_growth} must be above 1 (e.g. 2)")
        if self.budget_hours is not None and not self.budget_hours > 0:
            out.append(f"adaptive.budget_hours={self.budget_hours} must be positive")
        if not 0 <= self.futility < 1:
            out.append(f"adaptive.futility={self.futility} must lie in [0, 1) (a predictive power, e.g. 0.1; 0 = off)")
        try:
            spending_function(self.spending)
        except FtlabError as e:
            out.append(f"adaptive.spending={self.spending!r}: {e}")
        return out


@dataclass
class StudySpec:
    name: str = doc_field("", "the study's name: Testing/studies/<name>/ holds its report")
    bases: list[str] = doc_field([], "base models (hub ids, folders, built-in names or scratch:<preset>)")
    datasets: list[str] = doc_field([], "training datasets (task names or files)")
    data_dir: str | None = doc_field(None, "folder with train-*/test-*.parquet (training and evaluation data)")
    train: TrainSection = field(default_factory=TrainSection)
    quantize: QuantizeSection = field(default_factory=QuantizeSection)
    evaluate: EvaluateSection = field(default_factory=EvaluateSection)
    baseline: Any = doc_field(BASE, "`base` (each base model's snapshot) or a recipe as a mapping of grid keys, "
                                    "e.g. {peft.method: LoRa, peft.r: 8}")
    analysis: StudyAnalysisSettings = field(default_factory=StudyAnalysisSettings)
    adaptive: AdaptiveSection = field(default_factory=AdaptiveSection)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    resources: ResourcesSection = field(default_factory=ResourcesSection)

    def validate(self) -> list[str]:
        problems = []
        if not self.name:
            problems.append("name: give the study a name (letters, digits, '.', '_', '-')")
        else:
            try:  # the one sanitiser every user-given name passes (it names Testing/studies/<name>/)
                checked_name(self.name, "name")
            except FtlabError as exc:
                problems.append(str(exc))
        if not self.bases:
            problems.append("bases: list at least one base model, e.g. [smollm2-135m-instruct]")
        if not self.evaluate.datasets:
            problems.append("evaluate.datasets: list at least one task to evaluate on")
        if self.evaluate.limit is not None and self.evaluate.limit <= 0:
            problems.append(f"evaluate.limit={self.evaluate.limit} must be a positive number of rows")
        if not self.train.seeds:
            problems.append("train.seeds: list at least one seed, e.g. [0]")
        if len(set(self.train.seeds)) != len(self.train.seeds):
            problems.append(f"train.seeds {self.train.seeds} lists a seed twice")
        for section, keys in (("train.fixed", self.train.fixed), ("train.grid", self.train.grid)):
            for key in keys:
                if key in MANAGED_KEYS:
                    problems.append(f"{section}: {key} is set by the study ({MANAGED_KEYS[key]})")
        for key, values in self.train.grid.items():
            if not isinstance(values, list) or not values:
                problems.append(f"train.grid.{key} must be a non-empty list of values, e.g. [8, 16]")
            elif len({repr(v) for v in values}) != len(values):
                problems.append(f"train.grid.{key} lists a value twice: {values}")
        overlap = sorted(set(self.train.grid) & set(self.train.fixed))
        if overlap:
            problems.append(f"train: {', '.join(overlap)} is both fixed and in the grid; keep it in one")
        for i, v in enumerate(self.quantize.variants):
            if not isinstance(v, dict) or "method" not in v:
                problems.append(f"quantize.variants[{i}] must be a mapping with at least method: (e.g. HQQ)")
        if self.analysis.baseline != BASE:
            problems.append("analysis.baseline: name the baseline with the top-level baseline: key")
        if not isinstance(self.baseline, (str, dict)) or (isinstance(self.baseline, str) and self.baseline != BASE):
            problems.append(f"baseline {self.baseline!r}: use `base` or a mapping of grid keys naming one recipe")
        if self.adaptive.on:
            problems += self.adaptive.problems(self)
        problems += self.resources.problems()
        return problems


# ---------------------------------------------------------------------------------------------
# Recipes


@dataclass(frozen=True)
class Recipe:
    """One training configuration (without the seed), with the values that set it apart."""

    values: tuple[tuple[str, Any], ...]  # (key, value) pairs over every varied key, in study order
    base: str
    dataset: str
    settings: tuple[tuple[str, Any], ...] = ()  # every key the study sets (fixed, grid, include)

    @property
    def label(self) -> str:
        """The values that set this recipe apart; a study of one recipe names its PEFT settings."""
        shown = self.values or tuple((k, v) for k, v in self.settings if k in ("peft.method", "peft.r"))
        return ", ".join(f"{k}={_show(v)}" for k, v in shown) or "recipe"

    def matches(self, partial: dict) -> bool:
        mine = dict(self.settings) | dict(self.values) | {"model.name": self.base, "data.dataset": self.dataset}
        return all(k in mine and _same(mine[k], v) for k, v in partial.items())


def _show(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool):
        return float(a) == float(b)
    return str(a) == str(b)


def _tree(flat: dict) -> dict:
    """{"peft.r": 8} -> {"peft": {"r": 8}} (a config tree load_config accepts as its base)."""
    tree: dict = {}
    for key, value in flat.items():
        node = tree
        parts = str(key).split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
        node[parts[-1]] = value
    return tree


def varied_keys(spec: StudySpec) -> list[str]:
    """Keys whose values differ between recipes: the grid's, those of include entries, and the
    base model / dataset when the study lists several."""
    keys = (["model.name"] if len(spec.bases) > 1 else []) + (["data.dataset"] if len(spec.datasets) > 1 else [])
    keys += list(spec.train.grid)
    for entry in spec.train.include:
        keys += [k for k in entry if k not in keys]
    return list(dict.fromkeys(keys))


def expand_recipes(spec: StudySpec) -> list[Recipe]:
    """The grid's combinations plus `include`, minus `exclude`, for every base and dataset."""
    keys = varied_keys(spec)
    grid_keys = list(spec.train.grid)
    combos = [dict(zip(grid_keys, values)) for values in itertools.product(*spec.train.grid.values())]
    combos += [dict(entry) for entry in spec.train.include]
    recipes: list[Recipe] = []
    for base in spec.bases:
        for dataset in spec.datasets:
            for combo in combos:
                full = {"model.name": base, "data.dataset": dataset, **spec.train.fixed, **combo}
                values = tuple((k, full.get(k, _default(k))) for k in keys)
                settings = tuple((k, v) for k, v in full.items() if k not in ("model.name", "data.dataset"))
                recipe = Recipe(values, base, dataset, settings)
                if any(recipe.matches(ex) for ex in spec.train.exclude) or recipe in recipes:
                    continue
                recipes.append(recipe)
    return recipes


def _default(key: str) -> Any:
    """The default of a dotted train key (shown for include entries that do not set a grid key)."""
    node: Any = TrainRunConfig()
    for part in key.split("."):
        node = getattr(node, part, None)
    return node


def recipe_config(spec: StudySpec, recipe: Recipe, seed: int) -> TrainRunConfig:
    """The full `ftlab train` config of one recipe and seed (raises ConfigError)."""
    flat = {**dict(recipe.settings), "model.name": recipe.base, "data.dataset": recipe.dataset, "train.seed": seed}
    if spec.data_dir:
        flat["data.source_dir"] = spec.data_dir
    return load_config(TrainRunConfig, base=_tree(flat))


def baseline_recipe(spec: StudySpec, recipes: list[Recipe]) -> Recipe | None:
    """None for the base snapshot; else the one recipe the baseline mapping names."""
    if spec.baseline == BASE:
        return None
    hits = [r for r in recipes if r.matches(spec.baseline)]
    if len(hits) != 1:
        named = ", ".join(f"{k}={_show(v)}" for k, v in spec.baseline.items())
        raise FtlabError(f"baseline {{{named}}} matches {len(hits)} recipes; it must name exactly one"
                         + (f" (candidates: {'; '.join(r.label for r in hits[:5])})" if hits else ""))
    return hits[0]


# ---------------------------------------------------------------------------------------------
# Loading


def load_study(path: str | Path, overrides: list[str] = ()) -> tuple[StudySpec, list[Recipe]]:
    """The study file validated and expanded; every problem (of the file and of each recipe's
    training config) is reported in one ConfigError before anything runs."""
    path = Path(path)
    if not path.is_file():
        raise FtlabError(f"study file {path} not found; pass the path of a study YAML (see examples/)")
    spec = load_config(StudySpec, path, overrides)
    if not spec.datasets:
        raise ConfigError(["datasets: list at least one training dataset, e.g. [synthetic-arith]"])
    recipes = expand_recipes(spec)
    problems: list[str] = []
    if not recipes:
        problems.append("train: the grid, include and exclude leave no recipe to train")
    for recipe in recipes:
        try:
            recipe_config(spec, recipe, spec.train.seeds[0])
        except ConfigError as exc:
            problems += [f"recipe [{recipe.label}]: {p}" for p in exc.problems if f"recipe [{recipe.label}]: {p}" not in problems]
    problems += _eval_problems(spec)
    problems += _quant_problems(spec)
    if problems:
        raise ConfigError(list(dict.fromkeys(problems)))
    baseline_recipe(spec, recipes)
    return spec, recipes


def eval_overrides(spec: StudySpec) -> list[str]:
    """`key=value` overrides of the evaluation settings, in the orchestrator's option form."""

    out = []
    for key, value in spec.evaluate.settings.items():
        text = value if isinstance(value, str) else yaml.safe_dump(value, default_flow_style=True).strip()
        if text.endswith("\n...") or text.endswith("..."):
            text = text.split("\n")[0]
        out.append(f"{key}={text}")
    if spec.data_dir and "eval.source_dir" not in spec.evaluate.settings:
        out.append(f"eval.source_dir={spec.data_dir}")
    return out


def eval_options(spec: StudySpec):
    return EvalOptions(datasets=list(spec.evaluate.datasets), limit=spec.evaluate.limit,
                       overrides=eval_overrides(spec))


def _eval_problems(spec: StudySpec) -> list[str]:
    managed = [k for k in spec.evaluate.settings if k in ("eval.datasets", "eval.limit", "model.name")]
    problems = [f"evaluate.settings: {k} is set by evaluate.datasets / evaluate.limit / the study" for k in managed]
    try:
        cfg = eval_options(spec).resolve()
    except ConfigError as exc:
        return problems + [f"evaluate: {p}" for p in exc.problems]
    return problems + _dataset_problems(cfg.eval.datasets, cfg.eval.scoring)


def _dataset_problems(entries: list[str], scoring: str) -> list[str]:
    """Each evaluation entry names a registered task (or a data file, found when its job runs) in a
    scoring mode that task allows, so a typo fails the plan instead of the first evaluation job
    after every training has run."""
    from ftlab.data.loading import is_custom_file  # lazy: ftlab.data.loading imports numpy
    from ftlab.eval.evaluator import PERPLEXITY, resolve_entry  # lazy: ftlab.eval.evaluator imports numpy
    from ftlab.eval.scoring.modes import split_entry  # lazy: ftlab.eval.scoring.modes imports numpy

    problems = []
    for entry in entries:
        ref = entry.split(":", 1)[1] if entry.startswith(PERPLEXITY + ":") else split_entry(entry)[0]
        if is_custom_file(ref):
            continue
        try:
            resolve_entry(entry, None, scoring)
        except FtlabError as exc:
            problems.append(f"evaluate.datasets: {entry!r}: {exc}")
    return problems


# Settings of `ftlab quantize` (QuantRunConfig) the study sets itself; in a variant they would
# silently fight the study. Every other setting is a variant key.
QUANT_MANAGED = {
    "model": "every trained model (and, with quantize.base, every base snapshot) is quantized",
    "output": "the study names every folder itself",
    "overwrite": "a study never overwrites a folder",
    "threads": "use `ftlab study run --threads`",
    "data_dir": "set data_dir: at the top of the study file",
}
VARIANT_KEYS = [name for name in SETTINGS if name not in QUANT_MANAGED]


def variant_config(variant: dict, calib: str | None = None, data_dir: str | None = None) -> QuantRunConfig:
    """The `ftlab quantize` config of one variant (raises ConfigError): calibration on `calib` (the
    training dataset) unless the variant names its own calib_dataset."""
    flat = {k: v for k, v in variant.items() if k in VARIANT_KEYS}
    if calib and not flat.get("calib_dataset"):
        flat["calib_dataset"] = calib
    if data_dir:
        flat["data_dir"] = data_dir
    tree, _ = tree_of(flat, SETTINGS, "quantize")
    return load_quant_config(base=tree)


def _completed(cfg: QuantRunConfig, model_config: dict | None):
    """The completed QuantizationSpec: defaults filled in (the group size fitted to the base model's
    layer widths when its config.json is known), checked against those widths."""
    spec = complete_spec(cfg.spec(), model_config)
    problems = get_engine(spec.method).model_problems(spec, model_config) if model_config else []
    if problems:
        raise FtlabError("; ".join(problems))
    return spec


def quant_spec(variant: dict, model_config: dict | None = None):
    """The completed QuantizationSpec of one variant (raises ConfigError / FtlabError)."""
    return _completed(variant_config(variant), model_config)


def quant_job(spec: StudySpec, variant: dict, calib: str, model_config: dict | None) -> tuple[Any, dict, dict]:
    """One variant's quantize job from a model trained on `calib`: its completed spec (the tag), the
    payload its identity hashes, and the `ftlab quantize` config it runs with."""
    cfg = variant_config(variant, calib, spec.data_dir)
    q = _completed(cfg, model_config)
    # The job runs with the completed bits and group size, so its folder carries the tag planned here.
    cfg.quant.bits, cfg.quant.group_size = q.bits, q.group_size
    return q, quant_identity(cfg, q), config_to_dict(cfg)


def _quant_problems(spec: StudySpec) -> list[str]:
    problems = []
    for i, variant in enumerate(spec.quantize.variants):
        if not isinstance(variant, dict) or "method" not in variant:
            continue  # reported by validate()
        label = f"quantize.variants[{i}]"
        problems += [f"{label}.{k} is set by the study ({QUANT_MANAGED[k]})" for k in variant if k in QUANT_MANAGED]
        problems += tree_of({k: v for k, v in variant.items() if k not in QUANT_MANAGED}, VARIANT_KEYS, label)[1]
        wrong = whole_number_problems(variant, label)
        problems += wrong
        if wrong:
            continue
        try:
            quant_spec(variant)
        except ConfigError as exc:
            problems += [f"{label}: {p}" for p in flat_problems(exc.problems)]
        except FtlabError as exc:
            problems.append(f"{label}: {exc}")
    tags = []
    for variant in spec.quantize.variants:
        try:
            tags.append(quant_spec(variant).tag)
        except (FtlabError, KeyError, TypeError, AttributeError):
            continue
    if len(set(tags)) != len(tags):
        problems.append(f"quantize.variants: two variants give the same quant tag ({', '.join(tags)})")
    return problems


def spec_summary(spec: StudySpec) -> dict:
    return config_to_dict(spec)
