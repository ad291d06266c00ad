"""Resumable trial state on a small module (fast; the trial-level resume tests are in test_training.py): what is
saved comes back exactly, and a resumed optimizer takes the very step the uninterrupted one takes."""

from __future__ import annotations

import json

import pytest
import torch

from harness.checkpoint import (STATE_JSON, STATE_TENSORS, TRAINABLE, load_trainable, load_training_state,
                                save_trainable, save_training_state)
from harness.errors import BenchError


def small_model(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Linear(3, 2))
    model[0].requires_grad_(False)  # frozen "base", trainable "adapter"
    return model


def train_step(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> None:
    x = torch.randn(5, 4)  # consumes the RNG, like dropout would
    loss = model(x).pow(2).sum()
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()


def optimizer_of(model: torch.nn.Module) -> torch.optim.Optimizer:
    return torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=0.1, weight_decay=0.01)


def test_trainable_tensors_only_round_trip(tmp_path):
    model = small_model()
    with torch.no_grad():
        model[1].weight.add_(1.0)
    save_trainable(model, tmp_path)
    from safetensors.torch import load_file

    assert sorted(load_file(str(tmp_path / TRAINABLE))) == ["1.bias", "1.weight"]
    other = small_model(seed=1)
    frozen = other[0].weight.clone()
    load_trainable(other, tmp_path)
    assert torch.equal(other[1].weight, model[1].weight) and torch.equal(other[1].bias, model[1].bias)
    assert torch.equal(other[0].weight, frozen)  # the base is never touched


def test_incomplete_or_mismatched_checkpoints_are_clear_errors(tmp_path):
    with pytest.raises(BenchError, match=f"has no {TRAINABLE}; the checkpoint is incomplete"):
        load_trainable(small_model(), tmp_path)
    save_trainable(small_model(), tmp_path)
    bigger = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Linear(3, 2), torch.nn.Linear(2, 2))
    with pytest.raises(BenchError, match=r"does not match this model \(missing \['0.weight', '0.bias', '2.weight'\]\)"):
        load_trainable(bigger, tmp_path)


def test_a_resumed_optimizer_takes_the_same_steps(tmp_path):
    model = small_model()
    optimizer = optimizer_of(model)
    torch.manual_seed(123)
    for _ in range(3):
        train_step(model, optimizer)
    save_trainable(model, tmp_path)
    save_training_state(tmp_path, optimizer, {"epoch": 1, "step": 3})
    assert (tmp_path / STATE_TENSORS).is_file()
    assert json.loads((tmp_path / STATE_JSON).read_text())["progress"] == {"epoch": 1, "step": 3}
    for _ in range(2):  # the uninterrupted run goes on
        train_step(model, optimizer)
    expected = [p.detach().clone() for p in model.parameters()]

    resumed = small_model()  # a fresh process: the same base, untrained adapter, fresh moments, other RNG state
    torch.manual_seed(999)
    load_trainable(resumed, tmp_path)
    resumed_optimizer = optimizer_of(resumed)
    assert load_training_state(tmp_path, resumed_optimizer) == {"epoch": 1, "step": 3}
    state = resumed_optimizer.state_dict()
    assert state["param_groups"][0]["lr"] == 0.1 and state["param_groups"][0]["weight_decay"] == 0.01
    assert all(int(s["step"]) == 3 for s in state["state"].values())
    for _ in range(2):
        train_step(resumed, resumed_optimizer)
    got = list(resumed.parameters())
    for want, have in zip(expected[2:], got[2:]):
        assert torch.equal(want, have)


def test_learning_rate_of_the_groups_is_restored(tmp_path):
    model = small_model()
    optimizer = optimizer_of(model)
    optimizer.param_groups[0]["lr"] = 0.0123  # e.g. where the schedule had got to
    train_step(model, optimizer)
    save_training_state(tmp_path, optimizer, {"trial_dir": tmp_path})  # anything else is kept as text
    fresh = optimizer_of(small_model())
    assert load_training_state(tmp_path, fresh) == {"trial_dir": str(tmp_path)}
    assert fresh.param_groups[0]["lr"] == 0.0123


def test_the_saved_adapter_is_safetensors_and_reloads(tmp_path):
    from peft import LoraConfig, PeftModel, get_peft_model

    from harness.checkpoint import ADAPTER_WEIGHTS, save_adapter

    torch.manual_seed(0)
    model = get_peft_model(torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Linear(4, 2)),
                           LoraConfig(r=2, target_modules=["0"], init_lora_weights=False))
    save_adapter(model, tmp_path)
    assert (tmp_path / ADAPTER_WEIGHTS).is_file() and (tmp_path / TRAINABLE).is_file()
    assert not list(tmp_path.glob("*.bin"))  # never pickle
    torch.manual_seed(0)
    base = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Linear(4, 2))
    x = torch.randn(3, 4)
    assert torch.allclose(PeftModel.from_pretrained(base, str(tmp_path))(x), model(x))
