"""Decoding stop rules and options on a tiny real model: a row stops at its own cap or at its first stop token
(kept, then cut from the text), the cap follows the source length, a translation is one line, and beam search,
sampling and chat-template prompts reach the model."""

from __future__ import annotations

import pytest
import torch

from harness.config import DataConfig, ModelConfig
from harness.decoding import greedy_generate
from harness.errors import BenchError
from harness.evaluation import RowLimit, stop_token_ids, translate
from harness.models import load_model

SOURCES = ["Good morning.", "Where is the station, please?", "I would like two tickets to Ankara for Friday."]


@pytest.fixture(scope="module")
def tiny(tiny_llama):
    return load_model(ModelConfig(name=str(tiny_llama)), "cpu")


def prompts(tiny, sources=SOURCES):
    tok = tiny.tokenizer
    tok.padding_side = "left"
    enc = tok([f"English: {s}\nTurkish:" for s in sources], return_tensors="pt", padding=True)
    return enc["input_ids"], enc["attention_mask"]


def free_run(tiny, n=12):
    ids, mask = prompts(tiny)
    with torch.inference_mode():
        return greedy_generate(tiny.model, ids, mask, [n] * len(SOURCES), stop=[])


def test_each_row_stops_at_its_own_cap(tiny):
    free = free_run(tiny)
    assert [len(r) for r in free] == [12, 12, 12]
    ids, mask = prompts(tiny)
    with torch.inference_mode():
        capped = greedy_generate(tiny.model, ids, mask, [3, 7, 1], stop=[])
    assert [len(r) for r in capped] == [3, 7, 1]
    assert capped == [free[0][:3], free[1][:7], free[2][:1]]  # leaving the batch changes nobody's tokens


def test_a_row_stops_at_its_first_stop_token_and_keeps_it(tiny):
    free = free_run(tiny)
    token = free[1][4]
    first = free[1].index(token)
    ids, mask = prompts(tiny)
    with torch.inference_mode():
        stopped = greedy_generate(tiny.model, ids, mask, [12, 12, 12], stop=[token])
    assert stopped[1] == free[1][: first + 1]
    for row in (0, 2):
        cut = free[row].index(token) + 1 if token in free[row] else 12
        assert stopped[row] == free[row][:cut]


def test_row_limit_marks_rows_at_their_own_length():
    limit = RowLimit([2, 4], prompt_width=5, num_beams=2)
    assert limit.limits.tolist() == [7, 7, 9, 9]
    assert limit(torch.zeros(4, 7, dtype=torch.long), None).tolist() == [True, True, False, False]
    assert limit(torch.zeros(4, 9, dtype=torch.long), None).tolist() == [True, True, True, True]
    assert limit(torch.zeros(4, 6, dtype=torch.long), None).tolist() == [False] * 4
    # beam search's candidates: 6 rows per sentence with two stop tokens
    assert limit(torch.zeros(12, 7, dtype=torch.long), None).tolist() == [True] * 6 + [False] * 6


def test_the_cap_follows_the_source_length_and_max_new_tokens(tiny, monkeypatch):
    from harness import evaluation

    seen = {}

    def record(model, input_ids, attention_mask, caps, stop):
        for row, cap in zip(input_ids, caps):
            prompt = tiny.tokenizer.decode(row, skip_special_tokens=True)
            seen[next(s for s in SOURCES if s in prompt)] = cap
        return [[tiny.tokenizer.eos_token_id]] * len(caps)

    monkeypatch.setattr(evaluation, "greedy_generate", record)
    translate(tiny.model, tiny.tokenizer, SOURCES, DataConfig(), max_new_tokens=1000, batch_size=2)
    assert seen == {s: 3 * len(tiny.tokenizer(s, add_special_tokens=False)["input_ids"]) + 8 for s in SOURCES}
    translate(tiny.model, tiny.tokenizer, SOURCES, DataConfig(), max_new_tokens=5)
    assert set(seen.values()) == {5}


def test_a_translation_is_the_first_line_stripped(tiny, monkeypatch):
    from harness import evaluation

    text = tiny.tokenizer("  Merhaba dünya. \nİkinci satır", add_special_tokens=False)["input_ids"]
    monkeypatch.setattr(evaluation, "greedy_generate", lambda m, i, a, caps, stop: [text] * len(caps))
    assert translate(tiny.model, tiny.tokenizer, SOURCES[:2], DataConfig()) == ["Merhaba dünya."] * 2


def test_stop_tokens_include_eos_newlines_and_end_of_turn_tokens(tiny):
    tok = tiny.tokenizer
    stops = stop_token_ids(tok)
    newline = [i for i in range(len(tok)) if "\n" in tok.decode([i])]
    assert tok.eos_token_id in stops and set(newline) <= set(stops)
    others = [i for i in range(len(tok)) if i not in stops]
    assert others and all("\n" not in tok.decode([i]) for i in others)  # nothing else stops a row
    assert tok.pad_token_id not in stops or tok.pad_token_id == tok.eos_token_id


def test_beam_search_and_sampling_reach_generate(tiny):
    model, tok = tiny.model, tiny.tokenizer
    cfg = DataConfig()
    greedy = translate(model, tok, SOURCES, cfg, max_new_tokens=8)
    beams = translate(model, tok, SOURCES, cfg, max_new_tokens=8, num_beams=4)
    assert beams == translate(model, tok, SOURCES, cfg, max_new_tokens=8, num_beams=4)  # deterministic
    assert beams != greedy  # four beams find other, more probable, sequences on this random model
    # top_k=1 sampling is greedy; hot sampling depends on the seed
    torch.manual_seed(0)
    assert translate(model, tok, SOURCES, cfg, max_new_tokens=8, top_k=1) == greedy
    runs = []
    for seed in (1, 1, 2):
        torch.manual_seed(seed)
        runs.append(translate(model, tok, SOURCES, cfg, max_new_tokens=8, temperature=5.0))
    assert runs[0] == runs[1] and runs[0] != runs[2] and runs[0] != greedy


def test_chat_template_prompts(tiny):
    from harness.data import Pair, build_prompt, encode

    tok = tiny.tokenizer
    cfg = DataConfig(use_chat_template=True)
    with pytest.raises(BenchError, match="data.use_chat_template: the tokenizer of this model has no chat template"):
        build_prompt("Hello.", cfg, tok)
    tok.chat_template = ("{{ bos_token }}{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}{% endfor %}"
                         "{% if add_generation_prompt %}<|assistant|>{% endif %}")
    try:
        prompt = build_prompt("Hello.", cfg, tok)
        assert prompt == "<s><|user|>English: Hello.\nTurkish:<|assistant|>"
        enc = encode([Pair("Hello.", "Merhaba.")], tok, cfg)
        # the template holds the BOS text: the tokenizer must not add a second one
        expected = tok(prompt, add_special_tokens=False)["input_ids"]
        assert list(enc.input_ids[0][: enc.prompt_lengths[0]]) == expected
        assert list(enc.input_ids[0]).count(tok.bos_token_id) == 1
        out = translate(tiny.model, tok, ["Hello."], cfg, max_new_tokens=4)
        assert out == translate(tiny.model, tok, ["Hello."], cfg, max_new_tokens=4)
    finally:
        tok.chat_template = None
