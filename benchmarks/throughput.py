"""Training and evaluation throughput of the harness next to two references, in one process run.

`python -m benchmarks.throughput` takes one technique at a time (default LoRA r=16 alpha=32 all-linear, dropout
0), built the harness's way for every variant: harness.config.load_config -> techniques.registry.get(name) ->
harness.training.resolve_hyperparameters -> harness.models.load_model (a fresh load for each variant, float32
on CPU) -> technique.wrap(model, hp, tokenizer). So the model is the same and only the loop differs. Every
variant trains on the same examples (the first K = batch size x (steps + 1) pairs of the train split, from
harness.data.load_splits), in the same batches (the harness's length-grouped order of epoch 1) with the same
seed: one warmup step that is not timed, then --steps measured optimizer steps.

Training variants
  (a) naive    What the original code did. Every batch is padded to --max-seq-length (tokenizer.pad with
               padding="max_length"), the labels are the input ids (so the prompt and the padding are trained
               on, the pad id sits in the labels), the loss is the model's own
               (model(input_ids, attention_mask, labels=labels): logits at every position), and the loop is plain
               torch with AdamW (no clipping, no schedule).
  (b) strong   What a competent user writes with the libraries alone: transformers.Trainer on the same peft model,
               DataCollatorForSeq2Seq (dynamic padding, label_pad_token_id=-100), prompt-masked labels (prompt
               tokens -100, target + EOS labelled), the Trainer's AdamW, a constant learning rate and its gradient
               clipping. The examples are handed over in the harness's batch order with sequential sampling, so
               the Trainer gets the same batches, and with them the harness's length grouping.
  (c) harness  The harness's own loop: harness.training.train_one_epoch itself, i.e. harness.data.encode with the
               config's prompt template, length-grouped batches, packed into one padding-free row where the
               technique allows it (harness.packing), harness.losses.target_loss (LoRA layers as one addmm each,
               the LM head only at target positions through the chunked fused cross-entropy), fused AdamW over the
               trainable parameters (harness.training.build_optimizer) and clipping; the learning rate is
               constant here.

What is timed: the optimizer steps only (forward, backward, clipping where the variant clips, the update and the
loop's own per-step bookkeeping). Collating batches is outside the timed span of the references (the naive loop
collates every batch before its loop starts, the Trainer before on_step_begin) and inside the harness's
(train_one_epoch packs each batch within its step; well under a millisecond). The
Trainer's set-up and the whole trainer.train() time are recorded in the JSON output as well.

Useful tokens: the target + EOS tokens of the measured batches, counted from the harness encoding of the same
examples, so every variant has the same numerator per step; "non-pad" tokens are all real (prompt + target)
tokens of those batches. The harness and the Trainer also count what they saw themselves (train_one_epoch's
target count, the labelled positions of the Trainer's batches) as a check; the naive loop cannot tell.

FLOPs: forward + backward of one step (on the first measured batch), counted with
torch.utils.flop_counter.FlopCounterMode outside the timed steps and scaled to the mean measured step by the
number of positions the model computes (batch x padded width): exact for (a), whose batches all have one shape,
close for (b) and (c). Achieved GFLOP/s = FLOPs per step / mean step time, shown also as a percentage of a dense
matmul ceiling (n x n @ n x n in the model's dtype, best of a few) measured in the same process. The FLOPs of (a)
and (b) include wasted work (logits at padding and prompt positions); those of (c) are the work the harness
really does. Read "useful tok/s" for how fast training goes and GFLOP/s for whether the math itself runs faster:
the harness wins by doing less work, not by faster arithmetic.

Evaluation: sentences/s of harness.evaluation.translate (batched, sorted by length, left-padded, KV cache) next
to a loop that calls model.generate once per prompt, with the same greedy settings, stop tokens
(harness.evaluation.stop_token_ids) and cap rule (min(max_new_tokens, 3 x source tokens + 8), per sentence in
both), on the same first N sentences of the test split, after one untimed warm-up generation. The adapter is
given small random weights first (a fresh LoRA adapter computes nothing), so that translate()'s LoRA folded into
the weights is compared with peft's unmerged layers. Reported: how many of the outputs are identical (and how
many of the differing ones differ only in where the cap cut them: one output a prefix of the other).

The numbers are printed (and written as JSON with --json), never asserted: they depend on the machine and on
whatever else runs on it.
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import logging
import math
import os
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from transformers import TrainerCallback

from harness.config import BenchConfig, load_config
from harness.data import (
    Encoded,
    Pair,
    batch_indices,
    build_prompt,
    encode,
    load_splits,
)
from benchmarks.flops import count_flops
from harness.devices import choose_dtype, dtype_name, resolve_device, set_threads
from harness.errors import BenchError
from harness.evaluation import stop_token_ids, translate
from harness.io import atomic_write_json
from harness.models import load_model, load_tokenizer, resolve_source
from harness.provenance import commit, versions
from harness.steps import TrainStep, choose_step
from harness.training import (
    TrialSpec,
    build_optimizer,
    resolve_hyperparameters,
    train_one_epoch,
    uses_packing,
)
from techniques import registry

log = logging.getLogger("benchmarks.throughput")

EPOCH = 1  # the harness epoch whose length-grouped batch order every variant uses
DEFAULT_MODELS = "gemma-3-270m,smollm2-135m"
DESCRIPTIONS = {
    "naive": "(a) naive: padded to max length, labels = input ids, full logits, plain loop",
    "strong": "(b) strong: transformers.Trainer + DataCollatorForSeq2Seq, prompt-masked labels",
    "harness": "(c) harness: train_one_epoch with the device's step (harness.steps), LM head at targets only",
}


# ------------------------------------------------------------------------------------------ shared set-up


@dataclass
class Setup:
    """What every variant of one model shares: config, technique, examples, batches, test sentences."""

    cfg: BenchConfig
    technique: str
    hp: dict[str, Any]
    device: str
    enc: Encoded  # the harness encoding of the K training pairs
    batches: list[list[int]]  # [warmup batch] + measured batches, as indices into `enc`
    test: list[Pair]

    @property
    def measured(self) -> list[list[int]]:
        return self.batches[1:]

    def useful_tokens(self, indices: Sequence[int]) -> int:
        """Target + EOS tokens of these examples (what the harness labels)."""
        return int(sum(len(self.enc.input_ids[i]) - int(self.enc.prompt_lengths[i]) for i in indices))

    def nonpad_tokens(self, indices: Sequence[int]) -> int:
        return int(sum(len(self.enc.input_ids[i]) for i in indices))

    def longest(self, indices: Sequence[int]) -> int:
        return max(len(self.enc.input_ids[i]) for i in indices)


def build_config(model: str, args: argparse.Namespace) -> BenchConfig:
    """The preset (default: the embedded default), the benchmark's flags, then `--set` overrides."""
    data: dict[str, Any] = {"max_seq_length": args.max_seq_length, "max_train_samples": None}
    if args.data:
        data["dataset"] = args.data
    extra = {
        "model": {"name": model},
        "data": data,
        "train": {"batch_size": args.batch_size, "gradient_accumulation_steps": 1, "group_by_length": True},
        "eval": {"generation_batch_size": args.eval_batch_size},
    }
    return load_config(args.config, args.overrides, extra)


