"""No pod is ever emitted in a mode whose mechanism is not known to be present on every node
it may land on: a property test over generated clusters (kernels, taints, Merbridge's pods
Ready or not, in either mesh's mode, with or without --cni-mode, the RuntimeClass there or
not) and pods (requested modes, exclusions, sandbox RuntimeClasses, placements, init
containers of their own, a port on Merbridge's in-pod listener).

The judge is written here, independently of the product: the nodes a pod may land on are
worked out from the generated cluster, and Merbridge's own rules (which pods its
controller and CNI plugin take, tests/merbridge_harness.py) decide whether it redirects.
"""

from __future__ import annotations

import copy
import json
from typing import Any

import jsonpatch
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from tests import merbridge_harness as mb
from tests.support import TRUST_ANCHORS, anchored_policy, validate_k8s
from webhook.admission import admit
from webhook.cluster.snapshot import redirector_selector, snapshot_from_objects
from webhook.dataplane import flavour
from webhook.versions import parse_kernel, parse_kube_version

POLICIES = {
    "linkerd": anchored_policy(),
    "istio": anchored_policy("proxy: {flavour: istio}"),
    "generic": anchored_policy("proxy: {flavour: generic, image: reg/proxy:1, initImage: reg/init:1}"),
}
KERNELS = [
    "4.14.355-275.570.amzn2.x86_64",
    "5.4.0-1103-aws",
    "5.10.223-212.873.amzn2.x86_64",
    "6.1.0-18-cloud-amd64",
    "custom",
]
AGENTS = ["none", "ready", "not-ready", "other-mode", "no-cni", "unbound"]
LEVELS = ["privileged", "baseline", "restricted"]

node = st.fixed_dictionaries(
    {
        "kernel": st.sampled_from([*KERNELS, *KERNELS[2:4] * 3]),  # mostly eBPF-capable
        "pool": st.sampled_from(["a", "b"]),
        "tainted": st.booleans(),
        "cordoned": st.sampled_from([False, False, False, True]),
        "agent": st.sampled_from([*AGENTS, *["ready"] * 6]),  # mostly Merbridge Ready
    }
)
cluster = st.fixed_dictionaries(
    {
        "nodes": st.lists(node, min_size=1, max_size=5),
        "runtime_class": st.sampled_from([None, {}, {"pool": "a"}, {"pool": "b"}]),
        "server": st.sampled_from(["1.27", "1.30", "1.32"]),
        "level": st.sampled_from([*LEVELS, "privileged"]),
        "flavour": st.sampled_from(sorted(POLICIES)),
        # half the clusters run Merbridge Ready on modern kernels everywhere but one node,
        # whose state is drawn: the cases where ebpf is right, and the ones a node breaks
        "healthy": st.booleans(),
    }
)
pod = st.fixed_dictionaries(
    {
        "request": st.sampled_from([None, None, "auto", "ebpf", "ebpf", "iptables", "microvm"]),
        "fallback": st.sampled_from([None, "false"]),
        "skip_out": st.sampled_from([None, None, "5432", "5432", "8000-8002", "8000-8100"]),
        "ranges": st.sampled_from([None, None, None, "169.254.169.254/32", "fd00::/8"]),
        "selector": st.sampled_from([None, "a", "b"]),
        "tolerate": st.booleans(),
        "pinned": st.sampled_from([None, 0, 1]),
        "runtime": st.sampled_from([None, None, None, None, "kata-qemu", "gvisor"]),
        "batch": st.sampled_from([False, False, True]),
        # an init container of its own: none, a plain one, one running as Merbridge's proxy
        # uid, a native sidecar of its own
        "init": st.sampled_from([None, None, None, "plain", "as-proxy", "native"]),
        "mb_port": st.sampled_from([False, False, False, False, False, True]),
    }
)


