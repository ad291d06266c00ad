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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
from tabulate import tabulate

from harness.checkpoint import TRAINABLE
from harness.errors import BenchError
from harness.io import atomic_write_json, atomic_write_text, read_json, read_jsonl
from harness.provenance import hardware_line

log = logging.getLogger(__name__)

BEST_FILE = "best.json"
HIGHER_IS_BETTER = {"chrf": True, "bleu": True, "eval_loss": False}
STATUS_ORDER = {"ok": 0, "stopped": 1, "diverged": 2, "failed": 3, "running": 4, "interrupted": 4}

COLUMNS = ["rank", "model", "technique", "params", "trainable", "trainable_pct", "adapter_mb", "epochs",
           "best_epoch", "eval_loss", "eval_ppl", "bleu", "chrf", "chrf_pp", "train_s", "tokens_per_s", "peak_mem_mb",
           "weight_mem_mb", "device", "status"]
SCORES = {"bleu": "BLEU", "chrf": "chrF", "chrf_pp": "chrF++"}
OK = ("ok", "stopped")
# Mean over a configuration's seeds (costs and losses); the test scores are pooled instead (see `pool`).
AVERAGED = ("eval_loss", "eval_ppl", "val_chrf", "train_s", "tokens_per_s", "peak_mem_mb")


@dataclass
class Uncertainty:
    """How a board states its uncertainty (run.json's eval / run sections, or the config defaults)."""

    resamples: int = 1000
    seed: int = 12345
    test: str = "paired_bootstrap"
    level: float = 0.05
    selection: str = "eval_loss"
    steps_per_epoch: int | None = None  # train.steps_per_epoch: what an "epoch" of the board is

    @classmethod
    def of(cls, config: dict[str, Any]) -> "Uncertainty":
        e, r = config.get("eval") or {}, config.get("run") or {}
        base = cls()
        return cls(e.get("bootstrap_resamples", base.resamples), e.get("bootstrap_seed", base.seed),
                   r.get("significance_test", base.test), r.get("significance_level", base.level),
                   e.get("selection", base.selection), (config.get("train") or {}).get("steps_per_epoch"))


@dataclass
class Texts:
    """A row's test sentences: every seed's translations concatenated in seed order."""

    sources: list[str]
    references: list[str]
    hypotheses: list[str]
    seed_free: bool  # a model that trains nothing: its translations are the same for every seed


