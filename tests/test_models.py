"""Model loading: local folders, 4-bit, device/dtype choice, clear errors, and the real embedded SmolLM2."""

from __future__ import annotations

import dataclasses
import logging

import pytest
import torch

from harness.config import ModelConfig
from harness.devices import choose_dtype, cpu_has_native_bf16, resolve_device
from harness.errors import BenchError
from harness.models import EMBEDDED, count_parameters, ensure_embedded, load_model, weight_memory_mb


def test_local_folder_loads_on_cpu_in_float32(tiny_llama):
    loaded = load_model(ModelConfig(name=str(tiny_llama)), "cpu")
    assert loaded.dtype == torch.float32 and not loaded.quantized
    assert next(loaded.model.parameters()).dtype == torch.float32
    # the tokenizer's own pad token is kept (only a tokenizer without one gets EOS, see below)
    assert loaded.tokenizer.pad_token == "<pad>" and loaded.tokenizer.pad_token_id != loaded.tokenizer.eos_token_id
    assert loaded.model.config.pad_token_id == loaded.tokenizer.pad_token_id


def test_pad_token_is_set_when_missing(tmp_path, tiny_llama):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_llama)
    tok.pad_token = None
    tok.save_pretrained(tmp_path / "m")
    AutoModelForCausalLM.from_pretrained(tiny_llama).save_pretrained(tmp_path / "m")
    loaded = load_model(ModelConfig(name=str(tmp_path / "m")), "cpu")
    assert loaded.tokenizer.pad_token == loaded.tokenizer.eos_token == "</s>"


@pytest.mark.parametrize("quant", ["nf4", "fp4"])
def test_4bit_loading_quantizes_the_linear_layers(tiny_gemma, quant):
    full = load_model(ModelConfig(name=str(tiny_gemma)), "cpu")
    four = load_model(ModelConfig(name=str(tiny_gemma), load_in_4bit=True, bnb_4bit_quant_type=quant), "cpu")
    assert four.quantized
    kinds = {type(m).__name__ for m in four.model.modules()}
    assert "Linear4bit" in kinds
    layer = four.model.model.layers[0].mlp.up_proj
    assert layer.weight.quant_state.quant_type == quant
    assert weight_memory_mb(four.model) < weight_memory_mb(full.model)
    assert count_parameters(four.model)[1] == count_parameters(full.model)[1]  # 4-bit values counted unpacked
    ids = four.tokenizer("English: Hello.\nTurkish:", return_tensors="pt")
    with torch.no_grad():
        assert torch.isfinite(four.model(**ids).logits).all()


def test_device_choice_and_dtype_per_device(caplog, monkeypatch):
    assert resolve_device("cpu") == "cpu"
    # auto: CUDA, then MPS, then CPU, each branch forced (the test machine has only one of them)
    monkeypatch.setattr("harness.devices.mps_available", lambda: False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == "cpu"
    with pytest.raises(BenchError, match="--device cuda: no CUDA GPU is visible here.*Use --device cpu"):
        resolve_device("cuda")
    monkeypatch.setattr("harness.devices.mps_available", lambda: True)
    assert resolve_device("auto") == "mps"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_device("auto") == "cuda" and resolve_device("cuda") == "cuda"
    monkeypatch.undo()
    with pytest.raises(BenchError, match="--device: 'tpu' is not a device; use auto, cpu, cuda or mps"):
        resolve_device("tpu")
    assert choose_dtype("cpu") == torch.float32
    assert choose_dtype("cpu", fp16=True) == torch.float32
    assert choose_dtype("mps") == torch.float32 and choose_dtype("mps", fp16=True) == torch.float16


@pytest.mark.parametrize("native", [False, True])
def test_bf16_on_cpu_follows_native_support(native, caplog, monkeypatch):
    """Both branches, whatever this CPU is: bf16 runs natively with AMX / AVX512-BF16, else float32 + warning."""
    monkeypatch.setattr("harness.devices.cpu_has_native_bf16", lambda: native)
    with caplog.at_level(logging.WARNING):
        got = choose_dtype("cpu", bf16=True)
    assert got == (torch.bfloat16 if native else torch.float32)
    assert ("30x slower" in caplog.text) is (not native)


def test_native_bf16_detection_agrees_with_the_recorded_cpu_flags():
    from harness.provenance import hardware

    flags = set(hardware()["cpu_flags"])
    assert cpu_has_native_bf16() is bool(flags & {"amx_bf16", "avx512_bf16"})
    assert hardware()["cpu_native_bf16"] is cpu_has_native_bf16()


@pytest.mark.parametrize("double,compute", [(True, "auto"), (False, "bfloat16")])
def test_4bit_double_quantisation_and_compute_dtype(tiny_gemma, double, compute):
    four = load_model(ModelConfig(name=str(tiny_gemma), load_in_4bit=True, bnb_4bit_use_double_quant=double,
                                  bnb_4bit_compute_dtype=compute), "cpu")
    layer = four.model.model.layers[0].mlp.up_proj
    assert layer.weight.quant_state.nested is double  # the quantisation constants are quantised again
    assert layer.compute_dtype == (torch.float32 if compute == "auto" else torch.bfloat16)
    qc = four.model.config.quantization_config
    qc = qc if isinstance(qc, dict) else qc.to_dict()
    assert qc["bnb_4bit_use_double_quant"] is double


def test_clear_errors_for_bad_model_names(tmp_path):
    with pytest.raises(BenchError, match="not an embedded model .* not an existing folder"):
        load_model(ModelConfig(name="./no/such/folder"), "cpu")
    (tmp_path / "empty").mkdir()
    with pytest.raises(BenchError, match="has no config.json"):
        load_model(ModelConfig(name=str(tmp_path / "empty")), "cpu")
    # This machine has no route to the hub: the error must come at once and say what to do instead.
    with pytest.raises(BenchError, match="'someorg/some-model' is not in the local Hugging Face cache and the hub "
                                         "cannot be reached.*embedded models"):
        load_model(ModelConfig(name="someorg/some-model"), "cpu")


def test_offline_flag_gives_the_same_clear_error(monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(BenchError, match="HF_HUB_OFFLINE is set"):
        load_model(ModelConfig(name="Qwen/Qwen2.5-0.5B-Instruct"), "cpu")


@pytest.mark.slow
def test_embedded_smollm2_converts_once_then_loads_from_the_cache(tmp_path, monkeypatch):
    cfg = ModelConfig(name="smollm2-135m", cache_dir=str(tmp_path / "cache"))
    first = load_model(cfg, "cpu")
    folder = ensure_embedded("smollm2-135m", cfg)
    assert (folder / "model.safetensors").is_file() and (folder / "tokenizer_config.json").is_file()
    # The second load must not touch the GGUF at all.
    spec = dataclasses.replace(EMBEDDED["smollm2-135m"], locate=lambda: pytest.fail("GGUF re-converted"))
    monkeypatch.setitem(EMBEDDED, "smollm2-135m", spec)
    second = load_model(cfg, "cpu")
    a, b = first.model.state_dict(), second.model.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    ids = second.tokenizer("English: Good morning.\nTurkish:", return_tensors="pt")
    out = second.model.generate(**ids, max_new_tokens=5, do_sample=False)
    assert out.shape[1] > ids["input_ids"].shape[1]
    assert count_parameters(second.model)[1] > 100e6
