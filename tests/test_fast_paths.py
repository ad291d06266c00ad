"""The speed paths (packed batches, the chunked loss, fused LoRA layers, merged LoRA decoding) for every
registered technique: where a technique can take a path its results equal the plain path's, and where it
cannot the harness takes the plain path without error. The path counts are pinned too, so a test cannot pass
by having every technique silently skip a path."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from harness.config import load_config
from harness.data import collate, encode, load_splits
from harness.decoding import greedy_generate
from harness.lora_paths import fused_lora, merged_lora
from harness.losses import target_loss
from harness.models import load_model
from harness.packing import make_batch
from harness.training import resolve_hyperparameters, uses_packing
from techniques import registry

# Techniques whose layers are peft's plain LoRA Linear: the fused path applies (QLoRA's 4-bit base too), and
# over a float base the merged decoding path as well.
PLAIN_LORA = {"lora", "rslora", "pissa", "lora_plus", "lora_fa"}
FUSED = PLAIN_LORA | {"qlora"}


def _trained_looking(model_dir, name):
    """The technique's model with every trainable tensor moved off its init (zero-initialised updates such as
    LoRA's B would otherwise hide any mistake)."""
    cfg = load_config(None, [f"model.name={model_dir}"])
    tech = registry.get(name)
    hp = resolve_hyperparameters(tech, cfg)
    torch.manual_seed(0)
    loaded = load_model(dataclasses.replace(cfg.model, **tech.model_overrides(hp)), "cpu")
    model = tech.wrap(loaded.model, hp, loaded.tokenizer)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(torch.randn_like(p) * 0.02)
    return cfg, tech, model, loaded.tokenizer


def _loss_and_grads(model, batch):
    loss, n = target_loss(model, batch)
    (loss / n).backward()
    grads = {k: p.grad.clone() for k, p in model.named_parameters() if p.requires_grad and p.grad is not None}
    model.zero_grad(set_to_none=True)
    return float(loss) / n, grads


def _assert_close(grads, reference):
    assert grads.keys() == reference.keys()
    for key, grad in reference.items():
        scale = float(grad.abs().max()) + 1e-12
        assert float((grads[key] - grad).abs().max()) / scale < 1e-3, key


@pytest.mark.parametrize("name", registry.names())
def test_fast_paths_are_exact_or_skipped(name, tiny_gemma):
    cfg, tech, model, tokenizer = _trained_looking(tiny_gemma, name)
    enc = encode(load_splits(cfg.data).train[:6], tokenizer, cfg.data)
    padded = collate(enc, list(range(6)), tokenizer.pad_token_id)
    model.train()

    # The model's own loss (peft's forward with labels: virtual tokens, full logits, no harness path) is the
    # reference for the chunked loss and the fused layers. AdaLoRA's wrapper would add its orthogonality
    # penalty to that loss, so its inner model answers (the same adapted layers).
    outer = model if tech.virtual_tokens or not hasattr(model, "get_base_model") else model.get_base_model()
    reference = outer(**padded).loss
    reference.backward()
    ref_grads = {k: p.grad.clone() for k, p in model.named_parameters() if p.requires_grad and p.grad is not None}
    model.zero_grad(set_to_none=True)
    loss, grads = _loss_and_grads(model, padded)
    assert loss == pytest.approx(float(reference), rel=1e-4)
    _assert_close(grads, ref_grads)
    with fused_lora(model) as fused:
        assert (fused > 0) == (name in FUSED), fused

    # Packed batches: the same loss and gradients where the technique allows them; padded ones otherwise.
    packs = uses_packing(model, True, tech)
    assert packs == tech.packed_batches and packs == (not tech.virtual_tokens)
    if packs:
        packed = make_batch(enc, list(range(6)), tokenizer.pad_token_id, True)
        packed_loss, packed_grads = _loss_and_grads(model, packed)
        assert packed_loss == pytest.approx(loss, rel=1e-4)
        _assert_close(packed_grads, grads)

    # Merged decoding: the same greedy tokens as peft's own layers, where layers can be merged.
    model.eval()
    tokenizer.padding_side = "left"
    prompts = tokenizer(["English: Good morning.\nTurkish:", "English: Where is the station?\nTurkish:"],
                        return_tensors="pt", padding=True)
    with torch.inference_mode():
        plain = greedy_generate(model, prompts["input_ids"], prompts["attention_mask"], [8, 8], [2])
    with merged_lora(model) as merged, torch.inference_mode():
        assert (merged > 0) == (name in PLAIN_LORA), merged
        assert greedy_generate(model, prompts["input_ids"], prompts["attention_mask"], [8, 8], [2]) == plain
