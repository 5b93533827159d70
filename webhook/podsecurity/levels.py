"""The levels a namespace's ``pod-security.kubernetes.io/*`` labels set.

``enforce`` decides what the API server refuses; ``warn`` what it warns about; ``audit``
what it records. A missing ``enforce`` label means the cluster's default (the API server's
PodSecurity configuration, which a webhook cannot see: the policy's
``podSecurity.defaultLevel`` stands in for it). An unknown level value is treated as
``restricted``, as the API server does, and a version label names the Pod Security
Standards release (``v1.29``, ``latest``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

LEVELS = ("privileged", "baseline", "restricted")
PREFIX = "pod-security.kubernetes.io/"


@dataclass(frozen=True, slots=True)
class Levels:
    enforce: str
    enforce_version: str
    warn: str | None
    audit: str | None
    source: str  # where the enforced level came from, for the explanation

    @property
    def restricts(self) -> bool:
        """True when the enforced level rejects added capabilities (baseline and up)."""
        return self.enforce != "privileged"


def _level(value: object) -> str:
    return value if value in LEVELS else "restricted"


def namespace_levels(labels: Mapping[str, str], default: str) -> Levels:
    raw = labels.get(PREFIX + "enforce")
    if raw is None:
        enforce, source = default, f"policy podSecurity.defaultLevel ({default})"
    else:
        enforce = _level(raw)
        source = "namespace label" if raw in LEVELS else f"namespace label {raw!r} is not a level: restricted"
    version = labels.get(PREFIX + "enforce-version") or "latest"
    warn = labels.get(PREFIX + "warn")
    audit = labels.get(PREFIX + "audit")
    return Levels(
        enforce=enforce,
        enforce_version=version,
        warn=_level(warn) if warn is not None else None,
        audit=_level(audit) if audit is not None else None,
        source=source,
    )
