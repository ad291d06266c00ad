"""FLOPs of a step from torch's FlopCounterMode, with attention counted right for grouped-query attention.

torch's counter gets grouped-query SDPA wrong: with `enable_gqa=True` (what transformers passes on CUDA: Gemma 3
270M has 4 query heads per key/value head) torch 2.11's formula raises "query/key/value shapes are
incompatible", and on a CPU torch 2.13 dispatches `_scaled_dot_product_flash_attention_for_cpu`, which its
counter does not know, so attention counts 0. Here every SDPA kernel op gets one formula: key and value heads
are repeated up to the query heads (what grouped-query attention computes) and torch's own dense SDPA formulas
count the rest, forward (QK^T and PV) and backward (four matmuls).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

# SDPA kernel ops whose arguments start (query, key, value) / (grad_out, query, key, value); not every torch has
# every one of them.
_FORWARD = ("_scaled_dot_product_flash_attention", "_scaled_dot_product_efficient_attention",
            "_scaled_dot_product_cudnn_attention", "_scaled_dot_product_flash_attention_for_cpu")
_BACKWARD = tuple(f"{name}_backward" for name in _FORWARD)


def _grouped(query: Any, key: Any) -> tuple[int, ...]:
    """`key`'s shape with its heads repeated to the query's (B, H, S, D) head count."""
    return (key[0], query[1], *key[2:])


def sdpa_forward_flops(query: Any, key: Any, value: Any, *args: Any, **kwargs: Any) -> int:
    from torch.utils.flop_counter import sdpa_flop_count

    return sdpa_flop_count(tuple(query), _grouped(query, key), _grouped(query, value))


def sdpa_backward_flops(grad_out: Any, query: Any, key: Any, value: Any, *args: Any, **kwargs: Any) -> int:
    from torch.utils.flop_counter import sdpa_backward_flop_count

    return sdpa_backward_flop_count(tuple(grad_out), tuple(query), _grouped(query, key), _grouped(query, value))


def attention_mapping() -> dict[Any, Callable[..., int]]:
    """custom_mapping for FlopCounterMode: the SDPA ops this torch has, with the grouped-query formulas."""
    mapping: dict[Any, Callable[..., int]] = {}
    for names, formula in ((_FORWARD, sdpa_forward_flops), (_BACKWARD, sdpa_backward_flops)):
        for name in names:
            op = getattr(torch.ops.aten, name, None)
            if op is not None:
                mapping[op] = formula
    return mapping


def count_flops(step: Callable[[], Any]) -> float:
    """FLOPs of what `step` runs (matmuls, attention)."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False, custom_mapping=attention_mapping()) as counter:
        step()
    return float(counter.get_total_flops())
