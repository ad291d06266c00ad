"""AdaLoRA: SVD-shaped low-rank updates whose rank budget is re-allocated during training to the layers
that matter (Zhang et al., 2023, "AdaLoRA: Adaptive Budget Allocation for Parameter-Efficient Fine-Tuning",
arXiv:2303.10512). The allocation is peft's `update_and_allocate`, called after every optimiser step."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from techniques.base import ALPHA, DROPOUT, FRACTION, LR, RANK, Choice, LogUniform, Technique, format_lr
from techniques.lora import resolve_target_modules


class AdaLoRA(Technique):
    name = "adalora"
    description = "AdaLoRA: SVD-form LoRA whose ranks are pruned from init_r to target_r during training."
    groups: tuple[str, ...] = ("lora-family",)
    mergeable = True
    defaults: Mapping[str, Any] = {
        # E starts at zero and A, B small, so the update grows slowly: a higher rate than LoRA's on short budgets.
        "lr": 5e-3,
        "init_r": 12,
        "target_r": 8,  # average rank kept after allocation
        "alpha": 32,
        "dropout": 0.0,
        "target_modules": "all-linear",
        # Schedule as fractions of the trial's steps, so it fits any budget: warm-up without pruning, then
        # pruning, then a final phase at the allocated ranks.
        "tinit": 0.1,
        "tfinal": 0.2,
    }
    search_space = {
        "lr": LogUniform(1e-3, 2e-2),
        "init_r": Choice((8, 12, 16)),
        "target_r": Choice((4, 8)),
        "alpha": Choice((16, 32)),
    }
    rules = {"lr": LR, "init_r": RANK, "target_r": RANK, "alpha": ALPHA, "dropout": DROPOUT, "tinit": FRACTION,
             "tfinal": FRACTION}

    def peft_config(self, hp: Mapping[str, Any], model: Any, tokenizer: Any) -> Any:
        from peft import AdaLoraConfig, TaskType

        # total_step is only known to the loop: a placeholder here, the real count set at the first step.
        return AdaLoraConfig(task_type=TaskType.CAUSAL_LM, init_r=int(hp["init_r"]), target_r=int(hp["target_r"]),
                             lora_alpha=hp["alpha"], lora_dropout=float(hp["dropout"]),
                             target_modules=resolve_target_modules(hp["target_modules"], model),
                             tinit=0, tfinal=0, deltaT=1, total_step=1)

    def on_step(self, model: Any, hp: Mapping[str, Any], step: int, total_steps: int) -> None:
        tuner = model.base_model
        config = tuner.peft_config[tuner.trainable_adapter_name]
        if config.total_step != total_steps:
            config.tinit = int(float(hp["tinit"]) * total_steps)
            config.tfinal = int(float(hp["tfinal"]) * total_steps)
            tuner.rankallocator.set_total_step(total_steps)
        tuner.update_and_allocate(step)

    def label(self, hp: Mapping[str, Any]) -> str:
        return (f"r={hp['init_r']}->{hp['target_r']} alpha={hp['alpha']} {hp['target_modules']} "
                f"{format_lr(hp['lr'])}")


TECHNIQUE = AdaLoRA()
