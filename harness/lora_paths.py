"""Faster paths through peft's LoRA layers, exact up to float rounding, for any technique that makes them.

- `merged_lora` (decoding): a LoRA layer costs a decoding step two extra thin matmuls, a scale and an add per
  projection (on Gemma 3 270M at batch 24 that is ~1.5x the base model's step). While translating, each float
  LoRA layer computes with a merged copy W + scale * B @ A instead; the original weight tensor is put back
  afterwards, untouched (peft's own merge/unmerge adds and subtracts in place, which leaves rounding in the base
  weights of a model that is still training). Quantized base layers (QLoRA) and DoRA keep the unmerged path.
- `fused_lora` (training, eval loss): peft computes `result + lora_B(lora_A(x)) * scaling`, which writes and
  reads three output-sized tensors per layer besides the matmuls (and one more in the backward pass); one
  `addmm(result, lora_A(x), B.T, alpha=scaling)` does the same arithmetic with none of them. On a CPU, where
  those element-wise passes run at memory speed, that is several percent of a step.
"""

from __future__ import annotations

import contextlib
import functools
import types
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


@functools.lru_cache(maxsize=1)
def _linear_lora_classes() -> tuple[type, ...]:
    """peft's LoRA layers over a linear base (float, or bitsandbytes 4-/8-bit as QLoRA makes them)."""
    from peft.tuners.lora.layer import Linear

    classes: list[type] = [Linear]
    try:
        from peft.tuners.lora.bnb import Linear4bit, Linear8bitLt

        classes += [Linear4bit, Linear8bitLt]
    except ImportError:  # bitsandbytes missing: no quantized layers exist either
        pass
    return tuple(classes)


def _fusable(module: Any) -> list[str]:
    """Active vanilla LoRA adapters of a LoRA layer over a linear base; [] when it must keep peft's path."""
    if not isinstance(module, _linear_lora_classes()) or module.merged or module.disable_adapters:
        return []
    active = [a for a in module.active_adapters if a in module.lora_A]
    variants = getattr(module, "lora_variant", {})
    if any(a in variants or getattr(module, "lora_bias", {}).get(a, False) for a in active):
        return []
    return active


def _fused_forward(self: Any, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
    """peft's vanilla LoRA forward with the scale and the add folded into one addmm."""
    adapters = _fusable(self)
    weights = [self.lora_A[a].weight for a in adapters]
    if kwargs.get("adapter_names") is not None or any(w.dtype != x.dtype for w in weights):
        return type(self).forward(self, x, *args, **kwargs)
    result = self.base_layer(x, *args, **kwargs)
    if result.dtype != x.dtype:  # e.g. a quantized base computing in another dtype: peft's arithmetic
        lora = sum(self.lora_B[a](self.lora_A[a](self.lora_dropout[a](x))) * self.scaling[a] for a in adapters)
        return (result + lora).to(result.dtype)
    shape = result.shape
    flat = result.reshape(-1, shape[-1])
    for adapter, a_weight in zip(adapters, weights):
        down = torch.nn.functional.linear(self.lora_dropout[adapter](x), a_weight)
        flat = torch.addmm(flat, down.reshape(-1, down.shape[-1]), self.lora_B[adapter].weight.t(),
                           alpha=self.scaling[adapter])
    return flat.view(shape)


@contextlib.contextmanager
def fused_lora(model: Any) -> Iterator[int]:
    """Within the block, every vanilla LoRA Linear runs `_fused_forward`; yields how many layers do."""
    patched = []
    try:
        for module in model.modules():
            if _fusable(module):
                module.forward = types.MethodType(_fused_forward, module)
                patched.append(module)
        yield len(patched)
    finally:
        for module in patched:
            del module.forward
