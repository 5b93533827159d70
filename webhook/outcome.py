"""What a decision returns: the JSON Patch (``Patch``), the ``Outcome`` and its ``Detail``."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from webhook.core import ProxyResources
from webhook.reasons import Mode, ModeReason, Skip
from webhook.workload import WorkloadKey

# an RFC 6902 JSON Patch: what the decision asks the API server to apply
Patch = list[dict[str, Any]]


@dataclass(frozen=True, slots=True)
class Detail:
    """What only a person reads: the mutated pod and the explanation."""

    pod: Mapping[str, Any] | None  # the object after the patch (the received object when skipped)
    explanation: tuple[str, ...]


@dataclass(frozen=True)
class Outcome:
    """Everything a front end needs: the patch, the warnings, and the why.

    It carries no uid: the answer is the same for every request with the same object, and
    the front ends echo the uid of the request they answer.

    ``pod`` and ``explanation`` come from ``detail``. An outcome decided now holds them; one
    served from a memo recomputes them on first use (the core is pure, so that is the same
    answer), which is what lets memos keep only the patch and the decision, never a pod.
    """

    patch: Patch
    injected: bool
    mode: Mode | None = None
    mode_reason: ModeReason | None = None
    # the iptables backend the init container installs the rules with (None: nothing of
    # ours installs rules)
    firewall: str | None = None
    skip: Skip | None = None
    resources: ProxyResources | None = None
    workload: WorkloadKey | None = None
    namespace: str = ""
    warnings: tuple[str, ...] = ()
    detail: Callable[[], Detail] = field(default=lambda: Detail(None, ()), compare=False, repr=False)
    # what the rendering made of the pod's ports, as a function of a pod (the flavour's
    # ``ports_text`` with the control plane this pod joined); None where nothing holds them
    ports_text: Callable[[Mapping[str, Any]], str] | None = field(default=None, compare=False, repr=False)

    @property
    def result(self) -> str:
        return "injected" if self.injected else "skipped"

    @property
    def reason(self) -> str:
        if self.skip is not None:
            return self.skip.value
        return self.mode_reason.value if self.mode_reason else ""

    @property
    def pod(self) -> Mapping[str, Any] | None:
        return self.detail().pod

    @property
    def explanation(self) -> tuple[str, ...]:
        return self.detail().explanation


def clone(outcome: Outcome, **changes: Any) -> Outcome:
    """A copy with ``changes``, without dataclasses.replace's re-validation (hot path)."""
    out = object.__new__(Outcome)
    out.__dict__.update(outcome.__dict__, **changes)
    return out


def light(outcome: Outcome) -> Outcome:
    """``outcome`` without its detail: what a memo keeps (the patch holds only what we add)."""
    return clone(outcome, detail=_no_detail)


def _no_detail() -> Detail:
    raise RuntimeError("a memoised outcome is served with its own detail")
