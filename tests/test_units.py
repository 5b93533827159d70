"""Small, exact checks of the pieces the decision table is built from."""

from __future__ import annotations

import json
import re

import pytest
import yaml

from tests.support import anchored_policy
from webhook.cluster.snapshot import Node, RuntimeClass, Taint, build_snapshot
from webhook.decide.nodefacts import kernel_facts
from webhook.decide.scheduling import eligible_nodes
from webhook.decide.sizing import enough_samples, from_observed
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


@pytest.mark.parametrize(
    ("option", "server", "kubelets", "native", "warned"),
    [
        # auto: native where the API server and every eligible kubelet are at least 1.29
        ("auto", (1, 32), ["v1.32.2", "v1.29.0"], True, False),
        ("auto", (1, 32), ["v1.32.2", "v1.28.15-eks-aeac579"], False, False),
        # an API server below 1.29 drops restartPolicy from an init container, whatever the
        # kubelets say (a --server-version given by hand may be older than the nodes)
        ("auto", (1, 28), ["v1.32.2"], False, False),
        ("auto", None, ["v1.32.2"], False, False),  # the server's version unknown
        ("auto", (1, 32), [], False, False),  # no eligible node: their kubelets are unknown
        ("auto", (1, 32), ["unknown"], False, False),
        # "true" forces native unless the cluster is known to be older (then a warning)
        ("true", (1, 28), ["v1.28.15"], False, True),
        ("true", None, ["v1.27.1"], True, False),
        ("false", (1, 32), ["v1.32.2"], False, False),
    ],
)
def test_native_sidecar_placement_by_hand(option, server, kubelets, native, warned):
    from webhook.core import Notes
    from webhook.decide.placement import native_placement

    nodes = [node(f"n{i}", kubelet=k) for i, k in enumerate(kubelets)]
    elig = eligible_nodes(build_snapshot(nodes=nodes), {})
    notes = Notes()
    version = KubeVersion(*server) if server else None
    assert native_placement(option, version, elig, POLICY, notes)[0] is native
    assert bool(notes.warnings) is warned


@pytest.mark.parametrize(
    ("kernel", "ebpf"),
    [
        ("5.10.0", True),  # interception.ebpf.minKernel itself is enough
        ("5.10", True),
        ("5.9.255-custom", False),
        ("6.1.0-18-cloud-amd64", True),
        ("4.19.112+", False),
    ],
)
def test_the_minimum_kernel_by_hand(kernel, ebpf):
    kf = kernel_facts(
        eligible_nodes(build_snapshot(nodes=[node("a", kernel=kernel)]), {}), POLICY.interception
    )
    assert kf.ebpf is ebpf and not kf.unknown


@pytest.mark.parametrize(
    ("runtime_class", "classes", "sandbox"),
    [
        # a RuntimeClass is a sandbox by its handler (the policy's sandboxHandlers), whatever it is called
        ("secure", [RuntimeClass("secure", "kata-qemu")], ("kata-qemu", False)),
        ("kata-lookalike", [RuntimeClass("kata-lookalike", "runc")], None),
        ("isolated", [RuntimeClass("isolated", "runsc")], ("runsc", True)),
        # a class not in the cluster state is judged by its name
        ("gvisor-fast", [], (None, True)),
        ("plain", [], None),
    ],
)
def test_a_sandbox_is_known_by_its_handler(runtime_class, classes, sandbox):
    from webhook.modes.base import sandbox_of

    snap = build_snapshot(runtime_classes=classes)
    found = sandbox_of({"spec": {"runtimeClassName": runtime_class}}, snap, POLICY)
    assert (None if found is None else (found.handler, found.gvisor)) == sandbox


@pytest.mark.parametrize(
    ("namespace", "protocol", "mode", "reason"),
    [
        # the auto table's microvm row: high-throughput gRPC, the RuntimeClass there, a 1.32
        # cluster, and a namespace that admits the in-guest init container (privileged)
        ("shop", "grpc", "microvm", "high-throughput-grpc"),
        ("shop", "http", "ebpf", "ebpf-capable"),  # high-throughput http: not that row
        ("guarded", "grpc", "ebpf", "ebpf-capable"),  # baseline refuses it: the next row that holds
        ("payments", "grpc", "ebpf", "ebpf-capable"),  # restricted too
    ],
)
def test_auto_gives_microvm_to_high_throughput_grpc_where_the_namespace_admits_it(
    namespace, protocol, mode, reason
):
    from tests.support import GOLDEN
    from webhook.admission import admit
    from webhook.loading import load_snapshot

    snap = load_snapshot(policy=POLICY, now=1795780800.0, cluster=str(GOLDEN / "clusters" / "mixed.yaml"))
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "namespace": namespace,
            "name": "stream",
            "annotations": {
                "mesh-injector.io/throughput": "high",
                "mesh-injector.io/workload-protocol": protocol,
            },
        },
        "spec": {
            "securityContext": {"runAsNonRoot": True, "seccompProfile": {"type": "RuntimeDefault"}},
            "containers": [{"name": "app", "image": "registry.example.com/app:1.0"}],
        },
    }
    request = {
        "uid": "u",
        "operation": "CREATE",
        "kind": {"kind": "Pod"},
        "namespace": namespace,
        "object": pod,
    }
    out = admit(request, snap, POLICY)
    assert out.injected, out.explanation
    assert (out.mode.value, out.mode_reason.value) == (mode, reason)


