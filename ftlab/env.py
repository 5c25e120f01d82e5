"""Environment facts recorded in every output, thread control, and peak-memory measurement."""

from __future__ import annotations

import datetime as _dt
import os
import platform
import socket
import subprocess
import sys
import threading
from importlib import metadata
from pathlib import Path

import psutil

TRACKED_PACKAGES = (
    "torch", "transformers", "peft", "trl", "datasets", "accelerate", "bitsandbytes",
    "gptqmodel", "hqq", "scikit-learn", "pandas", "numpy", "ftlab",
)


def now_iso(timespec: str = "seconds") -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec=timespec)


def package_version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def git_commit(path: str | os.PathLike | None = None) -> str | None:
    here = Path(path) if path else Path(__file__).resolve().parent
    try:
        out = subprocess.run(
            ["git", "-C", str(here), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def device_info() -> dict:
    import torch  # lazy: torch takes 3.3 s to import

    info = {"device": "cpu", "cuda_available": torch.cuda.is_available(), "torch_threads": torch.get_num_threads()}
    if torch.cuda.is_available():
        info.update(
            device="cuda",
            gpu_name=torch.cuda.get_device_name(0),
            gpu_count=torch.cuda.device_count(),
            cuda_version=torch.version.cuda,
            bf16_supported=torch.cuda.is_bf16_supported(),
        )
    else:
        info["bf16_supported"] = cpu_supports_bf16()
    return info


def cpu_supports_bf16() -> bool:
    """bf16 matmuls work on any CPU in torch; they are only fast with avx512_bf16/amx."""
    import torch  # lazy: torch takes 3.3 s to import

    try:
        a = torch.ones(2, 2, dtype=torch.bfloat16)
        return bool((a @ a).sum().item() == 8)
    except RuntimeError:
        return False


def environment_info() -> dict:
    return {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "host": socket.gethostname(),
        "cpu_count": os.cpu_count(),
        "packages": {p: package_version(p) for p in TRACKED_PACKAGES},
        "git_commit": git_commit(),
        **device_info(),
    }


def set_threads(n: int | None) -> int:
    """Pins torch's intra-op threads; oversubscribed CPUs slow torch 10-40x (measured on 2 cores)."""
    import torch  # lazy: torch takes 3.3 s to import

    if n is None or n <= 0:
        n = max(1, (os.cpu_count() or 1))
    torch.set_num_threads(n)
    os.environ["OMP_NUM_THREADS"] = str(n)
    return n


def current_rss_mb() -> float:
    return psutil.Process().memory_info().rss / 2**20


class PeakMemory:
    """Peak RSS sampled every 50 ms (ru_maxrss never resets within a process) and CUDA peaks."""

    def __init__(self, interval: float = 0.05):
        self.interval = interval
        self.peak_rss_mb = 0.0
        self.start_rss_mb = 0.0
        self.cuda_peak_allocated_mb: float | None = None
        self.cuda_peak_reserved_mb: float | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _sample(self) -> None:
        while not self._stop.wait(self.interval):
            self.peak_rss_mb = max(self.peak_rss_mb, current_rss_mb())

    def __enter__(self) -> "PeakMemory":
        import torch  # lazy: torch takes 3.3 s to import

        self.start_rss_mb = self.peak_rss_mb = current_rss_mb()
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        import torch  # lazy: torch takes 3.3 s to import

        self._stop.set()
        if self._thread:
            self._thread.join()
        self.peak_rss_mb = max(self.peak_rss_mb, current_rss_mb())
        if torch.cuda.is_available():
            self.cuda_peak_allocated_mb = torch.cuda.max_memory_allocated() / 2**20
            self.cuda_peak_reserved_mb = torch.cuda.max_memory_reserved() / 2**20

    def as_dict(self) -> dict:
        return {
            "peak_rss_mb": round(self.peak_rss_mb, 1),
            "start_rss_mb": round(self.start_rss_mb, 1),
            "cuda_peak_allocated_mb": self.cuda_peak_allocated_mb,
            "cuda_peak_reserved_mb": self.cuda_peak_reserved_mb,
        }
