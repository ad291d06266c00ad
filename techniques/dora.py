"""DoRA: weight-decomposed low-rank adaptation, a trained magnitude per output channel plus a LoRA update of
the direction (Liu et al., 2024, "DoRA: Weight-Decomposed Low-Rank Adaptation", arXiv:2402.09353)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from techniques.lora import LoRA


class DoRA(LoRA):
    name = "dora"
    description = "DoRA: LoRA on the weight direction plus a trained per-channel magnitude (peft use_dora)."
    groups: tuple[str, ...] = ("lora-family",)

    def extra_lora_kwargs(self, hp: Mapping[str, Any]) -> dict[str, Any]:
        return {"use_dora": True}

    def variant_label(self, hp: Mapping[str, Any]) -> str:
        return "dora"


TECHNIQUE = DoRA()
