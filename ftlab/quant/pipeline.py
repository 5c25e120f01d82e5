"""One post-training quantization run: model folder in, `Models/<name with quant tag>/` out.

Order matters for the "nothing half-written" rule: every check (method, bits, dtype, architecture,
output folder, datasets) runs before the first model is loaded, and the output is built in a
staging folder that only becomes visible once metadata and perplexity are written.
"""

from __future__ import annotations

import contextlib
import gc
import json
import logging
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from ftlab.env import PeakMemory
from ftlab.errors import FtlabError
from ftlab.io import atomic_write_text, dir_size_bytes, staging_dir
from ftlab.kinds.quant import QuantizationSpec
from ftlab.models.sources import adapter_base_ref, load_model, load_tokenizer, resolve_model
from ftlab.naming import build_run_name, output_folder, with_quant_tag
from ftlab.paths import Workspace
from ftlab.quant import fidelity
from ftlab.quant.calibration import task_texts
from ftlab.quant.registry import QuantJob, check_supported, complete_spec, get_engine, load_quantized, torch_dtype
from ftlab.schema import model_metadata, write_model_metadata

log = logging.getLogger(__name__)

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf")
# Files a source folder may hold that describe the source, not the quantized model.
_NOT_COPIED = {"training_metadata.json", "README.md", "resolved_config.yaml", "log_history.json"}


@dataclass
class QuantRequest:
    model: str  # folder, run name under Models/, or any ref ftlab.models.sources resolves
    spec: QuantizationSpec  # method plus whatever the user set; engine defaults fill the rest
    calib_dataset: str | None = None  # None: the source's training task (`default_task`)
    calib_samples: int = 128
    fidelity_dataset: str | None = None  # held-out task for fidelity vs the source (None: calib_dataset)
    fidelity_samples: int = 64
    max_length: int = 512
    output: Path | None = None  # default: Models/<source name with the quant tag replaced>
    overwrite: bool = False
    source_dir: Path | None = None  # where task parquet files live (else Datasets/, $FTLAB_DATASETS)
    measure_fidelity: bool = True


# The task a model whose metadata names no registered training task calibrates and is measured on.
FALLBACK_TASK = "openmath"


def default_task(metadata: dict | None) -> str:
    """The calibration and fidelity task when the user names none: the source model's own training
    task (`ftlab.data.tasks.trained_task`) when it is a registered task, else `FALLBACK_TASK`."""
    from ftlab.data.tasks import TASKS, trained_task  # lazy: ftlab.data.tasks imports numpy (through the answer kinds)

    trained = trained_task(metadata)
    return trained if trained and trained in TASKS else FALLBACK_TASK


@dataclass
class DataPlan:
    """Which texts a request calibrates on and measures fidelity with, and whether the user named them."""

    calib: str
    calib_asked: bool
    fidelity: str | None  # None with --no-fidelity
    fidelity_asked: bool
    skipped: str | None = None  # why fidelity is not measured; None: it is

    @property
    def measures_fidelity(self) -> bool:
        return self.skipped is None

    def not_measured(self) -> dict | None:
        """`results.ptq.fidelity_not_measured`: what was not measured and why (None when it was)."""
        return None if self.skipped is None else {"dataset": self.fidelity, "reason": self.skipped}


_PUT = "put it in Datasets/ or give --data-dir DIR (ftlab datasets prepare --from DIR writes it)"


def plan_data(request: QuantRequest, metadata: dict | None, needs_calibration: bool,
              workspace: Workspace) -> DataPlan:
    """Resolves the default tasks and checks every task used (unknown names and data that cannot be
    had offline fail here, before the tokenizer or any model is loaded). Data the user named is a
    one-line error when it cannot be had; a default fidelity task is skipped with one warning line
    (the output records it as not measured); a default calibration task is an error naming the
    flag that replaces it (a calibrating method cannot run without texts)."""
    from ftlab.data.loading import DatasetUnavailable, missing_rows  # lazy: ftlab.data.loading imports numpy

    default = default_task(metadata)
    plan = DataPlan(calib=request.calib_dataset or default, calib_asked=bool(request.calib_dataset),
                    fidelity=request.fidelity_dataset or request.calib_dataset or default,
                    fidelity_asked=bool(request.fidelity_dataset or request.calib_dataset))
    if needs_calibration:
        reason = missing_rows(plan.calib, "train", workspace, request.source_dir)
        if reason:
            raise DatasetUnavailable(f"no calibration texts from {plan.calib}: {reason}; {_PUT}"
                                     + ("" if plan.calib_asked else ", or calibrate on another task or data file "
                                                                    "with --calib-dataset NAME"))
    if not request.measure_fidelity:
        plan.fidelity, plan.skipped = None, "not asked for (--no-fidelity)"
        return plan
    reason = missing_rows(plan.fidelity, "test", workspace, request.source_dir)
    if reason:
        fidelity_unavailable(plan, DatasetUnavailable(f"no held-out texts from {plan.fidelity}: {reason}"), _PUT)
    return plan


