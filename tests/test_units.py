"""Small, exact checks of the pieces the decision table is built from."""

from __future__ import annotations

import pytest

from tests.support import anchored_policy
from webhook.cluster.snapshot import Node, Taint, build_snapshot
from webhook.decide.nodefacts import kernel_facts
from webhook.decide.scheduling import eligible_nodes
from webhook.decide.sizing import from_observed
from webhook.loading import parse_policy
from webhook.patch.diff import diff, escape
from webhook.policy import PolicyError
from webhook.usage.samples import Sample, parse_samples, summarize, weighted_percentile
from webhook.versions import Kernel, KubeVersion, kube_version_from_info, parse_kernel, parse_kube_version
from webhook.workload import WorkloadKey, workload_key

POLICY = anchored_policy()


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("6.8.0-45-generic", Kernel(6, 8, 0)),
        ("5.15.0-1052-aws", Kernel(5, 15, 0)),
        ("4.19.112+", Kernel(4, 19, 112)),
        ("5.10.223-212.873.amzn2.x86_64", Kernel(5, 10, 223)),
        ("4.18.0-513.el8.x86_64", Kernel(4, 18, 0)),
        ("6.1.0-18-cloud-amd64", Kernel(6, 1, 0)),
        ("5.4", Kernel(5, 4, 0)),
        ("garbage", None),
        ("", None),
        ("6", None),
        ("v6.1.0", Kernel(6, 1, 0)),
        ("5.10.0.1.2", None),
        (None, None),
    ],
)
def test_kernel_strings_as_nodes_report_them(raw, expected):
    assert parse_kernel(raw) == expected


def test_kube_versions():
    assert parse_kube_version("v1.30.2-eks-1552ad0") == KubeVersion(1, 30)
    assert parse_kube_version("1.32") == KubeVersion(1, 32)
    assert kube_version_from_info("1", "29+") == KubeVersion(1, 29)
    assert parse_kube_version("one.two") is None


def node(name, labels=None, taints=(), kernel="6.1.0", kubelet="v1.32.0", cordoned=False):
    return Node(
        name=name,
        labels={"kubernetes.io/hostname": name, **(labels or {})},
        taints=tuple(taints),
        unschedulable=cordoned,
        kernel=kernel,
        kubelet=kubelet,
    )


def test_grouping_and_per_node_terms():
    nodes = [node(f"n{i}", {"zone": "abc"[i % 3]}) for i in range(30)]
    snap = build_snapshot(nodes=nodes)
    assert len(snap.groups) == 3  # hostnames are identity labels, zones group
    spec = {
        "affinity": {
            "nodeAffinity": {
                "requiredDuringSchedulingIgnoredDuringExecution": {
                    "nodeSelectorTerms": [
                        {
                            "matchExpressions": [
                                {"key": "kubernetes.io/hostname", "operator": "In", "values": ["n4", "n5"]}
                            ]
                        },
                        {"matchExpressions": [{"key": "zone", "operator": "In", "values": ["c"]}]},
                    ]
                }
            }
        }
    }
    elig = eligible_nodes(snap, spec)
    assert elig.count == 1 + 10  # n4 (zone b) and zone c's 10 nodes (n5 is one of them)
    assert eligible_nodes(snap, {"nodeSelector": {"kubernetes.io/hostname": "n7"}}).count == 1


def test_taints_and_tolerations():
    snap = build_snapshot(
        nodes=[
            node("a", taints=[Taint("dedicated", "db", "NoSchedule")]),
            node("b", taints=[Taint("spot", "", "PreferNoSchedule")]),
            node("c", taints=[Taint("x", "y", "NoExecute")]),
        ]
    )
    assert eligible_nodes(snap, {}).sample == ("b",)
    tol = {"tolerations": [{"key": "dedicated", "operator": "Equal", "value": "db"}]}
    assert eligible_nodes(snap, tol).count == 2
    wrong_effect = {"tolerations": [{"key": "x", "operator": "Exists", "effect": "NoSchedule"}]}
    assert eligible_nodes(snap, wrong_effect).count == 1
    assert eligible_nodes(snap, {"tolerations": [{"operator": "Exists"}]}).count == 3


