"""The train loop of one trial, readable top to bottom (`run_trial`).

load base model -> technique wraps it -> AdamW on trainable parameters, warmup + decay schedule, gradient
accumulation and clipping -> per epoch: train loss/perplexity, then evaluation -> files in the trial folder.
The loop never names a technique: it only asks the plugin how to load, wrap and label.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import shutil
import time
import traceback
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from harness import checkpoint as ckpt
from harness.config import BenchConfig
from harness.data import Encoded, Pair, batch_indices, encode_cached, load_splits, sample
from harness.devices import dtype_name, peak_memory_mb, reset_peak_memory, set_threads
from harness.evaluation import evaluate_epoch, evaluate_test, perplexity
from harness.io import atomic_write_dir, atomic_write_json, atomic_write_jsonl, atomic_write_text, read_json
from harness.models import cache_root, count_parameters, load_model, weight_memory_mb
from harness.packing import packing_unsupported
from harness.provenance import commit, versions
from harness.steps import TrainStep, choose_step
from techniques import registry
from techniques.base import Technique

log = logging.getLogger(__name__)

# (metrics row, checkpoint folder or None) -> None; the driver passes one that calls tune.report.
Reporter = Callable[[dict[str, Any], Path | None], None]


@dataclass
class TrialSpec:
    """Everything one trial needs; built by the driver, plain data."""

    trial_id: str
    technique: str
    hp: dict[str, Any]
    config: BenchConfig
    trial_dir: Path
    device: str = "cpu"
    threads: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)  # recorded in config.json (e.g. the Ray trial id)


@dataclass
class TrialData:
    train: Encoded
    validation: Encoded  # teacher-forced eval loss
    validation_pairs: list[Pair]  # translated after every epoch
    test: list[Pair]  # translated once, for the leaderboard
    provenance: dict[str, Any]


def resolve_hyperparameters(
    technique: Technique, cfg: BenchConfig, suggested: dict[str, Any] | None = None
) -> dict[str, Any]:
    """Technique defaults <- config's shared peft/train values <- per-technique overrides <- search values."""
    hp = dict(technique.defaults)
    for key in hp:
        value = cfg.train.lr if key == "lr" else cfg.peft.get(key)
        if value is not None:
            hp[key] = value
    for name, params in cfg.per_technique.items():
        if registry.canonical(name) == technique.name:
            hp.update(params)
    hp.update(suggested or {})
    return hp


def prepare_data(cfg: BenchConfig, tokenizer: Any) -> TrialData:
    """Splits, tokenized (cached per tokenizer) train and validation sets, and the fixed test sample."""
    splits = load_splits(cfg.data)
    cache = cache_root(cfg.model) / "tokenized"
    train = encode_cached(splits.train, tokenizer, cfg.data, cache, "train")
    validation_pairs = sample(splits.validation, cfg.data.max_validation_samples, cfg.data.split_seed)
    validation = encode_cached(validation_pairs, tokenizer, cfg.data, cache, "validation")
    # Samples seeded by the data config only, so every trial of a run translates the same sentences.
    generation_pairs = sample(validation_pairs, cfg.eval.validation_samples, cfg.data.split_seed + 1)
    test = sample(splits.test, cfg.eval.test_samples, cfg.data.split_seed)
    provenance = dict(splits.provenance, validation_used=len(validation), validation_translated=len(generation_pairs),
                      test_used=len(test), train_examples=len(train), train_dropped_too_long=train.dropped,
                      train_truncated_too_long=train.truncated)
    return TrialData(train, validation, generation_pairs, test, provenance)


class TrialFiles:
    """The trial folder: config.json, metrics.jsonl, steps.jsonl, predictions.tsv, status.json, adapter/,
    checkpoint/. Every write is atomic."""

    def __init__(self, folder: Path):
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)
        self.rows: list[dict[str, Any]] = []
        self.steps: list[dict[str, Any]] = []

    def write_config(self, record: dict[str, Any]) -> None:
        atomic_write_json(self.folder / "config.json", record)

    def status(self, status: str, **info: Any) -> None:
        atomic_write_json(self.folder / "status.json", {"status": status, "updated": time.time(), **info})

    def add_epoch(self, row: dict[str, Any]) -> None:
        self.rows.append(row)
        atomic_write_jsonl(self.folder / "metrics.jsonl", self.rows)
        atomic_write_jsonl(self.folder / "steps.jsonl", self.steps)

    def write_test(self, metrics: dict[str, Any], predictions: list[tuple[str, str, str]]) -> None:
        lines = ["source\treference\thypothesis"] + ["\t".join(_one_line(c) for c in p) for p in predictions]
        atomic_write_text(self.folder / "predictions.tsv", "\n".join(lines) + "\n")
        atomic_write_json(self.folder / "test_metrics.json", metrics)

    def restore(self, rows: list[dict[str, Any]], steps: list[dict[str, Any]]) -> None:
        self.rows, self.steps = list(rows), list(steps)
        atomic_write_jsonl(self.folder / "metrics.jsonl", self.rows)
        atomic_write_jsonl(self.folder / "steps.jsonl", self.steps)


