"""Device rules: the CPU dtype chosen from a measured bf16 speed-up, and how many trials share a GPU."""

from __future__ import annotations

import pytest
import torch

from harness import devices
from harness.devices import BF16_MIN_SPEEDUP, choose_dtype
from harness.driver import MAX_TRIALS_PER_GPU, default_concurrency, trial_memory_mb, trial_resources


@pytest.fixture()
def cpu(monkeypatch):
    """A CPU whose bf16 support and measured bf16 speed-up the test sets."""
    def make(native: bool, speedup: float | None):
        def probe() -> float:
            if speedup is None:
                raise AssertionError("a CPU without native bf16 must not be probed")
            return speedup

        monkeypatch.delenv("PEFT_BENCH_CPU_BF16", raising=False)  # the suite pins float32; here the rule decides
        monkeypatch.setattr(devices, "cpu_has_native_bf16", lambda: native)
        monkeypatch.setattr(devices, "cpu_bf16_speedup", probe)
    return make


def test_auto_picks_bf16_on_a_cpu_where_it_pays(cpu):
    cpu(native=True, speedup=BF16_MIN_SPEEDUP + 1.5)  # an AMX host: bf16 matmuls ~7x
    assert choose_dtype("cpu") == torch.bfloat16


def test_auto_keeps_float32_where_bf16_does_not_pay(cpu):
    cpu(native=True, speedup=BF16_MIN_SPEEDUP - 0.2)
    assert choose_dtype("cpu") == torch.float32


def test_auto_keeps_float32_without_native_bf16(cpu):
    cpu(native=False, speedup=None)
    assert choose_dtype("cpu") == torch.float32
    assert choose_dtype("cpu", "bfloat16") == torch.float32  # emulated bf16 is slow: downgraded


def test_an_explicit_float32_is_kept_where_bf16_would_pay(cpu):
    cpu(native=True, speedup=10.0)
    assert choose_dtype("cpu", "float32") == torch.float32


def test_the_environment_can_pin_the_cpu_dtype(cpu, monkeypatch):
    cpu(native=True, speedup=10.0)
    monkeypatch.setenv("PEFT_BENCH_CPU_BF16", "0")
    assert choose_dtype("cpu") == torch.float32
    cpu(native=False, speedup=None)
    monkeypatch.setenv("PEFT_BENCH_CPU_BF16", "1")
    assert choose_dtype("cpu") == torch.bfloat16


def test_a_local_run_decides_the_cpu_dtype_once(cpu, monkeypatch):
    cpu(native=True, speedup=BF16_MIN_SPEEDUP + 0.5)
    devices.pin_cpu_dtype()
    # a later, noisier probe must not change a run's dtype
    monkeypatch.setattr(devices, "cpu_bf16_speedup", lambda: BF16_MIN_SPEEDUP - 0.5)
    assert choose_dtype("cpu") == torch.bfloat16
    monkeypatch.setenv("PEFT_BENCH_CPU_BF16", "0")  # an explicit pin is kept
    devices.pin_cpu_dtype()
    assert choose_dtype("cpu") == torch.float32


def test_the_bf16_probe_measures_a_ratio():
    devices.cpu_bf16_speedup.cache_clear()
    try:
        assert devices.cpu_bf16_speedup() > 0
    finally:
        devices.cpu_bf16_speedup.cache_clear()


# ------------------------------------------------------------------------------------------ concurrency


def test_small_model_trials_share_one_gpu():
    # One H200 (~139 GB free), 16 cores, Gemma 3 270M's 1 GB of float32 weight files: CPU-bound at 8.
    trial = trial_memory_mb(1024)
    assert trial == pytest.approx(3 * 1024 + 1024)
    assert default_concurrency("cuda", 16, 1, 139_000, trial) == 8
    resources = trial_resources("cuda", 16, 1, 8)
    assert resources == {"cpu": 2, "gpu": 0.125}


def test_gpu_concurrency_is_bounded_by_memory_cpus_and_a_cap():
    assert default_concurrency("cuda", 4, 1, 139_000, 4_000) == 2  # two cores per trial
    assert default_concurrency("cuda", 64, 1, 139_000, 4_000) == MAX_TRIALS_PER_GPU
    assert default_concurrency("cuda", 64, 1, 20_000, 8_000) == 2  # 90% of 20 GB holds two 8 GB trials
    assert default_concurrency("cuda", 64, 1, 5_000, 8_000) == 1  # never zero: a big model runs alone
    assert default_concurrency("cuda", 64, 2, 139_000, 4_000) == 2 * MAX_TRIALS_PER_GPU


def test_unknown_gpu_memory_keeps_one_trial_per_gpu():
    assert default_concurrency("cuda", 16, 1) == 1
    assert default_concurrency("cuda", 16, 2, 139_000, None) == 2


def test_cpu_and_mps_concurrency_unchanged():
    assert default_concurrency("cpu", 8, 0) == 2
    assert default_concurrency("mps", 8, 0) == 1