def test_empty_or_malformed_affinity_term_matches_nothing():
    snap = build_snapshot(nodes=[node("a")])
    spec = {
        "affinity": {
            "nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [{}]}}
        }
    }
    assert eligible_nodes(snap, spec).count == 0
    gt_junk = {
        "affinity": {
            "nodeAffinity": {
                "requiredDuringSchedulingIgnoredDuringExecution": {
                    "nodeSelectorTerms": [
                        {
                            "matchExpressions": [
                                {"key": "kubernetes.io/hostname", "operator": "Gt", "values": ["1"]}
                            ]
                        }
                    ]
                }
            }
        }
    }
    assert eligible_nodes(snap, gt_junk).count == 0


def test_lowest_kernel_and_unknown():
    snap = build_snapshot(nodes=[node("a", kernel="6.1.0"), node("b", kernel="5.4.0-1103-aws")])
    kf = kernel_facts(eligible_nodes(snap, {}), POLICY.interception)
    assert kf.lowest == Kernel(5, 4, 0) and not kf.ebpf
    snap = build_snapshot(nodes=[node("a", kernel="6.1.0"), node("b", kernel=None)])
    assert kernel_facts(eligible_nodes(snap, {}), POLICY.interception).unknown


def test_workload_keys():
    def pod(owner=None, labels=None, **meta):
        m = dict(meta)
        if owner:
            m["ownerReferences"] = [{"controller": True, **owner}]
        if labels:
            m["labels"] = labels
        return {"metadata": m}

    assert workload_key(
        pod({"kind": "ReplicaSet", "name": "web-7d9c8b6f5"}, {"pod-template-hash": "7d9c8b6f5"}), "ns"
    ) == WorkloadKey("ns", "Deployment", "web")
    assert workload_key(pod({"kind": "ReplicaSet", "name": "bare-rs"}), "ns") == WorkloadKey(
        "ns", "ReplicaSet", "bare-rs"
    )
    assert workload_key(pod({"kind": "Job", "name": "report-29401440"}), "ns") == WorkloadKey(
        "ns", "CronJob", "report"
    )
    assert workload_key(pod({"kind": "Job", "name": "migrate-2"}), "ns") == WorkloadKey(
        "ns", "Job", "migrate-2"
    )
    assert workload_key(pod({"kind": "StatefulSet", "name": "db"}), "ns") == WorkloadKey(
        "ns", "StatefulSet", "db"
    )
    assert workload_key(pod(generateName="debug-"), "ns") == WorkloadKey("ns", "Pod", "debug")


def test_weighted_percentile_by_hand():
    # weights 1,1,1,1 -> p50 is the 2nd smallest; heavy weight on the largest moves p50 to it
    assert weighted_percentile([(1, 1), (2, 1), (3, 1), (4, 1)], 50) == 2
    assert weighted_percentile([(1, 1), (2, 1), (3, 1), (4, 5)], 50) == 4


def test_decayed_formula_by_hand():
    """Two samples: 100m now (weight 1) and 1000m one half-life ago (weight 0.5).

    Total weight 1.5; p90 needs 1.35 -> cumulative weights sorted by value: 100m -> 1.0,
    1000m -> 1.5, so p90 = 1000m. request = 1000m * 1.15 = 1150m. Memory: 100Mi now,
    200Mi a half-life ago -> p95 = 200Mi -> 230Mi; limit = 1.5 * 200Mi = 300Mi.
    """
    now = 1_000_000.0
    day = 86400.0
    samples = [Sample(now, 0.1, 100 * 2**20), Sample(now - day, 1.0, 200 * 2**20)]
    policy = parse_policy("sizing: {minSamples: 2, minSpan: 1h}")
    summary = summarize(samples, policy.sizing, now)
    assert summary is not None and summary.cpu_p == 1.0
    res = from_observed(summary, policy).as_k8s()
    assert res == {"requests": {"cpu": "1150m", "memory": "230Mi"}, "limits": {"memory": "300Mi"}}
    # Three half-lives later the old sample weighs 1/8 of a fresh one: p90 of
    # {100m: 1, 1000m: 0.125} needs 1.0125 -> 1000m still; with 9 fresh samples it drops to 100m.
    fresh = [Sample(now, 0.1, 10 * 2**20)] * 9 + [Sample(now - 3 * day, 1.0, 20 * 2**20)]
    assert summarize(fresh, policy.sizing, now).cpu_p == 0.1


