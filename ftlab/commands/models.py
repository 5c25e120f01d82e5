"""`ftlab models`: built-in offline models, scratch presets and the model folders under Models/."""

from __future__ import annotations

import argparse

from ftlab.errors import FtlabError
from ftlab.io import dir_size_bytes
from ftlab.models.scratch import SCRATCH_PRESETS
from ftlab.models.sources import BUILTIN_MODELS, builtin_folder
from ftlab.paths import Workspace, cache_dir
from ftlab.schema import load_training_metadata


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--convert", metavar="NAME", default=None,
                   help="convert a built-in model to its cached HF folder now (otherwise done on first use)")


def list_model_folders(models_dir) -> list[dict]:
    rows = []
    if not models_dir.is_dir():
        return rows
    for d in sorted(models_dir.iterdir()):
        if not d.is_dir() or d.name.startswith("."):
            continue
        try:
            meta = load_training_metadata(d, required=False)
        except FtlabError as exc:
            rows.append({"name": d.name, "status": f"bad metadata: {exc}"})
            continue
        q = (meta or {}).get("quantization") or {}
        rows.append({
            "name": d.name,
            "status": "ok" if meta else "no training_metadata.json",
            "base": ((meta or {}).get("base_model") or {}).get("ref"),
            "quant": q.get("method"),
            "adapter": bool((meta or {}).get("adapter_only")),
            "size_mb": round(dir_size_bytes(d) / 2**20, 1),
        })
    return rows


def run(args: argparse.Namespace) -> int:
    if args.convert:
        print(builtin_folder(BUILTIN_MODELS.canonical(args.convert)))
        return 0
    print("Built-in offline models (from installed wheels):")
    for name, b in BUILTIN_MODELS.items():
        cached = (cache_dir() / "models" / name / "config.json").exists()
        try:
            b.locate() if name == "smollm2-135m-instruct" else None
            avail = "installed"
        except Exception as exc:  # a missing wheel is reported, not fatal, in a listing
            avail = f"missing ({exc})"
        print(f"  {name:<24} {avail}{', converted' if cached else ''}  [{b.package}, {b.license}] {b.doc}")
    print("Scratch presets (scratch:<preset>):")
    for name, p in SCRATCH_PRESETS.items():
        print(f"  scratch:{name:<16} hidden {p.hidden_size}, {p.num_hidden_layers} layers  {p.doc}")
    ws = Workspace.default()
    rows = list_model_folders(ws.models_dir)
    print(f"Model folders in {ws.models_dir}: {len(rows)}")
    for r in rows:
        extra = f" base={r.get('base')} quant={r.get('quant')} adapter={r.get('adapter')} {r.get('size_mb')} MB" if r["status"] == "ok" else ""
        print(f"  {r['name']}  [{r['status']}]{extra}")
    return 0
