"""The zero-shot baseline: the base model evaluated as it is, recorded like a trial."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from techniques.base import Technique


class Baseline(Technique):
    name = "base"
    description = "Zero-shot base model, no adapter: what tuning has to beat."
    aliases = ("zero_shot", "baseline")
    defaults: Mapping[str, Any] = {}
    search_space: Mapping[str, Any] = {}
    trains = False

    def wrap(self, model: Any, hp: Mapping[str, Any], tokenizer: Any) -> Any:
        return model.requires_grad_(False)  # nothing trains: the leaderboard shows 0 trainable parameters

    def label(self, hp: Mapping[str, Any]) -> str:
        return "zero-shot"


TECHNIQUE = Baseline()
