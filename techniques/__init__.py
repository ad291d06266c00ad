"""Technique plugins: one module per parameter-efficient method, all behind `techniques.base.Technique`."""

from techniques.base import Choice, IntRange, LogUniform, Technique

__all__ = ["Choice", "IntRange", "LogUniform", "Technique"]