def fidelity_unavailable(plan: DataPlan, exc: Exception, fix: str | None = None) -> None:
    """The fidelity texts cannot be had: an error (with `fix`, when the message lacks one) if the
    user named them, else one warning line and the run goes on without the measurement."""
    if plan.fidelity_asked:
        raise type(exc)(f"{exc}; {fix}") if fix else exc
    log.warning("fidelity not measured: %s; to measure it, name a task or data file with --fidelity-dataset NAME, "
                "or give --data-dir DIR with its test-*.parquet file", exc)
    plan.skipped = str(exc)


def output_name(source_name: str, tag: str) -> str:
    """The source's run name with its quant tag replaced; names that are not run names get `_<tag>`."""

    try:
        return with_quant_tag(source_name, tag)
    except FtlabError:
        return f"{source_name}_{tag}"


def weights_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file() and p.suffix in WEIGHT_SUFFIXES)


def _model_config(folder: Path | None) -> dict | None:
    cfg = folder / "config.json" if folder else None
    if cfg is None or not cfg.is_file():
        return None
    try:
        return json.loads(cfg.read_text())
    except json.JSONDecodeError:
        raise FtlabError(f"{cfg} is not valid JSON; the source model folder is damaged") from None


def _device() -> str:
    import torch  # lazy: torch takes 3.3 s to import

    return "cuda" if torch.cuda.is_available() else "cpu"


def _release() -> None:
    """Returns freed model memory now (callers `del` their references first) so peaks stay honest."""
    gc.collect()
    with contextlib.suppress(Exception):
        import torch  # lazy: torch takes 3.3 s to import

        if torch.cuda.is_available():
            torch.cuda.empty_cache()


class _Source:
    """The source model as a plain transformers folder (adapters merged, built-ins converted)."""

    def __init__(self, ref: str, workspace: Workspace):
        # `Models/X` is written relative to the workspace in docs and scripts, not to the cwd.
        if not Path(ref).expanduser().exists() and (workspace.root / ref).is_dir():
            ref = str(workspace.root / ref)
        self.src = resolve_model(ref, workspace)
        self.workspace = workspace
        self.meta = self.src.metadata
        self._tmp: Path | None = None
        q = (self.meta or {}).get("quantization") or {}
        prior = QuantizationSpec.from_dict(q) if q else QuantizationSpec()
        if prior.method.is_ptq:
            raise FtlabError(f"{ref} is already quantized ({prior.tag}); quantize its unquantized source instead")

        kind = self.src.definition
        # Adapters are named like their merged form would be; refs that are not run folders become a
        # base snapshot. A plain folder (a built-in's cached conversion too) lets shape checks run early.
        self.name = self.src.path.name if kind.run_folder else build_run_name(self.src.base_name, None).render()
        self.plain_dir: Path | None = kind.model_folder(self.src)

    def config(self) -> dict | None:
        """config.json of the plain model, read before any weights load (an adapter's base's)."""
        if self.plain_dir is not None:
            return _model_config(self.plain_dir)
        if self.src.adapter:
            base = resolve_model(adapter_base_ref(self.src), self.workspace)
            return _model_config(base.definition.model_folder(base))
        return None  # nothing on disk to read (a hub id, a GGUF, scratch): shapes are checked once it is materialized

    def materialize(self) -> Path:
        """Writes a merged/converted copy to a temp folder when the source is not a plain folder."""
        if self.plain_dir is not None:
            return self.plain_dir

        log.info("merging/converting %s into a plain folder before quantizing", self.src.ref)
        model, tok, _ = load_model(self.src, workspace=self.workspace, dtype="fp32", merge_adapter=True)
        self._tmp = Path(tempfile.mkdtemp(prefix="ftlab-ptq-src-"))
        model.save_pretrained(self._tmp)
        tok.save_pretrained(self._tmp)
        del model
        _release()
        self.plain_dir = self._tmp
        return self._tmp

    def cleanup(self) -> None:
        if self._tmp is not None:
            shutil.rmtree(self._tmp, ignore_errors=True)

    def source_info(self) -> dict:
        return {"ref": self.src.ref, "path": str(self.src.path) if self.src.path else None, "name": self.name,
                "kind": self.src.kind, "adapter_merged": bool(self.src.adapter)}


