"""Every mistake a user can make gets one clear paragraph and exit code 2, with no traceback, and nothing
already written is touched."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from harness.cli import main

ROOT = Path(__file__).resolve().parent.parent


def run_cli(args, capsys) -> tuple[int, str]:
    code = main(args)
    err = capsys.readouterr().err
    return code, err


@pytest.mark.parametrize("args, expected", [
    (["--techniques", "lora,dorra"], "'dorra' is not a known technique. Did you mean 'dora'? Valid techniques: all, "),
    (["--set", "train.lrr=0.1"], "config key 'train.lrr' is unknown. Did you mean 'lr'?"),
    (["--set", "train.lr=-3"], "config key 'train.lr' is -3.0; the learning rate must be > 0. Fix: --set train.lr=3e-4."),
    (["--set", "peft.r=0"], "the LoRA rank must be an integer >= 1"),
    (["--set", "peft.num_virtual_tokens=0"], "the number of virtual tokens must be an integer >= 1"),
    (["--set", "train.batch_size=0"], "the batch size must be >= 1"),
    (["--set", "train.epochs=0"], "at least one epoch is needed"),
    (["--set", "data.max_seq_length=4"], "'data.max_seq_length' is 4; it must be >= 8"),
    (["--set", "train.epochs=two"], "'train.epochs' is 'two' (str); it must be int"),
    (["--config", "nosuch"], "--config: 'nosuch' is neither a preset nor a file. Presets: "),
    (["--set", "data.dataset=/no/such/file.tsv"], "data: the file '/no/such/file.tsv' does not exist"),
    (["--set", "data.dataset=Helsinki-NLP/opus-100", "--set", "data.dataset_config=en-tr"],
     "the hub cannot be reached (offline?)"),
    (["--set", "model.name=Qwen/Qwen2.5-0.5B-Instruct"], "the hub cannot be reached (offline?). Use a local path"),
    (["--set", "model.name=/no/such/model"], "model.name: '/no/such/model' is not an embedded model"),
    (["--techniques", "lora,prefix_tuning", "--set", "eval.num_beams=4"],
     "eval.num_beams=4 with technique 'prefix_tuning': beam search is not available"),
    (["--resume", "results"], "--resume: 'results' is not a run folder (it has no run.json)"),
    (["--resume", "results", "--techniques", "lora"], "--resume: a resumed run keeps its own config"),
])
def test_bad_input_gives_one_clear_paragraph(args, expected, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)
    code, err = run_cli(args + (["--results-dir", str(tmp_path / "r")] if "--resume" not in args else []), capsys)
    assert code == 2
    assert expected in err
    assert err.startswith("error: ") and err.count("\n") == 1  # one paragraph
    assert "Traceback" not in err
    assert not (tmp_path / "r").exists()  # nothing was created


def test_bad_tsv_line_is_reported_before_anything_runs(tmp_path, capsys):
    bad = tmp_path / "bad.tsv"
    bad.write_text("Hello.\tMerhaba.\nThanks.\tTeşekkürler.\textra\n", encoding="utf-8")
    code, err = run_cli(["--set", f"data.dataset={bad}", "--results-dir", str(tmp_path / "r")], capsys)
    assert code == 2 and f"{bad}:2 has 3 tab-separated columns but the file's first line has 2" in err


def test_empty_dataset_after_filtering(tmp_path, capsys):
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "train.tsv").write_text("a\tb\n")
    (tmp_path / "d" / "validation.tsv").write_text("c\td\n")
    (tmp_path / "d" / "test.tsv").write_text("a\tb\n")
    code, err = run_cli(["--set", f"data.dataset={tmp_path / 'd'}", "--results-dir", str(tmp_path / "r")], capsys)
    assert code == 2 and "the train split of" in err and "is empty after reading and filtering" in err


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="needs a machine without CUDA")
def test_device_that_is_not_present(capsys, tmp_path):
    code, err = run_cli(["--device", "cuda", "--results-dir", str(tmp_path / "r")], capsys)
    assert code == 2 and "--device cuda: no CUDA GPU is visible here" in err


def test_existing_run_name_is_never_overwritten(tmp_path, capsys):
    existing = tmp_path / "r" / "mine"
    existing.mkdir(parents=True)
    (existing / "keep.txt").write_text("precious")
    code, err = run_cli(["--results-dir", str(tmp_path / "r"), "--name", "mine", "--techniques", "lora"], capsys)
    assert code == 2 and "exists already; nothing was written over" in err
    assert (existing / "keep.txt").read_text() == "precious" and len(list(existing.iterdir())) == 1


def test_run_names_cannot_escape_the_results_folder():
    from harness.driver import safe_name

    assert safe_name("../../etc/passwd") == "etc-passwd"
    assert safe_name("my run/1") == "my-run-1"
    with pytest.raises(Exception, match="no usable characters"):
        safe_name("../..")


def test_the_real_command_line_exits_2_without_traceback(tmp_path):
    proc = subprocess.run([sys.executable, "run_benchmark.py", "--techniques", "lorra", "--results-dir",
                           str(tmp_path)], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "Did you mean 'lora'?" in proc.stderr and "Traceback" not in proc.stderr
