"""`python -m harness.translate` on a real tiny LoRA adapter trained once for the module: every input mode,
reproducible reload, merge-and-save, and the user errors (exit code 2, a message, no traceback)."""

from __future__ import annotations

import json
import os
import selectors
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from harness import leaderboard, translate
from harness.config import load_config
from harness.io import atomic_write_json
from harness.training import TrialSpec, resolve_hyperparameters, run_trial
from techniques import registry

ROOT = Path(__file__).resolve().parent.parent
EVAL_MAX_NEW_TOKENS = 16
GENERATION_BATCH = 64  # eval.generation_batch_size default: the test sample was translated in one batch


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_llama) -> dict[str, Path]:
    """One tiny LoRA trial in results/run1, published so that results/best.json points at it."""
    root = tmp_path_factory.mktemp("translate")
    results = root / "results"
    config = root / "tiny.yaml"
    config.write_text(yaml.safe_dump({
        "model": {"name": str(tiny_llama), "cache_dir": str(root / "cache")},
        "data": {"max_train_samples": 16, "max_validation_samples": 8},
        "train": {"epochs": 1, "batch_size": 8, "log_steps": 1},
        "eval": {"validation_samples": 4, "test_samples": 4, "max_new_tokens": EVAL_MAX_NEW_TOKENS},
        "run": {"results_dir": str(results)},
    }), encoding="utf-8")
    cfg = load_config(str(config))
    run_dir = results / "run1"
    trial_dir = run_dir / "trials" / "t-lora"
    tech = registry.get("lora")
    result = run_trial(TrialSpec("t-lora", "lora", resolve_hyperparameters(tech, cfg), cfg, trial_dir, "cpu", 1))
    assert result["status"] == "ok"
    atomic_write_json(run_dir / "run.json", {"config": cfg.to_dict()})
    leaderboard.publish(run_dir)
    assert (results / "best.json").is_file()
    return {"root": root, "results": results, "trial": trial_dir, "adapter": trial_dir / "adapter",
            "model": tiny_llama}


def _lines(text: str) -> list[str]:
    return translate.split_lines(text)  # '\n' only: a random tiny model emits U+0085 and friends


def _env() -> dict[str, str]:
    return {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "PYTHONUNBUFFERED": "1"}


def _cli(*args: str, stdin: str = "") -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "harness.translate", *args], input=stdin, capture_output=True,
                          text=True, cwd=ROOT, env=_env(), timeout=120)


def _fails(capsys, argv: list[str], *needles: str) -> str:
    capsys.readouterr()
    assert translate.main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "Traceback" not in err, err
    for needle in needles:
        assert needle in err, (needle, err)
    return err


def _in_memory(trained, sentences: list[str], max_new_tokens: int) -> list[str]:
    """What the trained adapter translates, loaded without the CLI (base + peft adapter, the trial's prompt)."""
    from peft import PeftModel

    from harness.evaluation import translate as generate
    from harness.models import load_model

    cfg = load_config(None, [f"model.name={trained['model']}"])
    loaded = load_model(cfg.model, "cpu")
    model = PeftModel.from_pretrained(loaded.model, str(trained["adapter"])).eval()
    return [" ".join(h.split()) for h in generate(model, loaded.tokenizer, sentences, cfg.data,
                                                  max_new_tokens=max_new_tokens)]


@pytest.fixture(scope="module")
def expected(trained) -> dict[str, str]:
    sentences = ["Hello.", "Good morning.", "Where is the station?", "The weather is nice today."]
    return dict(zip(sentences, _in_memory(trained, sentences, 8)))


# ------------------------------------------------------------------------------------------- modes


def test_text_prints_one_line(trained, expected, capsys):
    assert translate.main(["--adapter", str(trained["adapter"]), "--text", "Hello.", "--max-new-tokens", "8"]) == 0
    out = capsys.readouterr().out
    assert out.endswith("\n") and [" ".join(line.split()) for line in _lines(out)] == [expected["Hello."]]


def test_input_file_to_output_file_keeps_line_alignment(trained, expected, tmp_path, capsys):
    source = tmp_path / "in.en"
    source.write_text("Good morning.\n\nWhere is the station?\n", encoding="utf-8")
    target = tmp_path / "out.tr"
    argv = ["--adapter", str(trained["adapter"]), "--input", str(source), "--output", str(target),
            "--max-new-tokens", "8", "--batch-size", "2"]
    assert translate.main(argv) == 0
    assert capsys.readouterr().out == ""
    lines = [" ".join(line.split()) for line in _lines(target.read_text(encoding="utf-8"))]
    assert lines == [expected["Good morning."], "", expected["Where is the station?"]]


