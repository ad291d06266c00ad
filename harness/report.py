"""The run report: learning curves, validation quality per epoch, quality-vs-cost plots and `report.md`.

`write_report(run_dir, board)` is called by `leaderboard.publish` after every run (and can be called again by
hand). It draws with matplotlib's Agg canvas (no screen, no pyplot global state), so it works on headless
machines and inside Ray workers. Partial runs are fine: a trial without epochs or a failed trial shows up in
the tables and is left out of the plots it has no numbers for.
"""

from __future__ import annotations

import logging
import math
import os
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pandas as pd
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from harness import reading
from harness.io import atomic_write_text, read_json

log = logging.getLogger(__name__)

REPORT_DIR = "report"
REPORT_FILE = "report.md"
LEARNING_CURVES = "learning_curves.png"
QUALITY = "quality_per_epoch.png"
PARETO = "pareto.png"
EXAMPLES_PER_TRIAL = 3


# ----------------------------------------------------------------------------------------------- helpers


def _new_figure(panels: int) -> tuple[Figure, list[Axes]]:
    """A figure on its own Agg canvas (thread-safe, no backend switching) with `panels` side-by-side axes."""
    fig = Figure(figsize=(6.0 * panels, 4.4), dpi=110, layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, panels, squeeze=False)[0]
    return fig, list(axes)


