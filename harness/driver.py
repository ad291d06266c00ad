"""The Ray Tune driver: one run = a few Ray Tune experiments whose trials are plain functions.

- `--techniques ...` (no search): one experiment, a grid over models x (baseline + techniques).
- `--search optuna`: a baseline experiment plus one experiment per (model, technique), each an `OptunaSearch`
  over the technique's declared search space, optionally with ASHA early stopping.
Ray owns scheduling, resources, retries and restore; the run folder is the state `--resume` continues from.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness.config import BenchConfig, config_from_dict
from harness.devices import resolve_device
from harness.errors import BenchError
from harness.io import atomic_write_json, read_json
from harness.data import load_splits
from harness.models import check_hub, resolve_source
from harness.provenance import commit, hardware, versions
from techniques import registry
from techniques.base import Choice, IntRange, LogUniform, Space

log = logging.getLogger(__name__)

RUN_FILE = "run.json"
TRIALS = "trials"
RAY_DIR = "ray"
WORST = {"chrf": 0.0, "bleu": 0.0, "eval_loss": 1e9}  # reported for a trial that failed before any epoch
REPORTED = ("epoch", "step", "train_loss", "train_ppl", "eval_loss", "eval_ppl", "bleu", "chrf", "chrf_pp",
            "tokens_per_s", "train_seconds", "peak_memory_mb", "diverged")


@dataclass
class Experiment:
    name: str
    models: list[str]
    techniques: list[str]  # more than one only for the grid
    search: bool


# ------------------------------------------------------------------------------------------- run folders


def safe_name(name: str, what: str = "run.name") -> str:
    """A folder name that cannot escape its parent: letters, digits, '.', '_', '-' only."""
    cleaned = re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip(".-")
    if not cleaned:
        raise BenchError(f"{what}: '{name}' has no usable characters; use letters, digits, '.', '_' or '-'.")
    return cleaned[:120]


def new_run_dir(cfg: BenchConfig) -> Path:
    root = Path(cfg.run.results_dir).expanduser()
    if cfg.run.name:
        run_dir = root / safe_name(cfg.run.name)
        if run_dir.exists():
            raise BenchError(
                f"--name: the run folder '{run_dir}' exists already; nothing was written over. Continue it with "
                f"--resume {run_dir}, or choose another --name."
            )
    else:
        stem = time.strftime("%Y%m%d-%H%M%S") + "-" + safe_name("-".join(cfg.run.techniques))[:40]
        run_dir, n = root / stem, 1
        while run_dir.exists():
            n += 1
            run_dir = root / f"{stem}-{n}"
    if root.resolve() not in run_dir.resolve().parents:
        raise BenchError(f"run.name: '{cfg.run.name}' would leave the results folder '{root}'.")
    run_dir.mkdir(parents=True)
    return run_dir


def load_run(run_dir: str | Path) -> tuple[Path, dict[str, Any], BenchConfig]:
    """The run folder, its run.json and its config; a clear error when the folder is not a run."""
    path = Path(run_dir).expanduser()
    if not (path / RUN_FILE).is_file():
        raise BenchError(
            f"--resume: '{run_dir}' is not a run folder (it has no {RUN_FILE}). Give a folder printed by an "
            "earlier run_benchmark.py, e.g. results/<run-name>."
        )
    meta = read_json(path / RUN_FILE)
    return path, meta, config_from_dict(meta["config"])


# ---------------------------------------------------------------------------------------------- planning


def plan(cfg: BenchConfig) -> list[Experiment]:
    models = cfg.run.models or [cfg.model.name]
    techniques = registry.resolve(cfg.run.techniques)
    if not techniques and not cfg.run.baseline:
        raise BenchError("--techniques: nothing to run (no technique and the baseline is off).")
    baseline = [registry.BASELINE] if cfg.run.baseline else []
    if cfg.run.search == "none":
        return [Experiment("grid", models, baseline + techniques, search=False)]
    experiments = [Experiment("baseline", models, baseline, search=False)] if baseline else []
    for model in models:
        for name in techniques:
            if not registry.get(name).search_space:
                raise BenchError(f"--search optuna: the technique '{name}' declares no search space.")
            experiments.append(Experiment(safe_name(f"search-{model}-{name}"), [model], [name], search=True))
    return experiments


def tune_space(space: dict[str, Space]) -> dict[str, Any]:
    """Technique search spaces (plain data) -> Ray Tune domains, which OptunaSearch converts for Optuna."""
    from ray import tune

    out: dict[str, Any] = {}
    for key, dom in space.items():
        if isinstance(dom, LogUniform):
            out[key] = tune.loguniform(dom.low, dom.high)
        elif isinstance(dom, IntRange):
            out[key] = tune.lograndint(dom.low, dom.high + 1) if dom.log else tune.randint(dom.low, dom.high + 1)
        elif isinstance(dom, Choice):
            out[key] = tune.choice(list(dom.options))
        else:
            raise TypeError(f"unknown search-space type {dom!r} for {key}")
    return out


def default_concurrency(device: str, cpus: int, gpus: int) -> int:
    if device == "cuda":
        return max(1, gpus)
    if device == "mps":
        return 1  # one Metal device: trials share it badly
    return max(1, cpus // 4)  # fewer, wider trials: matmuls scale with threads, model copies cost memory


def trial_resources(device: str, cpus: int, gpus: int, concurrent: int) -> dict[str, float]:
    cpu_share = max(1, cpus // concurrent)
    if device == "cuda":
        return {"cpu": cpu_share, "gpu": min(1.0, gpus / concurrent) if gpus else 1.0}
    return {"cpu": cpu_share}


# ------------------------------------------------------------------------------------------------ trials


def trial_dir_name(model: str, technique: str, trial_id: str) -> str:
    return safe_name(f"{model}--{technique}--{trial_id}", "trial name")


def worker_logging() -> None:
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for noisy in ("httpx", "urllib3", "filelock", "transformers"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def trial_function(params: dict[str, Any], *, run_dir: str, config: dict[str, Any], fixed: dict[str, Any]) -> None:
    """One Ray Tune trial: a plain function around `training.run_trial` that reports each epoch."""
    from ray import tune

    from harness.training import TrialSpec, mark_failed, resolve_hyperparameters, run_trial

    worker_logging()
    ctx = tune.get_context()
    choice = {**fixed, **params}
    technique = registry.get(choice.pop("technique"))
    model = choice.pop("model")
    device = choice.pop("device")
    cfg = config_from_dict(config)
    cfg.model.name = model
    hp = resolve_hyperparameters(technique, cfg, choice)
    trial_id = ctx.get_trial_id()
    folder = Path(run_dir) / TRIALS / trial_dir_name(model, technique.name, trial_id)
    folder.mkdir(parents=True, exist_ok=True)
    cpus = int(ctx.get_trial_resources().required_resources.get("CPU", 1))
    atomic_write_json(folder / "trial.json", {
        "trial_id": trial_id, "ray_trial_dir": ctx.get_trial_dir(), "technique": technique.name,
        "label": technique.label(hp), "model": model, "hp": hp, "device": device, "cpus": cpus,
    })
    metric = cfg.run.metric
    reported = {"n": 0}

    def reporter(row: dict[str, Any], checkpoint_dir: Path | None) -> None:
        metrics = {k: row[k] for k in REPORTED if k in row and row[k] is not None}
        metrics.update(trial_dir=str(folder), technique=technique.name)
        reported["n"] += 1
        if checkpoint_dir is None:
            tune.report(metrics)
        else:
            tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(str(checkpoint_dir)))

    spec = TrialSpec(trial_id=trial_id, technique=technique.name, hp=hp, config=cfg, trial_dir=folder,
                     device=device, threads=cpus, extra={"ray_trial_id": trial_id})
    checkpoint = tune.get_checkpoint()
    try:
        if checkpoint is not None:
            with checkpoint.as_directory() as resume_dir:
                result = run_trial(spec, reporter, resume_from=Path(resume_dir))
        else:
            result = run_trial(spec, reporter)
    except Exception as exc:  # noqa: BLE001 - one bad trial must not end the run; the error is recorded
        log.exception("trial %s failed", trial_id)
        result = mark_failed(folder, exc)
    if reported["n"] == 0 or result["status"] == "failed":
        tune.report({**WORST, metric: WORST[metric], "status": result["status"], "trial_dir": str(folder),
                     "technique": technique.name})


# ------------------------------------------------------------------------------------------------ running


def start_ray(cfg: BenchConfig) -> None:
    import ray

    if ray.is_initialized():
        return
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    kwargs: dict[str, Any] = {"include_dashboard": False, "logging_level": logging.WARNING}
    try:
        if cfg.run.ray_address:
            ray.init(address=cfg.run.ray_address, **kwargs)
        else:
            ray.init(address="local", num_cpus=os.cpu_count() or 1, **kwargs)  # never join a stray cluster
    except (ConnectionError, RuntimeError, ValueError) as exc:
        raise BenchError(
            f"--ray-address: could not join the Ray cluster at '{cfg.run.ray_address}' ({exc}). Start it with "
            "'ray start --head' or use 'auto' on a cluster node; leave the flag out to start a local Ray."
        ) from None


def cluster_device(cfg: BenchConfig) -> tuple[str, int, int]:
    """(device, cpus, gpus) as Ray sees the cluster; a local run checks torch's view too."""
    import ray

    resources = ray.cluster_resources()
    cpus, gpus = int(resources.get("CPU", 1)), int(resources.get("GPU", 0))
    requested = cfg.run.device
    if cfg.run.ray_address and requested in ("cuda", "auto") and gpus:
        return "cuda", cpus, gpus
    if cfg.run.ray_address and requested == "cuda":
        raise BenchError("--device cuda: the Ray cluster has no GPU resources. Use --device cpu or add GPU nodes.")
    device = resolve_device(requested)
    return device, cpus, gpus


