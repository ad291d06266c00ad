"""LoKr: the update is a Kronecker product of a small matrix and a low-rank one (Edalati et al., 2022,
"KronA: Parameter Efficient Tuning with Kronecker Adapter", arXiv:2212.10650; as in LyCORIS)."""

from __future__ import annotations

from techniques.lycoris import LycorisAdapter


class LoKr(LycorisAdapter):
    name = "lokr"
    description = "LoKr: Kronecker product of a small and a low-rank matrix (LyCORIS) on the linear projections."
    config_name = "LoKrConfig"


TECHNIQUE = LoKr()
