"""The train loop: stop conditions, divergence guard, exact resume, baseline, failure recording."""

from __future__ import annotations

import math

import pytest
import torch

from harness.config import load_config
from harness.io import read_json, read_jsonl
from harness.training import TrialSpec, is_diverged, mark_failed, resolve_hyperparameters, run_trial
from techniques import registry
from techniques.lora import LoRA


def cfg_for(tmp_path, model_dir, *extra):
    return load_config(None, [
        f"model.name={model_dir}", f"model.cache_dir={tmp_path / 'cache'}", "data.max_train_samples=32",
        "data.max_validation_samples=8", "train.batch_size=8", "train.epochs=3", "eval.validation_samples=4",
        "eval.test_samples=4", "eval.max_new_tokens=8", "train.log_steps=1", *extra,
    ])


def spec(cfg, name, folder):
    tech = registry.get(name)
    return TrialSpec(name, name, resolve_hyperparameters(tech, cfg), cfg, folder, "cpu", 1)


def test_baseline_is_recorded_like_a_trial(tmp_path, tiny_llama):
    cfg = cfg_for(tmp_path, tiny_llama)
    result = run_trial(spec(cfg, "base", tmp_path / "base"))
    rows = read_jsonl(tmp_path / "base" / "metrics.jsonl")
    assert result["status"] == "ok" and [r["epoch"] for r in rows] == [0]
    test = read_json(tmp_path / "base" / "test_metrics.json")
    assert test["test_size"] == 4 and "nrefs:1" in test["signatures"]["chrf"]
    assert read_json(tmp_path / "base" / "config.json")["trainable_params"] == 0
    assert not (tmp_path / "base" / "adapter").exists()


def test_max_steps_and_time_budget_stop_training(tmp_path, tiny_llama):
    cfg = cfg_for(tmp_path, tiny_llama, "train.max_steps=3")
    run_trial(spec(cfg, "lora", tmp_path / "steps"))
    rows = read_jsonl(tmp_path / "steps" / "metrics.jsonl")
    assert [r["step"] for r in rows] == [3] and read_json(tmp_path / "steps" / "status.json")["stop_reason"] == "max_steps"
    cfg = cfg_for(tmp_path, tiny_llama, "train.time_budget_s=0.001")
    run_trial(spec(cfg, "lora", tmp_path / "budget"))
    rows = read_jsonl(tmp_path / "budget" / "metrics.jsonl")
    assert [r["step"] for r in rows] == [1]
    assert read_json(tmp_path / "budget" / "status.json")["stop_reason"] == "time_budget"


def test_steps_are_logged_and_snapshots_saved(tmp_path, tiny_llama):
    cfg = cfg_for(tmp_path, tiny_llama, "train.epochs=1", "train.save_steps=2")
    run_trial(spec(cfg, "lora", tmp_path / "t"))
    steps = read_jsonl(tmp_path / "t" / "steps.jsonl")
    assert [s["step"] for s in steps] == [1, 2, 3, 4]
    assert all(s["loss"] > 0 and s["tokens_per_s"] > 0 for s in steps)
    assert (tmp_path / "t" / "snapshot" / "adapter_model.safetensors").is_file()


class NanAfter(LoRA):
    """LoRA whose outputs turn NaN after a number of training forward passes (a divergence)."""

    name = "nan_after"
    description = "test: diverges in its second epoch"

    def after_wrap(self, model, hp, tokenizer):
        calls = {"n": 0}

        def hook(module, args, output):
            if module.training:
                calls["n"] += 1
                if calls["n"] > 4:  # 4 steps per epoch here: epoch 2 goes NaN
                    output.last_hidden_state = output.last_hidden_state * float("nan")
            return output

        model.get_base_model().get_decoder().register_forward_hook(hook)


def test_nan_loss_marks_diverged_and_keeps_earlier_epochs(tmp_path, tiny_llama):
    registry.register(NanAfter())
    try:
        cfg = cfg_for(tmp_path, tiny_llama)
        result = run_trial(spec(cfg, "nan_after", tmp_path / "nan"))
    finally:
        registry.reload()
    status = read_json(tmp_path / "nan" / "status.json")
    assert result["status"] == "diverged" and status["status"] == "diverged"
    assert status["diverged_at_epoch"] == 2 and status["epochs_done"] == 1
    assert "non-finite training loss at step 5" in status["error"]
    assert [r["epoch"] for r in read_jsonl(tmp_path / "nan" / "metrics.jsonl")] == [1]
    assert read_json(tmp_path / "nan" / "test_metrics.json")["epoch"] == 1  # tested with the healthy adapter


