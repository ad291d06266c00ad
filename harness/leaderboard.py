"""Every trial of a run (or of several runs) -> one pandas DataFrame -> ranked tables and the best adapter.

Writes leaderboard.md / .csv / .json and epochs.md / .csv into the run folder, and keeps `results/best.json`,
which points at the best adapter per (model, dataset) and overall. `python -m harness.leaderboard` shows a
run's table again.
"""

from __future__ import annotations

import argparse
import logging
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
from tabulate import tabulate

from harness.errors import BenchError
from harness.io import atomic_write_json, atomic_write_text, read_json, read_jsonl
from harness.provenance import hardware_line

log = logging.getLogger(__name__)

BEST_FILE = "best.json"
HIGHER_IS_BETTER = {"chrf": True, "bleu": True, "eval_loss": False}
STATUS_ORDER = {"ok": 0, "stopped": 1, "diverged": 2, "failed": 3, "running": 4, "interrupted": 4}

COLUMNS = ["rank", "model", "technique", "params", "trainable", "trainable_pct", "epochs", "best_epoch",
           "eval_loss", "eval_ppl", "bleu", "chrf", "chrf_pp", "train_s", "tokens_per_s", "peak_mem_mb",
           "weight_mem_mb", "device", "status"]


@dataclass
class Board:
    frame: pd.DataFrame  # one row per trial, ranked
    epochs: pd.DataFrame  # one row per (trial, epoch)
    metric: str
    footer: list[str]  # signatures and test-set size, printed under every table

    def table(self, model: str | None = None, fmt: str = "simple") -> str:
        frame = self.frame if model is None else self.frame[self.frame["model"] == model]
        shown = frame[COLUMNS].copy()
        shown["trainable"] = shown["trainable"].map(_count)
        shown["trainable_pct"] = shown["trainable_pct"].map(lambda v: "" if pd.isna(v) else f"{v:.3f}%")
        for col in ("epochs", "best_epoch", "rank"):
            shown[col] = shown[col].map(lambda v: "-" if pd.isna(v) else str(int(v)))
        headers = ["#", "model", "technique", "hyper-parameters", "trainable", "% of base", "epochs", "best ep",
                   "eval loss", "eval ppl", "BLEU", "chrF", "chrF++", "train s", "tok/s", "peak MB", "weights MB",
                   "device", "status"]
        return tabulate(_cells(shown), headers=headers, tablefmt=fmt, floatfmt=".2f", missingval="-")

    def render(self, model: str | None = None, fmt: str = "simple") -> str:
        """The ranked table per model (grouped when a run compares base models), then the footer."""
        models = [model] if model else list(dict.fromkeys(self.frame["model"]))
        parts = []
        for name in models:
            if len(models) > 1 or model:
                parts.append(f"model: {name}")
            parts.append(self.table(name, fmt))
            parts.append("")
        failures = self.frame[self.frame["error"].fillna("") != ""]
        for _, row in failures.iterrows():
            parts.append(f"{row['trial']}: {row['status']}: {row['error']}")
        parts.extend(self.footer)
        return "\n".join(parts).rstrip() + "\n"

    def epoch_table(self, fmt: str = "simple") -> str:
        cols = ["model", "technique", "params", "epoch", "train_loss", "eval_loss", "eval_ppl", "bleu", "chrf"]
        if self.epochs.empty:
            return "(no epochs recorded)\n"
        headers = ["model", "technique", "hyper-parameters", "epoch", "train loss", "eval loss", "eval ppl",
                   "val BLEU", "val chrF"]
        return tabulate(_cells(self.epochs[cols]), headers=headers, tablefmt=fmt, floatfmt=".3f",
                        missingval="-") + "\n"


def _cells(frame: pd.DataFrame) -> list[list[Any]]:
    """Rows for tabulate with NaN as None, which tabulate prints as its missing value ('-')."""
    return [[None if isinstance(v, float) and math.isnan(v) else v for v in row] for row in frame.values.tolist()]


def _count(n: Any) -> str:
    if n is None or (isinstance(n, float) and math.isnan(n)):
        return "-"
    n = int(n)
    return f"{n / 1e6:.2f}M" if n >= 1e6 else f"{n / 1e3:.1f}k" if n >= 1e3 else str(n)


def _read(path: Path) -> dict[str, Any]:
    return read_json(path) if path.is_file() else {}


