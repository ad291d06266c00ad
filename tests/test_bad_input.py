"""Bad input found from outside (issue 18): byte-order marks, other encodings, decomposed Turkish, damaged
files of every kind the harness loads, over-long lines. Each gives a loaded, normalised result or one clear
paragraph (exit code 2, no traceback on the command line)."""

from __future__ import annotations

import codecs
import io
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from harness import checkpoint, cli, models, reading, translate
from harness.config import DataConfig, ModelConfig, load_config
from harness.data import Pair, encode_cached, fingerprint, load_splits, read_pairs
from harness.errors import BenchError
from harness.evaluation import score
from harness.evaluation import translate as generate_translations
from harness.io import atomic_write_dir, read_jsonl

ROOT = Path(__file__).resolve().parent.parent
PAIRS = ("Hello.\tMerhaba.\nIstanbul is a very big and old city.\tİstanbul çok büyük ve eski bir şehir.\n"
         "Thank you very much, my friend.\tÇok teşekkür ederim, arkadaşım.\n")
# 'İ' written as I + U+0307 COMBINING DOT ABOVE, 'ş' as s + U+0327 etc.: what some tools emit.
DECOMPOSED = (PAIRS.replace("İ", "I\u0307").replace("ş", "s\u0327").replace("ü", "u\u0308")
              .replace("ç", "c\u0327").replace("Ç", "C\u0327"))


def cut_in_half(path: Path) -> None:
    """An interrupted copy: the first half of the bytes."""
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def fails(capsys, main, argv: list[str], *needles: str) -> str:
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "Traceback" not in err, err
    for needle in needles:
        assert needle in err, (needle, err)
    return err


@pytest.fixture(scope="module")
def tokenizer(tiny_llama):
    return AutoTokenizer.from_pretrained(tiny_llama)