def test_best_reloads_the_trained_model_exactly(trained, tmp_path, capsys):
    """Greedy output after a reload equals what harness.evaluation.translate gave the trained model in memory
    (the trial's predictions.tsv)."""
    rows = [line.split("\t") for line in _lines((trained["trial"] / "predictions.tsv").read_text("utf-8"))[1:]]
    source = tmp_path / "test.en"
    source.write_text("".join(r[0] + "\n" for r in rows), encoding="utf-8")
    argv = ["--best", "--results-dir", str(trained["results"]), "--input", str(source),
            "--batch-size", str(GENERATION_BATCH), "--max-new-tokens", str(EVAL_MAX_NEW_TOKENS)]
    assert translate.main(argv) == 0
    got = [" ".join(line.split()) for line in _lines(capsys.readouterr().out)]
    assert got == [" ".join(r[2].split()) for r in rows]


def test_stdin_pipe_translates_each_line(trained, expected):
    done = _cli("--best", "--results-dir", str(trained["results"]), "--max-new-tokens", "8",
                stdin="The weather is nice today.\nHello.\n")
    assert done.returncode == 0, done.stderr
    got = [" ".join(line.split()) for line in _lines(done.stdout)]
    assert got == [expected["The weather is nice today."], expected["Hello."]] and "Traceback" not in done.stderr


def test_interactive_through_a_pipe_answers_each_line_at_once(trained):
    proc = subprocess.Popen([sys.executable, "-m", "harness.translate", "--interactive", "--best", "--results-dir",
                             str(trained["results"]), "--max-new-tokens", "8"], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT, env=_env())
    try:
        proc.stdin.write("Hello.\n")
        proc.stdin.flush()
        selector = selectors.DefaultSelector()
        selector.register(proc.stdout, selectors.EVENT_READ)
        assert selector.select(timeout=90), "no translation before the next line was sent"
        first = proc.stdout.readline()
        proc.stdin.write("exit\n")
        proc.stdin.flush()
        rest, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert first.endswith("\n") and rest == ""
    assert proc.returncode == 0 and "Traceback" not in err


