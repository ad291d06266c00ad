"""What a result needs to be reproducible: library versions and the code's commit."""

from __future__ import annotations

import functools
import subprocess
from importlib import metadata

from harness.config import PROJECT_ROOT

_PACKAGES = ("peft-bench", "torch", "transformers", "peft", "bitsandbytes", "sacrebleu", "ray", "optuna", "datasets")


@functools.lru_cache(maxsize=1)
def versions() -> dict[str, str]:
    out = {}
    for name in _PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


@functools.lru_cache(maxsize=1)
def commit() -> str:
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "--short=12", "HEAD"], cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=5
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"], cwd=PROJECT_ROOT, capture_output=True,
            text=True, timeout=5,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return (sha + ("-dirty" if dirty else "")) if sha else "unknown"
