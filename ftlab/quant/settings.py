"""The quantize stage's typed config, `QuantRunConfig`, in the form of `TrainRunConfig`: defaults <
YAML < `key=value` overrides, every problem reported at once.

Each setting is one field here and is read from it by the three places that used to spell it
again: `ftlab quantize`'s flags are generated from the fields (`--bits 4` is `quant.bits=4`), a
study's quantize variant is checked against them when it is planned (its keys are the field names,
flat: `{method: HQQ, bits: 4, options: {optimize: true}}`), and the study's quantize job hands the
config to `ftlab quantize --config`. An engine's own settings are `quant.options`, checked against
the chosen engine's declared `EngineOption`s (`ftlab quantize --list-methods` shows them).
"""

from __future__ import annotations

import dataclasses
import re
import typing
from dataclasses import dataclass, field
from typing import Any, Iterable

from ftlab.config import RUN_ONLY, config_to_dict, doc_field, keys_with_effect, load_config
from ftlab.errors import ConfigError, FtlabError
from ftlab.quant.registry import complete_spec, get_engine, method_names
from ftlab.kinds.quant import QuantizationSpec
from ftlab.registry import closest


@dataclass
class QuantSpecSettings:
    """What the quantized weights are: these fields make up the `QuantizationSpec`."""

    method: str | None = doc_field(None, f"quantization method: {', '.join(method_names())}")
    bits: int | None = doc_field(None, "weight bits; None = the method's (usually 4)")
    group_size: int | None = doc_field(None, "weights per quantization group, -1 = per channel; None = the method's, "
                                             "fitted to the model's layer widths for GPTQ/AWQ")
    lm_head: str | None = doc_field(None, "dtype the unquantized output head (and the other unquantized tensors) are "
                                          "kept in: bf16, fp16, fp32; recorded in the tag as head<dtype>; None = the method's")
    options: dict = doc_field({}, "the method's own settings, e.g. HQQ's {axis: 0, optimize: true} "
                                  "(`ftlab quantize --list-methods` shows each method's options and defaults)")

    def validate(self) -> list[str]:
        if not self.method:
            return [f"quant.method is required: one of {', '.join(method_names())}"]
        try:
            engine = get_engine(self.method)
        except FtlabError as exc:
            return [f"quant.method: {exc}"]
        valid = list(engine.settable_extra)  # what QuantEngine.complete accepts in `spec.extra`
        problems = []
        for name, value in self.options.items():
            if name not in valid:
                hint = closest(str(name), valid)
                problems.append(f"quant.options: {engine.name} has no option {name!r}"
                                + (f" (did you mean {hint!r}?)" if hint else "") + f"; valid: {', '.join(valid) or 'none'}")
            elif name in engine.options:
                try:
                    engine.options[name].parse(name, value, engine.name)
                except FtlabError as exc:
                    problems.append(f"quant.options: {exc}")
        if not problems:
            try:  # the engine's own rules on the combination (a GGUF type and its bits)
                complete_spec(self.spec())
            except ConfigError as exc:
                problems += [f"quant: {p}" for p in exc.problems]
            except FtlabError as exc:
                problems.append(f"quant: {exc}")
        return problems

    def spec(self) -> QuantizationSpec:
        """The requested spec (engine defaults are filled in by `complete_spec`)."""
        lm_head = self.lm_head.lower() if self.lm_head else None
        return QuantizationSpec(method=get_engine(self.method).method, bits=self.bits, group_size=self.group_size,
                                lm_head_dtype=lm_head, compute_dtype=lm_head, extra=dict(self.options))


@dataclass
class QuantDataSettings:
    """The texts it calibrates on and measures fidelity with."""

    calib_dataset: str | None = doc_field(None, "task name or data file used for calibration (train split) and, by "
                                                "default, for the fidelity measurement (test split); None = the source "
                                                "model's training task (its training_metadata.json), else openmath")
    calib_samples: int = doc_field(128, "calibration texts (GPTQ, AWQ)")
    fidelity_dataset: str | None = doc_field(None, "held-out task for fidelity to the source: answer-token KL, top-1 "
                                                   "agreement, answer perplexity; None = the calibration task. A "
                                                   "default task whose texts cannot be had offline is skipped with a "
                                                   "warning; a named one is an error")
    fidelity_samples: int = doc_field(64, "held-out texts for the fidelity measurement")
    fidelity: bool = doc_field(True, "measure fidelity to the source (source and quantized forward passes)")
    max_length: int = doc_field(512, "token cap per calibration and held-out text")
    data_dir: str | None = doc_field(None, "folder with <split>-<task>.parquet files (else Datasets/)", effect=RUN_ONLY)

    def validate(self) -> list[str]:
        return [f"data.{name}={getattr(self, name)} must be a positive integer"
                for name in ("calib_samples", "fidelity_samples", "max_length") if getattr(self, name) <= 0]


