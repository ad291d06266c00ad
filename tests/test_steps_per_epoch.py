"""train.steps_per_epoch: an epoch of N optimizer steps (evaluated, checkpointed and selectable after each), the
training data read on across epochs, every pair once per full pass, the same batches after a resume."""

from __future__ import annotations

import numpy as np
import pytest

from harness.config import load_config
from harness.data import Encoded
from harness.errors import BenchError
from harness.io import read_jsonl
from harness.training import epoch_groups, pass_groups, run_trial
from test_training import cfg_for, spec


def encoded(pairs: int) -> Encoded:
    rng = np.random.default_rng(0)
    return Encoded([np.arange(int(n)) for n in rng.integers(4, 30, pairs)], np.full(pairs, 2))


def train_cfg(*extra: str):
    return load_config(None, ["train.batch_size=8", *extra]).train


def test_without_it_an_epoch_is_one_full_pass():
    data, cfg = encoded(32), train_cfg()
    assert epoch_groups(data, cfg, 2, done=4) == pass_groups(data, cfg, 2)
    assert len(pass_groups(data, cfg, 1)) == 4


def test_epochs_of_n_steps_read_the_passes_on_in_order():
    data, cfg = encoded(32), train_cfg("train.steps_per_epoch=3")  # 4 steps a pass
    flat = [g for epoch in range(1, 5) for g in epoch_groups(data, cfg, epoch, done=3 * (epoch - 1))]
    passes = [g for p in (1, 2, 3) for g in pass_groups(data, cfg, p)]
    assert flat == passes  # 12 steps = exactly three reshuffled full passes, in order
    for p in range(3):  # every pair once per pass
        seen = sorted(i for group in flat[4 * p: 4 * p + 4] for batch in group for i in batch)
        assert seen == list(range(32))
    assert pass_groups(data, cfg, 1) != pass_groups(data, cfg, 2)


def test_steps_per_epoch_must_be_positive():
    with pytest.raises(BenchError, match=r"train.steps_per_epoch.*0.*>= 1"):
        load_config(None, ["train.steps_per_epoch=0"])


def test_a_trial_evaluates_every_n_steps_on_continuing_data(tmp_path, tiny_llama):
    common = ("train.lr_scheduler=constant", "train.warmup_ratio=0", "eval.validation_samples=0",
              "eval.test_samples=1", "eval.max_new_tokens=1")  # 32 pairs, batch 8: 4 steps a pass
    short = cfg_for(tmp_path, tiny_llama, *common, "train.steps_per_epoch=3", "train.epochs=3")
    rows = run_trial(spec(short, "lora", tmp_path / "short"))["rows"]
    assert [(r["epoch"], r["step"]) for r in rows] == [(1, 3), (2, 6), (3, 9)]
    full = cfg_for(tmp_path, tiny_llama, *common, "train.epochs=3")  # 3 full passes: 12 steps
    run_trial(spec(full, "lora", tmp_path / "full"))
    a = read_jsonl(tmp_path / "short" / "steps.jsonl")
    b = read_jsonl(tmp_path / "full" / "steps.jsonl")
    assert [r["step"] for r in a] == list(range(1, 10))
    # A constant learning rate: the same batches in the same order give the same losses, across the pass boundary.
    assert [r["loss"] for r in a] == pytest.approx([r["loss"] for r in b[:9]], rel=1e-5)


def test_resume_after_an_epoch_of_n_steps_continues_the_same_batches(tmp_path, tiny_llama):
    cfg = cfg_for(tmp_path, tiny_llama, "train.steps_per_epoch=3", "train.epochs=3", "eval.validation_samples=0",
                  "eval.test_samples=1", "eval.max_new_tokens=1")
    whole = run_trial(spec(cfg, "lora", tmp_path / "whole"))["rows"]

    def stop_after_epoch_2(row, checkpoint_dir):
        if row["epoch"] == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_trial(spec(cfg, "lora", tmp_path / "cut"), stop_after_epoch_2)
    resumed = run_trial(spec(cfg, "lora", tmp_path / "cut"), resume_from=tmp_path / "cut" / "checkpoint")["rows"]
    assert [r["step"] for r in resumed] == [3, 6, 9]
    assert resumed[-1]["eval_loss"] == pytest.approx(whole[-1]["eval_loss"], rel=1e-5)
    steps = read_jsonl(tmp_path / "cut" / "steps.jsonl")
    assert [r["loss"] for r in steps] == pytest.approx([r["loss"] for r in read_jsonl(tmp_path / "whole" /
                                                                                        "steps.jsonl")], rel=1e-5)