@pytest.mark.parametrize(
    ("annotations", "reason", "warned"),
    [
        ({"mesh-injector.io/interception": "microvm"}, "fallback", True),
        (
            {"mesh-injector.io/throughput": "high", "mesh-injector.io/workload-protocol": "grpc"},
            "ebpf-capable",
            False,
        ),
    ],
)
def test_a_pod_on_a_runtime_of_its_own_is_not_given_microvm(annotations, reason, warned, tmp_path):
    """A pod naming a RuntimeClass that is not a sandbox (runc here) keeps it: microvm would
    either override the pod's choice or label a pod on the host microvm. So ebpf, the next
    mode where it is backed."""
    import jsonpatch

    from tests.support import GOLDEN
    from webhook.admission import admit
    from webhook.loading import load_snapshot

    cluster = yaml.safe_load((GOLDEN / "clusters" / "mixed.yaml").read_text())
    fast = {
        "apiVersion": "node.k8s.io/v1",
        "kind": "RuntimeClass",
        "metadata": {"name": "fast"},
        "handler": "runc",
    }
    cluster["items"].append(fast)
    (tmp_path / "cluster.yaml").write_text(yaml.safe_dump(cluster))
    snap = load_snapshot(policy=POLICY, now=1795780800.0, cluster=str(tmp_path / "cluster.yaml"))
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"namespace": "shop", "name": "p", "annotations": annotations},
        "spec": {
            "runtimeClassName": "fast",
            "containers": [{"name": "app", "image": "registry.example.com/app:1"}],
        },
    }
    request = {"uid": "u", "operation": "CREATE", "kind": {"kind": "Pod"}, "namespace": "shop", "object": pod}
    out = admit(request, snap, POLICY)
    assert (out.mode.value, out.mode_reason.value) == ("ebpf", reason), out.explanation
    assert any("RuntimeClass fast (handler runc), not a VM sandbox" in w for w in out.warnings) is warned
    assert jsonpatch.apply_patch(pod, out.patch)["spec"]["runtimeClassName"] == "fast"


@pytest.mark.parametrize("own", [None, "vm"])
def test_only_a_runtime_class_we_set_is_claimed_as_ours(own, tmp_path):
    """The policy's RuntimeClass ``vm`` (a VM runtime not among the sandbox handlers): set by
    us, the status claims it (re-injection may take it back); written by the user, it is the
    user's and never claimed."""
    from tests.support import GOLDEN
    from webhook.admission import admit
    from webhook.loading import load_snapshot

    policy = anchored_policy("interception: {microvm: {runtimeClass: vm}}")
    cluster = yaml.safe_load((GOLDEN / "clusters" / "mixed.yaml").read_text())
    cluster["items"].append(
        {
            "apiVersion": "node.k8s.io/v1",
            "kind": "RuntimeClass",
            "metadata": {"name": "vm"},
            "handler": "qemu-plain",
        }
    )
    (tmp_path / "cluster.yaml").write_text(yaml.safe_dump(cluster))
    snap = load_snapshot(policy=policy, now=1795780800.0, cluster=str(tmp_path / "cluster.yaml"))
    spec = {"containers": [{"name": "app", "image": "registry.example.com/app:1"}]}
    if own:
        spec["runtimeClassName"] = own
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "namespace": "shop",
            "name": "p",
            "annotations": {"mesh-injector.io/interception": "microvm"},
        },
        "spec": spec,
    }
    request = {"uid": "u", "operation": "CREATE", "kind": {"kind": "Pod"}, "namespace": "shop", "object": pod}
    out = admit(request, snap, policy)
    assert (out.mode.value, out.mode_reason.value) == ("microvm", "annotation"), out.explanation
    status = json.loads(out.pod["metadata"]["annotations"]["mesh-injector.io/status"])
    assert out.pod["spec"]["runtimeClassName"] == "vm"
    assert status.get("runtimeClassName") == (None if own else "vm")


@pytest.mark.parametrize(
    ("got", "want", "covered"),
    [
        ({"name": "p", "image": "i"}, {"name": "p", "image": "i"}, True),
        # what the API server defaults may be added ...
        (
            {"name": "p", "imagePullPolicy": "IfNotPresent", "terminationMessagePath": "/dev/x"},
            {"name": "p"},
            True,
        ),
        ({"httpGet": {"port": 1, "scheme": "HTTP"}, "timeoutSeconds": 1}, {"httpGet": {"port": 1}}, True),
        # ... nothing else, at any depth, and nothing may be missing or changed
        ({"name": "p", "tty": True}, {"name": "p"}, False),
        ({"httpGet": {"port": 1, "host": "x"}}, {"httpGet": {"port": 1}}, False),
        ({"name": "p"}, {"name": "p", "image": "i"}, False),
        ({"name": "p", "image": "j"}, {"name": "p", "image": "i"}, False),
        ({"args": ["a"]}, {"args": ["a", "b"]}, False),
    ],
)
def test_a_stored_item_is_ours_with_only_the_api_servers_defaults_added(got, want, covered):
    from webhook.patch.inject import covers

    assert covers(got, want) is covered


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