def test_window_and_cpu_limits():
    now = 10_000_000.0
    policy = parse_policy("sizing: {minSamples: 1, minSpan: 0s, cpuLimits: true, window: 1d}")
    samples = [Sample(now - 2 * 86400, 5.0, 1e9), Sample(now - 60, 0.2, 50 * 2**20)]
    summary = summarize(samples, policy.sizing, now)
    assert summary.count == 1  # the 2-day-old sample is outside the window
    res = from_observed(summary, policy).as_k8s()
    assert res["limits"]["cpu"] == "300m" and res["requests"]["cpu"] == "230m"
    assert res["requests"]["memory"] == "58Mi" and res["limits"]["memory"] == "75Mi"


def test_samples_file_formats():
    csv_text = "namespace,workload,timestamp,cpu,memory,oom\nshop,Deployment/web,1700000000,250m,64Mi,true\n"
    jsonl = (
        '{"namespace": "shop", "workload": "Deployment/web", "timestamp": "2023-11-14T22:13:20Z", '
        '"cpu": 0.25, "memory": 67108864, "oom": true}\n'
    )
    assert parse_samples(csv_text) == parse_samples(jsonl)


def test_patch_escaping():
    assert escape("a/b~c") == "a~1b~0c"
    ops = diff({"metadata": {}}, {"metadata": {"labels": {"x/y": "1"}}})
    assert ops == [{"op": "add", "path": "/metadata/labels", "value": {"x/y": "1"}}]
    ops = diff({"metadata": {"labels": {"a": "1"}}}, {"metadata": {"labels": {"a": "1", "x/y~": "2"}}})
    assert ops == [{"op": "add", "path": "/metadata/labels/x~1y~0", "value": "2"}]
    ops = diff({"l": [1, 2, 3]}, {"l": [0, 1, 2, 3]})
    assert ops == [{"op": "add", "path": "/l/0", "value": 0}]


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("injectByDefault: yes-please", "injectByDefault: expected true or false"),
        ("sizing: {window: 7 days}", "sizing.window: '7 days' is not a duration"),
        ("sizing: {floor: {cpu: 3}}", "sizing.floor.cpu is above sizing.cap.cpu"),
        ("profiles: [{name: a, match: {}, requests: {cpu: 1}}]", "both cpu and memory are required"),
        (
            "nativeSidecar: {minVersion: latest}",
            "nativeSidecar.minVersion: 'latest' is not a Kubernetes version",
        ),
        ("- a\n- b", "a policy is a YAML mapping"),
    ],
)
def test_policy_errors_name_the_field(text, needle):
    with pytest.raises(PolicyError, match=None) as err:
        parse_policy(text, "p.yaml")
    assert needle in str(err.value)
    assert str(err.value).startswith("p.yaml: ")


def _brute_force(snapshot, spec):
    """Reference: every node checked on its own, no groups, no index, no memo."""
    from webhook.decide.scheduling import Requirement, Term, _terms, _tolerated, _tolerations

    selector = Term(
        tuple(Requirement(k, "In", (v,)) for k, v in (spec.get("nodeSelector") or {}).items()), ()
    )
    terms = _terms(spec)
    tolerations = _tolerations(spec)
    return sorted(
        n.name
        for n in snapshot.nodes.values()
        if not n.unschedulable
        and _tolerated(n.taints, tolerations)
        and selector.matches_node(n)
        and (terms is None or any(t.matches_node(n) for t in terms))
    )


def _grouped_count(snapshot, spec):
    from webhook.decide.scheduling import _eligible

    elig = _eligible(snapshot, spec)
    return elig.count


