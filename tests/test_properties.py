"""Property tests over generated pods: the patch always applies, the result is a valid
pod, re-admission is a no-op, and the user's containers only change where documented."""

from __future__ import annotations

import copy

import jsonpatch
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests import pss
from tests.support import GOLDEN, anchored_policy, load_case, validate_k8s
from webhook.admission import admit
from webhook.dataplane import FLAVOURS
from webhook.loading import load_snapshot
from webhook.patch.diff import diff
from webhook.patch.inject import fingerprint, read_status
from webhook.versions import Kernel, KubeVersion, parse_kernel, parse_kube_version

POLICY = anchored_policy()
SNAPSHOTS = {
    name: load_snapshot(policy=POLICY, now=1795780800.0, cluster=str(GOLDEN / "clusters" / f"{name}.yaml"))
    for name in ("mixed", "old")
}
SNAPSHOTS["none"] = load_snapshot(policy=POLICY, now=1795780800.0)

dns = st.from_regex(r"[a-z]([a-z0-9-]{0,10}[a-z0-9])?", fullmatch=True)
label_key = st.one_of(
    dns,
    st.builds(lambda a, b: f"{a}.io/{b}", dns, dns),
    st.just("mesh-injector.io/inject"),
    st.just("sidecar.istio.io/inject"),
)
label_val = st.one_of(st.just("enabled"), st.just("disabled"), dns)
annotation_key = st.sampled_from(
    [
        "mesh-injector.io/interception",
        "mesh-injector.io/iptables-fallback",
        "mesh-injector.io/workload-protocol",
        "mesh-injector.io/throughput",
        "mesh-injector.io/native-sidecar",
        "mesh-injector.io/proxy-cpu-request",
        "mesh-injector.io/proxy-memory-limit",
        "mesh-injector.io/skip-inbound-ports",
        "mesh-injector.io/inject",
        "sidecar.istio.io/inject",
        "linkerd.io/inject",
        "linkerd.io/proxy-version",
        "traffic.sidecar.istio.io/excludeOutboundPorts",
        "traffic.sidecar.istio.io/excludeOutboundIPRanges",
        "config.linkerd.io/skip-inbound-ports",
        "example.com/a~b",
        "team",
    ]
)
annotation_val = st.sampled_from(
    [
        "auto",
        "ebpf",
        "iptables",
        "microvm",
        "true",
        "false",
        "grpc",
        "http",
        "high",
        "200m",
        "1Gi",
        "25,8000-8100",
        "10.0.0.0/8",
        "enabled",
        "disabled",
        "junk",
        "x/y~z",
    ]
)
port = st.fixed_dictionaries(
    {"containerPort": st.integers(1, 65535)},
    optional={"name": st.sampled_from(["http", "grpc", "grpc-api", "http-web", "metrics", "h2c"])},
)
container = st.fixed_dictionaries(
    {"name": dns, "image": st.just("registry.example.com/app:1")},
    optional={
        "ports": st.lists(port, max_size=3, unique_by=lambda p: p["containerPort"]),
        "args": st.lists(dns, max_size=2),
    },
)
toleration = st.one_of(
    st.just({"operator": "Exists"}),
    st.builds(
        lambda v: {"key": "pool", "operator": "Equal", "value": v, "effect": "NoSchedule"},
        st.sampled_from(["legacy", "gpu", "rhel", "odd", "amzn"]),
    ),
)
pod_spec = st.fixed_dictionaries(
    {"containers": st.lists(container, min_size=1, max_size=3, unique_by=lambda c: c["name"])},
    optional={
        "initContainers": st.lists(container, max_size=2, unique_by=lambda c: c["name"]),
        "nodeSelector": st.dictionaries(
            st.sampled_from(["pool", "generation"]),
            st.sampled_from(["general", "legacy", "gpu", "7"]),
            max_size=2,
        ),
        "tolerations": st.lists(toleration, max_size=2),
        "restartPolicy": st.sampled_from(["Always", "Never", "OnFailure"]),
        "hostNetwork": st.booleans(),
        "nodeName": st.sampled_from(["gen-a1", "legacy-1", "missing"]),
    },
)


