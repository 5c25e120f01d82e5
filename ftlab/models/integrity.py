"""Cheap checks that a model folder is complete before anything loads it, and one line for any
load failure that gets past them.

An interrupted copy or download leaves a folder that looks fine by name: a `config.json` cut in
half, a `model.safetensors` whose header promises more bytes than the file holds, an index naming
a shard that never arrived. transformers then dies deep inside json/safetensors with a traceback.
These checks read only the small parts (JSON files, each safetensors header, 8 bytes + the header)
so they cost milliseconds, and name the damaged file and the fix.
"""

from __future__ import annotations

import contextlib
import functools
import json
import pickle
import struct
from pathlib import Path
from typing import Iterator

from safetensors import SafetensorError
from tqdm.auto import tqdm

from ftlab import console
from ftlab.errors import FtlabError

FIX = "re-copy or re-create it"
# JSON files transformers/peft/tokenizers read from a model folder; each must parse.
JSON_FILES = ("config.json", "generation_config.json", "adapter_config.json", "tokenizer_config.json",
              "tokenizer.json", "special_tokens_map.json", "added_tokens.json", "vocab.json",
              "quantize_config.json")
# A header bigger than this is not a header (safetensors itself caps it at 100 MB).
_MAX_HEADER = 100 * 2**20


def damaged(folder: Path, file: str, what: str) -> FtlabError:
    return FtlabError(f"model folder {folder} is damaged: {file} {what}; {FIX}")


def _read_json(folder: Path, name: str):
    path = folder / name
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise damaged(folder, name, "is not UTF-8 text") from None
    except json.JSONDecodeError as exc:
        # A copy that stopped early fails at its end, or inside the string it cut.
        cut = exc.pos >= len(exc.doc.rstrip()) or exc.msg.startswith("Unterminated string")
        what = "is cut short" if cut else f"is not valid JSON ({exc.msg}, line {exc.lineno})"
        raise damaged(folder, name, what) from None


def check_safetensors(folder: Path, name: str) -> None:
    """The 8-byte length, the JSON header and the byte range every tensor claims must fit the file."""
    path = folder / name
    size = path.stat().st_size
    with open(path, "rb") as fh:
        head = fh.read(8)
        if len(head) < 8:
            raise damaged(folder, name, f"is cut short ({size} bytes, not even a header)")
        (n,) = struct.unpack("<Q", head)
        if n > _MAX_HEADER or 8 + n > size:
            raise damaged(folder, name, f"is cut short (its header alone needs {8 + n} bytes, the file has {size})")
        try:
            header = json.loads(fh.read(n))
        except (UnicodeDecodeError, json.JSONDecodeError):
            raise damaged(folder, name, "has an unreadable header") from None
    if not isinstance(header, dict):
        raise damaged(folder, name, "has an unreadable header")
    try:
        end = max((int(v["data_offsets"][1]) for k, v in header.items() if k != "__metadata__"), default=0)
    except (TypeError, KeyError, ValueError, IndexError):
        raise damaged(folder, name, "has an unreadable header") from None
    expected = 8 + n + end
    if size < expected:
        raise damaged(folder, name, f"is cut short ({size} of {expected} bytes)")
    if size > expected:
        raise damaged(folder, name, f"has {size - expected} bytes more than its tensors ({size} vs {expected})")


def check_model_folder(folder: str | Path) -> None:
    """Raises one FtlabError naming the first damaged or missing file of a model or adapter folder."""
    folder = Path(folder)
    docs = {name: _read_json(folder, name) for name in JSON_FILES if (folder / name).is_file()}
    cfg = docs.get("config.json")
    if cfg is not None and (not isinstance(cfg, dict) or not isinstance(cfg.get("model_type"), str)):
        raise damaged(folder, "config.json", "has no model_type (it is empty or not a model config)")
    adapter = docs.get("adapter_config.json")
    if adapter is not None and (not isinstance(adapter, dict) or not adapter.get("peft_type")):
        raise damaged(folder, "adapter_config.json", "has no peft_type (it is empty or not a PEFT adapter config)")
    for index in sorted(folder.glob("*.safetensors.index.json")):
        doc = _read_json(folder, index.name)
        weight_map = doc.get("weight_map") if isinstance(doc, dict) else None
        if not isinstance(weight_map, dict) or not weight_map:
            raise damaged(folder, index.name, "has no weight_map")
        for shard in sorted(set(map(str, weight_map.values()))):
            if "/" in shard or "\\" in shard or not (folder / shard).is_file():
                raise damaged(folder, index.name, f"lists shard {shard}, which is missing")
    for path in sorted(folder.glob("*.safetensors")):
        check_safetensors(folder, path.name)