from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

_SNAP = build_snapshot(
    nodes=[
        node(
            f"h{i}",
            {"zone": "abc"[i % 3], "pool": ["p", "q", "r", "s"][i % 4], "gen": str(i % 5)},
            taints=[Taint("pool", "s", "NoSchedule")] if i % 4 == 3 else [],
            cordoned=i % 17 == 0,
        )
        for i in range(60)
    ]
)
_req = st.builds(
    lambda key, op, values: {"key": key, "operator": op, "values": values},
    st.sampled_from(["kubernetes.io/hostname", "zone", "pool", "gen"]),
    st.sampled_from(["In", "NotIn", "Exists", "DoesNotExist", "Gt", "Lt"]),
    st.lists(st.sampled_from(["h1", "h2", "h30", "a", "b", "p", "s", "2", "3"]), min_size=1, max_size=3),
)
_field = st.builds(
    lambda op, v: {"key": "metadata.name", "operator": op, "values": v},
    st.sampled_from(["In", "NotIn"]),
    st.lists(st.sampled_from(["h1", "h4", "h9", "x"]), min_size=1),
)
_term = st.fixed_dictionaries(
    {}, optional={"matchExpressions": st.lists(_req, max_size=3), "matchFields": st.lists(_field, max_size=1)}
)


@settings(max_examples=300, deadline=None)
@given(
    selector=st.dictionaries(
        st.sampled_from(["kubernetes.io/hostname", "zone", "pool"]),
        st.sampled_from(["h3", "h8", "a", "c", "p", "s"]),
        max_size=2,
    ),
    terms=st.one_of(st.none(), st.lists(_term, min_size=1, max_size=3)),
    tolerate=st.booleans(),
)
def test_grouped_eligibility_equals_brute_force(selector, terms, tolerate):
    spec = {"nodeSelector": selector}
    if terms is not None:
        spec["affinity"] = {
            "nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": terms}}
        }
    if tolerate:
        spec["tolerations"] = [{"key": "pool", "operator": "Equal", "value": "s", "effect": "NoSchedule"}]
    assert _grouped_count(_SNAP, spec) == len(_brute_force(_SNAP, spec))


def test_outcome_memo_is_keyed_by_everything_it_depends_on():
    from webhook.admission import admit

    snap = build_snapshot(
        nodes=[node("a")],
        namespaces={"on": {"mesh-injector.io/inject": "enabled"}},
        server_version=KubeVersion(1, 32),
    )
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"generateName": "web-"},
        "spec": {"containers": [{"name": "c", "image": "i"}]},
    }

    def req(uid, ns):
        return {"uid": uid, "operation": "CREATE", "kind": {"kind": "Pod"}, "namespace": ns, "object": pod}

    first = admit(req("u1", "on"), snap, POLICY)
    again = admit(req("u2", "on"), snap, POLICY)
    assert first.injected and again.patch == first.patch
    assert not admit(req("u3", "off"), snap, POLICY).injected  # other namespace, other answer
    by_default = anchored_policy("injectByDefault: true")
    assert admit(req("u4", "off"), snap, by_default).injected  # other policy, other answer
    assert admit({**req("u5", "on"), "operation": "UPDATE"}, snap, POLICY).patch == []


def test_pod_security_levels_from_namespace_labels():
    from webhook.podsecurity import namespace_levels

    none = namespace_levels({}, "baseline")
    assert none.enforce == "baseline" and "podSecurity.defaultLevel" in none.source
    assert none.enforce_version == "latest" and none.warn is None
    bogus = namespace_levels({"pod-security.kubernetes.io/enforce": "strict"}, "privileged")
    assert bogus.enforce == "restricted" and "'strict' is not a level" in bogus.source
    full = namespace_levels(
        {
            "pod-security.kubernetes.io/enforce": "baseline",
            "pod-security.kubernetes.io/enforce-version": "v1.29",
            "pod-security.kubernetes.io/warn": "restricted",
            "pod-security.kubernetes.io/audit": "baseline",
        },
        "privileged",
    )
    assert (full.enforce, full.enforce_version, full.warn, full.audit) == (
        "baseline",
        "v1.29",
        "restricted",
        "baseline",
    )


