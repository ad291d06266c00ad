"""Device and dtype choice (CUDA / MPS / CPU), thread counts and peak-memory readings."""

from __future__ import annotations

import functools
import logging
import os
import resource
import sys
import time
from pathlib import Path

import torch

from harness.errors import BenchError

log = logging.getLogger(__name__)

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def mps_available() -> bool:
    return bool(getattr(torch.backends, "mps", None) and torch.backends.mps.is_available())


def resolve_device(requested: str) -> str:
    """'auto' picks CUDA, then MPS, then CPU; an explicit device that is not present is a user error."""
    if requested == "auto":
        if torch.cuda.is_available():
            return "cuda"
        return "mps" if mps_available() else "cpu"
    if requested == "cuda" and not torch.cuda.is_available():
        built = torch.version.cuda or "none (a CPU-only build)"
        raise BenchError(
            f"--device cuda: no CUDA GPU is visible here (torch {torch.__version__}, CUDA {built}). "
            "Use --device cpu (or auto), or install a CUDA build of torch on a machine with a GPU."
        )
    if requested == "mps" and not mps_available():
        raise BenchError(
            "--device mps: Apple's Metal backend is not available on this machine. Use --device cpu or auto."
        )
    if requested not in ("cpu", "cuda", "mps"):
        raise BenchError(f"--device: '{requested}' is not a device; use auto, cpu, cuda or mps.")
    return requested


@functools.lru_cache(maxsize=1)
def cpu_has_native_bf16() -> bool:
    """True only for CPUs with bf16 matrix instructions (AMX / AVX512-BF16); elsewhere bf16 is emulated."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "amx_bf16" in flags or "avx512_bf16" in flags


# `auto` on a CPU with native bf16 computes in bf16 (weights; peft keeps adapter weights, and so the optimiser
# state, in float32, and the loss is computed in float32) only where bf16 matmuls run at least this much faster
# than float32 ones at a training step's shapes; measured per process by `cpu_bf16_speedup`.
BF16_MIN_SPEEDUP = 2.0
_PROBE_SHAPES = ((512, 640, 2048), (512, 2048, 640))  # tokens x hidden @ hidden x MLP width, and back (Gemma 3 270M)


def _matmul_seconds(m: int, k: int, n: int, dtype: torch.dtype, repeats: int = 3) -> float:
    a, b = torch.randn(m, k).to(dtype), torch.randn(k, n).to(dtype)
    a @ b  # warm-up (oneDNN picks and caches its kernel)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - start)
    return best


@functools.lru_cache(maxsize=1)
def cpu_bf16_speedup() -> float:
    """How much faster bf16 matmuls run than float32 ones on this CPU, at a training step's shapes (the two
    dtypes timed side by side, so a busy machine slows both; ~0.1 s, once per process)."""
    f32 = sum(_matmul_seconds(*shape, torch.float32) for shape in _PROBE_SHAPES)
    bf16 = sum(_matmul_seconds(*shape, torch.bfloat16) for shape in _PROBE_SHAPES)
    speedup = f32 / bf16
    log.info("CPU bf16 matmuls run %.2fx the float32 rate here (bf16 chosen from %.1fx)", speedup, BF16_MIN_SPEEDUP)
    return speedup


def cpu_prefers_bf16() -> bool:
    """bf16 where the CPU has native bf16 instructions and they pay (see BF16_MIN_SPEEDUP); float32 elsewhere.
    PEFT_BENCH_CPU_BF16=0 (or 1) skips the measurement (the test suite pins float32 so that its numbers do not
    depend on the host)."""
    forced = os.environ.get("PEFT_BENCH_CPU_BF16", "").strip()
    if forced in ("0", "1"):
        return forced == "1"
    return cpu_has_native_bf16() and cpu_bf16_speedup() >= BF16_MIN_SPEEDUP


def choose_dtype(device: str, dtype: str = "auto", fp16: bool = False, bf16: bool = False) -> torch.dtype:
    """The compute dtype per device. A request the device cannot run fast is downgraded with a warning."""
    wanted = "float16" if fp16 else "bfloat16" if bf16 else dtype
    if device == "cuda":
        if wanted == "auto":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float32
        if wanted == "bfloat16" and not torch.cuda.is_bf16_supported():
            log.warning("bfloat16 requested but this GPU does not support it; using float16")
            return torch.float16
        return _DTYPES[wanted]
    if device == "mps":
        if wanted == "bfloat16":
            log.warning("bfloat16 is not reliable on MPS; using float16")
            return torch.float16
        return torch.float32 if wanted == "auto" else _DTYPES[wanted]
    # CPU
    if wanted == "auto":
        return torch.bfloat16 if cpu_prefers_bf16() else torch.float32
    if wanted in ("bfloat16", "float16"):
        if wanted == "bfloat16" and cpu_has_native_bf16():
            return torch.bfloat16
        log.warning(
            "%s requested on a CPU without native support (it runs ~30x slower than float32 here); "
            "using float32", wanted,
        )
    return torch.float32


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def set_threads(n: int | None) -> int:
    """Pin torch's intra-op threads to the trial's CPU share so concurrent trials don't oversubscribe."""
    if n and n > 0:
        torch.set_num_threads(int(n))
    return torch.get_num_threads()


def reset_peak_memory(device: str) -> None:
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()


def peak_memory_mb(device: str) -> float:
    """Peak CUDA memory on CUDA; elsewhere the process's peak resident set size."""
    if device == "cuda":
        return torch.cuda.max_memory_allocated() / 2**20
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 1024