@dataclass
class Board:
    frame: pd.DataFrame  # one row per configuration (its seeds pooled), ranked
    epochs: pd.DataFrame  # one row per (trial, epoch)
    metric: str
    footer: list[str]  # signatures and test-set size, printed under every table
    seeds: pd.DataFrame = field(default_factory=pd.DataFrame)  # one row per trial (= configuration x seed)
    texts: dict[str, Texts] = field(default_factory=dict)  # by the frame's 'config' key
    uncertainty: Uncertainty = field(default_factory=Uncertainty)

    def table(self, model: str | None = None, fmt: str = "simple") -> str:
        frame = self.frame if model is None else self.frame[self.frame["model"] == model]
        shown = pd.DataFrame({"#": frame["rank_label"] if "rank_label" in frame else frame["rank"]})
        for col, head in (("model", "model"), ("technique", "technique"), ("params", "hyper-parameters")):
            shown[head] = frame[col]
        several = "seeds" in frame and (pd.to_numeric(frame["seeds"], errors="coerce") > 1).any()
        if several:
            shown["seeds"] = frame["seeds"].map(lambda v: "-" if pd.isna(v) else str(int(v)))
        shown["trainable"] = frame["trainable"].map(_count)
        shown["% of base"] = frame["trainable_pct"].map(lambda v: "" if pd.isna(v) else f"{v:.3f}%")
        shown["adapter MB"] = frame["adapter_mb"] if "adapter_mb" in frame else None
        for col, head in (("epochs", "epochs"), ("best_epoch", "best ep")):
            shown[head] = frame[col].map(lambda v: "-" if pd.isna(v) else str(int(v)))
        shown["eval loss"], shown["eval ppl"] = frame["eval_loss"], frame["eval_ppl"]
        for key, head in SCORES.items():
            shown[head] = [_plus_minus(row.get(key), row.get(f"{key}_ci")) for _, row in frame.iterrows()]
        if several:
            key = self.metric if self.metric in SCORES else "chrf"
            shown[f"{SCORES[key]} seeds"] = [_plus_minus(row.get(f"{key}_mean"), row.get(f"{key}_std"))
                                              for _, row in frame.iterrows()]
        for col, head in (("p_vs_first", "p vs #1"), ("p_vs_baseline", "p vs base")):
            shown[head] = frame[col].map(_p) if col in frame else "-"
        for col, head in (("train_s", "train s"), ("tokens_per_s", "tok/s"), ("peak_mem_mb", "peak MB"),
                          ("weight_mem_mb", "weights MB"), ("device", "device"), ("status", "status")):
            shown[head] = frame[col]
        return tabulate(_cells(shown), headers=list(shown.columns), tablefmt=fmt, floatfmt=".2f", missingval="-")

    def seed_table(self, fmt: str = "simple") -> str:
        """Every seed of every configuration, each with its own test scores and intervals."""
        frame = self.seeds
        shown = pd.DataFrame({"model": frame["model"], "technique": frame["technique"],
                              "hyper-parameters": frame["params"],
                              "seed": frame["seed"].map(lambda v: "-" if pd.isna(v) else str(int(v))),
                              "best ep": frame["best_epoch"].map(lambda v: "-" if pd.isna(v) else str(int(v))),
                              "eval loss": frame["eval_loss"]})
        for key, head in SCORES.items():
            shown[head] = [_plus_minus(row.get(key), row.get(f"{key}_ci")) for _, row in frame.iterrows()]
        shown["status"] = frame["status"]
        return tabulate(_cells(shown), headers=list(shown.columns), tablefmt=fmt, floatfmt=".3f", missingval="-")

    def render(self, model: str | None = None, fmt: str = "simple") -> str:
        """The ranked table per model (grouped when a run compares base models), then the footer."""
        models = [model] if model else list(dict.fromkeys(self.frame["model"]))
        parts = []
        for name in models:
            if len(models) > 1 or model:
                parts.append(f"model: {name}")
            parts.append(self.table(name, fmt))
            parts.append("")
        failures = self.seeds[self.seeds["error"].fillna("") != ""] if "error" in self.seeds else self.seeds[:0]
        for _, row in failures.iterrows():
            parts.append(f"{row['trial']}: {row['status']}: {row['error']}")
        if "seeds" in self.frame and (pd.to_numeric(self.frame["seeds"], errors="coerce") > 1).any():
            parts += ["", "per seed:", self.seed_table(fmt), ""]
        parts.extend(self.footer)
        return "\n".join(parts).rstrip() + "\n"

    def epoch_table(self, fmt: str = "simple") -> str:
        cols = ["model", "technique", "params", "epoch", "step", "train_loss", "eval_loss", "eval_ppl", "bleu", "chrf"]
        if self.epochs.empty:
            return "(no epochs recorded)\n"
        headers = ["model", "technique", "hyper-parameters", "epoch", "step", "train loss", "eval loss", "eval ppl",
                   "val BLEU", "val chrF"]
        if "seed" in self.epochs and self.epochs["seed"].nunique() > 1:
            cols, headers = cols[:3] + ["seed"] + cols[3:], headers[:3] + ["seed"] + headers[3:]
        return tabulate(_cells(self.epochs[cols]), headers=headers, tablefmt=fmt, floatfmt=".3f",
                        missingval="-") + "\n"

    def pvalues(self, first: str, others: list[str], metric: str | None = None) -> dict[str, float]:
        """p-values of the `others` configurations against `first` (keys of `texts`), on the same sentences
        only: a pair scored on different sentences is left out (it cannot be compared)."""
        from harness.significance import paired_pvalues

        metric = metric or (self.metric if self.metric in SCORES else "chrf")
        u = self.uncertainty
        out: dict[str, float] = {}
        groups: dict[tuple, dict[str, list[str]]] = {}
        for other in others:
            aligned = align(self.texts.get(first), self.texts.get(other))
            if aligned is None:
                continue
            ref_hyps, hyps, refs = aligned
            groups.setdefault((tuple(refs), tuple(ref_hyps)), {})[other] = hyps
        for (refs, ref_hyps), systems in groups.items():
            out.update(paired_pvalues(list(ref_hyps), systems, list(refs), metric, u.test, u.resamples, u.seed))
        return out


