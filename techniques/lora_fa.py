"""LoRA-FA: LoRA with the A matrices frozen at their random init and only B trained, with B's gradient
projected as in full fine-tuning (Zhang et al., 2023, "LoRA-FA: Memory-efficient Low-rank Adaptation for Large
Language Models Fine-tuning", arXiv:2308.03303). The optimiser is peft's `create_lorafa_optimizer`."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from techniques.lora import LoRA


class LoRAFA(LoRA):
    name = "lora_fa"
    description = "LoRA-FA: LoRA with frozen random A, only B trained (peft create_lorafa_optimizer)."
    groups: tuple[str, ...] = ("lora-family",)
    aliases = ("lorafa",)

    def after_wrap(self, model: Any, hp: Mapping[str, Any], tokenizer: Any) -> None:
        # Frozen before counting, so the board shows what really trains (the optimiser freezes them too).
        for name, param in model.named_parameters():
            if "lora_A" in name:
                param.requires_grad_(False)

    def optimizer(self, model: Any, hp: Mapping[str, Any], weight_decay: float) -> Any:
        from peft.optimizers import create_lorafa_optimizer

        return create_lorafa_optimizer(model, r=int(hp["r"]), lora_alpha=hp["alpha"], lr=float(hp["lr"]),
                                       weight_decay=weight_decay)

    def variant_label(self, hp: Mapping[str, Any]) -> str:
        return "fa"


TECHNIQUE = LoRAFA()
