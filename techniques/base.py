"""The technique plugin interface.

A technique is a value: it declares its defaults and search space as data and answers four questions
(how to load the base model, how to wrap it, how to label itself, whether it trains). The train loop, the
driver and the leaderboard only talk to this interface, so adding DoRA or IA3 is one new module.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar


@dataclass(frozen=True)
class LogUniform:
    """A float searched on a log scale (learning rates)."""

    low: float
    high: float


@dataclass(frozen=True)
class IntRange:
    """An integer in [low, high]."""

    low: int
    high: int
    log: bool = False


@dataclass(frozen=True)
class Choice:
    """One of a few values (ranks, on/off switches, module sets)."""

    options: tuple


Space = LogUniform | IntRange | Choice


class Technique:
    """Base class of a technique plugin. Subclasses set the class attributes and `peft_config`."""

    name: ClassVar[str]
    description: ClassVar[str]
    aliases: ClassVar[tuple[str, ...]] = ()
    # Hyper-parameters this technique takes, with their defaults; 'lr' is always among them.
    defaults: ClassVar[Mapping[str, Any]]
    search_space: ClassVar[Mapping[str, Space]]
    trains: ClassVar[bool] = True
    # Whether translation can use beam search / sampling (HF generate); False keeps it to exact greedy decoding.
    beam_search: ClassVar[bool] = True

    def model_overrides(self, hp: Mapping[str, Any]) -> dict[str, Any]:
        """Changes to the model-loading config this technique needs (QLoRA: a 4-bit base)."""
        return {}

    def peft_config(self, hp: Mapping[str, Any], model: Any, tokenizer: Any) -> Any:
        """The peft config object built from the hyper-parameters."""
        raise NotImplementedError

    def prepare(self, model: Any, hp: Mapping[str, Any]) -> Any:
        """Preparation of the loaded base model before wrapping (QLoRA: k-bit training preparation)."""
        return model

    def after_wrap(self, model: Any, hp: Mapping[str, Any], tokenizer: Any) -> None:
        """Initialisation after wrapping (e.g. soft prompts from the embeddings of a text)."""

    def wrap(self, model: Any, hp: Mapping[str, Any], tokenizer: Any) -> Any:
        """Return the trainable model: prepare, wrap with peft, initialise."""
        from peft import get_peft_model

        model = self.prepare(model, hp)
        wrapped = get_peft_model(model, self.peft_config(hp, model, tokenizer))
        self.after_wrap(wrapped, hp, tokenizer)
        return wrapped

    def label(self, hp: Mapping[str, Any]) -> str:
        """How the hyper-parameters show on the leaderboard."""
        return " ".join(f"{k}={v}" for k, v in hp.items())

    def __repr__(self) -> str:
        return f"<technique {self.name}>"


def format_lr(lr: float) -> str:
    return f"lr={lr:.0e}".replace("e-0", "e-")
