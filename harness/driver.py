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

from harness import checkpoint as ckpt
from harness import ray_watchdog
from harness.config import BenchConfig, config_from_dict
from harness.devices import pin_cpu_dtype, resolve_device
from harness.errors import BenchError
from harness.io import atomic_write_json, read_json, read_jsonl
from harness.data import load_splits
from harness.models import check_hub, resolve_source
from harness.provenance import commit, hardware, versions
from techniques import registry
from techniques.base import Choice, IntRange, LogUniform, Space

log = logging.getLogger(__name__)

RUN_FILE = "run.json"
TRIALS = "trials"
RAY_DIR = "ray"
SEED_FILE = "seed.json"
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


# CUDA trials per GPU: a small model's step is host-bound (Python dispatching ops), so several trials share a GPU
# well; each needs ~2 CPU cores (its Python thread, Ray and data) and its memory. Measured on one H200: a LoRA
# step of Gemma 3 270M at 16 pairs peaks at 2.9 GB (QLoRA 3.3 GB) over 0.5 GB of bf16 weights.
MAX_TRIALS_PER_GPU = 8
CPUS_PER_GPU_TRIAL = 2
TRIAL_MEMORY_FACTOR = 3.0  # x the weight files (float32 files of a model that computes in bf16: ~6x its weights)
CUDA_CONTEXT_MB = 1024.0


def trial_memory_mb(weight_file_mb: float) -> float:
    """A CUDA trial's memory estimate from the size of its model's weight files."""
    return TRIAL_MEMORY_FACTOR * weight_file_mb + CUDA_CONTEXT_MB


def default_concurrency(device: str, cpus: int, gpus: int, gpu_free_mb: float | None = None,
                        trial_mb: float | None = None) -> int:
    """Trials at once. CUDA: per GPU as many as fit its free memory (90% of it) and the CPU cores, at most
    MAX_TRIALS_PER_GPU; one per GPU when the memory is unknown (a remote cluster, a hub model)."""
    if device == "cuda":
        gpus = max(1, gpus)
        if gpu_free_mb is None or not trial_mb:
            return gpus
        by_memory = int(0.9 * gpu_free_mb // trial_mb)
        by_cpus = cpus // (CPUS_PER_GPU_TRIAL * gpus)
        return gpus * max(1, min(by_memory, by_cpus, MAX_TRIALS_PER_GPU))
    if device == "mps":
        return 1  # one Metal device: trials share it badly
    return max(1, cpus // 4)  # fewer, wider trials: matmuls scale with threads, model copies cost memory


def gpu_memory(cfg: BenchConfig, device: str, exp: Experiment) -> tuple[float | None, float | None]:
    """(free memory of GPU 0 in MB, a trial's memory estimate in MB) for a local CUDA run; (None, None) where
    they cannot be known here (a remote cluster, a model that is not a local folder)."""
    if device != "cuda" or cfg.run.ray_address:
        return None, None
    import torch

    free = torch.cuda.mem_get_info(0)[0] / 2**20
    sizes = []
    for model in exp.models:
        folder = Path(resolve_source(dataclasses.replace(cfg.model, name=model))[0])
        if not folder.is_dir():
            return free, None
        sizes.append(sum(f.stat().st_size for f in folder.glob("*.safetensors")) / 2**20)
    return free, trial_memory_mb(max(sizes)) if sizes else None


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


def seeds_of(cfg: BenchConfig, trains: bool) -> list[int]:
    """train.seed, train.seed+1, ... (run.seeds of them); a technique that trains nothing needs one."""
    return [cfg.train.seed + k for k in range(cfg.run.seeds if trains else 1)]


def selection_mode(cfg: BenchConfig) -> tuple[str, str]:
    """The search objective: the signal that also picks each trial's best epoch (validation data only)."""
    return cfg.eval.selection, ("min" if cfg.eval.selection == "eval_loss" else "max")


def trial_function(params: dict[str, Any], *, run_dir: str, config: dict[str, Any], fixed: dict[str, Any]) -> None:
    """One Ray Tune trial = one configuration: a plain function around `training.run_trial` that reports each
    epoch. With run.seeds > 1 it trains the configuration once per seed, one after another, each seed in its
    own trial folder, and reports the seed mean last (so a search's objective is the seed mean)."""
    from ray import tune

    from harness.training import resolve_hyperparameters

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
    seeds = seeds_of(cfg, technique.trains)
    metric = selection_mode(cfg)[0]
    checkpoint = tune.get_checkpoint()
    outcomes, skipped = [], 0
    for seed in seeds:
        name = trial_id if len(seeds) == 1 else f"{trial_id}-s{seed}"
        folder = Path(run_dir) / TRIALS / trial_dir_name(model, technique.name, name)
        status = read_json(folder / "status.json") if (folder / "status.json").is_file() else {}
        if status.get("status") in FINAL:  # done before an interruption: kept, not trained again
            outcomes.append((folder, status))
            skipped += 1
            continue
        seed_cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, seed=seed))
        result = run_seed(seed_cfg, technique, hp, model, device, trial_id, folder, checkpoint,
                          final_report=len(seeds) == 1)
        outcomes.append((folder, result))
    # Several seeds, or a trial restored after all its seeds had finished: the seed mean is its last result.
    if len(seeds) > 1 or skipped == len(seeds):
        values = [v for v in (best_value(folder, metric) for folder, _ in outcomes) if v is not None]
        tune.report({metric: sum(values) / len(values) if values else WORST[metric], "seeds": len(values),
                     "seed_values": values, "technique": technique.name,
                     "status": "ok" if values else "failed"})