def preflight(cfg: BenchConfig) -> list[Experiment]:
    """Every check a user mistake can fail, before a run folder or a Ray cluster exists: techniques, data
    files (columns, empty splits), the device, and each model (embedded models are converted here once, so
    concurrent trials never convert in parallel)."""
    experiments = plan(cfg)
    if cfg.eval.num_beams > 1:
        for name in sorted({t for exp in experiments for t in exp.techniques}):
            if not registry.get(name).beam_search:
                raise BenchError(
                    f"eval.num_beams={cfg.eval.num_beams} with technique '{name}': beam search is not available "
                    f"for {name}, because peft's generate gives wrong tokens for it (the harness's greedy "
                    f"decoding is exact). Fix: set eval.num_beams=1, or leave {name} out of --techniques."
                )
    load_splits(cfg.data)
    if not cfg.run.ray_address:
        resolve_device(cfg.run.device)
    for name in cfg.run.models or [cfg.model.name]:
        source, local = resolve_source(dataclasses.replace(cfg.model, name=name))
        if not local:
            check_hub(source, "model.name", revision=cfg.model.revision)
    return experiments


def build_tuner(exp: Experiment, cfg: BenchConfig, run_dir: Path, device: str, cpus: int, gpus: int) -> Any:
    from ray import tune

    concurrent = cfg.run.max_concurrent or default_concurrency(device, cpus, gpus)
    resources = trial_resources(device, cpus, gpus, concurrent)
    fixed: dict[str, Any] = {"device": device}
    metric, mode = cfg.run.metric, ("min" if cfg.run.metric == "eval_loss" else "max")
    scheduler = None
    if exp.search:
        from ray.tune.search.optuna import OptunaSearch

        technique = registry.get(exp.techniques[0])
        fixed.update(model=exp.models[0], technique=technique.name)
        space = tune_space(dict(technique.search_space))
        search_alg: Any = OptunaSearch(metric=metric, mode=mode, seed=cfg.train.seed)
        num_samples = cfg.run.trials
        if cfg.run.scheduler == "asha":
            from ray.tune.schedulers import ASHAScheduler

            scheduler = ASHAScheduler(time_attr="training_iteration", max_t=cfg.train.epochs, grace_period=1,
                                      reduction_factor=2)
    else:
        space = {"model": tune.grid_search(exp.models), "technique": tune.grid_search(exp.techniques)}
        search_alg, num_samples = None, 1
    trainable = tune.with_resources(
        tune.with_parameters(trial_function, run_dir=str(run_dir.resolve()), config=cfg.to_dict(), fixed=fixed),
        resources,
    )
    tune_config = tune.TuneConfig(
        num_samples=num_samples, max_concurrent_trials=concurrent, search_alg=search_alg, scheduler=scheduler,
        metric=metric if (search_alg or scheduler) else None, mode=mode if (search_alg or scheduler) else None,
    )
    run_config = tune.RunConfig(
        name=exp.name,
        storage_path=str((run_dir / RAY_DIR).resolve()),
        failure_config=tune.FailureConfig(max_failures=cfg.run.max_failures),
        checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
        verbose=1,
    )
    return trainable, tune.Tuner(trainable, param_space=space, tune_config=tune_config, run_config=run_config)