def _one_line(text: str) -> str:
    return " ".join(text.replace("\t", " ").split())


def trial_record(spec: TrialSpec, technique: Technique, loaded: Any, model: Any, data: TrialData) -> dict[str, Any]:
    trainable, total = count_parameters(model)
    return {
        "trial_id": spec.trial_id,
        "technique": technique.name,
        "description": technique.description,
        "label": technique.label(spec.hp),
        "hp": spec.hp,
        "model": spec.config.model.name,
        "model_source": loaded.source,
        "quantized_4bit": loaded.quantized,
        "device": spec.device,
        "dtype": dtype_name(loaded.dtype),
        "threads": torch.get_num_threads(),
        "trainable_params": trainable,
        "total_params": total,
        "trainable_pct": 100.0 * trainable / max(total, 1),
        "weight_memory_mb": round(weight_memory_mb(model), 1),
        "packed_batches": uses_packing(model, spec.config.train.packing, technique),
        "packing_note": packing_unsupported(model),
        "data": data.provenance,
        "versions": versions(),
        "commit": commit(),
        "config": spec.config.to_dict(),
        **spec.extra,
    }


def run_trial(spec: TrialSpec, reporter: Reporter | None = None, resume_from: Path | None = None) -> dict[str, Any]:
    """Train and evaluate one technique with one set of hyper-parameters; returns the final status."""
    cfg, train_cfg = spec.config, spec.config.train
    technique = registry.get(spec.technique)
    files = TrialFiles(spec.trial_dir)
    files.status("running")
    set_threads(spec.threads)
    torch.manual_seed(train_cfg.seed)
    reset_peak_memory(spec.device)

    # 1. Base model as the technique wants it loaded, then wrapped by the technique.
    model_cfg = dataclasses.replace(cfg.model, **technique.model_overrides(spec.hp))
    loaded = load_model(model_cfg, spec.device)
    tokenizer = loaded.tokenizer
    model = technique.wrap(loaded.model, spec.hp, tokenizer)
    data = prepare_data(cfg, tokenizer)
    record = trial_record(spec, technique, loaded, model, data)
    files.write_config(record)
    log.info("trial %s: %s %s, %d trainable of %d parameters (%.3f%%)", spec.trial_id, technique.name,
             record["label"], record["trainable_params"], record["total_params"], record["trainable_pct"])

    def evaluate_now() -> dict[str, Any]:
        return evaluate_epoch(model, tokenizer, data.validation, data.validation_pairs, cfg.data, cfg.eval,
                              spec.device)

    def test_now(epoch: int | None) -> dict[str, Any]:
        metrics, predictions = evaluate_test(model, tokenizer, data.test, cfg.data, cfg.eval)
        metrics.update(epoch=epoch, test_set=data.provenance["files"].get("test", cfg.data.dataset))
        files.write_test(metrics, predictions)
        return metrics

    # 2. The zero-shot baseline: one evaluation, recorded like an epoch 0.
    if not technique.trains:
        row = {"epoch": 0, "step": 0, **evaluate_now(), "peak_memory_mb": round(peak_memory_mb(spec.device), 1),
               "weight_memory_mb": record["weight_memory_mb"]}
        files.add_epoch(row)
        test_now(0)
        files.status("ok", epochs_done=0, best_epoch=0, stop_reason="evaluation only")
        if reporter:
            reporter(row, None)
        return {"status": "ok", "rows": files.rows}

    # 3. Optimizer over trainable parameters only, warmup then linear/cosine decay.
    from transformers import get_scheduler

    optimizer = (technique.optimizer(model, spec.hp, train_cfg.weight_decay)
                 or build_optimizer(model, float(spec.hp["lr"]), train_cfg.weight_decay))
    total_steps = epoch_steps(len(data.train), train_cfg) * train_cfg.epochs
    if train_cfg.max_steps:
        total_steps = min(total_steps, train_cfg.max_steps)
    scheduler = get_scheduler(train_cfg.lr_scheduler, optimizer,
                              num_warmup_steps=int(train_cfg.warmup_ratio * total_steps),
                              num_training_steps=total_steps)

    # 4. Resume: adapter weights, optimizer moments, RNG, counters, earlier epochs' metrics.
    progress: dict[str, Any] = {"epoch": 0, "step": 0, "train_seconds": 0.0, "best": None, "best_epoch": None}
    if resume_from is not None:
        ckpt.load_trainable(model, resume_from)
        progress = ckpt.load_training_state(resume_from, optimizer)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "scheduler.step() before optimizer.step()": we fast-forward
            for _ in range(progress["step"]):
                scheduler.step()
        files.restore(progress.pop("rows"), progress.pop("steps"))
        log.info("trial %s resumed after epoch %d (step %d)", spec.trial_id, progress["epoch"], progress["step"])

    # The best epoch is chosen on validation data only, by the configured (stable) signal, never on test.
    metric, higher_is_better = cfg.eval.selection, cfg.eval.selection != "eval_loss"
    # The device's training step, built once (a compiled step compiles on its first use).
    step = build_step(model, spec, tokenizer.pad_token_id)
    log.info("trial %s: training step %s", spec.trial_id, step.options.describe())
    model.train()
    for epoch in range(progress["epoch"] + 1, train_cfg.epochs + 1):
        # 5. One epoch of optimizer steps.
        epoch_stats = train_one_epoch(model, optimizer, scheduler, data.train, tokenizer.pad_token_id, spec,
                                      epoch, progress, total_steps, files.steps, step)
        if not epoch_stats["finite"]:
            log.warning("trial %s diverged: non-finite loss in epoch %d", spec.trial_id, epoch)
            return finish(files, progress, "diverged", test_now, model, spec, diverged={
                "diverged_at_epoch": epoch, "error": f"non-finite training loss at step {progress['step'] + 1}"})

        # 6. Evaluate, record, keep the best epoch's adapter, checkpoint for resume.
        metrics = evaluate_now()
        row = {
            "epoch": epoch,
            "step": progress["step"],
            "train_loss": epoch_stats["loss"],
            "train_ppl": perplexity(epoch_stats["loss"]),
            **metrics,
            "lr": scheduler.get_last_lr()[0],
            "tokens_per_s": epoch_stats["target_tokens"] / max(epoch_stats["seconds"], 1e-9),
            "all_tokens_per_s": epoch_stats["tokens"] / max(epoch_stats["seconds"], 1e-9),
            "epoch_seconds": round(epoch_stats["seconds"], 2),
            "train_seconds": round(progress["train_seconds"], 2),
            "peak_memory_mb": round(peak_memory_mb(spec.device), 1),
            "weight_memory_mb": record["weight_memory_mb"],
        }
        diverged = is_diverged(row, files.rows, train_cfg.divergence_factor)
        row["diverged"] = diverged
        files.add_epoch(row)
        value = row[metric]
        best = progress["best"]
        improved = best is None or (value > best if higher_is_better else value < best)
        if not diverged and improved:
            progress["best"], progress["best_epoch"] = value, epoch
            atomic_write_dir(spec.trial_dir / "adapter", lambda d: ckpt.save_adapter(model, d, technique.export))
        progress["epoch"] = epoch
        write_checkpoint(spec.trial_dir / ckpt.CHECKPOINT_DIR, model, optimizer, progress, files)
        last = diverged or bool(epoch_stats["stop"]) or epoch == train_cfg.epochs
        if last:
            # Finished before the last report: a scheduler may end the trial at that report.
            explosion = {"diverged_at_epoch": epoch, "error": f"eval loss {row['eval_loss']:.3f} exploded (> "
                         f"{train_cfg.divergence_factor}x the best earlier epoch)"} if diverged else None
            outcome = finish(files, progress, epoch_stats["stop"] or "epochs", test_now, model, spec, explosion)
        else:
            files.status("running", epochs_done=epoch, best_epoch=progress["best_epoch"])
        if reporter:
            reporter(row, spec.trial_dir / ckpt.CHECKPOINT_DIR)
        if last:
            return outcome
    # Only reached when a resumed trial had already done every epoch.
    return finish(files, progress, "epochs", test_now, model, spec)


