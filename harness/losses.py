"""The language-model loss at target positions only.

The LM head is applied to the hidden states of target positions alone, never to prompt or padding
positions: with Gemma 3's 262k-token vocabulary the head costs more than the rest of the model, so this is
the largest single saving of a training step (and of the eval loss).
"""

from __future__ import annotations

import contextlib
import functools
import inspect
from typing import Any

import torch
import torch.nn.functional as F

from harness import packing
from harness.chunked_ce import linear_cross_entropy
from harness.lora_paths import fused_lora
from harness.data import IGNORE_INDEX


@functools.lru_cache(maxsize=32)
def _accepts_logits_to_keep(forward: Any) -> bool:
    try:
        return "logits_to_keep" in inspect.signature(forward).parameters
    except (TypeError, ValueError):
        return False


def _base_forward(model: Any) -> Any:
    return type(packing.base_model(model)).forward


def _decoder(model: Any) -> Any:
    getter = getattr(packing.base_model(model), "get_decoder", None)
    return getter() if callable(getter) else None


def forward_hidden(model: Any, **inputs: Any) -> tuple[Any, torch.Tensor]:
    """Run the model on `inputs` asking it for no logits; return its output (for the KV cache) and the final
    (post-norm) hidden states of every position it computed.

    The decoder's output is caught with a forward hook, so no other layer's hidden states are kept (asking
    the model for `output_hidden_states` would hold every layer's, which costs memory in the eval pass)."""
    if _accepts_logits_to_keep(_base_forward(model)):
        # An empty index tensor: the model computes no logits at all (an int 0 would mean "all positions").
        some = next(v for v in inputs.values() if isinstance(v, torch.Tensor))
        inputs["logits_to_keep"] = torch.zeros(0, dtype=torch.long, device=some.device)
    decoder = _decoder(model)
    if decoder is None:
        out = model(output_hidden_states=True, **inputs)
        return out, out.hidden_states[-1]
    caught: list[torch.Tensor] = []

    def hook(module: Any, args: Any, output: Any) -> None:
        caught.append(output[0] if isinstance(output, tuple) else output.last_hidden_state)

    handle = decoder.register_forward_hook(hook)
    try:
        out = model(**inputs)
    finally:
        handle.remove()
    return out, caught[-1]


def final_hidden(
    model: Any, input_ids: torch.Tensor, attention_mask: torch.Tensor | None, **extra: Any
) -> torch.Tensor:
    """Final hidden states aligned with `input_ids`, for a forward without a cache (training, eval loss)."""
    _, hidden = forward_hidden(model, input_ids=input_ids, attention_mask=attention_mask, use_cache=False, **extra)
    # Soft prompts are prepended as virtual tokens: the last T positions belong to the real input.
    return hidden[:, -input_ids.shape[1]:]


def head_logits(model: Any, hidden: torch.Tensor) -> torch.Tensor:
    """Apply the LM head (and the final logit soft-capping of Gemma 2-style models) to (N, H) states."""
    logits = model.get_output_embeddings()(hidden)
    cap = getattr(model.config, "final_logit_softcapping", None)
    if cap:
        logits = torch.tanh(logits / cap) * cap
    return logits


def target_loss(model: Any, batch: dict[str, torch.Tensor], chunked: bool = True,
                fused: bool = True) -> tuple[torch.Tensor, int]:
    """(sum of token cross-entropies over target positions, number of target tokens). `chunked` and `fused`
    switch the chunked loss and LoRA's fused layers (harness.steps' options; both change only speed)."""
    labels = batch["labels"][:, 1:]
    mask = labels != IGNORE_INDEX
    with fused_lora(model) if fused else contextlib.nullcontext():
        if packing.PACKED_KEY in batch:
            with packing.packed_attention(model):
                hidden = final_hidden(model, batch["input_ids"], None, **packing.model_kwargs(batch))[:, :-1]
        else:
            hidden = final_hidden(model, batch["input_ids"], batch["attention_mask"])[:, :-1]
    return head_loss(model, hidden[mask], labels[mask], chunked), int(mask.sum())


def head_loss(model: Any, hidden: torch.Tensor, labels: torch.Tensor, chunked: bool = True) -> torch.Tensor:
    """Summed cross-entropy of the LM head's logits of (N, H) states against N labels. A frozen plain linear
    head (every PEFT technique's) goes through the chunked fused loss, which never holds all N x vocabulary
    logits; anything else (a trained or adapted head) through the plain one."""
    head = model.get_output_embeddings()
    cap = getattr(model.config, "final_logit_softcapping", None)
    if chunked and type(head) is torch.nn.Linear and head.bias is None and not head.weight.requires_grad:
        return linear_cross_entropy(hidden, head.weight, labels, cap)
    return F.cross_entropy(head_logits(model, hidden).float(), labels, reduction="sum")