def run_experiment(exp: Experiment, cfg: BenchConfig, run_dir: Path, device: str, cpus: int, gpus: int,
                   resume: bool) -> tuple[Any, bool]:
    """Fit (or restore and continue) one experiment; returns (results, interrupted)."""
    from ray import tune

    trainable, tuner = build_tuner(exp, cfg, run_dir, device, cpus, gpus)
    path = run_dir / RAY_DIR / exp.name
    if resume and tune.Tuner.can_restore(str(path.resolve())):
        tuner = tune.Tuner.restore(str(path.resolve()), trainable, resume_unfinished=True, resume_errored=True)
    results = tuner.fit()
    unfinished = [r for r in results if r.metrics is None or not _finished(r)]
    return results, bool(unfinished) and _interrupted(results)


def _finished(result: Any) -> bool:
    return result.error is not None or bool(result.metrics)


def _interrupted(results: Any) -> bool:
    analysis = getattr(results, "_experiment_analysis", None)
    trials = getattr(analysis, "trials", None) or []
    return any(t.status in ("PENDING", "RUNNING", "PAUSED") for t in trials)


def finalize_statuses(run_dir: Path, results: Any) -> None:
    """Trials whose status.json still says 'running' after Ray ended them: errored or stopped early."""
    # Ray's trial folder names are unique per trial; the trial records the one it ran in.
    by_dir = {Path(result.path).name: result for result in results}
    for folder in sorted((run_dir / TRIALS).glob("*")):
        status_path = folder / "status.json"
        status = read_json(status_path) if status_path.exists() else {"status": "running"}
        if status.get("status") not in ("running", None):
            continue
        trial = read_json(folder / "trial.json") if (folder / "trial.json").exists() else {}
        result = by_dir.get(Path(trial.get("ray_trial_dir", "")).name)
        if result is None:
            continue
        if result.error is not None:
            text = str(result.error).strip().splitlines()
            new = {"status": "failed", "error": text[-1] if text else "Ray reported an error"}
        else:
            new = {"status": "stopped", "stop_reason": "early stopping by the scheduler"}
        atomic_write_json(status_path, {**status, **new, "updated": time.time()})