def prepare(cfg: BenchConfig, technique: str, steps: int, device: str, eval_sentences: int) -> Setup:
    """Load the splits, encode the first K training pairs with the model's tokenizer, plan the batches."""
    tech = registry.get(technique)
    hp = resolve_hyperparameters(tech, cfg)
    batch_size = cfg.train.batch_size
    needed = batch_size * (steps + 1)
    splits = load_splits(cfg.data)
    if len(splits.train) < needed:
        raise BenchError(
            f"--steps/--batch-size: {steps + 1} steps (one warmup) of {batch_size} need {needed} training pairs, "
            f"but the train split of '{cfg.data.dataset}' has {len(splits.train)}. Lower --steps or --batch-size, "
            "or give a larger --data file."
        )
    source, local = resolve_source(cfg.model)
    tokenizer = load_tokenizer(source, cfg.model, local)
    enc = encode(splits.train[:needed], tokenizer, cfg.data)
    if len(enc) < needed:
        raise BenchError(
            f"--max-seq-length: {enc.dropped} of the first {needed} training pairs were dropped because their "
            f"prompt alone reaches {cfg.data.max_seq_length} tokens. Raise --max-seq-length."
        )
    batches = batch_indices(enc.lengths(), batch_size, cfg.train.seed, EPOCH, group_by_length=True)
    return Setup(cfg, tech.name, hp, device, enc, batches, list(splits.test[:eval_sentences]))


