"""Confidence intervals and paired tests: equal to sacrebleu's own CLI for the same files and seed; ties and
clear wins on a hand-built run folder; the best.json record and the translate note; config validation."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from harness import leaderboard, report, translate
from harness.config import load_config
from harness.errors import BenchError
from harness.significance import intervals, paired_pvalues

ROOT = Path(__file__).resolve().parent.parent
SACREBLEU = [sys.executable, "-m", "sacrebleu"]
PAIRS = [line.split("\t") for line in (ROOT / "harness" / "corpus" / "test.tsv").read_text("utf-8").splitlines()]
SOURCES, REFS = [p[0] for p in PAIRS[:60]], [p[1] for p in PAIRS[:60]]


def degrade(text: str, keep: int) -> str:
    """A worse translation: only every `keep`-th word kept (keep=1: unchanged)."""
    return " ".join(w for i, w in enumerate(text.split()) if i % keep == 0)


GOOD = [degrade(r, 1) if i % 3 else degrade(r, 2) for i, r in enumerate(REFS)]  # mostly the reference
FAIR = [degrade(r, 2) for r in REFS]
POOR = [degrade(r, 3) for r in REFS]
CLOSE = [degrade(h, 2) if i in (1, 2, 4) else h for i, h in enumerate(GOOD)]  # GOOD with three sentences worse


def _files(tmp_path: Path, **systems: list[str]) -> dict[str, Path]:
    paths = {"ref": tmp_path / "ref.txt"}
    paths["ref"].write_text("\n".join(REFS) + "\n", encoding="utf-8")
    for name, hyps in systems.items():
        paths[name] = tmp_path / f"{name}.txt"
        paths[name].write_text("\n".join(hyps) + "\n", encoding="utf-8")
    return paths


def _cli(*args: str | Path) -> str:
    done = subprocess.run([*SACREBLEU, *map(str, args), "-f", "text", "-w", "4"], capture_output=True,
                          text=True, env={"SACREBLEU_SEED": "777", "PATH": ""}, check=True)
    return done.stdout


def test_intervals_equal_sacrebleus_confidence_option(tmp_path):
    paths = _files(tmp_path, fair=FAIR)
    ours = intervals(FAIR, REFS, resamples=300, seed=777)
    for key, flags in (("chrf", ["-m", "chrf"]), ("chrf_pp", ["-m", "chrf", "--chrf-word-order", "2"]),
                       ("bleu", ["-m", "bleu"])):
        out = _cli(paths["ref"], "-i", paths["fair"], *flags, "--confidence", "--confidence-n", "300")
        score, mean, ci = map(float, re.search(r"= ([\d.]+) \(μ = ([\d.]+) ± ([\d.]+)\)", out).groups())
        assert (ours[key].score, ours[key].mean, ours[key].ci) == pytest.approx((score, mean, ci), abs=1e-4), key
        assert ours[key].low == pytest.approx(mean - ci, abs=2e-4) and ours[key].high == pytest.approx(mean + ci,
                                                                                                       abs=2e-4)
    # the seed is the configured one: another seed gives another interval
    assert intervals(FAIR, REFS, resamples=300, seed=778)["chrf"].ci != ours["chrf"].ci


@pytest.mark.parametrize("test, flag", [("paired_bootstrap", "--paired-bs"),
                                        ("approximate_randomization", "--paired-ar")])
def test_pvalues_equal_sacrebleus_paired_tests(tmp_path, test, flag):
    paths = _files(tmp_path, good=GOOD, close=CLOSE, poor=POOR)
    n_flag = "--paired-bs-n" if test == "paired_bootstrap" else "--paired-ar-n"
    out = _cli(paths["ref"], "-i", paths["good"], paths["close"], paths["poor"], "-m", "chrf", flag, n_flag, "400")
    cli = [float(p) for p in re.findall(r"\(p = ([\d.]+)\)", out)]
    ours = paired_pvalues(GOOD, {"close": CLOSE, "poor": POOR}, REFS, "chrf", test, 400, 777)
    assert len(cli) == 2
    assert [ours["close"], ours["poor"]] == pytest.approx(cli, abs=1e-4)
    assert ours["poor"] < 0.05  # a clearly worse system differs
    if test == "paired_bootstrap":  # a close one does not (sacrebleu's randomization counts it as different)
        assert ours["close"] > 0.05


def test_identical_hypotheses_have_p_one():
    assert paired_pvalues(FAIR, {"copy": list(FAIR)}, REFS, "chrf", "paired_bootstrap", 200, 1) == {"copy": 1.0}
    assert paired_pvalues(FAIR, {"copy": list(FAIR)}, REFS, "bleu", "approximate_randomization", 200, 1) == {
        "copy": 1.0}


# ------------------------------------------------------------------------------------ a hand-built run


def _trial(run: Path, name: str, technique: str, trainable: int, hyps: list[str] | None, sources=SOURCES,
           refs=REFS, status: str = "ok", seed: int | None = None, config_id: str | None = None) -> None:
    folder = run / "trials" / name
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps({
        "technique": technique, "label": f"{technique}-hp", "model": "tiny", "trainable_params": trainable,
        "total_params": 1000, "data": {"dataset": "embedded", "sha256": "abc", "validation_used": 24}}))
    (folder / "trial.json").write_text(json.dumps({"seed": seed, "config_id": config_id or name}))
    (folder / "status.json").write_text(json.dumps({"status": status, "best_epoch": 1}))
    (folder / "metrics.jsonl").write_text(json.dumps({"epoch": 1, "eval_loss": 2.0, "chrf": 10.0}) + "\n")
    if trainable:
        (folder / "adapter").mkdir()
        (folder / "adapter" / "adapter_config.json").write_text("{}")
    if hyps is not None:
        from harness.significance import sacrebleu_metrics

        scores = {k: m.corpus_score(hyps, [refs]).score for k, m in sacrebleu_metrics().items()}
        (folder / "test_metrics.json").write_text(json.dumps({**scores, "test_size": len(hyps), "test_set": "t",
                                                              "signatures": {}}))
        lines = ["source\treference\thypothesis"] + [f"{s}\t{r}\t{h}" for s, r, h in zip(sources, refs, hyps)]
        (folder / "predictions.tsv").write_text("\n".join(lines) + "\n", encoding="utf-8")


def _run(tmp_path: Path, name: str = "run1", **run_cfg) -> Path:
    run = tmp_path / "results" / name
    run.mkdir(parents=True)
    cfg = {"run": {"metric": "chrf", **run_cfg}, "eval": {"bootstrap_resamples": 300, "bootstrap_seed": 5}}
    (run / "run.json").write_text(json.dumps({"config": cfg}))
    return run


def _row(board, technique: str) -> dict:
    return board.frame[board.frame["technique"] == technique].iloc[0].to_dict()


def test_identical_rows_tie_and_a_clearly_better_row_does_not(tmp_path):
    run = _run(tmp_path)
    _trial(run, "t-base", "base", 0, POOR)
    _trial(run, "t-a", "lora", 10, GOOD)
    _trial(run, "t-b", "dora", 10, list(GOOD))  # the same translations: a tie
    _trial(run, "t-c", "ia3", 10, FAIR)
    board = leaderboard.build([run])
    a, b, c, base = (_row(board, t) for t in ("lora", "dora", "ia3", "base"))
    assert [a["rank_label"], b["rank_label"]] == ["1=", "1="]
    assert b["p_vs_first"] == 1.0 and b["tied_with_first"]
    assert c["rank"] == 3 and c["rank_label"] == "3" and c["p_vs_first"] < 0.05
    assert base["rank_label"] == "4" and a["p_vs_baseline"] < 0.05
    # the intervals on every score, in the table and the files
    assert a["chrf_low"] < a["chrf"] < a["chrf_high"] and a["bleu_ci"] > 0
    text = board.render()
    assert re.search(rf"1=\s+tiny\s+lora .*{a['chrf']:.1f} ± {a['chrf_ci']:.1f}", text)
    assert "300 resamples, seed 5" in text and "p >= 0.05" in text
    assert "best epoch: lowest eval loss over all 24 validation pairs" in text
    leaderboard.write_files(board, run)
    header = (run / "leaderboard.csv").read_text().splitlines()[0].split(",")
    assert {"chrf_low", "chrf_high", "bleu_low", "bleu_high", "p_vs_first", "p_vs_baseline"} <= set(header)
    # best.json: the best is not significantly ahead of its (identical) runner-up, and translate says so
    best = leaderboard.update_best(board, run.parent)["overall"]
    assert best["significant_vs_runner_up"] is False and best["p_vs_runner_up"] == 1.0
    assert "not significantly better than the runner-up" in translate.tie_note(best)
    # report.md: the technique x technique p-value table
    path = report.write_report(run, board)
    md = path.read_text(encoding="utf-8")
    assert "## Significance" in md and f"| {c['p_vs_first']:.3f}" in md.replace("**", "")


def test_a_significant_lead_is_recorded_and_needs_no_note(tmp_path):
    run = _run(tmp_path)
    _trial(run, "t-a", "lora", 10, GOOD)
    _trial(run, "t-c", "ia3", 10, POOR)
    board = leaderboard.build([run])
    assert list(board.frame["rank_label"]) == ["1", "2"]
    best = leaderboard.update_best(board, run.parent)["overall"]
    assert best["significant_vs_runner_up"] is True and best["p_vs_runner_up"] < 0.05
    assert translate.tie_note(best) == ""


def test_rows_on_different_sentences_are_not_compared(tmp_path):
    run = _run(tmp_path)
    _trial(run, "t-a", "lora", 10, GOOD)
    _trial(run, "t-c", "ia3", 10, POOR[:30], sources=SOURCES[:30], refs=REFS[:30])
    board = leaderboard.build([run])
    other = _row(board, "ia3")
    assert other["rank_label"] == "2" and other["p_vs_first"] != other["p_vs_first"]  # NaN: no test
    assert "run1/t-c: not compared with #1 (scored on different test sentences)" in board.render()


def test_seeds_are_pooled_and_the_baseline_is_repeated_per_seed(tmp_path):
    run = _run(tmp_path, significance_test="approximate_randomization")
    _trial(run, "t-base", "base", 0, POOR)
    _trial(run, "t-a-s1", "lora", 10, GOOD, seed=1, config_id="a")
    _trial(run, "t-a-s2", "lora", 10, FAIR, seed=2, config_id="a")
    board = leaderboard.build([run])
    assert len(board.frame) == 2 and len(board.seeds) == 3
    lora = _row(board, "lora")
    per_seed = board.seeds[board.seeds["technique"] == "lora"]["chrf"]
    assert lora["seeds"] == 2 and lora["chrf_mean"] == pytest.approx(per_seed.mean())
    assert lora["chrf_std"] == pytest.approx(per_seed.std(ddof=1))
    pooled = intervals(GOOD + FAIR, REFS + REFS, 300, 5)["chrf"]  # seed order: seed 1 then seed 2
    assert lora["chrf"] == pytest.approx(pooled.score) and lora["chrf_ci"] == pytest.approx(pooled.ci)
    expected = paired_pvalues(POOR + POOR, {"a": GOOD + FAIR}, REFS + REFS, "chrf", "approximate_randomization",
                              300, 5)["a"]
    assert lora["p_vs_baseline"] == pytest.approx(expected)
    text = board.render()
    assert "chrF seeds" in text and f"{lora['chrf_mean']:.1f} ± {lora['chrf_std']:.1f}" in text
    assert "per seed:" in text and "approximate randomization" in text


@pytest.mark.parametrize("override, field", [
    ("run.seeds=0", "run.seeds"),
    ("run.significance_level=1.5", "run.significance_level"),
    ("eval.bootstrap_resamples=10", "eval.bootstrap_resamples"),
    ("eval.selection=chrf", "eval.validation_samples"),  # 8 translated sentences cannot choose an epoch
    ("run.significance_test=t_test", "run.significance_test"),
])
def test_bad_uncertainty_settings_name_the_field(override, field):
    with pytest.raises(BenchError, match=re.escape(field)):
        load_config("default", [override])


def test_chrf_selection_on_enough_sentences_is_accepted():
    cfg = load_config("default", ["eval.selection=chrf", "eval.validation_samples=100", "run.seeds=3"])
    assert cfg.eval.selection == "chrf" and cfg.run.seeds == 3