def _save(fig: Figure, path: Path) -> Path:
    """PNG written to a temp file and renamed, like every other result file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            fig.savefig(handle, format="png")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def _numbers(series: pd.Series) -> pd.Series:
    return pd.to_numeric(series, errors="coerce")


def _is_missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def _empty_note(ax: Axes, text: str) -> None:
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, color="gray")
    ax.set_xticks([])
    ax.set_yticks([])


def trial_labels(frame: pd.DataFrame) -> dict[str, str]:
    """Short legend labels: the technique, plus the model when a run compares models, plus the trial id
    when one technique has several trials (a search)."""
    if frame.empty or "trial" not in frame:
        return {}
    several_models = frame["model"].nunique() > 1 if "model" in frame else False
    counts = frame.groupby(["model", "technique"])["trial"].transform("count") if "model" in frame else None
    labels: dict[str, str] = {}
    for i, row in frame.iterrows():
        label = str(row.get("technique", "?"))
        if several_models:
            label = f"{Path(str(row['model'])).name} {label}"
        if counts is not None and counts[i] > 1:
            label = f"{label} ({row['trial']})"
        labels[str(row["trial"])] = label
    return labels


def trial_colors(frame: pd.DataFrame) -> dict[str, str]:
    """One colour per trial, the same in every panel and plot."""
    if frame.empty or "trial" not in frame:
        return {}
    return {str(t): f"C{i % 10}" for i, t in enumerate(frame["trial"])}


def _per_trial(epochs: pd.DataFrame) -> Iterable[tuple[str, pd.DataFrame]]:
    for trial, rows in epochs.groupby("trial", sort=False):
        yield str(trial), rows.sort_values("epoch")


def _plot_epoch_metric(ax: Axes, board: Any, column: str, title: str, ylabel: str, x: str = "epoch") -> None:
    """One line per trial of `column` against the epoch (or `x`, e.g. the optimizer step); trials without that
    number are skipped."""
    epochs, labels, colors = board.epochs, trial_labels(board.frame), trial_colors(board.frame)
    x = x if x in epochs else "epoch"
    drawn = 0
    if not epochs.empty and column in epochs:
        for trial, rows in _per_trial(epochs):
            values = _numbers(rows[column])
            keep = values.notna() & _numbers(rows[x]).notna()
            if not keep.any():
                continue
            ax.plot(_numbers(rows[x])[keep], values[keep], marker="o", label=labels.get(trial, trial),
                    color=colors.get(trial))
            drawn += 1
    ax.set_title(title)
    if not drawn:
        _empty_note(ax, "no epochs recorded")
        return
    ax.set_xlabel("optimizer step" if x == "step" else x)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    shown = sorted({int(e) for e in _numbers(epochs[x]).dropna()})
    if len(shown) <= 20:  # whole epochs / the evaluated steps only, also when a trial has just one
        ax.set_xticks(shown)
    else:
        ax.xaxis.get_major_locator().set_params(integer=True)
    ax.legend(fontsize="small")


# ----------------------------------------------------------------------------------------------- plots


def plot_learning_curves(board: Any, path: Path) -> Path:
    """Train loss and validation eval loss at every evaluation, against the optimizer step (comparable across
    techniques and epoch sizes), one line per trial (the baseline is its step-0 point)."""
    fig, (left, right) = _new_figure(2)
    _plot_epoch_metric(left, board, "train_loss", "train loss", "mean target-token cross-entropy", x="step")
    _plot_epoch_metric(right, board, "eval_loss", "validation eval loss", "mean target-token cross-entropy", x="step")
    return _save(fig, path)


def plot_quality_per_epoch(board: Any, path: Path) -> Path:
    """Validation-sample BLEU and chrF of generated translations after every epoch."""
    fig, (left, right) = _new_figure(2)
    _plot_epoch_metric(left, board, "bleu", "validation BLEU", "BLEU")
    _plot_epoch_metric(right, board, "chrf", "validation chrF", "chrF")
    return _save(fig, path)


def _baselines(frame: pd.DataFrame) -> pd.DataFrame:
    """Rows that train nothing (the zero-shot baseline): 0 trainable parameters."""
    if frame.empty or "trainable" not in frame:
        return frame.iloc[0:0]
    return frame[_numbers(frame["trainable"]) == 0]


def _scatter_cost(ax: Axes, frame: pd.DataFrame, x: str, xlabel: str, log_x: bool) -> None:
    """Test chrF against one cost column, each point with its 95% interval as an error bar and labelled by
    technique; baselines as horizontal lines."""
    labels, colors = trial_labels(frame), trial_colors(frame)
    ax.set_title(f"test chrF vs {xlabel}")
    base = _baselines(frame)
    points = frame.drop(index=base.index)
    drawn = 0
    if not points.empty and x in points and "chrf" in points:
        xs, ys = _numbers(points[x]), _numbers(points["chrf"])
        spread = _numbers(points["chrf_ci"]) if "chrf_ci" in points else pd.Series(float("nan"), index=points.index)
        keep = xs.notna() & ys.notna() & (xs > 0 if log_x else True)
        for i in points.index[keep]:
            trial = str(points.at[i, "trial"])
            ax.errorbar(xs[i], ys[i], yerr=None if pd.isna(spread[i]) else spread[i], fmt="o", markersize=6,
                        capsize=3, zorder=3, color=colors.get(trial))
            ax.annotate(labels.get(trial, trial), (xs[i], ys[i]), textcoords="offset points", xytext=(5, 4),
                        fontsize="small")
            drawn += 1
        if log_x and keep.any():
            ax.set_xscale("log")
    several_models = frame["model"].nunique() > 1 if "model" in frame else False
    for _, row in base.iterrows():
        value = pd.to_numeric(row.get("chrf"), errors="coerce")
        if pd.notna(value):
            name = f" {Path(str(row['model'])).name}" if several_models else ""
            ax.axhline(float(value), linestyle="--", color="gray", label=f"zero-shot{name} ({float(value):.1f})")
            ci = pd.to_numeric(row.get("chrf_ci"), errors="coerce")
            if pd.notna(ci):
                ax.axhspan(float(value) - float(ci), float(value) + float(ci), color="gray", alpha=0.12)
            drawn += 1
    if not drawn:
        _empty_note(ax, "no test scores yet")
        return
    ax.set_xlabel(xlabel)
    ax.set_ylabel("test chrF (bars: 95% interval)")
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize="small", loc="lower right")


def plot_pareto(board: Any, path: Path) -> Path:
    """Quality against cost: test chrF vs trainable parameters (log axis) and vs training seconds."""
    fig, (left, right) = _new_figure(2)
    _scatter_cost(left, board.frame, "trainable", "trainable parameters", log_x=True)
    _scatter_cost(right, board.frame, "train_s", "training seconds", log_x=False)
    return _save(fig, path)


# ------------------------------------------------------------------------------------------- markdown


def md_cell(value: Any) -> str:
    """Text that is safe inside one markdown table cell."""
    text = "" if _is_missing(value) else str(value)
    return " ".join(text.split()).replace("\\", "\\\\").replace("|", "\\|")


def read_examples(trial_dir: Path, limit: int = EXAMPLES_PER_TRIAL) -> list[tuple[str, str, str]]:
    """The first `limit` (source, reference, hypothesis) rows of a trial's predictions.tsv (none if absent)."""
    path = trial_dir / "predictions.tsv"
    if not path.is_file():
        return []
    rows = []
    for line in reading.read_text(path, "results").split("\n")[1:]:
        if not line.strip():
            continue
        cells = (line.split("\t") + ["", "", ""])[:3]
        rows.append((cells[0], cells[1], cells[2]))
        if len(rows) >= limit:
            break
    return rows


def _trial_dir(run_dir: Path, row: pd.Series) -> Path:
    run = row.get("run")
    if run and not _is_missing(run) and run != run_dir.name and (run_dir.parent / str(run)).is_dir():
        return run_dir.parent / str(run) / "trials" / str(row["trial"])
    return run_dir / "trials" / str(row["trial"])