def test_eval_loss_explosion_rule():
    assert not is_diverged({"eval_loss": 3.6, "train_loss": 3.0}, [], 1.5)
    assert is_diverged({"eval_loss": 6.3, "train_loss": 4.8}, [{"eval_loss": 3.6}], 1.5)  # ppl 557 after 36
    assert not is_diverged({"eval_loss": 4.0, "train_loss": 3.9}, [{"eval_loss": 3.6}], 1.5)
    assert is_diverged({"eval_loss": math.nan, "train_loss": 1.0}, [], 1.5)
    assert is_diverged({"eval_loss": 1.0, "train_loss": math.inf}, [], 1.5)


class Interrupt(Exception):
    pass


@pytest.mark.parametrize("name", ["lora", "prefix_tuning"])
def test_resume_from_an_epoch_checkpoint_reproduces_the_uninterrupted_trial(tmp_path, tiny_llama, name):
    """Killed after epoch 1 (and, for LoRA, after epoch 2 too), the resumed trial trains only the epochs that
    were not done and ends with the uninterrupted trial's rows, test scores and translations."""
    cfg = cfg_for(tmp_path, tiny_llama, "peft.dropout=0.1")  # dropout: the RNG state must be restored too
    reference = run_trial(spec(cfg, name, tmp_path / "ref"))["rows"]
    ref_steps = read_jsonl(tmp_path / "ref" / "steps.jsonl")
    for kill_at in ((1, 2) if name == "lora" else (1,)):
        cut = tmp_path / f"cut{kill_at}"

        def kill(row, checkpoint, at=kill_at):
            if row["epoch"] == at:
                raise Interrupt

        with pytest.raises(Interrupt):
            run_trial(spec(cfg, name, cut), kill)
        assert read_json(cut / "status.json")["status"] == "running"
        reported = []
        resumed = run_trial(spec(cfg, name, cut), lambda row, checkpoint: reported.append(row["epoch"]),
                            resume_from=cut / "checkpoint")["rows"]
        assert reported == list(range(kill_at + 1, 4))  # finished epochs are not trained again
        assert [r["epoch"] for r in resumed] == [1, 2, 3]
        for ref, got in zip(reference, resumed):
            for key in ("train_loss", "eval_loss", "chrf", "bleu", "step"):
                assert got[key] == pytest.approx(ref[key], rel=1e-4, abs=1e-6), (key, ref["epoch"], kill_at)
        steps = read_jsonl(cut / "steps.jsonl")
        assert [r["step"] for r in steps] == [r["step"] for r in ref_steps]  # no step twice, none missing
        assert [r["loss"] for r in steps] == pytest.approx([r["loss"] for r in ref_steps], rel=1e-4)
        want, got = read_json(tmp_path / "ref" / "test_metrics.json"), read_json(cut / "test_metrics.json")
        for key in ("bleu", "chrf", "chrf_pp", "epoch"):
            assert got[key] == pytest.approx(want[key]), (key, kill_at)
        assert (cut / "predictions.tsv").read_text() == (tmp_path / "ref" / "predictions.tsv").read_text()


def test_mark_failed_records_the_error(tmp_path):
    folder = tmp_path / "t"
    folder.mkdir()
    try:
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
    except Exception as exc:  # noqa: BLE001
        mark_failed(folder, exc)
    status = read_json(folder / "status.json")
    assert status["status"] == "failed" and "OutOfMemoryError: CUDA out of memory" in status["error"]
    assert "Traceback" in status["traceback"]


def test_optimizer_is_fused_adamw_over_trainable_parameters_only():
    from harness.training import build_optimizer

    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Linear(4, 2))
    model[0].requires_grad_(False)
    optimizer = build_optimizer(model, 1e-3, 0.01)
    assert isinstance(optimizer, torch.optim.AdamW) and optimizer.defaults["fused"] is True
    assert [p for group in optimizer.param_groups for p in group["params"]] == list(model[1].parameters())