@pytest.mark.parametrize(
    ("kind", "name", "rs_owner", "expected"),
    [
        # kube_replicaset_owner says whose ReplicaSet it is
        ("ReplicaSet", "web-7d9f8b6c5d", {("shop", "web-7d9f8b6c5d"): "web"}, ("Deployment", "web")),
        # no kube_replicaset_owner series: a pod-template-hash suffix is recognised
        ("ReplicaSet", "api-58bc9d7f6", {}, ("Deployment", "api")),
        ("ReplicaSet", "bare", {}, ("ReplicaSet", "bare")),
        ("StatefulSet", "db", {}, ("StatefulSet", "db")),
        # a Job named <name>-<8+ digits> is its CronJob's; another Job is itself
        ("Job", "report-29401440", {}, ("CronJob", "report")),
        ("Job", "migrate-2", {}, ("Job", "migrate-2")),
        # owner <none> (or none at all): the pod itself, by its full name
        ("<none>", "<none>", {}, ("Pod", "the-pod-x1")),
        ("", "", {}, ("Pod", "the-pod-x1")),
    ],
)
def test_prometheus_pods_are_joined_to_workloads_by_the_workload_key_rules(kind, name, rs_owner, expected):
    from webhook.usage.prometheus import PrometheusUsage

    got = PrometheusUsage._workload("shop", "the-pod-x1", kind, name, rs_owner)
    assert got == WorkloadKey("shop", *expected)


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


MI = 2**20
DAY = 86400.0
NOW = 1_000_000.0


def sized(samples: list[Sample], policy_text: str = "") -> dict:
    policy = parse_policy("sizing:\n  minSamples: 1\n  minSpan: 0s\n" + policy_text)
    summary = summarize(samples, policy.sizing, NOW)
    assert summary is not None
    return from_observed(summary, policy).as_k8s()


def test_sizing_by_hand_decay_percentiles_and_the_limit_from_the_maximum():
    """Weights 0.5^(age / 24h): 8 samples now weigh 1 each, 2 from two days ago 1/4 each,
    1 from six days ago 1/64. Total 8.515625.

    CPU sorted: 100m (8), 300m (1/64), 500m (1/2). p90 needs 7.664: 100m already holds 8,
    so p90 = 100m; request 100m x 1.15 = 115m. (Unweighted, p90 would be 500m.)
    Memory sorted: 100Mi (8), 120Mi (1/2), 400Mi (1/64). p95 needs 8.090: 100Mi holds 8,
    120Mi brings 8.5, so p95 = 120Mi; request 138Mi. The limit is 1.5 x the maximum
    observed, 400Mi: 600Mi (1.5 x the percentile would be 180Mi).
    """
    samples = (
        [Sample(NOW, 0.1, 100 * MI)] * 8
        + [Sample(NOW - 2 * DAY, 0.5, 120 * MI)] * 2
        + [Sample(NOW - 6 * DAY, 0.3, 400 * MI)]
    )
    assert sized(samples) == {"requests": {"cpu": "115m", "memory": "138Mi"}, "limits": {"memory": "600Mi"}}
    # with CPU limits: 1.5 x the CPU maximum 500m
    assert sized(samples, "  cpuLimits: true")["limits"] == {"cpu": "750m", "memory": "600Mi"}
    # a half-life of 48h: weights 1, 1/2, 1/8 (total 9.125); p90 needs 8.2125 > 8 -> 500m
    # (memory: p95 needs 8.669 > 8 -> 120Mi at 9.0)
    assert sized(samples, "  halfLife: 48h")["requests"] == {"cpu": "575m", "memory": "138Mi"}
    # outside a 5-day window the 6-day-old sample is gone: the memory maximum is 120Mi
    assert sized(samples, "  window: 5d")["limits"] == {"memory": "180Mi"}


