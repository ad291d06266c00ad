"""Evaluation of one model: teacher-forced eval loss / perplexity over the validation split, and translation
quality by generation (batched, left-padded, KV-cached greedy decoding) scored with sacrebleu.

BLEU/chrF come from generated text, never from teacher-forced argmax tokens (which is not translation).
"""

from __future__ import annotations

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
from harness.decoding import greedy_generate, has_prefix_adapter
from harness.errors import BenchError
from harness.losses import target_loss
from harness.lora_paths import merged_lora
from harness.packing import is_prompt_learning, make_batch, packing_unsupported
from harness.significance import sacrebleu_metrics

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


class RowLimit(StoppingCriteria):
    """Stops each row at its own number of new tokens (HF generate marks a row finished when True)."""

    def __init__(self, caps: Sequence[int], prompt_width: int, num_beams: int = 1):
        self.caps = torch.tensor(list(caps))
        self.limits = self.caps.repeat_interleave(num_beams) + prompt_width
        self.prompt_width = prompt_width

    def __call__(self, input_ids: torch.LongTensor, scores: Any, **kwargs: Any) -> torch.BoolTensor:
        # Beam search also asks about its candidates (a multiple of num_beams rows per sentence, more with
        # several stop tokens): each sentence's rows get its cap, whatever their number.
        limits = self.caps.repeat_interleave(input_ids.shape[0] // len(self.caps)) + self.prompt_width
        return (input_ids.shape[1] >= limits.to(input_ids.device)).to(torch.bool)


def translate(
    model: Any,
    tokenizer: Any,
    sources: Sequence[str],
    data_cfg: DataConfig,
    batch_size: int = 32,
    max_new_tokens: int = 64,
    num_beams: int = 1,
    progress: bool = False,
    cut: list[bool] | None = None,
    **sampling: Any,
) -> list[str]:
    """Translate `sources`: prompts sorted by length (little padding), left-padded, KV-cached generation.
    `cut`, when given, is filled with whether each translation was stopped by max_new_tokens (truncated)."""
    if cut is not None:
        cut[:] = [False] * len(sources)
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
            if cut is not None:
                for i, row in zip(idx, new_tokens):
                    tokens = [int(t) for t in row]
                    cut[i] = len(tokens) >= max_new_tokens and not set(tokens) & set(stop)
            texts = tokenizer.batch_decode(new_tokens, skip_special_tokens=True)
            for i, text in zip(idx, texts):
                outputs[i] = text.strip().split("\n", 1)[0].strip()
    finally:
        tokenizer.padding_side = side
        model.train(was_training)
    return outputs


def score(hypotheses: Sequence[str], references: Sequence[str]) -> Scores:
    """Corpus BLEU, chrF and chrF++ (sacrebleu defaults), with their signatures."""
    metrics = sacrebleu_metrics()
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
    if not validation_pairs:  # eval.validation_samples=0: selection on eval loss, no per-epoch translation
        return {"eval_loss": loss, "eval_ppl": ppl, "eval_seconds": round(loss_seconds, 2),
                "eval_loss_seconds": round(loss_seconds, 2)}
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
