"""OFT: a trained block-diagonal orthogonal rotation of each weight's input space, which preserves the angles
between neurons (Qiu et al., 2023, "Controlling Text-to-Image Diffusion by Orthogonal Finetuning",
arXiv:2306.07280)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from techniques.base import DROPOUT, LR, POSITIVE_INT, Choice, LogUniform, Technique, format_lr
from techniques.lora import resolve_target_modules


class OFT(Technique):
    name = "oft"
    description = "OFT: trained block-diagonal orthogonal rotations (Cayley) of the linear projections' inputs."
    mergeable = True
    defaults: Mapping[str, Any] = {
        "lr": 1e-3,
        # Block size instead of a block count: 32 divides every projection width of the models benchmarked here.
        "oft_block_size": 32,
        "module_dropout": 0.0,
        "target_modules": "all-linear",
    }
    search_space = {
        "lr": LogUniform(1e-4, 3e-3),
        "oft_block_size": Choice((16, 32, 64)),
        "target_modules": Choice(("all-linear", "attention")),
    }
    rules = {"lr": LR, "oft_block_size": POSITIVE_INT, "module_dropout": DROPOUT}

    def peft_config(self, hp: Mapping[str, Any], model: Any, tokenizer: Any) -> Any:
        from peft import OFTConfig, TaskType

        return OFTConfig(task_type=TaskType.CAUSAL_LM, r=0, oft_block_size=int(hp["oft_block_size"]),
                         module_dropout=float(hp["module_dropout"]),
                         target_modules=resolve_target_modules(hp["target_modules"], model))

    def label(self, hp: Mapping[str, Any]) -> str:
        return f"block={hp['oft_block_size']} {hp['target_modules']} {format_lr(hp['lr'])}"


TECHNIQUE = OFT()
