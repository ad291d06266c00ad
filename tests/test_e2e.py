"""End to end on the real embedded Gemma 3 270M: a short LoRA budget on the embedded corpus must beat the
zero-shot baseline's test chrF. (Slow: converts the GGUF once per machine, then ~2-3 minutes.)"""

from __future__ import annotations

import pytest

from harness.config import load_config
from harness.io import read_json
from harness.training import TrialSpec, resolve_hyperparameters, run_trial
from techniques import registry


@pytest.mark.slow
def test_lora_on_gemma_beats_the_zero_shot_baseline(tmp_path):
    cfg = load_config("quick", ["data.max_train_samples=48", "train.batch_size=8", "train.epochs=2",
                                "eval.validation_samples=4", "eval.test_samples=24", "data.max_validation_samples=8",
                                "eval.max_new_tokens=48"])
    scores = {}
    for name in ("base", "lora"):
        tech = registry.get(name)
        folder = tmp_path / name
        result = run_trial(TrialSpec(name, name, resolve_hyperparameters(tech, cfg), cfg, folder, "cpu", None))
        assert result["status"] == "ok"
        scores[name] = read_json(folder / "test_metrics.json")
    assert scores["base"]["test_size"] == scores["lora"]["test_size"] == 24
    assert scores["lora"]["chrf"] > scores["base"]["chrf"] + 5, scores
    rows = (tmp_path / "lora" / "predictions.tsv").read_text(encoding="utf-8").splitlines()[1:]
    turkish = sum(any(c in line.split("\t")[2] for c in "çğıöşüİ") for line in rows)
    assert turkish >= len(rows) // 2  # most hypotheses are Turkish, not echoed English
