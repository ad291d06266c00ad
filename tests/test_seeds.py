"""`--seeds N` on a tiny model under a real local Ray: one trial folder per seed, one board row per
configuration (mean ± sd over seeds), the seed mean as the trial's last result (the search objective), and
kill -9 + --resume with seeds reaching the same board."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from harness.io import read_json, read_jsonl

ROOT = Path(__file__).resolve().parent.parent
ARGS = ["--techniques", "lora", "--seeds", "2", "--max-concurrent", "1"]


def _cli(args: list[str], **kwargs) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, str(ROOT / "run_benchmark.py"), *args], cwd=ROOT, env=dict(os.environ),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **kwargs)


def _folders(run_dir: Path, technique: str) -> list[Path]:
    return sorted(run_dir.glob(f"trials/*--{technique}--*"))


@pytest.fixture(scope="module")
def workdir(tmp_path_factory, tiny_llama) -> Path:
    """A small config (2 epochs of 2 steps) and a results folder shared by this module's runs."""
    import yaml

    root = tmp_path_factory.mktemp("seeds")
    config = {
        "model": {"name": str(tiny_llama), "cache_dir": str(root / "cache")},
        "data": {"max_train_samples": 16, "max_validation_samples": 6},
        "train": {"batch_size": 8, "epochs": 2, "log_steps": 2},
        # no translation after each epoch: the best epoch is chosen on eval loss (the default selection)
        "eval": {"validation_samples": 0, "test_samples": 6, "max_new_tokens": 12},
        "run": {"results_dir": str(root / "results")},
    }
    (root / "seeds.yaml").write_text(yaml.safe_dump(config), encoding="utf-8")
    return root


@pytest.fixture(scope="module")
def reference(workdir) -> Path:
    proc = _cli(["--config", str(workdir / "seeds.yaml"), *ARGS, "--name", "reference"])
    out, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, out
    return workdir / "results" / "reference"


def test_two_seeds_give_two_trials_and_one_mean_row(reference):
    lora = _folders(reference, "lora")
    assert len(lora) == 2 and len(_folders(reference, "base")) == 1  # the baseline trains nothing: one seed
    trials = [read_json(f / "trial.json") for f in lora]
    assert sorted(t["seed"] for t in trials) == [42, 43] and len({t["config_id"] for t in trials}) == 1
    assert all(read_json(f / "config.json")["config"]["train"]["seed"] == t["seed"] for f, t in zip(lora, trials))
    rows = [read_jsonl(f / "metrics.jsonl") for f in lora]
    assert rows[0] != rows[1]  # different data order, init and dropout: different training
    board = json.loads((reference / "leaderboard.json").read_text())
    row = next(r for r in board if r["technique"] == "lora")
    per_seed = [read_json(f / "test_metrics.json")["chrf"] for f in lora]
    assert row["seeds"] == 2 and row["chrf_mean"] == pytest.approx(sum(per_seed) / 2)
    assert row["chrf_std"] == pytest.approx(abs(per_seed[0] - per_seed[1]) / 2 ** 0.5)
    assert row["chrf_low"] <= row["chrf_high"] and row["rank_label"] in ("1", "1=", "2")
    assert len(json.loads((reference / "leaderboard_seeds.json").read_text())) == 3
    text = (reference / "leaderboard.md").read_text()
    assert "chrF seeds" in text and "per seed:" in text
    # the trial's last result, what Optuna would optimise: the mean of the seeds' best-epoch eval loss
    ray_dir = Path(trials[0]["ray_trial_dir"])
    last = [json.loads(line) for line in (ray_dir / "result.json").read_text().splitlines()][-1]
    best = [next(r["eval_loss"] for r in rs if r["epoch"] == read_json(f / "status.json")["best_epoch"])
            for f, rs in zip(lora, rows)]
    assert last["seeds"] == 2 and last["eval_loss"] == pytest.approx(sum(best) / 2)


def test_kill_9_and_resume_with_seeds_reaches_the_same_board(reference, workdir):
    victim = _cli(["--config", str(workdir / "seeds.yaml"), *ARGS, "--name", "victim"], start_new_session=True)
    run_dir = workdir / "results" / "victim"

    def second_seed_mid_training() -> bool:
        done = [f for f in _folders(run_dir, "lora") if (f / "status.json").is_file()
                and read_json(f / "status.json")["status"] == "ok"]
        running = [f for f in _folders(run_dir, "lora") if f not in done and (f / "metrics.jsonl").is_file()]
        return len(done) == 1 and bool(running) and len(read_jsonl(running[0] / "metrics.jsonl")) >= 1

    end = time.time() + 400
    while not second_seed_mid_training():
        assert victim.poll() is None, "the run ended before it could be killed:\n" + victim.stdout.read()
        assert time.time() < end, "timed out waiting for the second seed"
        time.sleep(0.1)
    first_seed = next(f for f in _folders(run_dir, "lora") if read_json(f / "status.json")["status"] == "ok")
    stamp = (first_seed / "metrics.jsonl").stat().st_mtime_ns
    os.killpg(victim.pid, signal.SIGKILL)
    victim.wait(timeout=30)

    resumed = _cli(["--resume", str(run_dir)])
    out, _ = resumed.communicate(timeout=600)
    assert resumed.returncode == 0, out
    assert (first_seed / "metrics.jsonl").stat().st_mtime_ns == stamp  # the finished seed was not trained again
    assert len(_folders(run_dir, "lora")) == 2
    want = json.loads((reference / "leaderboard.json").read_text())
    got = json.loads((run_dir / "leaderboard.json").read_text())
    keys = ["technique", "seeds", "rank_label", "eval_loss", "chrf", "chrf_low", "chrf_high", "chrf_mean",
            "chrf_std", "bleu", "p_vs_first", "p_vs_baseline"]
    assert [{k: r[k] for k in keys} for r in got] == [
        {k: pytest.approx(r[k], rel=1e-4, abs=1e-6) if isinstance(r[k], float) else r[k] for k in keys}
        for r in want]
