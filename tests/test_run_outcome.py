"""What a run plans and how it ends, without training: --no-baseline, exit code 1 when no trained trial
finished, and Optuna with --scheduler asha and --metric eval_loss (lower is better)."""

from __future__ import annotations

import pandas as pd
import pytest

from harness import driver
from harness.config import load_config
from harness.errors import BenchError
from harness.leaderboard import Board


def cfg(*overrides: str):
    return load_config(None, list(overrides))


def board(*rows: tuple[str, str]) -> Board:
    frame = pd.DataFrame([{"trial": f"t{i}", "technique": t, "status": s, "error": "boom" if s == "failed" else ""}
                          for i, (t, s) in enumerate(rows)])
    return Board(frame, pd.DataFrame(), "chrf", [])


def test_no_baseline_plans_no_baseline_trial():
    assert [e.techniques for e in driver.plan(cfg("run.techniques=lora"))] == [["base", "lora"]]
    assert [e.techniques for e in driver.plan(cfg("run.techniques=lora", "run.baseline=false"))] == [["lora"]]
    searched = driver.plan(cfg("run.techniques=lora", "run.search=optuna", "run.baseline=false"))
    assert [(e.techniques, e.search) for e in searched] == [(["lora"], True)]
    with pytest.raises(BenchError, match="nothing to run"):
        driver.plan(cfg("run.techniques=[]", "run.baseline=false"))


@pytest.mark.parametrize("rows,baseline,code", [
    ([("base", "ok"), ("lora", "ok"), ("qlora", "failed")], True, 0),   # one trained trial is enough
    ([("base", "ok"), ("lora", "failed"), ("qlora", "diverged")], True, 1),  # no trained trial finished
    ([("base", "failed"), ("lora", "ok")], True, 1),  # the baseline was asked for and failed
    ([("lora", "ok")], False, 0),  # --no-baseline
    ([("lora", "stopped")], False, 0),  # stopped early by the scheduler still counts
    ([("lora", "failed")], False, 1),
])
def test_exit_code(rows, baseline, code, capsys):
    config = cfg("run.techniques=lora,qlora", f"run.baseline={str(baseline).lower()}")
    assert driver.exit_code(board(*rows), config) == code
    out = capsys.readouterr().out
    for i, (_, status) in enumerate(rows):
        assert (f"trial t{i} {status}" in out) is (status not in ("ok", "stopped"))


def test_optuna_with_asha_minimises_eval_loss(ray_local, tmp_path):
    from ray.tune.schedulers import ASHAScheduler
    from ray.tune.search.optuna import OptunaSearch

    config = cfg("run.techniques=lora", "run.search=optuna", "run.scheduler=asha", "run.metric=eval_loss",
                 "train.epochs=3")
    experiment = driver.plan(config)[-1]
    _, tuner = driver.build_tuner(experiment, config, tmp_path, "cpu", 2, 0)
    tune_config = tuner._local_tuner._tune_config
    assert isinstance(tune_config.scheduler, ASHAScheduler) and isinstance(tune_config.search_alg, OptunaSearch)
    assert (tune_config.metric, tune_config.mode) == ("eval_loss", "min")
    assert tune_config.scheduler._max_t == 3
    # The search objective is the model-selection signal (eval.selection), whatever metric ranks the board.
    plain = cfg("run.techniques=lora", "run.search=optuna", "run.metric=chrf")
    tune_config = driver.build_tuner(driver.plan(plain)[-1], plain, tmp_path, "cpu", 2, 0)[1]._local_tuner._tune_config
    assert tune_config.scheduler is None and (tune_config.metric, tune_config.mode) == ("eval_loss", "min")
    by_chrf = cfg("run.techniques=lora", "run.search=optuna", "eval.selection=chrf", "eval.validation_samples=100")
    tune_config = driver.build_tuner(driver.plan(by_chrf)[-1], by_chrf, tmp_path, "cpu", 2, 0)[1]._local_tuner._tune_config
    assert (tune_config.metric, tune_config.mode) == ("chrf", "max")


def test_ctrl_c_exits_130_and_says_how_to_resume(monkeypatch, capsys):
    from harness import cli

    def interrupted(cfg, resume_dir=None):
        raise KeyboardInterrupt

    monkeypatch.setattr(driver, "run", interrupted)  # the CLI around the driver; the driver's own Ctrl-C is Ray's
    assert cli.main(["--techniques", "lora"]) == 130
    assert "interrupted; finished trials are kept. Resume with --resume RUN_DIR." in capsys.readouterr().err
