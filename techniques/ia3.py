"""IA3: learned vectors that rescale the keys, values and the feed-forward activations (Liu et al., 2022,
"Few-Shot Parameter-Efficient Fine-Tuning is Better and Cheaper than In-Context Learning", arXiv:2205.05638)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from techniques.base import LR, LogUniform, Technique, format_lr
from techniques.lora import resolve_target_modules

# The paper's placement: keys, values and the input of the MLP's down projection (Llama, Gemma, Qwen names).
TARGETS = ["k_proj", "v_proj", "down_proj"]
FEEDFORWARD = ["down_proj"]


class IA3(Technique):
    name = "ia3"
    description = "IA3: trained scaling vectors on keys, values and the MLP's down-projection input."
    mergeable = True
    defaults: Mapping[str, Any] = {"lr": 1e-2}
    search_space = {"lr": LogUniform(1e-3, 5e-2)}
    rules = {"lr": LR}

    def peft_config(self, hp: Mapping[str, Any], model: Any, tokenizer: Any) -> Any:
        from peft import IA3Config, TaskType

        return IA3Config(task_type=TaskType.CAUSAL_LM, target_modules=resolve_target_modules(TARGETS, model),
                         feedforward_modules=FEEDFORWARD)

    def label(self, hp: Mapping[str, Any]) -> str:
        return f"k,v,down {format_lr(hp['lr'])}"


TECHNIQUE = IA3()
