"""Parsing kernel and Kubernetes versions as nodes and API servers really report them.

Kernel strings seen in the field: ``6.8.0-45-generic``, ``5.15.0-1052-aws``,
``4.19.112+`` (GKE COS), ``5.10.223-212.873.amzn2.x86_64``, ``4.18.0-513.el8.x86_64``,
``6.1.0-18-cloud-amd64``. Only the leading ``major.minor[.patch]`` orders kernels; the
rest is vendor build metadata, which policy patterns may match (back-ported eBPF).
Anything else is *unknown*, never an exception.
"""

from __future__ import annotations

import re
from functools import lru_cache
from typing import NamedTuple

_KERNEL = re.compile(r"^\s*v?(\d{1,4})\.(\d{1,4})(?:\.(\d{1,6}))?(?:$|[^\d.])")
_KUBE = re.compile(r"^\s*v?(\d{1,3})\.(\d{1,4})(?:\.(\d{1,6}))?")


class Kernel(NamedTuple):
    major: int
    minor: int
    patch: int = 0

    def __str__(self) -> str:
        return f"{self.major}.{self.minor}.{self.patch}"


class KubeVersion(NamedTuple):
    major: int
    minor: int

    def __str__(self) -> str:
        return f"{self.major}.{self.minor}"


@lru_cache(maxsize=4096)
def parse_kernel(raw: object) -> Kernel | None:
    """``Kernel`` for a node's ``kernelVersion``, or ``None`` when it cannot be read."""
    if not isinstance(raw, str):
        return None
    m = _KERNEL.match(raw)
    if m is None:
        return None
    return Kernel(int(m.group(1)), int(m.group(2)), int(m.group(3) or 0))


@lru_cache(maxsize=1024)
def parse_kube_version(raw: object) -> KubeVersion | None:
    """``1.32``, ``v1.29.3``, ``v1.30.2-eks-1552ad0``, ``v1.20.2`` -> ``KubeVersion``."""
    if not isinstance(raw, str):
        return None
    m = _KUBE.match(raw)
    if m is None:
        return None
    return KubeVersion(int(m.group(1)), int(m.group(2)))


def kube_version_from_info(major: object, minor: object, git_version: object = None) -> KubeVersion | None:
    """The API server's ``/version`` answer; minor may carry a ``+`` (``"29+"`` on GKE/EKS)."""
    parsed = parse_kube_version(git_version)
    if parsed is not None:
        return parsed
    if isinstance(major, str) and isinstance(minor, str):
        return parse_kube_version(f"{major}.{minor.rstrip('+')}")
    return None