def test_merge_and_save_gives_a_plain_model_with_the_same_translations(trained, tmp_path, capsys):
    """The tiny adapter's greedy outputs equal the bare base's, so translations alone cannot tell a merged model
    from the unmerged base: the logits do (merged = base + adapter, and not the base)."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    merged = tmp_path / "merged"
    text = "Where is the station?"
    common = ["--text", text, "--max-new-tokens", "8"]
    assert translate.main(["--adapter", str(trained["adapter"]), "--merge-and-save", str(merged), *common]) == 0
    with_adapter = capsys.readouterr().out
    assert (merged / "model.safetensors").is_file() and (merged / "tokenizer.json").is_file()
    assert not list(merged.glob("*.bin")) and not (merged / "adapter_config.json").exists()
    assert translate.main(["--no-adapter", "--base-model", str(merged), *common]) == 0
    assert capsys.readouterr().out == with_adapter

    ids = AutoTokenizer.from_pretrained(merged)(f"English: {text}\nTurkish:", return_tensors="pt")
    with torch.no_grad():
        base = AutoModelForCausalLM.from_pretrained(trained["model"]).eval()
        plain = base(**ids).logits
        adapted = PeftModel.from_pretrained(base, str(trained["adapter"])).eval()(**ids).logits
        folded = AutoModelForCausalLM.from_pretrained(merged).eval()(**ids).logits
    change = float((adapted - plain).abs().max())
    assert change > 1e-4  # the adapter does change the model
    assert float((folded - adapted).abs().max()) < change / 100


def test_qlora_adapters_load_a_4bit_base(trained, tmp_path):
    """The 4-bit base is the technique's business: applied from the trial's technique, as training does, and
    the loaded model really is 4-bit under the adapter."""
    for technique, four_bit in (("lora", False), ("qlora", True)):
        trial = tmp_path / technique
        shutil.copytree(trained["adapter"], trial / "adapter")
        record = json.loads((trained["trial"] / "config.json").read_text("utf-8"))
        record["technique"] = technique
        (trial / "config.json").write_text(json.dumps(record), encoding="utf-8")
        args = translate.parser().parse_args(["--adapter", str(trial / "adapter")])
        target = translate.resolve_target(args)
        assert target.model_cfg.load_in_4bit is four_bit and target.technique == technique
        assert target.data_cfg.prompt_template == record["config"]["data"]["prompt_template"]
        model = translate.load_translator(target, "cpu", args).model
        kinds = {type(m).__name__ for m in model.modules()}
        assert ("Linear4bit" in kinds) is four_bit and type(model).__name__.startswith("Peft")


# ------------------------------------------------------------------------------------------ errors


def test_no_best_json(tmp_path, capsys):
    _fails(capsys, ["--best", "--results-dir", str(tmp_path), "--text", "Hi."], "--best",
           translate.NO_RUNS)
    (tmp_path / "best.json").write_text(json.dumps({"by_model_dataset": {}, "overall": None}))
    _fails(capsys, ["--text", "Hi.", "--results-dir", str(tmp_path)], translate.NO_RUNS)


def test_model_without_an_entry_lists_the_models(trained, capsys):
    _fails(capsys, ["--best", "--model", "no-such-model", "--results-dir", str(trained["results"]), "--text", "Hi."],
           "--model no-such-model", str(trained["model"]))


def test_broken_adapter_folders(trained, tmp_path, capsys):
    def broken(name: str) -> Path:
        folder = tmp_path / name / "adapter"
        shutil.copytree(trained["adapter"], folder)
        return folder

    _fails(capsys, ["--adapter", str(tmp_path / "nowhere"), "--text", "Hi."], "--adapter", "does not exist")
    folder = broken("no-config")
    (folder / "adapter_config.json").unlink()
    _fails(capsys, ["--adapter", str(folder), "--text", "Hi."], "adapter_config.json")
    folder = broken("no-weights")
    (folder / "adapter_model.safetensors").unlink()
    _fails(capsys, ["--adapter", str(folder), "--text", "Hi."], "no adapter_model.safetensors")
    folder = broken("pickle")
    (folder / "adapter_model.safetensors").rename(folder / "adapter_model.bin")
    _fails(capsys, ["--adapter", str(folder), "--text", "Hi."], "adapter_model.bin", "pickle", "never")
    folder = broken("bad-json")
    (folder / "adapter_config.json").write_text("{not json", encoding="utf-8")
    _fails(capsys, ["--adapter", str(folder), "--text", "Hi."], "adapter_config.json' is not valid JSON")
    # no config.json beside the adapter: the base model must be given
    _fails(capsys, ["--adapter", str(broken("no-trial")), "--text", "Hi."], "--base-model", "base model is unknown")


def test_adapter_on_the_wrong_base_model(trained, tmp_path, capsys):
    from transformers import AutoModelForCausalLM
    from tiny_models import build_tokenizer, tiny_config

    other = tmp_path / "narrow-llama"
    tokenizer = build_tokenizer()
    config = tiny_config("llama", len(tokenizer))
    config.hidden_size, config.intermediate_size = 32, 48
    AutoModelForCausalLM.from_config(config).save_pretrained(other, safe_serialization=True)
    tokenizer.save_pretrained(other)
    _fails(capsys, ["--adapter", str(trained["adapter"]), "--base-model", str(other), "--text", "Hi."],
           "does not match the base model", str(other))


def test_missing_input_file_and_bad_options(trained, tmp_path, capsys):
    adapter = str(trained["adapter"])
    _fails(capsys, ["--adapter", adapter, "--input", str(tmp_path / "missing.en")], "--input", "does not exist")
    _fails(capsys, ["--no-adapter", "--text", "Hi."], "--no-adapter", "--base-model")
    _fails(capsys, ["--adapter", adapter, "--text", "Hi.", "--top-p", "1.5"], "--top-p 1.5")


def test_merge_and_save_refuses_non_lora_adapters(trained, tmp_path, capsys):
    trial = tmp_path / "prefix"
    shutil.copytree(trained["adapter"], trial / "adapter")
    adapter_cfg = json.loads((trial / "adapter" / "adapter_config.json").read_text("utf-8"))
    (trial / "adapter" / "adapter_config.json").write_text(json.dumps({**adapter_cfg, "peft_type": "PREFIX_TUNING"}))
    record = json.loads((trained["trial"] / "config.json").read_text("utf-8"))
    (trial / "config.json").write_text(json.dumps({**record, "technique": "prefix_tuning"}))
    _fails(capsys, ["--adapter", str(trial / "adapter"), "--merge-and-save", str(tmp_path / "m")],
           "--merge-and-save", "prefix_tuning", "LoRA-family")
    assert not (tmp_path / "m").exists()


def test_errors_through_the_real_cli_have_no_traceback(tmp_path):
    done = _cli("--adapter", str(tmp_path / "nowhere"), "--text", "Hi.")
    assert done.returncode == 2 and done.stderr.startswith("error: --adapter") and "Traceback" not in done.stderr