def trial_row(folder: Path, metric: str) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """One leaderboard row and the per-epoch rows of a trial folder."""
    trial, config, status = _read(folder / "trial.json"), _read(folder / "config.json"), _read(folder / "status.json")
    test = _read(folder / "test_metrics.json")
    epochs = read_jsonl(folder / "metrics.jsonl")
    best_epoch = status.get("best_epoch", test.get("epoch"))
    best = next((r for r in epochs if r.get("epoch") == best_epoch), epochs[-1] if epochs else {})
    speeds = [r["tokens_per_s"] for r in epochs if r.get("tokens_per_s")]
    technique = config.get("technique") or trial.get("technique", "?")
    row = {
        "trial": folder.name,
        "run": folder.parent.parent.name,
        "model": config.get("model") or trial.get("model", "?"),
        "technique": technique,
        "params": config.get("label") or trial.get("label", ""),
        "trainable": config.get("trainable_params"),
        "trainable_pct": config.get("trainable_pct"),
        "total_params": config.get("total_params"),
        "epochs": status.get("epochs_done", len([r for r in epochs if r.get("epoch", 0) > 0])),
        "best_epoch": best_epoch,
        "eval_loss": best.get("eval_loss"),
        "eval_ppl": best.get("eval_ppl"),
        "bleu": test.get("bleu"),
        "chrf": test.get("chrf"),
        "chrf_pp": test.get("chrf_pp"),
        "val_chrf": best.get("chrf"),
        "train_s": epochs[-1].get("train_seconds") if epochs else None,
        "tokens_per_s": sum(speeds) / len(speeds) if speeds else None,
        "peak_mem_mb": max((r.get("peak_memory_mb") or 0 for r in epochs), default=None) or None,
        "weight_mem_mb": config.get("weight_memory_mb"),
        "device": config.get("device") or trial.get("device"),
        "dtype": config.get("dtype"),
        "status": status.get("status", "running"),
        "error": status.get("error", ""),
        "adapter": str((folder / "adapter").resolve()) if (folder / "adapter" / "adapter_config.json").is_file() else "",
        "test_size": test.get("test_size"),
        "test_set": test.get("test_set"),
        "signatures": test.get("signatures", {}),
        "dataset_sha256": (config.get("data") or {}).get("sha256"),
        "dataset": (config.get("data") or {}).get("dataset"),
        "hp": config.get("hp") or trial.get("hp"),
        "commit": config.get("commit"),
    }
    per_epoch = [{"model": row["model"], "technique": technique, "params": row["params"], "trial": folder.name,
                  **{k: r.get(k) for k in ("epoch", "train_loss", "eval_loss", "eval_ppl", "bleu", "chrf")}}
                 for r in epochs]
    return row, per_epoch


def build(run_dirs: list[Path], metric: str | None = None) -> Board:
    """Collect and rank every trial of the given runs."""
    rows, epochs, machines = [], [], []
    for run_dir in run_dirs:
        run = _read(run_dir / "run.json")
        metric = metric or run.get("config", {}).get("run", {}).get("metric", "chrf")
        if run.get("hardware") and hardware_line(run["hardware"]) not in machines:
            machines.append(hardware_line(run["hardware"]))
        for folder in sorted((run_dir / "trials").glob("*")):
            if folder.is_dir():
                row, per_epoch = trial_row(folder, metric)
                rows.append(row)
                epochs.extend(per_epoch)
    metric = metric or "chrf"
    frame = pd.DataFrame(rows, columns=list(rows[0]) if rows else COLUMNS + ["trial", "error", "adapter"])
    if frame.empty:
        frame["rank"] = []
        return Board(frame, pd.DataFrame(epochs), metric, ["(no trials yet)"])
    rank_key = "eval_loss" if metric == "eval_loss" else metric
    frame["_status"] = frame["status"].map(lambda s: STATUS_ORDER.get(s, 5))
    frame["_value"] = frame[rank_key].astype(float)
    frame = frame.sort_values(["_status", "_value"], ascending=[True, not HIGHER_IS_BETTER[metric]],
                              na_position="last")
    frame = frame.drop(columns=["_status", "_value"]).reset_index(drop=True)
    frame["rank"] = range(1, len(frame) + 1)
    epoch_frame = pd.DataFrame(epochs)
    if not epoch_frame.empty:
        epoch_frame = epoch_frame.sort_values(["model", "technique", "trial", "epoch"]).reset_index(drop=True)
    return Board(frame, epoch_frame, metric, footer(frame, metric) + machines)


def footer(frame: pd.DataFrame, metric: str) -> list[str]:
    lines = [f"ranked by test {metric}" if metric != "eval_loss" else "ranked by validation eval loss"]
    with_test = frame[frame["test_size"].notna()]
    if with_test.empty:
        return lines
    first = with_test.iloc[0]
    sizes = sorted({int(s) for s in with_test["test_size"]})
    lines.append(f"BLEU / chrF / chrF++: sacrebleu corpus scores on {', '.join(map(str, sizes))} sentences of "
                 f"{first['test_set']}; eval loss / ppl: validation, target tokens only")
    for key, sig in (first["signatures"] or {}).items():
        lines.append(f"  {key}: {sig}")
    return lines


def write_files(board: Board, run_dir: Path) -> None:
    drop = ["signatures", "hp"]
    atomic_write_text(run_dir / "leaderboard.md", board.render(fmt="github"))
    atomic_write_text(run_dir / "leaderboard.csv", board.frame.drop(columns=drop).to_csv(index=False))
    atomic_write_text(run_dir / "leaderboard.json", board.frame.to_json(orient="records", indent=2))
    atomic_write_text(run_dir / "epochs.md", board.epoch_table(fmt="github"))
    atomic_write_text(run_dir / "epochs.csv", board.epochs.to_csv(index=False))


