"""`translate` batches like the run's evaluation (the trial's eval.generation_batch_size) and shows one
progress bar over a file in a terminal."""

from __future__ import annotations

import json
import sys

import torch
from safetensors.torch import save_file

from harness import translate
from harness.config import EvalConfig, load_config


def test_the_trials_generation_batch_size_is_used(tmp_path, tiny_yaml, tiny_llama):
    cfg = load_config(str(tiny_yaml(eval={"generation_batch_size": 7})))
    adapter = tmp_path / "trial" / "adapter"
    adapter.mkdir(parents=True)
    (adapter / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA"}), encoding="utf-8")
    save_file({"w": torch.zeros(2)}, str(adapter / "adapter_model.safetensors"))
    (adapter.parent / "config.json").write_text(json.dumps({"config": cfg.to_dict()}), encoding="utf-8")
    args = translate.parser().parse_args(["--adapter", str(adapter), "--text", "Hi."])
    assert translate.resolve_target(args).batch_size == 7
    args = translate.parser().parse_args(["--adapter", str(adapter), "--text", "Hi.", "--batch-size", "3"])
    target = translate.resolve_target(args)
    target.adapter = None  # the stand-in weights above are not a real adapter; the base model is enough here
    assert translate.load_translator(target, "cpu", args).batch_size == 3  # an explicit --batch-size wins
    args = translate.parser().parse_args(["--no-adapter", "--base-model", str(tiny_llama), "--text", "Hi."])
    target = translate.resolve_target(args)
    assert translate.load_translator(target, "cpu", args).batch_size == EvalConfig().generation_batch_size == 64


def test_a_file_gets_one_progress_bar_in_a_terminal(tmp_path, tiny_llama, capsys, monkeypatch):
    file = tmp_path / "talk.en"
    file.write_text("Hello.\n" * 20, encoding="utf-8")
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    argv = ["--no-adapter", "--base-model", str(tiny_llama), "--input", str(file), "--batch-size", "4",
            "--max-new-tokens", "2", "--output", str(tmp_path / "talk.tr")]
    assert translate.main(argv) == 0
    err = capsys.readouterr().err
    assert "translate: 100%" in err and "20/20" in err, err
    assert len((tmp_path / "talk.tr").read_text(encoding="utf-8").splitlines()) == 20
