"""Nested values as charts and policy files write them: a value read by its dotted path, and
one tree laid over another."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def dotted(tree: Mapping[str, Any], path: str) -> Any:
    """The value at a dotted path (``proxyInit.image.version``), or None where any part of it
    is missing or is not a mapping."""
    node: Any = tree
    for part in path.split("."):
        if not isinstance(node, Mapping):
            return None
        node = node.get(part)
    return node


def overlay(base: Mapping[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    """``over`` laid on ``base`` mapping by mapping, as Helm merges values files and as a
    policy file overrides the defaults: a value that is not a mapping on both sides (a list
    too) replaces the base's whole."""
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = overlay(out[key], value)
        else:
            out[key] = value
    return out