def load_wrapped(setup: Setup) -> tuple[Any, Any]:
    """A freshly loaded base model, wrapped by the technique exactly as run_trial does; same seed each time."""
    tech = registry.get(setup.technique)
    torch.manual_seed(setup.cfg.train.seed)
    model_cfg = dataclasses.replace(setup.cfg.model, **tech.model_overrides(setup.hp))
    loaded = load_model(model_cfg, setup.device)
    return tech.wrap(loaded.model, setup.hp, loaded.tokenizer), loaded.tokenizer


def sync(device: str) -> None:
    """Wait for queued GPU work so wall-clock readings mean something (no-op on CPU)."""
    if device == "cuda":
        torch.cuda.synchronize()


def to_device(batch: dict[str, torch.Tensor], device: str) -> dict[str, torch.Tensor]:
    return {k: v.to(device) for k, v in batch.items()}


# ---------------------------------------------------------------------------------------------- results


@dataclass
class Measurement:
    """One training variant: the measured steps, what they processed and the FLOPs they cost."""

    variant: str
    steps: int
    seconds: float  # the measured steps together
    useful_tokens: int  # target + EOS tokens of the measured batches (harness encoding)
    nonpad_tokens: int  # prompt + target tokens of the measured batches
    positions: int  # positions the model computed in the measured steps (batch x padded width)
    flops_counted: float  # forward + backward FLOPs of the counted step
    counted_positions: int  # positions of the counted step
    useful_tokens_seen: int | None = None  # what the variant counted itself (None: it cannot tell)
    losses: list[float] = field(default_factory=list)  # per step, warmup first (each variant's own loss)
    extra: dict[str, Any] = field(default_factory=dict)
    ceiling_gflops: float = float("nan")  # dense matmul GFLOP/s measured right after this variant

    @property
    def s_per_step(self) -> float:
        return self.seconds / self.steps

    @property
    def useful_tok_s(self) -> float:
        return self.useful_tokens / self.seconds

    @property
    def nonpad_tok_s(self) -> float:
        return self.nonpad_tokens / self.seconds

    @property
    def flops_per_step(self) -> float:
        """The counted step's FLOPs scaled to the mean measured step by the positions computed."""
        return self.flops_counted * (self.positions / self.steps) / self.counted_positions

    @property
    def gflops_s(self) -> float:
        return self.flops_per_step / self.s_per_step / 1e9

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        for key in ("s_per_step", "useful_tok_s", "nonpad_tok_s", "flops_per_step", "gflops_s"):
            out[key] = getattr(self, key)
        out["description"] = DESCRIPTIONS[self.variant]
        return out


@dataclass
class EvalMeasurement:
    """Batched translate() against one model.generate call per sentence, on the same sentences."""

    sentences: int
    batch_size: int
    max_new_tokens: int
    batched_seconds: float
    single_seconds: float
    identical: int
    prefix_only: int  # differing outputs where one is a prefix of the other: a cap difference, not numerics
    differing: list[dict[str, str]]  # up to 5: source, batched, single

    @property
    def batched_sentences_s(self) -> float:
        return self.sentences / self.batched_seconds

    @property
    def single_sentences_s(self) -> float:
        return self.sentences / self.single_seconds

    @property
    def speedup(self) -> float:
        return self.batched_sentences_s / self.single_sentences_s

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        for key in ("batched_sentences_s", "single_sentences_s", "speedup"):
            out[key] = getattr(self, key)
        return out


# ------------------------------------------------------------------------------------ (a) naive reference


def naive_batch(setup: Setup, indices: Sequence[int], tokenizer: Any, max_length: int) -> dict[str, torch.Tensor]:
    """The original code's batch: padded to max_length, labels = input ids (pad id included)."""
    tokenizer.padding_side = "right"
    padded = tokenizer.pad({"input_ids": [setup.enc.input_ids[i].tolist() for i in indices]},
                           padding="max_length", max_length=max_length, return_tensors="pt")
    return {"input_ids": padded["input_ids"], "attention_mask": padded["attention_mask"],
            "labels": padded["input_ids"].clone()}