FINAL = ("ok", "diverged", "failed")


def best_value(folder: Path, metric: str) -> float | None:
    """The selection signal at a finished seed's best epoch (what picked its adapter)."""
    status = read_json(folder / "status.json") if (folder / "status.json").is_file() else {}
    rows = read_jsonl(folder / "metrics.jsonl") if (folder / "metrics.jsonl").is_file() else []
    if status.get("status") not in ("ok", "diverged") or status.get("best_epoch") is None:
        return None
    row = next((r for r in rows if r.get("epoch") == status["best_epoch"]), {})
    return row.get(metric)


def run_seed(cfg: BenchConfig, technique: Any, hp: dict[str, Any], model: str, device: str, trial_id: str,
             folder: Path, checkpoint: Any, final_report: bool) -> dict[str, Any]:
    """Train and test one seed of a configuration in `folder`, reporting each epoch to Ray Tune."""
    from ray import tune

    from harness.training import TrialSpec, mark_failed, run_trial

    ctx = tune.get_context()
    seed = cfg.train.seed
    folder.mkdir(parents=True, exist_ok=True)
    cpus = int(ctx.get_trial_resources().required_resources.get("CPU", 1))
    atomic_write_json(folder / "trial.json", {
        "trial_id": trial_id, "ray_trial_dir": ctx.get_trial_dir(), "technique": technique.name,
        "label": technique.label(hp), "model": model, "hp": hp, "device": device, "cpus": cpus,
        "seed": seed, "config_id": trial_id, "seeds": cfg.run.seeds if technique.trains else 1,
    })
    metric = selection_mode(cfg)[0]
    reported = {"n": 0}

    def reporter(row: dict[str, Any], checkpoint_dir: Path | None) -> None:
        metrics = {k: row[k] for k in REPORTED if k in row and row[k] is not None}
        metrics.update(trial_dir=str(folder), technique=technique.name, seed=seed)
        reported["n"] += 1
        if checkpoint_dir is None:
            tune.report(metrics)
        else:
            # Which seed the checkpoint belongs to: a restored trial resumes only that seed from it.
            atomic_write_json(checkpoint_dir / SEED_FILE, {"seed": seed})
            tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(str(checkpoint_dir)))

    spec = TrialSpec(trial_id=trial_id, technique=technique.name, hp=hp, config=cfg, trial_dir=folder,
                     device=device, threads=cpus, extra={"ray_trial_id": trial_id, "seed": seed})
    own = folder / ckpt.CHECKPOINT_DIR
    try:
        resumed = False
        if (own / ckpt.STATE_JSON).is_file():
            # The trial folder's checkpoint is written before each report, so after a kill it is at least as new
            # as the one Ray recorded (Ray may not have recorded the last epoch's yet): resume from it.
            resumed = True
            result = run_trial(spec, reporter, resume_from=own)
        elif checkpoint is not None:
            with checkpoint.as_directory() as resume_dir:
                marker = Path(resume_dir) / SEED_FILE
                # Checkpoints written before seeds existed carry no marker: they are the only seed's.
                if not marker.is_file() or read_json(marker).get("seed") == seed:
                    resumed = True
                    result = run_trial(spec, reporter, resume_from=Path(resume_dir))
        if not resumed:
            result = run_trial(spec, reporter)
    except Exception as exc:  # noqa: BLE001 - one bad trial must not end the run; the error is recorded
        log.exception("trial %s (seed %d) failed", trial_id, seed)
        result = mark_failed(folder, exc)
    if final_report and (reported["n"] == 0 or result["status"] == "failed"):
        tune.report({**WORST, metric: WORST[metric], "status": result["status"], "trial_dir": str(folder),
                     "technique": technique.name})
    return result


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
            pin_cpu_dtype()  # before the workers start: they inherit it
            ray.init(address="local", num_cpus=os.cpu_count() or 1, **kwargs)  # never join a stray cluster
            ray_watchdog.start()  # a SIGKILLed driver must not leave Ray's agents running
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

    concurrent = cfg.run.max_concurrent or default_concurrency(device, cpus, gpus, *gpu_memory(cfg, device, exp))
    resources = trial_resources(device, cpus, gpus, concurrent)
    fixed: dict[str, Any] = {"device": device}
    metric, mode = selection_mode(cfg)
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

            # One report per epoch and seed, plus the seed mean when there are several seeds.
            reports = cfg.train.epochs * cfg.run.seeds + (1 if cfg.run.seeds > 1 else 0)
            scheduler = ASHAScheduler(time_attr="training_iteration", max_t=reports, grace_period=1,
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
