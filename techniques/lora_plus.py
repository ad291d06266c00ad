"""LoRA+: LoRA whose B matrices learn `loraplus_lr_ratio` times faster than the A matrices (Hayou et al.,
2024, "LoRA+: Efficient Low Rank Adaptation of Large Models", arXiv:2402.12354). The optimiser is peft's
`create_loraplus_optimizer`."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from techniques.base import Choice, Rule
from techniques.lora import LoRA

RATIO = Rule(lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and v >= 1,
             "the LoRA+ learning-rate ratio of B to A must be >= 1", "16")


class LoRAPlus(LoRA):
    name = "lora_plus"
    description = "LoRA+: LoRA with a larger learning rate for B than for A (peft create_loraplus_optimizer)."
    groups: tuple[str, ...] = ("lora-family",)
    aliases = ("loraplus",)
    defaults: Mapping[str, Any] = {**LoRA.defaults, "lr": 5e-4, "loraplus_lr_ratio": 16}
    search_space = {**LoRA.search_space, "loraplus_lr_ratio": Choice((4, 8, 16, 32))}
    rules = {**LoRA.rules, "loraplus_lr_ratio": RATIO}

    def optimizer(self, model: Any, hp: Mapping[str, Any], weight_decay: float) -> Any:
        import torch
        from peft.optimizers import create_loraplus_optimizer

        return create_loraplus_optimizer(model, torch.optim.AdamW, lr=float(hp["lr"]),
                                         loraplus_lr_ratio=float(hp["loraplus_lr_ratio"]),
                                         loraplus_weight_decay=weight_decay)

    def variant_label(self, hp: Mapping[str, Any]) -> str:
        return f"ratio={hp['loraplus_lr_ratio']}"


TECHNIQUE = LoRAPlus()
