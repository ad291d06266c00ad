"""Data: readers, splits, de-duplication, tokenization with loss masking, truncation, batching, cache."""

from __future__ import annotations

import numpy as np
import pytest
from transformers import AutoTokenizer

from harness.config import DataConfig
from harness.data import (
    CORPUS_DIR, IGNORE_INDEX, Pair, batch_indices, collate, encode, encode_cached, load_splits, read_pairs,
)
from harness.errors import BenchError


@pytest.fixture(scope="module")
def tokenizer(tiny_llama):
    return AutoTokenizer.from_pretrained(tiny_llama)


def write(path, text):
    path.write_text(text, encoding="utf-8")
    return path


def test_tsv_two_and_four_columns(tmp_path):
    two = read_pairs(write(tmp_path / "a.tsv", "Hello.\tMerhaba.\n\nThanks.\tTeşekkürler.\n"))
    assert two == [Pair("Hello.", "Merhaba."), Pair("Thanks.", "Teşekkürler.")]
    four = read_pairs(write(tmp_path / "b.tsv", "eng\ttur\tGood night.\tİyi geceler.\n"))
    assert four == [Pair("Good night.", "İyi geceler.")]


def test_tsv_with_wrong_columns_names_file_and_line(tmp_path):
    path = write(tmp_path / "bad.tsv", "a\tb\nc\td\te\n")
    with pytest.raises(BenchError, match=r"bad.tsv:2 has 3 tab-separated columns but the file's first line has 2"):
        read_pairs(path)
    path = write(tmp_path / "bad3.tsv", "a\tb\tc\n")
    with pytest.raises(BenchError, match=r"bad3.tsv:1 has 3 tab-separated columns; a TSV must have 2"):
        read_pairs(path)


def test_jsonl_formats_and_errors(tmp_path):
    path = write(tmp_path / "x.jsonl", '{"en": "Hi.", "tr": "Selam."}\n{"translation": {"en": "Yes.", "tr": "Evet."}}\n'
                 '{"source": "No.", "target": "Hayır."}\n')
    assert [p.target for p in read_pairs(path)] == ["Selam.", "Evet.", "Hayır."]
    with pytest.raises(BenchError, match=r"y.jsonl:2 is not valid JSON"):
        read_pairs(write(tmp_path / "y.jsonl", '{"en": "a", "tr": "b"}\n{oops\n'))
    with pytest.raises(BenchError, match=r"z.jsonl:1 has keys \['foo'\]"):
        read_pairs(write(tmp_path / "z.jsonl", '{"foo": 1}\n'))


def test_missing_file_and_unknown_dataset(tmp_path):
    with pytest.raises(BenchError, match="does not exist"):
        load_splits(DataConfig(dataset=str(tmp_path / "nope.tsv")))
    with pytest.raises(BenchError, match="not 'embedded', not an existing file or folder"):
        load_splits(DataConfig(dataset="nonsense"))


def test_hub_dataset_offline_is_a_clear_error():
    with pytest.raises(BenchError, match="data.dataset: 'Helsinki-NLP/opus-100' is not in the local Hugging Face "
                                         "cache.*data.dataset=embedded"):
        load_splits(DataConfig(dataset="Helsinki-NLP/opus-100", dataset_config="en-tr"))


def test_embedded_corpus_is_real_and_sized():
    splits = load_splits(DataConfig())
    sizes = splits.sizes()
    assert sizes["train"] >= 600 and sizes["validation"] >= 150 and sizes["test"] >= 150
    text = " ".join(p.target for p in splits.train)
    for char in "çğıİöşü":
        assert char in text
    assert (CORPUS_DIR / "README.md").is_file()
    sources = [p.source for p in splits.train + splits.validation + splits.test]
    assert len(set(sources)) == len(sources)  # no sentence in two splits


def test_seeded_split_is_deterministic_and_removes_test_sources(tmp_path):
    lines = "".join(f"Sentence number {i}.\tCümle {i}.\n" for i in range(200))
    lines += "Sentence number 7.\tYedinci cümle.\n"  # a duplicate source: must not leak across splits
    path = write(tmp_path / "all.tsv", lines)
    a = load_splits(DataConfig(dataset=str(path)))
    b = load_splits(DataConfig(dataset=str(path)))
    assert a.train == b.train and a.test == b.test
    assert a.sizes()["test"] == 20 and a.sizes()["validation"] == 18  # 10% of all, then 10% of the rest
    test_sources = {p.source.lower() for p in a.test}
    assert not test_sources & {p.source.lower() for p in a.train}
    assert not test_sources & {p.source.lower() for p in a.validation}
    c = load_splits(DataConfig(dataset=str(path), split_seed=7))
    assert c.test != a.test
    assert len(load_splits(DataConfig(dataset=str(path), max_train_samples=10)).train) == 10


