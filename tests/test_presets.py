"""Every preset in configs/ validates, names valid hub ids, and derives what its header says."""

from __future__ import annotations

import re

import pytest
import torch

from harness.config import PRESET_DIR, load_config, preset_names
from harness.devices import choose_dtype, dtype_name
from harness.models import EMBEDDED, HUB_ID
from harness.training import resolve_hyperparameters
from techniques import registry

PRESETS = preset_names()


def test_the_issue_presets_exist():
    assert {"default", "quick", "compare-small", "opus100-qwen2.5-0.5b", "7b-qlora-cuda"} <= set(PRESETS)


def header(name: str) -> dict[str, str]:
    lines = [line[2:] for line in (PRESET_DIR / f"{name}.yaml").read_text().splitlines() if line.startswith("# ")]
    out = {}
    for line in lines:
        key, _, value = line.partition(": ")
        if key in ("Command", "Expected on 2 CPU cores", "Expected", "derived"):
            out[key] = value
    return out


@pytest.mark.parametrize("name", PRESETS)
def test_preset_validates_and_documents_itself(name, monkeypatch):
    cfg = load_config(name)
    head = header(name)
    assert head.get("Command", "").startswith("python run_benchmark.py"), name
    assert "Expected" in head or "Expected on 2 CPU cores" in head, name
    for model in cfg.run.models or [cfg.model.name]:
        assert model in EMBEDDED or HUB_ID.match(model), model
    if cfg.data.dataset != "embedded":
        assert HUB_ID.match(cfg.data.dataset) and cfg.data.dataset_config, cfg.data.dataset
    if cfg.data.use_chat_template:
        assert cfg.data.target_prefix == ""
    # The derived line: "cpu=float32 cpu-bf16=float32 cuda=bfloat16 mps=float32; 4-bit: qlora", where cpu is a
    # CPU without native bf16 and cpu-bf16 one with it (AMX / AVX512-BF16): both branches, whatever this CPU is.
    dtypes, _, four = head["derived"].partition("; 4-bit: ")
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)  # a modern GPU
    derived = dict(pair.split("=") for pair in dtypes.split())
    assert set(derived) == {"cpu", "cpu-bf16", "cuda", "mps"}, name
    for key, expected in derived.items():
        device, native_bf16 = ("cpu", key == "cpu-bf16") if key.startswith("cpu") else (key, False)
        monkeypatch.setattr("harness.devices.cpu_has_native_bf16", lambda native=native_bf16: native)
        got = choose_dtype(device, cfg.model.dtype, cfg.model.fp16, cfg.model.bf16)
        assert dtype_name(got) == expected, (name, key)
    four_bit = {
        t for t in registry.names()
        if cfg.model.load_in_4bit or registry.get(t).model_overrides(resolve_hyperparameters(registry.get(t), cfg))
        .get("load_in_4bit")
    }
    assert four_bit == set(re.split(r"[,\s]+", four.strip())), name
