"""Prefix tuning: trainable key/value prefixes at every layer (Li & Liang, 2021)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from techniques.base import LR, POSITIVE_INT, VIRTUAL_TOKENS, Choice, IntRange, LogUniform, Technique, format_lr


class PrefixTuning(Technique):
    name = "prefix_tuning"
    description = "Prefix tuning: trainable key/value vectors prepended at every attention layer."
    aliases = ("prefix",)
    groups: tuple[str, ...] = ("prompt-family", "original")
    beam_search = False  # peft's generate mis-handles prefixes; translations use the exact greedy decoder
    virtual_tokens = True
    packed_batches = False  # virtual tokens are per row
    rules = {"lr": LR, "num_virtual_tokens": VIRTUAL_TOKENS, "encoder_hidden_size": POSITIVE_INT}
    defaults: Mapping[str, Any] = {
        "lr": 3e-3,
        "num_virtual_tokens": 20,
        "prefix_projection": True,  # the reparameterisation MLP makes training far more stable
        "encoder_hidden_size": 256,
    }
    search_space = {
        "lr": LogUniform(5e-4, 2e-2),
        "num_virtual_tokens": IntRange(5, 40),
        "prefix_projection": Choice((True, False)),
    }

    def peft_config(self, hp: Mapping[str, Any], model: Any, tokenizer: Any) -> Any:
        from peft import PrefixTuningConfig, TaskType

        return PrefixTuningConfig(
            task_type=TaskType.CAUSAL_LM,
            num_virtual_tokens=int(hp["num_virtual_tokens"]),
            prefix_projection=bool(hp["prefix_projection"]),
            encoder_hidden_size=int(hp["encoder_hidden_size"]),
        )

    def label(self, hp: Mapping[str, Any]) -> str:
        proj = f" proj={hp['encoder_hidden_size']}" if hp["prefix_projection"] else ""
        return f"vt={hp['num_virtual_tokens']}{proj} {format_lr(hp['lr'])}"


TECHNIQUE = PrefixTuning()
