"""PiSSA: LoRA whose A and B start as the principal singular vectors of each weight, the base keeping the
residual (Meng et al., 2024, "PiSSA: Principal Singular Values and Singular Vectors Adaptation of Large
Language Models", arXiv:2404.02948).

PiSSA changes the base weights when it wraps the model, so a plain adapter would not fit the original base.
The export uses peft's own conversion (`path_initial_model_for_weight_conversion`): the saved adapter is a
rank-2r LoRA that applies to the unmodified base model, so translation and reloading need nothing special.
"""

from __future__ import annotations

import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from techniques.base import Choice, Rule
from techniques.lora import LoRA

NITER = Rule(lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 0,
             "the number of fast-SVD iterations must be an integer >= 0 (0: exact SVD)", "4")
_INITIAL = "_peft_bench_pissa_initial"  # the model attribute holding the untrained adapter's folder


class PiSSA(LoRA):
    name = "pissa"
    description = "PiSSA: LoRA initialised from the principal singular vectors; the base keeps the residual."
    groups: tuple[str, ...] = ("lora-family",)
    defaults: Mapping[str, Any] = {**LoRA.defaults, "lr": 5e-4, "svd_niter": 4}
    search_space = {**LoRA.search_space, "svd_niter": Choice((4, 16))}
    rules = {**LoRA.rules, "svd_niter": NITER}

    def extra_lora_kwargs(self, hp: Mapping[str, Any]) -> dict[str, Any]:
        # Fast randomised SVD (a few iterations) makes initialisation seconds instead of minutes on a CPU.
        niter = int(hp["svd_niter"])
        return {"init_lora_weights": f"pissa_niter_{niter}" if niter else "pissa"}

    def after_wrap(self, model: Any, hp: Mapping[str, Any], tokenizer: Any) -> None:
        # The untrained adapter, saved as plain LoRA (peft's recipe), is what the export converts against.
        folder = tempfile.TemporaryDirectory(prefix="pissa-init-")
        config = model.peft_config[model.active_adapter]
        init = config.init_lora_weights
        config.init_lora_weights = True
        model.save_pretrained(folder.name, safe_serialization=True)
        config.init_lora_weights = init
        setattr(model, _INITIAL, folder)  # removed with the model

    def export(self, model: Any, folder: Path) -> None:
        initial = getattr(model, _INITIAL, None)
        if initial is None:  # a reloaded, already converted adapter
            return super().export(model, folder)
        model.save_pretrained(str(folder), safe_serialization=True,
                              path_initial_model_for_weight_conversion=initial.name)

    def variant_label(self, hp: Mapping[str, Any]) -> str:
        return f"pissa niter={hp['svd_niter']}"


TECHNIQUE = PiSSA()
