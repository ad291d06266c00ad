"""Soft prompting (prompt tuning): trainable input embeddings prepended to the prompt (Lester et al., 2021)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from techniques.base import LR, VIRTUAL_TOKENS, Choice, IntRange, LogUniform, Technique, format_lr


class SoftPrompting(Technique):
    name = "soft_prompting"
    description = "Soft prompting: trainable virtual-token embeddings prepended to the input."
    aliases = ("prompt_tuning", "soft_prompt")
    groups: tuple[str, ...] = ("prompt-family", "original")
    virtual_tokens = True
    packed_batches = False  # virtual tokens are per row
    rules = {"lr": LR, "num_virtual_tokens": VIRTUAL_TOKENS}
    defaults: Mapping[str, Any] = {
        "lr": 3e-2,
        "num_virtual_tokens": 20,
        # Starting from a real instruction's embeddings converges much faster than random vectors.
        "init_text": "Translate the following English sentence into Turkish.",
    }
    search_space = {
        "lr": LogUniform(3e-3, 1e-1),
        "num_virtual_tokens": IntRange(8, 64),
        "init_text": Choice(("Translate the following English sentence into Turkish.", "")),
    }

    def peft_config(self, hp: Mapping[str, Any], model: Any, tokenizer: Any) -> Any:
        from peft import PromptTuningConfig, PromptTuningInit, TaskType

        return PromptTuningConfig(
            task_type=TaskType.CAUSAL_LM,
            num_virtual_tokens=int(hp["num_virtual_tokens"]),
            prompt_tuning_init=PromptTuningInit.RANDOM,
        )

    def after_wrap(self, model: Any, hp: Mapping[str, Any], tokenizer: Any) -> None:
        # Text initialisation done here rather than by peft, whose TEXT mode re-loads the tokenizer by
        # name at every load (which fails offline for embedded models).
        text = hp.get("init_text") or ""
        if not text:
            return
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        n = int(hp["num_virtual_tokens"])
        ids = (ids * (n // max(len(ids), 1) + 1))[:n]
        embedding = model.prompt_encoder[model.active_adapter].embedding
        with torch.no_grad():
            words = model.get_input_embeddings()(torch.tensor(ids, device=embedding.weight.device))
            embedding.weight.copy_(words.to(embedding.weight.dtype))

    def label(self, hp: Mapping[str, Any]) -> str:
        init = "text" if hp.get("init_text") else "random"
        return f"vt={hp['num_virtual_tokens']} init={init} {format_lr(hp['lr'])}"


TECHNIQUE = SoftPrompting()
