"""Data splitting and sampling: exact split sizes, nothing lost or shared between splits, the train/validation/
test file options, the language options of hub datasets, seeded samples and batches."""

from __future__ import annotations

import numpy as np
import pytest

from harness import data
from harness.config import DataConfig
from harness.data import Pair, batch_indices, load_splits, sample


def tsv(path, pairs):
    path.write_text("".join(f"{s}\t{t}\n" for s, t in pairs), encoding="utf-8")
    return str(path)


ALL = [(f"Sentence {i}.", f"Cümle {i}.") for i in range(100)]


def test_made_splits_partition_the_file_exactly(tmp_path):
    splits = load_splits(DataConfig(dataset=tsv(tmp_path / "all.tsv", ALL), test_fraction=0.2,
                                    validation_fraction=0.25))
    # 20% of 100 for test, then 25% of the remaining 80 for validation, the rest trains
    assert splits.sizes() == {"train": 60, "validation": 20, "test": 20}
    got = sorted((p.source, p.target) for p in splits.train + splits.validation + splits.test)
    assert got == sorted(ALL)  # every pair in exactly one split
    assert splits.provenance["made_splits"] == ["test", "validation"]
    assert splits.provenance["train_removed_as_test_duplicates"] == 0
    assert splits.provenance["sizes"] == splits.sizes() and len(splits.provenance["sha256"]) == 16
    # a tiny fraction still gives one sentence
    tiny = load_splits(DataConfig(dataset=tsv(tmp_path / "ten.tsv", ALL[:10]), test_fraction=0.01,
                                  validation_fraction=0.01))
    assert tiny.sizes() == {"train": 8, "validation": 1, "test": 1}


def test_max_train_samples_caps_train_only_and_the_fingerprint_follows_the_data(tmp_path):
    path = tsv(tmp_path / "all.tsv", ALL)
    full = load_splits(DataConfig(dataset=path))
    capped = load_splits(DataConfig(dataset=path, max_train_samples=7))
    assert capped.train == full.train[:7] and capped.test == full.test and capped.validation == full.validation
    assert capped.provenance["sha256"] != full.provenance["sha256"]
    assert load_splits(DataConfig(dataset=path)).provenance["sha256"] == full.provenance["sha256"]


def test_train_validation_and_test_files(tmp_path):
    train = tsv(tmp_path / "train.tsv", ALL[:50] + [("Sentence 60.", "Tekrar.")])
    validation = tsv(tmp_path / "dev.tsv", ALL[50:60] + [("SENTENCE  61.", "Büyük.")])
    test = tsv(tmp_path / "test.tsv", ALL[60:70])
    splits = load_splits(DataConfig(dataset="embedded", train_file=train, validation_file=validation,
                                    test_file=test))
    assert [p.source for p in splits.test] == [s for s, _ in ALL[60:70]]
    # test sentences (compared case- and space-insensitively) never train or validate
    assert [p.source for p in splits.train] and "Sentence 60." not in {p.source for p in splits.train}
    assert sorted(p.source for p in splits.train) == sorted(s for s, _ in ALL[:50])
    assert sorted(p.source for p in splits.validation) == sorted(s for s, _ in ALL[50:60])
    assert splits.provenance["train_removed_as_test_duplicates"] == 1
    assert splits.provenance["files"] == {"train": train, "validation": validation, "test": test}
    assert splits.provenance["made_splits"] == []
    capped = load_splits(DataConfig(dataset="embedded", train_file=train, validation_file=validation,
                                    test_file=test, max_train_samples=51))
    assert len(capped.train) == 50 and "Sentence 60." not in {p.source for p in capped.train}  # cap after removal
    # only a test file: validation is made from the given train data
    only_test = load_splits(DataConfig(dataset=tsv(tmp_path / "a.tsv", ALL[:40]), test_file=test,
                                       validation_fraction=0.25))
    assert only_test.sizes() == {"train": 30, "validation": 10, "test": 10}
    assert only_test.provenance["made_splits"] == ["validation"]


def test_hub_datasets_take_the_language_options(monkeypatch):
    rows = {"train": [{"translation": {"de": f"Satz {i}.", "tr": f"Cümle {i}."}} for i in range(10)],
            "validation": [{"translation": {"de": "Hallo.", "tr": "Merhaba."}}],
            "test": [{"translation": {"de": "Danke.", "tr": "Teşekkürler."}}]}
    calls = []

    def load_dataset(name, config):
        calls.append((name, config))
        return rows

    import datasets

    monkeypatch.setattr("harness.models.check_hub", lambda *a, **k: None)  # the hub itself is out of reach
    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    splits = load_splits(DataConfig(dataset="org/parallel", dataset_config="de-tr", source_lang="de"))
    assert calls == [("org/parallel", "de-tr")]
    assert splits.test == [Pair("Danke.", "Teşekkürler.")] and splits.validation == [Pair("Hallo.", "Merhaba.")]
    assert len(splits.train) == 10 and splits.train[0].source.startswith("Satz")
    assert splits.provenance["files"]["test"] == "hub:org/parallel/de-tr:test"
    # with the default source language (en) no row has a pair: every split is empty
    with pytest.raises(data.BenchError, match="the train split of 'org/parallel' is empty"):
        load_splits(DataConfig(dataset="org/parallel", dataset_config="de-tr"))


