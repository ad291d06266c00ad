"""What the plugin interface carries besides wrapping, technique by technique where it differs: optimiser
groups (LoRA+, LoRA-FA), the per-step hook (AdaLoRA), exports (PiSSA, full), capabilities, groups and the
technique listing; and the leaderboard's adapter size."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from harness.cli import main
from harness.config import load_config
from harness.data import Pair, collate, encode
from harness.leaderboard import trial_row
from harness.losses import target_loss
from harness.models import load_model
from harness.training import resolve_hyperparameters
from harness.translate import Target, is_mergeable
from techniques import registry


def _wrapped(model_dir, name, *overrides):
    cfg = load_config(None, [f"model.name={model_dir}", *overrides])
    tech = registry.get(name)
    hp = resolve_hyperparameters(tech, cfg)
    torch.manual_seed(0)
    loaded = load_model(dataclasses.replace(cfg.model, **tech.model_overrides(hp)), "cpu")
    return cfg, tech, hp, tech.wrap(loaded.model, hp, loaded.tokenizer), loaded.tokenizer


def test_lora_plus_gives_b_its_larger_learning_rate(tiny_llama):
    _, tech, hp, model, _ = _wrapped(tiny_llama, "lora_plus", "per_technique.lora_plus.loraplus_lr_ratio=8")
    optimizer = tech.optimizer(model, hp, 0.0)
    rates = {}
    for group in optimizer.param_groups:
        for p in group["params"]:
            rates[id(p)] = group["lr"]
    for name, p in model.named_parameters():
        if "lora_A" in name:
            assert rates[id(p)] == pytest.approx(hp["lr"]), name
        elif "lora_B" in name:
            assert rates[id(p)] == pytest.approx(8 * hp["lr"]), name


def test_lora_fa_trains_b_only_with_peft_optimizer(tiny_llama):
    from peft.optimizers.lorafa import LoraFAOptimizer

    _, tech, hp, model, _ = _wrapped(tiny_llama, "lora_fa")
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_B" in n for n in trainable)
    assert isinstance(tech.optimizer(model, hp, 0.0), LoraFAOptimizer)


def test_adalora_step_hook_sets_the_schedule_and_allocates_ranks(tiny_llama):
    cfg, tech, hp, model, tokenizer = _wrapped(tiny_llama, "adalora")
    config = model.peft_config["default"]
    batch = collate(encode([Pair("Good morning.", "Günaydın.")], tokenizer, cfg.data), [0], tokenizer.pad_token_id)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=hp["lr"])
    for step in range(4):
        loss, n = target_loss(model, batch)
        (loss / n).backward()
        optimizer.step()
        tech.on_step(model, hp, step, 20)
        optimizer.zero_grad()
    assert (config.total_step, config.tinit, config.tfinal) == (20, 2, 4)
    assert config.rank_pattern  # the budget phase has started masking ranks


def test_pissa_exports_a_lora_for_the_unmodified_base(tiny_llama, tmp_path):
    _, tech, _, model, _ = _wrapped(tiny_llama, "pissa", "per_technique.pissa.r=4")
    tech.export(model, tmp_path)
    saved = json.loads((tmp_path / "adapter_config.json").read_text())
    assert saved["r"] == 8 and saved["init_lora_weights"] is True  # peft's rank-2r conversion


def test_capabilities_decide_merging_and_packing():
    for name in registry.names():
        tech = registry.get(name)
        assert is_mergeable(Target(None, None, None, name)) == tech.mergeable, name
        assert not (tech.virtual_tokens and tech.packed_batches), name
    assert not registry.get("p_tuning").mergeable and registry.get("p_tuning").virtual_tokens
    assert registry.get("dora").mergeable and not registry.get("full").mergeable
    # An adapter without a trial record: peft's config class tells prompt learning apart.
    assert is_mergeable(Target(None, None, None, None, peft_type="LOHA"))
    assert not is_mergeable(Target(None, None, None, None, peft_type="P_TUNING"))


def test_groups_select_techniques():
    assert registry.resolve(["prompt-family"]) == ["prefix_tuning", "soft_prompting", "p_tuning"]
    lora_family = registry.resolve(["lora-family"])
    assert lora_family[:2] == ["lora", "qlora"] and {"dora", "pissa", "adalora"} <= set(lora_family)
    assert "ia3" not in lora_family and "full" in registry.resolve(["all"])
    assert registry.resolve(["original", "dora", "lora"]) == ["lora", "qlora", "prefix_tuning", "soft_prompting",
                                                              "dora"]


def test_list_techniques_shows_every_technique_with_its_search_space(capsys):
    assert main(["--list-techniques"]) == 0
    out = capsys.readouterr().out
    for name in registry.names():
        tech = registry.get(name)
        assert f"  {name}" in out and tech.description in out, name
    assert "loraplus_lr_ratio∈{4,8,16,32}" in out and "lr~log[1e-05,0.0003]" in out
    assert "prompt-family: prefix_tuning, soft_prompting, p_tuning" in out


def test_adapter_size_counts_the_exported_weights_only(tmp_path):
    adapter = tmp_path / "run" / "trials" / "t1" / "adapter"
    adapter.mkdir(parents=True)
    (adapter / "adapter_model.safetensors").write_bytes(b"x" * 3 * 2**20)
    (adapter / "trainable_state.safetensors").write_bytes(b"x" * 2**20)  # the resume copy: not shipped
    (adapter / "adapter_config.json").write_text("{}")
    row, _ = trial_row(adapter.parent, "chrf")
    assert row["adapter_mb"] == 3.0
    assert trial_row(tmp_path / "run" / "trials" / "empty", "chrf")[0]["adapter_mb"] is None


def test_help_lists_every_technique():
    from harness.cli import parser

    text = parser().format_help()
    assert all(f"  {name}" in text for name in registry.names())
    assert "lora-family" in text and "--list-techniques" in text


def test_a_technique_can_refuse_packed_batches(tiny_llama):
    from harness.training import uses_packing

    _, tech, _, model, _ = _wrapped(tiny_llama, "lora")

    class Unpacked(type(tech)):
        packed_batches = False

    assert uses_packing(model, True, tech) and not uses_packing(model, True, Unpacked())