def _metadata(source: _Source, name: str, spec: QuantizationSpec, ptq: dict) -> dict:
    prev = dict(source.meta or {})
    history = list(prev.pop("history", None) or [])
    if prev:
        # Earlier metadata without bulky/volatile parts keeps the lineage readable.
        history.append({k: v for k, v in prev.items() if k not in ("environment",)})
    base_model = prev.get("base_model") or {**source.src.describe(), "base_name": source.src.base_name}
    return model_metadata(
        run_name=name, base_model=base_model, dataset=prev.get("dataset"), method=prev.get("method"),
        peft=prev.get("peft"), adapter_only=False, merged=bool(prev.get("merged")) or bool(source.src.adapter),
        quantization=spec.to_dict(), history=history, training_args=prev.get("training_args"),
        results={"ptq": ptq}, source=source.source_info(),
    )


def _num(value: float | None, fmt: str = ".3f") -> str:
    return "not measured" if value is None else format(value, fmt)


def _model_card(meta: dict) -> str:
    ptq = meta["results"]["ptq"]
    spec = meta["quantization"]
    fid = ptq.get("fidelity") or {}
    size = ptq["size_on_disk_bytes"]
    skipped = (ptq.get("fidelity_not_measured") or {}).get("reason")
    texts = (f"{fid['samples']} held-out {fid['dataset']} texts, {fid['tokens']} answer tokens" if fid
             else "not measured" + (f": {skipped}" if skipped else ""))
    lines = [
        f"# {meta['run_name']}", "",
        f"Post-training quantization of `{meta['source']['name']}` with **{spec['method']}** "
        f"({spec.get('bits')} bits, group size {spec.get('group_size')}, backend `{spec.get('backend')}`), made by ftlab.", "",
        f"Fidelity to the source ({texts}; definitions of llama.cpp's `perplexity --kl-divergence`):", "",
        "| measure | source | quantized |", "|---|---|---|",
        f"| weights on disk (MB) | {size['weights_before'] / 2**20:.1f} | {size['weights_after'] / 2**20:.1f} |",
        f"| answer-token perplexity | {_num(fid.get('answer_perplexity_before'))} | {_num(fid.get('answer_perplexity_after'))} |",
        f"| mean KL(source ‖ quantized), nats / 99th percentile | 0 | {_num(fid.get('kl_mean'), '.4f')} / {_num(fid.get('kl_p99'))} |",
        f"| top-1 agreement with the source | 100% | {_num(100 * fid['top1_agreement'] if fid else None, '.1f')}% |",
        f"| whole-text perplexity (secondary: prompt tokens dominate it) | {_num(fid.get('whole_text_perplexity_before'))} | "
        f"{_num(fid.get('whole_text_perplexity_after'))} |",
        "", f"Quantization time: {ptq['quantization_time_s']:.1f} s; peak RSS {ptq['peak_memory']['peak_rss_mb']:.0f} MB.",
        "Calibration: " + (f"{c['samples']} texts from {c['dataset']} ({c['split']}), hash {c['hash']}."
                           if (c := ptq["calibration"]) else "none (calibration-free method)."), "",
        "Load with `ftlab.models.sources.load_model(folder)` (dispatches to the quantization registry).", "",
    ]
    return "\n".join(lines)


def _source_pass(src_dir: Path, workspace: Workspace, session, spec: QuantizationSpec) -> dict | None:
    """Runs the fp32 source over the held-out texts once; when the method computes in bf16/fp16,
    also measures the cast alone, so a reader can tell the dtype's share of the loss from the rounding's."""

    model, _, _ = load_model(str(src_dir), workspace=workspace, dtype="fp32")
    session.run_reference(model)
    cast = None
    if spec.compute_dtype and spec.compute_dtype != "fp32":
        cast = session.compare(model.to(torch_dtype(spec.compute_dtype)))
    del model
    _release()
    return cast


