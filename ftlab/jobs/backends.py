"""Where jobs run, keyed by name: `local` (child processes on this machine, up to --workers at
once, GPUs handed out one per job) and `ray` (a Ray task per job, placed by Ray on a cluster or on
a local Ray started here, on a node that holds everything the job reserves). Both follow the
engine's protocol: claim with `next_ready`, run the task's command in a child process, report with
`finish`; the Ray backend hands an attempt the cluster lost (node died, worker killed) to
`engine.lost`, which decides whether it runs again elsewhere."""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import time
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from pathlib import Path

import psutil

from ftlab.errors import FtlabError
from ftlab.jobs import zygote as zygotes
from ftlab.jobs.engine import POLL_S, Engine, Job, Outcome, Task
from ftlab.jobs.process import ProcessResult, kill_all, run_process, worker_env
from ftlab.registry import Registry

log = logging.getLogger(__name__)

BACKENDS: Registry = Registry("job backend")


def backend_session(settings):
    """A context in which several `run_engine` calls share the backend's runtime (each backend's
    `session`, when it has one: a local Ray started once rather than once per call)."""
    return getattr(BACKENDS.get(settings.backend), "session", contextlib.nullcontext)(settings)


def run_engine(engine: Engine) -> list[Outcome]:
    """Runs the engine's jobs through the backend its settings name (`local` or `ray`)."""
    return engine.run(BACKENDS.get(engine.settings.backend))


def run_task(task: Task, zygote=None) -> ProcessResult:
    """The task's command in a child process: forked from the zygote when one is given and the task
    qualifies (ftlab.jobs.zygote), else a fresh process."""
    if zygote is not None:
        result = zygote.run(task.argv, cwd=task.cwd, threads=task.threads, timeout_s=task.timeout_s, env=task.env,
                            name=task.name)
        if result is not None:
            return result
    return run_process(task.argv, cwd=task.cwd, threads=task.threads, timeout_s=task.timeout_s, env=task.env,
                       name=task.name)


def _not_started(exc: BaseException) -> ProcessResult:
    return ProcessResult(False, None, 0.0, f"could not start the job: {type(exc).__name__}: {exc}")


NVIDIA_GPUS = Path("/proc/driver/nvidia/gpus")


