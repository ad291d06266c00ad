"""Every registered technique, on a tiny random Llama and a tiny random Gemma 3, through the plugin interface
exactly as the train loop uses it (its optimiser, its per-step hook, its export and reload): only its own
parameters change, the loss falls on a fixed batch within a few steps, and the exported weights reloaded onto
a fresh base reproduce the trained model's greedy translations. One module for all techniques, so a new one
is covered by registering it."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from harness.config import load_config
from harness.data import Pair, collate, encode
from harness.evaluation import translate
from harness.losses import target_loss
from harness.models import load_model
from harness.training import build_optimizer, resolve_hyperparameters
from techniques import registry

STEPS = 4
PAIRS = [Pair("Good morning.", "Günaydın."), Pair("Thank you very much.", "Çok teşekkür ederim.")]
SOURCES = ["Good morning.", "Where is the station?", "I like tea."]


def _load(cfg, tech, hp):
    return load_model(dataclasses.replace(cfg.model, **tech.model_overrides(hp)), "cpu")


def _train_steps(tech, hp, model, batch):
    """The loop's optimiser choice and per-step hook, on one fixed batch; returns the per-token losses."""
    optimizer = tech.optimizer(model, hp, 0.0) or build_optimizer(model, float(hp["lr"]), 0.0)
    model.train()
    losses = []
    for step in range(STEPS):
        loss, n = target_loss(model, batch)
        (loss / n).backward()
        optimizer.step()
        tech.on_step(model, hp, step, STEPS)
        optimizer.zero_grad(set_to_none=True)
        losses.append(float(loss.detach()) / n)
    return losses


@pytest.mark.parametrize("name", registry.names())
@pytest.mark.parametrize("kind", ["tiny_llama", "tiny_gemma"])
def test_technique_trains_its_own_parameters_learns_and_reloads(name, kind, request, tmp_path):
    model_dir = request.getfixturevalue(kind)
    cfg = load_config(None, [f"model.name={model_dir}", f"model.cache_dir={tmp_path / 'cache'}"])
    tech = registry.get(name)
    # A few steps must show learning: 30x the technique's own default rate (capped for stability).
    hp = resolve_hyperparameters(tech, cfg, {"lr": min(30 * tech.defaults["lr"], 0.1)})
    torch.manual_seed(0)
    loaded = _load(cfg, tech, hp)
    model = tech.wrap(loaded.model, hp, loaded.tokenizer)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    batch = collate(encode(PAIRS, loaded.tokenizer, cfg.data), [0, 1], loaded.tokenizer.pad_token_id)

    losses = _train_steps(tech, hp, model, batch)

    assert losses[-1] < 0.97 * losses[0], (name, kind, losses)  # prompt methods move slowest (~4-5%)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    after = dict(model.named_parameters())
    assert trainable and any(not torch.equal(before[n], after[n].detach()) for n in trainable)
    frozen = [n for n in after if n not in trainable]
    assert frozen or name == "full", f"{name}: everything trains"
    for n in frozen:
        assert torch.equal(before[n], after[n].detach()), f"{name}: frozen parameter {n} changed"

    model.eval()
    expected = translate(model, loaded.tokenizer, SOURCES, cfg.data, max_new_tokens=8)
    folder = tmp_path / "export"
    folder.mkdir()
    tech.export(model, folder)
    assert list(folder.glob("*.safetensors")) and not list(folder.glob("*.bin"))
    fresh = tech.load(_load(cfg, tech, hp).model, folder)
    assert translate(fresh, loaded.tokenizer, SOURCES, cfg.data, max_new_tokens=8) == expected
