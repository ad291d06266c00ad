"""rsLoRA: rank-stabilised LoRA, scale alpha/sqrt(r) instead of alpha/r so that higher ranks keep learning
(Kalajdzievski, 2023, "A Rank Stabilization Scaling Factor for Fine-Tuning with LoRA", arXiv:2312.03732)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from techniques.lora import LoRA


class RsLoRA(LoRA):
    name = "rslora"
    description = "rsLoRA: LoRA with the rank-stabilised scale alpha/sqrt(r) (peft use_rslora)."
    groups: tuple[str, ...] = ("lora-family",)
    defaults: Mapping[str, Any] = {**LoRA.defaults, "lr": 5e-4}  # alpha/sqrt(r) is 4x LoRA's scale at r=16

    def extra_lora_kwargs(self, hp: Mapping[str, Any]) -> dict[str, Any]:
        return {"use_rslora": True}

    def variant_label(self, hp: Mapping[str, Any]) -> str:
        return "rs"


TECHNIQUE = RsLoRA()