def cuda_device_count() -> int:
    """NVIDIA GPUs this driver may hand out, without importing torch (seconds a plan need not
    pay): the driver's GPU list, narrowed by CUDA_VISIBLE_DEVICES."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if NVIDIA_GPUS.is_dir():
        present = sum(1 for _ in NVIDIA_GPUS.iterdir())
    elif "torch" in sys.modules:  # elsewhere (no /proc), ask torch only when it is loaded anyway
        import torch  # lazy: torch takes 3.3 s to import

        present = torch.cuda.device_count() if torch.cuda.is_available() else 0
    else:
        present = 0
    if visible is None:
        return present
    return min(present, len([v for v in visible.split(",") if v.strip() and v.strip() != "-1"]))


def _idle(engine: Engine) -> bool:
    """Nothing runs here: True when the engine waits on another driver (poll again), False when
    it is finished (or stuck, which `refuse_unrunnable` turns into failures)."""
    if engine.has_work() and engine.waiting():
        time.sleep(POLL_S)
        return True
    return False


@BACKENDS.register("local")
def run_local(engine: Engine) -> None:
    """Up to `workers` jobs at once, each in its own process; a job wanting a GPU gets one of its
    own (CUDA_VISIBLE_DEVICES), CPU-only jobs see none."""
    workers = engine.settings.workers or 1
    gpus = cuda_device_count()
    free_gpus = set(range(gpus))
    memory_gb = psutil.virtual_memory().total / 2 ** 30
    free = {"memory_gb": memory_gb}
    running: dict[Future, tuple[Task, int | None, float]] = {}

    def fits(job: Job) -> bool:
        return job.resources.gpus <= len(free_gpus) and job.resources.memory_gb <= free["memory_gb"] + 1e-9

    def unrunnable(job: Job) -> str | None:
        res = job.resources
        if res.custom:
            return (f"needs the custom resource(s) {', '.join(k for k, _ in res.custom)}, which only a Ray cluster "
                    "declares: run it with --backend ray, or drop resources.<kind>.custom from the study")
        if res.gpus > gpus:
            return f"needs {res.gpus:g} GPU(s); this machine has {gpus}"
        if res.memory_gb > memory_gb:
            return f"needs {res.memory_gb:g} GB of memory; this machine has {memory_gb:.1f}"
        return None

    engine.refuse_unrunnable(unrunnable)
    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="ftlab-job")
    # Jobs fork from one process that imported torch and transformers once (started with the first
    # job, so a study with nothing to run never pays for it); not on GPU machines (see its docstring).

    zygote = zygotes.Zygote(worker_env(engine.settings.threads_per_job())) if not gpus and zygotes.supported() else None
    try:
        while True:
            while len(running) < workers:
                claimed = engine.next_ready(fits)
                if claimed is None:
                    break
                job, task = claimed
                gpu = None
                if job.resources.gpus:
                    gpu = min(free_gpus)
                    free_gpus.discard(gpu)
                    task.env["CUDA_VISIBLE_DEVICES"] = str(gpu)
                elif gpus:
                    task.env["CUDA_VISIBLE_DEVICES"] = ""
                free["memory_gb"] -= job.resources.memory_gb
                running[pool.submit(run_task, task, zygote)] = (task, gpu, job.resources.memory_gb)
            if not running:
                if _idle(engine):
                    continue
                break
            done, _ = wait(running, timeout=POLL_S, return_when=FIRST_COMPLETED)
            engine.heartbeat()
            for fut in done:
                task, gpu, memory = running.pop(fut)
                if gpu is not None:
                    free_gpus.add(gpu)
                free["memory_gb"] += memory
                try:
                    result = fut.result()
                except Exception as exc:  # noqa: BLE001 - could not spawn: record, keep going
                    result = _not_started(exc)
                engine.finish(task, result)
    except BaseException:
        # Ctrl-C or an error here: the worker threads wait on children in their own sessions,
        # which the terminal's SIGINT does not reach; kill them so nothing outlives its lock.
        kill_all()
        if zygote is not None:
            zygote.kill_all()
        raise
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
        if zygote is not None:
            zygote.close()


def _ray_run_task(task: Task) -> ProcessResult:
    # Module-level so Ray pickles it by reference. The worker node's own interpreter: the
    # driver's path need not exist on another machine.
    import ray  # lazy: only ever called inside a Ray worker, where ray is loaded

    task.argv = [sys.executable, *task.argv[1:]]
    result = run_task(task)
    result.node = ray.get_runtime_context().get_node_id()
    return result


def import_ray():
    try:
        import ray  # lazy: ray takes 2 s
    except ImportError:
        raise FtlabError("--backend ray needs the optional ray extra: uv sync --extra ray "
                         "(or pip install 'ftlab[ray]')") from None
    return ray


# Ray's errors for an attempt the cluster lost, not one that failed on its own: its node died, its
# worker process crashed or was killed (Ray's memory monitor included), the object holding its
# result was lost. The names that exist in the installed Ray are used.
SYSTEM_FAILURES = ("NodeDiedError", "WorkerCrashedError", "LocalRayletDiedError", "ObjectLostError",
                   "OutOfMemoryError", "RaySystemError")


def system_failure(ray, exc: BaseException) -> bool:
    """True when `exc` (from ray.get on a job's task) means the attempt was lost to the system."""
    kinds = tuple(getattr(ray.exceptions, name) for name in SYSTEM_FAILURES if hasattr(ray.exceptions, name))
    return isinstance(exc, kinds)


def _ray_init(ray, s) -> bool:
    """Connects to the cluster or starts a local Ray unless one is up; True when it started one."""
    if ray.is_initialized():
        return False
    if s.ray_address:
        log.info("connecting to Ray at %s", s.ray_address)
        ray.init(address=s.ray_address, logging_level=logging.WARNING, log_to_driver=False)
    else:
        threads = s.threads_per_job()
        cpus = threads * (s.workers or max(1, (os.cpu_count() or 1) // threads))
        log.info("starting a local Ray with %d CPUs", cpus)
        ray.init(num_cpus=cpus, include_dashboard=False, logging_level=logging.WARNING, log_to_driver=False)
    return True


@contextlib.contextmanager
def _ray_session(settings):
    """Ray kept up over several engine runs (an adaptive study's rounds): started once, not per round."""
    ray = import_ray()
    started = _ray_init(ray, settings)
    try:
        yield
    finally:
        if started:
            ray.shutdown()


def _ray_options(need: dict[str, float]) -> dict:
    """ray.remote options reserving `need` (Resources.needs: Ray's names, memory in bytes)."""
    custom = {k: v for k, v in need.items() if k not in ("CPU", "GPU", "memory")}
    return {"num_cpus": need.get("CPU", 0), "num_gpus": need.get("GPU", 0),
            "memory": int(need["memory"]) if need.get("memory") else None, "resources": custom or None}


def _node_summary(nodes: list[dict]) -> str:
    def one(res: dict) -> str:
        return "{" + ", ".join(f"{k}: {v / 2 ** 30 if k == 'memory' else v:g}{' GB' if k == 'memory' else ''}"
                               for k, v in sorted(res.items()) if k in ("CPU", "GPU", "memory") or
                               not (k.startswith("node:") or k.startswith("accelerator_type:") or
                                    k == "object_store_memory")) + "}"
    return "; ".join(one(n) for n in nodes) or "no live node"


@BACKENDS.register("ray")
def run_ray(engine: Engine) -> None:
    """A Ray task per job reserving what the job declares (CPUs = its thread budget, GPUs, memory,
    custom resources); Ray places it on a node that holds all of it, on the cluster
    (`--ray-address`) or on a local Ray started here and stopped at the end. An attempt lost with
    its node or worker is run again (engine.lost), on whichever node then has room."""
    ray = import_ray()
    s = engine.settings
    in_flight: dict = {}
    started_here = _ray_init(ray, s)
    try:
        free = {k: float(v) for k, v in ray.cluster_resources().items()}

        def need(job: Job) -> dict[str, float]:
            return job.resources.needs(engine.threads_for(job))

        def unrunnable(job: Job, live: str = "") -> str | None:
            nodes = [dict(n.get("Resources") or {}) for n in ray.nodes() if n.get("Alive")]
            want = need(job)
            if any(all(node.get(k, 0.0) + 1e-9 >= v for k, v in want.items()) for node in nodes):
                return None
            return (f"needs {job.resources.describe(engine.threads_for(job))} on one node; no {live}node of the "
                    f"Ray cluster has that ({_node_summary(nodes)})")

        engine.refuse_unrunnable(unrunnable)

        def fits(job: Job) -> bool:
            return all(v <= free.get(k, 0.0) + 1e-9 for k, v in need(job).items())

        remote = ray.remote(max_retries=0)(_ray_run_task)  # retries are the engine's (engine.lost)

        def submit(task: Task, want: dict[str, float]) -> None:
            ref = remote.options(**_ray_options(want)).remote(task)
            for k, v in want.items():
                free[k] = free.get(k, 0.0) - v
            in_flight[ref] = (task, want, time.monotonic())

        while True:
            while not s.workers or len(in_flight) < s.workers:
                claimed = engine.next_ready(fits)
                if claimed is None:
                    break
                job, task = claimed
                submit(task, need(job))
            if not in_flight:
                if _idle(engine):
                    continue
                break
            done, _ = ray.wait(list(in_flight), num_returns=1, timeout=POLL_S)
            engine.heartbeat()
            for ref in done:
                task, want, submitted = in_flight.pop(ref)
                for k, v in want.items():
                    free[k] = free.get(k, 0.0) + v
                try:
                    result = ray.get(ref)
                except Exception as exc:  # noqa: BLE001 - the worker or its node died, or the task could not run
                    first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
                    result = ProcessResult(False, None, time.monotonic() - submitted,
                                           f"Ray task failed: {type(exc).__name__}: {first}")
                    if system_failure(ray, exc):
                        # Placed again only where it fits now: its node may have been the only one.
                        if engine.lost(task, result, unrunnable(engine.by_id[task.job_id], "live ")):
                            submit(task, want)
                        continue
                engine.finish(task, result)
    except BaseException:
        # Interrupted: force-cancel so no job outlives the locks the engine releases.
        for ref in in_flight:
            try:
                ray.cancel(ref, force=True)
            except Exception:  # noqa: BLE001
                pass
        raise
    finally:
        if started_here:
            ray.shutdown()


run_ray.session = _ray_session
