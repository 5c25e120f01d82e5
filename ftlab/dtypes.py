"""The one dtype rule: names (`bf16`, `bfloat16`, torch dtypes) and what `auto` means on this machine.

`auto` depends on what the dtype is for:
- `weights` (the dtype a model is loaded in): bf16 on GPUs that support it, else fp16; fp32 on CPU,
  even one with native bf16, because fp32 keeps greedy decoding bit-stable and every stored CPU
  evaluation was measured in fp32.
- `compute` (training's mixed precision, QLoRA's matmul dtype): bf16 / fp16 on GPU as above; on CPU
  bf16 only with native bf16 (AVX512-BF16 or AMX), where autocast is a speed-up, else fp32, where
  bf16 is emulated and a slow-down. Until this rule, QLoRA's compute dtype took bf16 on every CPU
  that can multiply bf16 at all (emulated or not), while mixed precision already used the native
  test; the native test is the one with a measured reason, so both follow it now.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ftlab.errors import FtlabError

DTYPE_NAMES = {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}  # short name -> torch name
ROLES = ("weights", "compute")


def cpu_has_native_bf16() -> bool:
    """AVX512-BF16 or AMX: bf16 autocast is a speed-up there, elsewhere an emulated slow-down."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def auto_dtype(role: str) -> str:
    """What `auto` resolves to here for `role` (see the module doc), as a short name."""
    import torch  # lazy: torch takes 3.3 s to import

    if role not in ROLES:
        raise ValueError(f"dtype role {role!r} is not one of {ROLES}")
    if torch.cuda.is_available():
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    if role == "compute" and cpu_has_native_bf16():
        return "bf16"
    return "fp32"


def dtype_name(value: Any, role: str = "weights") -> str:
    """`auto`/None (resolved for `role`), a short or torch name, or a torch.dtype -> `bf16`/`fp16`/`fp32`."""
    if value is None or value == "auto":
        return auto_dtype(role)
    text = str(value).removeprefix("torch.")
    for short, long in DTYPE_NAMES.items():
        if text in (short, long):
            return short
    raise FtlabError(f"dtype {value!r} is not one of auto, {', '.join(DTYPE_NAMES)}")


def torch_dtype(value: Any, role: str = "weights"):
    """The torch.dtype for `value` (see `dtype_name`)."""
    import torch  # lazy: torch takes 3.3 s to import

    return getattr(torch, DTYPE_NAMES[dtype_name(value, role)])