def finish(files: TrialFiles, progress: dict[str, Any], stop_reason: str, test_now: Callable[[int], Any],
           model: Any, spec: TrialSpec, diverged: dict[str, Any] | None = None) -> dict[str, Any]:
    """The test sample, translated once with the best epoch's adapter; then the final status. A diverged
    trial keeps its earlier epochs and is tested with its best healthy adapter, if it has one."""
    if progress["best_epoch"] is not None:
        if progress["best_epoch"] != progress["epoch"] or diverged:
            ckpt.load_trainable(model, spec.trial_dir / "adapter")
        test_now(progress["best_epoch"])
    status = "diverged" if diverged else "ok"
    files.status(status, epochs_done=len(files.rows), best_epoch=progress["best_epoch"], stop_reason=stop_reason,
                 **(diverged or {}))
    return {"status": status, "rows": files.rows}


def train_one_epoch(
    model: Any,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    train: Encoded,
    pad_id: int,
    spec: TrialSpec,
    epoch: int,
    progress: dict[str, Any],
    total_steps: int,
    step_log: list[dict[str, Any]],
    step: TrainStep | None = None,
) -> dict[str, Any]:
    """Optimizer steps over one epoch (or until max_steps / the time budget). Updates `progress`. `step` is the
    trial's device-chosen training step (harness.steps), built once per trial; None builds the default."""
    cfg = spec.config.train
    if step is None:
        step = build_step(model, spec, pad_id)
    groups = epoch_groups(train, cfg, epoch, progress["step"])
    technique = registry.get(spec.technique)
    # Losses are summed on the device; a sync-free step reads them once per log interval (and at the end).
    epoch_loss = torch.zeros((), dtype=torch.float32, device=spec.device)
    window_loss = torch.zeros((), dtype=torch.float32, device=spec.device)
    target_tokens = tokens = 0
    seconds = 0.0
    stop = None
    window_tokens, window_start = 0, time.perf_counter()
    bar = tqdm(total=len(groups), desc=f"{spec.trial_id} epoch {epoch}", disable=None, leave=False)
    for group in groups:
        if progress["step"] >= total_steps:
            stop = "max_steps"
            break
        start = time.perf_counter()
        result = step(train, group)
        tokens += result.tokens
        group_tokens = result.target_tokens
        if not step.options.sync_free and not math.isfinite(float(result.loss_sum)):
            bar.close()
            return {"finite": False}
        torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], cfg.max_grad_norm)
        optimizer.step()
        scheduler.step()
        technique.on_step(model, spec.hp, progress["step"], total_steps)  # sees this step's gradients
        optimizer.zero_grad(set_to_none=True)
        elapsed = time.perf_counter() - start
        seconds += elapsed
        progress["train_seconds"] += elapsed
        progress["step"] += 1
        epoch_loss += result.loss_sum
        window_loss += result.loss_sum
        target_tokens += group_tokens
        window_tokens += group_tokens
        bar.update(1)
        if progress["step"] % cfg.log_steps == 0:
            window_mean = float(window_loss) / max(window_tokens, 1)  # the one sync of a log interval
            if not math.isfinite(window_mean):
                bar.close()
                return {"finite": False}
            now = time.perf_counter()
            entry = {"step": progress["step"], "epoch": epoch, "loss": window_mean,
                     "lr": scheduler.get_last_lr()[0], "tokens_per_s": window_tokens / max(now - window_start, 1e-9)}
            step_log.append(entry)
            bar.set_postfix(loss=f"{window_mean:.3f}", tok_s=f"{target_tokens / seconds:.0f}")
            log.info("trial %s epoch %d step %d/%d loss %.4f lr %.2e target tok/s %.0f", spec.trial_id, epoch,
                     entry["step"], total_steps, entry["loss"], entry["lr"], entry["tokens_per_s"])
            window_loss.zero_()
            window_tokens, window_start = 0, now
        if cfg.save_steps and progress["step"] % cfg.save_steps == 0:
            atomic_write_dir(spec.trial_dir / "snapshot", lambda d: ckpt.save_adapter(model, d, technique.export))
        if cfg.time_budget_s and progress["train_seconds"] >= cfg.time_budget_s:
            stop = "time_budget"
            break
    bar.close()
    if stop is None and progress["step"] >= total_steps:
        stop = "max_steps" if cfg.max_steps and total_steps == cfg.max_steps else None
    loss_sum = float(epoch_loss)
    if not math.isfinite(loss_sum):
        return {"finite": False}
    mean = loss_sum / max(target_tokens, 1)
    return {"finite": True, "loss": mean, "target_tokens": target_tokens, "tokens": tokens, "seconds": seconds,
            "stop": stop}