def run_naive(setup: Setup, max_length: int) -> Measurement:
    """(a): a plain torch loop with AdamW over max-length batches and the model's own full-sequence loss."""
    model, tokenizer = load_wrapped(setup)
    model.train()
    device = setup.device
    batches = [to_device(naive_batch(setup, idx, tokenizer, max_length), device) for idx in setup.batches]

    def forward_backward(batch: dict[str, torch.Tensor]) -> float:
        loss = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["labels"]).loss
        loss.backward()
        return float(loss.detach())

    flops = count_flops(lambda: forward_backward(batches[1]))
    model.zero_grad(set_to_none=True)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=float(setup.hp["lr"]),
                                  weight_decay=setup.cfg.train.weight_decay)
    times, losses = [], []
    for batch in batches:
        sync(device)
        start = time.perf_counter()
        losses.append(forward_backward(batch))
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        sync(device)
        times.append(time.perf_counter() - start)
    shape = batches[1]["input_ids"].shape
    return Measurement(
        "naive", len(setup.measured), sum(times[1:]),
        sum(setup.useful_tokens(b) for b in setup.measured), sum(setup.nonpad_tokens(b) for b in setup.measured),
        sum(b["input_ids"].numel() for b in batches[1:]), flops, shape[0] * shape[1],
        useful_tokens_seen=None, losses=losses, extra={"warmup_seconds": times[0]},
    )


# ----------------------------------------------------------------------------------- (b) strong reference


class StepTimer(TrainerCallback):
    """Wall-clock span of every optimizer step: on_step_begin (batch already collated) to on_step_end."""

    def __init__(self, device: str):
        self.device = device
        self.begins: list[float] = []
        self.ends: list[float] = []

    def on_step_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        sync(self.device)
        self.begins.append(time.perf_counter())

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        sync(self.device)
        self.ends.append(time.perf_counter())


class CountingCollator:
    """A collator wrapper that records the labelled (shifted) positions of every batch it builds."""

    def __init__(self, collator: Callable[[list[dict[str, Any]]], dict[str, torch.Tensor]]):
        self.collator = collator
        self.useful: list[int] = []

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        batch = self.collator(features)
        self.useful.append(int((batch["labels"][:, 1:] != -100).sum()))
        return batch


def strong_features(setup: Setup, indices: Sequence[int]) -> list[dict[str, list[int]]]:
    """Prompt-masked examples as a user hands them to the Trainer (prompt -100, target + EOS labelled)."""
    return [{"input_ids": setup.enc.input_ids[i].tolist(), "attention_mask": [1] * len(setup.enc.input_ids[i]),
             "labels": setup.enc.labels(i).tolist()} for i in indices]


def run_strong(setup: Setup) -> Measurement:
    """(b): transformers.Trainer + DataCollatorForSeq2Seq on the same peft model and batches."""
    from transformers import DataCollatorForSeq2Seq, Trainer, TrainingArguments
    from transformers.trainer_callback import PrinterCallback

    model, tokenizer = load_wrapped(setup)
    tokenizer.padding_side = "right"
    device, train_cfg, steps = setup.device, setup.cfg.train, len(setup.measured)
    collator = CountingCollator(DataCollatorForSeq2Seq(tokenizer, label_pad_token_id=-100))
    model.train()
    counted = to_device(collator.collator(strong_features(setup, setup.measured[0])), device)
    flops = count_flops(lambda: model(**counted).loss.backward())
    model.zero_grad(set_to_none=True)
    dataset = [f for idx in setup.batches for f in strong_features(setup, idx)]  # the harness's batch order
    timer = StepTimer(device)
    with tempfile.TemporaryDirectory() as out:
        args = TrainingArguments(
            output_dir=out, per_device_train_batch_size=train_cfg.batch_size, max_steps=steps + 1,
            learning_rate=float(setup.hp["lr"]), lr_scheduler_type="constant", weight_decay=train_cfg.weight_decay,
            max_grad_norm=train_cfg.max_grad_norm, report_to=[], save_strategy="no", logging_steps=10**9,
            use_cpu=device == "cpu", dataloader_num_workers=0, seed=train_cfg.seed, remove_unused_columns=False,
            train_sampling_strategy="sequential", label_names=["labels"], disable_tqdm=True,
        )
        start = time.perf_counter()
        trainer = Trainer(model=model, args=args, train_dataset=dataset, data_collator=collator, callbacks=[timer])
        trainer.remove_callback(PrinterCallback)  # its end-of-training metrics line would land in our table
        built = time.perf_counter()
        output = trainer.train()
        done = time.perf_counter()
    spans = [end - begin for begin, end in zip(timer.begins, timer.ends)]
    if len(spans) != steps + 1:
        raise RuntimeError(f"the Trainer ran {len(spans)} steps, expected {steps + 1}")
    return Measurement(
        "strong", steps, sum(spans[1:]),
        sum(setup.useful_tokens(b) for b in setup.measured), sum(setup.nonpad_tokens(b) for b in setup.measured),
        sum(len(b) * setup.longest(b) for b in setup.measured), flops, counted["input_ids"].numel(),
        useful_tokens_seen=sum(collator.useful[1: steps + 1]), losses=[],
        extra={"warmup_seconds": spans[0], "trainer_init_seconds": built - start, "train_call_seconds": done - built,
               "mean_train_loss": float(output.training_loss), "optim": str(getattr(args.optim, "value", args.optim))},
    )