# ---------------------------------------------------------------------------------------- best adapters


def _number(v: Any) -> float | None:
    return None if v is None or (isinstance(v, float) and math.isnan(v)) else float(v)


def _better(a: float | None, b: float | None, metric: str) -> bool:
    a, b = _number(a), _number(b)
    if a is None:
        return False
    if b is None:
        return True
    return a > b if HIGHER_IS_BETTER[metric] else a < b


def update_best(board: Board, results_dir: Path) -> dict[str, Any]:
    """Point results/best.json at the best adapter per (model, dataset) and overall."""
    path = results_dir / BEST_FILE
    registry = _read(path) or {"by_model_dataset": {}, "overall": None}
    metric = board.metric
    candidates = board.frame[(board.frame["status"].isin(["ok", "stopped"])) & (board.frame["adapter"] != "")]
    for _, row in candidates.iterrows():
        entry = {
            "metric": metric, "value": _number(row[metric]),
            "model": row["model"], "technique": row["technique"], "params": row["params"],
            "adapter": row["adapter"], "run": row["run"], "trial": row["trial"], "bleu": _number(row["bleu"]),
            "chrf": _number(row["chrf"]), "eval_loss": _number(row["eval_loss"]), "dataset": row["dataset"],
            "dataset_sha256": row["dataset_sha256"], "test_size": _number(row["test_size"]), "updated": time.time(),
        }
        if entry["value"] is None:
            continue
        key = f"{row['model']}|{row['dataset']}|{row['dataset_sha256']}"
        current = registry["by_model_dataset"].get(key)
        stale = current is not None and not Path(current["adapter"]).exists()
        if current is None or stale or current.get("metric") != metric or _better(entry["value"], current["value"], metric):
            registry["by_model_dataset"][key] = entry
    alive = [e for e in registry["by_model_dataset"].values() if Path(e["adapter"]).exists()]
    overall = None
    for entry in alive:
        if overall is None or _better(entry["value"], overall["value"], entry["metric"]):
            overall = entry
    registry["overall"] = overall
    atomic_write_json(path, registry)
    return registry


def publish(run_dir: Path) -> Board:
    """Build the run's leaderboard, write its files, update results/best.json, write the report."""
    board = build([run_dir])
    write_files(board, run_dir)
    update_best(board, run_dir.parent)
    try:
        from harness import report

        report.write_report(run_dir, board)
    except Exception as exc:  # noqa: BLE001 - a plotting problem must not hide the leaderboard
        log.warning("the run report could not be written: %s", exc)
    return board


# ----------------------------------------------------------------------------------------------- the CLI


def run_dirs_of(results_dir: Path) -> list[Path]:
    return sorted((p for p in results_dir.glob("*") if (p / "run.json").is_file()), key=lambda p: p.stat().st_mtime)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m harness.leaderboard",
        description="Show the leaderboard of a benchmark run again.",
        epilog="examples:\n  python -m harness.leaderboard --latest\n  python -m harness.leaderboard "
               "results/my-run --epochs\n  python -m harness.leaderboard --all-runs --model gemma-3-270m",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("run_dir", nargs="?", help="a run folder (default: --latest)")
    parser.add_argument("--latest", action="store_true", help="the most recent run under --results-dir")
    parser.add_argument("--all-runs", action="store_true", help="every run under --results-dir in one table")
    parser.add_argument("--results-dir", default="results")
    parser.add_argument("--model", help="only this base model's rows")
    parser.add_argument("--metric", choices=sorted(HIGHER_IS_BETTER), help="rank by this metric")
    parser.add_argument("--epochs", action="store_true", help="also print the per-epoch table")
    parser.add_argument("--format", default="simple", help="tabulate format: simple, github, grid, ...")
    args = parser.parse_args(argv)
    try:
        results = Path(args.results_dir)
        runs = run_dirs_of(results)
        if args.run_dir:
            folder = Path(args.run_dir)
            if not (folder / "run.json").is_file():
                raise BenchError(f"'{args.run_dir}' is not a run folder (no run.json). Runs here: "
                                 f"{', '.join(p.name for p in runs) or 'none'}.")
            selected = [folder]
        elif not runs:
            raise BenchError(f"no runs under '{results}' yet. Start one with: python run_benchmark.py --techniques all")
        else:
            selected = runs if args.all_runs else [runs[-1]]
        board = build(selected, args.metric)
        if args.model and args.model not in set(board.frame["model"]):
            raise BenchError(f"--model: no rows for '{args.model}'; models here: "
                             f"{', '.join(sorted(set(board.frame['model'])))}.")
        print("runs: " + ", ".join(str(p) for p in selected))
        print(board.render(args.model, args.format))
        if args.epochs:
            print(board.epoch_table(args.format))
    except BenchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