@pytest.fixture(scope="module")
def lora_adapter(tmp_path_factory, tiny_llama) -> Path:
    """A real (untrained) peft LoRA adapter of the tiny model, saved in safetensors."""
    from peft import LoraConfig, get_peft_model

    folder = tmp_path_factory.mktemp("adapter") / "adapter"
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_llama),
                           LoraConfig(r=2, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM"))
    model.save_pretrained(str(folder), safe_serialization=True)
    return folder


# ------------------------------------------------------------------------------------- encodings


def test_bom_tsv_and_jsonl_load_like_files_without_it(tmp_path):
    plain, bom = tmp_path / "plain.tsv", tmp_path / "bom.tsv"
    plain.write_text(PAIRS, encoding="utf-8")
    bom.write_bytes(codecs.BOM_UTF8 + PAIRS.replace("\n", "\r\n").encode())  # as Excel writes it
    assert read_pairs(bom) == read_pairs(plain)
    assert read_pairs(bom)[0] == Pair("Hello.", "Merhaba.")
    jsonl = tmp_path / "bom.jsonl"
    jsonl.write_bytes(codecs.BOM_UTF8 + '{"en": "Hello.", "tr": "Merhaba."}\n'.encode())
    assert read_pairs(jsonl) == [Pair("Hello.", "Merhaba.")]


def test_bom_sentence_is_a_duplicate_of_the_same_sentence(tmp_path):
    """De-duplication sees 'Hello.' in a BOM test file as the 'Hello.' of the training file."""
    train, test = tmp_path / "train.tsv", tmp_path / "test.tsv"
    train.write_text(PAIRS * 3, encoding="utf-8")
    test.write_bytes(codecs.BOM_UTF8 + b"Hello.\tMerhaba.\n")
    splits = load_splits(DataConfig(dataset=str(train), test_file=str(test), validation_fraction=0.3))
    assert splits.test == [Pair("Hello.", "Merhaba.")]
    assert splits.provenance["train_removed_as_test_duplicates"] > 0
    assert all(p.source != "Hello." for p in splits.train + splits.validation)


def test_utf16_with_a_mark_decodes_and_legacy_encodings_are_refused(tmp_path):
    utf16 = tmp_path / "utf16.tsv"
    utf16.write_bytes(PAIRS.encode("utf-16"))  # Python writes the byte-order mark
    assert read_pairs(utf16) == read_pairs(_plain(tmp_path))
    turkish = tmp_path / "cp1254.tsv"
    turkish.write_bytes(PAIRS.encode("cp1254"))
    with pytest.raises(BenchError, match=r"data: '.*cp1254.tsv' is not UTF-8 text \(byte 0xdd on line 2\).*"
                                         r"iconv -f CP1254 -t UTF-8"):
        read_pairs(turkish)
    no_mark = tmp_path / "utf16le.tsv"
    no_mark.write_bytes(PAIRS.encode("utf-16-le"))
    with pytest.raises(BenchError, match="UTF-16 text without a byte-order mark.*iconv -f UTF-16LE"):
        read_pairs(no_mark)


def _plain(tmp_path: Path) -> Path:
    path = tmp_path / "plain-utf8.tsv"
    path.write_text(PAIRS, encoding="utf-8")
    return path


def test_cp1254_dataset_on_the_command_line_is_one_paragraph(tmp_path, capsys):
    data = tmp_path / "windows.tsv"
    data.write_bytes(PAIRS.encode("cp1254"))
    err = fails(capsys, cli.main, ["--set", f"data.dataset={data}", "--results-dir", str(tmp_path / "r")],
                f"data: '{data}' is not UTF-8 text", "iconv -f CP1254 -t UTF-8")
    assert err.count("\n") == 1 and not (tmp_path / "r").exists()


def test_yaml_config_with_a_bom_loads_and_latin1_is_refused(tmp_path):
    good = tmp_path / "bom.yaml"
    good.write_bytes(codecs.BOM_UTF8 + b"train:\n  lr: 0.001\n")
    assert load_config(str(good)).train.lr == 0.001
    bad = tmp_path / "latin1.yaml"
    bad.write_bytes("data:\n  prompt_template: 'Çevir: {source}'\n".encode("latin-1"))
    with pytest.raises(BenchError, match=r"--config: '.*latin1.yaml' is not UTF-8 text"):
        load_config(str(bad))


def test_translate_input_file_and_stdin_with_a_bom(tmp_path, monkeypatch):
    file = tmp_path / "talk.en"
    file.write_bytes(codecs.BOM_UTF8 + b"Hello.\r\nGood night.\n")
    assert translate.read_input(str(file)) == ["Hello.", "Good night."]
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(codecs.BOM_UTF8 + b"Hello.\n")))
    assert translate.read_input("-") == ["Hello."]


# --------------------------------------------------------------------------------- normalisation


def test_decomposed_and_precomposed_turkish_give_the_same_pairs_and_scores(tmp_path):
    assert DECOMPOSED != PAIRS
    composed, decomposed = tmp_path / "composed.tsv", tmp_path / "decomposed.tsv"
    composed.write_text(PAIRS * 4, encoding="utf-8")
    decomposed.write_text(DECOMPOSED * 4, encoding="utf-8")
    assert read_pairs(decomposed) == read_pairs(composed)
    a = load_splits(DataConfig(dataset=str(composed)))
    b = load_splits(DataConfig(dataset=str(decomposed)))
    assert fingerprint(a) == fingerprint(b) and a.test == b.test
    # The model writes precomposed letters: scored against either file's references, the same numbers.
    hypotheses = [p.target for p in read_pairs(composed)]
    for refs in (read_pairs(composed), read_pairs(decomposed)):
        scores = score(hypotheses, [p.target for p in refs])
        assert scores.bleu == pytest.approx(100.0) and scores.chrf == pytest.approx(100.0)


def test_translation_input_is_normalised(monkeypatch):
    """--text and interactive lines reach the model in NFC, like file input."""
    seen: list[list[str]] = []

    def fake_translate(model, tokenizer, sources, *args, cut=None, **kwargs):  # the model is not the unit here
        seen.append(list(sources))
        if cut is not None:
            cut[:] = [False] * len(sources)
        return list(sources)

    monkeypatch.setattr("harness.evaluation.translate", fake_translate)
    translator = translate.Translator(None, None, DataConfig())
    translator(["I\u0307stanbul", "İstanbul"])
    assert seen == [["İstanbul", "İstanbul"]]


# ------------------------------------------------------------------------------- damaged files