def quantize(request: QuantRequest, workspace: Workspace | None = None) -> Path:
    """Runs one PTQ request and returns the finished output folder."""

    workspace = workspace or Workspace.default()
    device = _device()
    engine = get_engine(request.spec.method)
    source = _Source(request.model, workspace)
    model_config = source.config()
    spec = complete_spec(request.spec, model_config)
    check_supported(spec, device=device, model_config=model_config)
    name = output_name(source.name, spec.tag)
    final = output_folder(request.output, workspace.models_dir, "--output") if request.output else workspace.models_dir / name
    if final.exists() and not request.overwrite:
        raise FtlabError(f"output folder {final} already exists; pass --overwrite to replace it")
    if request.max_length <= 0:
        raise FtlabError(f"max_length={request.max_length} must be positive")

    from ftlab.data.loading import DatasetUnavailable  # lazy: ftlab.data.loading imports numpy

    data = plan_data(request, source.meta, engine.caps.needs_calibration, workspace)
    try:
        tok = load_tokenizer(source.src, workspace)
    except (OSError, ValueError) as exc:
        first = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
        raise FtlabError(f"cannot load the tokenizer of {request.model} ({first}); the folder needs its tokenizer files") from None
    calib = None
    if engine.caps.needs_calibration:
        calib = task_texts(data.calib, "train", request.calib_samples, tok, workspace=workspace,
                           source_dir=request.source_dir)
        spec.calib_dataset, spec.calib_samples, spec.calib_hash = calib.name, len(calib.texts), calib.hash
    session = None
    if data.measures_fidelity:
        try:  # the hub was askable, and still failed
            held_out = task_texts(data.fidelity, "test", request.fidelity_samples, tok, workspace=workspace,
                                  source_dir=request.source_dir)
        except DatasetUnavailable as exc:
            fidelity_unavailable(data, DatasetUnavailable(f"no held-out texts from {data.fidelity}: {exc}"))
        else:
            session = fidelity.Session(tok, held_out, max_length=request.max_length)

    try:
        src_dir = source.materialize()
        check_supported(spec, device=device, model_config=_model_config(src_dir))
        cast_only = _source_pass(src_dir, workspace, session, spec) if session else None

        with staging_dir(final, overwrite=request.overwrite) as stage:
            job = QuantJob(source_dir=src_dir, out_dir=stage, spec=spec, tokenizer=tok,
                           calib_texts=calib.texts if calib else [], device=device, max_length=request.max_length,
                           name=final.name)
            log.info("quantizing %s with %s -> %s", source.name, spec.tag, final)
            with PeakMemory() as peak:
                t0 = time.perf_counter()
                engine.quantize(job)
                elapsed = time.perf_counter() - t0
            del job
            _release()
            if not engine.bundles_tokenizer:
                tok.save_pretrained(stage)
                for extra in ("chat_template.jinja", "generation_config.json"):
                    if (src_dir / extra).is_file() and not (stage / extra).exists():
                        shutil.copy2(src_dir / extra, stage / extra)

            measured = None
            if session is not None:
                qmodel = load_quantized(stage, spec)
                measured = session.compare(qmodel)
                del qmodel
                _release()
                log.debug("fidelity: %s", fidelity.summary_line(measured))
            ptq = {
                "calibration": calib.describe() if calib else None,
                "quantization_time_s": round(elapsed, 3),
                "peak_memory": peak.as_dict(),
                "size_on_disk_bytes": {
                    "weights_before": weights_bytes(src_dir), "weights_after": weights_bytes(stage),
                    "folder_before": dir_size_bytes(src_dir), "folder_after": dir_size_bytes(stage),
                },
                # Against the fp32 source, so it includes any cast to bf16/fp16; the cast alone is
                # `fidelity_of_cast` (absent when the method computes in fp32).
                "fidelity": measured and {**measured, "source_dtype": "fp32", "quantized_dtype": spec.compute_dtype},
                # Why `fidelity` is null (not asked for, or its texts could not be had): never a silent absence.
                "fidelity_not_measured": data.not_measured(),
                "fidelity_of_cast": cast_only and {**cast_only, "source_dtype": "fp32",
                                                   "quantized_dtype": spec.compute_dtype},
                "device": device,
            }
            meta = _metadata(source, final.name, spec, ptq)
            write_model_metadata(stage, meta)
            atomic_write_text(stage / "README.md", _model_card(meta))
    finally:
        source.cleanup()
    log.info("wrote %s", final)
    return final