# ---------------------------------------------------------------------------------------- (c) the harness


class TimedConstantLR:
    """A constant learning rate for train_one_epoch that records when each optimizer step ended
    (train_one_epoch calls scheduler.step() right after optimizer.step())."""

    def __init__(self, optimizer: torch.optim.Optimizer, device: str):
        self.lrs = [group["lr"] for group in optimizer.param_groups]
        self.device = device
        self.ends: list[float] = []

    def step(self) -> None:
        sync(self.device)
        self.ends.append(time.perf_counter())

    def get_last_lr(self) -> list[float]:
        return self.lrs


def run_harness(setup: Setup) -> Measurement:
    """(c): harness.training.train_one_epoch itself, over the same examples (its own batching and loss)."""
    model, tokenizer = load_wrapped(setup)
    model.train()
    device, steps = setup.device, len(setup.measured)
    train_cfg = dataclasses.replace(setup.cfg.train, gradient_accumulation_steps=1, group_by_length=True,
                                    log_steps=1, save_steps=None, time_budget_s=None, max_steps=None)
    cfg = dataclasses.replace(setup.cfg, train=train_cfg)
    options = choose_step(device, cfg.train.packing, cfg.train.step.overrides())
    packed = options.packing and uses_packing(model, cfg.train.packing)
    # FLOPs of the device's step, counted eagerly (compiling or capturing changes the kernels, not the arithmetic).
    counter = TrainStep(model, dataclasses.replace(options, compile="off", cuda_graphs=False), device,
                        tokenizer.pad_token_id)
    counted = counter.batch(setup.enc, setup.measured[0])

    def forward_backward() -> None:
        loss = counter.loss(counted)
        (loss / max(1, int((counted["labels"][:, 1:] != -100).sum()))).backward()

    flops = count_flops(forward_backward)
    model.zero_grad(set_to_none=True)
    optimizer = build_optimizer(model, float(setup.hp["lr"]), train_cfg.weight_decay)
    scheduler = TimedConstantLR(optimizer, device)
    progress: dict[str, Any] = {"epoch": 0, "step": 0, "train_seconds": 0.0, "best": None, "best_epoch": None}
    step_log: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as folder:
        spec = TrialSpec("throughput", setup.technique, setup.hp, cfg, Path(folder), device)
        sync(device)
        start = time.perf_counter()
        stats = train_one_epoch(model, optimizer, scheduler, setup.enc, tokenizer.pad_token_id, spec, EPOCH,
                                progress, steps + 1, step_log)
    ends = [start] + scheduler.ends
    seen = stats["target_tokens"] - setup.useful_tokens(setup.batches[0]) if stats.get("finite") else None
    if not stats.get("finite"):
        log.warning("harness: non-finite training loss; train_one_epoch stopped after %d steps", progress["step"])
    return Measurement(
        "harness", steps, ends[-1] - ends[1] if len(ends) == steps + 2 else float("nan"),
        sum(setup.useful_tokens(b) for b in setup.measured), sum(setup.nonpad_tokens(b) for b in setup.measured),
        sum(setup.nonpad_tokens(b) if packed else len(b) * setup.longest(b) for b in setup.measured), flops,
        counted["input_ids"].numel(), useful_tokens_seen=seen, losses=[float(e["loss"]) for e in step_log],
        extra={"warmup_seconds": ends[1] - ends[0] if len(ends) > 1 else None,
               "train_one_epoch_step_seconds": stats.get("seconds"), "steps_done": progress["step"],
               "packed_batches": packed},
    )


# ------------------------------------------------------------------------------------------- evaluation