def run(cfg: BenchConfig, resume_dir: str | None = None) -> tuple[Path, int]:
    """Run (or resume) a benchmark; returns (run folder, exit code)."""
    from harness import leaderboard

    if resume_dir:
        run_dir, meta, cfg = load_run(resume_dir)
    else:
        run_dir, meta = None, {}
    experiments = preflight(cfg)
    start_ray(cfg)
    device, cpus, gpus = cluster_device(cfg)
    if run_dir is None:
        run_dir = new_run_dir(cfg)
        meta = {"config": cfg.to_dict(), "created": time.time(), "command": sys.argv, "commit": commit(),
                "versions": versions(), "hardware": hardware(), "device": device, "cpus": cpus, "gpus": gpus,
                "experiments": [dataclasses.asdict(e) for e in experiments]}
    print(f"run folder: {run_dir}", flush=True)
    meta.update(status="running", resumed=bool(resume_dir) or meta.get("resumed", False))
    atomic_write_json(run_dir / RUN_FILE, meta)
    interrupted = False
    for exp in experiments:
        results, stopped = run_experiment(exp, cfg, run_dir, device, cpus, gpus, resume=bool(resume_dir))
        if stopped:
            interrupted = True
            break
        finalize_statuses(run_dir, results)
    meta["status"] = "interrupted" if interrupted else "finished"
    meta["finished"] = time.time()
    atomic_write_json(run_dir / RUN_FILE, meta)
    board = leaderboard.publish(run_dir)
    print(board.render(), flush=True)
    if interrupted:
        print(f"\nThe run was interrupted; continue it with: python run_benchmark.py --resume {run_dir}")
        return run_dir, 130
    return run_dir, exit_code(board, cfg)


def exit_code(board: Any, cfg: BenchConfig) -> int:
    """0 when the baseline (if asked for) and at least one trained trial finished; the failures are listed."""
    frame = board.frame
    ok = frame[frame["status"].isin(["ok", "stopped"])]
    failed = frame[~frame["status"].isin(["ok", "stopped"])]
    for _, row in failed.iterrows():
        print(f"trial {row['trial']} {row['status']}: {row.get('error') or ''}")
    has_baseline = not cfg.run.baseline or (ok["technique"] == registry.BASELINE).any()
    trained = (ok["technique"] != registry.BASELINE).sum()
    wanted_trained = bool(registry.resolve(cfg.run.techniques))
    return 0 if has_baseline and (trained > 0 or not wanted_trained) else 1
