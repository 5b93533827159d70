"""What reaches the proxy is the same whichever mechanism redirects it, and a mechanism that
is not the pod's never takes it.

- ``RedirectRules``: what the installed control plane's own rules leave alone, read once from
  its configuration, with the pod's own annotations replacing each list as the mesh's
  injector reads them; what Merbridge is told under ebpf.
- ``config.linkerd.io/skip-subnets``: inbound sources, never outbound destinations.
- Mode ``none``: a pod whose flavour says it needs no redirect (proxyless gRPC) gets no
  mechanism, whatever it asks for and wherever it runs.
- Merbridge kept off a pod of another mode (``webhook.modes.ebpf.hands_off``): by its
  controller (an inbound list of one port it always leaves alone) and its CNI plugin
  (``sidecar.istio.io/inject: "false"``), where Merbridge runs or may run.

Expectations are written from the rules (Merbridge's source, the meshes' injectors), not read
back from the code. Merbridge's real programs are in ``tests/test_merbridge.py``.
"""

from __future__ import annotations

import json
from typing import Any

import jsonpatch
import pytest

from tests.support import anchored_policy
from webhook.admission import admit
from webhook.cluster.snapshot import Node, RedirectorState, RuntimeClass, build_snapshot
from webhook.dataplane.base import RedirectRules
from webhook.dataplane.istio import Capture
from webhook.dataplane.istio import redirect_rules as istio_rules
from webhook.policy import Policy
from webhook.versions import KubeVersion

INCLUDE_IN = "traffic.sidecar.istio.io/includeInboundPorts"
EXCLUDE_IN = "traffic.sidecar.istio.io/excludeInboundPorts"
INJECT = "sidecar.istio.io/inject"
ISTIO = anchored_policy("proxy: {flavour: istio}")
LINKERD = anchored_policy("")
GRPC = {"inject.istio.io/templates": "grpc-agent"}


# --- the control plane's rules, as they hold for one pod ----------------------------------

RULES = RedirectRules(
    proxy_inbound=((4190, 4191),),
    inbound=((4567, 4568),),
    outbound=((3306, 3306),),
    destinations=("169.254.169.254/32",),
    sources=("10.9.0.0/16",),
    only_inbound=((8080, 8080),),
    pod_keys={
        "inbound": "in",
        "outbound": "out",
        "destinations": "dst",
        "sources": "src",
        "only_inbound": "only-in",
    },
)


@pytest.mark.parametrize(
    ("annotations", "changed"),
    [
        ({}, {}),
        ({"unrelated": "1"}, {}),
        # the pod's own list replaces the control plane's, as the mesh's injector reads it
        ({"in": "25, 8000-8002"}, {"inbound": ((25, 25), (8000, 8002))}),
        ({"in": ""}, {"inbound": ()}),
        ({"out": "9000:9001"}, {"outbound": ((9000, 9001),)}),  # istio-iptables' range spelling
        ({"dst": "10.0.0.1/8,192.168.1.1"}, {"destinations": ("10.0.0.0/8", "192.168.1.1/32")}),
        ({"src": "172.16.0.0/12"}, {"sources": ("172.16.0.0/12",)}),
        # one that does not parse leaves the control plane's (the exclusions step warns)
        ({"in": "http"}, {}),
        ({"dst": "not-a-range"}, {}),
        # the pod's own include list is read by Merbridge itself: nothing of ours is written
        ({"only-in": "9090"}, {"only_inbound": None}),
    ],
)
def test_the_pods_own_annotation_replaces_the_control_planes_list(annotations, changed):
    want = {
        "proxy_inbound": ((4190, 4191),),
        "inbound": ((4567, 4568),),
        "outbound": ((3306, 3306),),
        "destinations": ("169.254.169.254/32",),
        "sources": ("10.9.0.0/16",),
        "only_inbound": ((8080, 8080),),
        **changed,
    }
    got = RULES.for_pod(annotations)
    assert {k: getattr(got, k) for k in want} == want


