"""Exact KV-cached greedy decoding for every technique, batched.

peft's own cached `generate` is wrong for prompt-learning adapters in current versions (prefix tuning gave
"10000..."), so the harness decodes with its own loop: the prompt step injects prefix key/values or soft-prompt
embeddings the way peft's forward does, with position ids that skip left padding, and later steps run the base
model on that cache. Rows leave the batch as soon as they stop.

The model is asked for no logits at all: the next token comes from the final hidden state through
`next_tokens`, which computes the LM head in the shape that is fast for a decoding batch (see there).
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from typing import Any

import torch

from harness.losses import forward_hidden, head_logits
from harness.packing import base_model, is_prompt_learning


def has_prefix_adapter(model: Any) -> bool:
    """Whether the adapter's virtual tokens are key/value prefixes (a cache) rather than input embeddings:
    asked of the adapter itself (what its `get_prompt` returns), so no adapter type is named here."""
    if not is_prompt_learning(model):
        return False
    with torch.no_grad():
        prompt = model.get_prompt(batch_size=1, max_cache_len=model.active_peft_config.num_virtual_tokens + 1)
    return not isinstance(prompt, torch.Tensor)


def _cache_argument(model: Any) -> str:
    """transformers 5.x renames `past_key_values` to `cache`; use whichever the installed model takes."""
    return "cache" if "cache" in inspect.signature(base_model(model).forward).parameters else "past_key_values"


def _output_cache(out: Any) -> Any:
    cache = getattr(out, "cache", None)
    return cache if cache is not None else out.past_key_values


def next_tokens(model: Any, hidden: torch.Tensor) -> torch.Tensor:
    """Greedy next token of each row from its last final hidden state (rows, H): the argmax of the model's
    logits (`losses.head_logits`: the LM head, then any final soft-capping, so that float ties resolve as in
    the model's own logits).

    With a large vocabulary the head is most of a decoding step. On CPU, BLAS computes `x @ W.T` for 4 to 15
    rows a few rows at a time, each pass reading the whole weight (Gemma 3's 262k x 640 head: 15 rows cost
    about 2.4x what 16 rows cost on this project's machines), so such batches are padded to 16 zero rows; the
    real rows' dot products are the same."""
    rows = hidden.shape[0]
    if hidden.device.type == "cpu" and 4 <= rows < 16:
        hidden = torch.cat([hidden, hidden.new_zeros(16 - rows, hidden.shape[1])])
    return head_logits(base_model(model), hidden.contiguous())[:rows].argmax(-1)


def _prefill(
    model: Any, input_ids: torch.Tensor, attention_mask: torch.Tensor, cache_name: str
) -> tuple[Any, torch.Tensor, torch.Tensor]:
    """The prompt step: returns the model output (its cache), the last position's final hidden state and the
    attention mask over everything now in the cache.

    Position ids skip left padding, so a row decodes as it would alone. peft ignores position ids for
    prompt-learning methods, so their virtual tokens are injected here the way peft's forward does it
    (prefix key/values as the initial cache, or soft-prompt embeddings before the input), positions added."""
    positions = (attention_mask.cumsum(-1) - 1).clamp(min=0)
    if not is_prompt_learning(model):
        out, hidden = forward_hidden(model, input_ids=input_ids, attention_mask=attention_mask,
                                     position_ids=positions, use_cache=True)
        return out, hidden[:, -1], attention_mask
    config, batch = model.active_peft_config, input_ids.shape[0]
    n = config.num_virtual_tokens
    mask = torch.cat([attention_mask.new_ones(batch, n), attention_mask], dim=1)
    base = model.get_base_model()
    prompt = model.get_prompt(batch, max_cache_len=n + input_ids.shape[1])
    if not isinstance(prompt, torch.Tensor):  # key/value prefixes: the initial cache
        out, hidden = forward_hidden(base, input_ids=input_ids, attention_mask=mask, position_ids=positions + n,
                                     use_cache=True, **{cache_name: prompt})
        return out, hidden[:, -1], mask
    words = model.word_embeddings(input_ids)
    embeds = torch.cat([prompt.to(words.dtype), words], dim=1)
    virtual = torch.arange(n, device=input_ids.device).expand(batch, n)
    out, hidden = forward_hidden(base, inputs_embeds=embeds, attention_mask=mask,
                                 position_ids=torch.cat([virtual, positions + n], 1), use_cache=True)
    return out, hidden[:, -1], mask


def greedy_generate(
    model: Any, input_ids: torch.Tensor, attention_mask: torch.Tensor, caps: Sequence[int], stop: Sequence[int]
) -> list[list[int]]:
    """Greedy decoding with a KV cache of left-padded prompts; row i stops at a stop token or after caps[i]
    tokens, and leaves the batch then, so finished sentences cost nothing. After the prompt step every step
    goes through the base model on the cache, which holds any prefixes or soft prompts."""
    step_model = model.get_base_model() if is_prompt_learning(model) else model
    cache_name = _cache_argument(model)
    out, hidden, mask = _prefill(model, input_ids, attention_mask, cache_name)
    cache = _output_cache(out)
    stop_set = set(stop)
    results: list[list[int]] = [[] for _ in caps]
    alive = list(range(len(caps)))
    while alive:
        chosen = next_tokens(model, hidden)
        keep = []
        for j, (row, token) in enumerate(zip(alive, chosen.tolist())):
            results[row].append(token)
            if token not in stop_set and len(results[row]) < caps[row]:
                keep.append(j)
        if not keep:
            break
        if len(keep) < len(alive):
            index = torch.tensor(keep, device=input_ids.device)
            cache.batch_select_indices(index)
            mask, chosen = mask[index], chosen[index]
            alive = [alive[j] for j in keep]
        mask = torch.cat([mask, mask.new_ones(mask.shape[0], 1)], dim=1)
        positions = mask.sum(-1, keepdim=True) - 1
        out, hidden = forward_hidden(step_model, input_ids=chosen[:, None], attention_mask=mask,
                                     position_ids=positions, use_cache=True, **{cache_name: cache})
        cache, hidden = _output_cache(out), hidden[:, -1]
    return results
