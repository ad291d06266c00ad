"""The technique plugin interface.

A technique is a value: it declares its defaults, search space, hyper-parameter rules and capabilities as
data and answers a few questions (how to load the base model, how to wrap it, how to label itself, which
optimiser and per-step hook it needs, how its weights are exported and loaded back). The train loop, the
driver, evaluation, translation and the leaderboard only talk to this interface, so adding a method is one
new module.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from harness.errors import BenchError, closest


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


@dataclass(frozen=True)
class Rule:
    """A range rule of one hyper-parameter: the check, what it requires (for the error) and a valid example."""

    check: Callable[[Any], bool]
    requires: str
    example: str


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


# Rules several techniques share; a technique lists the ones it takes in `rules`.
LR = Rule(lambda v: _number(v) and v > 0, "the learning rate must be > 0", "3e-4")
RANK = Rule(lambda v: _int(v) and v >= 1, "the LoRA rank must be an integer >= 1", "16")
ALPHA = Rule(lambda v: _number(v) and v > 0, "LoRA alpha must be > 0", "32")
DROPOUT = Rule(lambda v: _number(v) and 0 <= v < 1, "dropout must be in [0, 1)", "0.05")
VIRTUAL_TOKENS = Rule(lambda v: _int(v) and v >= 1, "the number of virtual tokens must be an integer >= 1", "20")
POSITIVE_INT = Rule(lambda v: _int(v) and v >= 1, "it must be an integer >= 1", "256")
FRACTION = Rule(lambda v: _number(v) and 0 <= v < 1, "it must be a fraction in [0, 1)", "0.1")
BOOL = Rule(lambda v: isinstance(v, bool), "it must be true or false", "true")


class Technique:
    """Base class of a technique plugin. Subclasses set the class attributes and `peft_config`."""

    name: ClassVar[str]
    description: ClassVar[str]
    aliases: ClassVar[tuple[str, ...]] = ()
    # Named groups this technique belongs to (`--techniques lora-family`); 'all' needs no entry.
    groups: ClassVar[tuple[str, ...]] = ()
    # Hyper-parameters this technique takes, with their defaults; 'lr' is always among them.
    defaults: ClassVar[Mapping[str, Any]]
    search_space: ClassVar[Mapping[str, Space]]
    # Range rules of its hyper-parameters (keys without a rule are passed to peft as given).
    rules: ClassVar[Mapping[str, Rule]] = {"lr": LR}
    trains: ClassVar[bool] = True

    # Capabilities: what the harness may do with the trained model.
    # Whether translation can use beam search / sampling (HF generate); False keeps it to exact greedy decoding.
    beam_search: ClassVar[bool] = True
    # Whether the update can be folded into the base weights (`translate --merge-and-save`).
    mergeable: ClassVar[bool] = False
    # Whether it acts through virtual tokens prepended to every row (prompt learning).
    virtual_tokens: ClassVar[bool] = False
    # Whether it trains on packed (padding-free) batches: exact for anything that acts token by token.
    packed_batches: ClassVar[bool] = True

    # ------------------------------------------------------------------------------- hyper-parameters

    def validate(self, params: Mapping[str, Any], path: str) -> None:
        """Reject hyper-parameters this technique does not take and values outside its rules."""
        allowed = list(self.defaults)
        for key, value in params.items():
            if key not in self.defaults:
                raise BenchError(
                    f"config key '{path}.{key}' is not a hyper-parameter of '{self.name}'.{closest(key, allowed)} "
                    f"Its hyper-parameters: {', '.join(allowed)}."
                )
            self.check_value(key, value, path)

    def check_value(self, key: str, value: Any, path: str) -> None:
        """One value against its rule (None means 'the default' and always passes)."""
        rule = self.rules.get(key)
        if value is None or rule is None:
            return
        if not rule.check(value):
            raise BenchError(
                f"config key '{path}.{key}' is {value!r}; {rule.requires}. Fix: --set {path}.{key}={rule.example}."
            )

    # ------------------------------------------------------------------------------------ the model

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

    # ------------------------------------------------------------------------------------- training

    def optimizer(self, model: Any, hp: Mapping[str, Any], weight_decay: float) -> Any | None:
        """An optimiser with the technique's own parameter groups (LoRA+, LoRA-FA), or None for the loop's
        AdamW over every trainable parameter."""
        return None

    def on_step(self, model: Any, hp: Mapping[str, Any], step: int, total_steps: int) -> None:
        """Called after each optimiser step, before the gradients are cleared (AdaLoRA's rank allocation).
        `step` counts from 0; `total_steps` is the trial's planned number of optimiser steps."""

    # --------------------------------------------------------------------------- export and reload

    def export(self, model: Any, folder: Path) -> None:
        """Write the user-facing weights (peft's save_pretrained, safetensors)."""
        model.save_pretrained(str(folder), safe_serialization=True)

    def load(self, model: Any, folder: Path) -> Any:
        """The base model with exported weights from `folder` on top, for inference."""
        from peft import PeftModel

        return PeftModel.from_pretrained(model, str(folder), is_trainable=False)

    # ---------------------------------------------------------------------------------- presentation

    def label(self, hp: Mapping[str, Any]) -> str:
        """How the hyper-parameters show on the leaderboard."""
        return " ".join(f"{k}={v}" for k, v in hp.items())

    def describe_space(self) -> str:
        """The search space in one line (for --list-techniques and --help)."""
        parts = []
        for key, space in self.search_space.items():
            if isinstance(space, LogUniform):
                parts.append(f"{key}~log[{space.low:g},{space.high:g}]")
            elif isinstance(space, IntRange):
                parts.append(f"{key}∈[{space.low},{space.high}]")
            else:
                options = ",".join(repr(o) if isinstance(o, str) else str(o) for o in space.options)
                parts.append(f"{key}∈{{{options}}}")
        return " ".join(parts) or "(nothing to search)"

    def __repr__(self) -> str:
        return f"<technique {self.name}>"


def format_lr(lr: float) -> str:
    return f"lr={lr:.0e}".replace("e-0", "e-")
