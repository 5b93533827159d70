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


def test_kernels_and_the_node_lines_are_kept_per_policy_on_one_snapshot() -> None:
    """The eligible nodes' kernel facts and the explanation's lines about the nodes are kept
    with the Eligibility (one per set of scheduling constraints on a snapshot): another policy
    on the same snapshot, with a higher minimum kernel or another Merbridge selector, is
    judged and explained on its own, and the first policy's answer stays as it was."""
    from tests.support import EXAMPLE, ROOT, anchored_policy
    from webhook.loading import load_snapshot

    base = anchored_policy()
    stricter = anchored_policy("interception: {ebpf: {minKernel: '6.2'}}")
    elsewhere = anchored_policy("interception: {ebpf: {redirector: {selector: app=mb}}}")
    cluster = str(ROOT.parent / "examples" / "cluster.yaml")
    snapshot = load_snapshot(policy=base, now=0, cluster=cluster)
    request = EXAMPLE["request"]

    def said(out: Any, start: str) -> str:
        return next(line for line in out.explanation if line.startswith(start))

    first = admit(copy.deepcopy(request), snapshot, base)
    assert first.mode.value == "ebpf" and said(first, "kernel:").endswith("eBPF-capable: yes")
    higher = admit(copy.deepcopy(request), snapshot, stricter)
    assert higher.mode.value == "iptables" and higher.mode_reason.value == "kernel-too-old"
    assert said(higher, "kernel:").endswith("eBPF-capable: no")
    assert "-l app=merbridge)" in said(first, "redirector:")
    moved = admit(copy.deepcopy(request), snapshot, elsewhere)
    assert "-l app=mb)" in said(moved, "redirector:")
    again = admit(copy.deepcopy(request), snapshot.derive(), base)
    assert again.mode.value == "ebpf" and again.explanation == first.explanation


def test_skip_lists_are_kept_by_the_pods_own_lists_and_who_installs_the_rules() -> None:
    """Linkerd's skip lists are kept per control-plane configuration: on one snapshot and
    policy, a pod with its own ``config.linkerd.io/skip-inbound-ports`` gets its own list (it
    replaces the control plane's), and under a policy whose CNI plugin installs the rules an
    iptables pod gets none of the control plane's proxyInit ports while an ebpf pod (Merbridge
    is told what linkerd-init would leave alone) still gets them."""
    from tests.support import anchored_policy

    ebpf = load_case(next(p for p in CASES if p.name.startswith("180-")))
    iptables = load_case(next(p for p in CASES if p.name.startswith("181-")))  # asks for it
    snapshot = iptables.snapshot

    def skips(review: Any, policy: Any, mode: str, own: str | None = None) -> tuple[str | None, ...]:
        request = copy.deepcopy(review["request"])
        if own is not None:
            request["object"]["metadata"].setdefault("annotations", {})[SKIP_IN] = own
        out = admit(request, snapshot, policy)
        assert out.injected and out.mode.value == mode, out.explanation
        annotations = out.pod["metadata"]["annotations"]
        return annotations.get(SKIP_IN), annotations.get("config.linkerd.io/skip-outbound-ports")

    # the pod's own list is not also translated as an exclusion here: only the list tells
    untranslated = anchored_policy("otherMeshes: {translateExclusions: false}")
    control_plane = ("4567,4568,25", "4567,4568,3306")
    assert skips(iptables.review, untranslated, "iptables") == control_plane
    assert skips(iptables.review, untranslated, "iptables", own="7000") == ("7000", control_plane[1])
    cni = anchored_policy("interception: {iptables: {cniInstallsRules: true}}")
    assert skips(ebpf.review, cni, "ebpf") == control_plane
    assert skips(iptables.review, cni, "iptables") == (None, None)
    assert skips(ebpf.review, cni, "ebpf") == control_plane



def test_the_redirector_gap_is_kept_per_policy_on_one_snapshot() -> None:
    """Whether Merbridge serves the eligible nodes is kept with them (the Eligibility), by
    what of the policy it reads: on one snapshot where Merbridge runs without --cni-mode, the
    policy that requires it gets iptables and one that does not gets ebpf, in either order."""
    from tests.support import anchored_policy

    case = load_case(next(p for p in CASES if p.name.startswith("105-")))
    request = case.review["request"]
    lenient = anchored_policy("interception: {ebpf: {redirector: {requireCniMode: false}}}")
    for policy, mode in ((case.policy, "iptables"), (lenient, "ebpf"), (case.policy, "iptables")):
        out = admit(copy.deepcopy(request), case.snapshot, policy)
        assert out.injected and out.mode.value == mode, out.explanation
        if mode == "iptables":
            assert out.mode_reason.value == "no-redirector"


SKIP_IN = "config.linkerd.io/skip-inbound-ports"