@pytest.mark.parametrize(
    ("samples", "policy", "expected"),
    [
        # 87.1m x 1.15 = 100.165m -> 101m; (50Mi + 1000 B) x 1.15 = 57.501Mi -> 58Mi;
        # 1.5 x (50Mi + 1000 B) = 75.001Mi -> 76Mi: rounded up, never down
        (
            [Sample(NOW, 0.0871, 50 * MI + 1000)],
            "",
            {"requests": {"cpu": "101m", "memory": "58Mi"}, "limits": {"memory": "76Mi"}},
        ),
        # an OOM kill an hour ago: limit 1.5 x 100Mi = 150Mi -> max(150 x 1.2 = 180, 150 + 100) = 250Mi
        (
            [Sample(NOW - 3600, 0.1, 100 * MI, oom=True), Sample(NOW, 0.1, 100 * MI)],
            "",
            {"requests": {"cpu": "115m", "memory": "115Mi"}, "limits": {"memory": "250Mi"}},
        ),
        # ... 1.5 x 600Mi = 900Mi -> max(1080, 1000) = 1080Mi: the factor wins above 500Mi
        (
            [Sample(NOW - 3600, 0.1, 600 * MI, oom=True)],
            "",
            {"requests": {"cpu": "115m", "memory": "690Mi"}, "limits": {"memory": "1080Mi"}},
        ),
        # an OOM kill 25 hours ago is outside oomLookback (24h): no bump
        (
            [Sample(NOW - 25 * 3600, 0.1, 100 * MI, oom=True), Sample(NOW, 0.1, 100 * MI)],
            "",
            {"requests": {"cpu": "115m", "memory": "115Mi"}, "limits": {"memory": "150Mi"}},
        ),
        # the floor (10m, 32Mi): 2m x 1.15 -> 10m; 10Mi x 1.15 -> 32Mi; limit 15Mi -> 32Mi
        (
            [Sample(NOW, 0.002, 10 * MI)],
            "",
            {"requests": {"cpu": "10m", "memory": "32Mi"}, "limits": {"memory": "32Mi"}},
        ),
        # the cap (2 cores, 2Gi): 3 x 1.15 -> 2; 3Gi x 1.15 -> 2Gi; limit 4.5Gi -> 2Gi
        (
            [Sample(NOW, 3.0, 3 * 1024 * MI)],
            "  cpuLimits: true",
            {"requests": {"cpu": "2", "memory": "2Gi"}, "limits": {"cpu": "2", "memory": "2Gi"}},
        ),
        # a limit is never below its request: limitFactor 1 gives 100m and 100Mi limits under
        # requests of 115m and 115Mi, so they are raised to them
        (
            [Sample(NOW, 0.1, 100 * MI)],
            "  cpuLimits: true\n  limitFactor: 1",
            {"requests": {"cpu": "115m", "memory": "115Mi"}, "limits": {"cpu": "115m", "memory": "115Mi"}},
        ),
        # another margin: 200m x 1.5 = 300m, 100Mi x 1.5 = 150Mi
        (
            [Sample(NOW, 0.2, 100 * MI)],
            "  margin: 0.5",
            {"requests": {"cpu": "300m", "memory": "150Mi"}, "limits": {"memory": "150Mi"}},
        ),
        # other percentiles: of 1..10 (equal weights), p50 is 5 and p100 is 10
        (
            [Sample(NOW, i / 100, i * 10 * MI) for i in range(1, 11)],
            "  cpuPercentile: 50\n  memoryPercentile: 100\n  margin: 0",
            {"requests": {"cpu": "50m", "memory": "100Mi"}, "limits": {"memory": "150Mi"}},
        ),
    ],
    ids=[
        "round-up",
        "oom-plus-100Mi",
        "oom-times-1.2",
        "oom-too-old",
        "floor",
        "cap",
        "limit-not-below-request",
        "margin",
        "percentiles",
    ],
)
def test_sizing_by_hand(samples, policy, expected):
    assert sized(samples, policy) == expected


def test_too_few_samples_or_too_short_a_span_is_not_enough():
    policy = parse_policy("sizing: {minSamples: 20, minSpan: 6h}")

    def enough(count: int, span: float) -> bool:
        step = span / (count - 1)
        samples = [Sample(NOW - i * step, 0.1, 64 * MI) for i in range(count)]
        return enough_samples(summarize(samples, policy.sizing, NOW), policy)

    assert enough(20, 6 * 3600)
    assert not enough(19, 6 * 3600)  # one sample short
    assert not enough(20, 6 * 3600 - 60)  # a minute short
    assert enough_samples(None, policy) is False


@pytest.mark.parametrize(
    ("annotations", "expected"),
    [
        # the default profile is 50m / 64Mi, memory limit 256Mi
        ({}, {"requests": {"cpu": "50m", "memory": "64Mi"}, "limits": {"memory": "256Mi"}}),
        # requests above the profile's limit: the limit is raised to them
        (
            {"proxy-cpu-request": "300m", "proxy-memory-request": "512Mi", "proxy-cpu-limit": "1"},
            {"requests": {"cpu": "300m", "memory": "512Mi"}, "limits": {"cpu": "1", "memory": "512Mi"}},
        ),
        # only a limit, below the profile's request: the request is lowered to it
        (
            {"proxy-memory-limit": "50Mi"},
            {"requests": {"cpu": "50m", "memory": "50Mi"}, "limits": {"memory": "50Mi"}},
        ),
        (
            {"proxy-cpu-limit": "20m"},
            {"requests": {"cpu": "20m", "memory": "64Mi"}, "limits": {"cpu": "20m", "memory": "256Mi"}},
        ),
        # annotations are not clamped to the policy's floor (32Mi) or cap
        (
            {"proxy-memory-request": "1Mi"},
            {"requests": {"cpu": "50m", "memory": "1Mi"}, "limits": {"memory": "256Mi"}},
        ),
        # a value that is not a quantity is ignored (and named in a warning)
        (
            {"proxy-memory-limit": "lots"},
            {"requests": {"cpu": "50m", "memory": "64Mi"}, "limits": {"memory": "256Mi"}},
        ),
    ],
)
def test_resource_annotations_by_hand(annotations, expected):
    from webhook.decide.sizing import annotation_overrides, apply_overrides, from_profile

    default = next(p for p in POLICY.profiles if p.name == "default")
    base = from_profile((default.requests, default.limits), "default", "test")
    values, problems = annotation_overrides({f"mesh-injector.io/{k}": v for k, v in annotations.items()})
    assert apply_overrides(base, values).as_k8s() == expected
    assert len(problems) == (annotations.get("proxy-memory-limit") == "lots")


