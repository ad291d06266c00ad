"""The training step, chosen per device like the dtype is (DESIGN.md "Devices choose their step").

One optimiser step's forward and backward over an accumulation group, with every speed trick a named,
switchable option (`StepOptions`); each changes nothing but speed (tests/test_steps.py checks loss and
gradients against the plain step with every option off). What each device gets by default and why:

- CPU: packed (padding-free) rows, the chunked fused loss and LoRA's fused layers. A CPU runs each op at
  memory speed, so fewer positions and fewer big temporaries are what pays.
- CUDA: the step is host-bound (dispatching ~25,000 small ops costs ~0.2 s; the arithmetic under 1 ms), so
  what pays there is fewer dispatched ops and no host-device syncs: right-padded batches with no mask at all
  (causal SDPA/flash kernels; real positions never see a right pad), padded to a multiple of `PAD_MULTIPLE`
  so that a captured or compiled step sees few shapes, the plain cross-entropy on the target rows (picked by an
  index computed on the host: no boolean mask, so no sync), losses summed on the device and read once per log
  interval, and the decoder's forward + backward replayed as CUDA graphs (one capture per batch shape; rows
  padded to the batch size). `torch.compile` is an option (off: compiling took over 90 s on the H200).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from harness import packing
from harness.data import IGNORE_INDEX, Encoded, collate
from harness.lora_paths import fused_lora
from harness.losses import final_hidden, head_loss, target_loss

log = logging.getLogger(__name__)

PAD_MULTIPLE = 32  # padded widths rounded up to this: a captured or compiled step meets max_seq_length / 32 shapes
COMPILE_MODES = ("off", "default", "reduce-overhead", "max-autotune-no-cudagraphs")


@dataclass(frozen=True)
class StepOptions:
    """The tricks of one training step; none of them changes the loss or the gradients beyond float rounding."""

    packing: bool = False  # one padding-free row per batch (attention scattered per sequence)
    chunked_loss: bool = False  # fused linear cross-entropy a chunk of rows at a time (CPU memory)
    fused_lora: bool = False  # LoRA layers as one addmm / one autograd function each
    sync_free: bool = False  # no host-device sync inside the step: losses stay on the device
    compile: str = "off"  # torch.compile mode of the decoder: off, default, reduce-overhead (CUDA graphs), ...
    cuda_graphs: bool = False  # the decoder's forward + backward captured once per batch shape and replayed

    def describe(self) -> str:
        return ",".join(f"{f.name}={getattr(self, f.name)}" for f in dataclasses.fields(self))


CPU_STEP = StepOptions(packing=True, chunked_loss=True, fused_lora=True)
# Measured on one H200, Gemma 3 270M LoRA r16, 16 pairs (benchmarks/README.md): eager 117-137 ms per step and
# 21,300 host ops; CUDA graphs 20 ms and 1,718 ops (same loss); torch.compile took over 90 s to compile, so off.
CUDA_STEP = StepOptions(packing=False, chunked_loss=False, fused_lora=False, sync_free=True, compile="off",
                        cuda_graphs=True)


def choose_step(device: str, packing_wanted: bool = True, overrides: dict[str, Any] | None = None) -> StepOptions:
    """The device's default step; `train.packing: false` turns packing off anywhere; `overrides` (the
    config's `train.step`) sets single options by name."""
    options = CUDA_STEP if device == "cuda" else CPU_STEP
    if not packing_wanted:
        options = dataclasses.replace(options, packing=False)
    return dataclasses.replace(options, **(overrides or {}))


@dataclass
class StepResult:
    loss_sum: torch.Tensor  # summed target cross-entropy of the group, on the device (0-dim, float32)
    target_tokens: int
    tokens: int  # real (non-pad) tokens of the group