@pytest.mark.parametrize(
    ("capture", "problem"),
    [
        (Capture(), None),
        (Capture(exclude_inbound="15020,8000:8002"), None),
        (Capture(exclude_inbound="http"), "global.proxy.excludeInboundPorts 'http'"),
        (
            Capture(exclude_ranges="10.0.0.0/33"),
            "global.proxy.excludeIPRanges '10.0.0.0/33' is not an IP range",
        ),
        # Istio: an empty include list redirects no outbound traffic, which Merbridge cannot be told
        (Capture(include_ranges=""), "global.proxy.includeIPRanges is empty"),
        # includeOutboundPorts adds ports beside the ranges: a union Merbridge's lists cannot say
        (
            Capture(include_ranges="10.0.0.0/8", include_outbound="443"),
            "global.proxy.includeOutboundPorts '443' adds ports beside includeIPRanges '10.0.0.0/8'",
        ),
        # with every range redirected, includeOutboundPorts changes nothing
        (Capture(include_outbound="443"), None),
    ],
)
def test_istiods_capture_settings_merbridge_cannot_be_told_are_named(capture, problem):
    rules = istio_rules(capture)
    if problem is None:
        assert rules.problems == ()
    else:
        assert len(rules.problems) == 1 and rules.problems[0].startswith(problem), rules.problems
    assert rules.proxy_inbound == ((15020, 15020), (15021, 15021), (15090, 15090))


# --- decisions on a small cluster ---------------------------------------------------------

NODES = [
    Node(
        name=f"n{i}", labels={"kubernetes.io/hostname": f"n{i}"}, kernel="6.8.0-45-generic", kubelet="v1.32.2"
    )
    for i in (1, 2)
]


def cluster(
    *states: RedirectorState | None,
    config_maps: dict[tuple[str, str], dict[str, str]] | None = None,
    namespaces: dict[str, dict[str, str]] | None = None,
    runtime_classes: tuple[RuntimeClass, ...] = (),
):
    """Two nodes; Merbridge on the first ``len(states)`` of them in these states (None: none)."""
    redirectors = {
        node.name: (state, f"istio-system/merbridge-{node.name}")
        for node, state in zip(NODES, states, strict=False)
        if state is not None
    }
    return build_snapshot(
        nodes=NODES,
        namespaces=namespaces or {"shop": {"mesh-injector.io/inject": "enabled"}},
        config_maps=config_maps,
        redirectors=redirectors,
        runtime_classes=runtime_classes,
        server_version=KubeVersion(1, 32),  # native sidecars where the pod allows them
    )


def pod(annotations: dict[str, str] | None = None, apps: int = 1, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "web-0", "namespace": "shop", "annotations": dict(annotations or {})},
        "spec": {
            "containers": [
                {
                    "name": f"app{i}",
                    "image": "registry.example.com/app:1",
                    "ports": [{"containerPort": 8080 + i}],
                }
                for i in range(apps)
            ],
            **spec,
        },
    }


def decide(obj: dict[str, Any], snapshot, policy: Policy, namespace: str = "shop"):
    request = {
        "uid": "u",
        "operation": "CREATE",
        "kind": {"kind": "Pod"},
        "namespace": namespace,
        "object": obj,
    }
    out = admit(request, snapshot, policy)
    meshed = jsonpatch.apply_patch(obj, out.patch) if out.patch else obj
    return out, meshed


def annotations_of(meshed: dict[str, Any]) -> dict[str, str]:
    return meshed["metadata"].get("annotations") or {}


def init_names(meshed: dict[str, Any]) -> list[str]:
    return [c["name"] for c in meshed["spec"].get("initContainers") or []]


READY_ISTIO = RedirectorState(ready=True, mode="istio", cni_mode=True)


@pytest.mark.parametrize("requested", [None, "ebpf", "iptables", "microvm"])
def test_a_proxyless_pod_gets_mode_none_whatever_it_asks_for(requested):
    """Nothing of a grpc-agent pod is redirected: mode none, no init container, no firewall
    backend, no Merbridge exclusions (though Merbridge is Ready); an annotation asking for a
    mode is said not to be applied."""
    asked = {**GRPC, **({"mesh-injector.io/interception": requested} if requested else {})}
    kata = RuntimeClass(name="kata-qemu", handler="kata-qemu")
    out, meshed = decide(pod(asked), cluster(READY_ISTIO, READY_ISTIO, runtime_classes=(kata,)), ISTIO)
    assert out.injected and out.mode is not None and out.mode.value == "none", out.explanation
    assert out.mode_reason is not None and out.mode_reason.value == "nothing-to-redirect"
    assert out.firewall is None
    assert meshed["metadata"]["labels"]["mesh-injector.io/interception"] == "none"
    status = json.loads(annotations_of(meshed)["mesh-injector.io/status"])
    assert status["mode"] == "none" and "firewall" not in status
    assert "istio-init" not in init_names(meshed) and "runtimeClassName" not in meshed["spec"]
    assert EXCLUDE_IN not in annotations_of(meshed)
    if requested is None:
        assert out.warnings == ()
    else:
        assert len(out.warnings) == 1 and f"interception {requested} is not applied" in out.warnings[0]


