"""The train loop's recipe on the tiny Llama: learning-rate schedules and warm-up, gradient accumulation (equal to
one big batch), and gradient-norm clipping on every optimizer step."""

from __future__ import annotations

import math

import pytest
import torch

from harness.io import read_jsonl
from harness.training import run_trial
from test_training import cfg_for, spec

BASE_LR = 1e-3


def lrs(tmp_path, tiny_llama, scheduler: str, warmup: float) -> list[float]:
    # 32 pairs / batch 8 = 4 steps per epoch, 2 epochs = 8 steps
    cfg = cfg_for(tmp_path, tiny_llama, "train.epochs=2", f"train.lr={BASE_LR}", f"train.lr_scheduler={scheduler}",
                  f"train.warmup_ratio={warmup}", "eval.validation_samples=1", "eval.test_samples=1",
                  "eval.max_new_tokens=1")
    run_trial(spec(cfg, "lora", tmp_path / scheduler))
    rows = read_jsonl(tmp_path / scheduler / "steps.jsonl")
    assert [r["step"] for r in rows] == list(range(1, 9))
    return [r["lr"] for r in rows]


def test_learning_rate_schedules_and_warm_up(tmp_path, tiny_llama):
    total, warm = 8, 2  # warmup_ratio 0.25 of 8 steps
    linear = [BASE_LR * k / warm if k < warm else BASE_LR * (total - k) / (total - warm) for k in range(1, 9)]
    assert lrs(tmp_path, tiny_llama, "linear", 0.25) == pytest.approx(linear, rel=1e-6, abs=1e-12)
    cosine = [BASE_LR * k / warm if k < warm else
              BASE_LR * 0.5 * (1 + math.cos(math.pi * (k - warm) / (total - warm))) for k in range(1, 9)]
    assert lrs(tmp_path, tiny_llama, "cosine", 0.25) == pytest.approx(cosine, rel=1e-6, abs=1e-12)
    assert lrs(tmp_path, tiny_llama, "constant", 0.25) == pytest.approx([BASE_LR] * 8)


def test_gradient_accumulation_equals_one_big_batch(tmp_path, tiny_llama):
    common = ("train.epochs=1", "train.group_by_length=false", "eval.validation_samples=1", "eval.test_samples=1",
              "eval.max_new_tokens=1")
    big = cfg_for(tmp_path, tiny_llama, *common, "train.batch_size=8")
    small = cfg_for(tmp_path, tiny_llama, *common, "train.batch_size=4", "train.gradient_accumulation_steps=2")
    a = run_trial(spec(big, "lora", tmp_path / "big"))["rows"]
    b = run_trial(spec(small, "lora", tmp_path / "accumulated"))["rows"]
    steps_a, steps_b = read_jsonl(tmp_path / "big" / "steps.jsonl"), read_jsonl(tmp_path / "accumulated" / "steps.jsonl")
    assert [r["step"] for r in steps_b] == [r["step"] for r in steps_a] == [1, 2, 3, 4]
    assert [r["loss"] for r in steps_b] == pytest.approx([r["loss"] for r in steps_a], rel=1e-4)
    assert b[0]["eval_loss"] == pytest.approx(a[0]["eval_loss"], rel=1e-4)


def test_gradients_are_clipped_to_max_grad_norm_every_step(tmp_path, tiny_llama, monkeypatch):
    calls = []
    clip = torch.nn.utils.clip_grad_norm_

    def spy(parameters, max_norm, *args, **kwargs):
        parameters = list(parameters)
        calls.append((max_norm, len(parameters)))
        norm = clip(parameters, max_norm, *args, **kwargs)
        after = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(p.grad) for p in parameters]))
        assert float(after) <= max_norm * (1 + 1e-4)
        return norm

    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", spy)
    cfg = cfg_for(tmp_path, tiny_llama, "train.epochs=1", "train.max_grad_norm=0.01", "eval.validation_samples=1",
                  "eval.test_samples=1", "eval.max_new_tokens=1")
    run_trial(spec(cfg, "lora", tmp_path / "clip"))
    assert len(calls) == 4 and {c[0] for c in calls} == {0.01}  # one call per optimizer step
    assert all(c[1] > 0 for c in calls)
