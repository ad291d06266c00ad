"""LoHa: the update is the Hadamard product of two low-rank products, a higher effective rank for the same
parameters (Hyeon-Woo et al., 2022, "FedPara: Low-Rank Hadamard Product for Communication-Efficient Federated
Learning", arXiv:2108.06098; as in LyCORIS)."""

from __future__ import annotations

from techniques.lycoris import LycorisAdapter


class LoHa(LycorisAdapter):
    name = "loha"
    description = "LoHa: Hadamard product of two low-rank updates (LyCORIS) on the linear projections."
    config_name = "LoHaConfig"


TECHNIQUE = LoHa()
