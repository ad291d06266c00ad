"""LoRA deltas folded into the weights while decoding.

A LoRA layer costs a decoding step two extra thin matmuls, a scale and an add per projection (on Gemma 3
270M at batch 24 that is ~1.5x the base model's step). While translating, each float LoRA layer computes with
a merged copy W + scale * B @ A instead; the original weight tensor is put back afterwards, untouched (peft's
own merge/unmerge adds and subtracts in place, which leaves rounding in the base weights of a model that is
still training). Quantized base layers (QLoRA) and DoRA keep the unmerged path.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch


def _mergeable(module: Any) -> list[str]:
    """Active adapters of a float LoRA Linear that can be folded into its weight; [] when none can."""
    try:
        from peft.tuners.lora.layer import Linear as LoraLinear
    except ImportError:  # pragma: no cover - peft is a dependency
        return []
    if not isinstance(module, LoraLinear) or type(module.base_layer) is not torch.nn.Linear:
        return []
    if module.merged or module.disable_adapters:
        return []
    active = [a for a in module.active_adapters if a in module.lora_A]
    if any(module.use_dora.get(a, False) or getattr(module, "lora_bias", {}).get(a, False) for a in active):
        return []
    return active


@contextlib.contextmanager
def merged_lora(model: Any) -> Iterator[int]:
    """Within the block, every mergeable LoRA layer runs as one plain linear layer; yields how many."""
    saved: list[tuple[Any, torch.Tensor]] = []
    try:
        with torch.no_grad():
            for module in model.modules():
                adapters = _mergeable(module)
                if not adapters:
                    continue
                weight = module.base_layer.weight
                merged = weight.data.clone()
                for adapter in adapters:
                    merged += module.get_delta_weight(adapter).to(merged.dtype)
                saved.append((module, weight.data))
                weight.data = merged
                module.merged_adapters = list(adapters)
        yield len(saved)
    finally:
        for module, original in saved:
            module.base_layer.weight.data = original
            module.merged_adapters = []
