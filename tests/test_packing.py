"""Packed (padding-free) batches give the padded batch's loss and gradients, and are used only where exact."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from harness.config import load_config
from harness.data import Pair, collate, encode, load_splits
from harness.evaluation import eval_loss
from harness.losses import target_loss
from harness.models import load_model
from harness.packing import pack, packing_unsupported
from harness.training import resolve_hyperparameters, uses_packing
from techniques import registry


def _wrapped(model_dir, name="lora", **overrides):
    cfg = load_config(None, [f"model.name={model_dir}", *(f"{k}={v}" for k, v in overrides.items())])
    tech = registry.get(name)
    hp = resolve_hyperparameters(tech, cfg)
    torch.manual_seed(0)
    loaded = load_model(dataclasses.replace(cfg.model, **tech.model_overrides(hp)), "cpu")
    model = tech.wrap(loaded.model, hp, loaded.tokenizer)
    with torch.no_grad():  # a trained-looking adapter: LoRA's B starts at zero, which would hide mistakes
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.05)
    return cfg, model, loaded.tokenizer


def _grads(model):
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
    model.zero_grad(set_to_none=True)
    return grads


@pytest.mark.parametrize("kind", ["llama", "gemma3"])
def test_packed_loss_and_gradients_equal_the_padded_batch(kind, tiny_llama, tiny_gemma):
    # The tiny Gemma 3 has a 32-token sliding window on one layer: long examples exercise the band mask.
    cfg, model, tokenizer = _wrapped(tiny_llama if kind == "llama" else tiny_gemma)
    enc = encode(load_splits(cfg.data).train[:12], tokenizer, cfg.data)
    lengths = enc.lengths()
    assert lengths.max() > 32 and lengths.min() < lengths.max()  # real padding in the padded batch
    indices = list(range(12))
    model.train()
    padded, n_padded = target_loss(model, collate(enc, indices, tokenizer.pad_token_id))
    (padded / n_padded).backward()
    g_padded = _grads(model)
    batch = pack(enc, indices)
    assert batch["input_ids"].shape == (1, int(lengths.sum()))
    packed, n_packed = target_loss(model, batch)
    (packed / n_packed).backward()
    g_packed = _grads(model)
    assert n_packed == n_padded == enc.target_tokens()
    assert float(packed) == pytest.approx(float(padded), rel=1e-5)
    for name, grad in g_padded.items():
        scale = float(grad.abs().max()) + 1e-12
        assert float((grad - g_packed[name]).abs().max()) / scale < 1e-4, name
    # The padded path is untouched: the model's attention implementation is restored after a packed forward.
    assert model.get_base_model().config._attn_implementation in ("sdpa", "eager")


def test_packing_never_lets_one_example_predict_the_next():
    """Each example's first label is -100, so the shifted loss stops at every boundary."""
    class Tok:
        eos_token_id = 2

    enc_ids = [torch.tensor([1, 5, 6, 2]).numpy(), torch.tensor([1, 7, 2]).numpy()]
    from harness.data import Encoded
    import numpy as np

    enc = Encoded(enc_ids, np.array([0, 0], dtype=np.int32))  # no prompt masking at all
    batch = pack(enc, [0, 1])
    assert batch["input_ids"].tolist() == [[1, 5, 6, 2, 1, 7, 2]]
    assert batch["position_ids"].tolist() == [[0, 1, 2, 3, 0, 1, 2]]
    assert batch["labels"].tolist() == [[-100, 5, 6, 2, -100, 7, 2]]
    assert batch["cu_seq_lens"].tolist() == [0, 4, 7]


def test_eval_loss_is_the_same_with_packing(tiny_llama):
    cfg, model, tokenizer = _wrapped(tiny_llama)
    pairs = [Pair("Good morning.", "Günaydın."), Pair("Thank you very much, my friend.", "Çok teşekkür ederim.")]
    enc = encode(pairs, tokenizer, cfg.data)
    packed = eval_loss(model, enc, 2, tokenizer.pad_token_id, "cpu")
    model.train()
    manual, n = target_loss(model, collate(enc, [0, 1], tokenizer.pad_token_id))
    assert packed[0] == pytest.approx(float(manual) / n, rel=1e-5)


