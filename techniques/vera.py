"""VeRA: one pair of frozen random low-rank matrices shared by all layers, with trained per-layer scaling
vectors (Kopiczko et al., 2024, "VeRA: Vector-based Random Matrix Adaptation", arXiv:2310.11454)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from techniques.base import DROPOUT, LR, RANK, Choice, LogUniform, Technique, format_lr
from techniques.lora import resolve_target_modules


class VeRA(Technique):
    name = "vera"
    description = "VeRA: shared frozen random low-rank matrices, trained per-layer scaling vectors."
    mergeable = True
    defaults: Mapping[str, Any] = {
        "lr": 1e-2,  # the paper's rates are 10-100x LoRA's: only vectors train
        "r": 256,
        "dropout": 0.0,
        "target_modules": "all-linear",
    }
    search_space = {
        "lr": LogUniform(1e-3, 5e-2),
        "r": Choice((64, 256, 1024)),
        "target_modules": Choice(("all-linear", "attention")),
    }
    rules = {"lr": LR, "r": RANK, "dropout": DROPOUT}

    def peft_config(self, hp: Mapping[str, Any], model: Any, tokenizer: Any) -> Any:
        from peft import TaskType, VeraConfig

        # save_projection: the random matrices go into the adapter file, so a reload never depends on the RNG.
        return VeraConfig(task_type=TaskType.CAUSAL_LM, r=int(hp["r"]), vera_dropout=float(hp["dropout"]),
                          target_modules=resolve_target_modules(hp["target_modules"], model), save_projection=True)

    def label(self, hp: Mapping[str, Any]) -> str:
        return f"r={hp['r']} {hp['target_modules']} {format_lr(hp['lr'])}"


TECHNIQUE = VeRA()