def generate_one_by_one(model: Any, tokenizer: Any, sources: Sequence[str], setup: Setup) -> list[str]:
    """The reference decoder: one model.generate call per prompt, greedy, translate()'s stop tokens and cap."""
    data_cfg, max_new_tokens = setup.cfg.data, setup.cfg.eval.max_new_tokens
    device = next(model.parameters()).device
    stop = stop_token_ids(tokenizer)
    was_training = model.training
    model.eval()
    outputs = []
    try:
        for source in sources:
            prompt = build_prompt(source, data_cfg, tokenizer)
            enc = tokenizer(prompt, return_tensors="pt", add_special_tokens=not data_cfg.use_chat_template).to(device)
            source_tokens = len(tokenizer(source, add_special_tokens=False)["input_ids"])
            cap = min(max_new_tokens, 3 * source_tokens + 8)
            with torch.inference_mode():
                out = model.generate(**enc, max_new_tokens=cap, eos_token_id=stop, pad_token_id=tokenizer.pad_token_id,
                                     do_sample=False, num_beams=1)
            text = tokenizer.decode(out[0, enc["input_ids"].shape[1]:], skip_special_tokens=True)
            outputs.append(text.strip().split("\n", 1)[0].strip())
    finally:
        model.train(was_training)
    return outputs


