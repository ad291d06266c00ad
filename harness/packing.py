"""Padding-free batches ("packing") for techniques that change weights (LoRA, QLoRA).

A batch's sequences are concatenated into one row, so every linear layer, norm and MLP runs on real tokens
only (with length-grouped batches of 16, padding is still 10-20% of the positions). Attention stays per
sequence: a registered attention function scatters queries, keys and values into a padded
(batch, heads, longest, dim) layout, runs causal SDPA and gathers the real positions back, so the loss and
gradients equal the padded batch's (tests check both). Position ids restart at every sequence, so rotary
embeddings are unchanged. Prompt-learning methods (prefix tuning, soft prompts) add per-row virtual tokens
and keep padded batches.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch

from harness.data import IGNORE_INDEX, Encoded, collate

ATTENTION = "peft_bench_packed_sdpa"
PACKED_KEY = "cu_seq_lens"  # a batch dict with this key is packed


def is_prompt_learning(model: Any) -> bool:
    """Prefix tuning / soft prompts: the adapter acts through extra positions, not modified weights."""
    config = getattr(model, "active_peft_config", None)
    return bool(config is not None and config.is_prompt_learning)


def base_model(model: Any) -> Any:
    """The transformers model under a peft wrapper (or the model itself when unwrapped)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def packing_unsupported(model: Any) -> str | None:
    """Why this model cannot train on packed batches, or None when it can."""
    if is_prompt_learning(model):
        return "prompt-learning adapters add virtual tokens per row"
    base = base_model(model)
    if not getattr(type(base), "_supports_attention_backend", False):
        return f"{type(base).__name__} does not use transformers' attention interface"
    config = getattr(base, "config", None)
    if getattr(config, "attn_logit_softcapping", None):
        return "attention logit soft-capping is not available in SDPA"
    if getattr(config, "use_bidirectional_attention", False):
        return "the model attends bidirectionally"
    if getattr(config, "_attn_implementation", None) not in ("sdpa", "eager"):
        return f"attention implementation {config._attn_implementation!r} is kept as chosen"
    return None


def pack(enc: Encoded, indices: Sequence[int]) -> dict[str, torch.Tensor]:
    """One row holding the examples back to back. Each example's first label is -100 (nothing in the row
    predicts it), so the shifted loss never crosses from one example into the next."""
    ids = [enc.input_ids[i].astype(np.int64) for i in indices]
    labels = [enc.labels(i) for i in indices]
    for row in labels:
        row[0] = IGNORE_INDEX
    lengths = torch.tensor([len(x) for x in ids], dtype=torch.long)
    total = int(lengths.sum())
    return {
        "input_ids": torch.from_numpy(np.concatenate(ids))[None],
        "labels": torch.from_numpy(np.concatenate(labels))[None],
        "attention_mask": torch.ones(1, total, dtype=torch.long),  # counts tokens; not given to the model
        "position_ids": torch.cat([torch.arange(n) for n in lengths.tolist()])[None],
        PACKED_KEY: torch.cat([lengths.new_zeros(1), lengths.cumsum(0)]),
    }


def make_batch(enc: Encoded, indices: Sequence[int], pad_id: int, packed: bool) -> dict[str, torch.Tensor]:
    return pack(enc, indices) if packed else collate(enc, indices, pad_id)


def model_kwargs(batch: dict[str, torch.Tensor]) -> dict[str, Any]:
    """What the model's forward gets for a packed batch (the standard variable-length attention kwargs,
    which transformers passes down to the attention function)."""
    cu = batch[PACKED_KEY]
    longest = int((cu[1:] - cu[:-1]).max())
    return {"position_ids": batch["position_ids"], "cu_seq_lens_q": cu, "cu_seq_lens_k": cu,
            "max_length_q": longest, "max_length_k": longest}


_layout_cache: list[Any] = [None, None]


def _padded_index(cu: torch.Tensor, total: int, longest: int) -> torch.Tensor:
    """For each packed token, its position in a (batch x longest) padded layout. Every layer of one forward
    gets the same `cu` tensor, so the index is computed once per forward."""
    if _layout_cache[0] is cu:
        return _layout_cache[1]
    lengths = cu[1:] - cu[:-1]
    seq = torch.repeat_interleave(torch.arange(len(lengths), device=cu.device), lengths)
    index = seq * longest + torch.arange(total, device=cu.device) - cu[:-1][seq]
    _layout_cache[0], _layout_cache[1] = cu, index
    return index


def packed_sdpa(
    module: Any,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: Any,
    dropout: float = 0.0,
    scaling: float | None = None,
    sliding_window: int | None = None,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """Attention for a packed row: (1, heads, tokens, dim) in, (1, tokens, heads, dim) out."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    cu, longest = kwargs["cu_seq_lens_q"], int(kwargs["max_length_q"])
    batch, total = cu.shape[0] - 1, query.shape[2]
    index = _padded_index(cu, total, longest)

    def unpack(x: torch.Tensor) -> torch.Tensor:
        heads, dim = x.shape[1], x.shape[3]
        flat = x[0].transpose(0, 1)  # tokens, heads, dim
        padded = flat.new_zeros(batch * longest, heads, dim).index_copy(0, index, flat)
        return padded.view(batch, longest, heads, dim).transpose(1, 2)

    # Right padding: a real query attends only to earlier keys of its own row, all real, so causal SDPA
    # needs no padding mask. A sliding window shorter than the row needs an explicit band.
    mask, causal = None, True
    if sliding_window is not None and longest > sliding_window:
        pos = torch.arange(longest, device=query.device)
        mask = (pos[None, :] <= pos[:, None]) & (pos[:, None] - pos[None, :] < sliding_window)
        mask, causal = mask[None, None], False
    out, _ = sdpa_attention_forward(module, unpack(query), unpack(key), unpack(value), mask, dropout=dropout,
                                    scaling=scaling, is_causal=causal)
    out = out.reshape(batch * longest, *out.shape[2:]).index_select(0, index)  # (tokens, heads, dim)
    return out[None], None


def _register() -> None:
    from transformers import AttentionInterface

    AttentionInterface.register(ATTENTION, packed_sdpa)


@contextlib.contextmanager
def packed_attention(model: Any) -> Iterator[None]:
    """Route the model's attention through `packed_sdpa` for one forward. No attention mask is built:
    transformers skips mask creation for an attention function registered without one."""
    _register()
    config = base_model(model).config
    previous = config._attn_implementation
    config._attn_implementation = ATTENTION
    try:
        yield
    finally:
        config._attn_implementation = previous