def pass_groups(train: Encoded, cfg: Any, data_pass: int) -> list[list[list[int]]]:
    """One full pass over the training data as optimizer steps, each a group of accumulated index batches.
    Index batches only; tensors are built per step (a large dataset never sits in memory as tensors)."""
    batches = batch_indices(train.lengths(), cfg.batch_size, cfg.seed, data_pass, cfg.group_by_length)
    return [batches[i: i + cfg.gradient_accumulation_steps]
            for i in range(0, len(batches), cfg.gradient_accumulation_steps)]


def epoch_steps(pairs: int, cfg: Any) -> int:
    """Optimizer steps in one epoch: train.steps_per_epoch, or one full pass over `pairs` training pairs."""
    if cfg.steps_per_epoch:
        return cfg.steps_per_epoch
    return math.ceil(math.ceil(pairs / cfg.batch_size) / cfg.gradient_accumulation_steps)


def epoch_groups(train: Encoded, cfg: Any, epoch: int, done: int) -> list[list[list[int]]]:
    """The optimizer steps of `epoch` (1-based), `done` steps having run before it. Without steps_per_epoch an
    epoch is a full pass; with it, global step s takes step s % P of full pass s // P + 1 (P steps a pass), so the
    data is read on across epochs, every pair once a pass, and a resumed trial sees the same batches."""
    if not cfg.steps_per_epoch:
        return pass_groups(train, cfg, epoch)
    per_pass = epoch_steps(len(train), dataclasses.replace(cfg, steps_per_epoch=None))
    passes: dict[int, list[list[list[int]]]] = {}
    groups = []
    for s in range(done, epoch * cfg.steps_per_epoch):
        data_pass = s // per_pass + 1
        if data_pass not in passes:
            passes[data_pass] = pass_groups(train, cfg, data_pass)
        groups.append(passes[data_pass][s % per_pass])
    return groups