@st.composite
def pods(draw):
    spec = draw(pod_spec)
    init_names = {c["name"] for c in spec.get("initContainers", [])}
    spec["containers"] = [c for c in spec["containers"] if c["name"] not in init_names] or [
        {"name": "main-app", "image": "x"}
    ]
    meta = {"name": draw(dns)}
    labels = draw(st.dictionaries(label_key, label_val, max_size=3))
    annotations = draw(st.dictionaries(annotation_key, annotation_val, max_size=4))
    if labels:
        meta["labels"] = labels
    if annotations:
        meta["annotations"] = annotations
    return {"apiVersion": "v1", "kind": "Pod", "metadata": meta, "spec": spec}


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    pod=pods(),
    ns=st.sampled_from(["shop", "payments", "default", "quiet", "kube-system"]),
    cluster=st.sampled_from(["mixed", "old", "none"]),
    server=st.sampled_from([None, "1.27", "1.30", "1.32"]),
)
def test_admission_properties(pod, ns, cluster, server):
    snapshot = SNAPSHOTS[cluster]
    if server:
        from webhook.versions import parse_kube_version as pkv

        snapshot = snapshot.derive(server_version=pkv(server))
    original = copy.deepcopy(pod)
    request = {"uid": "u", "operation": "CREATE", "kind": {"kind": "Pod"}, "namespace": ns, "object": pod}
    out = admit(request, snapshot, POLICY)
    assert pod == original
    patched = jsonpatch.apply_patch(original, out.patch)
    assert patched == out.pod
    validate_k8s(patched)
    again = admit({**request, "object": patched}, snapshot, POLICY)
    assert again.patch == []
    # user containers are never modified, only joined by the injector's own
    status = read_status(patched) or {}
    mine = set(status.get("containers", [])) | set(status.get("initContainers", []))
    for key in ("containers", "initContainers"):
        before = [c for c in original["spec"].get(key, [])]
        after = [c for c in patched["spec"].get(key, []) if c["name"] not in mine]
        assert after == before
    if (
        not out.injected
        and out.skip is not None
        and out.skip.value in ("not-opted-in", "pod-disabled", "namespace-disabled")
    ):
        assert out.patch == []


json_values = st.recursive(
    st.one_of(
        st.none(),
        st.booleans(),
        st.integers(min_value=-2, max_value=2),  # 0 and 1 are equal to False and True in Python
        st.floats(min_value=-2, max_value=2).map(round),
        st.sampled_from([0.0, 1.0, 2.5]),
        st.text(max_size=5),
    ),
    lambda children: st.one_of(
        st.lists(children, max_size=4),
        st.dictionaries(st.text(alphabet="ab/~c", max_size=4), children, max_size=4),
    ),
    max_leaves=20,
)


@settings(max_examples=400, deadline=None)
@given(
    a=st.dictionaries(st.text(alphabet="ab/~", max_size=3), json_values, max_size=4),
    b=st.dictionaries(st.text(alphabet="ab/~", max_size=3), json_values, max_size=4),
)
def test_diff_is_a_correct_json_patch(a, b):
    patch = diff(copy.deepcopy(a), b)
    # as JSON, not Python's ==, for which 1, 1.0 and True are one value
    assert as_json(jsonpatch.apply_patch(copy.deepcopy(a), patch)) == as_json(b)
    assert diff(a, a) == []
    assert diff(a, copy.deepcopy(a)) == []


def as_json(value: object) -> bytes:
    return orjson.dumps(value, option=orjson.OPT_SORT_KEYS)


def test_a_value_of_another_json_type_is_replaced_though_python_calls_it_equal():
    assert diff({"a": 1}, {"a": True}) == [{"op": "replace", "path": "/a", "value": True}]
    assert diff({"a": {"b": [1]}}, {"a": {"b": [1.0]}}) == [{"op": "replace", "path": "/a/b/0", "value": 1.0}]
    assert diff({"a": [0, 1]}, {"a": [False, 1]}) == [{"op": "replace", "path": "/a/0", "value": False}]


