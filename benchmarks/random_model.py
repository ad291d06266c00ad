"""A model folder with a model's exact architecture and tokenizer and random weights, for machines the real
weights cannot be taken to (an offline GPU box): right for mechanics and speed, meaningless for BLEU.
Folded in from the shared GPU kit (make_model.py).

usage: python -m benchmarks.random_model CONFIG_DIR OUT_DIR   (CONFIG_DIR: config.json + tokenizer files)
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import torch


def build(src: Path, dst: Path, dtype: torch.dtype = torch.bfloat16) -> Path:
    from transformers import AutoConfig, AutoModelForCausalLM

    cfg = AutoConfig.from_pretrained(src)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(cfg, dtype=dtype)
    model.save_pretrained(dst)
    for f in src.iterdir():
        if f.name != "config.json" and f.suffix != ".safetensors" and f.is_file():
            shutil.copy(f, dst / f.name)
    return dst


if __name__ == "__main__":
    out = build(Path(sys.argv[1]), Path(sys.argv[2]))
    print("random-weight model ->", out)
