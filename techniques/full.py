"""Full fine-tuning: every weight of the base model trains. The reference every PEFT method is measured
against (e.g. Hu et al., 2021, arXiv:2106.09685, compare LoRA with it); its memory and size columns show what
tuning everything costs."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from techniques.base import LR, LogUniform, Technique, format_lr

WEIGHTS = "model.safetensors"


class FullFineTuning(Technique):
    name = "full"
    description = "Full fine-tuning: every weight trains (the reference; no adapter, the whole model is saved)."
    aliases = ("full_finetuning", "fft")
    defaults: Mapping[str, Any] = {"lr": 5e-5}
    search_space = {"lr": LogUniform(1e-5, 3e-4)}
    rules = {"lr": LR}

    def wrap(self, model: Any, hp: Mapping[str, Any], tokenizer: Any) -> Any:
        return model.requires_grad_(True)

    def export(self, model: Any, folder: Path) -> None:
        from safetensors.torch import save_model

        save_model(model, str(folder / WEIGHTS))  # tied weights are stored once

    def load(self, model: Any, folder: Path) -> Any:
        from safetensors.torch import load_model

        load_model(model, str(folder / WEIGHTS), device=str(next(model.parameters()).device))
        return model

    def label(self, hp: Mapping[str, Any]) -> str:
        return f"all weights {format_lr(hp['lr'])}"


TECHNIQUE = FullFineTuning()
