"""The run report: plots and report.md from a hand-built run folder (a baseline, a trained trial, a failure)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from harness import leaderboard, report

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
SIGNATURES = {"bleu": "nrefs:1|case:mixed|eff:no|tok:13a|smooth:exp|version:2.5.1",
              "chrf": "nrefs:1|case:mixed|eff:yes|nc:6|nw:0|space:no|version:2.5.1"}
EXAMPLES = [
    ("The weather is nice today.", "Bugün hava güzel.", "Bugün hava çok güzel."),
    ("Where is the station?", "İstasyon nerede?", "İstasyon nerede?"),
    ("Pipes | bars", "Borular | çubuklar", "Boru | çubuk"),
    ("A fourth sentence.", "Dördüncü cümle.", "Dört cümle."),
]


def _write(path: Path, data) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data), encoding="utf-8")


def _jsonl(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")


def _predictions(path: Path, hyp_suffix: str = "") -> None:
    lines = ["source\treference\thypothesis"] + [f"{s}\t{r}\t{h}{hyp_suffix}" for s, r, h in EXAMPLES]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def _trial(run: Path, name: str, technique: str, label: str, trainable: int, status: dict,
           epochs: list[dict] | None = None, test: dict | None = None, predictions: bool = True) -> Path:
    folder = run / "trials" / name
    _write(folder / "config.json", {"technique": technique, "label": label, "hp": {}, "model": "tiny-llama",
                                    "trainable_params": trainable, "total_params": 1_000_000,
                                    "trainable_pct": trainable / 1e4, "device": "cpu", "dtype": "float32"})
    _write(folder / "status.json", status)
    if epochs is not None:
        _jsonl(folder / "metrics.jsonl", epochs)
    if test is not None:
        _write(folder / "test_metrics.json", {**test, "test_size": 4, "test_set": "embedded test",
                                              "signatures": SIGNATURES})
    if predictions:
        _predictions(folder / "predictions.tsv")
    return folder


def epoch_row(epoch: int, train_loss: float | None, eval_loss: float, bleu: float, chrf: float) -> dict:
    row = {"epoch": epoch, "step": epoch * 4, "eval_loss": eval_loss, "eval_ppl": 2.718 ** eval_loss,
           "bleu": bleu, "chrf": chrf, "chrf_pp": chrf - 1, "tokens_per_s": 900.0, "train_seconds": 12.5 * epoch,
           "peak_memory_mb": 512.0}
    if train_loss is not None:
        row.update(train_loss=train_loss, train_ppl=2.718 ** train_loss)
    return row


@pytest.fixture()
def run_dir(tmp_path) -> Path:
    run = tmp_path / "results" / "run1"
    _write(run / "run.json", {"config": {"model": {"name": "tiny-llama"}, "data": {"dataset": "embedded"},
                                         "run": {"metric": "chrf"}}})
    _trial(run, "t-base", "base", "zero-shot", 0, {"status": "ok", "best_epoch": 0, "epochs_done": 0},
           [epoch_row(0, None, 4.0, 1.0, 10.0)], {"bleu": 1.2, "chrf": 11.0, "chrf_pp": 10.0, "epoch": 0})
    _trial(run, "t-lora", "lora", "r=8 alpha=16", 20_000, {"status": "ok", "best_epoch": 2, "epochs_done": 2},
           [epoch_row(1, 3.5, 3.0, 4.0, 20.0), epoch_row(2, 2.5, 2.6, 6.0, 25.0)],
           {"bleu": 7.0, "chrf": 26.0, "chrf_pp": 24.0, "epoch": 2})
    _trial(run, "t-prefix", "prefix_tuning", "vt=20", 5_000,
           {"status": "failed", "epochs_done": 0, "error": "OutOfMemoryError: CUDA out of memory"},
           predictions=False)
    return run


def _assert_png(path: Path) -> None:
    assert path.is_file() and path.stat().st_size > 1000, path
    assert path.read_bytes()[:8] == PNG_MAGIC, path


def test_report_has_plots_tables_and_examples(run_dir):
    board = leaderboard.build([run_dir])
    path = report.write_report(run_dir, board)
    assert path == run_dir / "report.md"
    for name in ("learning_curves.png", "quality_per_epoch.png", "pareto.png"):
        _assert_png(run_dir / "report" / name)
    text = path.read_text(encoding="utf-8")
    for rel in ("report/learning_curves.png", "report/quality_per_epoch.png", "report/pareto.png"):
        assert f"]({rel})" in text
    for technique in ("base", "lora", "prefix_tuning"):
        assert technique in text
    # the leaderboard as a github table, its footer (signature) and the failure line
    table = [line for line in text.splitlines() if line.startswith("|") and "technique" in line]
    assert table and "chrF" in table[0]
    assert SIGNATURES["chrf"] in text and "ranked by test chrf" in text
    assert "OutOfMemoryError: CUDA out of memory" in text
    # the per-epoch table
    assert "val chrF" in text
    # three examples per trial that has predictions, the fourth left out, '|' escaped
    assert text.count("| The weather is nice today. | Bugün hava güzel. | Bugün hava çok güzel. |") == 2
    assert "| Pipes \\| bars | Borular \\| çubuklar | Boru \\| çubuk |" in text
    assert "A fourth sentence." not in text
    assert "(no test predictions)" in text  # the failed trial


def test_publish_writes_the_report(run_dir):
    leaderboard.publish(run_dir)
    assert (run_dir / "report.md").is_file() and (run_dir / "leaderboard.md").is_file()
    _assert_png(run_dir / "report" / "pareto.png")


def test_partial_and_empty_runs_do_not_raise(tmp_path):
    empty = tmp_path / "results" / "empty"
    _write(empty / "run.json", {"config": {}})
    (empty / "trials").mkdir()
    report.write_report(empty, leaderboard.build([empty]))
    assert "(no trials yet)" in (empty / "report.md").read_text(encoding="utf-8")
    _assert_png(empty / "report" / "learning_curves.png")

    partial = tmp_path / "results" / "partial"
    _write(partial / "run.json", {"config": {}})
    # a trial that is still running: epochs but no test metrics yet, and one with nothing at all
    _trial(partial, "t-lora", "lora", "r=8", 20_000, {"status": "running", "epochs_done": 1},
           [epoch_row(1, 3.5, 3.0, 4.0, 20.0)], predictions=False)
    (partial / "trials" / "t-new").mkdir(parents=True)
    report.write_report(partial, leaderboard.build([partial]))
    text = (partial / "report.md").read_text(encoding="utf-8")
    assert "lora" in text and "status: **running**" in text
    for name in ("learning_curves.png", "quality_per_epoch.png", "pareto.png"):
        _assert_png(partial / "report" / name)


def test_markdown_cells_are_escaped():
    assert report.md_cell("a | b\nc") == "a \\| b c"
    assert report.md_cell(None) == "" and report.md_cell(float("nan")) == ""