def objects(c: dict[str, Any], mode: str) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = [
        {
            "kind": "Namespace",
            "metadata": {
                "name": "shop",
                "labels": {
                    "mesh-injector.io/inject": "enabled",
                    "pod-security.kubernetes.io/enforce": c["level"],
                },
            },
        },
        {
            "kind": "ConfigMap",
            "metadata": {"name": "linkerd-identity-trust-roots", "namespace": "linkerd"},
            "data": {"ca-bundle.crt": TRUST_ANCHORS},
        },
        {"kind": "RuntimeClass", "metadata": {"name": "gvisor"}, "handler": "runsc"},
    ]
    if c["runtime_class"] is not None:
        rc: dict[str, Any] = {
            "kind": "RuntimeClass",
            "metadata": {"name": "kata-qemu"},
            "handler": "kata-qemu",
        }
        if c["runtime_class"]:
            rc["scheduling"] = {"nodeSelector": c["runtime_class"]}
        out.append(rc)
    selector = redirector_selector(POLICIES[c["flavour"]])
    for i, n in enumerate(c["nodes"]):
        name = f"n{i}"
        spec: dict[str, Any] = {"unschedulable": n["cordoned"]}
        if n["tainted"]:
            spec["taints"] = [{"key": "dedicated", "value": "x", "effect": "NoSchedule"}]
        out.append(
            {
                "kind": "Node",
                "metadata": {"name": name, "labels": {"kubernetes.io/hostname": name, "pool": n["pool"]}},
                "spec": spec,
                "status": {"nodeInfo": {"kernelVersion": n["kernel"], "kubeletVersion": f"v{c['server']}.1"}},
            }
        )
        if n["agent"] == "none":
            continue
        args = [
            "-m",
            "istio"
            if n["agent"] == "other-mode" and mode == "linkerd"
            else ("linkerd" if n["agent"] == "other-mode" else mode),
        ]
        if n["agent"] != "no-cni":
            args.append("--cni-mode")
        ready = "False" if n["agent"] == "not-ready" else "True"
        agent_spec: dict[str, Any] = {"containers": [{"name": "merbridge", "args": args}]}
        if n["agent"] != "unbound":
            agent_spec["nodeName"] = name
        out.append(
            {
                "kind": "Pod",
                "metadata": {
                    "name": f"mb-{name}",
                    "namespace": selector.namespace,
                    "labels": dict(selector.labels),
                },
                "spec": agent_spec,
                "status": {"phase": "Running", "conditions": [{"type": "Ready", "status": ready}]},
            }
        )
    return out


def eligible(c: dict[str, Any], p: dict[str, Any], rc_selector: dict[str, str] | None) -> list[int]:
    """The nodes the pod may land on, from the generated cluster: a pinned node alone;
    else schedulable nodes matching its (and its RuntimeClass's) pool and taints it tolerates."""
    if p["pinned"] is not None:
        return [p["pinned"]] if p["pinned"] < len(c["nodes"]) else []
    out = []
    for i, n in enumerate(c["nodes"]):
        if n["cordoned"] or (n["tainted"] and not p["tolerate"]):
            continue
        if p["selector"] and n["pool"] != p["selector"]:
            continue
        if rc_selector and n["pool"] != rc_selector["pool"]:
            continue
        out.append(i)
    return out


def build_pod(p: dict[str, Any], proxy_uid: int) -> dict[str, Any]:
    annotations = {}
    if p["request"]:
        annotations["mesh-injector.io/interception"] = p["request"]
    if p["fallback"]:
        annotations["mesh-injector.io/iptables-fallback"] = p["fallback"]
    if p["skip_out"]:
        annotations["mesh-injector.io/skip-outbound-ports"] = p["skip_out"]
    if p["ranges"]:
        annotations["traffic.sidecar.istio.io/excludeOutboundIPRanges"] = p["ranges"]
    spec: dict[str, Any] = {
        "containers": [
            {"name": "app", "image": "registry.example.com/app:1", "ports": [{"containerPort": 8080}]}
        ]
    }
    if p["selector"]:
        spec["nodeSelector"] = {"pool": p["selector"]}
    if p["tolerate"]:
        spec["tolerations"] = [{"key": "dedicated", "operator": "Exists", "effect": "NoSchedule"}]
    if p["pinned"] is not None:
        spec["nodeName"] = f"n{p['pinned']}"
    if p["runtime"]:
        spec["runtimeClassName"] = p["runtime"]
    if p["batch"]:
        spec["restartPolicy"] = "Never"
    if p["init"]:
        init: dict[str, Any] = {"name": "setup", "image": "registry.example.com/setup:1"}
        if p["init"] == "as-proxy":
            init["securityContext"] = {"runAsUser": proxy_uid}
        elif p["init"] == "native":
            init["restartPolicy"] = "Always"
        spec["initContainers"] = [init]
    if p["mb_port"]:
        spec["containers"][0]["ports"].append({"containerPort": mb.MARK_PORT})
    meta: dict[str, Any] = {"name": "p", "namespace": "shop"}
    if annotations:
        meta["annotations"] = annotations
    return {"apiVersion": "v1", "kind": "Pod", "metadata": meta, "spec": spec}