def test_packing_is_used_for_weight_adapters_only(tiny_llama):
    for name, packs in [("lora", True), ("qlora", True), ("prefix_tuning", False), ("soft_prompting", False)]:
        _, model, _ = _wrapped(tiny_llama, name)
        reason = packing_unsupported(model)
        assert (reason is None) == packs, (name, reason)
        assert uses_packing(model, True) == packs
        assert uses_packing(model, False) is False
    assert "virtual tokens" in packing_unsupported(_wrapped(tiny_llama, "prefix_tuning")[1])
    _, eager, _ = _wrapped(tiny_llama, "lora")
    eager.get_base_model().config._attn_implementation = "flash_attention_2"
    assert "flash_attention_2" in packing_unsupported(eager)


def test_translation_with_merged_lora_equals_the_unmerged_adapter_and_restores_the_weights(tiny_llama):
    from harness.decoding import greedy_generate
    from harness.lora_paths import merged_lora

    cfg, model, tokenizer = _wrapped(tiny_llama)
    model.eval()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    tokenizer.padding_side = "left"
    enc = tokenizer(["English: Good morning.\nTurkish:", "English: Where is the station?\nTurkish:"],
                    return_tensors="pt", padding=True)
    with torch.inference_mode():
        plain = greedy_generate(model, enc["input_ids"], enc["attention_mask"], [12, 12], [2])
        x = torch.randn(3, 64)
        layer = model.get_base_model().model.layers[0].self_attn.q_proj
        reference = layer(x)
    with merged_lora(model) as n:
        assert n == 2 * 7  # every projection of both layers
        with torch.inference_mode():
            merged = greedy_generate(model, enc["input_ids"], enc["attention_mask"], [12, 12], [2])
            assert torch.allclose(layer(x), reference, atol=1e-5)
            assert layer.merged
    assert merged == plain
    assert not layer.merged
    for name, p in model.named_parameters():
        assert torch.equal(before[name], p.detach()), name


@pytest.mark.parametrize("name,dropout", [("lora", 0.0), ("lora", 0.1), ("qlora", 0.0)])
def test_fused_lora_forward_gives_peft_loss_and_gradients(name, dropout, tiny_gemma):
    """target_loss runs LoRA layers with the scale and add folded into matmuls (a hand-written backward for a
    float base without dropout, one addmm otherwise); loss and gradients equal peft's own layers'."""
    from harness.losses import final_hidden, head_loss
    from harness.lora_paths import fused_lora

    cfg, model, tokenizer = _wrapped(tiny_gemma, name, **{f"per_technique.{name}.dropout": dropout})
    enc = encode(load_splits(cfg.data).train[:6], tokenizer, cfg.data)
    batch = collate(enc, list(range(6)), tokenizer.pad_token_id)
    model.train()
    labels = batch["labels"][:, 1:]
    mask = labels != -100
    torch.manual_seed(1)  # the same dropout masks for both: each layer draws once, in the same order
    hidden = final_hidden(model, batch["input_ids"], batch["attention_mask"])[:, :-1]  # peft's forward
    plain = head_loss(model, hidden[mask], labels[mask])
    plain.backward()
    g_plain = _grads(model)
    torch.manual_seed(1)
    fused, _ = target_loss(model, batch)
    fused.backward()
    g_fused = _grads(model)
    assert float(fused) == pytest.approx(float(plain), rel=1e-5)
    for param, grad in g_plain.items():
        scale = float(grad.abs().max()) + 1e-12
        assert float((grad - g_fused[param]).abs().max()) / scale < 1e-4, param
    with fused_lora(model) as layers:
        assert layers == 2 * 7
        assert "forward" in vars(model.get_base_model().model.layers[0].mlp.up_proj)
    assert "forward" not in vars(model.get_base_model().model.layers[0].mlp.up_proj)  # peft's forward is back


@pytest.mark.parametrize("implementation", ["sdpa", "eager"])
def test_packed_forward_uses_packed_attention_then_restores_the_models_choice(implementation, tiny_llama):
    from harness.packing import ATTENTION

    cfg, model, tokenizer = _wrapped(tiny_llama)
    config = model.get_base_model().config
    config._attn_implementation = implementation
    assert packing_unsupported(model) is None
    seen = []
    layer = model.get_base_model().model.layers[0].self_attn
    handle = layer.register_forward_pre_hook(lambda module, args: seen.append(module.config._attn_implementation))
    try:
        enc = encode(load_splits(cfg.data).train[:3], tokenizer, cfg.data)
        with torch.no_grad():
            target_loss(model, pack(enc, [0, 1, 2]))
            target_loss(model, collate(enc, [0, 1, 2], tokenizer.pad_token_id))
    finally:
        handle.remove()
    assert seen == [ATTENTION, implementation]  # packed rows never see a plain (cross-sentence) attention
    assert config._attn_implementation == implementation
