"""benchmarks.seed_agreement: per-seed paired tests between every pair of configurations; a pair that two seeds
both call significant with opposite winners is a disagreement (exit 1)."""

from __future__ import annotations

import json
from pathlib import Path

from benchmarks import seed_agreement

REFS = [f"bu cümle numara {i} ve biraz daha uzun bir metin" for i in range(40)]
GOOD = REFS
BAD = [f"tamamen alakasız kelimeler {i}" for i in range(40)]


def trial(run: Path, name: str, technique: str, seed: int, hyps: list[str]) -> None:
    folder = run / "trials" / name
    folder.mkdir(parents=True)
    (folder / "trial.json").write_text(json.dumps({"technique": technique, "label": "x", "seed": seed, "seeds": 2,
                                                   "config_id": technique}))
    rows = ["source\treference\thypothesis"] + [f"s{i}\t{r}\t{h}" for i, (r, h) in enumerate(zip(REFS, hyps))]
    (folder / "predictions.tsv").write_text("\n".join(rows) + "\n", encoding="utf-8")


def run_with(tmp_path: Path, second_seed_flipped: bool) -> Path:
    run = tmp_path / ("flipped" if second_seed_flipped else "same")
    run.mkdir()
    (run / "run.json").write_text(json.dumps({"config": {"run": {}, "eval": {"bootstrap_resamples": 200}}}))
    trial(run, "a-s42", "lora", 42, GOOD)
    trial(run, "b-s42", "ia3", 42, BAD)
    trial(run, "a-s43", "lora", 43, BAD if second_seed_flipped else GOOD)
    trial(run, "b-s43", "ia3", 43, GOOD if second_seed_flipped else BAD)
    return run


def test_seeds_that_agree_pass(tmp_path, capsys):
    assert seed_agreement.main([str(run_with(tmp_path, False))]) == 0
    out = capsys.readouterr().out
    assert "1 significant in both (1 same winner)" in out and "disagreements: 0" in out


def test_opposite_significant_winners_are_a_disagreement(tmp_path, capsys):
    assert seed_agreement.main([str(run_with(tmp_path, True))]) == 1
    out = capsys.readouterr().out
    assert "DISAGREE ia3 x vs lora x" in out and "disagreements: 1" in out
