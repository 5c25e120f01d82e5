"""A study expanded into its job graph: per base model a snapshot (evaluated as the baseline), per
recipe and seed a training job trained from that snapshot, per trained model each PTQ variant,
and an evaluation of every model. Jobs are listed depth-first (a recipe's training, then its
evaluation and quantized variants) so that with several workers results arrive early.

A job's id hashes its resolved settings and its inputs' ids, so a changed key changes the id of
its job and of everything downstream, and only those run again; the model folder it builds is
named `<run name>.v<first 8 digits of the id>`.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from ftlab.config import RUN_ONLY, TrainRunConfig, config_to_dict, config_without, keys_with_effect, load_config
from ftlab.io import atomic_write_json, read_json
from ftlab.jobs.backends import cuda_device_count
from ftlab.jobs.engine import Job, Resources, job_id
from ftlab.jobs.engine import job_id as identity
from ftlab.jobs.kinds import EVALUATE, evaluation_data
from ftlab.models.sources import resolve_model
from ftlab.naming import VARIANT_DIGITS, build_run_name, parse_run_name, peft_tag
from ftlab.paths import Workspace
from ftlab.study.spec import BASE, Recipe, StudySpec, eval_options, quant_job, recipe_config
from ftlab.train.base_quant import quantization_spec

NONE = "none"  # the quant column of unquantized models
# Keys that change how a job runs, not what it produces (marked on the config fields, as for the
# training checkpoint's fingerprint, which also ignores what happens after training).
NOT_IDENTITY = keys_with_effect(TrainRunConfig, RUN_ONLY)


@dataclass
class StudyGraph:
    jobs: list[Job] = field(default_factory=list)
    # evaluate job id -> what its results mean in the report (recipe, seed, quant, source model)
    evaluations: dict[str, dict] = field(default_factory=dict)

    def add(self, job: Job) -> Job:
        if all(j.id != job.id for j in self.jobs):
            self.jobs.append(job)
        return job

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for j in self.jobs:
            out[j.kind] = out.get(j.kind, 0) + 1
        return out


def identity_config(cfg: TrainRunConfig) -> dict:
    tree = config_without(cfg, NOT_IDENTITY)
    tree["model"].pop("name", None)  # the snapshot's id stands for the base model
    return tree


def _variant(job_hash: str) -> str:
    return job_hash[:VARIANT_DIGITS]


def _wants_gpu() -> float:
    return 1.0 if cuda_device_count() else 0.0


def resources_of(spec: StudySpec, kind: str, default_gpus: float) -> Resources:
    """What a job of `kind` reserves: the study's resources.<kind>, over the defaults (its threads'
    CPUs; a GPU when this machine has one, except for snapshots)."""
    declared = getattr(spec.resources, kind)
    return Resources(cpus=declared.cpus, gpus=default_gpus if declared.gpus is None else float(declared.gpus),
                     memory_gb=float(declared.memory_gb),
                     custom=tuple(sorted((str(k), float(v)) for k, v in declared.custom.items())))


def base_config(src, workspace: Workspace) -> dict | None:
    """The base model's config.json (PTQ group sizes are fitted to its layer widths), cached in the
    job folder: finding it may convert a built-in model or ask the hub, which a plan should pay
    once, not on every no-op rerun. None when it cannot be had (no hub): the defaults apply."""

    path = workspace.jobs_dir / "configs" / f"{identity('config', {'ref': src.ref, 'revision': src.revision}, [])}.json"
    if path.is_file():
        return read_json(path, "cached model config")
    config = src.definition.model_config(src)
    if config is not None:
        atomic_write_json(path, config)
    return config


def build_graph(spec: StudySpec, recipes: list[Recipe], workspace: Workspace,
                design: dict[str, tuple[int, int]] | None = None) -> StudyGraph:
    """The study's jobs. `design` (an adaptive study's current round): recipe label (BASE for the
    base snapshots) -> (seeds, items): the first `seeds` of train.seeds and the first `items` test
    rows of each task; None: every recipe with every seed, on evaluate.limit items."""
    g = StudyGraph()
    gpu = _wants_gpu()
    res = {kind: resources_of(spec, kind, 0.0 if kind == "snapshot" else gpu)
           for kind in ("snapshot", "train", "quantize", EVALUATE)}
    fixed = eval_options(spec)
    snapshots: dict[str, Job] = {}

    def evaluate(model_job: Job, info: dict) -> None:
        options = fixed if design is None else replace(fixed, limit=design[info["recipe"]][1])
        payload = {"datasets": options.datasets, "limit": options.limit, "overrides": options.overrides}
        job = g.add(Job(job_id(EVALUATE, payload, [model_job.id]), EVALUATE, model_job.name,
                        (model_job.id,), evaluation_data(model_job.name, options), res[EVALUATE], info))
        g.evaluations[job.id] = info

    def quantize(source: Job, calib: str, info: dict, model_config: dict | None) -> None:
        for variant in spec.quantize.variants:
            q, payload, config = quant_job(spec, variant, calib, model_config)
            jid = job_id("quantize", payload, [source.id])
            name = parse_run_name(source.name).with_quant_tag(q.tag).with_variant(_variant(jid)).render()
            data = {"source": source.name, "config": config}
            job = g.add(Job(jid, "quantize", name, (source.id,), data, res["quantize"], {**info, "quant": q.tag}))
            evaluate(job, {**info, "quant": q.tag, "model": name, "source_model": source.name})

    configs: dict[str, dict | None] = {}
    for base in spec.bases:
        src = resolve_model(base, revision=spec.train.fixed.get("model.revision"))
        configs[base] = base_config(src, workspace) if spec.quantize.variants else None
        # The snapshot pins the base: fixed model.* keys (revision, dtype) apply to it too.
        model_keys = {k: v for k, v in spec.train.fixed.items() if k.startswith("model.")}
        snap_cfg = load_config(TrainRunConfig, base=_snapshot_tree(base, model_keys))
        payload = {"base": base, "model": {k: v for k, v in config_to_dict(snap_cfg.model).items() if k != "name"}}
        sid = job_id("snapshot", payload, [])
        name = build_run_name(src.base_name, None).with_variant(_variant(sid)).render()
        info = {"recipe": BASE, "seed": None, "quant": NONE, "base": base, "dataset": None, "model": name,
                "source_model": None, "role": "base"}
        snap = g.add(Job(sid, "snapshot", name, (), {"config": config_to_dict(snap_cfg)}, res["snapshot"], info))
        snapshots[base] = snap
        evaluate(snap, info)
        if spec.quantize.base:
            quantize(snap, spec.datasets[0], info, configs[base])

    for recipe in recipes:
        snap = snapshots[recipe.base]
        for seed in (spec.train.seeds if design is None else spec.train.seeds[:design[recipe.label][0]]):
            cfg = recipe_config(spec, recipe, seed)
            tid = job_id("train", identity_config(cfg), [snap.id])
            src = resolve_model(recipe.base)
            run = build_run_name(src.base_name, cfg.data.dataset, cfg.train.method,
                                 peft_tag(cfg.peft.method, cfg.peft.r), _quant_tag(cfg))
            name = run.with_variant(_variant(tid)).render()
            info = {"recipe": recipe.label, "seed": seed, "quant": NONE, "base": recipe.base,
                    "dataset": recipe.dataset, "model": name, "source_model": None, "role": "recipe"}
            job = g.add(Job(tid, "train", name, (snap.id,), {"config": config_to_dict(cfg), "source": snap.name},
                            res["train"], info))
            evaluate(job, info)
            quantize(job, recipe.dataset, info, configs[recipe.base])
    return g


def _snapshot_tree(base: str, model_keys: dict) -> dict:
    tree: dict = {"model": {"name": base}, "data": {"dataset": None}}
    for key, value in model_keys.items():
        tree["model"][key.split(".", 1)[1]] = value
    return tree


def _quant_tag(cfg: TrainRunConfig) -> str:
    return quantization_spec(cfg).tag
