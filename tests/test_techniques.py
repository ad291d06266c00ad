"""Technique plugins on tiny real models: registry, what trains, that it learns, files written and reloaded."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from harness.config import load_config
from harness.data import Pair, collate, encode
from harness.evaluation import translate
from harness.io import read_jsonl
from harness.losses import target_loss
from harness.models import load_model
from harness.training import TrialSpec, resolve_hyperparameters, run_trial
from techniques import registry

TECHNIQUES = ["lora", "qlora", "prefix_tuning", "soft_prompting"]


def test_registry_names_aliases_and_labels():
    # the original four first, then the other built-ins, whatever plugin packages are installed after them
    assert registry.names()[: len(TECHNIQUES)] == TECHNIQUES
    assert registry.get("prompt_tuning").name == "soft_prompting"
    assert registry.get("base").trains is False
    assert registry.resolve(["original"]) == TECHNIQUES
    assert registry.resolve(["all"]) == registry.names() and "base" not in registry.names()
    assert registry.resolve(["prompt_tuning", "lora", "soft_prompting"]) == ["soft_prompting", "lora"]
    for name in TECHNIQUES:
        tech = registry.get(name)
        assert tech.description and "lr" in tech.defaults and "lr" in tech.search_space
        assert tech.label(dict(tech.defaults))
    assert registry.get("lora").label(dict(registry.get("lora").defaults)).startswith("r=16 alpha=32")
    assert registry.get("qlora").model_overrides({}) == {"load_in_4bit": True}
    assert registry.get("lora").model_overrides({}) == {}


def test_plugins_from_the_entry_point_group_come_after_the_built_ins(tmp_path, monkeypatch):
    import fault_plugins

    monkeypatch.syspath_prepend(str(fault_plugins.install(tmp_path)))
    registry.reload()
    try:
        names = registry.names()
        assert names[: len(TECHNIQUES)] == TECHNIQUES and {"ia3", "faulty"} <= set(names[len(TECHNIQUES):])
        assert "broken" not in names  # a plugin that fails to load does not take the others down
        assert type(registry.get("faulty")).__name__ == "Faulty" and registry.resolve(["all"]) == names
    finally:
        monkeypatch.undo()
        registry.reload()
    assert "faulty" not in registry.names()


def test_hyperparameter_precedence():
    cfg = load_config(None, ["peft.r=8", "train.lr=0.002", "per_technique.lora.r=4", "per_technique.prompt_tuning.num_virtual_tokens=5"])
    lora = resolve_hyperparameters(registry.get("lora"), cfg)
    assert lora["r"] == 4 and lora["lr"] == 0.002 and lora["alpha"] == 32
    assert resolve_hyperparameters(registry.get("qlora"), cfg)["r"] == 8
    assert resolve_hyperparameters(registry.get("lora"), cfg, {"r": 32})["r"] == 32
    soft = resolve_hyperparameters(registry.get("soft_prompting"), cfg)
    assert soft["num_virtual_tokens"] == 5 and "r" not in soft


def _tiny_cfg(tmp_path, model_dir, epochs=2):
    return load_config(None, [
        f"model.name={model_dir}", f"model.cache_dir={tmp_path / 'cache'}", "data.max_train_samples=32",
        "data.max_validation_samples=8", "train.batch_size=8", f"train.epochs={epochs}", "eval.validation_samples=4",
        "eval.test_samples=6", "eval.max_new_tokens=10", "run.metric=eval_loss",
    ])


@pytest.mark.parametrize("name", TECHNIQUES)
def test_technique_overfits_a_fixed_batch_and_trains_only_its_parameters(name, tiny_llama, tiny_gemma, tmp_path):
    for model_dir in (tiny_llama, tiny_gemma):
        cfg = _tiny_cfg(tmp_path, model_dir)
        tech = registry.get(name)
        hp = resolve_hyperparameters(tech, cfg, {"lr": 1e-1 if name == "soft_prompting" else 1e-2})
        torch.manual_seed(0)
        loaded = load_model(dataclasses.replace(cfg.model, **tech.model_overrides(hp)), "cpu")
        model = tech.wrap(loaded.model, hp, loaded.tokenizer)
        before = {n: p.detach().clone() for n, p in model.named_parameters()}
        trainable = {n for n, p in model.named_parameters() if p.requires_grad}
        assert trainable and len(trainable) < len(before)
        pairs = [Pair("Good morning.", "Günaydın."), Pair("Thank you very much.", "Çok teşekkür ederim.")]
        batch = collate(encode(pairs, loaded.tokenizer, cfg.data), [0, 1], loaded.tokenizer.pad_token_id)
        optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=hp["lr"])
        # Training mode, as in run_trial (bitsandbytes re-packs 4-bit weights in place for inference on CPUs
        # with AVX512-BF16, which would show here as a changed frozen tensor).
        model.train()
        losses = []
        for _ in range(30):
            loss, n = target_loss(model, batch)
            (loss / n).backward()
            optimizer.step()
            optimizer.zero_grad()
            losses.append(float(loss.detach()) / n)
        assert losses[-1] < 0.9 * losses[0], (name, model_dir.name, losses)
        after = dict(model.named_parameters())
        for n, p in after.items():
            if n in trainable:
                continue
            assert torch.equal(before[n], p.detach()), f"{name}: frozen parameter {n} changed"
        assert any(not torch.equal(before[n], after[n].detach()) for n in trainable)


def test_target_loss_equals_the_models_own_loss(tiny_llama, tiny_gemma):
    """Computing the head at target positions only is an optimisation, not a different loss."""
    for model_dir in (tiny_llama, tiny_gemma):
        cfg = load_config(None, [f"model.name={model_dir}"])
        loaded = load_model(cfg.model, "cpu")
        pairs = [Pair("Hello.", "Merhaba."), Pair("Where is the station?", "İstasyon nerede?")]
        batch = collate(encode(pairs, loaded.tokenizer, cfg.data), [0, 1], loaded.tokenizer.pad_token_id)
        with torch.no_grad():
            ours, n = target_loss(loaded.model, batch)
            theirs = loaded.model(**batch).loss
        assert float(ours) / n == pytest.approx(float(theirs), rel=1e-5)


@pytest.mark.parametrize("name", TECHNIQUES)
def test_trial_writes_files_and_adapter_reloads_with_same_outputs(name, tiny_gemma, tmp_path):
    from peft import PeftModel

    cfg = _tiny_cfg(tmp_path, tiny_gemma)
    tech = registry.get(name)
    hp = resolve_hyperparameters(tech, cfg)
    folder = tmp_path / "trial"
    result = run_trial(TrialSpec(name, name, hp, cfg, folder, "cpu", 1))
    assert result["status"] == "ok"
    rows = read_jsonl(folder / "metrics.jsonl")
    assert [r["epoch"] for r in rows] == [1, 2]
    for key in ("step", "train_loss", "train_ppl", "eval_loss", "eval_ppl", "bleu", "chrf", "tokens_per_s",
                "train_seconds", "peak_memory_mb"):
        assert rows[-1][key] is not None, key
    assert (folder / "adapter" / "adapter_model.safetensors").is_file()
    assert not list(folder.rglob("*.bin")) and not list(folder.rglob("*.pt"))
    lines = (folder / "predictions.tsv").read_text(encoding="utf-8").splitlines()
    assert lines[0] == "source\treference\thypothesis" and len(lines) == 7
    # A fresh base model + the saved adapter reproduces the trial's greedy translations.
    loaded = load_model(dataclasses.replace(cfg.model, **tech.model_overrides(hp)), "cpu")
    model = PeftModel.from_pretrained(loaded.model, str(folder / "adapter"))
    sources = [line.split("\t")[0] for line in lines[1:]]
    hyps = translate(model, loaded.tokenizer, sources, cfg.data, max_new_tokens=cfg.eval.max_new_tokens)
    assert hyps == [line.split("\t")[2] for line in lines[1:]]