def test_samples_file_formats():
    csv_text = "namespace,workload,timestamp,cpu,memory,oom\nshop,Deployment/web,1700000000,250m,64Mi,true\n"
    jsonl = (
        '{"namespace": "shop", "workload": "Deployment/web", "timestamp": "2023-11-14T22:13:20Z", '
        '"cpu": 0.25, "memory": 67108864, "oom": true}\n'
    )
    assert parse_samples(csv_text) == parse_samples(jsonl)


@pytest.mark.parametrize(
    ("cpu", "memory", "error"),
    [
        ("-5m", "64Mi", "line 2: cpu '-5m' is negative"),
        ("-0.5", "64Mi", "line 2: cpu '-0.5' is negative"),
        ("5m", "-1Mi", "line 2: memory '-1Mi' is negative"),
        ("abc", "64Mi", "line 2: cpu 'abc' is not a quantity"),
        ("", "64Mi", "line 2: missing cpu"),
    ],
)
def test_a_bad_sample_is_refused_naming_its_line_and_field(cpu, memory, error):
    from webhook.usage.samples import UsageError

    text = f"namespace,workload,timestamp,cpu,memory\nshop,Deployment/web,1700000000,{cpu},{memory}\n"
    with pytest.raises(UsageError, match=re.escape(f"usage: {error}")):
        parse_samples(text)


@pytest.mark.parametrize(
    ("raw", "ranges"),
    [
        ("25,3306,8000-8100", ((25, 25), (3306, 3306), (8000, 8100))),
        ("1,2,3", ((1, 3),)),  # adjacent items joined
        ("8000-8100, 8050-8200,9000", ((8000, 8200), (9000, 9000))),  # overlapping ones too
        ("1-65535", ((1, 65535),)),
        ("", ()),
    ],
)
def test_port_lists_by_hand(raw, ranges):
    from webhook.dataplane.iptables import parse_ports

    assert parse_ports(raw) == ranges


@pytest.mark.parametrize("raw", ["0", "65536", "10-5", "http", "1-2-3", "-1"])
def test_port_lists_outside_1_to_65535_or_not_ports_are_refused(raw):
    from webhook.dataplane.iptables import PortListError, parse_ports

    with pytest.raises(PortListError, match=re.escape(repr(raw))):
        parse_ports(raw)


def test_the_generic_ruleset_by_hand():
    """mesh-init's ruleset: the admin port and the pod's skips left alone inbound; the proxy's
    uid, loopback, the skips and the IPv4 ranges left alone outbound (an IPv6 range needs
    ip6tables and would make iptables-restore fail: it is not written)."""
    from webhook.dataplane.iptables import render_rules

    text = render_rules(
        skip_inbound=((22, 22), (9100, 9102)),
        skip_outbound=((3306, 3306),),
        skip_cidrs=("10.0.0.0/8", "fd00:10::/64"),
    )
    rules = text.splitlines()
    inbound = [r for r in rules if r.startswith("-A MESH_INBOUND")]
    outbound = [r for r in rules if r.startswith("-A MESH_OUTBOUND")]
    assert inbound == [
        "-A MESH_INBOUND -p tcp --dport 4191 -j RETURN",
        "-A MESH_INBOUND -p tcp --dport 22 -j RETURN",
        "-A MESH_INBOUND -p tcp --dport 9100:9102 -j RETURN",
        "-A MESH_INBOUND -p tcp -j REDIRECT --to-ports 4143",
    ]
    assert outbound == [
        "-A MESH_OUTBOUND -m owner --uid-owner 2102 -j RETURN",
        "-A MESH_OUTBOUND -o lo -j RETURN",
        "-A MESH_OUTBOUND -d 127.0.0.0/8 -j RETURN",
        "-A MESH_OUTBOUND -p tcp --dport 3306 -j RETURN",
        "-A MESH_OUTBOUND -d 10.0.0.0/8 -j RETURN",
        "-A MESH_OUTBOUND -p tcp -j REDIRECT --to-ports 4140",
    ]
    assert rules[0] == "*nat" and text.endswith("\nCOMMIT\n")


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


# --- the scheduler's rules, written from Kubernetes' definitions, not from the code under test
#
# k8s.io/component-helpers/scheduling/corev1/nodeaffinity (nodeSelector, required node
# affinity), labels.Requirement.Matches (the operators), v1.Toleration.ToleratesTaint and the
# TaintToleration and NodeUnschedulable filter plugins. Only pod specs the API server accepts
# are in this oracle's domain (In/NotIn with values, Exists/DoesNotExist without, Gt/Lt with
# one integer, matchFields on metadata.name with one value, Exists tolerations without a
# value, an empty key only with Exists): a pod it refuses is never scheduled at all.

