"""P-tuning: virtual-token embeddings produced by a trained prompt encoder (an MLP) and prepended to the input
(Liu et al., 2021, "GPT Understands, Too", arXiv:2103.10385)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from techniques.base import LR, POSITIVE_INT, VIRTUAL_TOKENS, Choice, IntRange, LogUniform, Technique, format_lr


class PTuning(Technique):
    name = "p_tuning"
    description = "P-tuning: virtual-token embeddings from a trained MLP prompt encoder, prepended to the input."
    aliases = ("ptuning",)
    groups: tuple[str, ...] = ("prompt-family",)
    virtual_tokens = True
    packed_batches = False  # virtual tokens are per row
    defaults: Mapping[str, Any] = {"lr": 3e-3, "num_virtual_tokens": 20, "encoder_hidden_size": 256}
    search_space = {
        "lr": LogUniform(5e-4, 2e-2),
        "num_virtual_tokens": IntRange(8, 40),
        "encoder_hidden_size": Choice((128, 256, 512)),
    }
    rules = {"lr": LR, "num_virtual_tokens": VIRTUAL_TOKENS, "encoder_hidden_size": POSITIVE_INT}

    def peft_config(self, hp: Mapping[str, Any], model: Any, tokenizer: Any) -> Any:
        from peft import PromptEncoderConfig, PromptEncoderReparameterizationType, TaskType

        return PromptEncoderConfig(task_type=TaskType.CAUSAL_LM, num_virtual_tokens=int(hp["num_virtual_tokens"]),
                                   encoder_hidden_size=int(hp["encoder_hidden_size"]),
                                   encoder_reparameterization_type=PromptEncoderReparameterizationType.MLP)

    def label(self, hp: Mapping[str, Any]) -> str:
        return f"vt={hp['num_virtual_tokens']} mlp={hp['encoder_hidden_size']} {format_lr(hp['lr'])}"


TECHNIQUE = PTuning()
