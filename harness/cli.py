"""`python run_benchmark.py`: parse the command line, build the config, hand it to the driver."""

from __future__ import annotations

import argparse
import logging
import sys
from typing import Any

from harness.errors import BenchError

EXAMPLES = """examples:
  python run_benchmark.py --techniques all                      every technique + the zero-shot baseline
  python run_benchmark.py --config quick --techniques lora,qlora  a smoke run in a few minutes
  python run_benchmark.py --techniques lora-family --config quick  one group of techniques
  python run_benchmark.py --list-techniques                      every technique, its groups and search space
  python run_benchmark.py --search optuna --techniques lora --trials 4 --config quick
  python run_benchmark.py --techniques lora,qlora --seeds 3      every configuration with 3 seeds, mean ± sd
  python run_benchmark.py --models gemma-3-270m,smollm2-135m --techniques lora --config quick
  python run_benchmark.py --set train.lr=3e-4 --set data.max_train_samples=200
  python run_benchmark.py --set data.dataset=../shared/data/eng-tur/train.tsv \\
                          --set data.test_file=../shared/data/eng-tur/test.tsv
  python run_benchmark.py --resume results/20261202-101500-all
  python run_benchmark.py --ray-address auto --device cuda       join a running Ray cluster
"""


def technique_listing() -> str:
    """Every registered technique with its description and search space, then the named groups."""
    from techniques import registry

    lines = ["techniques (name: description; searched with --search optuna):"]
    for name in registry.names():
        tech = registry.get(name)
        aliases = f" (also {', '.join(tech.aliases)})" if tech.aliases else ""
        lines.append(f"  {name}{aliases}: {tech.description}")
        lines.append(f"      search: {tech.describe_space()}")
    lines.append("groups for --techniques:")
    for group, members in registry.groups().items():
        lines.append(f"  {group}: {', '.join(members)}")
    return "\n".join(lines) + "\n"


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="run_benchmark.py",
        description="Fine-tune a causal LM for English->Turkish with parameter-efficient techniques "
                    "(LoRA and its variants, other adapters, prompt learning, and full fine-tuning as the "
                    "reference) under Ray Tune, and rank them on one leaderboard.",
        epilog=EXAMPLES + "\n" + technique_listing(), formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--config", default=None, help="preset name (default, quick, ...) or a YAML file [default]")
    p.add_argument("--techniques", help="'all', a group (lora-family, prompt-family, original) or a comma list of "
                                        "names and groups, e.g. lora,dora,prompt-family (see below)")
    p.add_argument("--list-techniques", action="store_true", help="list every technique and group, then exit")
    p.add_argument("--models", help="comma list of base models: a grid of models x techniques")
    p.add_argument("--search", choices=["none", "optuna"], help="hyper-parameter search [none]")
    p.add_argument("--trials", type=int, help="search trials per technique [4]")
    p.add_argument("--seeds", type=int, help="train every configuration with this many seeds [1]")
    p.add_argument("--metric", choices=["chrf", "bleu", "eval_loss"], help="what ranks the board (the best epoch and the search use eval.selection)")
    p.add_argument("--scheduler", choices=["none", "asha"], help="ASHA stops poor search trials after early epochs")
    p.add_argument("--max-concurrent", type=int, help="trials at once [by device: on CUDA as many as fit GPU memory "
                   "with 2 cores each (8 per GPU at most), 1 on MPS, cores/4 on CPU]")
    p.add_argument("--device", choices=["auto", "cpu", "cuda", "mps"], help="[auto]")
    p.add_argument("--ray-address", help="join a Ray cluster: 'auto' or ray://host:port [start a local Ray]")
    p.add_argument("--no-baseline", action="store_true", help="skip the zero-shot baseline")
    p.add_argument("--name", help="run folder name under --results-dir [timestamp]")
    p.add_argument("--results-dir", help="where run folders go [results]")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue an interrupted run; finished trials are kept")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="config override, e.g. train.lr=3e-4 (repeatable)")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    return p


def cli_overrides(args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    """Explicit flags as a nested dict; `--set` overrides are applied after these."""
    run: dict[str, Any] = {}
    for flag, key in (("techniques", "techniques"), ("models", "models"), ("search", "search"),
                      ("trials", "trials"), ("seeds", "seeds"), ("metric", "metric"), ("scheduler", "scheduler"),
                      ("max_concurrent", "max_concurrent"), ("device", "device"), ("ray_address", "ray_address"),
                      ("name", "name"), ("results_dir", "results_dir")):
        value = getattr(args, flag)
        if value is not None:
            run[key] = [v.strip() for v in value.split(",") if v.strip()] if flag in ("techniques", "models") else value
    if args.no_baseline:
        run["baseline"] = False
    return {"run": run} if run else {}


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.list_techniques:
        print(technique_listing(), end="")
        return 0
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for noisy in ("httpx", "urllib3", "filelock"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    try:
        from harness import driver
        from harness.config import load_config

        if args.resume:
            given = [f for f in ("config", "techniques", "models", "search", "seeds") if getattr(args, f)] + (
                ["set"] if args.overrides else [])
            if given:
                raise BenchError(
                    f"--resume: a resumed run keeps its own config; drop --{' --'.join(given)} (or start a new run)."
                )
            _, code = driver.run(None, resume_dir=args.resume)  # type: ignore[arg-type]
            return code
        cfg = load_config(args.config, args.overrides, cli_overrides(args))
        _, code = driver.run(cfg)
        return code
    except BenchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("\ninterrupted; finished trials are kept. Resume with --resume RUN_DIR.", file=sys.stderr)
        return 130
