"""Config: YAML presets, overrides and their precedence, and one test per validation rule."""

from __future__ import annotations

import pytest

from harness.config import BenchConfig, config_from_dict, load_config, parse_override, preset_names
from harness.errors import BenchError


def test_default_preset_loads_with_expected_values():
    cfg = load_config()
    assert isinstance(cfg, BenchConfig)
    assert cfg.model.name == "gemma-3-270m"
    assert cfg.data.dataset == "embedded"
    assert "{source}" in cfg.data.prompt_template
    assert {"default", "quick"} <= set(preset_names())


def test_precedence_yaml_then_flags_then_set(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("train:\n  lr: 0.01\n  batch_size: 4\nrun:\n  trials: 2\n")
    cfg = load_config(str(path))
    assert cfg.train.lr == 0.01 and cfg.train.batch_size == 4
    cfg = load_config(str(path), ["train.lr=3e-4"], {"run": {"trials": 7}, "train": {"lr": 0.5}})
    assert cfg.train.lr == pytest.approx(3e-4)  # --set beats the explicit flag, which beats YAML
    assert cfg.run.trials == 7
    assert cfg.train.batch_size == 4


def test_yaml11_exponent_without_dot_is_a_float(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("train:\n  lr: 3e-4\n")  # PyYAML reads this as a string
    assert load_config(str(path)).train.lr == pytest.approx(3e-4)


def test_round_trip_through_dict():
    cfg = load_config("quick", ["per_technique.lora.r=4"])
    again = config_from_dict(cfg.to_dict())
    assert again == cfg


def test_techniques_accept_comma_string():
    cfg = load_config(None, ["run.techniques=lora,prompt_tuning"])
    assert cfg.run.techniques == ["lora", "prompt_tuning"]


@pytest.mark.parametrize(
    "override, expected",
    [
        ("train.lrr=1", "'train.lrr' is unknown. Did you mean 'lr'?"),
        ("trian.lr=1", "'trian' is unknown. Did you mean 'train'?"),
        ("train.lr=-1", "train.lr' is -1.0; the learning rate must be > 0. Fix: --set train.lr=3e-4"),
        ("train.lr=0", "the learning rate must be > 0"),
        ("train.lr=fast", "'train.lr' is 'fast' (str); it must be float"),
        ("train.batch_size=0", "the batch size must be >= 1"),
        ("train.batch_size=2.5", "it must be int"),
        ("train.epochs=0", "at least one epoch"),
        ("peft.r=0", "the LoRA rank must be an integer >= 1"),
        ("peft.num_virtual_tokens=0", "the number of virtual tokens must be an integer >= 1"),
        ("peft.dropout=1.5", "dropout must be in [0, 1)"),
        ("data.max_seq_length=2", "'data.max_seq_length' is 2; it must be >= 8"),
        ("run.device=tpu", "'run.device' is 'tpu'; it must be one of 'auto', 'cpu', 'cuda', 'mps'"),
        ("run.techniques=[lora,dorra]", "'dorra' is not a known technique. Did you mean 'dora'?"),
        ("run.techniques=[lorra]", "Did you mean 'lora'?"),
        ("per_technique.lora.rank=4", "'per_technique.lora.rank' is not a hyper-parameter of 'lora'"),
        ("per_technique.prefix_tuning.lr=-2", "per_technique.prefix_tuning.lr' is -2"),
        ("peft.alpah=4", "'peft.alpah' is not a shared hyper-parameter of any technique. Did you mean 'alpha'?"),
        ("peft.lr=0.1", "'peft.lr' is not a shared hyper-parameter of any technique. Did you mean 'r'? Shared"),
        ("per_technique.lora_plus.loraplus_lr_ratio=0.5", "the LoRA+ learning-rate ratio of B to A must be >= 1"),
        ("per_technique.adalora.tinit=2", "'per_technique.adalora.tinit' is 2; it must be a fraction in [0, 1)"),
        ("per_technique.ia3.r=4", "not a hyper-parameter of 'ia3'. Did you mean 'lr'? Its hyper-parameters: lr."),
        ("per_technique.vera.r=0", "'per_technique.vera.r' is 0; the LoRA rank must be an integer >= 1"),
        ("per_technique.lora-family.r=4", "'lora-family' is a group (lora, qlora, dora"),
        ("model.bnb_4bit_quant_type=int8", "one of 'nf4', 'fp4'"),
        ("data.prompt_template=Translate", "must contain the placeholder {source}"),
        ("train.weight_decay=-0.1", "it must be >= 0"),
        ("eval.test_samples=0", "'eval.test_samples' is 0"),
        ("run.search=grid", "one of 'none', 'optuna'"),
        ("model.fp16=maybe", "it must be bool"),
    ],
)
def test_validation_rules(override, expected):
    with pytest.raises(BenchError) as info:
        load_config(None, [override])
    assert expected in str(info.value)
    assert "\n" not in str(info.value)  # one paragraph


def test_fp16_and_bf16_together_is_refused():
    with pytest.raises(BenchError, match="both true"):
        load_config(None, ["model.fp16=true", "model.bf16=true"])


def test_set_without_equals_is_refused():
    with pytest.raises(BenchError, match="has no '='"):
        parse_override("train.lr")


def test_missing_and_broken_config_files(tmp_path):
    with pytest.raises(BenchError, match="neither a preset nor a file. Presets: .*default"):
        load_config("nosuchpreset")
    with pytest.raises(BenchError, match="does not exist"):
        load_config(str(tmp_path / "missing.yaml"))
    bad = tmp_path / "bad.yaml"
    bad.write_text("train:\n  lr: [1, 2\n")
    with pytest.raises(BenchError, match="not valid YAML at line"):
        load_config(str(bad))
    listy = tmp_path / "list.yaml"
    listy.write_text("- a\n- b\n")
    with pytest.raises(BenchError, match="must hold a mapping"):
        load_config(str(listy))
    section = tmp_path / "section.yaml"
    section.write_text("train: 5\n")
    with pytest.raises(BenchError, match="section 'train' must be a mapping"):
        load_config(str(section))
