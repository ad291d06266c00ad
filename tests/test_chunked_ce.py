"""The chunked fused linear cross-entropy gives the plain loss and gradient, in any number of chunks."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from harness import chunked_ce
from harness.chunked_ce import linear_cross_entropy


def _plain(hidden, weight, labels, cap):
    logits = hidden @ weight.t()
    if cap:
        logits = torch.tanh(logits / cap) * cap
    return F.cross_entropy(logits, labels, reduction="sum")


@pytest.mark.parametrize("cap", [None, 3.0])
@pytest.mark.parametrize("chunk_rows", [1, 7, 1000])
def test_loss_and_gradient_equal_the_plain_cross_entropy(cap, chunk_rows, monkeypatch):
    vocab = 300
    monkeypatch.setattr(chunked_ce, "CHUNK_BYTES", 4 * vocab * chunk_rows)
    torch.manual_seed(0)
    weight = torch.randn(vocab, 24)
    labels = torch.randint(0, vocab, (40,))
    hidden = torch.randn(40, 24, requires_grad=True)
    reference = _plain(hidden, weight, labels, cap)
    (2.5 * reference).backward()
    expected = hidden.grad.clone()
    hidden.grad = None
    ours = linear_cross_entropy(hidden, weight, labels, cap)
    (2.5 * ours).backward()
    assert float(ours) == pytest.approx(float(reference), rel=1e-5)
    assert torch.allclose(hidden.grad, expected, rtol=1e-4, atol=1e-6)
    with torch.no_grad():  # the eval path: the same loss, no gradient work
        assert float(linear_cross_entropy(hidden, weight, labels, cap)) == pytest.approx(float(reference), rel=1e-5)


def test_a_trained_head_takes_the_plain_path(tiny_llama):
    """A head whose weight trains needs its own gradient, which the fused loss does not compute."""
    from harness.config import ModelConfig
    from harness.losses import head_loss
    from harness.models import load_model

    model = load_model(ModelConfig(name=str(tiny_llama)), "cpu").model
    head = model.get_output_embeddings()
    head.weight.requires_grad_(True)
    hidden = torch.randn(5, head.weight.shape[1])
    labels = torch.randint(0, head.weight.shape[0], (5,))
    head_loss(model, hidden, labels).backward()
    assert head.weight.grad is not None and float(head.weight.grad.abs().sum()) > 0


def test_the_reused_buffer_works_after_an_inference_mode_call():
    """The eval loss runs in inference mode first; the buffer it leaves must still serve training."""
    weight, labels = torch.randn(50, 8), torch.randint(0, 50, (6,))
    hidden = torch.randn(6, 8, requires_grad=True)
    with torch.inference_mode():
        first = linear_cross_entropy(hidden.detach(), weight, labels)
    second = linear_cross_entropy(hidden, weight, labels)
    second.backward()
    assert float(first) == pytest.approx(float(second)) and hidden.grad is not None


def test_the_work_buffer_is_reused_when_the_number_of_targets_changes():
    chunked_ce._buffers.clear()
    weight = torch.randn(64, 8)
    linear_cross_entropy(torch.randn(40, 8), weight, torch.randint(0, 64, (40,)))
    first = chunked_ce._buffers["cpu"].data_ptr()
    linear_cross_entropy(torch.randn(10, 8), weight, torch.randint(0, 64, (10,)))  # fewer targets: same memory
    assert chunked_ce._buffers["cpu"].data_ptr() == first
    linear_cross_entropy(torch.randn(90, 8), weight, torch.randint(0, 64, (90,)))  # more: it grows
    assert chunked_ce._buffers["cpu"].numel() == 90 * 64