def build_step(model: Any, spec: TrialSpec, pad_id: int) -> TrainStep:
    """The trial's device-chosen training step; packing only where the technique and the model allow it."""
    cfg = spec.config.train
    packed = uses_packing(model, cfg.packing, registry.get(spec.technique))
    return TrainStep(model, choose_step(spec.device, packed, cfg.step.overrides()), spec.device, pad_id,
                     rows=cfg.batch_size)


def build_optimizer(model: Any, lr: float, weight_decay: float) -> torch.optim.Optimizer:
    """AdamW over the trainable parameters, in torch's fused form where it exists for their device (one kernel
    per step instead of a dozen per parameter tensor; what transformers' Trainer uses by default too)."""
    params = [p for p in model.parameters() if p.requires_grad]
    fused = all(p.is_floating_point() and p.device.type in ("cpu", "cuda", "mps") for p in params)
    try:
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, fused=fused or None)
    except RuntimeError:  # a device or dtype this torch build has no fused kernel for
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)


def uses_packing(model: Any, wanted: bool, technique: Technique | None = None) -> bool:
    """Packed (padding-free) batches when the config asks for them and the model and technique allow it."""
    allowed = technique is None or technique.packed_batches
    return wanted and allowed and packing_unsupported(model) is None


def is_diverged(row: dict[str, Any], earlier: list[dict[str, Any]], factor: float) -> bool:
    """Eval loss not finite, or above `factor` x the best earlier epoch's (the original prefix-tuning run
    went from a sane loss to eval perplexity 557 in one epoch)."""
    loss = row.get("eval_loss")
    if loss is None or not math.isfinite(loss) or not math.isfinite(row.get("train_loss", 0.0)):
        return True
    best = min((r["eval_loss"] for r in earlier if r.get("eval_loss") is not None), default=None)
    return best is not None and loss > factor * best


def write_checkpoint(folder: Path, model: Any, optimizer: torch.optim.Optimizer, progress: dict[str, Any],
                     files: TrialFiles) -> None:
    state = dict(progress, rows=files.rows, steps=files.steps)

    def write(tmp: Path) -> None:
        ckpt.save_trainable(model, tmp)
        ckpt.save_training_state(tmp, optimizer, state)

    atomic_write_dir(folder, write)


def mark_failed(trial_dir: Path, exc: BaseException) -> dict[str, Any]:
    """Record a trial that raised: the error on the leaderboard, earlier epochs kept."""
    info = {"error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc(limit=20)}
    status = read_json(trial_dir / "status.json") if (trial_dir / "status.json").exists() else {}
    TrialFiles(trial_dir).status("failed", epochs_done=status.get("epochs_done", 0), **info)
    return {"status": "failed", **info}


def discard(folder: Path) -> None:
    shutil.rmtree(folder, ignore_errors=True)
