"""Loss masking: only target tokens and the EOS carry loss, counted exactly, and padding or prompt tokens never
change the loss (fast, on the tiny Llama)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from harness.config import DataConfig, ModelConfig
from harness.data import IGNORE_INDEX, Pair, collate, encode
from harness.losses import head_loss, target_loss
from harness.models import load_model

PAIRS = [Pair("Hello.", "Merhaba."), Pair("Where is the station, please?", "İstasyon nerede, lütfen?"),
         Pair("Thanks.", "Teşekkürler.")]


@pytest.fixture(scope="module")
def tiny(tiny_llama):
    loaded = load_model(ModelConfig(name=str(tiny_llama)), "cpu")
    loaded.model.eval()
    return loaded


def reference_loss(model, batch):
    """The plain way: every logit, shifted, cross-entropy where the label is not ignored."""
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1]
    labels = batch["labels"][:, 1:]
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), labels.reshape(-1),
                           ignore_index=IGNORE_INDEX, reduction="sum")


def test_target_loss_is_the_sum_over_target_tokens_only(tiny):
    enc = encode(PAIRS, tiny.tokenizer, DataConfig())
    batch = collate(enc, [0, 1, 2], tiny.tokenizer.pad_token_id)
    with torch.no_grad():
        loss, count = target_loss(tiny.model, batch)
        expected = reference_loss(tiny.model, batch)
    targets = [len(tiny.tokenizer(" " + p.target, add_special_tokens=False)["input_ids"]) + 1 for p in PAIRS]
    assert count == enc.target_tokens() == sum(targets)
    assert float(loss) == pytest.approx(float(expected), rel=1e-5)
    # the loss over every position (prompt included) is another number: the mask matters
    everything = dict(batch, labels=torch.where(batch["attention_mask"] == 1, batch["input_ids"], IGNORE_INDEX))
    with torch.no_grad():
        assert target_loss(tiny.model, everything)[1] > count


def test_padding_and_prompt_labels_do_not_change_the_loss(tiny):
    enc = encode(PAIRS, tiny.tokenizer, DataConfig())
    batch = collate(enc, [0, 1, 2], tiny.tokenizer.pad_token_id)
    other_pad = collate(enc, [0, 1, 2], tiny.tokenizer.pad_token_id + 5)
    with torch.no_grad():
        a, n = target_loss(tiny.model, batch)
        b, m = target_loss(tiny.model, other_pad)
        # changing one target token changes the loss
        changed = dict(batch, labels=batch["labels"].clone())
        row, col = 1, int(enc.prompt_lengths[1]) + 1
        changed["labels"][row, col] = (changed["labels"][row, col] + 7) % tiny.model.config.vocab_size
        c, _ = target_loss(tiny.model, changed)
    assert n == m and float(a) == pytest.approx(float(b), rel=1e-6)
    assert float(c) != pytest.approx(float(a), rel=1e-4)


def test_each_example_carries_its_target_and_eos_and_nothing_else():
    from tiny_models import build_tokenizer

    tok = build_tokenizer()
    enc = encode(PAIRS, tok, DataConfig())
    for i, pair in enumerate(PAIRS):
        labels = enc.labels(i)
        target = tok(" " + pair.target, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
        assert list(labels[labels != IGNORE_INDEX]) == target
        assert (labels[: enc.prompt_lengths[i]] == IGNORE_INDEX).all()
        assert list(enc.input_ids[i][enc.prompt_lengths[i]:]) == target


def test_head_loss_with_a_trained_head_equals_plain_cross_entropy(tiny):
    hidden = torch.randn(6, tiny.model.config.hidden_size)
    labels = torch.tensor([1, 5, 9, 2, 3, 4])
    head = tiny.model.get_output_embeddings()
    with torch.no_grad():
        expected = F.cross_entropy(head(hidden).float(), labels, reduction="sum")
        frozen = head.weight.requires_grad
        assert float(head_loss(tiny.model, hidden, labels)) == pytest.approx(float(expected), rel=1e-5)
        head.weight.requires_grad_(not frozen)
        try:
            assert float(head_loss(tiny.model, hidden, labels)) == pytest.approx(float(expected), rel=1e-5)
        finally:
            head.weight.requires_grad_(frozen)