def test_folder_with_split_files_and_empty_split(tmp_path):
    write(tmp_path / "train.tsv", "a\tb\nc\td\n")
    write(tmp_path / "dev.tsv", "e\tf\n")
    write(tmp_path / "test.tsv", "A\tb\n")
    splits = load_splits(DataConfig(dataset=str(tmp_path)))
    assert [p.source for p in splits.train] == ["c"]  # 'a' is a test sentence (case-insensitive)
    assert [p.source for p in splits.validation] == ["e"] and splits.provenance["made_splits"] == []
    write(tmp_path / "test.tsv", "a\tb\nc\td\n")
    with pytest.raises(BenchError, match="the train split of .* is empty after reading and filtering"):
        load_splits(DataConfig(dataset=str(tmp_path)))


def test_shared_tatoeba_test_file_loads(shared_data, tokenizer):
    pairs = read_pairs(shared_data / "test.tsv")[:50]
    assert len(pairs) == 50 and all(p.source and p.target for p in pairs)
    enc = encode(pairs, tokenizer, DataConfig(max_seq_length=1024))
    for i in range(len(enc)):
        labels = enc.labels(i)
        prompt = enc.prompt_lengths[i]
        assert (labels[:prompt] == IGNORE_INDEX).all()
        assert (labels[prompt:] != IGNORE_INDEX).all()
        assert labels[-1] == tokenizer.eos_token_id


def test_labels_cover_target_and_eos_only(tokenizer):
    cfg = DataConfig()
    pair = Pair("I love my mother.", "Annemi seviyorum.")
    enc = encode([pair], tokenizer, cfg)
    ids, labels = enc.input_ids[0], enc.labels(0)
    prompt_ids = tokenizer(cfg.prompt_template.format(source=pair.source))["input_ids"]
    target_ids = tokenizer(" " + pair.target, add_special_tokens=False)["input_ids"]
    assert list(ids) == prompt_ids + target_ids + [tokenizer.eos_token_id]
    assert list(labels) == [IGNORE_INDEX] * len(prompt_ids) + target_ids + [tokenizer.eos_token_id]
    assert tokenizer.decode(ids[enc.prompt_lengths[0]:], skip_special_tokens=True) == " Annemi seviyorum."


def test_truncation_and_dropping(tokenizer):
    long = Pair("Short.", " ".join(["uzun"] * 60))
    prompt = len(tokenizer(DataConfig().prompt_template.format(source="Short."))["input_ids"])
    cfg = DataConfig(max_seq_length=prompt + 5)
    enc = encode([long], tokenizer, cfg)
    assert len(enc.input_ids[0]) == prompt + 5 and enc.prompt_lengths[0] == prompt
    assert enc.labels(0)[-1] != tokenizer.eos_token_id  # cut on the right
    too_long_prompt = Pair(" ".join(["word"] * (prompt + 5)), "kelime")
    enc = encode([too_long_prompt, long], tokenizer, cfg)
    assert len(enc) == 1 and enc.dropped == 1


def test_collate_pads_dynamically_and_masks_padding(tokenizer):
    pairs = [Pair("Hi.", "Selam."), Pair("How are you today, my friend?", "Bugün nasılsın, dostum?")]
    enc = encode(pairs, tokenizer, DataConfig())
    batch = collate(enc, [0, 1], tokenizer.pad_token_id)
    width = max(len(x) for x in enc.input_ids)
    assert batch["input_ids"].shape == (2, width)  # the longest in the batch, not max_seq_length
    short = len(enc.input_ids[0])
    assert (batch["labels"][0, short:] == IGNORE_INDEX).all()
    assert (batch["attention_mask"][0, short:] == 0).all()
    assert batch["attention_mask"][1].all()


def test_length_grouping_cuts_padding_and_is_seeded():
    rng = np.random.default_rng(0)
    lengths = rng.integers(5, 60, size=800)

    def padding(batches):
        return sum(max(lengths[i] for i in b) * len(b) - sum(lengths[i] for i in b) for b in batches)

    grouped = batch_indices(lengths, 16, seed=1, epoch=1, group_by_length=True)
    plain = batch_indices(lengths, 16, seed=1, epoch=1, group_by_length=False)
    assert sorted(i for b in grouped for i in b) == list(range(800))
    assert padding(grouped) < 0.2 * padding(plain)
    assert grouped == batch_indices(lengths, 16, seed=1, epoch=1, group_by_length=True)
    assert grouped != batch_indices(lengths, 16, seed=1, epoch=2, group_by_length=True)


def test_tokenized_cache_reuses_and_separates_tokenizers(tmp_path, tokenizer, tiny_llama):
    from tiny_models import build_tokenizer

    pairs = [Pair("Good morning.", "Günaydın."), Pair("See you.", "Görüşürüz.")]
    cfg = DataConfig()
    first = encode_cached(pairs, tokenizer, cfg, tmp_path, "train")
    again = encode_cached(pairs, tokenizer, cfg, tmp_path, "train")
    assert [list(x) for x in first.input_ids] == [list(x) for x in again.input_ids]
    assert len(list(tmp_path.glob("*.npz"))) == 1
    other = build_tokenizer(vocab_size=400)
    encode_cached(pairs, other, cfg, tmp_path, "train")
    assert len(list(tmp_path.glob("*.npz"))) == 2  # another tokenizer never reuses these ids
