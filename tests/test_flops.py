"""Attention FLOPs under grouped-query SDPA (benchmarks/flops.py): what torch's own counter gets wrong (it raises
under torch 2.11 on CUDA and counts 0 under torch 2.13 on a CPU)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from benchmarks.flops import attention_mapping, count_flops, sdpa_backward_flops, sdpa_forward_flops

B, HQ, HKV, S, D = 2, 4, 1, 32, 16  # Gemma 3 270M's ratio: 4 query heads per key/value head


def qkv(requires_grad: bool = False) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    q = torch.randn(B, HQ, S, D, generator=g).requires_grad_(requires_grad)
    k = torch.randn(B, HKV, S, D, generator=g).requires_grad_(requires_grad)
    v = torch.randn(B, HKV, S, D, generator=g).requires_grad_(requires_grad)
    return q, k, v


def test_grouped_query_attention_counts_its_two_matmuls():
    q, k, v = qkv()
    flops = count_flops(lambda: F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True))
    assert flops == 2 * (2 * B * HQ * S * S * D)  # QK^T and PV, every query head against its shared KV head


def test_grouped_query_attention_counts_like_repeated_heads_with_backward():
    q, k, v = qkv(requires_grad=True)
    grouped = count_flops(lambda: F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
                          .sum().backward())
    forward = 4 * B * HQ * S * S * D
    # torch's dense SDPA backward formula on the repeated heads (what grouped-query attention computes)
    backward = sdpa_backward_flops((B, HQ, S, D), (B, HQ, S, D), (B, HKV, S, D), (B, HKV, S, D))
    assert backward > forward
    assert grouped == forward + backward


def test_formulas_repeat_key_value_heads():
    assert sdpa_forward_flops((B, HQ, S, D), (B, HKV, S, D), (B, HKV, S, D)) == 4 * B * HQ * S * S * D
    assert sdpa_forward_flops((B, HQ, S, D), (B, HQ, S, D), (B, HQ, S, D)) == 4 * B * HQ * S * S * D


def test_the_mapping_covers_this_torchs_sdpa_kernels():
    names = {str(op) for op in attention_mapping()}
    assert "aten._scaled_dot_product_flash_attention" in names
    assert "aten._scaled_dot_product_efficient_attention_backward" in names
