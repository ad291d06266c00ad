"""Evaluation of one model: teacher-forced eval loss / perplexity over the validation split, and translation
quality by generation (batched, left-padded, KV-cached greedy decoding) scored with sacrebleu.

BLEU/chrF come from generated text, never from teacher-forced argmax tokens (which is not translation).
"""

from __future__ import annotations

import inspect
import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from tqdm.auto import tqdm
from transformers import StoppingCriteria, StoppingCriteriaList

from harness.config import DataConfig, EvalConfig
from harness.data import Encoded, Pair, batch_indices, build_prompt
from harness.errors import BenchError
from harness.losses import target_loss
from harness.merging import merged_lora
from harness.packing import is_prompt_learning, make_batch, packing_unsupported

log = logging.getLogger(__name__)


@dataclass
class Scores:
    bleu: float
    chrf: float
    chrf_pp: float
    signatures: dict[str, str]
    n: int


def eval_loss(model: Any, enc: Encoded, batch_size: int, pad_id: int, device: str) -> tuple[float, float]:
    """Token-weighted mean cross-entropy over target tokens, and its perplexity (packed batches where the
    model allows: the same numbers with no padding computed)."""
    was_training = model.training
    model.eval()
    total, tokens = 0.0, 0
    packed = packing_unsupported(model) is None
    with torch.inference_mode():
        for indices in batch_indices(enc.lengths(), batch_size, 0, 0, group_by_length=True, shuffle=False):
            batch = make_batch(enc, indices, pad_id, packed)
            loss, n = target_loss(model, {k: v.to(device) for k, v in batch.items()})
            total += float(loss)
            tokens += n
    model.train(was_training)
    mean = total / max(tokens, 1)
    return mean, perplexity(mean)


def perplexity(loss: float) -> float:
    return math.exp(loss) if loss < 700 else float("inf")


def stop_token_ids(tokenizer: Any) -> list[int]:
    """EOS, end-of-turn tokens and every token that contains a newline: a translation is one line.
    Computed once per tokenizer (a vocabulary scan) and kept on it."""
    cached = getattr(tokenizer, "_peft_bench_stop_ids", None)
    if cached is not None:
        return cached
    ids = {tokenizer.eos_token_id}
    for token, idx in tokenizer.get_vocab().items():
        # sentencepiece vocabularies hold a literal newline, byte-level BPE ones hold 'Ċ' for it
        if ("\n" in token or "Ċ" in token) and "\n" in tokenizer.decode([idx]):
            ids.add(idx)
    for special in ("<end_of_turn>", "<|im_end|>", "<|eot_id|>", "<|endoftext|>"):
        idx = tokenizer.convert_tokens_to_ids(special)
        if isinstance(idx, int) and idx != tokenizer.unk_token_id:
            ids.add(idx)
    cached = sorted(i for i in ids if i is not None)
    tokenizer._peft_bench_stop_ids = cached
    return cached


def has_prefix_adapter(model: Any) -> bool:
    return is_prompt_learning(model) and model.active_peft_config.peft_type in ("PREFIX_TUNING", "CARTRIDGE")


