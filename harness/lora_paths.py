"""Faster paths through peft's LoRA layers, exact up to float rounding, for any technique that makes them.

- `merged_lora` (decoding): a LoRA layer costs a decoding step two extra thin matmuls, a scale and an add per
  projection (on Gemma 3 270M at batch 24 that is ~1.5x the base model's step). While translating, each float
  LoRA layer computes with a merged copy W + scale * B @ A instead; the original weight tensor is put back
  afterwards, untouched (peft's own merge/unmerge adds and subtracts in place, which leaves rounding in the base
  weights of a model that is still training). Quantized base layers (QLoRA) and DoRA keep the unmerged path.
- `fused_lora` (training, eval loss): peft computes `result + lora_B(lora_A(x)) * scaling`, which writes and
  reads three output-sized tensors per layer besides the matmuls, and its backward pass writes the LoRA branch's
  input gradient separately before adding it to the base's. Here the scale and both adds live inside matmuls
  (`addmm`, and for a frozen float base without dropout a hand-written backward); the arithmetic is the same.
  On a CPU, where those element-wise passes run at memory speed, that is a few percent of a step.
"""

from __future__ import annotations

import contextlib
import functools
import types
from collections.abc import Iterator
from typing import Any

import torch


def _mergeable(module: Any) -> list[str]:
    """Active vanilla adapters of a LoRA layer over a plain float nn.Linear, which can be folded into its
    weight; [] when none can (a quantized base keeps its own weights)."""
    return _fusable(module) if type(getattr(module, "base_layer", None)) is torch.nn.Linear else []


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
    variants = getattr(module, "lora_variant", {})  # DoRA and other variants compute differently
    if any(a in variants or module.use_dora.get(a, False) or getattr(module, "lora_bias", {}).get(a, False)
           for a in active):
        return []
    return active


class _LoraLinear(torch.autograd.Function):
    """y = x W^T (+ bias) + s (x A^T) B^T for a frozen plain linear base, with a hand-written backward: the
    input gradient g W + (s g B) A is one matmul accumulating into another, where autograd would write the LoRA
    branch's (tokens x in_features) gradient separately and then add the two."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, a: torch.Tensor,
                b: torch.Tensor, scale: float) -> torch.Tensor:
        flat = x.reshape(-1, x.shape[-1])
        down = flat @ a.t()
        out = torch.nn.functional.linear(flat, weight, bias)
        out.addmm_(down, b.t(), alpha=scale)
        ctx.save_for_backward(flat, weight, a, b, down)
        ctx.scale, ctx.x_shape = scale, x.shape
        return out.view(*x.shape[:-1], out.shape[-1])

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, None, None, torch.Tensor,
                                                       torch.Tensor, None]:
        flat, weight, a, b, down = ctx.saved_tensors
        g = grad.reshape(-1, grad.shape[-1])
        grad_b = (g.t() @ down).mul_(ctx.scale)
        grad_down = (g @ b).mul_(ctx.scale)
        grad_a = grad_down.t() @ flat
        grad_x = None
        if ctx.needs_input_grad[0]:
            grad_x = (g @ weight).addmm_(grad_down, a).view(ctx.x_shape)
        return grad_x, None, None, grad_a, grad_b, None


def _single_function_path(self: Any, adapters: list[str], x: torch.Tensor) -> bool:
    """`_LoraLinear` covers one adapter on a frozen float nn.Linear without dropout, all in x's dtype."""
    if len(adapters) != 1 or type(self.base_layer) is not torch.nn.Linear:
        return False
    base, adapter = self.base_layer, adapters[0]
    frozen = not base.weight.requires_grad and (base.bias is None or not base.bias.requires_grad)
    plain = isinstance(self.lora_dropout[adapter], torch.nn.Identity)
    return frozen and plain and base.weight.dtype == x.dtype == self.lora_A[adapter].weight.dtype


def _fused_forward(self: Any, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
    """peft's vanilla LoRA forward with the scale and the add folded into matmuls: `_LoraLinear` where it
    applies, else one addmm per adapter on top of the base layer's output."""
    adapters = _fusable(self)
    weights = [self.lora_A[a].weight for a in adapters]
    if kwargs.get("adapter_names") is not None or any(w.dtype != x.dtype for w in weights):
        return type(self).forward(self, x, *args, **kwargs)
    if not args and not kwargs and _single_function_path(self, adapters, x):
        adapter = adapters[0]
        return _LoraLinear.apply(x, self.base_layer.weight, self.base_layer.bias, weights[0],
                                 self.lora_B[adapter].weight, self.scaling[adapter])
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