named_items = st.lists(
    st.fixed_dictionaries(
        {"name": st.sampled_from(["app", "proxy", "init", "x"])},
        optional={"image": st.sampled_from(["a", "b"]), "probe": json_values},
    ),
    max_size=5,
)


@settings(max_examples=400, deadline=None)
@given(a=named_items, b=named_items)
def test_diff_of_named_items_is_a_correct_json_patch(a, b):
    """Items with the same name count as the same item, changed (containers, volumes, env
    vars): whatever lists of them, duplicates included, the patch still gives ``b``."""
    patch = diff(copy.deepcopy({"items": a}), {"items": b})
    assert as_json(jsonpatch.apply_patch(copy.deepcopy({"items": a}), patch)) == as_json({"items": b})


def test_a_container_added_in_front_of_a_changed_one_is_one_add():
    app = {"name": "app", "image": "a", "readinessProbe": {"tcpSocket": {"port": 8080}}}
    changed = {**app, "readinessProbe": {"httpGet": {"path": "/app-health/app/readyz", "port": 15020}}}
    proxy = {"name": "istio-proxy", "image": "p"}
    patch = diff({"containers": [app]}, {"containers": [proxy, changed]})
    assert patch == [
        {"op": "add", "path": "/containers/0", "value": proxy},
        {"op": "remove", "path": "/containers/1/readinessProbe/tcpSocket"},
        {
            "op": "add",
            "path": "/containers/1/readinessProbe/httpGet",
            "value": changed["readinessProbe"]["httpGet"],
        },
    ]


@given(st.one_of(st.text(), st.none(), st.integers(), st.binary()))
def test_version_parsers_never_raise(raw):
    """Whatever a node or the API server reports, the answer is a version or None (unknown),
    never an exception, and only text is read."""
    kernel, version = parse_kernel(raw), parse_kube_version(raw)
    assert kernel is None or (type(kernel) is Kernel and all(type(x) is int and x >= 0 for x in kernel))
    assert version is None or (type(version) is KubeVersion and all(type(x) is int for x in version))
    if not isinstance(raw, str):
        assert kernel is None and version is None


_suffix = st.sampled_from(["", "-45-generic", "+", "-212.873.amzn2.x86_64", "-gke.100", "_custom"])


@given(
    major=st.integers(0, 9999),
    minor=st.integers(0, 9999),
    patch=st.one_of(st.none(), st.integers(0, 999999)),
    suffix=_suffix,
)
def test_kernel_strings_read_as_major_minor_patch(major, minor, patch, suffix):
    text = f"{major}.{minor}" + ("" if patch is None else f".{patch}") + suffix
    assert parse_kernel(text) == Kernel(major, minor, patch or 0)
    assert parse_kernel(text) == (major, minor, patch or 0)  # ordered as numbers, not as text


@given(
    major=st.integers(1, 999),
    minor=st.integers(0, 9999),
    rest=st.sampled_from(["", ".2", ".2-eks-1552ad0", ".12+k3s1", ".0-gke.1"]),
    v=st.booleans(),
)
def test_kube_versions_read_as_major_minor(major, minor, rest, v):
    assert parse_kube_version(f"{'v' if v else ''}{major}.{minor}{rest}") == KubeVersion(major, minor)


