"""LoRA: low-rank updates of the linear projections (Hu et al., 2021)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from harness.errors import BenchError
from techniques.base import ALPHA, DROPOUT, LR, RANK, Choice, LogUniform, Technique, format_lr

# Named module sets so a search can compare them; names match Llama, Gemma, Qwen and Mistral models.
MODULE_SETS: dict[str, list[str]] = {
    "attention": ["q_proj", "k_proj", "v_proj", "o_proj"],
    "mlp": ["gate_proj", "up_proj", "down_proj"],
}


def resolve_target_modules(target: Any, model: Any) -> Any:
    """'all-linear' stays for peft; a set name becomes module names that must exist in the model."""
    if target == "all-linear":
        return target
    modules = MODULE_SETS.get(target, target) if isinstance(target, str) else list(target)
    modules = [modules] if isinstance(modules, str) else modules
    present = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules()}
    missing = [m for m in modules if m not in present]
    if missing:
        raise BenchError(
            f"target_modules: {missing} do not exist in {type(model).__name__}. Use 'all-linear', one of "
            f"{sorted(MODULE_SETS)}, or module names of this model (e.g. {sorted(present)[:8]})."
        )
    return modules


class LoRA(Technique):
    name = "lora"
    description = "LoRA: trainable low-rank updates (rank r, scale alpha/r) on the linear projections."
    groups: tuple[str, ...] = ("lora-family", "original")
    mergeable = True
    rules = {"lr": LR, "r": RANK, "alpha": ALPHA, "dropout": DROPOUT}
    defaults: Mapping[str, Any] = {
        "lr": 1e-3,
        "r": 16,
        "alpha": 32,
        "dropout": 0.0,  # short budgets gain nothing from it, and its masks cost ~7% of a CPU step
        "target_modules": "all-linear",
    }
    search_space = {
        "lr": LogUniform(1e-4, 3e-3),
        "r": Choice((4, 8, 16, 32)),
        "alpha": Choice((8, 16, 32, 64)),
        "dropout": Choice((0.0, 0.05, 0.1)),
        "target_modules": Choice(("all-linear", "attention")),
    }

    def peft_config(self, hp: Mapping[str, Any], model: Any, tokenizer: Any) -> Any:
        from peft import LoraConfig, TaskType

        return LoraConfig(
            task_type=TaskType.CAUSAL_LM,
            r=int(hp["r"]),
            lora_alpha=hp["alpha"],
            lora_dropout=float(hp["dropout"]),
            target_modules=resolve_target_modules(hp["target_modules"], model),
            **self.extra_lora_kwargs(hp),
        )

    def extra_lora_kwargs(self, hp: Mapping[str, Any]) -> dict[str, Any]:
        """Hook for LoRA variants (e.g. DoRA: use_dora=True) so they reuse everything else."""
        return {}

    def variant_label(self, hp: Mapping[str, Any]) -> str:
        """What a LoRA variant adds to the label (e.g. LoRA+'s learning-rate ratio)."""
        return ""

    def label(self, hp: Mapping[str, Any]) -> str:
        modules = hp["target_modules"]
        modules = modules if isinstance(modules, str) else ",".join(modules)
        extra = self.variant_label(hp)
        return (f"r={hp['r']} alpha={hp['alpha']} drop={hp['dropout']} {modules}{' ' + extra if extra else ''} "
                f"{format_lr(hp['lr'])}")


TECHNIQUE = LoRA()
