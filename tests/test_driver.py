"""The Ray Tune driver on a real local Ray: the technique grid, Optuna search, plugins from the entry-point
group, fault isolation, and kill -9 + --resume reaching the same leaderboard."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import fault_plugins
from harness.cli import main
from harness.io import read_json, read_jsonl

ROOT = Path(__file__).resolve().parent.parent


def run_dir_from(output: str) -> Path:
    line = next(line for line in output.splitlines() if line.startswith("run folder: "))
    return Path(line.removeprefix("run folder: ").strip())


def trials(run_dir: Path) -> dict[str, dict]:
    out = {}
    for folder in sorted((run_dir / "trials").iterdir()):
        out[folder.name] = {
            "trial": read_json(folder / "trial.json"),
            "status": read_json(folder / "status.json"),
            "rows": read_jsonl(folder / "metrics.jsonl"),
            "folder": folder,
        }
    return out


def test_techniques_original_runs_baseline_and_its_four_techniques(ray_local, tiny_yaml, capsys):
    config = tiny_yaml()  # 'all' is every registered technique: tests/test_methods.py covers each one
    code = main(["--config", str(config), "--techniques", "original", "--name", "grid"])
    out = capsys.readouterr().out
    assert code == 0
    run_dir = run_dir_from(out)
    found = trials(run_dir)
    techniques = sorted(t["trial"]["technique"] for t in found.values())
    assert techniques == ["base", "lora", "prefix_tuning", "qlora", "soft_prompting"]
    assert all(t["status"]["status"] == "ok" for t in found.values())
    assert all(t["trial"]["device"] == "cpu" and t["trial"]["cpus"] == 2 for t in found.values())
    for t in found.values():
        expected = [0] if t["trial"]["technique"] == "base" else [1, 2]
        assert [r["epoch"] for r in t["rows"]] == expected
    for name in ("leaderboard.md", "leaderboard.csv", "leaderboard.json", "epochs.md", "run.json"):
        assert (run_dir / name).is_file(), name
    board = json.loads((run_dir / "leaderboard.json").read_text())
    # ranked by test chrF, best first (all trials finished); best.json points at the first row
    chrf = [row["chrf"] for row in board]
    assert chrf == sorted(chrf, reverse=True) and [row["rank"] for row in board] == [1, 2, 3, 4, 5]
    trained = [row for row in board if row["technique"] != "base"]
    assert read_json(run_dir.parent / "best.json")["overall"]["trial"] == trained[0]["trial"]
    hardware = read_json(run_dir / "run.json")["hardware"]
    assert hardware["cpu"] and hardware["cores"] >= 1 and f"hardware: {hardware['cpu']}" in out
    assert "soft_prompting" in out and "nrefs:1|case:mixed|eff:yes|nc:6|nw:0" in out  # table + signature
    best = read_json(run_dir.parent / "best.json")
    assert best["overall"]["adapter"].startswith(str(run_dir)) and Path(best["overall"]["adapter"]).is_dir()
    assert read_json(run_dir / "run.json")["status"] == "finished"


def test_optuna_search_records_distinct_suggestions(ray_local, tiny_yaml, capsys):
    config = tiny_yaml(train={"epochs": 1})
    code = main(["--config", str(config), "--search", "optuna", "--techniques", "lora", "--trials", "3",
                 "--name", "search"])
    out = capsys.readouterr().out
    assert code == 0
    found = trials(run_dir_from(out))
    lora = [t for t in found.values() if t["trial"]["technique"] == "lora"]
    assert len(lora) == 3 and len([t for t in found.values() if t["trial"]["technique"] == "base"]) == 1
    suggested = {json.dumps(t["trial"]["hp"], sort_keys=True) for t in lora}
    assert len(suggested) == 3
    for t in lora:
        hp = read_json(t["folder"] / "config.json")["hp"]
        assert 1e-4 <= hp["lr"] <= 3e-3 and hp["r"] in (4, 8, 16, 32)
        assert t["status"]["status"] == "ok"


@pytest.fixture()
def plugin_path(tmp_path) -> Path:
    return fault_plugins.install(tmp_path / "plugins")


def cli(args: list[str], env_extra: dict | None = None, **kwargs) -> subprocess.Popen:
    env = dict(os.environ, **(env_extra or {}))
    return subprocess.Popen([sys.executable, str(ROOT / "run_benchmark.py"), *args], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **kwargs)


def test_entry_point_plugins_run_and_a_failing_trial_is_isolated(tiny_yaml, plugin_path):
    config = tiny_yaml()
    env = {"PYTHONPATH": os.pathsep.join([str(plugin_path), str(Path(__file__).parent),
                                          os.environ.get("PYTHONPATH", "")])}
    proc = cli(["--config", str(config), "--techniques", "ia3,faulty,lora", "--name", "plugins"], env)
    out, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, out
    found = {t["trial"]["technique"]: t for t in trials(run_dir_from(out)).values()}
    assert found["ia3"]["status"]["status"] == "ok" and len(found["ia3"]["rows"]) == 2
    assert found["lora"]["status"]["status"] == "ok"
    faulty = found["faulty"]["status"]
    assert faulty["status"] == "failed" and "RuntimeError: injected fault in epoch 2" in faulty["error"]
    assert [r["epoch"] for r in found["faulty"]["rows"]] == [1]  # the first epoch is kept
    assert "faulty" in out and "failed: RuntimeError: injected fault in epoch 2" in out


def wait_for(predicate, timeout: float, proc: subprocess.Popen) -> None:
    end = time.time() + timeout
    while time.time() < end:
        if predicate():
            return
        if proc.poll() is not None:
            pytest.fail("the run ended before it could be killed:\n" + proc.stdout.read())
        time.sleep(0.2)
    pytest.fail("timed out waiting for the run to make progress")


def test_kill_9_then_resume_reaches_the_same_leaderboard(tiny_yaml, tmp_path):
    config = tiny_yaml(train={"epochs": 3})
    # Killed twice: mid-training (the baseline has finished and must not run again, LoRA must continue from
    # its last epoch checkpoint, not from scratch), then again while the first --resume restores the run.
    args = ["--config", str(config), "--techniques", "lora", "--max-concurrent", "1"]
    reference = cli(args + ["--name", "reference"])
    out, _ = reference.communicate(timeout=600)
    assert reference.returncode == 0, out
    ref_dir = run_dir_from(out)
    expected = {t["trial"]["technique"]: t for t in trials(ref_dir).values()}

    victim = cli(args + ["--name", "victim"], start_new_session=True)
    run_dir = tmp_path / "results" / "victim"

    def lora_rows() -> int:
        rows = list(run_dir.glob("trials/*--lora--*/metrics.jsonl"))
        return len(read_jsonl(rows[0])) if rows else 0

    wait_for(lambda: lora_rows() >= 1, 300, victim)
    os.killpg(victim.pid, signal.SIGKILL)  # the driver, Ray's services and the trial workers
    victim.wait(timeout=30)
    assert read_json(run_dir / "run.json")["status"] == "running"
    base = next(run_dir.glob("trials/*--base--*"))
    assert read_json(base / "status.json")["status"] == "ok"
    base_files = {name: (base / name).read_bytes() for name in ("status.json", "metrics.jsonl", "test_metrics.json")}
    done_rows = read_jsonl(next(run_dir.glob("trials/*--lora--*/metrics.jsonl")))

    second = cli(["--resume", str(run_dir)], start_new_session=True)
    wait_for(lambda: read_json(run_dir / "run.json").get("resumed") is True, 120, second)
    os.killpg(second.pid, signal.SIGKILL)
    second.wait(timeout=30)

    resumed = cli(["--resume", str(run_dir)])
    out, _ = resumed.communicate(timeout=600)
    assert resumed.returncode == 0, out
    got = {t["trial"]["technique"]: t for t in trials(run_dir).values()}
    assert sorted(got) == sorted(expected) and len(got) == 2  # no trial twice, none missing
    assert {name: (base / name).read_bytes() for name in base_files} == base_files  # the baseline did not rerun
    lora = got["lora"]["folder"]
    assert read_jsonl(lora / "metrics.jsonl")[: len(done_rows)] == done_rows  # finished epochs kept as they were
    steps = [r["step"] for r in read_jsonl(lora / "steps.jsonl")]
    assert steps == [r["step"] for r in read_jsonl(expected["lora"]["folder"] / "steps.jsonl")]
    for technique, want in expected.items():
        assert got[technique]["status"]["status"] == "ok"
        resumed_rows = got[technique]["rows"]
        assert [r["epoch"] for r in resumed_rows] == [r["epoch"] for r in want["rows"]]
        for a, b in zip(want["rows"], resumed_rows):
            for key in ("eval_loss", "chrf", "bleu", "train_loss"):
                if key in a:
                    assert b[key] == pytest.approx(a[key], rel=1e-4, abs=1e-6), (technique, key)
    # the final boards, test scores included
    keys = ("technique", "rank", "status", "epochs", "best_epoch", "eval_loss", "bleu", "chrf", "chrf_pp")
    boards = [[{k: row[k] for k in keys} for row in json.loads((d / "leaderboard.json").read_text())]
              for d in (ref_dir, run_dir)]
    assert len(boards[0]) == len(boards[1]) == 2
    for a, b in zip(*boards):
        assert {k: a[k] for k in keys[:5]} == {k: b[k] for k in keys[:5]}
        for k in keys[5:]:
            assert b[k] == pytest.approx(a[k], rel=1e-4, abs=1e-6), k
    assert read_json(run_dir / "run.json")["status"] == "finished"


def test_models_grid_gives_a_baseline_and_trial_per_model(ray_local, tiny_yaml, tiny_gemma, tiny_llama, capsys):
    from harness import leaderboard

    config = tiny_yaml(train={"epochs": 1})
    code = main(["--config", str(config), "--models", f"{tiny_llama},{tiny_gemma}", "--techniques", "lora",
                 "--name", "models"])
    out = capsys.readouterr().out
    assert code == 0
    run_dir = run_dir_from(out)
    found = [t["trial"] for t in trials(run_dir).values()]
    assert sorted((t["model"], t["technique"]) for t in found) == sorted(
        (str(m), t) for m in (tiny_llama, tiny_gemma) for t in ("base", "lora"))
    assert out.count("model: ") == 2  # grouped by base model
    assert leaderboard.main([str(run_dir), "--model", str(tiny_gemma)]) == 0
    shown = capsys.readouterr().out
    assert str(tiny_gemma) in shown and f"model: {tiny_llama}" not in shown
    best = read_json(run_dir.parent / "best.json")
    assert {e["model"] for e in best["by_model_dataset"].values()} >= {str(tiny_llama), str(tiny_gemma)}