owner = st.one_of(
    st.none(),
    st.builds(
        lambda kind, name: {
            "apiVersion": "apps/v1",
            "kind": kind,
            "name": name,
            "uid": name,
            "controller": True,
        },
        st.sampled_from(["ReplicaSet", "StatefulSet", "DaemonSet", "Job"]),
        dns,
    ),
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    pod=pods(),
    ns=st.sampled_from(["shop", "payments", "default", "quiet"]),
    cluster=st.sampled_from(["mixed", "old", "none"]),
    name=dns,
    extra_labels=st.dictionaries(label_key, label_val, max_size=3),
    owner_a=owner,
    owner_b=owner,
)
def test_an_outcome_shared_by_template_equals_a_fresh_decision(
    pod, ns, cluster, name, extra_labels, owner_a, owner_b
):
    """Pods that differ in name, labels and owner may be served the outcome decided for the
    other (the template memo); whatever is served must be what deciding afresh gives."""
    a = copy.deepcopy(pod)
    if owner_a:
        a["metadata"]["ownerReferences"] = [owner_a]
    b = copy.deepcopy(pod)
    b["metadata"]["name"] = name
    if extra_labels:
        b["metadata"]["labels"] = {**b["metadata"].get("labels", {}), **extra_labels}
    if owner_b:
        b["metadata"]["ownerReferences"] = [owner_b]

    def request(obj):
        return {"uid": "u", "operation": "CREATE", "kind": {"kind": "Pod"}, "namespace": ns, "object": obj}

    shared = SNAPSHOTS[cluster].derive()
    admit(request(a), shared, POLICY)
    admit(request(a), shared, POLICY)  # a template is kept from its second pod on
    served = admit(request(b), shared, POLICY)
    fresh = admit(request(b), SNAPSHOTS[cluster].derive(), POLICY)
    assert served == fresh  # patch, warnings, mode and its reason, skip, resources, workload
    assert served.explanation == fresh.explanation
    assert served.pod == fresh.pod


@pytest.mark.parametrize("flavour", list(FLAVOURS))
def test_a_sibling_workload_is_served_from_the_template_memo(flavour):
    """Siblings share one decided template; where the flavour names the workload on the pod
    (Linkerd, Istio) each gets its own name put into the shared patch."""
    policy = anchored_policy(f"proxy: {{flavour: {flavour}, image: proxy:1, initImage: init:1}}")
    snapshot = SNAPSHOTS["mixed"].derive()
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"generateName": "web-a-", "labels": {"app": "web-a"}},
        "spec": {"containers": [{"name": "app", "image": "registry.example.com/app:1"}]},
    }
    sibling = copy.deepcopy(pod)
    sibling["metadata"] = {"generateName": "web-b-", "labels": {"app": "web-b"}}
    for obj, name in ((pod, "web-a"), (sibling, "web-b")):  # pods of two Deployments
        obj["metadata"]["labels"]["pod-template-hash"] = "7d9c8b6f5"
        owner = {"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": f"{name}-7d9c8b6f5"}
        obj["metadata"]["ownerReferences"] = [{**owner, "uid": name, "controller": True}]

    def request(obj):
        return {
            "uid": "u",
            "operation": "CREATE",
            "kind": {"kind": "Pod"},
            "namespace": "shop",
            "object": obj,
        }

    first = admit(request(pod), snapshot, policy)
    assert len(snapshot.templates) == 0  # a template's first pod is decided, not kept
    admit(request(pod), snapshot, policy)  # its second pod keeps it
    served = admit(request(sibling), snapshot, policy)
    assert served.workload is not None and served.workload.name == "web-b"
    assert "pod: shop/web-b- (workload shop/Deployment/web-b)" in served.explanation[1]
    assert jsonpatch.apply_patch(sibling, served.patch) == served.pod
    fresh = admit(request(sibling), SNAPSHOTS["mixed"].derive(), policy)
    assert served.patch == fresh.patch
    # one template for both (Istio reads the app label, which differs: the sibling's own
    # template is seen once, so not kept)
    assert first.injected and len(snapshot.templates) == 1
    assert first.patch == admit(request(pod), SNAPSHOTS["mixed"].derive(), policy).patch
    if flavour == "generic":
        assert served.patch == first.patch
    else:
        text = orjson.dumps(served.patch).decode()
        assert "web-b" in text and "web-a" not in text
        # the name, and the fingerprint of a value taken from the app label, differ
        renamed = orjson.dumps(first.patch).decode().replace("web-a", "web-b")
        assert renamed.replace(fingerprint("web-a"), fingerprint("web-b")) == text


# --- Pod Security: nothing we add breaks the level a namespace enforces --------------------

