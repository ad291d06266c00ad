"""Uncertainty of test scores, computed by sacrebleu (nothing here does statistics by hand).

- `intervals`: a 95% confidence interval per metric from bootstrap resampling of the test sentences
  (`corpus_score(..., n_bootstrap=N)`).
- `paired_pvalues`: p-values of systems against one reference system on the same sentences, by paired
  bootstrap resampling or approximate randomization (`sacrebleu.significance.PairedTest`).

sacrebleu reads its RNG seed from the environment variable SACREBLEU_SEED at call time; `fixed_seed` sets it
for the duration of one call, so the configured seed is the one used and recorded.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

METRIC_KEYS = ("bleu", "chrf", "chrf_pp")
TESTS = {"paired_bootstrap": "bs", "approximate_randomization": "ar"}


def sacrebleu_metrics() -> dict[str, Any]:
    """The metrics every score of the harness uses (sacrebleu defaults; chrF++ is chrF with word bigrams)."""
    from sacrebleu.metrics import BLEU, CHRF

    return {"bleu": BLEU(), "chrf": CHRF(), "chrf_pp": CHRF(word_order=2)}


@contextmanager
def fixed_seed(seed: int) -> Iterator[None]:
    old = os.environ.get("SACREBLEU_SEED")
    os.environ["SACREBLEU_SEED"] = str(seed)
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("SACREBLEU_SEED", None)
        else:
            os.environ["SACREBLEU_SEED"] = old


@dataclass
class Interval:
    score: float  # the corpus score of the given sentences
    mean: float  # the mean of the bootstrap resamples
    ci: float  # half-width of the 95% interval, as sacrebleu reports it ('mean ± ci')

    @property
    def low(self) -> float:
        return self.mean - self.ci

    @property
    def high(self) -> float:
        return self.mean + self.ci


def intervals(hypotheses: Sequence[str], references: Sequence[str], resamples: int, seed: int,
              keys: Sequence[str] = METRIC_KEYS) -> dict[str, Interval]:
    """BLEU / chrF / chrF++ with their bootstrap 95% intervals (sacrebleu's `--confidence`)."""
    metrics = sacrebleu_metrics()
    out = {}
    with fixed_seed(seed):
        for key in keys:
            result = metrics[key].corpus_score(list(hypotheses), [list(references)], n_bootstrap=resamples)
            out[key] = Interval(float(result.score), float(result._mean), float(result._ci))
    return out


def paired_pvalues(reference_system: Sequence[str], systems: Mapping[str, Sequence[str]],
                   references: Sequence[str], metric: str, test: str, resamples: int,
                   seed: int) -> dict[str, float]:
    """p-value of each system against `reference_system` on the same sentences (sacrebleu's `--paired-bs` or
    `--paired-ar`). A system whose every sentence equals the reference system's gets p = 1: there is no
    difference to test (sacrebleu's own test counts a zero difference as never due to chance, p = 1/(N+1))."""
    from sacrebleu.significance import PairedTest

    pvalues = {name: 1.0 for name, hyps in systems.items() if list(hyps) == list(reference_system)}
    others = [(name, list(hyps)) for name, hyps in systems.items() if name not in pvalues]
    if not others:
        return pvalues
    for name, hyps in others:
        if len(hyps) != len(references):
            raise ValueError(f"{name}: {len(hyps)} hypotheses for {len(references)} references")
    with fixed_seed(seed):
        paired = PairedTest([("__reference__", list(reference_system)), *others],
                            {metric: sacrebleu_metrics()[metric]}, [list(references)],
                            test_type=TESTS[test], n_samples=resamples)
        _, scores = paired()
    results = next(v for k, v in scores.items() if k != "System")
    for (name, _), result in zip(others, results[1:]):
        pvalues[name] = float(result.p_value)
    return pvalues
