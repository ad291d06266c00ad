"""Third-party techniques for the tests, shared by every test file that needs them: installed only through the
entry-point group (see `install`), never imported by the harness directly."""

from __future__ import annotations

from pathlib import Path

from techniques.base import LogUniform, Technique
from techniques.lora import LoRA

ENTRY_POINTS = {"ia3": "IA3", "faulty": "Faulty", "broken": "DoesNotExist"}


class IA3(Technique):
    name = "ia3"
    description = "IA3: learned rescaling vectors (test plugin)"
    defaults = {"lr": 1e-2}
    search_space = {"lr": LogUniform(1e-3, 1e-1)}

    def peft_config(self, hp, model, tokenizer):
        from peft import IA3Config, TaskType

        return IA3Config(task_type=TaskType.CAUSAL_LM, target_modules=["k_proj", "v_proj", "down_proj"],
                         feedforward_modules=["down_proj"])


class Faulty(LoRA):
    name = "faulty"
    description = "LoRA that raises in its second epoch (fault injection)"

    def after_wrap(self, model, hp, tokenizer):
        calls = {"n": 0}

        def hook(module, args, output):
            if module.training:
                calls["n"] += 1
                if calls["n"] > 6:  # 48 pairs / batch 8 = 6 steps per epoch
                    raise RuntimeError("injected fault in epoch 2")
            return output

        model.register_forward_hook(hook)


def install(root: Path) -> Path:
    """A distribution whose entry points name this module's classes (and one broken entry); put the returned
    folder and tests/ on PYTHONPATH (or sys.path) to install it."""
    root.mkdir(parents=True, exist_ok=True)
    info = root / "peft_bench_test_plugins-0.1.dist-info"
    info.mkdir(exist_ok=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: peft-bench-test-plugins\nVersion: 0.1\n")
    lines = "".join(f"{name} = fault_plugins:{cls}\n" for name, cls in ENTRY_POINTS.items())
    (info / "entry_points.txt").write_text("[peft_bench.techniques]\n" + lines)
    return root
