"""Ranking, the best adapter across runs and the leaderboard CLI, on hand-built run folders (no training):
the order itself (failed and diverged trials last, BLEU/chrF descending, eval loss ascending), results/best.json
over several runs, every CLI option, and the hardware line under the board."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from harness import leaderboard
from harness.io import read_json

HARDWARE = {"cpu": "Intel(R) Xeon(R) Platinum 8480+", "cpu_flags": ["avx512f", "avx512_bf16", "amx_bf16"],
            "cpu_native_bf16": True, "cores": 2,
            "gpu": {"name": "NVIDIA H100 80GB HBM3", "count": 1, "driver": "550.54.15", "cuda": "12.4"}}


def _write(path: Path, data) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data), encoding="utf-8")


def make_run(root: Path, name: str, trials: dict[str, dict], metric: str = "chrf", hardware=None) -> Path:
    """trials: name -> {status, chrf, bleu, eval_loss, adapter (bool), technique, model, sha}."""
    run = root / name
    _write(run / "run.json", {"config": {"run": {"metric": metric}}, **({"hardware": hardware} if hardware else {})})
    for trial, spec in trials.items():
        folder = run / "trials" / trial
        _write(folder / "config.json", {"technique": spec.get("technique", "lora"), "label": trial,
                                        "model": spec.get("model", "m"),
                                        "data": {"dataset": "embedded", "sha256": spec.get("sha", "abc")}})
        _write(folder / "status.json", {"status": spec.get("status", "ok"), "best_epoch": 1, "epochs_done": 1})
        if spec.get("eval_loss") is not None:
            (folder / "metrics.jsonl").write_text(json.dumps({"epoch": 1, "eval_loss": spec["eval_loss"]}) + "\n")
        if spec.get("chrf") is not None:
            _write(folder / "test_metrics.json", {"epoch": 1, "chrf": spec["chrf"], "bleu": spec.get("bleu"),
                                                  "test_size": 4, "test_set": "embedded test",
                                                  "signatures": {"chrf": "nrefs:1|sig"}})
        if spec.get("adapter", True):
            _write(folder / "adapter" / "adapter_config.json", {})
    return run


MIXED = {
    "low": {"chrf": 20.0, "bleu": 9.0, "eval_loss": 2.0},
    "high": {"chrf": 30.0, "bleu": 3.0, "eval_loss": 2.5},
    "mid": {"chrf": 25.0, "bleu": 6.0, "eval_loss": 1.5},
    "diverged": {"status": "diverged", "chrf": 90.0, "bleu": 90.0, "eval_loss": 0.1},
    "failed": {"status": "failed", "adapter": False},
    "untested": {"eval_loss": 3.0},  # finished epochs, no test score yet
}


def order(board: leaderboard.Board) -> list[str]:
    return list(board.frame["trial"])


def test_rows_rank_by_status_then_metric_in_its_direction(tmp_path):
    run = make_run(tmp_path, "r", MIXED)
    board = leaderboard.build([run])
    assert order(board) == ["high", "mid", "low", "untested", "diverged", "failed"]
    assert list(board.frame["rank"]) == [1, 2, 3, 4, 5, 6]
    assert order(leaderboard.build([run], "bleu")) == ["low", "mid", "high", "untested", "diverged", "failed"]
    # eval loss: lower is better
    by_loss = leaderboard.build([run], "eval_loss")
    assert order(by_loss) == ["mid", "low", "high", "untested", "diverged", "failed"]
    assert by_loss.footer[0] == "ranked by validation eval loss"
    # the run's own metric is the default
    loss_run = make_run(tmp_path, "l", MIXED, metric="eval_loss")
    assert order(leaderboard.build([loss_run]))[:3] == ["mid", "low", "high"]


def test_best_json_keeps_the_best_adapter_across_runs(tmp_path):
    results = tmp_path / "results"
    first = make_run(results, "first", {"a": {"chrf": 30.0, "eval_loss": 2.0},
                                        "base": {"technique": "base", "chrf": 10.0, "adapter": False},
                                        "bad": {"status": "diverged", "chrf": 80.0, "eval_loss": 0.5}})
    best = leaderboard.update_best(leaderboard.build([first]), results)
    assert best["overall"]["trial"] == "a" and best["overall"]["value"] == 30.0 and best["overall"]["run"] == "first"
    worse = make_run(results, "worse", {"b": {"chrf": 25.0, "eval_loss": 1.0}})
    leaderboard.update_best(leaderboard.build([worse]), results)
    assert read_json(results / "best.json")["overall"]["run"] == "first"  # a worse run does not replace it
    better = make_run(results, "better", {"c": {"chrf": 35.0, "eval_loss": 3.0}})
    leaderboard.update_best(leaderboard.build([better]), results)
    assert read_json(results / "best.json")["overall"]["trial"] == "c"
    # an adapter that was deleted is no longer the best
    import shutil

    shutil.rmtree(better / "trials" / "c" / "adapter")
    leaderboard.update_best(leaderboard.build([worse]), results)
    assert read_json(results / "best.json")["overall"]["trial"] == "b"


def test_best_json_entries_per_model_and_dataset_and_overall(tmp_path):
    results = tmp_path / "results"
    run = make_run(results, "r", {
        "untested": {"chrf": None, "eval_loss": 1.0},  # an adapter without a test score: skipped, not the end
        "small": {"model": "small", "chrf": 20.0, "bleu": 4.0, "eval_loss": 2.0},
        "big": {"model": "big", "chrf": 31.5, "bleu": 8.25, "eval_loss": 1.75, "technique": "qlora"},
        "other-data": {"model": "big", "sha": "def", "chrf": 12.0, "eval_loss": 3.0},
        "stopped": {"model": "small", "status": "stopped", "chrf": 22.0, "eval_loss": 2.5},
    })
    best = leaderboard.update_best(leaderboard.build([run]), results)
    assert sorted(best["by_model_dataset"]) == ["big|embedded|abc", "big|embedded|def", "small|embedded|abc"]
    assert best["by_model_dataset"]["small|embedded|abc"]["trial"] == "stopped"  # a stopped trial counts
    entry = dict(best["overall"])
    assert isinstance(entry.pop("updated"), float)
    assert entry == {"metric": "chrf", "value": 31.5, "model": "big", "technique": "qlora", "params": "big",
                     "adapter": str((run / "trials" / "big" / "adapter").resolve()), "run": "r", "trial": "big",
                     "bleu": 8.25, "chrf": 31.5, "eval_loss": 1.75, "dataset": "embedded", "dataset_sha256": "abc",
                     "test_size": 4.0, "seeds": 1.0, "rank": "1", "runner_up": "lora small",
                     # no predictions.tsv in these hand-built trials: nothing to test the difference on
                     "p_vs_runner_up": None, "significance_level": 0.05, "significant_vs_runner_up": None}
    assert read_json(results / "best.json") == best
    # an equal score later does not take the place of the earlier adapter
    tie = make_run(results, "tie", {"big2": {"model": "big", "chrf": 31.5, "eval_loss": 1.0}})
    assert leaderboard.update_best(leaderboard.build([tie]), results)["overall"]["trial"] == "big"


def test_best_json_by_eval_loss_prefers_the_lower_loss(tmp_path):
    results = tmp_path / "results"
    run = make_run(results, "r", {"a": {"chrf": 30.0, "eval_loss": 2.0}, "b": {"chrf": 20.0, "eval_loss": 1.2}},
                   metric="eval_loss")
    best = leaderboard.update_best(leaderboard.build([run]), results)
    assert best["overall"]["trial"] == "b" and best["overall"]["metric"] == "eval_loss"
    later = make_run(results, "later", {"c": {"chrf": 50.0, "eval_loss": 1.5}}, metric="eval_loss")
    assert leaderboard.update_best(leaderboard.build([later]), results)["overall"]["trial"] == "b"


def test_the_board_names_the_hardware_under_the_signature(tmp_path):
    run = make_run(tmp_path, "r", MIXED, hardware=HARDWARE)
    text = leaderboard.build([run]).render()
    lines = text.splitlines()
    signature = next(i for i, line in enumerate(lines) if "nrefs:1|sig" in line)
    assert lines[signature + 1] == ("hardware: Intel(R) Xeon(R) Platinum 8480+ (avx512f avx512_bf16 amx_bf16), "
                                    "2 cores; GPU NVIDIA H100 80GB HBM3 x1, driver 550.54.15, CUDA 12.4")


def test_leaderboard_cli_options(tmp_path, capsys):
    results = tmp_path / "results"
    old = make_run(results, "old", {"old-a": {"chrf": 50.0, "eval_loss": 1.0}})
    new = make_run(results, "new", MIXED)
    os.utime(old / "run.json", (1, 1))  # 'old' is the earlier run

    def cli(*args: str) -> tuple[int, str, str]:
        code = leaderboard.main(["--results-dir", str(results), *args])
        captured = capsys.readouterr()
        return code, captured.out, captured.err

    code, out, _ = cli("--latest")
    assert code == 0 and f"runs: {new}" in out and "old-a" not in out and "high" in out
    code, out, _ = cli("--all-runs")
    assert code == 0 and "old-a" in out and "high" in out
    code, out, _ = cli(str(new), "--metric", "bleu", "--format", "github")
    table = [line for line in out.splitlines() if line.startswith("|") and "lora" in line]
    assert code == 0 and table[0].split("|")[1].strip() == "1" and "| low" in table[0]
    assert "ranked by test bleu" in out
    code, out, _ = cli(str(new), "--epochs")
    assert code == 0 and "train loss" in out and "val chrF" in out
    code, out, err = cli(str(new), "--model", "other")
    assert code == 2 and "--model: no rows for 'other'; models here: m." in err
    code, _, err = cli(str(tmp_path / "nowhere"))
    assert code == 2 and "is not a run folder (no run.json). Runs here: " in err
    code, _, err = cli("--results-dir", str(tmp_path / "empty"))
    assert code == 2 and "no runs under" in err


@pytest.mark.parametrize("metric,expected", [("chrf", True), ("eval_loss", False)])
def test_better_follows_the_metric_direction(metric, expected):
    assert leaderboard._better(2.0, 1.0, metric) is expected
    assert leaderboard._better(None, 1.0, metric) is False and leaderboard._better(1.0, None, metric) is True
    assert leaderboard._better(float("nan"), 1.0, metric) is False
    assert leaderboard._better(1.0, 1.0, metric) is False  # a tie keeps the current best


def test_defaults_and_an_empty_run(tmp_path):
    results = tmp_path / "results"
    plain = results / "plain"
    _write(plain / "run.json", {})  # an old run.json without the metric: chrF ranks
    make_run(results, "tmp", MIXED)
    (results / "tmp" / "trials").rename(plain / "trials")
    board = leaderboard.build([plain])
    assert board.metric == "chrf" and order(board)[:3] == ["high", "mid", "low"]
    assert "index" not in board.frame.columns and "index" not in board.epochs.columns
    assert list(board.epochs["trial"]) == sorted(board.epochs["trial"])  # every technique is lora here
    empty = results / "empty"
    _write(empty / "run.json", {"config": {"run": {"metric": "bleu"}}})
    (empty / "trials").mkdir()
    board = leaderboard.build([empty])
    assert board.metric == "bleu" and board.footer == ["(no trials yet)"] and board.epochs.empty
    assert {"rank", "trial", "error", "adapter"} <= set(board.frame.columns) and board.frame.empty
    assert leaderboard.update_best(board, results)["overall"] is None
    assert leaderboard.build([]).metric == "chrf"


def test_epoch_rows_are_ordered_by_technique_then_trial_then_epoch(tmp_path):
    run = make_run(tmp_path, "r", {"a-trial": {"chrf": 1.0, "eval_loss": 1.0, "technique": "soft_prompting"},
                                   "b-trial": {"chrf": 2.0, "eval_loss": 1.0, "technique": "lora"}})
    assert list(leaderboard.build([run]).epochs["trial"]) == ["b-trial", "a-trial"]


def test_trials_without_an_adapter_are_never_the_best(tmp_path):
    results = tmp_path / "results"
    run = make_run(results, "r", {"base": {"technique": "base", "chrf": 50.0, "adapter": False},
                                  "lora": {"chrf": 10.0, "eval_loss": 1.0}})
    assert leaderboard.update_best(leaderboard.build([run]), results)["overall"]["trial"] == "lora"
    later = make_run(results, "later", {"third": {"model": "third", "chrf": 12.0, "eval_loss": 1.0},
                                        "fourth": {"model": "fourth", "chrf": 11.0, "eval_loss": 1.0}})
    best = leaderboard.update_best(leaderboard.build([later]), results)
    assert best["overall"]["trial"] == "third" and len(best["by_model_dataset"]) == 3
