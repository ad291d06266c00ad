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


@pytest.mark.parametrize("name", ["lora", "prefix_tuning", "soft_prompting"])
def test_cached_greedy_decoding_equals_full_recomputation(name, tiny_llama, tiny_gemma):
    """Our KV-cached greedy loop gives the tokens that recomputing the whole sequence every step gives, for
    weight adapters and for prompt-learning adapters (whose cached generate in peft is wrong), and rows of a
    batch do not influence each other."""
    import torch

    from harness.decoding import greedy_generate
    from harness.evaluation import stop_token_ids
    from techniques import registry

    sources = ["Good morning.", "Where is the station, please?", "Thanks."]
    for model_dir in (tiny_llama, tiny_gemma):
        loaded = load_model(ModelConfig(name=str(model_dir)), "cpu")
        tech = registry.get(name)
        hp = dict(tech.defaults, num_virtual_tokens=4, init_text="")
        torch.manual_seed(0)
        model = tech.wrap(loaded.model, hp, loaded.tokenizer)
        with torch.no_grad():  # a non-zero adapter, so that it matters
            for n, p in model.named_parameters():
                if p.requires_grad:
                    p.normal_(0, 0.5)
        model.eval()
        tok = loaded.tokenizer
        tok.padding_side = "left"
        prompts = [DataConfig().prompt_template.format(source=s) for s in sources]
        enc = tok(prompts, return_tensors="pt", padding=True)
        stop = stop_token_ids(tok)
        with torch.inference_mode():
            ours = greedy_generate(model, enc["input_ids"], enc["attention_mask"], [12] * 3, stop)
            for i, prompt in enumerate(prompts):
                one = tok([prompt], return_tensors="pt")
                ids, ref = one["input_ids"], []
                for _ in range(12):  # the training-time forward over the whole sequence, every step
                    token = int(model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits[0, -1].argmax())
                    ref.append(token)
                    if token in stop:
                        break
                    ids = torch.cat([ids, torch.tensor([[token]])], dim=1)
                single = greedy_generate(model, one["input_ids"], one["attention_mask"], [12], stop)[0]
                assert single == ref, (name, model_dir.name, i)
                assert ours[i] == single, (name, model_dir.name, i)


def test_beam_search_on_a_prefix_adapter_is_refused_with_the_fix(tiny_gemma):
    import torch

    from harness.errors import BenchError
    from techniques import registry

    tech = registry.get("prefix_tuning")
    torch.manual_seed(0)
    loaded = load_model(ModelConfig(name=str(tiny_gemma)), "cpu")
    model = tech.wrap(loaded.model, dict(tech.defaults, num_virtual_tokens=4), loaded.tokenizer)
    with pytest.raises(BenchError, match=r"num_beams=2: beam search .* Fix: use greedy decoding"):
        translate(model, loaded.tokenizer, ["Hello."], DataConfig(), num_beams=2)
    # greedy decoding of the prefix adapter is allowed, and a sentence's output does not depend on its batch
    alone = translate(model, loaded.tokenizer, ["Hello."], DataConfig(), max_new_tokens=4)
    assert translate(model, loaded.tokenizer, ["Hello.", "Good night."], DataConfig(), max_new_tokens=4)[:1] == alone


def test_next_tokens_are_the_argmax_of_the_models_own_logits_for_every_batch_size(tiny):
    """The decoding head (laid out for fast small batches on CPU, see harness.decoding) picks the tokens
    the model's own logits pick, for 1 to 20 rows, with and without final soft-capping."""
    import torch

    from harness.decoding import next_tokens

    model = tiny.model
    torch.manual_seed(0)
    ids = torch.randint(0, model.config.vocab_size, (20, 7))
    with torch.inference_mode():
        out = model(input_ids=ids, output_hidden_states=True)
        hidden, reference = out.hidden_states[-1][:, -1], out.logits[:, -1].argmax(-1)
        for rows in (1, 3, 4, 9, 16, 20):
            assert next_tokens(model, hidden[:rows]).tolist() == reference[:rows].tolist(), rows
        model.config.final_logit_softcapping = 0.05  # squeezes the logits hard: argmax must survive it
        try:
            capped = model(input_ids=ids).logits[:, -1]
            assert next_tokens(model, hidden).tolist() == capped.argmax(-1).tolist()
        finally:
            model.config.final_logit_softcapping = None
