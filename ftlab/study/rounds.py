"""An adaptive study's rounds as a file, `Testing/studies/<name>/rounds.json`: per round, the
design it ran (recipe label -> [seeds, items]) and, once its look is made, the decision
(`ftlab.study.sequential.Decision.to_dict`). The file is the study's commitment: a recorded
decision is never recomputed, so a rerun after a crash (between rounds or within one) runs the
same rounds and each job once. It also pins the settings the decisions were made under."""

from __future__ import annotations

import json
from pathlib import Path

from ftlab.config import config_to_dict, dotted_changes
from ftlab.errors import FtlabError
from ftlab.io import atomic_write_json, read_json, to_jsonable
from ftlab.study.levels import PER_RECIPE
from ftlab.study.spec import BASE, Recipe, StudySpec

ROUNDS_FILE = "rounds.json"
ROUNDS_SCHEMA = 1


def pinned_settings(spec: StudySpec) -> dict:
    """What a recorded decision depends on: the whole study file but the analysis settings that only
    shape the descriptive tables (power, confidence, resamples, planning assumptions). Changing any
    of it mid-study would mix two designs."""
    doc = config_to_dict(spec)
    a = spec.analysis
    doc["analysis"] = {"alpha": a.alpha, "pair_seeds": a.pair_seeds, "min_difference": a.min_difference}
    if a.seed_spread != PER_RECIPE:  # only when set: rounds recorded before the setting existed read unchanged
        doc["analysis"]["seed_spread"] = a.seed_spread
    if not spec.adaptive.futility:  # likewise
        doc.get("adaptive", {}).pop("futility", None)
    return json.loads(json.dumps(to_jsonable(doc)))  # as it reads back from the file


def _changes(recorded, now, shown: int = 3) -> str:
    """The settings that differ, as `key: recorded -> now` (dotted keys, the first `shown`): a
    default that changed between ftlab versions reads as a change too, and names what to pin."""
    out = [f"{key}: {json.dumps(a)} -> {json.dumps(b)}" for key, a, b in dotted_changes(recorded, now)]
    more = f" and {len(out) - shown} more" if len(out) > shown else ""
    return "; ".join(out[:shown]) + more


def first_design(spec: StudySpec, recipes: list[Recipe]) -> dict[str, tuple[int, int]]:
    items = spec.adaptive.items
    return {BASE: (1, items), **{r.label: (spec.adaptive.seeds, items) for r in recipes}}


def read_rounds(folder: Path, spec: StudySpec, recipes: list[Recipe]) -> list[dict]:
    """The recorded rounds (at least the first, which is not written until it runs)."""
    path = folder / ROUNDS_FILE
    if not path.is_file():
        return [{"designs": first_design(spec, recipes), "decision": None}]
    doc = read_json(path, "adaptive rounds file")
    fix = f"restore the study file's settings, or delete {path} to start the rounds over (finished jobs are reused)"
    if not isinstance(doc, dict) or doc.get("schema") != ROUNDS_SCHEMA or not isinstance(doc.get("rounds"), list):
        raise FtlabError(f"{path} is not an ftlab rounds file of schema {ROUNDS_SCHEMA}; {fix}")
    now = pinned_settings(spec)
    if doc.get("settings") != now:
        raise FtlabError(f"{path}: the study's settings changed since round 1 ({_changes(doc.get('settings'), now)}; its "
                         f"decisions were made under the recorded ones); {fix}")
    labels = sorted(r.label for r in recipes)
    if sorted(doc.get("recipes") or []) != labels:
        raise FtlabError(f"{path}: the study's recipes changed since round 1; {fix}")
    rounds = []
    for i, entry in enumerate(doc["rounds"]):
        designs = entry.get("designs") if isinstance(entry, dict) else None
        if not isinstance(designs, dict) or set(designs) != {BASE, *labels}:
            raise FtlabError(f"{path}: round {i + 1} has no design for every recipe; {fix}")
        rounds.append({"designs": {k: (int(v[0]), int(v[1])) for k, v in designs.items()},
                       "decision": entry.get("decision")})
    return rounds or [{"designs": first_design(spec, recipes), "decision": None}]


def write_rounds(folder: Path, spec: StudySpec, recipes: list[Recipe], rounds: list[dict]) -> Path:
    return atomic_write_json(folder / ROUNDS_FILE, {
        "schema": ROUNDS_SCHEMA, "settings": pinned_settings(spec), "recipes": [r.label for r in recipes],
        "rounds": [{"designs": {k: list(v) for k, v in r["designs"].items()}, "decision": r["decision"]}
                   for r in rounds]})


def current_design(folder: Path, spec: StudySpec, recipes: list[Recipe]) -> dict[str, tuple[int, int]]:
    """The design of the latest round: what the study's job graph holds now."""
    return read_rounds(folder, spec, recipes)[-1]["designs"]
