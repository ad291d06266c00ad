"""QLoRA: LoRA on a 4-bit (NF4, double-quantized) frozen base (Dettmers et al., 2023)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from techniques.lora import LoRA


class QLoRA(LoRA):
    name = "qlora"
    description = "QLoRA: LoRA adapters on a 4-bit NF4 base with double quantization (bitsandbytes)."

    def model_overrides(self, hp: Mapping[str, Any]) -> dict[str, Any]:
        # Quant type, double quantization and compute dtype come from the model config (nf4/True/auto).
        return {"load_in_4bit": True}

    def prepare(self, model: Any, hp: Mapping[str, Any]) -> Any:
        from peft import prepare_model_for_kbit_training

        # No gradient checkpointing: the models benchmarked here fit, and recomputation costs ~30% time.
        return prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)


TECHNIQUE = QLoRA()