def test_pod_security_controls_on_added_containers():
    from webhook.podsecurity import check_added

    init = {
        "name": "linkerd-init",
        "securityContext": {"capabilities": {"add": ["NET_ADMIN", "NET_RAW"]}, "runAsUser": 0},
    }
    pod = {
        "spec": {
            "initContainers": [init],
            "containers": [{"name": "app"}],
            "volumes": [{"name": "h", "hostPath": {"path": "/"}}],
        }
    }
    base = [str(v) for v in check_added(pod, ["linkerd-init"], ["h"], "baseline")]
    assert base == [
        "container linkerd-init: capabilities (adds NET_ADMIN, NET_RAW)",
        "volume h: hostPath volumes (hostPath)",
    ]
    strict = {v.control for v in check_added(pod, ["linkerd-init"], [], "restricted")}
    assert {"privilege escalation", "running as non-root", "running as non-root user", "seccomp"} <= strict
    assert check_added(pod, ["linkerd-init"], ["h"], "privileged") == []
    assert check_added(pod, ["app"], [], "baseline") == []  # only what is named is judged
    # pod-level settings count where the standard lets them
    pod["spec"]["securityContext"] = {"runAsNonRoot": True, "seccompProfile": {"type": "RuntimeDefault"}}
    ok = {
        "name": "p",
        "securityContext": {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}},
    }
    pod["spec"]["containers"].append(ok)
    assert check_added(pod, ["p"], [], "restricted") == []


def test_other_mesh_exclusions_are_parsed_and_bad_ones_reported():
    from webhook.dataplane.others import exclusions, opt_out, owner

    found = exclusions(
        {
            "traffic.sidecar.istio.io/excludeOutboundPorts": "5432, 6379",
            "config.linkerd.io/skip-outbound-ports": "25,8000-8100",
            "traffic.sidecar.istio.io/excludeOutboundIPRanges": "169.254.169.254/32,10.0.0.1/8",
            "config.linkerd.io/skip-inbound-ports": "not-a-port",
            "config.linkerd.io/skip-subnets": "192.168.10.0/24",
        }
    )
    assert found.outbound == ((25, 25), (5432, 5432), (6379, 6379), (8000, 8100))
    assert found.cidrs == ("169.254.169.254/32", "10.0.0.0/8")
    # Linkerd's skip-subnets are inbound sources (proxy-init's --subnets-to-ignore), never destinations
    assert found.sources == ("192.168.10.0/24",)
    assert found.inbound == () and len(found.problems) == 1 and "skip-inbound-ports" in found.problems[0]
    assert opt_out({"sidecar.istio.io/inject": "False"}, {}) == 'label sidecar.istio.io/inject: "false"'
    assert opt_out({}, {"linkerd.io/inject": "enabled"}) is None
    assert owner({"spec": {"containers": [{"name": "istio-proxy"}]}}) == ("Istio", "istio-proxy container")
    assert owner({"metadata": {"annotations": {"linkerd.io/proxy-version": "x"}}, "spec": {}}) == (
        "Linkerd",
        "linkerd.io/proxy-version annotation",
    )


def _merbridge_node(cni: bool = True) -> list[dict]:
    """One modern node (kubelet 1.32) where Merbridge for Linkerd runs Ready."""
    args = ["-m", "linkerd", *(["--cni-mode"] if cni else [])]
    return [
        {
            "kind": "Node",
            "metadata": {"name": "n1", "labels": {"kubernetes.io/hostname": "n1"}},
            "status": {"nodeInfo": {"kernelVersion": "6.8.0-45-generic", "kubeletVersion": "v1.32.2"}},
        },
        {"kind": "Namespace", "metadata": {"name": "shop", "labels": {"mesh-injector.io/inject": "enabled"}}},
        {
            "kind": "Pod",
            "metadata": {"name": "merbridge-1", "namespace": "linkerd", "labels": {"app": "merbridge"}},
            "spec": {"nodeName": "n1", "containers": [{"name": "merbridge", "args": args}]},
            "status": {"phase": "Running", "conditions": [{"type": "Ready", "status": "True"}]},
        },
    ]


