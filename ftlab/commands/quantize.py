"""`ftlab quantize` / `tools/quantize.py`: post-training quantization of a model folder.

Its flags are generated from `QuantRunConfig`'s fields (`ftlab.quant.settings`): `--group-size 64`
is `quant.group_size=64`, `--option axis=0` is `quant.options.axis=0`. Defaults < `--config` YAML
< flags < `key=value` overrides, every problem reported at once.
"""

from __future__ import annotations

import argparse
import json
import logging
import re
from pathlib import Path

from ftlab.config import describe_config
from ftlab.env import set_threads
from ftlab.errors import ConfigError, FtlabError
from ftlab.paths import Workspace
from ftlab.quant.fidelity import summary_line
from ftlab.quant.pipeline import QuantRequest, quantize
from ftlab.quant.registry import get_engine, method_names
from ftlab.quant.settings import SETTINGS, QuantRunConfig, Setting, load_quant_config
from ftlab.schema import load_training_metadata

log = logging.getLogger(__name__)

# How a field's flag differs from `--<name with dashes>` (`--no-<name>` for a setting that is on by
# default); the field's doc is the flag's help. Older spellings stay accepted as aliases.
_FLAGS: dict[str, dict] = {
    "options": {"flags": ("--option",), "metavar": "NAME=VALUE"},
    "lm_head": {"metavar": "DTYPE"},
    "fidelity_dataset": {"flags": ("--fidelity-dataset", "--ppl-dataset")},
    "fidelity_samples": {"flags": ("--fidelity-samples", "--ppl-samples")},
    "fidelity": {"flags": ("--no-fidelity", "--no-perplexity")},
}
# Settings `ftlab export` shares: it fixes the method and needs no calibration.
_EXPORT_SKIPS = ("calib_dataset", "calib_samples")


def _methods_doc() -> str:
    return ", ".join(method_names())


def flags_of(s: Setting) -> tuple[str, ...]:
    default = ("--no-" if s.type is bool and s.default else "--") + s.name.replace("_", "-")
    return _FLAGS.get(s.name, {}).get("flags", (default,))


def _add_flags(parser: argparse.ArgumentParser, selected: list[Setting]) -> None:
    for s in selected:
        extra = _FLAGS.get(s.name, {})
        shown = s.default not in (None, {}, False, True)
        help_text = s.doc + (f" (default: {s.default})" if shown else "")
        if s.type is bool:  # the flag of an on-by-default setting turns it off, and says so
            parser.add_argument(*flags_of(s), dest=s.name, default=None, action="store_false" if s.default else "store_true",
                                help=("do not " if s.default else "") + help_text)
        elif s.type is dict:
            parser.add_argument(*flags_of(s), dest=s.name, default=None, action="append", metavar=extra.get("metavar"),
                                help=help_text + "; repeatable")
        else:
            parser.add_argument(*flags_of(s), dest=s.name, default=None, metavar=extra.get("metavar"), help=help_text,
                                type=int if s.is_whole_number() else str)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    _add_flags(parser, [s for s in SETTINGS.values() if s.section == "quant" or s.name in _EXPORT_SKIPS
                        or s.name == "model"])
    add_output_arguments(parser)
    parser.add_argument("--config", metavar="FILE", default=None,
                        help="YAML file with quant:, data:, run: sections (--help-config lists every key)")
    parser.add_argument("--help-config", action="store_true", help="list every config key with its default and doc")
    parser.add_argument("--list-methods", action="store_true", help="print what each method supports and exit")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                        help="config overrides over --config and the flags, e.g. quant.options.axis=0")


def add_output_arguments(parser: argparse.ArgumentParser) -> None:
    """Fidelity, data, output and thread flags shared with `ftlab export`."""
    _add_flags(parser, [s for s in SETTINGS.values()
                        if s.section != "quant" and s.name not in _EXPORT_SKIPS and s.name != "model"])


def _flag_overrides(args: argparse.Namespace) -> tuple[list[str], set[str]]:
    """The flags given, as `key=value` overrides, and the keys they set."""
    out, keys = [], set()
    for s in SETTINGS.values():
        value = getattr(args, s.name, None)
        if value is None:
            continue
        keys.add(s.key)
        if s.type is dict:
            for item in value:
                name, sep, text = item.partition("=")
                if not sep or not name.strip():
                    raise FtlabError(f"--option {item!r} must look like NAME=VALUE (e.g. axis=0)")
                out.append(f"{s.key}.{name.strip()}={text.strip()}")
        elif s.type is bool:
            out.append(f"{s.key}={'true' if value else 'false'}")
        else:
            out.append(f"{s.key}={value}")
    return out, keys


def load_cli_config(args: argparse.Namespace, fixed: list[str] = ()) -> QuantRunConfig:
    """The config of a command line: defaults < --config < flags < `fixed` < `key=value` overrides.
    Problems name the flag for the settings a flag sets (or could have set)."""
    given, flag_keys = _flag_overrides(args)
    overrides = list(getattr(args, "overrides", None) or ())
    typed = [o.split("=", 1)[0].strip() for o in overrides]
    config = getattr(args, "config", None)
    try:
        return load_quant_config(config, [*given, *fixed, *overrides])
    except ConfigError as exc:
        named = {s.key: flags_of(s)[0] for s in SETTINGS.values()
                 if s.key not in typed and (s.key in flag_keys or not config)}
        pattern = re.compile(r"(?<![\w.-])(" + "|".join(re.escape(k) for k in named) + r")(?![\w])")
        raise ConfigError([pattern.sub(lambda m: named[m.group(1)], p) for p in exc.problems]) from None


def build_request(cfg: QuantRunConfig) -> QuantRequest:
    """The QuantRequest of `ftlab quantize` (or of `ftlab export`, whose config fixes the method)."""
    if not cfg.run.model:
        raise FtlabError("--model is required: a model folder, a run name under Models/ or a built-in model name")
    d, r = cfg.data, cfg.run
    return QuantRequest(
        model=r.model, spec=cfg.spec(), calib_dataset=d.calib_dataset, calib_samples=d.calib_samples,
        fidelity_dataset=d.fidelity_dataset, fidelity_samples=d.fidelity_samples, max_length=d.max_length,
        output=Path(r.output) if r.output else None, overwrite=r.overwrite,
        source_dir=Path(d.data_dir) if d.data_dir else None, measure_fidelity=d.fidelity,
    )


def run(args: argparse.Namespace) -> int:
    if args.list_methods:
        for name in method_names():
            print(json.dumps(get_engine(name).describe()))
        return 0
    if args.help_config:
        print("\n".join(describe_config(QuantRunConfig)))
        return 0
    return run_request(load_cli_config(args), getattr(args, "workdir", None))


def run_request(cfg: QuantRunConfig, workdir: str | None = None) -> int:
    request = build_request(cfg)
    set_threads(cfg.run.threads)
    folder = quantize(request, Workspace.at(workdir))
    _print_fidelity(folder)
    print(folder)
    return 0


def _print_fidelity(folder: Path) -> None:
    """What was lost, on the console (the folder path stays the last line, for scripts)."""
    ptq = load_training_metadata(folder)["results"]["ptq"]
    for key, label in (("fidelity_of_cast", "the dtype cast alone"), ("fidelity", "quantized")):
        if ptq.get(key):
            print(f"fidelity vs the fp32 source, {label}: {summary_line(ptq[key])}")