UNSCHEDULABLE_TAINT = ("node.kubernetes.io/unschedulable", "", "NoSchedule")


def _go_int64(text: str) -> int | None:
    """strconv.ParseInt(text, 10, 64): ASCII digits with an optional sign, within int64."""
    if re.fullmatch(r"[+-]?[0-9]+", text) is None:
        return None
    value = int(text)
    return value if -(2**63) <= value < 2**63 else None


def k8s_requirement_matches(req: dict, fields: dict[str, str]) -> bool:
    key, op, values = req["key"], req["operator"], req.get("values") or []
    if op == "In":
        return key in fields and fields[key] in values
    if op == "NotIn":  # a missing key is "not in" any set
        return key not in fields or fields[key] not in values
    if op == "Exists":
        return key in fields
    if op == "DoesNotExist":
        return key not in fields
    if op in ("Gt", "Lt"):  # strictly greater / less, both sides integers
        if key not in fields:
            return False
        have, want = _go_int64(fields[key]), _go_int64(values[0])
        if have is None or want is None:
            return False
        return have > want if op == "Gt" else have < want
    raise AssertionError(f"operator {op} is refused by the API server")


def k8s_term_matches(term: dict, name: str, labels: dict[str, str]) -> bool:
    """A nodeSelectorTerm: its expressions and fields ANDed; an empty term matches nothing."""
    exprs, fields = term.get("matchExpressions") or [], term.get("matchFields") or []
    if not exprs and not fields:
        return False
    return all(k8s_requirement_matches(r, labels) for r in exprs) and all(
        k8s_requirement_matches(f, {"metadata.name": name}) for f in fields
    )


def k8s_tolerates(toleration: dict, taint: tuple[str, str, str]) -> bool:
    key, value, effect = taint
    if toleration.get("effect") and toleration["effect"] != effect:
        return False
    if toleration.get("key") and toleration["key"] != key:
        return False
    if toleration.get("operator") == "Exists":
        return True
    return (toleration.get("value") or "") == value  # "" and Equal: the value must match


def k8s_schedulable(node: Node, spec: dict) -> bool:
    """May the scheduler place a pod with ``spec`` on ``node`` (labels, taints, cordon)?"""
    tolerations = spec.get("tolerations") or []
    if node.unschedulable and not any(k8s_tolerates(t, UNSCHEDULABLE_TAINT) for t in tolerations):
        return False
    for taint in node.taints:  # PreferNoSchedule is a preference, not a filter
        hard = taint.effect in ("NoSchedule", "NoExecute")
        if hard and not any(k8s_tolerates(t, (taint.key, taint.value, taint.effect)) for t in tolerations):
            return False
    labels = dict(node.labels)
    if any(labels.get(k) != v for k, v in (spec.get("nodeSelector") or {}).items()):
        return False
    required = ((spec.get("affinity") or {}).get("nodeAffinity") or {}).get(
        "requiredDuringSchedulingIgnoredDuringExecution"
    )
    if required is None:
        return True
    return any(k8s_term_matches(t, node.name, labels) for t in required.get("nodeSelectorTerms") or [])


def k8s_eligible(nodes: list[Node], spec: dict) -> list[Node]:
    if spec.get("nodeName"):
        return [n for n in nodes if n.name == spec["nodeName"]]
    return [n for n in nodes if k8s_schedulable(n, spec)]


def required(*terms: dict) -> dict:
    return {
        "affinity": {
            "nodeAffinity": {
                "requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": list(terms)}
            }
        }
    }


def expr(key: str, op: str, *values: str) -> dict:
    return {"key": key, "operator": op, **({"values": list(values)} if values else {})}


# Every node has a kernel of its own, so the kernels of an Eligibility name its nodes exactly.
RULE_NODES = [
    node("plain", {"tier": "web"}, kernel="6.1.1"),
    node("no-tier", {}, kernel="6.1.2"),
    node("gen7", {"tier": "db", "gen": "7"}, kernel="6.1.3"),
    node("gen6", {"tier": "db", "gen": "6"}, kernel="6.1.4"),
    node("gen-x", {"tier": "db", "gen": "seven"}, kernel="6.1.5"),
    node("gen-under", {"gen": "7_0"}, kernel="6.1.6"),
    node("no-schedule", {"tier": "web"}, [Taint("dedicated", "db", "NoSchedule")], kernel="6.1.7"),
    node("no-execute", {"tier": "web"}, [Taint("evict", "", "NoExecute")], kernel="6.1.8"),
    node("prefer", {"tier": "web"}, [Taint("spot", "true", "PreferNoSchedule")], kernel="6.1.9"),
    node("cordoned", {"tier": "web"}, cordoned=True, kernel="6.1.10"),
]
_BY_KERNEL = {n.kernel: n.name for n in RULE_NODES}
_UNTAINTED = {"plain", "no-tier", "gen7", "gen6", "gen-x", "gen-under", "prefer"}


def eligible_names(spec: dict) -> set[str]:
    elig = eligible_nodes(build_snapshot(nodes=RULE_NODES), spec)
    names = {_BY_KERNEL[k] for k in elig.kernels}
    assert elig.count == len(names)
    return names