WAIT = {"name": "wait", "image": "tools:1"}
APP = {"name": "app", "image": "app:1"}


@pytest.mark.parametrize(
    ("spec", "annotations", "policy", "cni", "expected"),
    [
        ({"containers": [APP]}, {}, "", True, ("ebpf", "ebpf-capable")),
        (
            {"initContainers": [WAIT], "containers": [APP]},
            {},
            "",
            True,
            ("iptables", "init-containers-before-proxy"),
        ),
        # the pod's own uid is the init container's too: the proxy's, which Merbridge leaves alone
        (
            {"securityContext": {"runAsUser": 2102}, "initContainers": [WAIT], "containers": [APP]},
            {},
            "",
            True,
            ("ebpf", "ebpf-capable"),
        ),
        # its own uid wins over the pod's
        (
            {
                "securityContext": {"runAsUser": 2102},
                "initContainers": [{**WAIT, "securityContext": {"runAsUser": 1000}}],
                "containers": [APP],
            },
            {},
            "",
            True,
            ("iptables", "init-containers-before-proxy"),
        ),
        # without CNI mode nothing is opened in the pod: the init container's first connect
        # finds no proxy listening and is left alone
        (
            {"initContainers": [WAIT], "containers": [APP]},
            {},
            "interception: {ebpf: {redirector: {requireCniMode: false}}}",
            False,
            ("ebpf", "ebpf-capable"),
        ),
        # asked for by annotation: falls back, with the reason in the warning
        (
            {"initContainers": [WAIT], "containers": [APP]},
            {"mesh-injector.io/interception": "ebpf"},
            "",
            True,
            ("iptables", "fallback"),
        ),
        (
            {"containers": [{**APP, "readinessProbe": {"tcpSocket": {"port": 39807}}}]},
            {},
            "",
            True,
            ("iptables", "redirector-port-conflict"),
        ),
        (
            {"initContainers": [{**WAIT, "ports": [{"containerPort": 39807}]}], "containers": [APP]},
            {},
            "interception: {ebpf: {allowInitContainers: true}}",
            True,
            ("iptables", "redirector-port-conflict"),
        ),
        # a probe that names its port refers to a declared containerPort, which is judged itself
        (
            {"containers": [{**APP, "readinessProbe": {"httpGet": {"port": "http"}}}]},
            {},
            "",
            True,
            ("ebpf", "ebpf-capable"),
        ),
        (
            {"containers": [APP]},
            {},
            "interception: {ebpf: {enabled: false}}",
            True,
            ("iptables", "ebpf-disabled"),
        ),
    ],
)
def test_which_pods_ebpf_refuses(spec, annotations, policy, cni, expected):
    from webhook.admission import admit
    from webhook.cluster.snapshot import redirector_selector, snapshot_from_objects

    chosen = anchored_policy(policy)
    snapshot = snapshot_from_objects(
        _merbridge_node(cni), server_version=KubeVersion(1, 32), redirector=redirector_selector(chosen)
    )
    pod = {"metadata": {"name": "p", "namespace": "shop", "annotations": annotations}, "spec": spec}
    out = admit(
        {"uid": "u", "operation": "CREATE", "kind": {"kind": "Pod"}, "namespace": "shop", "object": pod},
        snapshot,
        chosen,
    )
    assert out.injected and out.mode is not None, out.explanation
    assert (out.mode.value, out.mode_reason.value if out.mode_reason else None) == expected, out.explanation
    warned = [w for w in out.warnings if "ebpf" in w]
    if expected[1] in ("init-containers-before-proxy", "fallback"):
        assert len(warned) == 1 and "init container wait runs before the proxy" in warned[0], out.warnings
    elif expected[1] == "redirector-port-conflict":
        assert len(warned) == 1 and "39807" in warned[0], out.warnings
    else:
        assert warned == [], out.warnings
