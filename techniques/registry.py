"""Name -> technique. Built-ins are listed here; third-party plugins come from the entry-point group
`peft_bench.techniques` (the entry point names a `Technique` subclass or instance)."""

from __future__ import annotations

import importlib
import logging
from collections.abc import Iterable
from importlib.metadata import entry_points

from harness.errors import BenchError, closest
from techniques.base import Technique

ENTRY_POINT_GROUP = "peft_bench.techniques"
BASELINE = "base"
_BUILTIN_MODULES = ("baseline", "lora", "qlora", "prefix_tuning", "soft_prompting", "dora", "rslora", "pissa",
                    "lora_plus", "lora_fa", "adalora", "ia3", "loha", "lokr", "vera", "oft", "p_tuning", "full")

log = logging.getLogger(__name__)
_registry: dict[str, Technique] | None = None
_aliases: dict[str, str] = {}
_plugin_errors: dict[str, str] = {}


def register(technique: Technique | type[Technique]) -> Technique:
    """Add a technique (an instance or a class) under its name and aliases."""
    reg = _load()
    obj = technique() if isinstance(technique, type) else technique
    if not isinstance(obj, Technique):
        raise TypeError(f"{technique!r} is not a techniques.base.Technique")
    reg[obj.name] = obj
    for alias in obj.aliases:
        _aliases[alias] = obj.name
    return obj


def _load() -> dict[str, Technique]:
    global _registry
    if _registry is not None:
        return _registry
    _registry = {}
    for module in _BUILTIN_MODULES:
        register(importlib.import_module(f"techniques.{module}").TECHNIQUE)
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        try:
            register(ep.load())
        except Exception as exc:  # a broken plugin must not take the built-ins down
            _plugin_errors[ep.name] = f"{type(exc).__name__}: {exc}"
            log.warning("technique plugin %s (%s) failed to load: %s", ep.name, ep.value, exc)
    return _registry


def reload() -> None:
    """Forget what was loaded (tests install plugins at run time)."""
    global _registry
    _registry = None
    _aliases.clear()
    _plugin_errors.clear()


def canonical(name: str) -> str:
    _load()
    return _aliases.get(name, name)


def get(name: str) -> Technique:
    reg = _load()
    key = canonical(name)
    if key not in reg:
        check_names([name], "technique")
        raise BenchError(f"technique: '{name}' is a group ({', '.join(groups()[name])}), not one technique; "
                         "name one of its techniques here.")
    return reg[key]


def names(include_baseline: bool = False) -> list[str]:
    """Registered techniques in registration order (built-ins first)."""
    reg = _load()
    return [n for n, t in reg.items() if include_baseline or t.trains]


def groups() -> dict[str, list[str]]:
    """Named selections ('all' and every group a technique declares) -> trainable technique names."""
    out: dict[str, list[str]] = {"all": names()}
    for name in names():
        for group in get(name).groups:
            out.setdefault(group, []).append(name)
    return out


def resolve(selection: Iterable[str]) -> list[str]:
    """Names, aliases or group names ('all', 'lora-family', ...) -> canonical trainable technique names, in
    order, deduplicated."""
    named = groups()
    out: list[str] = []
    for item in selection:
        if item not in named:
            check_names([item], "--techniques")
        picked = named.get(item, [canonical(item)])
        out.extend(p for p in picked if p not in out and p != BASELINE)
    return out


def check_names(requested: Iterable[str], field: str) -> None:
    reg = _load()
    valid = sorted(set(reg) | set(_aliases))
    named = groups()
    for name in requested:
        if canonical(name) in reg or name in named:
            continue
        if name in _plugin_errors:
            raise BenchError(
                f"{field}: the technique plugin '{name}' is installed but failed to load "
                f"({_plugin_errors[name]}). Fix or uninstall the plugin package."
            )
        raise BenchError(
            f"{field}: '{name}' is not a known technique.{closest(name, valid + list(named))} Valid techniques: "
            f"{', '.join(['all'] + valid)}; groups: {', '.join(g for g in named if g != 'all')}."
        )
