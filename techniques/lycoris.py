"""What LoHa and LoKr share: LyCORIS-style adapters with a rank and an alpha on the linear projections."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from techniques.base import ALPHA, DROPOUT, LR, RANK, Choice, LogUniform, Technique, format_lr
from techniques.lora import resolve_target_modules


class LycorisAdapter(Technique):
    """Subclasses name the peft config class (`config_name`)."""

    config_name: str
    mergeable = True
    defaults: Mapping[str, Any] = {
        "lr": 1e-3,
        "r": 8,
        "alpha": 16,
        "module_dropout": 0.0,
        "target_modules": "all-linear",
    }
    search_space = {
        "lr": LogUniform(1e-4, 3e-3),
        "r": Choice((4, 8, 16)),
        "alpha": Choice((8, 16, 32)),
        "target_modules": Choice(("all-linear", "attention")),
    }
    rules = {"lr": LR, "r": RANK, "alpha": ALPHA, "module_dropout": DROPOUT}

    def peft_config(self, hp: Mapping[str, Any], model: Any, tokenizer: Any) -> Any:
        import peft

        return getattr(peft, self.config_name)(
            task_type=peft.TaskType.CAUSAL_LM, r=int(hp["r"]), alpha=hp["alpha"],
            module_dropout=float(hp["module_dropout"]),
            target_modules=resolve_target_modules(hp["target_modules"], model),
        )

    def label(self, hp: Mapping[str, Any]) -> str:
        return f"r={hp['r']} alpha={hp['alpha']} {hp['target_modules']} {format_lr(hp['lr'])}"
