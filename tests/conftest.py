"""Shared fixtures: tiny real models built once per session, an isolated cache, a local Ray."""

from __future__ import annotations

import os
import sys
from pathlib import Path

# Before anything imports huggingface_hub: tests that expect "the hub cannot be reached" must not download on a
# networked CI, and no test may depend on the network.
os.environ["HF_HUB_OFFLINE"] = "1"

import pytest  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
SHARED_DATA = ROOT.parent / "shared" / "data" / "eng-tur"
sys.path.insert(0, str(Path(__file__).resolve().parent))
# float32 on every CPU, whatever its bf16 speed (tests/test_devices.py covers both branches); Ray workers inherit it
os.environ.setdefault("PEFT_BENCH_CPU_BF16", "0")

from tiny_models import build_tiny_model  # noqa: E402


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("models") / "tiny-llama", "llama")


@pytest.fixture(scope="session")
def tiny_gemma(tmp_path_factory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("models") / "tiny-gemma3", "gemma3")


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not (SHARED_DATA / "train.tsv").is_file():
        pytest.skip(f"../shared data not found at {SHARED_DATA}")
    return SHARED_DATA


@pytest.fixture()
def tiny_yaml(tmp_path, tiny_llama):
    """Write a small config for the tiny model and return a function that adds sections to it."""
    import yaml

    def make(**sections) -> Path:
        base = {
            "model": {"name": str(tiny_llama), "cache_dir": str(tmp_path / "cache")},
            "data": {"max_train_samples": 48, "max_validation_samples": 12},
            "train": {"batch_size": 8, "epochs": 2, "log_steps": 2},
            "eval": {"validation_samples": 6, "test_samples": 6, "max_new_tokens": 12},
            "run": {"results_dir": str(tmp_path / "results")},
        }
        for key, values in sections.items():
            base.setdefault(key, {}).update(values)
        path = tmp_path / "tiny.yaml"
        path.write_text(yaml.safe_dump(base), encoding="utf-8")
        return path

    return make


@pytest.fixture(scope="session")
def ray_local():
    """One local Ray for the in-process driver tests (2 CPUs, like CI)."""
    import ray

    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    if not ray.is_initialized():
        ray.init(num_cpus=2, include_dashboard=False, logging_level="WARNING")
    yield ray
    ray.shutdown()
