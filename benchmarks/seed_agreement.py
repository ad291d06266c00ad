"""Do two runs that differ only in the seed agree on what they call significant?

For every pair of configurations, the paired test of the board (sacrebleu's paired bootstrap or approximate
randomisation, the run's resamples, level and seed) is run on each seed's test translations alone, as if each seed
were its own run. A pair that two seeds both call significant must have the same winner in both; the script lists
every pair, flags disagreements and exits 1 if there is one.

    python -m benchmarks.seed_agreement results/<run with run.seeds >= 2>   # the seeds of one run
    python -m benchmarks.seed_agreement RUN_A RUN_B                        # two runs (one seed each)
"""

from __future__ import annotations

import argparse
import itertools
import sys
from pathlib import Path
from typing import Any

from harness.io import read_json
from harness.leaderboard import read_predictions
from harness.significance import paired_pvalues


def configurations(run_dirs: list[Path]) -> dict[int | str, dict[str, list[tuple[str, str, str]]]]:
    """{seed (or run): {configuration label: predictions}}; a model that trains nothing joins every seed."""
    by_seed: dict[Any, dict[str, list[tuple[str, str, str]]]] = {}
    fixed: dict[str, list[tuple[str, str, str]]] = {}
    for run_dir in run_dirs:
        for folder in sorted((run_dir / "trials").glob("*")):
            trial = read_json(folder / "trial.json") if (folder / "trial.json").is_file() else {}
            predictions = read_predictions(folder)
            if not trial or not predictions:
                continue
            label = f"{trial['technique']} {trial.get('label', '')}".strip()
            if trial.get("seeds", 1) == 1 and len(run_dirs) == 1:
                fixed[label] = predictions  # the baseline: one trial, the same translations for every seed
                continue
            key = trial["seed"] if len(run_dirs) == 1 else run_dir.name
            by_seed.setdefault(key, {})[label] = predictions
    for members in by_seed.values():
        members.update(fixed)
    return by_seed


def pairwise(systems: dict[str, list[tuple[str, str, str]]], metric: str, test: str, resamples: int,
             seed: int) -> dict[tuple[str, str], tuple[float, float]]:
    """{(a, b): (score(a) - score(b), p-value)} for every pair scored on the same sentences."""
    from harness.significance import sacrebleu_metrics

    names = sorted(systems)
    refs = {n: [r for _, r, _ in systems[n]] for n in names}
    hyps = {n: [h for _, _, h in systems[n]] for n in names}
    scorer = sacrebleu_metrics()[metric]
    score = {n: scorer.corpus_score(hyps[n], [refs[n]]).score for n in names}
    out = {}
    for i, a in enumerate(names):
        others = {b: hyps[b] for b in names[i + 1:] if refs[b] == refs[a]}
        if not others:
            continue
        for b, p in paired_pvalues(hyps[a], others, refs[a], metric, test, resamples, seed).items():
            out[(a, b)] = (score[a] - score[b], p)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("runs", nargs="+", type=Path)
    ap.add_argument("--metric", default="chrf", choices=["chrf", "bleu"])
    args = ap.parse_args(argv)
    config = read_json(args.runs[0] / "run.json")["config"]
    test = config["run"].get("significance_test", "paired_bootstrap")
    level = config["run"].get("significance_level", 0.05)
    resamples, seed = config["eval"].get("bootstrap_resamples", 1000), config["eval"].get("bootstrap_seed", 12345)
    seeds = configurations(args.runs)
    if len(seeds) < 2:
        print("need two seeds (a run with run.seeds >= 2) or two runs", file=sys.stderr)
        return 2
    tests = {s: pairwise(systems, args.metric, test, resamples, seed) for s, systems in seeds.items()}
    disagree = 0
    print(f"{args.metric} differences (row minus column) and p-values per seed; {test}, {resamples} resamples, "
          f"level {level}")
    for s1, s2 in itertools.combinations(sorted(tests, key=str), 2):
        both = agree = only_one = 0
        for pair in sorted(set(tests[s1]) & set(tests[s2])):
            (d1, p1), (d2, p2) = tests[s1][pair], tests[s2][pair]
            sig1, sig2 = p1 < level, p2 < level
            if sig1 and sig2:
                both += 1
                same = (d1 > 0) == (d2 > 0)
                agree += same
                disagree += not same
                print(f"  {'agree   ' if same else 'DISAGREE'} {pair[0]} vs {pair[1]}: seed {s1} {d1:+.1f} (p {p1:.3f}),"
                      f" seed {s2} {d2:+.1f} (p {p2:.3f})")
            elif sig1 or sig2:
                only_one += 1
        pairs = len(set(tests[s1]) & set(tests[s2]))
        print(f"seeds {s1} and {s2}: {pairs} pairs; {both} significant in both ({agree} same winner), "
              f"{only_one} significant in one only")
    print("disagreements:", disagree)
    return 1 if disagree else 0


if __name__ == "__main__":
    raise SystemExit(main())
