"""``none``: nothing of the pod's traffic is redirected, because nothing needs to be.

Chosen for a pod whose flavour says, before any mode is judged, that its traffic needs no
redirect (``Flavour.no_redirect``): a proxyless gRPC app talks to its agent itself and calls
its peers directly. Such a pod gets the proxy the flavour renders and no mechanism at all: no
init container (so nothing for Pod Security to refuse, and no iptables backend), no
RuntimeClass, no Merbridge annotations but those that keep Merbridge's hands off it where it
runs (``webhook.modes.ebpf.hands_off``). Its ``mesh-injector.io/interception`` label says
``none``, so a node agent that selects pods by their mode never takes it for one it serves.
"""

from __future__ import annotations

from webhook.dataplane.base import Flavour
from webhook.modes.base import Gap, Interception, Setting
from webhook.policy import Policy

NEEDS = "nothing: the flavour says the pod's traffic needs no redirect"


def missing(setting: Setting) -> Gap | None:
    return None


def blocked(setting: Setting) -> None:
    """Nothing is added that a Pod Security level could refuse."""
    return None


def interception(setting: Setting) -> Interception:
    return Interception(notes=("rules: none (nothing of the pod's traffic is redirected)",))


def supported_text(setting: Setting) -> str:
    return "nothing to redirect"


def describe(policy: Policy, plane: Flavour) -> str:
    """What the mode needs and adds, for ``policy check``."""
    return (
        f"for pods the {plane.name} flavour says need no redirect (their app talks to the proxy itself): "
        "no init container, no RuntimeClass, nothing for Pod Security to refuse; label "
        "mesh-injector.io/interception: none"
    )
