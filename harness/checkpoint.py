"""Resumable trial state in safetensors + JSON (never pickle): adapter weights, AdamW moments, RNG state and
the loop's counters. Written at epoch ends, so a resumed trial replays exactly what an uninterrupted one does."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from harness.errors import BenchError
from harness.reading import load_safetensors, read_json

CHECKPOINT_DIR = "checkpoint"  # in a trial folder: the last epoch's resumable state
STATE_TENSORS = "training_state.safetensors"
STATE_JSON = "training_state.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
TRAINABLE = "trainable_state.safetensors"
# A damaged checkpoint cannot be repaired; the trial can still be trained again from the start.
DAMAGED = ("The checkpoint is damaged (an interrupted copy or a full disk?): delete that trial's folder (and its "
           "Ray trial folder) and resume, so the trial trains again from the start.")


def save_adapter(model: Any, folder: Path, export: Callable[[Any, Path], None] | None = None) -> None:
    """The user-facing adapter: `export` (the technique's; by default peft's save_pretrained in safetensors,
    which reloads with PeftModel.from_pretrained), plus the raw trainable tensors, which restore the exact
    training-time module (peft exports prefix tuning with a projection as its computed prefixes, which a
    training model cannot take back)."""
    if export is None:
        model.save_pretrained(str(folder), safe_serialization=True)
    else:
        export(model, folder)
    save_trainable(model, folder)


def save_trainable(model: Any, folder: Path) -> None:
    tensors = {n: p.detach().cpu().contiguous() for n, p in model.named_parameters() if p.requires_grad}
    save_file(tensors, str(folder / TRAINABLE))


def load_trainable(model: Any, folder: Path) -> None:
    """Put saved trainable tensors back into the same (wrapped) model."""
    path = folder / TRAINABLE
    if not path.is_file():
        raise BenchError(f"checkpoint: '{folder}' has no {TRAINABLE}; the checkpoint is incomplete.")
    tensors = load_safetensors(path, "checkpoint", DAMAGED)
    params = dict(model.named_parameters())
    missing = [n for n, p in params.items() if p.requires_grad and n not in tensors]
    if missing:
        raise BenchError(f"checkpoint: '{folder}' does not match this model (missing {missing[:3]}).")
    with torch.no_grad():
        for name, value in tensors.items():
            params[name].copy_(value.to(params[name].device, params[name].dtype))


def save_training_state(folder: Path, optimizer: torch.optim.Optimizer, progress: dict[str, Any]) -> None:
    tensors: dict[str, torch.Tensor] = {"rng.torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        tensors["rng.cuda"] = torch.cuda.get_rng_state()
    for index, state in optimizer.state_dict()["state"].items():
        for key, value in state.items():
            if isinstance(value, torch.Tensor):
                tensors[f"optim.{index}.{key}"] = value.detach().cpu().contiguous()
    save_file(tensors, str(folder / STATE_TENSORS))
    groups = [{k: v for k, v in g.items() if k != "params"} | {"params": g["params"]}
              for g in optimizer.state_dict()["param_groups"]]
    (folder / STATE_JSON).write_text(json.dumps({"progress": progress, "param_groups": groups}, default=str))


def load_training_state(folder: Path, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """Restore optimizer moments and RNG state; return the loop's progress counters."""
    tensors = load_safetensors(folder / STATE_TENSORS, "checkpoint", DAMAGED)
    meta = read_json(folder / STATE_JSON, "checkpoint", DAMAGED)
    state: dict[int, dict[str, torch.Tensor]] = {}
    for name, value in tensors.items():
        if name.startswith("optim."):
            _, index, key = name.split(".", 2)
            state.setdefault(int(index), {})[key] = value
    optimizer.load_state_dict({"state": state, "param_groups": meta["param_groups"]})
    torch.set_rng_state(tensors["rng.torch"])
    if "rng.cuda" in tensors and torch.cuda.is_available():
        torch.cuda.set_rng_state(tensors["rng.cuda"])
    return meta["progress"]
