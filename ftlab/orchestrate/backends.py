"""Execution backends for a sweep, keyed by name: `local` (sequential) and `ray` (a task per model).

A backend is a callable `(sweep, items) -> None` that, for each plan item, calls
`sweep.claim(item)` (None = skip), runs the job with `runner.run_job` somewhere, and hands the
result to `sweep.finish(job, result)` on the driver. Files are written only by the evaluation
process (metrics, samples) and the driver (error reports), so every backend lands results in the
same places.
"""

from __future__ import annotations

import logging
import os
import socket
import traceback

from ftlab.errors import FtlabError
from ftlab.orchestrate.runner import EvalJob, JobResult, run_job
from ftlab.registry import Registry

log = logging.getLogger(__name__)

BACKENDS: Registry = Registry("orchestrator backend")


@BACKENDS.register("local")
def run_local(sweep, items) -> None:
    """One model after another on this machine, each in its own process."""
    threads = sweep.settings.threads
    for item in items:
        job = sweep.claim(item)
        if job is None:
            continue
        if threads is None and os.environ.get("OMP_NUM_THREADS"):
            job.threads = int(os.environ["OMP_NUM_THREADS"])
        try:
            result = run_job(job)
        except Exception as exc:  # the runner itself failed (cannot spawn): record, keep sweeping
            result = JobResult(job.model, False, None, 0.0, f"could not start the evaluation: {exc}",
                               traceback.format_exc().splitlines()[-20:], socket.gethostname())
        sweep.finish(job, result)


def _ray_run_job(job: EvalJob) -> JobResult:
    # Module-level so Ray pickles it by reference; the worker imports ftlab like the driver.
    import sys

    # The worker node's own interpreter: the driver's path need not exist on another machine.
    job.python = sys.executable
    return run_job(job)


def _import_ray():
    try:
        import ray
    except ImportError:
        raise FtlabError("--backend ray needs the optional ray extra: uv sync --extra ray "
                         "(or pip install 'ftlab[ray]')") from None
    return ray


@BACKENDS.register("ray")
def run_ray(sweep, items) -> None:
    """Each model evaluation is a Ray task declaring num_cpus/num_gpus; Ray places them on the
    cluster (`--ray-address`) or on a local Ray started here and stopped at the end."""
    ray = _import_ray()
    s = sweep.settings
    started_here = False
    in_flight: dict = {}
    if not ray.is_initialized():
        if s.ray_address:
            log.info("connecting to Ray at %s", s.ray_address)
            ray.init(address=s.ray_address, logging_level=logging.WARNING, log_to_driver=False)
        else:
            cpus = max(1, int(round(s.num_cpus * (s.max_parallel or max(1, int((os.cpu_count() or 1) // s.num_cpus))))))
            log.info("starting a local Ray with %d CPUs", cpus)
            ray.init(num_cpus=cpus, include_dashboard=False, logging_level=logging.WARNING, log_to_driver=False)
        started_here = True
    try:
        resources = ray.cluster_resources()
        fits = int(resources.get("CPU", 1) // s.num_cpus)
        if s.num_gpus:
            if resources.get("GPU", 0) < s.num_gpus:
                raise FtlabError(f"--num-gpus {s.num_gpus:g} but the Ray cluster has {resources.get('GPU', 0):g} GPUs")
            fits = min(fits, int(resources["GPU"] // s.num_gpus))
        capacity = max(1, s.max_parallel or fits)
        # Threads follow the CPUs a task reserved, so co-located tasks do not oversubscribe cores.
        threads = s.threads or max(1, int(s.num_cpus))
        task = ray.remote(_ray_run_job).options(num_cpus=s.num_cpus, num_gpus=s.num_gpus, max_retries=0)
        pending = list(items)
        while pending or in_flight:
            # Claim lazily, only when a slot is free: a model locked now is a model another
            # orchestrator cannot take, so claiming the whole plan up front would starve it.
            while pending and len(in_flight) < capacity:
                job = sweep.claim(pending.pop(0))
                if job is None:
                    continue
                job.threads = threads
                in_flight[task.remote(job)] = job
            if not in_flight:
                break
            done, _ = ray.wait(list(in_flight), num_returns=1)
            for ref in done:
                job = in_flight.pop(ref)
                try:
                    result = ray.get(ref)
                except Exception as exc:  # the Ray worker died or the task could not run
                    first = str(exc).splitlines()[0] if str(exc) else ""
                    result = JobResult(job.model, False, None, 0.0, f"Ray task failed: {type(exc).__name__}: {first}",
                                       traceback.format_exc().splitlines()[-20:], "")
                sweep.finish(job, result)
    except BaseException:
        # Interrupted: force-cancel so no evaluation outlives the locks released by the sweep.
        for ref in in_flight:
            try:
                ray.cancel(ref, force=True)
            except Exception:
                pass
        raise
    finally:
        if started_here:
            ray.shutdown()