def test_sample_is_seeded_and_sized():
    pairs = [Pair(s, t) for s, t in ALL]
    assert sample(pairs, None, 1) == pairs and sample(pairs, 100, 1) == pairs and sample(pairs, 500, 1) == pairs
    a, b, c = sample(pairs, 10, 1), sample(pairs, 10, 1), sample(pairs, 10, 2)
    assert a == b and a != c and len(a) == 10 and len(set(a)) == 10 and set(a) <= set(pairs)
    assert sample(pairs, 99, 1) != pairs[:99]


@pytest.mark.parametrize("group", [False, True])
def test_batches_cover_every_example_once_and_follow_seed_and_epoch(group):
    lengths = np.array([(i * 37) % 23 + 1 for i in range(103)])
    batches = batch_indices(lengths, 8, seed=3, epoch=1, group_by_length=group)
    flat = [i for b in batches for i in b]
    assert sorted(flat) == list(range(103))
    assert [len(b) for b in batches].count(8) == 12 and sorted(len(b) for b in batches)[0] == 7
    assert batches == batch_indices(lengths, 8, seed=3, epoch=1, group_by_length=group)
    assert batches != batch_indices(lengths, 8, seed=3, epoch=2, group_by_length=group)
    assert batches != batch_indices(lengths, 8, seed=4, epoch=1, group_by_length=group)
    if group:  # each batch holds similar lengths, longest first
        for b in batches:
            assert [lengths[i] for i in b] == sorted((lengths[i] for i in b), reverse=True)
        longest = [max(lengths[i] for i in b) for b in batches]
        assert longest != sorted(longest, reverse=True)  # the batch order is shuffled, not longest first
        padding = sum(max(lengths[b]) * len(b) - lengths[b].sum() for b in map(list, batches))
        plain = batch_indices(lengths, 8, seed=3, epoch=1, group_by_length=False)
        assert padding < sum(max(lengths[b]) * len(b) - lengths[b].sum() for b in map(list, plain)) / 3
    unshuffled = batch_indices(lengths, 8, seed=3, epoch=1, group_by_length=False, shuffle=False)
    assert [i for b in unshuffled for i in b] == list(range(103))


def test_batches_of_a_seed_stay_the_same_across_versions():
    """A run is reproducible from its recorded seed only while the seed -> order mapping stays put."""
    lengths = np.array([3, 1, 4, 1, 5, 9, 2, 6, 5, 3])
    assert batch_indices(lengths, 4, seed=1, epoch=2, group_by_length=False) == [[6, 8, 7, 2], [5, 9, 3, 1], [0, 4]]
    assert batch_indices(lengths, 4, seed=1, epoch=2, group_by_length=True) == [[3, 1], [5, 7, 8, 4], [2, 9, 0, 6]]
    # length groups are formed within chunks of 50 batches: which examples share a batch is pinned too
    import hashlib

    many = batch_indices(np.array([(i * 7919) % 97 for i in range(250)]), 2, seed=5, epoch=1, group_by_length=True)
    assert hashlib.sha256(str(sorted(map(tuple, many))).encode()).hexdigest()[:16] == "f324316ba55174fa"


def test_provenance_and_the_empty_split_errors(tmp_path):
    splits = load_splits(DataConfig(dataset=tsv(tmp_path / "all.tsv", ALL), split_seed=9))
    assert {k: splits.provenance[k] for k in ("dataset", "dataset_config", "split_seed", "files")} == {
        "dataset": str(tmp_path / "all.tsv"), "dataset_config": None, "split_seed": 9,
        "files": {"train": str(tmp_path / "all.tsv")}}
    folder = tmp_path / "folder"
    folder.mkdir()
    tsv(folder / "test.tsv", ALL[:5])
    tsv(folder / "validation.tsv", ALL[5:8])
    with pytest.raises(data.BenchError, match="the train split of .* is empty"):  # no train file at all
        load_splits(DataConfig(dataset=str(folder)))
    tsv(folder / "train.tsv", ALL[10:20])
    tsv(folder / "validation.tsv", ALL[:3])  # every validation sentence is a test sentence
    with pytest.raises(data.BenchError, match=r"the validation split of .* is empty after reading and filtering "
                                              r"\(empty lines, test sentences removed from train\)\. Give more data "
                                              r"or a separate data\.validation_file"):
        load_splits(DataConfig(dataset=str(folder)))
