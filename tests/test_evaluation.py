"""Evaluation: sacrebleu scores and signatures, stop tokens, batched generation equal to one at a time."""

from __future__ import annotations

import pytest

from harness.config import DataConfig, ModelConfig
from harness.evaluation import score, stop_token_ids, translate
from harness.models import load_model


def test_scores_and_signatures():
    perfect = score(["Bugün hava güzel.", "Merhaba dünya."], ["Bugün hava güzel.", "Merhaba dünya."])
    assert perfect.bleu == pytest.approx(100) and perfect.chrf == pytest.approx(100) and perfect.n == 2
    wrong = score(["The weather is nice.", "Hello world."], ["Bugün hava güzel.", "Merhaba dünya."])
    assert wrong.chrf < 20 and wrong.bleu < 15  # only the full stops match
    assert perfect.signatures["bleu"].startswith("nrefs:1|case:mixed|eff:no|tok:13a|smooth:exp|version:")
    assert "nw:2" in perfect.signatures["chrf_pp"]


@pytest.fixture(scope="module")
def tiny(tiny_gemma):
    return load_model(ModelConfig(name=str(tiny_gemma)), "cpu")


def test_stop_tokens_hold_eos_and_every_newline_token(tiny):
    tok = tiny.tokenizer
    stops = stop_token_ids(tok)
    assert tok.eos_token_id in stops
    newline_tokens = [i for i in range(len(tok)) if "\n" in tok.decode([i])]
    assert newline_tokens and set(newline_tokens) <= set(stops)
    assert stop_token_ids(tok) is stops  # computed once per tokenizer


def test_batched_generation_equals_one_at_a_time(tiny):
    sources = ["Good morning.", "Where is the station, please?", "I would like two tickets to Ankara for Friday.",
               "Thanks.", "My sister works at a hospital in İzmir.", "Is it going to rain tomorrow?"]
    cfg = DataConfig()
    batched = translate(tiny.model, tiny.tokenizer, sources, cfg, batch_size=6, max_new_tokens=20)
    single = [translate(tiny.model, tiny.tokenizer, [s], cfg, batch_size=1, max_new_tokens=20)[0] for s in sources]
    assert batched == single
    assert all("\n" not in h for h in batched)
    assert translate(tiny.model, tiny.tokenizer, [], cfg) == []