def _capable(kernel: str) -> bool:
    k = parse_kernel(kernel)
    return k is not None and k >= (5, 10)


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(c=cluster, p=pod)
def test_no_pod_is_emitted_in_a_mode_whose_mechanism_is_missing(c, p):
    if c["healthy"]:
        for n in c["nodes"][1:]:
            n.update(agent="ready", kernel="6.1.0-18-cloud-amd64", tainted=False)
    plane = flavour(c["flavour"])
    policy = POLICIES[c["flavour"]]
    mode = plane.redirect.mode if plane.redirect else "linkerd"
    snapshot = snapshot_from_objects(
        objects(c, mode),
        server_version=parse_kube_version(c["server"]),
        redirector=redirector_selector(policy),
    )
    # the uid Merbridge never redirects, as it compiles it for the flavour's mesh
    proxy_uid = mb.mesh_constants(mode)["SIDECAR_USER_ID"]
    obj = build_pod(p, proxy_uid)
    request = {"uid": "u", "operation": "CREATE", "kind": {"kind": "Pod"}, "namespace": "shop", "object": obj}
    out = admit(copy.deepcopy(request), snapshot, policy)
    event(f"{c['flavour']}: {out.mode.value if out.mode else out.skip}")
    if not out.injected:
        return
    emitted = jsonpatch.apply_patch(obj, out.patch)
    validate_k8s(emitted)
    assert admit({**request, "object": emitted}, snapshot, policy).patch == []
    spec = emitted["spec"]
    inits = [x["name"] for x in spec.get("initContainers") or []]
    containers = [x["name"] for x in spec["containers"]]
    label = emitted["metadata"]["labels"]["mesh-injector.io/interception"]
    assert label == out.mode.value
    sandboxed = p["runtime"] is not None
    privileged = c["level"] == "privileged"

    if label == "ebpf":
        nodes = eligible(c, p, None)
        assert not sandboxed, "host eBPF cannot reach a sandbox"
        assert plane.redirect is not None, "Merbridge must recognise the proxy"
        assert nodes, "no eligible node: the redirector cannot be known to be there"
        for i in nodes:
            n = c["nodes"][i]
            assert n["agent"] == "ready", (i, n)  # Ready, in the flavour's mode, with --cni-mode
            assert _capable(n["kernel"]), (i, n)
        assert plane.proxy_name in containers and plane.proxy_name not in inits
        assert mb.controller_counts(emitted, plane.redirect.mode) and mb.cni_plugin_handles(emitted)
        annotations = emitted["metadata"]["annotations"]
        config = mb.pod_config(annotations)  # what Merbridge's controller reads back
        wanted_out = annotations.get("traffic.sidecar.istio.io/excludeOutboundPorts", "")
        assert len([x for x in wanted_out.split(",") if x]) <= mb.MAX_ITEMS
        if p["skip_out"] == "5432":
            excluded = [int.from_bytes(config[444 + 2 * i : 446 + 2 * i], "little") for i in range(20)]
            assert 5432 in excluded
        assert ":" not in annotations.get("traffic.sidecar.istio.io/excludeOutboundIPRanges", "")
        # its CNI plugin holds 39807 in the pod, and sends every connection of another uid
        # than the proxy's to the proxy, which starts after the init containers
        assert not p["mb_port"], "a container of the pod listens on Merbridge's port"
        assert p["init"] in (None, "as-proxy", "native"), "an init container runs before the proxy"
    elif label == "microvm":
        assert privileged, "the in-guest init container is refused outside privileged"
        assert plane.init_name in inits, "the rules are installed inside the sandbox"
        runtime = spec.get("runtimeClassName")
        if sandboxed:  # the pod's own class, as it named it (the API server judges that one)
            assert runtime == p["runtime"]
            assert not (runtime == "gvisor" and not plane.rules_in_gvisor)
        else:
            assert (
                runtime == "kata-qemu"
                and c["runtime_class"] is not None
                and runtime in snapshot.runtime_classes
            )
            nodes = eligible(c, p, c["runtime_class"] or None)
            assert nodes and all(_capable(c["nodes"][i]["kernel"]) for i in nodes)
            if (p["request"] or "auto") == "auto":
                assert parse_kube_version(c["server"]) >= (1, 32)
    else:
        assert label == "iptables"
        assert not sandboxed, "host-side rules never reach a sandbox"
        assert privileged, "the init container's NET_ADMIN is refused outside privileged"
        assert plane.init_name in inits
        assert "runtimeClassName" not in spec
        if p["fallback"] == "false":
            assert p["request"] == "iptables", "iptables reached although the pod forbids falling back to it"
        taken = mb.cni_plugin_handles(emitted) and any(
            c["nodes"][i]["agent"] == "ready" for i in eligible(c, p, None)
        )
        if taken and p["init"] == "plain" and plane.proxy_name in containers:
            # Merbridge takes the pod whatever its mode: the init container is refused too
            assert any("setup" in w and "refused" in w for w in out.warnings), out.warnings
    # whatever the mode, nothing of the pod's own was dropped
    assert json.dumps(obj["spec"]["containers"][0]) in json.dumps(spec["containers"])