def give_adapter_weight(model: Any, seed: int) -> None:
    """A fresh LoRA adapter (B = 0) is the base model, which would make "identical outputs" say nothing about
    the adapter: trainable tensors that are all zeros get small seeded random values instead."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in model.parameters():
            if param.requires_grad and not param.any():
                param.copy_(torch.randn(param.shape, generator=generator) * 0.02)


def run_eval(setup: Setup, batch_size: int) -> EvalMeasurement:
    """Sentences/s of translate() (batched) and of one generate call per sentence, and their agreement."""
    model, tokenizer = load_wrapped(setup)
    give_adapter_weight(model, setup.cfg.train.seed)
    sources = [p.source for p in setup.test]
    max_new_tokens = setup.cfg.eval.max_new_tokens
    generate_one_by_one(model, tokenizer, sources[:1], setup)  # warm-up, not timed
    sync(setup.device)
    start = time.perf_counter()
    batched = translate(model, tokenizer, sources, setup.cfg.data, batch_size=batch_size,
                        max_new_tokens=max_new_tokens, num_beams=1)
    sync(setup.device)
    middle = time.perf_counter()
    single = generate_one_by_one(model, tokenizer, sources, setup)
    sync(setup.device)
    end = time.perf_counter()
    differing = [{"source": s, "batched": b, "single": o} for s, b, o in zip(sources, batched, single) if b != o]
    prefix_only = sum(1 for d in differing if d["batched"].startswith(d["single"]) or
                      d["single"].startswith(d["batched"]))
    return EvalMeasurement(len(sources), batch_size, max_new_tokens, middle - start, end - middle,
                           len(sources) - len(differing), prefix_only, differing[:5])


def matmul_ceiling(n: int, device: str, dtype: torch.dtype, repeats: int = 5) -> float:
    """Dense n x n @ n x n matmul GFLOP/s, best of `repeats` after one warm-up."""
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    a @ b
    best = math.inf
    for _ in range(repeats):
        sync(device)
        start = time.perf_counter()
        a @ b
        sync(device)
        best = min(best, time.perf_counter() - start)
    return 2 * n**3 / best / 1e9


# --------------------------------------------------------------------------------------------- reporting


def median_run(runs: list[Measurement]) -> Measurement:
    """The run with the median step time (the lower middle one for an even count); every run's s/step is kept
    in its `extra`."""
    chosen = sorted(runs, key=lambda m: m.s_per_step)[(len(runs) - 1) // 2]
    chosen.extra["s_per_step_runs"] = [round(m.s_per_step, 4) for m in runs]
    return chosen


def ratios(ms: dict[str, Measurement]) -> dict[str, dict[str, float]]:
    """Harness / naive (c/a) and harness / Trainer (c/b) for throughput, work and arithmetic rate (for the
    variants that ran)."""
    out: dict[str, dict[str, float]] = {}
    if "harness" not in ms:
        return out
    h = ms["harness"]
    for key, name in (("c/a", "naive"), ("c/b", "strong")):
        if name not in ms:
            continue
        ref = ms[name]
        out[key] = {
            "useful_tok_s": h.useful_tok_s / ref.useful_tok_s,
            "step_time": h.s_per_step / ref.s_per_step,
            "flops_per_step": h.flops_per_step / ref.flops_per_step,
            "gflops_s": h.gflops_s / ref.gflops_s,
        }
    return out


def train_table(ms: dict[str, Measurement]) -> str:
    from tabulate import tabulate

    rows = [[DESCRIPTIONS[m.variant].split(":")[0], f"{m.s_per_step:.3f}",
             " ".join(f"{x:.2f}" for x in m.extra.get("s_per_step_runs", [m.s_per_step])), f"{m.useful_tok_s:,.0f}",
             f"{m.nonpad_tok_s:,.0f}", f"{m.positions / m.steps:,.0f}", f"{m.flops_per_step / 1e9:,.1f}",
             f"{m.gflops_s:,.1f}", f"{m.ceiling_gflops:,.1f}", f"{100 * m.gflops_s / m.ceiling_gflops:.0f}%"]
            for m in ms.values()]
    headers = ["variant", "s/step (median round)", "s/step per round", "useful tok/s", "non-pad tok/s",
               "positions/step", "GFLOP/step", "GFLOP/s", "matmul ceiling GFLOP/s", "% of ceiling"]
    return tabulate(rows, headers, tablefmt="github", disable_numparse=True)


def ratio_table(r: dict[str, dict[str, float]]) -> str:
    from tabulate import tabulate

    rows = [[key, f"{v['useful_tok_s']:.2f}x", f"{v['step_time']:.2f}x", f"{v['flops_per_step']:.2f}x",
             f"{v['gflops_s']:.2f}x"] for key, v in r.items()]
    headers = ["ratio", "useful tok/s", "step time", "FLOPs/step (work)", "GFLOP/s (math rate)"]
    return tabulate(rows, headers, tablefmt="github", disable_numparse=True)


def eval_report(ev: EvalMeasurement) -> str:
    from tabulate import tabulate

    rows = [[f"translate() batched (batch {ev.batch_size}, sorted, left-padded, KV cache)",
             f"{ev.batched_sentences_s:.2f}", f"{ev.batched_seconds:.1f}"],
            ["model.generate, one sentence at a time", f"{ev.single_sentences_s:.2f}", f"{ev.single_seconds:.1f}"]]
    text = tabulate(rows, ["decoder", "sentences/s", "seconds"], tablefmt="github", disable_numparse=True)
    text += (f"\nbatched / one-at-a-time: {ev.speedup:.2f}x on {ev.sentences} test sentences "
             f"(max_new_tokens {ev.max_new_tokens}); identical outputs: {ev.identical}/{ev.sentences}")
    if ev.identical < ev.sentences:
        text += (f" ({ev.prefix_only} of the {ev.sentences - ev.identical} differences are one output being a "
                 "prefix of the other: a cap difference, not numerics)")
    for d in ev.differing:
        text += f"\n  differs: {d['source']!r}\n    batched: {d['batched']!r}\n    single:  {d['single']!r}"
    return text


# -------------------------------------------------------------------------------------------------- CLI


def bench_model(model: str, args: argparse.Namespace, device: str, ceiling: Callable[[], float]) -> dict[str, Any]:
    """All requested measurements of one model; prints its tables and returns its numbers."""
    cfg = build_config(model, args)
    setup = prepare(cfg, args.technique, args.steps, device, args.eval_sentences)
    tech = registry.get(setup.technique)
    result: dict[str, Any] = {
        "technique": tech.name, "label": tech.label(setup.hp), "hp": setup.hp, "examples": len(setup.enc),
        "batch_size": cfg.train.batch_size, "steps": args.steps, "warmup_steps": 1,
        "max_seq_length": cfg.data.max_seq_length, "dataset": cfg.data.dataset,
    }
    print(f"\n== {model}: {tech.name} {result['label']} | {len(setup.enc)} examples, batch {cfg.train.batch_size}, "
          f"{args.steps} measured steps after 1 warmup | {torch.get_num_threads()} threads | {device} ==")
    if not args.skip_train:
        runners = {"naive": lambda: run_naive(setup, cfg.data.max_seq_length), "strong": lambda: run_strong(setup),
                   "harness": lambda: run_harness(setup)}
        runs: dict[str, list[Measurement]] = {name: [] for name in args.variants}
        # The machine's speed drifts (shared, turbo): the variants take turns, --repeats rounds of them, and each
        # run's matmul ceiling is measured right after it.
        for round_ in range(args.repeats):
            for name in args.variants:
                log.info("%s: training variant %s (round %d of %d)", model, name, round_ + 1, args.repeats)
                measurement = runners[name]()
                measurement.ceiling_gflops = ceiling()
                runs[name].append(measurement)
                gc.collect()
        ms = {name: median_run(found) for name, found in runs.items()}
        result["train"] = {k: m.to_dict() for k, m in ms.items()}
        result["ratios"] = ratios(ms)
        print(train_table(ms))
        print(ratio_table(result["ratios"]))
        print("useful tokens = target + EOS tokens (same batches for all three); FLOPs of (a) and (b) include logits "
              "at prompt/padding positions, (c) computes the LM head at target positions only.")
    if not args.skip_eval:
        log.info("%s: evaluation benchmark on %d sentences", model, len(setup.test))
        ev = run_eval(setup, args.eval_batch_size)
        gc.collect()
        result["eval"] = ev.to_dict()
        print(eval_report(ev))
    return result


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.throughput",
        description="Training tokens/s of a naive loop, transformers.Trainer and the harness, and sentences/s of "
                    "batched vs one-at-a-time translation, on the same model, examples and steps.",
    )
    p.add_argument("--models", default=DEFAULT_MODELS, help=f"comma list of models [{DEFAULT_MODELS}]")
    p.add_argument("--technique", default="lora", help="any registered technique [lora]")
    p.add_argument("--config", default=None, help="preset name or YAML file [default]")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="config override, e.g. peft.r=8 (repeatable, applied last)")
    p.add_argument("--steps", type=int, default=8, help="measured optimizer steps, after 1 warmup step [8]")
    p.add_argument("--batch-size", type=int, default=16, help="[16]")
    p.add_argument("--max-seq-length", type=int, default=128,
                   help="the naive variant's padding length, and the truncation length of all [128]")
    p.add_argument("--eval-sentences", type=int, default=48, help="test sentences translated [48]")
    p.add_argument("--eval-batch-size", type=int, default=64, help="translate() batch size [64]")
    p.add_argument("--variants", default="naive,strong,harness", type=lambda v: [x.strip() for x in v.split(",")],
                   help="training variants to run, a comma list of naive, strong, harness [all three]")
    p.add_argument("--repeats", type=int, default=1,
                   help="rounds of the training variants, taking turns; each variant's median round is reported [1]")
    p.add_argument("--skip-train", action="store_true")
    p.add_argument("--skip-eval", action="store_true")
    p.add_argument("--threads", type=int, default=None, help="torch threads [all cores]")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda", "mps", "auto"], help="[cpu]")
    p.add_argument("--ceiling-size", type=int, default=2048, help="n of the n x n matmul ceiling [2048]")
    p.add_argument("--data", default=None, help="TSV/JSONL file or folder of pairs [the embedded corpus]")
    p.add_argument("--json", default=None, metavar="OUT", help="write all numbers to this JSON file")
    p.add_argument("-v", "--verbose", action="store_true")
    return p


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Every model's measurements, plus the settings, the matmul ceiling and provenance."""
    for name, value in (("--steps", args.steps), ("--batch-size", args.batch_size), ("--repeats", args.repeats),
                        ("--eval-sentences", args.eval_sentences), ("--eval-batch-size", args.eval_batch_size)):
        if value < 1:
            raise BenchError(f"{name}: {value} is not a positive number. Give e.g. {name} 4.")
    unknown = [v for v in args.variants if v not in DESCRIPTIONS]
    if unknown or not args.variants:
        raise BenchError(f"--variants: {','.join(unknown) or 'nothing'} is not a training variant. Give a comma "
                         f"list of {', '.join(DESCRIPTIONS)}, e.g. --variants strong,harness.")
    registry.get(args.technique)  # an unknown name fails before any model loads
    device = resolve_device(args.device)
    threads = set_threads(args.threads or os.cpu_count())
    # The ceiling in the dtype the model computes in (the first model's, from its config and the device).
    first = build_config([m.strip() for m in args.models.split(",") if m.strip()][0], args).model
    dtype = choose_dtype(device, first.dtype, first.fp16, first.bf16)
    ceiling = matmul_ceiling(args.ceiling_size, device, dtype)
    print(f"dense {dtype_name(dtype)} matmul ceiling ({args.ceiling_size}^3, best of 5; measured again after each "
          f"variant): {ceiling:,.1f} GFLOP/s "
          f"on {threads} threads")
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    out: dict[str, Any] = {
        "settings": {k: v for k, v in vars(args).items() if k != "verbose"},
        "device": device, "threads": threads, "matmul_ceiling_gflops": ceiling, "ceiling_dtype": dtype_name(dtype),
        "versions": versions(), "commit": commit(), "models": {},
    }
    for model in models:
        out["models"][model] = bench_model(model, args, device,
                                           lambda: matmul_ceiling(args.ceiling_size, device, dtype))
    return out


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    previous_threads = torch.get_num_threads()
    try:
        result = run(args)
    except BenchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    finally:
        torch.set_num_threads(previous_threads)
    if args.json:
        atomic_write_json(Path(args.json), result)
        print(f"\nnumbers written to {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
