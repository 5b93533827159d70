"""What every layer shares: the names we write on pods, what is learnt while deciding
(``Notes``), and the proxy's resources (``ProxyResources``). It imports nothing of ours but
the enums in ``reasons``, so any module may import it."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from webhook.reasons import ResourceSource

PREFIX = "mesh-injector.io/"
ANN_STATUS = PREFIX + "status"
ANN_DECISION = PREFIX + "decision"
ANN_SOURCE = PREFIX + "proxy-resources-source"
ANN_SKIP = PREFIX + "skip-reason"
LABEL_MODE = PREFIX + "interception"

MI = 1024 * 1024


@dataclass
class Notes:
    """What is learnt while deciding, for the explanation and the warnings."""

    lines: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def warn(self, text: str) -> None:
        self.warnings.append(text if text.startswith("mesh-injector:") else f"mesh-injector: {text}")


def cpu_str(cores: float) -> str:
    milli = math.ceil(round(cores * 1000, 6))
    return str(milli // 1000) if milli % 1000 == 0 else f"{milli}m"


def memory_str(nbytes: float) -> str:
    mib = math.ceil(round(nbytes / MI, 6))
    return f"{mib // 1024}Gi" if mib % 1024 == 0 and mib else f"{mib}Mi"


@dataclass(frozen=True, slots=True, kw_only=True)
class ProxyResources:
    cpu_request: float
    memory_request: int
    cpu_limit: float | None
    memory_limit: int | None
    source: ResourceSource
    detail: str
    # sized by someone else (a VerticalPodAutoscaler, named in ``by``): these resources are
    # kept as they are
    kept: Mapping[str, Any] | None = None
    by: str = ""

    @property
    def label(self) -> str:
        """Where the sizes come from, in a word: ``profile``, ``observed``, ``annotation``, ``vpa/NAME``."""
        return f"{self.source.value}/{self.by}" if self.by else self.source.value

    def as_k8s(self) -> dict[str, Any]:
        if self.kept is not None:
            return {k: dict(v) if isinstance(v, dict) else v for k, v in self.kept.items()}
        out: dict[str, dict[str, str]] = {
            "requests": {"cpu": cpu_str(self.cpu_request), "memory": memory_str(self.memory_request)}
        }
        limits = {}
        if self.cpu_limit is not None:
            limits["cpu"] = cpu_str(self.cpu_limit)
        if self.memory_limit is not None:
            limits["memory"] = memory_str(self.memory_limit)
        if limits:
            out["limits"] = limits
        return out

    def threads(self) -> tuple[int, str] | None:
        """The worker threads the proxy's CPU pays for, and which CPU figure that is: its
        limit, else its request, in whole cores rounded up (at least one). None where a
        VerticalPodAutoscaler sizes the proxy: it may change the CPU on any later pod, and a
        thread count fixed now would not follow (the proxy then picks its own)."""
        if self.kept is not None:
            return None
        if self.cpu_limit is not None:
            cores, which = self.cpu_limit, "limit"
        else:
            cores, which = self.cpu_request, "request"
        return max(1, math.ceil(round(cores, 6))), f"its CPU {which} {cpu_str(cores)}"

    def brief(self) -> str:
        if self.kept is not None:
            return (
                f"as VPA sets them ({self.kept})" if self.kept else "none from us: VPA's admission sets them"
            )
        res = self.as_k8s()
        lim = res.get("limits", {})
        return (
            f"requests cpu={res['requests']['cpu']} memory={res['requests']['memory']}, "
            f"limits cpu={lim.get('cpu', 'none')} memory={lim.get('memory', 'none')}"
        )