def test_safetensors_check_names_what_is_wrong(tmp_path, lora_adapter):
    weights = tmp_path / "w.safetensors"
    shutil.copy(lora_adapter / "adapter_model.safetensors", weights)
    assert reading.safetensors_problem(weights) is None
    weights.write_bytes(weights.read_bytes()[:-1])  # one byte short
    assert "a truncated copy" in reading.safetensors_problem(weights)
    weights.write_bytes(b"\x05")
    assert "fewer than a safetensors header needs" in reading.safetensors_problem(weights)
    weights.write_bytes((40).to_bytes(8, "little") + b"{not json" + b" " * 31)
    assert "header is not valid JSON" in reading.safetensors_problem(weights)


def test_truncated_adapter_on_the_real_command_line(tmp_path, lora_adapter, tiny_llama):
    """The exact case of the issue, as a user runs it: one paragraph, exit code 2, no traceback."""
    adapter = tmp_path / "adapter"
    shutil.copytree(lora_adapter, adapter)
    cut_in_half(adapter / "adapter_model.safetensors")
    proc = subprocess.run([sys.executable, "-m", "harness.translate", "--adapter", str(adapter), "--base-model",
                           str(tiny_llama), "--text", "Hello"], cwd=ROOT, capture_output=True, text=True,
                          timeout=120, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.startswith("error: --adapter ") and "Traceback" not in proc.stderr
    assert f"'{adapter / 'adapter_model.safetensors'}' cannot be loaded" in proc.stderr
    assert "(a truncated copy)" in proc.stderr and "copy it again" in proc.stderr


def test_damaged_best_json_and_adapter_config(tmp_path, lora_adapter, tiny_llama, capsys):
    (tmp_path / "best.json").write_text('{"overall": {"adapter": "x"', encoding="utf-8")
    fails(capsys, translate.main, ["--best", "--results-dir", str(tmp_path), "--text", "Hi."],
          f"--best: '{tmp_path / 'best.json'}' is not valid JSON (line 1, column 28", "harness.leaderboard")
    adapter = tmp_path / "adapter"
    shutil.copytree(lora_adapter, adapter)
    cut_in_half(adapter / "adapter_config.json")
    fails(capsys, translate.main, ["--adapter", str(adapter), "--base-model", str(tiny_llama), "--text", "Hi."],
          "adapter_config.json' is not valid JSON", "truncated or damaged", "copy it again")


def test_damaged_checkpoint_files_on_resume(tmp_path, tiny_llama, lora_adapter):
    """trainable_state.safetensors (adapter and checkpoint), training_state.safetensors and .json."""
    from peft import PeftModel

    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_llama), str(lora_adapter),
                                      is_trainable=True)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad])
    model(torch.tensor([[1, 5, 6]]), labels=torch.tensor([[1, 5, 6]])).loss.backward()
    optimizer.step()
    folder = tmp_path / "checkpoint"
    folder.mkdir()
    checkpoint.save_trainable(model, folder)
    checkpoint.save_training_state(folder, optimizer, {"epoch": 1, "step": 1})
    checkpoint.load_trainable(model, folder)
    assert checkpoint.load_training_state(folder, optimizer) == {"epoch": 1, "step": 1}
    for name in (checkpoint.TRAINABLE, checkpoint.STATE_TENSORS, checkpoint.STATE_JSON):
        damaged = tmp_path / f"damaged-{name}"
        shutil.copytree(folder, damaged)
        cut_in_half(damaged / name)
        with pytest.raises(BenchError, match=rf"checkpoint: '.*{name}' .*delete that trial's folder") as info:
            checkpoint.load_trainable(model, damaged)
            checkpoint.load_training_state(damaged, optimizer)
        assert str(damaged / name) in str(info.value)