@pytest.mark.parametrize("level", ["baseline", "restricted"])
def test_a_proxyless_pod_is_meshed_where_pod_security_refuses_net_admin(level):
    """Without Merbridge a pod needing a redirect falls back to iptables, which these levels
    refuse; a proxyless pod needs none, so nothing NET_ADMIN is added and it is meshed."""
    namespaces = {"shop": {"mesh-injector.io/inject": "enabled", "pod-security.kubernetes.io/enforce": level}}
    secured = {"runAsNonRoot": True, "seccompProfile": {"type": "RuntimeDefault"}}
    out, _ = decide(pod(GRPC, securityContext=secured), cluster(namespaces=namespaces), ISTIO)
    assert out.injected and out.mode is not None and out.mode.value == "none", out.explanation
    sidecar, _ = decide(pod(securityContext=secured), cluster(namespaces=namespaces), ISTIO)
    assert (
        not sidecar.injected
        and sidecar.skip is not None
        and sidecar.skip.value == f"iptables-in-{level}-namespace"
    )


def test_a_sandboxed_proxyless_pod_keeps_its_own_sandbox():
    kata = RuntimeClass(name="kata-qemu", handler="kata-qemu")
    out, meshed = decide(pod(GRPC, runtimeClassName="kata-qemu"), cluster(runtime_classes=(kata,)), ISTIO)
    assert out.mode is not None and out.mode.value == "none", out.explanation
    assert meshed["spec"]["runtimeClassName"] == "kata-qemu" and "istio-init" not in init_names(meshed)


# (Merbridge's state on the first node, the policy, the pod) -> the annotations that keep it off
ISTIO_CNI = anchored_policy("proxy: {flavour: istio}\ninterception: {iptables: {cniInstallsRules: true}}")
LINKERD_CNI = anchored_policy("interception: {iptables: {cniInstallsRules: true}}")
LEGACY = {"mesh-injector.io/native-sidecar": "false", "mesh-injector.io/interception": "iptables"}
NATIVE = {"mesh-injector.io/interception": "iptables"}
KEPT_OFF = [
    # no Merbridge anywhere: nothing
    ("no merbridge", None, ISTIO, LEGACY, 2, {INCLUDE_IN: None, INJECT: None}),
    # Istio, legacy placement: its controller counts the pod, its CNI plugin takes it
    ("istio legacy", READY_ISTIO, ISTIO, LEGACY, 1, {INCLUDE_IN: "15006", INJECT: "false"}),
    # not Ready yet: it may run, and takes the pod when it does
    (
        "not ready",
        RedirectorState(ready=False, mode="istio", cni_mode=True),
        ISTIO,
        LEGACY,
        1,
        {INCLUDE_IN: "15006", INJECT: "false"},
    ),
    # without --cni-mode there is no CNI plugin; the controller still counts the pod
    (
        "no cni mode",
        RedirectorState(ready=True, mode="istio", cni_mode=False),
        ISTIO,
        LEGACY,
        1,
        {INCLUDE_IN: "15006", INJECT: None},
    ),
    # Merbridge for another mesh: its controller looks for that mesh's proxy, its CNI plugin
    # (ignorePodIstio, every mode but Kuma's and OSM's) still takes the pod
    (
        "other mesh",
        RedirectorState(ready=True, mode="linkerd", cni_mode=True),
        ISTIO,
        LEGACY,
        1,
        {INCLUDE_IN: None, INJECT: "false"},
    ),
    # native: the controller never counts the pod; one regular container: the plugin skips it
    ("native one app", READY_ISTIO, ISTIO, NATIVE, 1, {INCLUDE_IN: None, INJECT: None}),
    ("native two apps", READY_ISTIO, ISTIO, NATIVE, 2, {INCLUDE_IN: None, INJECT: "false"}),
    # Istio's CNI plugin installs the rules and reads both annotations: neither is written for
    # Merbridge (the inbound list is the one the flavour writes for Istio's CNI plugin)
    ("istio cni", READY_ISTIO, ISTIO_CNI, LEGACY, 1, {INCLUDE_IN: "*", INJECT: None}),
    # Linkerd: no sidecar.istio.io/status, so the plugin never takes the pod; the controller
    # (Merbridge for Linkerd) counts a regular linkerd-proxy; linkerd-cni reads neither
    (
        "linkerd legacy",
        RedirectorState(ready=True, mode="linkerd", cni_mode=True),
        LINKERD,
        LEGACY,
        2,
        {INCLUDE_IN: "15006", INJECT: None},
    ),
    (
        "linkerd cni",
        RedirectorState(ready=True, mode="linkerd", cni_mode=True),
        LINKERD_CNI,
        LEGACY,
        1,
        {INCLUDE_IN: "15006", INJECT: None},
    ),
    (
        "linkerd native",
        RedirectorState(ready=True, mode="linkerd", cni_mode=True),
        LINKERD,
        NATIVE,
        2,
        {INCLUDE_IN: None, INJECT: None},
    ),
]