# --- the iptables backend: never one an eligible node is known to lack --------------------

# (osImage, kubeletVersion, kernelVersion) as nodes report them; None: not reported
PLATFORMS = [
    ("Amazon Linux 2023.8.20250808", "v1.33.3-eks-3a5e3c8", "6.12.37-61.105.amzn2023.x86_64"),
    ("Amazon Linux 2023.7.20250623", "v1.32.5-eks-5d632ec", "6.1.141-155.222.amzn2023.x86_64"),
    ("Bottlerocket OS 1.44.0 (aws-k8s-1.33)", "v1.33.1-eks-b9364f6", "6.12.37"),
    ("Bottlerocket OS 1.39.1 (aws-k8s-1.32)", "v1.32.3-eks-473151a", "6.1.134"),
    ("Bottlerocket OS 1.50.0 (aws-k8s-1.34)", "v1.34.1-eks-113cf36", "6.12.46"),
    ("Ubuntu 24.04.2 LTS", "v1.33.1", "6.8.0-1029-aws"),
    ("CentOS Linux 7 (Core)", "v1.28.15", "3.10.0-1160.119.1.el7.x86_64"),
    (None, "v1.33.1", "6.6.0"),
    ("Amazon Linux 2023.8.20250808", None, "6.12.37-61.105.amzn2023.x86_64"),
]
# what this test's operator says of their CentOS 7 nodes, beside the default policy's rules
NO_NFT_ON_CENTOS = (
    "interception: {iptables: {nodesWithout: ["
    "{backend: legacy, osImage: 'Amazon Linux 2023*', minKubelet: '1.33'}, "
    "{backend: legacy, osImage: 'Bottlerocket OS*', minKubelet: '1.33'}, "
    "{backend: nft, osImage: 'CentOS Linux 7*'}]}}\n"
)


def lacks(platform: tuple[str | None, str | None, str | None], centos_without_nft: bool) -> set[str]:
    """The backends a node's kernel is known to lack, read here from the node's own strings:
    Amazon Linux 2023 and Bottlerocket from Kubernetes 1.33 on have no legacy iptables (the
    facts the README cites), and CentOS 7 none of nft where the operator says so. A node that
    does not say its OS or kubelet is not known to lack anything."""
    image, kubelet, _ = platform
    minor = int(kubelet.split(".")[1]) if kubelet and kubelet.startswith("v1.") else None
    out = set()
    if image and minor is not None and minor >= 33:
        if image.startswith("Amazon Linux 2023") or image.startswith("Bottlerocket OS "):
            out.add("legacy")
    if image and image.startswith("CentOS Linux 7") and centos_without_nft:
        out.add("nft")
    return out


fw_node = st.fixed_dictionaries(
    {
        # every platform, and more often one without legacy and CentOS (together: no backend in common)
        "platform": st.sampled_from([*range(len(PLATFORMS)), 0, 0, 2, 6, 6]),
        "kernel": st.just("6.1.0"),  # not read here: the platform's kernel is the node's
        "pool": st.sampled_from(["a", "b"]),
        "tainted": st.booleans(),
        "cordoned": st.sampled_from([False, False, False, True]),
    }
)
fw_cluster = st.fixed_dictionaries(
    {
        "nodes": st.lists(fw_node, min_size=0, max_size=5),
        "flavour": st.sampled_from([*sorted(POLICIES), "generic"]),
        "firewall": st.sampled_from(["legacy", "nft"]),  # the generic flavour's setting
        "centos_without_nft": st.booleans(),
        "runtime_class": st.sampled_from([None, {}, {"pool": "a"}]),
    }
)
fw_pod = st.fixed_dictionaries(
    {
        "request": st.sampled_from([None, "iptables", "iptables", "microvm"]),
        "fallback": st.just(None),
        "skip_out": st.just(None),
        "ranges": st.just(None),
        "selector": st.sampled_from([None, "a", "b"]),
        "tolerate": st.booleans(),
        "pinned": st.sampled_from([None, None, 0, 2]),
        "runtime": st.sampled_from([None, None, None, "kata-qemu", "gvisor"]),
        "batch": st.just(False),
        "init": st.just(None),  # no init container of the pod's own
        "mb_port": st.just(False),
    }
)


