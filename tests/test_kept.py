"""What is made once and kept for many pods is kept by everything it is made of.

Merbridge's annotations are kept per policy (``webhook.modes.ebpf``): a new snapshot whose
control plane ignores other ports, under the same policy object (a live cluster whose
``linkerd-config`` changed), must not be served the annotations made for the old one; nor
must a pod whose own skip annotation replaces the control plane's list be served another
pod's. The expected values are the ports written out by hand.
"""

from __future__ import annotations

import copy
from typing import Any

from tests.support import CASES, load_case
from webhook.admission import admit

INBOUND = "traffic.sidecar.istio.io/excludeInboundPorts"
OUTBOUND = "traffic.sidecar.istio.io/excludeOutboundPorts"


def _merbridge(out: Any) -> tuple[str | None, str | None]:
    assert out.injected and out.mode.value == "ebpf", out.explanation
    annotations = out.pod["metadata"]["annotations"]
    return annotations.get(INBOUND), annotations.get(OUTBOUND)


def _case() -> Any:
    # Linkerd 2.20 ignoring inbound 4567,4568,25 and outbound 4567,4568,3306, in ebpf mode
    return load_case(next(p for p in CASES if p.name.startswith("180-")))


def test_a_changed_control_plane_under_the_same_policy_gets_its_own_annotations() -> None:
    case = _case()
    request = case.review["request"]
    first = admit(copy.deepcopy(request), case.snapshot, case.policy)
    assert _merbridge(first) == ("25,4190,4191,4567,4568", "3306,4567,4568")

    maps = dict(case.snapshot.config_maps)
    config = dict(maps[("linkerd", "linkerd-config")])
    values = config["values"]
    for old, new in (
        ("ignoreInboundPorts: 4567,4568,25\n", "ignoreInboundPorts: 4567,4568,26\n"),
        ("ignoreOutboundPorts: 4567,4568,3306\n", "ignoreOutboundPorts: 4567,4568,5432\n"),
    ):
        assert old in values
        values = values.replace(old, new)
    config["values"] = values
    maps[("linkerd", "linkerd-config")] = config
    changed = case.snapshot.derive(config_maps=maps)
    again = admit(copy.deepcopy(request), changed, case.policy)
    assert _merbridge(again) == ("26,4190,4191,4567,4568", "4567,4568,5432")


def test_a_pod_whose_own_skip_annotation_replaces_the_control_planes_gets_its_own() -> None:
    case = _case()
    request = case.review["request"]
    first = admit(copy.deepcopy(request), case.snapshot, case.policy)
    assert _merbridge(first)[0] == "25,4190,4191,4567,4568"
    own = copy.deepcopy(request)
    own["object"]["metadata"].setdefault("annotations", {})["config.linkerd.io/skip-inbound-ports"] = "8125"
    # the pod's list replaces the control plane's 4567,4568,25 (as Linkerd's injector reads it)
    assert _merbridge(admit(own, case.snapshot.derive(), case.policy))[0] == "4190,4191,8125"
    assert _merbridge(admit(copy.deepcopy(own), case.snapshot, case.policy))[0] == "4190,4191,8125"
