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
# state, in float32, and the loss is computed in float32) only where that makes a training step at least this
# much faster than float32. Measured per process by `cpu_bf16_speedup` on one LoRA'd MLP block, forward and
# backward: a bare matmul overstates the gain (on this project's Zen 4 host bf16 matmuls ran 2.3-4.3x float32 but
# a Gemma 3 270M LoRA step 0.4-1.2x, and on an AMX host 7x against 1.14x; 2026-12-04), the block does not.
BF16_MIN_SPEEDUP = 2.0


def _block_seconds(dtype: torch.dtype, repeats: int = 3) -> float:
    """Best time of forward + backward of a Gemma 3 270M-sized MLP block (512 tokens, 640 -> 2048 -> 640) whose
    first projection carries a float32 rank-16 LoRA branch, with base weights in `dtype`."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(512, 640, generator=g).to(dtype).requires_grad_()
    w1 = (torch.randn(2048, 640, generator=g) * 0.02).to(dtype)
    w2 = (torch.randn(640, 2048, generator=g) * 0.02).to(dtype)
    a = (torch.randn(16, 640, generator=g) * 0.02).requires_grad_()
    b = (torch.randn(2048, 16, generator=g) * 0.02).requires_grad_()

    def run() -> None:
        h = x @ w1.t() + ((x.float() @ a.t()) @ b.t()).to(dtype)
        (torch.nn.functional.gelu(h) @ w2.t()).float().square().sum().backward()

    run()  # warm-up (oneDNN picks and caches its kernels)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        best = min(best, time.perf_counter() - start)
    return best


@functools.lru_cache(maxsize=1)
def cpu_bf16_speedup() -> float:
    """How much faster the probe block trains with bf16 base weights than with float32 ones on this CPU (the
    two timed side by side, so a busy machine slows both; well under a second, once per process)."""
    speedup = _block_seconds(torch.float32) / _block_seconds(torch.bfloat16)
    log.info("CPU: a LoRA block trains %.2fx faster in bf16 than in float32 here (bf16 chosen from %.1fx)",
             speedup, BF16_MIN_SPEEDUP)
    return speedup


def cpu_prefers_bf16() -> bool:
    """bf16 where the CPU has native bf16 instructions and they pay (see BF16_MIN_SPEEDUP); float32 elsewhere.
    PEFT_BENCH_CPU_BF16=0 (or 1) skips the measurement (the test suite pins float32 so that its numbers do not
    depend on the host)."""
    forced = os.environ.get("PEFT_BENCH_CPU_BF16", "").strip()
    if forced in ("0", "1"):
        return forced == "1"
    return cpu_has_native_bf16() and cpu_bf16_speedup() >= BF16_MIN_SPEEDUP


def pin_cpu_dtype() -> None:
    """Decide the CPU's `auto` dtype once and pin it in the environment, which the processes this one starts
    (a local run's Ray workers) inherit: the probe is noisy (1.7x, 0.8x, 1.1x in three rounds on one host), and
    trials of one run must not compute in different dtypes."""
    if os.environ.get("PEFT_BENCH_CPU_BF16", "").strip() not in ("0", "1"):
        os.environ["PEFT_BENCH_CPU_BF16"] = "1" if cpu_prefers_bf16() else "0"


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