@pytest.mark.parametrize(
    ("state", "policy", "asked", "apps", "want"),
    [case[1:] for case in KEPT_OFF],
    ids=[case[0] for case in KEPT_OFF],
)
def test_merbridge_is_kept_off_a_pod_of_another_mode(state, policy, asked, apps, want):
    out, meshed = decide(pod(asked, apps=apps), cluster(state), policy)
    assert out.injected and out.mode is not None and out.mode.value == "iptables", out.explanation
    got = annotations_of(meshed)
    assert {key: got.get(key) for key in want} == want
    kept = [line for line in out.explanation if line.startswith("merbridge: kept off the pod")]
    assert bool(kept) is (want[INCLUDE_IN] == "15006" or want[INJECT] == "false"), out.explanation


def test_the_pods_own_inbound_list_is_put_back_when_it_is_injected_again():
    """Kept off Merbridge, a pod's own value of the annotation is replaced, recorded, and back
    once the injection is taken off (a second admission of the meshed pod changes nothing)."""
    own = {**LEGACY, INCLUDE_IN: "8080"}
    snapshot = cluster(READY_ISTIO)
    _, meshed = decide(pod(own), snapshot, ISTIO)
    assert annotations_of(meshed)[INCLUDE_IN] == "15006"
    status = json.loads(annotations_of(meshed)["mesh-injector.io/status"])
    assert status["replaced"]["annotations"][INCLUDE_IN] == "8080"
    # istio-init is rendered from the pod's own list, not ours
    init = next(c for c in meshed["spec"]["initContainers"] if c["name"] == "istio-init")
    assert init["args"][init["args"].index("-b") + 1] == "8080"
    again, _ = decide(meshed, snapshot, ISTIO)
    assert again.patch == []


def test_a_linkerd_pod_whose_rules_skip_sources_does_not_get_ebpf():
    """Linkerd's proxyInit.skipSubnets (or the pod's skip-subnets) leave inbound connections
    from those sources alone; Merbridge cannot, so the pod gets iptables (redirector-unsupported)
    where linkerd-init is told them; never an outbound exclusion."""
    ready = RedirectorState(ready=True, mode="linkerd", cni_mode=True)
    out, meshed = decide(
        pod({"config.linkerd.io/skip-subnets": "10.9.0.0/16"}), cluster(ready, ready), LINKERD
    )
    assert out.mode is not None and out.mode.value == "iptables", out.explanation
    assert out.mode_reason is not None and out.mode_reason.value == "redirector-unsupported"
    init = next(c for c in meshed["spec"]["initContainers"] if c["name"] == "linkerd-init")
    assert init["args"][init["args"].index("--subnets-to-ignore") + 1] == "10.9.0.0/16"
    assert "traffic.sidecar.istio.io/excludeOutboundIPRanges" not in annotations_of(meshed)
    # without it the same pod gets ebpf
    plain, _ = decide(pod(), cluster(ready, ready), LINKERD)
    assert plain.mode is not None and plain.mode.value == "ebpf", plain.explanation