RULES = [
    ("no constraints: untainted, uncordoned nodes; PreferNoSchedule does not filter", {}, _UNTAINTED),
    ("nodeSelector: every pair must hold", {"nodeSelector": {"tier": "db", "gen": "7"}}, {"gen7"}),
    (
        "In: the key present with one of the values",
        required({"matchExpressions": [expr("tier", "In", "web", "db")]}),
        {"plain", "prefer", "gen7", "gen6", "gen-x"},
    ),
    (
        "NotIn: a node without the key matches",
        required({"matchExpressions": [expr("tier", "NotIn", "db")]}),
        {"plain", "prefer", "no-tier", "gen-under"},
    ),
    (
        "Exists",
        required({"matchExpressions": [expr("gen", "Exists")]}),
        {"gen7", "gen6", "gen-x", "gen-under"},
    ),
    (
        "DoesNotExist",
        required({"matchExpressions": [expr("tier", "DoesNotExist")]}),
        {"no-tier", "gen-under"},
    ),
    (
        "Gt: strictly greater; an equal or non-integer value does not match",
        required({"matchExpressions": [expr("gen", "Gt", "6")]}),
        {"gen7"},
    ),
    ("Gt: equal is not greater", required({"matchExpressions": [expr("gen", "Gt", "7")]}), set()),
    ("Lt: strictly less", required({"matchExpressions": [expr("gen", "Lt", "7")]}), {"gen6"}),
    (
        "Lt: a node without the key does not match",
        required({"matchExpressions": [expr("gen", "Lt", "100")]}),
        {"gen7", "gen6"},
    ),
    (
        "expressions in a term are ANDed",
        required({"matchExpressions": [expr("tier", "In", "db"), expr("gen", "NotIn", "7")]}),
        {"gen6", "gen-x"},
    ),
    (
        "terms are ORed",
        required(
            {"matchExpressions": [expr("gen", "In", "7")]},
            {"matchExpressions": [expr("tier", "DoesNotExist")]},
        ),
        {"gen7", "no-tier", "gen-under"},
    ),
    (
        "matchFields In on metadata.name",
        required({"matchFields": [expr("metadata.name", "In", "gen6")]}),
        {"gen6"},
    ),
    (
        "matchFields NotIn, ANDed with the term's expressions",
        required(
            {
                "matchExpressions": [expr("tier", "In", "db")],
                "matchFields": [expr("metadata.name", "NotIn", "gen6")],
            }
        ),
        {"gen7", "gen-x"},
    ),
    (
        "an empty term matches nothing; another term still can",
        required({}, {"matchFields": [expr("metadata.name", "In", "plain")]}),
        {"plain"},
    ),
    (
        "a toleration with the taint's key, value and effect",
        {"tolerations": [{"key": "dedicated", "operator": "Equal", "value": "db", "effect": "NoSchedule"}]},
        _UNTAINTED | {"no-schedule"},
    ),
    (
        "an empty operator is Equal; no effect tolerates every effect",
        {"tolerations": [{"key": "dedicated", "value": "db"}]},
        _UNTAINTED | {"no-schedule"},
    ),
    (
        "Equal with another value does not tolerate",
        {"tolerations": [{"key": "dedicated", "operator": "Equal", "value": "web"}]},
        _UNTAINTED,
    ),
    (
        "Exists tolerates any value of its key",
        {"tolerations": [{"key": "dedicated", "operator": "Exists"}]},
        _UNTAINTED | {"no-schedule"},
    ),
    (
        "Equal with an empty value matches a taint without one",
        {"tolerations": [{"key": "evict", "operator": "Equal", "effect": "NoExecute"}]},
        _UNTAINTED | {"no-execute"},
    ),
    (
        "another effect does not tolerate",
        {"tolerations": [{"key": "evict", "operator": "Exists", "effect": "NoSchedule"}]},
        _UNTAINTED,
    ),
    (
        "an empty key with Exists tolerates every taint, the cordon's too",
        {"tolerations": [{"operator": "Exists"}]},
        {n.name for n in RULE_NODES},
    ),
    (
        "an empty key with Exists and an effect tolerates only that effect",
        {"tolerations": [{"operator": "Exists", "effect": "NoSchedule"}]},
        _UNTAINTED | {"no-schedule", "cordoned"},
    ),
    (
        "the cordon's taint tolerated, as DaemonSet pods do",
        {
            "tolerations": [
                {"key": "node.kubernetes.io/unschedulable", "operator": "Exists", "effect": "NoSchedule"}
            ]
        },
        _UNTAINTED | {"cordoned"},
    ),
    ("spec.nodeName: that node, whatever its taints", {"nodeName": "no-execute"}, {"no-execute"}),
    ("spec.nodeName of no known node: none", {"nodeName": "not-a-node"}, set()),
]


@pytest.mark.parametrize(("rule", "spec", "expected"), RULES, ids=[r[0] for r in RULES])
def test_eligible_nodes_follow_the_kubernetes_rules(rule, spec, expected):
    assert k8s_eligible(RULE_NODES, spec) == [n for n in RULE_NODES if n.name in expected], "the oracle"
    assert eligible_names(spec) == expected