def _is_out_of_memory(exc: BaseException) -> bool:
    return isinstance(exc, MemoryError) or "out of memory" in str(exc).lower()


def _load_errors() -> tuple[type[BaseException], ...]:
    """What a damaged folder makes transformers, peft, safetensors, tokenizers and torch raise
    (programming errors such as TypeError/AttributeError are left alone so bugs stay visible)."""

    types: list[type[BaseException]] = [OSError, ValueError, KeyError, IndexError, EOFError, RuntimeError,
                                        pickle.UnpicklingError]
    with contextlib.suppress(ImportError):
        types.append(SafetensorError)
    return tuple(types)


@contextlib.contextmanager
def loading(folder: str | Path, what: str = "model folder") -> Iterator[None]:
    """Turns any load failure of `folder` into one line naming it and the fix (not out-of-memory,
    which is a resource problem, not a damaged file)."""
    try:
        yield
    except FtlabError:
        raise
    except _load_errors() as exc:
        if _is_out_of_memory(exc):
            raise
        if "ignore_mismatched_sizes" in str(exc):  # transformers 5: shapes differ from config.json
            raise FtlabError(f"{what} {folder} is damaged: its weights have other shapes than config.json "
                             f"describes; {FIX}") from None
        first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
        raise FtlabError(f"{what} {folder} could not be loaded ({type(exc).__name__}: {first}); "
                         f"its files are damaged or incomplete: {FIX}") from None


@contextlib.contextmanager
def quiet_loading() -> Iterator[None]:
    """transformers' own lines and bars while it reads local weights ("Loading weights", and for a
    GGUF "Converting and de-quantizing GGUF tensors") stay off the console unless -v: a local read,
    whose failure ftlab reports in one line of its own."""
    if console.VERBOSE:
        yield
        return
    from transformers import modeling_gguf_pytorch_utils as gguf_utils  # lazy: transformers takes 1.3 s (and torch)
    from transformers.utils import logging as hf_logging  # lazy: transformers takes 1.3 s (and torch)

    previous = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    hf_logging.set_tqdm_hook(lambda factory, args, kwargs: hf_logging.EmptyTqdm(*args, **kwargs))
    gguf_bar = gguf_utils.tqdm  # the GGUF reader takes tqdm itself, not through transformers' hook
    gguf_utils.tqdm = functools.partial(tqdm, disable=True)
    try:
        yield
    finally:
        gguf_utils.tqdm = gguf_bar
        hf_logging.set_verbosity(previous)
        hf_logging.set_tqdm_hook(None)


@contextlib.contextmanager
def load_report_as_error(folder: str | Path) -> Iterator[dict]:
    """transformers 5 fills tensors missing from a checkpoint with random values and only logs a
    report; from a local folder that is a damaged folder, and a model scored with random layers
    would publish wrong numbers. The block passes `output_loading_info=True` and puts the info in
    the yielded dict; transformers' own report and its per-tensor "Loading weights" bar (a local
    read) are silenced unless -v, so a failure prints only its one line."""
    info: dict = {}
    with quiet_loading(), loading(folder):
        yield info
    missing = sorted(info.get("missing_keys") or [])
    if missing:
        raise FtlabError(f"model folder {folder} is damaged: its weights lack {len(missing)} tensor(s) that "
                         f"config.json needs (e.g. {missing[0]}); {FIX}")