class TrainStep:
    """Forward + backward of one accumulation group under `options`; the caller clips and steps the optimiser.

    The token counts come from the host-side labels, so nothing here waits for the device."""

    def __init__(self, model: Any, options: StepOptions, device: str, pad_id: int, compile_backend: str = "inductor",
                 rows: int | None = None):
        self.model, self.device, self.pad_id, self.rows = model, device, pad_id, rows
        # Packing and the mask-free padded layout both need a model whose attention the harness can route
        # (no virtual tokens per row, no soft-capping); others keep padded batches with an attention mask.
        self.routable = packing.packing_unsupported(model) is None
        self.options = dataclasses.replace(options, packing=options.packing and self.routable)
        if self.options.cuda_graphs and not (self.routable and not self.options.packing):
            # e.g. prompt-learning techniques (virtual tokens need the attention mask): expected, so not a warning
            log.info("cuda_graphs: needs mask-free padded batches (no packing, routable attention); off here")
            self.options = dataclasses.replace(self.options, cuda_graphs=False)
        self.graphs: dict[tuple[int, ...], Any] = {}  # batch shape -> the decoder's graphed forward + backward
        self.compiled = False
        if self.options.compile != "off":
            self.compiled = compile_decoder(model, self.options.compile, compile_backend)

    def batch(self, enc: Encoded, indices: Sequence[int]) -> dict[str, torch.Tensor]:
        """The host-side batch of these examples in this step's layout."""
        if self.options.packing:
            return packing.pack(enc, indices)
        batch = collate(enc, indices, self.pad_id)
        if self.routable and (self.options.compile != "off" or self.options.cuda_graphs):
            batch = pad_width(batch, PAD_MULTIPLE, self.pad_id)
        if self.options.cuda_graphs and self.rows and batch["input_ids"].shape[0] < self.rows:
            batch = pad_rows(batch, self.rows, self.pad_id)  # an epoch's last, short batch: the same shapes
        return batch

    def __call__(self, enc: Encoded, group: Sequence[Sequence[int]]) -> StepResult:
        batches = [self.batch(enc, indices) for indices in group]
        # Token-weighted mean over the whole accumulation group, so accumulation equals one big batch.
        group_tokens = sum(int((b["labels"][:, 1:] != IGNORE_INDEX).sum()) for b in batches)
        total = torch.zeros((), dtype=torch.float32, device=self.device)
        tokens = 0
        for i, batch in enumerate(batches):
            tokens += int(batch["attention_mask"].sum())
            loss = self.loss(batch)
            (loss / group_tokens).backward()
            total += loss.detach().float()
            if self.graphs and i + 1 < len(batches):
                # A graph's gradients live in its static buffers, which autograd may hand over as .grad
                # itself: the next replay would overwrite them. Own copies before accumulating more.
                for p in self.model.parameters():
                    if p.grad is not None:
                        p.grad = p.grad.clone()
        return StepResult(total, group_tokens, tokens)

    def loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Summed cross-entropy over the batch's target positions."""
        if self.options.packing:
            return target_loss(self.model, to_device(batch, self.device), chunked=self.options.chunked_loss,
                               fused=self.options.fused_lora)[0]
        with fused_lora(self.model) if self.options.fused_lora else contextlib.nullcontext():
            return self._indexed_loss(batch)

    def _indexed_loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Target rows picked by an index built on the host (a boolean mask on the device would sync), from a
        right-padded batch that needs no mask where the attention is routable."""
        labels = batch["labels"][:, 1:]
        width = batch["input_ids"].shape[1]
        # flat positions (row * width + column) of the hidden states that predict a target token
        rows, cols = (labels != IGNORE_INDEX).nonzero(as_tuple=True)
        index = (rows * width + cols).to(self.device, non_blocking=True)
        targets = labels[rows, cols].to(self.device, non_blocking=True)
        ids = batch["input_ids"].to(self.device, non_blocking=True)
        mask = None if self.routable else batch["attention_mask"].to(self.device, non_blocking=True)
        hidden = self._graphed_hidden(ids) if self.options.cuda_graphs else final_hidden(self.model, ids, mask)
        picked = hidden.reshape(-1, hidden.shape[-1]).index_select(0, index)
        return head_loss(self.model, picked, targets, chunked=self.options.chunked_loss)

    def _graphed_hidden(self, ids: torch.Tensor) -> torch.Tensor:
        """The decoder's final hidden states through a CUDA graph of its forward and backward, captured on the
        first batch of each shape (torch.cuda.make_graphed_callables); on a CPU the same module runs eagerly.
        Parameters are updated in place by the optimiser, so every replay sees the current adapter."""
        key = tuple(ids.shape)
        if key not in self.graphs:
            module = DecoderHidden(packing.base_model(self.model).get_decoder())
            if ids.device.type == "cuda":
                try:
                    module = torch.cuda.make_graphed_callables(module, (ids,))
                except Exception as exc:  # noqa: BLE001 - a model that cannot be captured trains eagerly
                    log.warning("cuda_graphs: capture failed (%s: %s); this trial trains eagerly",
                                type(exc).__name__, str(exc).splitlines()[0] if str(exc) else "")
                    self.options = dataclasses.replace(self.options, cuda_graphs=False)
                    self.graphs.clear()
                    return final_hidden(self.model, ids, None)
            self.graphs[key] = module
        return self.graphs[key](ids)


class DecoderHidden(torch.nn.Module):
    """input ids -> the decoder's final (post-norm) hidden states, with no mask and no cache: a plain
    tensor-in, tensor-out module that CUDA graphs can capture."""

    def __init__(self, decoder: Any):
        super().__init__()
        self.decoder = decoder

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.decoder(input_ids=input_ids, use_cache=False).last_hidden_state


def pad_rows(batch: dict[str, torch.Tensor], rows: int, pad_id: int) -> dict[str, torch.Tensor]:
    """Add all-padding rows up to `rows` (no targets: the loss and gradients are unchanged)."""
    extra = rows - batch["input_ids"].shape[0]
    fill = {"input_ids": pad_id, "labels": IGNORE_INDEX, "attention_mask": 0}
    return {k: F.pad(v, (0, 0, 0, extra), value=fill[k]) for k, v in batch.items()}


def pad_width(batch: dict[str, torch.Tensor], multiple: int, pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad a collated batch to a multiple of `multiple` columns (pad id, label -100, attention 0)."""
    width = batch["input_ids"].shape[1]
    extra = -width % multiple
    if not extra:
        return batch
    fill = {"input_ids": pad_id, "labels": IGNORE_INDEX, "attention_mask": 0}
    return {k: F.pad(v, (0, extra), value=fill[k]) for k, v in batch.items()}


def to_device(batch: dict[str, torch.Tensor], device: str) -> dict[str, torch.Tensor]:
    return {k: v.to(device, non_blocking=True) for k, v in batch.items()}


def compile_decoder(model: Any, mode: str, backend: str = "inductor") -> bool:
    """Compile the transformer stack (not the loss, whose row count changes every step) in place."""
    if mode not in COMPILE_MODES:
        raise ValueError(f"compile mode {mode!r} is not one of {COMPILE_MODES}")
    decoder = getattr(packing.base_model(model), "get_decoder", lambda: None)()
    if decoder is None:
        log.warning("compile=%s: this model has no decoder to compile; running eagerly", mode)
        return False
    # dynamic=None: the first shape compiles static, a second one makes the changing sizes symbolic (one more
    # compile), so a trial compiles twice at most however its batch widths vary.
    kwargs: dict[str, Any] = {"backend": backend, "dynamic": None}
    if backend == "inductor":
        kwargs["mode"] = mode if mode != "default" else None
    decoder.compile(**kwargs)
    return True