def test_damaged_model_cache_entry_is_rebuilt_with_a_warning(tmp_path, tiny_llama, monkeypatch, caplog):
    """The converted-model cache: a truncated entry is converted again (the GGUF conversion, which takes
    minutes for a real model, is replaced here by a copy of the tiny model: the cache is the unit)."""
    conversions = []

    def convert(spec, target):
        conversions.append(target)
        atomic_write_dir(target, lambda folder: shutil.copytree(tiny_llama, folder, dirs_exist_ok=True))

    spec = models.EmbeddedModel("tiny-embedded", "torch", lambda: Path("unused.gguf"), "test model")
    monkeypatch.setitem(models.EMBEDDED, spec.name, spec)
    monkeypatch.setattr(models, "convert_embedded", convert)
    cfg = ModelConfig(name=spec.name, cache_dir=str(tmp_path))
    folder = models.ensure_embedded(spec.name, cfg)
    assert models.ensure_embedded(spec.name, cfg) == folder and len(conversions) == 1  # cached
    cut_in_half(folder / "model.safetensors")
    with caplog.at_level(logging.WARNING, logger="harness.models"):
        assert models.ensure_embedded(spec.name, cfg) == folder
    assert len(conversions) == 2
    assert f"the converted-model cache '{folder}' is damaged ('model.safetensors': it has" in caplog.text
    assert models.model_folder_problem(folder) is None
    (folder / "config.json").write_text('{"model_type": ', encoding="utf-8")
    models.ensure_embedded(spec.name, cfg)
    assert len(conversions) == 3 and "'config.json' is damaged" in caplog.text


def test_damaged_local_model_folder(tmp_path, tiny_llama):
    folder = tmp_path / "model"
    shutil.copytree(tiny_llama, folder)
    cut_in_half(folder / "model.safetensors")
    with pytest.raises(BenchError, match=r"model.name: the model folder '.*' cannot be loaded: 'model.safetensors':"
                                         r" .*truncated copy.*copy the folder again"):
        models.resolve_source(ModelConfig(name=str(folder)))


def test_damaged_tokenized_cache_entry_is_rebuilt(tmp_path, tokenizer, caplog):
    pairs = read_pairs(_plain(tmp_path))
    cfg = DataConfig()
    first = encode_cached(pairs, tokenizer, cfg, tmp_path / "cache", "train")
    (entry,) = (tmp_path / "cache").glob("*.npz")
    cut_in_half(entry)
    with caplog.at_level(logging.WARNING, logger="harness.data"):
        again = encode_cached(pairs, tokenizer, cfg, tmp_path / "cache", "train")
    assert "damaged or outdated" in caplog.text and str(entry) in caplog.text
    assert all(np.array_equal(a, b) for a, b in zip(first.input_ids, again.input_ids)) and len(again) == len(first)
    caplog.clear()
    encode_cached(pairs, tokenizer, cfg, tmp_path / "cache", "train")  # rebuilt whole: read back silently
    assert "damaged" not in caplog.text


