"""The throughput benchmark on the tiny model: behaviour only (same work counted, files written), never time."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # `benchmarks` is not an installed package

from benchmarks import throughput  # noqa: E402

STEPS, BATCH, SENTENCES = 2, 4, 4


@pytest.fixture(scope="module")
def bench(tiny_llama, tmp_path_factory):
    """One benchmark run on the tiny model: (the JSON it wrote, what it printed, the model key). One thread:
    on a shared 2-core machine two OpenMP threads can run several times slower than one."""
    folder = tmp_path_factory.mktemp("bench")
    out = folder / "bench.json"
    argv = ["--models", str(tiny_llama), "--steps", str(STEPS), "--batch-size", str(BATCH),
            "--eval-sentences", str(SENTENCES), "--threads", "1", "--repeats", "2", "--ceiling-size", "128",
            "--json", str(out),
            "--set", f"model.cache_dir={folder / 'cache'}", "--set", "eval.max_new_tokens=8"]
    import io
    from contextlib import redirect_stdout

    printed = io.StringIO()
    with redirect_stdout(printed):
        assert throughput.main(argv) == 0
    return json.loads(out.read_text(encoding="utf-8")), printed.getvalue(), str(tiny_llama)


def test_json_has_the_expected_keys(bench):
    data, _, model = bench
    assert {"settings", "device", "threads", "matmul_ceiling_gflops", "versions", "commit", "models"} <= set(data)
    assert data["matmul_ceiling_gflops"] > 0
    result = data["models"][model]
    assert {"technique", "label", "hp", "train", "ratios", "eval"} <= set(result)
    assert result["technique"] == "lora" and result["hp"]["r"] == 16 and result["hp"]["dropout"] == 0.0
    assert set(result["train"]) == {"naive", "strong", "harness"}
    for m in result["train"].values():
        assert {"s_per_step", "useful_tok_s", "nonpad_tok_s", "flops_per_step", "gflops_s", "useful_tokens",
                "nonpad_tokens", "positions", "steps"} <= set(m)
        assert m["steps"] == STEPS
        assert m["ceiling_gflops"] > 0  # measured right after each variant
        rounds = m["extra"]["s_per_step_runs"]  # two rounds taking turns; the median (lower middle) reported
        assert len(rounds) == 2 and m["s_per_step"] == pytest.approx(min(rounds), abs=1e-4)
    assert set(result["ratios"]) == {"c/a", "c/b"}
    assert {"batched_sentences_s", "single_sentences_s", "speedup", "identical", "differing"} <= set(result["eval"])


def test_all_variants_process_the_same_useful_tokens(bench):
    data, _, model = bench
    train = data["models"][model]["train"]
    counts = {m["useful_tokens"] for m in train.values()}
    assert len(counts) == 1 and counts.pop() > 0
    assert len({m["nonpad_tokens"] for m in train.values()}) == 1
    # What the harness loop and the Trainer counted themselves matches the shared numerator.
    assert train["harness"]["useful_tokens_seen"] == train["harness"]["useful_tokens"]
    assert train["strong"]["useful_tokens_seen"] == train["strong"]["useful_tokens"]


def test_naive_does_more_work_per_step_than_the_harness(bench):
    data, _, model = bench
    train = data["models"][model]["train"]
    assert train["naive"]["flops_per_step"] > train["harness"]["flops_per_step"]
    assert train["naive"]["flops_counted"] > train["harness"]["flops_counted"]
    assert train["naive"]["positions"] == STEPS * BATCH * data["models"][model]["max_seq_length"]
    assert train["harness"]["positions"] < train["naive"]["positions"]


def test_harness_losses_are_finite(bench):
    data, _, model = bench
    losses = data["models"][model]["train"]["harness"]["losses"]
    assert len(losses) == STEPS + 1 and all(math.isfinite(x) and x > 0 for x in losses)


def test_eval_comparison(bench):
    data, printed, model = bench
    ev = data["models"][model]["eval"]
    # The adapter gets random weights first, so batched (LoRA folded into the weights) vs one-at-a-time (peft's
    # layers) compares two computations of the same adapted model; greedy outputs must agree.
    assert ev["sentences"] == SENTENCES and ev["identical"] == SENTENCES
    assert ev["batched_sentences_s"] > 0 and ev["single_sentences_s"] > 0
    assert len(ev["differing"]) == min(5, SENTENCES - ev["identical"])
    assert "c/a" in printed and "c/b" in printed and "identical outputs" in printed


def test_bad_technique_is_a_user_error(capsys):
    assert throughput.main(["--technique", "lroa", "--skip-eval"]) == 2
    assert "lora" in capsys.readouterr().err


def test_bad_variant_is_a_user_error(capsys):
    assert throughput.main(["--variants", "harness,trainer", "--skip-eval"]) == 2
    err = capsys.readouterr().err
    assert "--variants: trainer" in err and "naive, strong, harness" in err
