"""Cross-entropy of a linear LM head, computed a chunk of rows at a time ("fused linear cross-entropy").

The plain way, `F.cross_entropy(head(hidden), labels)`, materialises the (tokens x vocabulary) logits, their
log-softmax and, in the backward pass, two more tensors of that size. With Gemma 3's 262k-token vocabulary and
~450 target tokens a step that is 470 MB each, freshly page-faulted every step, and a third of the step's time.
Here each chunk's logits live in one reusable buffer: the forward pass computes the loss and, when a gradient
is wanted, the gradient with respect to the hidden states right away (softmax minus one-hot, times the head
weight), which is all the backward pass needs. The arithmetic is the same matmuls as the plain way; the head
weight itself must be frozen (it is, for every PEFT technique here; otherwise the caller uses the plain way).
"""

from __future__ import annotations

from typing import Any

import torch

# One chunk's float32 logits. On Gemma 3 (470 targets) 128 MB chunks took 1.2x and 256 MB 1.07x the time of
# 512 MB (the head matmul runs faster on more rows); 1 GB gained nothing more.
CHUNK_BYTES = 512 * 2**20

_buffers: dict[str, torch.Tensor] = {}  # device -> flat float32 work buffer, reused across steps


def _buffer(rows: int, vocab: int, device: torch.device) -> torch.Tensor:
    """A float32 (rows, vocab) work buffer. On CPU one buffer is kept and only ever grows (to at most
    CHUNK_BYTES): a new one every step would be page-faulted in again each time, and the number of target
    tokens changes from step to step. Accelerators have caching allocators of their own."""
    if device.type != "cpu":
        return torch.empty(rows, vocab, device=device, dtype=torch.float32)
    key = str(device)
    if key not in _buffers or _buffers[key].numel() < rows * vocab:
        _buffers.pop(key, None)
        with torch.inference_mode(False):  # a normal tensor, usable inside and outside inference mode
            _buffers[key] = torch.empty(rows * vocab, dtype=torch.float32)
    return _buffers[key][: rows * vocab].view(rows, vocab)


def _chunks(hidden: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor, cap: float | None,
            want_grad: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(summed loss, gradient of that sum with respect to `hidden` or None)."""
    vocab = weight.shape[0]
    rows = max(1, min(hidden.shape[0], CHUNK_BYTES // (4 * vocab)))
    loss = torch.zeros((), dtype=torch.float32, device=hidden.device)
    grad = torch.empty_like(hidden) if want_grad else None
    work = _buffer(rows, vocab, hidden.device)
    for start in range(0, hidden.shape[0], rows):
        h, y = hidden[start: start + rows], labels[start: start + rows]
        logits = work[: h.shape[0]]
        if h.dtype == torch.float32 and weight.dtype == torch.float32:
            torch.mm(h, weight.t(), out=logits)
        else:
            logits.copy_(h @ weight.t())
        if cap:
            logits.div_(cap).tanh_()  # keep tanh for the derivative: d(cap*tanh(z/cap))/dz = 1 - tanh^2
            squashed = logits.clone() if want_grad else None
            logits.mul_(cap)
        picked = logits.gather(1, y[:, None])[:, 0]
        # log-sum-exp in place (torch.logsumexp allocates two chunk-sized temporaries)
        peak = logits.amax(dim=1, keepdim=True)
        total = logits.sub_(peak).exp_().sum(dim=1, keepdim=True)
        loss += (peak + total.log() - picked[:, None]).sum()
        if want_grad:
            logits.div_(total)  # softmax
            logits[torch.arange(len(y), device=y.device), y] -= 1.0
            if cap:
                logits.mul_(1.0 - squashed.square_())
            grad[start: start + rows] = (logits if weight.dtype == torch.float32 else logits.to(weight.dtype)) @ weight
    return loss, grad


class _LinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, hidden: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor,
                cap: float | None) -> torch.Tensor:
        loss, grad = _chunks(hidden, weight, labels, cap, want_grad=True)
        ctx.save_for_backward(grad)
        return loss

    @staticmethod
    def backward(ctx: Any, grad_output: torch.Tensor) -> tuple[torch.Tensor, None, None, None]:
        (grad,) = ctx.saved_tensors
        return grad * grad_output.to(grad.dtype), None, None, None


def linear_cross_entropy(hidden: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor,
                         cap: float | None = None) -> torch.Tensor:
    """Sum over rows of cross_entropy(cap * tanh((hidden @ weight.T) / cap) or hidden @ weight.T, labels),
    for a frozen `weight`; differentiable with respect to `hidden`."""
    if torch.is_grad_enabled() and hidden.requires_grad:
        return _LinearCrossEntropy.apply(hidden, weight.detach(), labels, cap)
    return _chunks(hidden, weight, labels, cap, want_grad=False)[0]