@dataclass
class QuantIOSettings:
    """Which model it reads, where it writes, how it runs."""

    model: str | None = doc_field(None, "model folder (Models/X, a run name under Models/, a merged fine-tune or an "
                                        "adapter folder, which is merged first) or a built-in model name")
    output: str | None = doc_field(None, "output folder name under Models/; None = Models/<model name with quant tag>",
                                   effect=RUN_ONLY)
    overwrite: bool = doc_field(False, "replace an existing output folder", effect=RUN_ONLY)
    threads: int | None = doc_field(None, "torch threads; None = all cores", effect=RUN_ONLY)


@dataclass
class QuantRunConfig:
    quant: QuantSpecSettings = field(default_factory=QuantSpecSettings)
    data: QuantDataSettings = field(default_factory=QuantDataSettings)
    run: QuantIOSettings = field(default_factory=QuantIOSettings)

    def spec(self) -> QuantizationSpec:
        return self.quant.spec()


def load_quant_config(yaml_path=None, overrides: Iterable[str] = (), base: dict | None = None) -> QuantRunConfig:
    """`ftlab.config.load_config` for the quantize stage (raises ConfigError with every problem)."""
    return load_config(QuantRunConfig, yaml_path, overrides, base=base)


@dataclass(frozen=True)
class Setting:
    """One field of QuantRunConfig: its section, name, type and dataclass field."""

    section: str
    name: str
    type: Any
    declared: dataclasses.Field

    @property
    def key(self) -> str:
        return f"{self.section}.{self.name}"

    @property
    def default(self) -> Any:
        f = self.declared
        return f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]

    @property
    def doc(self) -> str:
        return str(self.declared.metadata.get("doc", ""))

    @property
    def effect(self) -> str:
        return self.declared.metadata["effect"]

    def is_whole_number(self) -> bool:
        return self.type is int or self.type == int | None


def settings() -> list[Setting]:
    """Every field of QuantRunConfig, in order; names are unique across sections (a study's
    variant and the CLI's flags use them without the section)."""
    out = []
    for section in dataclasses.fields(QuantRunConfig):
        cls = typing.get_type_hints(QuantRunConfig)[section.name]
        hints = typing.get_type_hints(cls)
        out += [Setting(section.name, f.name, hints[f.name], f) for f in dataclasses.fields(cls)]
    return out


_ALL = settings()
SETTINGS = {s.name: s for s in _ALL}
if len(SETTINGS) != len(_ALL):  # a flat name would mean two fields
    raise TypeError("QuantRunConfig field names must be unique across its sections")

# Whole-number settings whose default (None) is no example of a value.
_EXAMPLES = {"bits": 4, "group_size": 128}


def flat_problems(problems: Iterable[str]) -> list[str]:
    """Problems with section-qualified keys (`data.calib_samples=0 ...`) as the flat names a study
    variant uses (`calib_samples=0 ...`)."""
    pattern = re.compile(r"(?<![\w.-])(?:" + "|".join(re.escape(s.key) for s in SETTINGS.values()) + r")(?![\w])")
    return [pattern.sub(lambda m: m.group(0).split(".", 1)[1], p) for p in problems]


def whole_number_problems(flat: dict, label: str) -> list[str]:
    """YAML values of whole-number settings that are not whole numbers (`bits: four`), named
    `<label>.<key>`; `ftlab quantize` parses its flags as integers itself."""
    out = []
    for key, value in flat.items():
        s = SETTINGS.get(key)
        if s is None or not s.is_whole_number() or value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int):
            out.append(f"{label}.{key}={value!r} must be a whole number (e.g. {_EXAMPLES.get(key, s.default)})")
    return out


def tree_of(flat: dict, allowed: Iterable[str], label: str) -> tuple[dict, list[str]]:
    """Flat settings (`{bits: 4, calib_samples: 64}`) as a config tree; keys outside `allowed` are
    problems naming the closest allowed key."""
    allowed = list(allowed)
    tree: dict = {}
    problems = []
    for key, value in flat.items():
        if key not in allowed:
            hint = closest(str(key), allowed)
            problems.append(f"unknown key {label}.{key}" + (f" (did you mean {hint!r}?)" if hint else "")
                            + f"; valid: {', '.join(allowed)}")
            continue
        tree.setdefault(SETTINGS[key].section, {})[key] = value
    return tree, problems


# The first study quantize jobs hashed their completed spec plus these two; settings added since
# enter a job's identity only when set away from their default, so old jobs keep their ids.
_ALWAYS_IN_IDENTITY = ("calib_dataset", "calib_samples")


def identity(cfg: QuantRunConfig, completed: QuantizationSpec) -> dict:
    """What a quantize job's identity hashes: the completed spec (engine defaults filled in, so an
    option left at its default and the same option given are one job) and every other setting
    whose effect is not run-only (`ftlab.config.RUN_ONLY`: threads, data folder, output folder).
    The source model is left out: the source job's id stands for it."""
    run_only = keys_with_effect(QuantRunConfig, RUN_ONLY)
    tree = config_to_dict(cfg)
    out: dict = {"spec": completed.to_dict()}
    for s in SETTINGS.values():
        if s.section == "quant" or (s.section, s.name) in run_only or s.key == "run.model":
            continue
        value = tree[s.section][s.name]
        if s.name in _ALWAYS_IN_IDENTITY or value != s.default:
            out[s.name] = value
    return out
