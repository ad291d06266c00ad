"""What a result needs to be reproducible: library versions, the code's commit and the hardware."""

from __future__ import annotations

import functools
import os
import platform
import subprocess
from importlib import metadata
from pathlib import Path
from typing import Any

from harness.config import PROJECT_ROOT

_PACKAGES = ("peft-bench", "torch", "transformers", "peft", "bitsandbytes", "sacrebleu", "ray", "optuna", "datasets")


@functools.lru_cache(maxsize=1)
def versions() -> dict[str, str]:
    out = {}
    for name in _PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


@functools.lru_cache(maxsize=1)
def commit() -> str:
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "--short=12", "HEAD"], cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=5
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"], cwd=PROJECT_ROOT, capture_output=True,
            text=True, timeout=5,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return (sha + ("-dirty" if dirty else "")) if sha else "unknown"


# CPU flags that change what a run computes or how fast: bf16 matrix instructions make a bf16 request run
# natively instead of being downgraded, and AMX/AVX-512 change the BLAS kernels (and so the float rounding).
_CPU_FLAGS = ("avx512f", "avx512_bf16", "amx_bf16", "amx_tile")


def parse_cpuinfo(text: str) -> tuple[str, list[str]]:
    """(CPU model name, the flags of _CPU_FLAGS it has) from the text of /proc/cpuinfo."""
    lines = text.splitlines()
    model = next((line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")), "unknown")
    flags_line = next((line for line in lines if line.startswith("flags")), "")
    present = set(flags_line.split(":", 1)[-1].split())
    return model, [flag for flag in _CPU_FLAGS if flag in present]


def _cpu() -> tuple[str, list[str]]:
    try:
        return parse_cpuinfo(Path("/proc/cpuinfo").read_text())
    except OSError:  # not Linux: the platform's name for it, no flags
        return platform.processor() or platform.machine() or "unknown", []


def _gpu() -> dict[str, Any] | None:
    import torch

    if not torch.cuda.is_available():
        return None
    driver = "unknown"
    try:
        driver = subprocess.run(
            ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"], capture_output=True, text=True,
            timeout=10,
        ).stdout.split("\n")[0].strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        pass
    return {"name": torch.cuda.get_device_name(0), "count": torch.cuda.device_count(), "driver": driver,
            "cuda": torch.version.cuda or "unknown"}


@functools.lru_cache(maxsize=1)
def hardware() -> dict[str, Any]:
    """The machine a run ran on: the same commit and versions gave different scores on an AMD EPYC and on an
    Intel Xeon with AMX (the BLAS kernels round differently), so a result names its CPU and GPU."""
    from harness.devices import cpu_has_native_bf16

    model, flags = _cpu()
    return {"cpu": model, "cpu_flags": flags, "cpu_native_bf16": cpu_has_native_bf16(),
            "cores": os.cpu_count() or 0, "gpu": _gpu()}


def hardware_line(info: dict[str, Any]) -> str:
    """One line for the board's footer, e.g. 'hardware: AMD EPYC (avx512f avx512_bf16), 2 cores; no GPU'."""
    flags = " ".join(info.get("cpu_flags") or []) or "no bf16/AMX/AVX-512 flags"
    gpu = info.get("gpu")
    gpu_text = (f"GPU {gpu['name']} x{gpu.get('count', 1)}, driver {gpu['driver']}, CUDA {gpu['cuda']}" if gpu
                else "no GPU")
    return f"hardware: {info.get('cpu', 'unknown')} ({flags}), {info.get('cores', '?')} cores; {gpu_text}"