def fw_objects(c: dict[str, Any]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = [
        {"kind": "Namespace", "metadata": {"name": "shop", "labels": {"mesh-injector.io/inject": "enabled"}}},
        {
            "kind": "ConfigMap",
            "metadata": {"name": "linkerd-identity-trust-roots", "namespace": "linkerd"},
            "data": {"ca-bundle.crt": TRUST_ANCHORS},
        },
        {"kind": "RuntimeClass", "metadata": {"name": "gvisor"}, "handler": "runsc"},
    ]
    if c["runtime_class"] is not None:
        rc: dict[str, Any] = {"kind": "RuntimeClass", "metadata": {"name": "kata-qemu"}}
        rc["handler"] = "kata-qemu"
        if c["runtime_class"]:
            rc["scheduling"] = {"nodeSelector": c["runtime_class"]}
        out.append(rc)
    for i, n in enumerate(c["nodes"]):
        image, kubelet, kernel = PLATFORMS[n["platform"]]
        labels = {"kubernetes.io/hostname": f"n{i}", "pool": n["pool"]}
        reported = (("osImage", image), ("kubeletVersion", kubelet), ("kernelVersion", kernel))
        spec: dict[str, Any] = {"unschedulable": n["cordoned"]}
        if n["tainted"]:
            spec["taints"] = [{"key": "dedicated", "value": "x", "effect": "NoSchedule"}]
        out.append(
            {
                "kind": "Node",
                "metadata": {"name": f"n{i}", "labels": labels},
                "spec": spec,
                "status": {"nodeInfo": {k: v for k, v in reported if v}},
            }
        )
    return out


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(c=fw_cluster, p=fw_pod)
def test_no_init_container_gets_a_backend_an_eligible_node_lacks(c, p):
    text = {
        "generic": "proxy: {flavour: generic, image: reg/proxy:1, initImage: reg/init:1, "
        f"generic: {{firewall: {c['firewall']}}}}}\n",
        "istio": "proxy: {flavour: istio}\n",
        "linkerd": "",
    }[c["flavour"]]
    policy = anchored_policy(text + (NO_NFT_ON_CENTOS if c["centos_without_nft"] else ""))
    assert policy.proxy.flavour == c["flavour"]
    snapshot = snapshot_from_objects(fw_objects(c), server_version=parse_kube_version("1.33"))
    plane = flavour(c["flavour"])
    obj = build_pod(p, proxy_uid=0)  # (the uid is only given to a pod's own init container)
    request = {"uid": "u", "operation": "CREATE", "kind": {"kind": "Pod"}, "namespace": "shop", "object": obj}
    out = admit(copy.deepcopy(request), snapshot, policy)
    # what the flavour says its control plane asks for, and what its init container can use
    control = plane.control_plane(snapshot.config_maps, policy)
    usable = {control.firewall, *control.firewalls}

    def node_lacks(i: int) -> set[str]:
        return lacks(PLATFORMS[c["nodes"][i]["platform"]], c["centos_without_nft"])

    nodes = eligible(c, p, None)
    if not out.injected:
        event(f"skip {out.skip}")
        if out.skip is not None and out.skip.value == "no-common-firewall":
            # skipped only where no usable backend is had by every node the pod may land on
            common = usable - set().union(*(node_lacks(i) for i in nodes))
            assert nodes and not common, (common, out.explanation)
        return
    emitted = jsonpatch.apply_patch(obj, out.patch)
    status = json.loads(emitted["metadata"]["annotations"]["mesh-injector.io/status"])
    inits = {x["name"]: x for x in emitted["spec"].get("initContainers") or []}
    event(f"{out.mode.value if out.mode else None}/{status.get('firewall')}")
    if plane.init_name not in inits:
        assert "firewall" not in status  # nothing of ours installs rules: no backend is claimed
        return
    backend = status["firewall"]
    assert backend in usable
    if plane.name == "generic":  # our own mesh-init: the backend is the binary it runs
        assert f"| iptables-{backend}-restore --noflush" in inits["mesh-init"]["command"][-1]
    runtime = emitted["spec"].get("runtimeClassName")
    if runtime == "gvisor":
        assert backend == "legacy", "gVisor's netstack loads legacy rules only"
    elif runtime is not None:
        assert backend == control.firewall, "a VM's guest kernel is not the nodes'"
    else:
        # the rules go through the node's kernel: every node the pod may land on has the
        # backend, and the mesh's setting is left only where a node lacks it
        for i in nodes:
            assert backend not in node_lacks(i), (backend, PLATFORMS[c["nodes"][i]["platform"]])
        if backend != control.firewall:
            assert any(control.firewall in node_lacks(i) for i in nodes), out.explanation