def align(a: Texts | None, b: Texts | None) -> tuple[list[str], list[str], list[str]] | None:
    """(a's hypotheses, b's hypotheses, references) on the same sentences, or None when they were scored on
    different sentences. A seed-free row (the zero-shot baseline) is repeated once per seed of the other."""
    if a is None or b is None:
        return None
    pairs_a, pairs_b = list(zip(a.sources, a.references)), list(zip(b.sources, b.references))
    if pairs_a == pairs_b:
        return a.hypotheses, b.hypotheses, a.references
    for x, y, swap in ((a, b, False), (b, a, True)):
        px, py = list(zip(x.sources, x.references)), list(zip(y.sources, y.references))
        if x.seed_free and px and len(py) % len(px) == 0 and px * (len(py) // len(px)) == py:
            repeated = x.hypotheses * (len(py) // len(px))
            return (y.hypotheses, repeated, y.references) if swap else (repeated, y.hypotheses, y.references)
    return None


def _plus_minus(value: Any, spread: Any) -> str | None:
    value, spread = _number(value), _number(spread)
    if value is None:
        return None
    return f"{value:.1f}" if spread is None else f"{value:.1f} ± {spread:.1f}"


def _p(value: Any) -> str:
    value = _number(value)
    return "-" if value is None else f"{value:.3f}"


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


def read_predictions(folder: Path) -> list[tuple[str, str, str]]:
    """A trial's predictions.tsv as (source, reference, hypothesis) rows, in test order."""
    path = folder / "predictions.tsv"
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text(encoding="utf-8").split("\n")[1:]:
        if line:
            cells = (line.split("\t") + ["", "", ""])[:3]
            rows.append((cells[0], cells[1], cells[2]))
    return rows


def adapter_mb(folder: Path) -> float | None:
    """Size on disk of what a deployer ships: the exported weights, not the resume copy of trainable tensors."""
    files = [f for f in folder.glob("*.safetensors") if f.name != TRAINABLE] if folder.is_dir() else []
    return round(sum(f.stat().st_size for f in files) / 2**20, 3) if files else None


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
        "adapter_mb": adapter_mb(folder / "adapter"),
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
        "validation_used": (config.get("data") or {}).get("validation_used"),
        "validation_translated": (config.get("data") or {}).get("validation_translated"),
        "hp": config.get("hp") or trial.get("hp"),
        "commit": config.get("commit"),
        "seed": trial.get("seed", ((config.get("config") or {}).get("train") or {}).get("seed")),
        # Seeds of one configuration share their Ray trial id; older runs have one folder per configuration.
        "config": f"{folder.parent.parent.name}/{trial.get('config_id') or folder.name}",
    }
    per_epoch = [{"model": row["model"], "technique": technique, "params": row["params"], "trial": folder.name,
                  "seed": row["seed"],
                  **{k: r.get(k) for k in ("epoch", "step", "train_loss", "eval_loss", "eval_ppl", "bleu", "chrf")}}
                 for r in epochs]
    return row, per_epoch


def _with_intervals(row: dict[str, Any], predictions: list[tuple[str, str, str]], u: Uncertainty) -> None:
    """Add each score's bootstrap interval (`<key>_ci`, `_low`, `_high`) from the row's test translations."""
    from harness.significance import intervals

    if not predictions:
        return
    refs, hyps = [p[1] for p in predictions], [p[2] for p in predictions]
    for key, interval in intervals(hyps, refs, u.resamples, u.seed).items():
        if _number(row.get(key)) is None:
            row[key] = interval.score
        row[f"{key}_ci"], row[f"{key}_low"], row[f"{key}_high"] = interval.ci, interval.low, interval.high


def pool(members: list[dict[str, Any]], predictions: dict[str, list[tuple[str, str, str]]],
         u: Uncertainty) -> tuple[dict[str, Any], Texts | None]:
    """One configuration row from its seeds: the test scores and intervals of all seeds' translations
    concatenated (each test sentence once per seed), their mean and standard deviation over seeds, costs and
    losses averaged; its adapter is the seed with the best selection signal (validation only, never test)."""
    scored = [m for m in members if m["status"] in OK and predictions.get(m["trial"])]
    pick = _pick(scored or members, u.selection)
    row = dict(pick)
    row["seeds"] = len(members)
    row["seeds_scored"] = len(scored)
    if len(members) == 1:
        row.update({f"{k}_mean": pick.get(k) for k in SCORES})
        row.update({f"{k}_std": None for k in SCORES})
        texts = predictions.get(pick["trial"])
        return row, Texts(*map(list, zip(*texts)), seed_free=_number(pick.get("trainable")) == 0) if texts else None
    for key in AVERAGED:
        values = [v for v in (_number(m.get(key)) for m in scored) if v is not None]
        row[key] = sum(values) / len(values) if values else None
    for key in SCORES:
        values = pd.Series([_number(m.get(key)) for m in scored], dtype=float).dropna()
        row[f"{key}_mean"] = float(values.mean()) if len(values) else None
        row[f"{key}_std"] = float(values.std(ddof=1)) if len(values) > 1 else None
        row[key] = None
    failed = [m for m in members if m["status"] not in OK]
    if failed:
        row["error"] = f"{len(failed)} of {len(members)} seeds did not finish: " + "; ".join(
            f"seed {m['seed']} {m['status']}" + (f" ({m['error']})" if m.get("error") else "") for m in failed)
    if not scored:
        return row, None
    joined = [p for m in sorted(scored, key=lambda m: m["seed"] or 0) for p in predictions[m["trial"]]]
    _with_intervals(row, joined, u)
    row["test_size"] = len(predictions[scored[0]["trial"]])
    row["status"] = "ok"
    return row, Texts(*map(list, zip(*joined)), seed_free=False)


def _pick(members: list[dict[str, Any]], selection: str) -> dict[str, Any]:
    key, sign = ("eval_loss", 1.0) if selection == "eval_loss" else ("val_chrf", -1.0)
    return min(members, key=lambda m: (_number(m.get(key)) is None, sign * (_number(m.get(key)) or 0.0)))


def build(run_dirs: list[Path], metric: str | None = None) -> Board:
    """Collect every trial of the given runs, pool the seeds of each configuration, rank the configurations
    and test whether their differences are significant."""
    rows, epochs, predictions, machines = [], [], {}, []
    config: dict[str, Any] = {}
    for run_dir in run_dirs:
        run = _read(run_dir / "run.json")
        config = config or run.get("config", {})
        metric = metric or run.get("config", {}).get("run", {}).get("metric", "chrf")
        if run.get("hardware") and hardware_line(run["hardware"]) not in machines:
            machines.append(hardware_line(run["hardware"]))
        for folder in sorted((run_dir / "trials").glob("*")):
            if folder.is_dir():
                row, per_epoch = trial_row(folder, metric)
                predictions[row["trial"]] = read_predictions(folder)
                rows.append(row)
                epochs.extend(per_epoch)
    metric = metric or "chrf"
    u = Uncertainty.of(config)
    if not rows:
        frame = pd.DataFrame(columns=COLUMNS + ["trial", "error", "adapter", "rank_label", "config"])
        return Board(frame, pd.DataFrame(epochs), metric, ["(no trials yet)"], frame.copy(), {}, u)
    for row in rows:
        _with_intervals(row, predictions[row["trial"]], u)
    seeds = pd.DataFrame(rows)
    groups: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault(row["config"], []).append(row)
    pooled, texts = [], {}
    for key, members in groups.items():
        row, text = pool(members, predictions, u)
        pooled.append(row)
        if text is not None:
            texts[key] = text
    frame = pd.DataFrame(pooled)
    rank_key = "eval_loss" if metric == "eval_loss" else metric
    frame["_status"] = frame["status"].map(lambda s: STATUS_ORDER.get(s, 5))
    frame["_value"] = pd.to_numeric(frame[rank_key], errors="coerce")
    frame = frame.sort_values(["_status", "_value"], ascending=[True, not HIGHER_IS_BETTER[metric]],
                              na_position="last")
    frame = frame.drop(columns=["_status", "_value"]).reset_index(drop=True)
    frame["rank"] = range(1, len(frame) + 1)
    board = Board(frame, pd.DataFrame(), metric, [], seeds.sort_values(["model", "technique", "config", "seed"],
                                                                     na_position="last").reset_index(drop=True),
                  texts, u)
    not_compared = significance(board)
    epoch_frame = pd.DataFrame(epochs)
    if not epoch_frame.empty:
        epoch_frame = epoch_frame.sort_values(["model", "technique", "trial", "epoch"]).reset_index(drop=True)
    board.epochs = epoch_frame
    board.footer = footer(board, not_compared) + machines
    return board


def significance(board: Board) -> list[str]:
    """p-values against #1 and against the zero-shot baseline, and the shared rank '1=' for every row that
    is not significantly different from #1. Returns the rows that could not be compared with #1."""
    frame, u = board.frame, board.uncertainty
    frame["rank_label"] = frame["rank"].map(str)
    frame["p_vs_first"] = float("nan")
    frame["p_vs_baseline"] = float("nan")
    frame["tied_with_first"] = False
    if board.metric not in SCORES:
        return []
    candidates = frame[frame["status"].isin(OK) & frame["config"].isin(board.texts)]
    if candidates.empty:
        return []
    first = candidates.iloc[0]["config"]
    others = [c for c in candidates["config"] if c != first]
    pvalues = board.pvalues(first, others)
    for i, row in frame.iterrows():
        if row["config"] in pvalues:
            frame.at[i, "p_vs_first"] = pvalues[row["config"]]
            frame.at[i, "tied_with_first"] = pvalues[row["config"]] >= u.level
    tied = frame["tied_with_first"].astype(bool)
    frame.loc[tied, "rank_label"] = "1="
    first_index = frame.index[frame["config"] == first][0]
    if tied.any():
        frame.at[first_index, "rank_label"] = "1="
    for _, base in candidates[pd.to_numeric(candidates["trainable"], errors="coerce") == 0].iterrows():
        same_model = candidates[(candidates["model"] == base["model"]) & (candidates["config"] != base["config"])]
        for key, p in board.pvalues(base["config"], list(same_model["config"])).items():
            frame.loc[frame["config"] == key, "p_vs_baseline"] = p
    return [str(c) for c in others if c not in pvalues]


def footer(board: Board, not_compared: list[str]) -> list[str]:
    frame, metric, u = board.frame, board.metric, board.uncertainty
    lines = [f"ranked by test {metric}" if metric != "eval_loss" else "ranked by validation eval loss"]
    with_test = frame[frame["test_size"].notna()]
    if with_test.empty:
        return lines
    first = with_test.iloc[0]
    sizes = sorted({int(s) for s in with_test["test_size"]})
    lines.append(f"BLEU / chrF / chrF++: sacrebleu corpus scores on {', '.join(map(str, sizes))} sentences of "
                 f"{first['test_set']}; eval loss / ppl: validation, target tokens only")
    lines.append(f"x ± y: the score and its 95% confidence interval (sacrebleu bootstrap resampling of the test "
                 f"sentences, {u.resamples} resamples, seed {u.seed})")
    test = u.test.replace("_", " ")
    if metric in SCORES:
        lines.append(f"1=: not significantly different from #1 (test {SCORES[metric]}, {test}, {u.resamples} "
                     f"{'trials' if u.test == 'approximate_randomization' else 'resamples'}, p >= {u.level}); "
                     "p vs #1 / p vs base: p-values against the top row and the zero-shot baseline, on the same "
                     "sentences")
    else:
        lines.append("no significance test: eval loss is not a sentence-level translation metric")
    for key in not_compared:
        lines.append(f"  {key}: not compared with #1 (scored on different test sentences)")
    seeds = pd.to_numeric(frame.get("seeds", pd.Series(dtype=float)), errors="coerce")
    if (seeds > 1).any():
        lines.append(f"seeds: {int(seeds.max())} per configuration; '{SCORES.get(metric, 'chrF')} seeds' is the "
                     "mean ± standard deviation over seeds; scores, intervals and tests pool the seeds' test "
                     "translations (each test sentence once per seed, paired seed by seed)")
    validation = _number(first.get("validation_used"))
    if u.selection == "eval_loss":
        size = f"{int(validation)} " if validation else ""
        lines.append(f"best epoch: lowest eval loss over all {size}validation pairs (every target token; "
                     "data.max_validation_samples caps them)")
    else:
        size = _number(first.get("validation_translated"))
        lines.append(f"best epoch: highest chrF of {int(size) if size else '?'} translated validation sentences")
    if u.steps_per_epoch:
        lines.append(f"epoch: {u.steps_per_epoch} optimizer steps (train.steps_per_epoch), the training data read on "
                     "from where the last epoch stopped; evaluated after each")
    for key, sig in (first["signatures"] or {}).items():
        lines.append(f"  {key}: {sig}")
    return lines


def write_files(board: Board, run_dir: Path) -> None:
    drop = ["signatures", "hp"]
    atomic_write_text(run_dir / "leaderboard.md", board.render(fmt="github"))
    atomic_write_text(run_dir / "leaderboard.csv", board.frame.drop(columns=drop).to_csv(index=False))
    atomic_write_text(run_dir / "leaderboard.json", board.frame.to_json(orient="records", indent=2))
    atomic_write_text(run_dir / "leaderboard_seeds.csv", board.seeds.drop(columns=drop).to_csv(index=False))
    atomic_write_text(run_dir / "leaderboard_seeds.json", board.seeds.to_json(orient="records", indent=2))
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


def runner_up(board: Board) -> dict[str, Any]:
    """The top row against the second finished row: its p-value and whether the lead is significant."""
    finished = board.frame[board.frame["status"].isin(OK)]
    if len(finished) < 2:
        return {"runner_up": None, "p_vs_runner_up": None, "significant_vs_runner_up": None}
    second = finished.iloc[1]
    p = _number(second.get("p_vs_first"))
    return {"runner_up": f"{second['technique']} {second['params']}".strip(), "p_vs_runner_up": p,
            "significance_level": board.uncertainty.level,
            "significant_vs_runner_up": None if p is None else bool(p < board.uncertainty.level)}


def update_best(board: Board, results_dir: Path) -> dict[str, Any]:
    """Point results/best.json at the best adapter per (model, dataset) and overall."""
    path = results_dir / BEST_FILE
    registry = _read(path) or {"by_model_dataset": {}, "overall": None}
    metric = board.metric
    candidates = board.frame[(board.frame["status"].isin(["ok", "stopped"])) & (board.frame["adapter"] != "")]
    ahead = runner_up(board)
    for _, row in candidates.iterrows():
        entry = {
            "metric": metric, "value": _number(row[metric]),
            "model": row["model"], "technique": row["technique"], "params": row["params"],
            "adapter": row["adapter"], "run": row["run"], "trial": row["trial"], "bleu": _number(row["bleu"]),
            "chrf": _number(row["chrf"]), "eval_loss": _number(row["eval_loss"]), "dataset": row["dataset"],
            "dataset_sha256": row["dataset_sha256"], "test_size": _number(row["test_size"]), "updated": time.time(),
            "seeds": _number(row.get("seeds")), "rank": row.get("rank_label"),
            # Whether this board's winner beats its runner-up significantly (None: no test was possible).
            **(ahead if row["config"] == board.frame.iloc[0]["config"] else {}),
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