def test_damaged_jsonl_names_the_file_and_line(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"epoch": 1}\n{"epoch": 2, "chrf": 3', encoding="utf-8")
    with pytest.raises(BenchError, match=r"metrics.jsonl:2 is not valid JSON"):
        read_jsonl(path)


# ------------------------------------------------------------------------------------ long lines


def test_over_long_translate_line_warns_once_per_input(tmp_path, tiny_llama, capsys, caplog):
    long_line = " ".join(["The weather is very nice today in Istanbul."] * 45)  # ~2,000 characters
    assert len(long_line) > 1900
    file = tmp_path / "talk.en"
    file.write_text("\n".join(["Hello."] * 70 + [long_line]) + "\n", encoding="utf-8")  # two chunks of lines
    argv = ["--no-adapter", "--base-model", str(tiny_llama), "--input", str(file), "--max-new-tokens", "6",
            "--batch-size", "8"]
    with caplog.at_level(logging.WARNING, logger="harness.translate"):
        assert translate.main(argv) == 0
    assert len(capsys.readouterr().out.splitlines()) == 71
    warnings = [r.getMessage() for r in caplog.records if r.name == "harness.translate"]
    assert len(warnings) == 1, warnings
    err = warnings[0]
    assert "of 71 input lines were truncated: their translations stopped at --max-new-tokens=6 tokens" in err
    # The count is that of translations which reached the cap without an end token.
    model = AutoModelForCausalLM.from_pretrained(tiny_llama)
    cut: list[bool] = []
    generate_translations(model, AutoTokenizer.from_pretrained(tiny_llama), ["Hello.", long_line], DataConfig(),
                          8, 6, cut=cut)
    assert cut[1] is True
    assert f"{70 * cut[0] + 1} of 71 input lines" in err


def test_a_cap_below_max_new_tokens_is_not_truncation(tiny_llama, tokenizer):
    """Short sources are capped at 3x their length + 8 tokens by design: not reported as truncated."""
    model = AutoModelForCausalLM.from_pretrained(tiny_llama)
    cut: list[bool] = []
    generate_translations(model, tokenizer, ["Hello.", "Good night."], DataConfig(), 8, 200, cut=cut)
    assert cut == [False, False]


def test_training_pairs_dropped_and_truncated_are_counted_and_recorded(tmp_path, tiny_yaml, tokenizer, caplog):
    from harness.training import prepare_data

    data = tmp_path / "pairs.tsv"
    long_target = " ".join(["uzun"] * 60)
    long_source = " ".join(["word"] * 80)
    data.write_text("\n".join([f"Short {i}.\t{long_target}" for i in range(5)] +
                              [f"{long_source} {i}.\tkelime" for i in range(3)] +
                              [f"Fine {i}.\tİyi." for i in range(12)]) + "\n", encoding="utf-8")
    cfg = load_config(str(tiny_yaml(data={"dataset": str(data), "test_file": str(_plain(tmp_path)),
                                          "max_seq_length": 40, "validation_fraction": 0.01,
                                          "max_train_samples": None})))
    prompt = len(tokenizer(cfg.data.prompt_template.format(source="Short 1."))["input_ids"])
    assert prompt + 5 < 40 < len(tokenizer(cfg.data.prompt_template.format(source=long_source))["input_ids"])
    with caplog.at_level(logging.WARNING, logger="harness.data"):
        trial_data = prepare_data(cfg, tokenizer)
    train = load_splits(cfg.data).train
    want_truncated = sum(p.source.startswith("Short") for p in train)
    want_dropped = sum(p.source.startswith("word") for p in train)
    assert want_truncated and want_dropped
    assert trial_data.provenance["train_truncated_too_long"] == want_truncated
    assert trial_data.provenance["train_dropped_too_long"] == want_dropped
    assert (f"train data: {want_dropped} of {len(train)} pairs dropped (the prompt alone reaches "
            f"data.max_seq_length=40) and {want_truncated} truncated") in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="harness.data"):
        prepare_data(cfg, tokenizer)  # from the tokenized cache: told again, for this trial
    assert f"{want_truncated} truncated" in caplog.text


# ------------------------------------------------------------------------------------------- Ray


DRIVER = """
import json, time, psutil
from harness.config import load_config
from harness.driver import start_ray
start_ray(load_config(None))
deadline = time.time() + 90
while time.time() < deadline:
    names = [p.name() for p in psutil.Process().children(recursive=True)]
    if sum(name.endswith("Agent") for name in names) >= 2:
        break
    time.sleep(0.5)
time.sleep(2.5)  # the watchdog looks every second
print(json.dumps([(p.pid, p.name(), p.create_time()) for p in psutil.Process().children(recursive=True)]), flush=True)
time.sleep(600)
"""


def test_a_sigkilled_driver_leaves_no_ray_processes():
    """Without the watchdog, ray::DashboardAgent and ray::RuntimeEnvAgent outlive the driver by a minute."""
    import json
    import signal
    import time

    import psutil

    proc = subprocess.Popen([sys.executable, "-c", DRIVER], cwd=ROOT, stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"})
    started = json.loads(proc.stdout.readline())
    names = {name for _, name, _ in started}
    assert {"ray::DashboardAgent", "ray::RuntimeEnvAgent", "raylet"} <= names, names

    def still_running() -> list[psutil.Process]:
        out = []
        for pid, _, created in started:
            try:
                process = psutil.Process(pid)
                if process.create_time() == created and process.status() != psutil.STATUS_ZOMBIE:
                    out.append(process)
            except psutil.NoSuchProcess:
                pass
        return out

    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    deadline = time.time() + 20
    while still_running() and time.time() < deadline:
        time.sleep(0.5)
    left = still_running()
    for process in left:  # only the processes of the cluster this test started
        process.kill()
    assert not left, [p.name() for p in left]