LEVEL_OF = {"guarded": "baseline", "payments": "restricted", "bogus": "restricted", "shop": "privileged"}
FLAVOURED = {
    (name, cni): anchored_policy(
        f"proxy: {{flavour: {name}, image: reg/p:1, initImage: reg/i:1}}\n"
        f"interception: {{iptables: {{cniInstallsRules: {str(cni).lower()}}}}}"
    )
    for name in FLAVOURS
    for cni in (False, True)
}
pod_security_annotations = st.dictionaries(
    st.sampled_from(["mesh-injector.io/interception", "mesh-injector.io/native-sidecar"]),
    st.sampled_from(["auto", "ebpf", "iptables", "microvm", "true", "false"]),
    max_size=2,
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    pod=pods(),
    annotations=pod_security_annotations,
    ns=st.sampled_from(sorted(LEVEL_OF)),
    flavour=st.sampled_from(list(FLAVOURS)),
    cni=st.booleans(),
    server=st.sampled_from([None, "1.27", "1.32"]),
)
def test_nothing_injected_breaks_the_enforced_pod_security_level(pod, annotations, ns, flavour, cni, server):
    """Checked with tests/pss.py (the published standards, v1.30), not the product's own
    checker: every finding in the meshed pod was already in the pod as its owner wrote it."""
    pod.setdefault("metadata", {}).setdefault("annotations", {}).update(annotations)
    pod["metadata"]["annotations"].pop("mesh-injector.io/inject", None)  # the namespace decides
    snapshot = SNAPSHOTS["mixed"]
    if server:
        snapshot = snapshot.derive(server_version=parse_kube_version(server))
    policy = FLAVOURED[(flavour, cni)]
    request = {"uid": "u", "operation": "CREATE", "kind": {"kind": "Pod"}, "namespace": ns, "object": pod}
    out = admit(request, snapshot, policy)
    patched = jsonpatch.apply_patch(pod, out.patch)
    level = LEVEL_OF[ns]
    assert pss.findings(patched, level) <= pss.findings(pod, level), out.explanation
    if out.injected and level != "privileged":
        added = read_status(patched) or {}
        assert not any(n in ("linkerd-init", "istio-init", "mesh-init") for n in added["initContainers"])


def test_the_oracle_sees_what_an_iptables_init_container_adds():
    """The property above can fail: in a privileged namespace linkerd-init is added, and the
    oracle finds what baseline and restricted would reject."""
    case = load_case(GOLDEN / "cases" / "65-linkerd-iptables-legacy")
    request = case.review["request"]
    patched = jsonpatch.apply_patch(request["object"], admit(request, case.snapshot, case.policy).patch)
    assert ("capabilities", "linkerd-init:NET_ADMIN") in pss.findings(patched, "baseline")
    assert ("capabilities", "linkerd-init:NET_RAW") in pss.findings(patched, "restricted")
    assert not pss.findings(request["object"], "baseline")


def test_pods_of_one_template_under_different_vpas_are_decided_apart():
    """The template memo serves pods of different workloads from one decision; a VPA that
    sizes one workload's proxy and not the other's must keep them apart."""
    snapshot = load_snapshot(policy=POLICY, now=1795780800.0, cluster=str(GOLDEN / "clusters" / "vpa.yaml"))

    def owned(deploy: str) -> dict:
        return {
            "uid": "u",
            "operation": "CREATE",
            "kind": {"kind": "Pod"},
            "namespace": "shop",
            "object": {
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {
                    "generateName": f"{deploy}-5d8f7c9b6-",
                    "labels": {"app": "same", "pod-template-hash": "5d8f7c9b6"},
                    "ownerReferences": [
                        {
                            "apiVersion": "apps/v1",
                            "kind": "ReplicaSet",
                            "name": f"{deploy}-5d8f7c9b6",
                            "uid": "1",
                            "controller": True,
                        }
                    ],
                },
                "spec": {"containers": [{"name": "app", "image": "registry.example.com/app:1"}]},
            },
        }

    shared = snapshot.derive()
    served = {d: admit(owned(d), shared, POLICY) for d in ("checkout", "web", "checkout", "web")}
    for deploy, out in served.items():
        fresh = admit(owned(deploy), snapshot.derive(), POLICY)
        assert out.patch == fresh.patch, deploy
    assert served["checkout"].resources.source.value == "vpa"
    assert served["web"].resources.source.value == "profile"