def _cache_argument(model: Any) -> str:
    """transformers 5.x renames `past_key_values` to `cache`; use whichever the installed model takes."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return "cache" if "cache" in inspect.signature(base.forward).parameters else "past_key_values"


def _output_cache(out: Any) -> Any:
    cache = getattr(out, "cache", None)
    return cache if cache is not None else out.past_key_values


def _prefill(
    model: Any, input_ids: torch.Tensor, attention_mask: torch.Tensor, cache_name: str
) -> tuple[Any, torch.Tensor]:
    """The prompt step: returns the model output and the attention mask over everything now in the cache.

    Position ids skip left padding, so a row decodes as it would alone. peft ignores position ids for
    prompt-learning methods, so their virtual tokens are injected here the way peft's forward does it
    (prefix key/values as the initial cache, or soft-prompt embeddings before the input), positions added."""
    positions = (attention_mask.cumsum(-1) - 1).clamp(min=0)
    common = {"use_cache": True, "logits_to_keep": 1}
    if not is_prompt_learning(model):
        out = model(input_ids=input_ids, attention_mask=attention_mask, position_ids=positions, **common)
        return out, attention_mask
    config, batch = model.active_peft_config, input_ids.shape[0]
    n = config.num_virtual_tokens
    mask = torch.cat([attention_mask.new_ones(batch, n), attention_mask], dim=1)
    base = model.get_base_model()
    if has_prefix_adapter(model):
        common[cache_name] = model.get_prompt(batch, max_cache_len=n + input_ids.shape[1])
        return base(input_ids=input_ids, attention_mask=mask, position_ids=positions + n, **common), mask
    words = model.word_embeddings(input_ids)
    embeds = torch.cat([model.get_prompt(batch_size=batch).to(words.dtype), words], dim=1)
    virtual = torch.arange(n, device=input_ids.device).expand(batch, n)
    return base(inputs_embeds=embeds, attention_mask=mask, position_ids=torch.cat([virtual, positions + n], 1),
                **common), mask


def greedy_generate(
    model: Any, input_ids: torch.Tensor, attention_mask: torch.Tensor, caps: Sequence[int], stop: Sequence[int]
) -> list[list[int]]:
    """Greedy decoding with a KV cache; rows leave the batch as soon as they stop, so finished sentences
    cost nothing. After the prompt step every step goes through the base model on the cache, which holds
    any prefixes or soft prompts (peft's own cached generate re-injects them wrongly for prompt-learning
    methods in current versions)."""
    step_model = model.get_base_model() if is_prompt_learning(model) else model
    cache_name = _cache_argument(model)
    out, mask = _prefill(model, input_ids, attention_mask, cache_name)
    cache, logits = _output_cache(out), out.logits[:, -1]
    stop_set = set(stop)
    results: list[list[int]] = [[] for _ in caps]
    alive = list(range(len(caps)))
    while alive:
        next_tokens = logits.argmax(-1)
        keep = []
        for j, row in enumerate(alive):
            token = int(next_tokens[j])
            results[row].append(token)
            if token not in stop_set and len(results[row]) < caps[row]:
                keep.append(j)
        if not keep:
            break
        if len(keep) < len(alive):
            index = torch.tensor(keep, device=input_ids.device)
            cache.batch_select_indices(index)
            mask, next_tokens = mask[index], next_tokens[index]
            alive = [alive[j] for j in keep]
        mask = torch.cat([mask, mask.new_ones(mask.shape[0], 1)], dim=1)
        positions = mask.sum(-1, keepdim=True) - 1
        out = step_model(input_ids=next_tokens[:, None], attention_mask=mask, position_ids=positions,
                         use_cache=True, logits_to_keep=1, **{cache_name: cache})
        cache, logits = _output_cache(out), out.logits[:, -1]
    return results


class RowLimit(StoppingCriteria):
    """Stops each row at its own number of new tokens (HF generate marks a row finished when True)."""

    def __init__(self, caps: Sequence[int], prompt_width: int, num_beams: int = 1):
        self.limits = torch.tensor([c for c in caps for _ in range(num_beams)]) + prompt_width

    def __call__(self, input_ids: torch.LongTensor, scores: Any, **kwargs: Any) -> torch.BoolTensor:
        return (input_ids.shape[1] >= self.limits.to(input_ids.device)).to(torch.bool)


def translate(
    model: Any,
    tokenizer: Any,
    sources: Sequence[str],
    data_cfg: DataConfig,
    batch_size: int = 32,
    max_new_tokens: int = 64,
    num_beams: int = 1,
    progress: bool = False,
    **sampling: Any,
) -> list[str]:
    """Translate `sources`: prompts sorted by length (little padding), left-padded, KV-cached generation."""
    if not sources:
        return []
    device = next(model.parameters()).device
    prompts = [build_prompt(s, data_cfg, tokenizer) for s in sources]
    lengths = [len(ids) for ids in tokenizer(prompts, add_special_tokens=not data_cfg.use_chat_template)["input_ids"]]
    source_lengths = [len(ids) for ids in tokenizer(list(sources), add_special_tokens=False)["input_ids"]]
    order = sorted(range(len(prompts)), key=lambda i: -lengths[i])
    outputs: list[str] = [""] * len(prompts)
    stop = stop_token_ids(tokenizer)
    generation = {"do_sample": False, "num_beams": num_beams}
    if sampling.get("temperature") or sampling.get("top_k") or sampling.get("top_p"):
        generation = {"do_sample": True, "num_beams": num_beams,
                      **{k: v for k, v in sampling.items() if v is not None}}
    use_generate = generation["do_sample"] or num_beams > 1  # greedy decoding uses greedy_generate
    if use_generate and has_prefix_adapter(model):
        raise BenchError(
            f"num_beams={num_beams}{' with sampling' if generation['do_sample'] else ''}: beam search and "
            "sampling are not available for a prefix-tuning adapter, because peft's generate gives wrong tokens "
            "for prefixes (the harness's own greedy decoding is exact). Fix: use greedy decoding "
            "(eval.num_beams=1, or --num-beams 1 without --temperature/--top-k/--top-p)."
        )
    was_training, side = model.training, tokenizer.padding_side
    model.eval()
    tokenizer.padding_side = "left"
    try:
        batches = [order[s: s + batch_size] for s in range(0, len(order), batch_size)]
        for idx in tqdm(batches, desc="translate", disable=not progress, leave=False):
            enc = tokenizer([prompts[i] for i in idx], return_tensors="pt", padding=True,
                            add_special_tokens=not data_cfg.use_chat_template).to(device)
            # A translation is never 3x longer than its source: each row gets its own cap, so a rambling
            # model stops early and a sentence's output does not depend on the batch it lands in.
            caps = [min(max_new_tokens, 3 * source_lengths[i] + 8) for i in idx]
            width = enc["input_ids"].shape[1]
            with merged_lora(model), torch.inference_mode():
                if use_generate:
                    out = model.generate(
                        **enc, max_new_tokens=max(caps), eos_token_id=stop, pad_token_id=tokenizer.pad_token_id,
                        stopping_criteria=StoppingCriteriaList([RowLimit(caps, width, num_beams)]),
                        # peft's cached generation of soft prompts is wrong here; recomputing is right
                        use_cache=not is_prompt_learning(model), **generation,
                    )
                    new_tokens = [row[width: width + cap] for row, cap in zip(out, caps)]
                else:
                    new_tokens = greedy_generate(model, enc["input_ids"], enc["attention_mask"], caps, stop)
            texts = tokenizer.batch_decode(new_tokens, skip_special_tokens=True)
            for i, text in zip(idx, texts):
                outputs[i] = text.strip().split("\n", 1)[0].strip()
    finally:
        tokenizer.padding_side = side
        model.train(was_training)
    return outputs


def score(hypotheses: Sequence[str], references: Sequence[str]) -> Scores:
    """Corpus BLEU, chrF and chrF++ (sacrebleu defaults), with their signatures."""
    from sacrebleu.metrics import BLEU, CHRF

    metrics = {"bleu": BLEU(), "chrf": CHRF(), "chrf_pp": CHRF(word_order=2)}
    values = {k: m.corpus_score(list(hypotheses), [list(references)]).score for k, m in metrics.items()}
    signatures = {k: str(m.get_signature()) for k, m in metrics.items()}
    return Scores(values["bleu"], values["chrf"], values["chrf_pp"], signatures, len(hypotheses))


def generation_scores(
    model: Any, tokenizer: Any, pairs: Sequence[Pair], data_cfg: DataConfig, eval_cfg: EvalConfig
) -> tuple[Scores, list[tuple[str, str, str]], float]:
    """Translate `pairs` and score them; returns (scores, (source, reference, hypothesis) rows, seconds)."""
    start = time.perf_counter()
    hyps = translate(model, tokenizer, [p.source for p in pairs], data_cfg, eval_cfg.generation_batch_size,
                     eval_cfg.max_new_tokens, eval_cfg.num_beams)
    seconds = time.perf_counter() - start
    scores = score(hyps, [p.target for p in pairs])
    return scores, [(p.source, p.target, h) for p, h in zip(pairs, hyps)], seconds


def evaluate_epoch(
    model: Any,
    tokenizer: Any,
    validation: Encoded,
    validation_pairs: Sequence[Pair],
    data_cfg: DataConfig,
    eval_cfg: EvalConfig,
    device: str,
) -> dict[str, Any]:
    """After each epoch, on validation data only (what model selection and the search may look at):
    teacher-forced eval loss / perplexity and BLEU / chrF of generated translations of a fixed sample."""
    start = time.perf_counter()
    loss, ppl = eval_loss(model, validation, eval_cfg.batch_size, tokenizer.pad_token_id, device)
    loss_seconds = time.perf_counter() - start
    scores, _, gen_seconds = generation_scores(model, tokenizer, validation_pairs, data_cfg, eval_cfg)
    return {
        "eval_loss": loss,
        "eval_ppl": ppl,
        "bleu": scores.bleu,
        "chrf": scores.chrf,
        "chrf_pp": scores.chrf_pp,
        "eval_seconds": round(loss_seconds + gen_seconds, 2),
        "eval_loss_seconds": round(loss_seconds, 2),
        "generation_seconds": round(gen_seconds, 2),
        "validation_sentences_per_s": round(scores.n / gen_seconds, 2) if gen_seconds > 0 else None,
    }


def evaluate_test(
    model: Any, tokenizer: Any, test: Sequence[Pair], data_cfg: DataConfig, eval_cfg: EvalConfig
) -> tuple[dict[str, Any], list[tuple[str, str, str]]]:
    """Once per trial, with the best epoch's adapter: BLEU / chrF / chrF++ on the fixed test sample, with
    the sacrebleu signatures that make the numbers comparable across runs."""
    scores, predictions, seconds = generation_scores(model, tokenizer, test, data_cfg, eval_cfg)
    metrics = {
        "bleu": scores.bleu,
        "chrf": scores.chrf,
        "chrf_pp": scores.chrf_pp,
        "test_size": scores.n,
        "signatures": scores.signatures,
        "generation_seconds": round(seconds, 2),
        "sentences_per_s": round(scores.n / seconds, 2) if seconds > 0 else None,
    }
    return metrics, predictions
