"""Training-step variants side by side on one device: time per step, tokens/s and host-dispatched ops.

`python -m benchmarks.step_variants --device cuda --model PATH` loads the model fresh for every variant (a
compiled variant compiles its decoder in place), wraps it with the technique (default LoRA r16 all-linear),
and runs `harness.steps.TrainStep` + clipping + fused AdamW (what the train loop does) on the first length-grouped
batches of the train split, cycling through them: `--warmup` untimed steps (compilation and CUDA-graph capture
happen there), then `--steps` timed steps with one device sync at the end. For each variant it also counts the
aten ops one step dispatches from the host (torch.profiler; on CUDA also the kernels launched), which is what a
host-bound step's time is made of, and records the first step's loss (variants must agree within rounding).

With --decode it also counts host-dispatched ops per generated token of the harness's greedy decoder and times
`harness.evaluation.translate` on the test sentences.

Variants are named option sets (harness.steps.StepOptions); `--variants` picks them by name. Numbers are
printed and written with --json; nothing is asserted.
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import json
import logging
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from harness.config import load_config
from harness.data import batch_indices, build_prompt, encode, load_splits
from harness.devices import dtype_name, resolve_device
from harness.errors import BenchError
from harness.steps import CPU_STEP, CUDA_STEP, StepOptions, TrainStep
from harness.training import build_optimizer, resolve_hyperparameters
from techniques import registry

log = logging.getLogger("benchmarks.step_variants")

VARIANTS: dict[str, StepOptions] = {
    "cpu-step": CPU_STEP,  # packed rows, chunked loss, fused LoRA (today's step everywhere)
    "padded-eager": CUDA_STEP,  # mask-free padded batches, plain loss on target rows, sync-free
    "padded-eager-fusedlora": dataclasses.replace(CUDA_STEP, fused_lora=True),
    "padded-compiled": dataclasses.replace(CUDA_STEP, compile="default"),
    "padded-cudagraphs": dataclasses.replace(CUDA_STEP, compile="reduce-overhead"),
    "padded-graphs": dataclasses.replace(CUDA_STEP, cuda_graphs=True),  # CUDA graphs without compiling
}


def count_ops(fn: Callable[[], Any], device: str) -> dict[str, int]:
    """aten ops dispatched from the host while `fn` runs (all, and top-level ones: not called by another aten
    op), and on CUDA the kernels launched."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device == "cuda" else [])
    with profile(activities=activities) as prof:
        fn()
        if device == "cuda":
            torch.cuda.synchronize()
    events = prof.events()
    aten = [e for e in events if e.name.startswith("aten::") and e.device_type == torch.autograd.DeviceType.CPU]
    top = [e for e in aten if not _has_aten_parent(e)]
    out = {"aten_ops": len(aten), "aten_top_level": len(top)}
    if device == "cuda":
        out["cuda_kernels"] = sum(1 for e in events if e.device_type == torch.autograd.DeviceType.CUDA)
    return out


def _has_aten_parent(event: Any) -> bool:
    parent = event.cpu_parent
    while parent is not None:
        if parent.name.startswith("aten::"):
            return True
        parent = parent.cpu_parent
    return False


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def load(cfg: Any, technique: str, device: str) -> tuple[Any, Any, dict[str, Any]]:
    from harness.models import load_model

    tech = registry.get(technique)
    hp = resolve_hyperparameters(tech, cfg)
    torch.manual_seed(cfg.train.seed)
    loaded = load_model(dataclasses.replace(cfg.model, **tech.model_overrides(hp)), device)
    return tech.wrap(loaded.model, hp, loaded.tokenizer), loaded.tokenizer, hp


def run_variant(cfg: Any, technique: str, name: str, options: StepOptions, batch_size: int, enc: Any,
                device: str, warmup: int, steps: int, profile_ops: bool) -> dict[str, Any]:
    model, tokenizer, hp = load(cfg, technique, device)
    model.train()
    step = TrainStep(model, options, device, tokenizer.pad_token_id, rows=batch_size)
    optimizer = build_optimizer(model, float(hp["lr"]), cfg.train.weight_decay)
    groups = [[b] for b in batch_indices(enc.lengths(), batch_size, cfg.train.seed, 1, True)]
    trainable = [p for p in model.parameters() if p.requires_grad]
    used = groups[:steps]

    def one(group: list[list[int]]) -> Any:
        result = step(enc, group)
        torch.nn.utils.clip_grad_norm_(trainable, cfg.train.max_grad_norm)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return result

    sync(device)
    start = time.perf_counter()
    first = one(used[0])
    first_loss = float(first.loss_sum) / first.target_tokens
    first_seconds = time.perf_counter() - start
    # Warm-up passes over every batch the timed steps use: each new shape compiles (and, under CUDA graphs,
    # records) there, so the timed steps are the steady state.
    for _ in range(warmup):
        for group in used:
            one(group)
    sync(device)
    start = time.perf_counter()
    targets = tokens = 0
    for i in range(steps):
        r = one(used[i % len(used)])
        targets, tokens = targets + r.target_tokens, tokens + r.tokens
    sync(device)
    seconds = time.perf_counter() - start
    out = {"variant": name, "options": dataclasses.asdict(step.options), "technique": technique,
           "batch_size": batch_size, "first_step_s": round(first_seconds, 3), "first_loss": first_loss,
           "s_per_step": seconds / steps, "target_tok_s": targets / seconds, "tok_s": tokens / seconds,
           "peak_memory_mb": torch.cuda.max_memory_allocated() / 2**20 if device == "cuda" else None}
    if profile_ops:
        out.update(count_ops(lambda: one(used[0]), device))
    log.info("%s", json.dumps(out))
    del model, optimizer, step
    gc.collect()
    if device == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    return out