from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

# Sixty nodes in a few shapes, so most share a group (and the grouped evaluation is what is
# tested), with host names and a per-node label the identity detection picks up.
_NODES = [
    node(
        f"h{i}",
        {"zone": "abc"[i % 3], "pool": ["p", "q", "r", "s"][i % 4], "gen": ["1", "2", "3", "07", "x"][i % 5]}
        | ({"serial": str(i)} if i % 2 else {}),
        taints=[
            [],
            [],
            [Taint("pool", "s", "NoSchedule")],
            [Taint("spot", "", "PreferNoSchedule")],
            [Taint("evict", "now", "NoExecute"), Taint("pool", "s", "NoSchedule")],
        ][i % 5],
        kernel=f"6.{i % 4}.0",
        cordoned=i % 17 == 0,
    )
    for i in range(60)
]
_SNAP = build_snapshot(nodes=_NODES)
_KEYS = ["kubernetes.io/hostname", "zone", "pool", "gen", "serial", "absent"]
_VALUES = ["h1", "h2", "h30", "a", "b", "p", "s", "2", "3", "7", "07", "x", "9"]
_req = st.one_of(
    st.builds(expr, st.sampled_from(_KEYS), st.sampled_from(["Exists", "DoesNotExist"])),
    st.builds(
        lambda key, op, values: expr(key, op, *values),
        st.sampled_from(_KEYS),
        st.sampled_from(["In", "NotIn"]),
        st.lists(st.sampled_from(_VALUES), min_size=1, max_size=3),
    ),
    st.builds(
        lambda key, op, value: expr(key, op, str(value)),
        st.sampled_from(_KEYS),
        st.sampled_from(["Gt", "Lt"]),
        st.integers(-1, 12),
    ),
)
_field = st.builds(
    lambda op, v: expr("metadata.name", op, v),
    st.sampled_from(["In", "NotIn"]),
    st.sampled_from(["h1", "h4", "x"]),
)
_term = st.fixed_dictionaries(
    {}, optional={"matchExpressions": st.lists(_req, max_size=3), "matchFields": st.lists(_field, max_size=1)}
)
_toleration = st.one_of(
    st.fixed_dictionaries(
        {"key": st.sampled_from(["pool", "evict", "spot", "node.kubernetes.io/unschedulable"])},
        optional={
            "operator": st.just("Equal"),
            "value": st.sampled_from(["s", "now", "", "q"]),
            "effect": st.sampled_from(["NoSchedule", "NoExecute", "PreferNoSchedule"]),
        },
    ),
    st.fixed_dictionaries(
        {"operator": st.just("Exists")},
        optional={
            "key": st.sampled_from(["pool", "evict", "node.kubernetes.io/unschedulable"]),
            "effect": st.sampled_from(["NoSchedule", "NoExecute"]),
        },
    ),
)


@settings(max_examples=400, deadline=None)
@given(
    selector=st.dictionaries(st.sampled_from(_KEYS), st.sampled_from(_VALUES), max_size=2),
    terms=st.one_of(st.none(), st.lists(_term, min_size=1, max_size=3)),
    tolerations=st.lists(_toleration, max_size=3),
)
def test_grouped_eligibility_equals_the_kubernetes_rules(selector, terms, tolerations):
    spec: dict = {"nodeSelector": selector, "tolerations": tolerations}
    if terms is not None:
        spec.update(required(*terms))
    want = k8s_eligible(_NODES, spec)
    got = eligible_nodes(_SNAP, spec)
    assert got.count == len(want)
    assert got.kernels == {n.kernel for n in want}
    assert set(got.sample) <= {n.name for n in want}


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


@pytest.mark.parametrize(("count", "expected"), [(9, "ebpf"), (10, "iptables")])
def test_merbridge_holds_twenty_inbound_ports_seven_of_them_its_own(count, expected):
    """Merbridge keeps 20 single inbound ports, 7 its own (15000, 15001, 15006, 15008, 15020,
    15021, 15090); Linkerd's proxy leaves 4190 and 4191 alone and its chart 4567 and 4568:
    so 9 more of the pod's fit, and a tenth does not."""
    from webhook.admission import admit
    from webhook.cluster.snapshot import redirector_selector, snapshot_from_objects

    chosen = anchored_policy("")
    snapshot = snapshot_from_objects(
        _merbridge_node(True), server_version=KubeVersion(1, 32), redirector=redirector_selector(chosen)
    )
    ports = ",".join(str(9001 + i) for i in range(count))
    annotations = {"mesh-injector.io/skip-inbound-ports": ports}
    meta = {"name": "p", "namespace": "shop", "annotations": annotations}
    pod = {"metadata": meta, "spec": {"containers": [APP]}}
    out = admit(
        {"uid": "u", "operation": "CREATE", "kind": {"kind": "Pod"}, "namespace": "shop", "object": pod},
        snapshot,
        chosen,
    )
    assert out.injected and out.mode is not None and out.mode.value == expected, out.explanation
    if expected == "iptables":
        assert any("13 single ports Merbridge holds beside its 7" in w for w in out.warnings), out.warnings