def examples_section(run_dir: Path, frame: pd.DataFrame) -> list[str]:
    """Up to three test translations per trial, as small markdown tables."""
    lines = ["## Example translations", "",
             f"The first {EXAMPLES_PER_TRIAL} sentences of each trial's test sample (predictions.tsv).", ""]
    if frame.empty:
        return lines + ["(no trials yet)", ""]
    for _, row in frame.iterrows():
        heading = " ".join(md_cell(row.get(k)) for k in ("technique", "params") if md_cell(row.get(k)))
        lines.append(f"### {heading} (trial {md_cell(row['trial'])})")
        lines.append("")
        status = md_cell(row.get("status"))
        if status and status != "ok":
            error = md_cell(row.get("error"))
            lines += [f"status: **{status}**" + (f": {error}" if error else ""), ""]
        examples = read_examples(_trial_dir(run_dir, row))
        if not examples:
            lines += ["(no test predictions)", ""]
            continue
        lines += ["| source | reference | hypothesis |", "|---|---|---|"]
        lines += [f"| {md_cell(s)} | {md_cell(r)} | {md_cell(h)} |" for s, r, h in examples]
        lines.append("")
    return lines


def _markdown_block(text: str) -> list[str]:
    """A tabulate 'github' rendering with its text lines (model headings, errors, signatures) kept as separate
    lines in markdown (a trailing double space is a hard line break)."""
    out = []
    for line in text.rstrip().splitlines():
        out.append(line if line.startswith("|") or not line.strip() else line.rstrip() + "  ")
    return out


def pvalue_section(board: Any) -> list[str]:
    """A technique x technique table of p-values (the board's paired test on its ranking metric): a cell is
    the p-value of the row's configuration against the column's; '-' where they were scored on different
    sentences."""
    frame = board.frame
    if frame.empty or "config" not in frame or board.metric not in ("bleu", "chrf"):
        return []
    rows = frame[frame["status"].isin(["ok", "stopped"]) & frame["config"].isin(board.texts)]
    if len(rows) < 2:
        return []
    keys = list(rows["config"])
    names = [md_cell(f"{r['rank_label']} {r['technique']} {r['params']}".strip()) for _, r in rows.iterrows()]
    matrix = {key: board.pvalues(key, [k for k in keys if k != key]) for key in keys}
    u = board.uncertainty
    lines = ["## Significance", "",
             f"p-values of the paired test ({u.test.replace('_', ' ')}, {u.resamples} samples, seed {u.seed}) "
             f"on test {board.metric} between every two configurations; below {u.level} the two differ "
             "significantly (**bold**).", "",
             "| | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
    for key, name in zip(keys, names):
        cells = []
        for other in keys:
            p = matrix[key].get(other)
            cells.append("" if other == key else "-" if p is None else
                         f"**{p:.3f}**" if p < u.level else f"{p:.3f}")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return lines + [""]


def render_markdown(run_dir: Path, board: Any, images: dict[str, str]) -> str:
    """The whole report.md text: leaderboard, plots, per-epoch table, example translations."""
    run = read_json(run_dir / "run.json") if (run_dir / "run.json").is_file() else {}
    cfg = run.get("config") or {}
    lines = [f"# Run report: {run_dir.name}", ""]
    frame = board.frame
    models = ", ".join(dict.fromkeys(str(m) for m in frame["model"])) if not frame.empty else \
        (cfg.get("model") or {}).get("name", "-")
    dataset = (cfg.get("data") or {}).get("dataset", "-")
    lines += [f"- base model(s): {md_cell(models)}", f"- dataset: {md_cell(dataset)}",
              f"- trials: {len(frame)}", f"- ranked by: {board.metric}", ""]
    lines += ["## Leaderboard", ""] + _markdown_block(board.render(fmt="github")) + [""]
    lines += pvalue_section(board)
    lines += ["## Plots", ""]
    for title, rel in images.items():
        lines += [f"### {title}", "", f"![{title}]({rel})", ""]
    lines += ["## Per-epoch metrics", "",
              "Validation numbers after every epoch (BLEU / chrF on the validation sample).", ""]
    lines += _markdown_block(board.epoch_table(fmt="github")) + [""]
    lines += examples_section(run_dir, frame)
    return "\n".join(lines).rstrip() + "\n"


def write_report(run_dir: Path, board: Any) -> Path:
    """Draw the three plots into run_dir/report/ and write run_dir/report.md; returns the report path.
    A plot that fails is logged and left out; the markdown is always written."""
    run_dir = Path(run_dir)
    folder = run_dir / REPORT_DIR
    plots = {
        "Learning curves": (LEARNING_CURVES, plot_learning_curves),
        "Validation quality per epoch": (QUALITY, plot_quality_per_epoch),
        "Quality vs cost": (PARETO, plot_pareto),
    }
    images: dict[str, str] = {}
    for title, (name, draw) in plots.items():
        try:
            draw(board, folder / name)
            images[title] = f"{REPORT_DIR}/{name}"
        except Exception as exc:  # noqa: BLE001 - one bad plot must not cost the rest of the report
            log.warning("report: the plot %s could not be drawn: %s", name, exc)
    path = run_dir / REPORT_FILE
    atomic_write_text(path, render_markdown(run_dir, board, images))
    log.info("report written to %s", path)
    return path