def run_decode(cfg: Any, device: str, sentences: int, batch_size: int) -> dict[str, Any]:
    """Host ops per generated token of greedy_generate (batch 8, 16 new tokens), and translate() on
    `sentences` test sentences (untimed warm-up first)."""
    from harness.decoding import greedy_generate
    from harness.evaluation import stop_token_ids, translate

    model, tokenizer, _ = load(cfg, "lora", device)
    model.eval()
    test = load_splits(cfg.data).test[:sentences]
    sources = [p.source for p in test]
    tokenizer.padding_side = "left"
    enc = tokenizer([build_prompt(s, cfg.data, tokenizer) for s in sources[:8]], return_tensors="pt",
                    padding=True, add_special_tokens=not cfg.data.use_chat_template).to(device)
    produced: list[list[list[int]]] = []

    def generate() -> None:
        with torch.inference_mode():
            produced.append(greedy_generate(model, enc["input_ids"], enc["attention_mask"], [16] * 8, []))

    generate()
    ops = count_ops(generate, device)
    steps = max(len(r) for r in produced[-1])
    translate(model, tokenizer, sources[:batch_size], cfg.data, batch_size, cfg.eval.max_new_tokens)
    sync(device)
    start = time.perf_counter()
    out = translate(model, tokenizer, sources, cfg.data, batch_size, cfg.eval.max_new_tokens)
    sync(device)
    seconds = time.perf_counter() - start
    stop_token_ids(tokenizer)
    result = {"decode_steps": steps, **{f"{k}_per_token": v / steps for k, v in ops.items()},
              "translate_sentences": len(out), "translate_seconds": seconds,
              "translate_batch_size": batch_size}
    log.info("%s", json.dumps(result))
    return result


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m benchmarks.step_variants", description=__doc__.split("\n")[0])
    p.add_argument("--model", default="gemma-3-270m", help="embedded model name or model folder")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda", "auto"])
    p.add_argument("--techniques", default="lora", help="comma list [lora]")
    p.add_argument("--variants", default=",".join(VARIANTS), help=f"comma list of {', '.join(VARIANTS)}")
    p.add_argument("--batch-sizes", default="16", help="comma list [16]")
    p.add_argument("--large", default="", help="variant:batch,... extra runs at larger batches")
    p.add_argument("--warmup", type=int, default=2, help="warm-up passes over the timed batches [2]")
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--train-pairs", type=int, default=640)
    p.add_argument("--no-profile", action="store_true", help="skip the op counts")
    p.add_argument("--decode", action="store_true", help="also count ops per generated token, time translate()")
    p.add_argument("--decode-sentences", type=int, default=160)
    p.add_argument("--config", default=None)
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--json", default=None)
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        device = resolve_device(args.device)
        cfg = load_config(args.config, args.overrides, {"model": {"name": args.model},
                                                         "data": {"max_train_samples": args.train_pairs}})
        unknown = [v for v in args.variants.split(",") if v not in VARIANTS]
        if unknown:
            raise BenchError(f"--variants: {','.join(unknown)} unknown; choose from {', '.join(VARIANTS)}.")
    except BenchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    from harness.models import load_tokenizer, resolve_source

    source, local = resolve_source(cfg.model)
    tokenizer = load_tokenizer(source, cfg.model, local)
    enc = encode(load_splits(cfg.data).train, tokenizer, cfg.data)
    runs = [(t, v, int(b)) for t in args.techniques.split(",") for v in args.variants.split(",")
            for b in args.batch_sizes.split(",")]
    runs += [("lora", item.split(":")[0], int(item.split(":")[1])) for item in args.large.split(",") if item]
    results: dict[str, Any] = {"device": device, "torch": torch.__version__, "examples": len(enc), "runs": []}
    if device == "cuda":
        results["gpu"] = torch.cuda.get_device_name(0)
    for technique, variant, batch in runs:
        try:
            results["runs"].append(run_variant(cfg, technique, variant, VARIANTS[variant], batch, enc, device,
                                               args.warmup, args.steps, not args.no_profile))
        except Exception as exc:  # noqa: BLE001 - an exploratory run records a failing variant and goes on
            log.exception("variant %s (%s, batch %d) failed", variant, technique, batch)
            results["runs"].append({"variant": variant, "technique": technique, "batch_size": batch,
                                    "error": f"{type(exc).__name__}: {exc}"[:2000]})
        if args.json:
            Path(args.json).write_text(json.dumps(results, indent=1))
    if args.decode:
        try:
            results["decode"] = run_decode(cfg, device, args.decode_sentences, 64)
        except Exception as exc:  # noqa: BLE001
            log.exception("decode failed")
            results["decode"] = {"error": f"{type(exc).__name__}: {exc}"[:2000]}
    results["dtype"] = dtype_name(torch.bfloat16 if device == "cuda" else torch.float32)
    text = json.dumps(results, indent=1)
    if args.json:
        Path(args.json).write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
