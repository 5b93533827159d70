"""The live cluster view, driven through the real `kubernetes` client.

What a cluster does normally (lists, watches, changes of nodes, namespaces, Services, the
flavour's ConfigMaps, Merbridge's pods, RuntimeClasses, VerticalPodAutoscalers) is tested
against a real API server (tests/apiserver.py: one for this module, its objects put back to
one baseline before each test). What a real one cannot be made to show on demand (dropped
watches, 410 Gone, outages, lists that fail, an API server without node.k8s.io) is tested
against the list/watch-speaking test server (tests/fake_apiserver.py).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from tests import apiserver
from tests.fake_apiserver import (
    FakeAPIServer,
    merbridge,
    namespace,
    node,
    runtime_class,
    service,
    trust_roots,
)
from tests.servers import make_certs, serve_process
from tests.support import EXAMPLE, TRUST_ANCHORS, eventually
from webhook.admission import admit
from webhook.cluster.live import LiveClusterView, api_client
from webhook.cluster.snapshot import redirector_selector
from webhook.dataplane import config_maps
from webhook.loading import load_policy
from webhook.versions import KubeVersion

POLICY = load_policy()
MERBRIDGE = redirector_selector(POLICY)
REPO = Path(__file__).resolve().parent.parent
REAL_VERSION = KubeVersion(1, 20)  # the harness's kube-apiserver (tests/e2e/run-apiserver.sh)


def pod_request(ns: str = "shop", **spec):
    obj = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "p", "namespace": ns, "labels": {"app": "api"}},
        "spec": {"containers": [{"name": "c", "image": "i"}], **spec},
    }
    return {"uid": "u", "operation": "CREATE", "kind": {"kind": "Pod"}, "namespace": ns, "object": obj}


# --- a real API server ----------------------------------------------------------------


def baseline(kube: apiserver.Objects) -> None:
    """Two nodes with capable kernels, Merbridge Ready on both, Linkerd's trust roots, a gRPC
    Service in ``shop`` (opted in) and ``quiet`` (not); no RuntimeClass, no VPA."""
    kube.put("namespaces", namespace("shop", {"mesh-injector.io/inject": "enabled"}))
    kube.put("namespaces", namespace("quiet"))
    for obj in kube.items("nodes"):
        if obj["metadata"]["name"] not in ("n1", "n2"):
            kube.delete("nodes", obj["metadata"]["name"])
    kube.put("nodes", node("n1", "6.1.0-18-cloud-amd64"))
    kube.put("nodes", node("n2", "6.8.0-45-generic"))
    for resource, ns in (
        ("pods", "linkerd"),
        ("pods", "elsewhere"),
        ("configmaps", "linkerd"),
        ("configmaps", "shop"),
        ("configmaps", "istio-system"),
        ("services", "shop"),
        ("verticalpodautoscalers", "shop"),
        ("runtimeclasses", ""),
    ):
        for obj in kube.items(resource, ns):
            kube.delete(resource, obj["metadata"]["name"], ns)
    kube.put("configmaps", trust_roots(TRUST_ANCHORS))
    kube.put("pods", merbridge("n1"))
    kube.put("pods", merbridge("n2"))
    kube.put(
        "services",
        service("api", "shop", {"app": "api"}, [{"name": "api", "port": 80, "appProtocol": "grpc"}]),
    )


@pytest.fixture(scope="module")
def real():
    from tests.test_e2e import install_vpa_crd

    server = apiserver.started("mesh-injector-live")
    kube = apiserver.Objects(server)
    try:
        for ns in ("linkerd", "elsewhere", "istio-system"):
            kube.put("namespaces", namespace(ns))
        install_vpa_crd(api_client(server.kubeconfig))  # before any view starts: it is watched
        yield server, kube
    finally:
        kube.close()
        apiserver.finish(server)


def live_view(server: apiserver.ApiServer, policy=POLICY, rebuild_interval: float = 0.02) -> LiveClusterView:
    return LiveClusterView(
        api_client(server.kubeconfig),
        rebuild_interval=rebuild_interval,
        watch_timeout=5,
        redirector=redirector_selector(policy),
        config_maps=config_maps(policy),
    )


@pytest.fixture
def cluster(real):
    """(the objects, a view not started yet, the API server), from the baseline."""
    server, kube = real
    baseline(kube)
    view = live_view(server)
    yield kube, view, server
    view.stop()


def test_lists_then_watches_and_decides_from_live_state(cluster):
    kube, view, server = cluster
    lists = server.requests("LIST", "nodes")
    assert not view.ready()
    view.start()
    assert view.wait_ready(30)
    snap = view.snapshot()
    assert set(snap.nodes) == {"n1", "n2"}
    eventually(lambda: view.snapshot().server_version == REAL_VERSION)
    snap = view.snapshot()
    assert snap.namespaces["shop"] == {"mesh-injector.io/inject": "enabled"}
    out = admit(pod_request(), snap, POLICY)
    assert out.injected and out.mode.value == "ebpf"
    assert "Service api" in "\n".join(out.explanation)  # protocol from the live Service

    # a node's kernel changes: the next decision follows, without any relist
    kube.put("nodes", node("n2", "4.19.112+"))
    eventually(lambda: view.snapshot().nodes["n2"].kernel == "4.19.112+")
    out = admit(pod_request(), view.snapshot(), POLICY)
    assert out.mode.value == "iptables" and out.reason == "kernel-too-old"
    # a namespace opts in; a node goes away
    kube.put("namespaces", namespace("quiet", {"mesh-injector.io/inject": "enabled"}))
    kube.delete("nodes", "n2")
    eventually(lambda: "n2" not in view.snapshot().nodes and view.snapshot().namespaces["quiet"])
    out = admit(pod_request("quiet"), view.snapshot(), POLICY)
    assert out.injected and out.mode.value == "ebpf"
    # changes arrive by watch: the API server answered one list of nodes, the view's
    assert server.requests("LIST", "nodes") - lists == 1 and view.relists["nodes"] == 1


def test_the_redirector_and_runtime_classes_are_watched(cluster):
    """ebpf follows Merbridge's pods (only those the policy selects, in its namespace) and
    microvm the RuntimeClasses, as they change."""
    kube, view, server = cluster
    kube.put(
        "pods", {**merbridge("n9"), "metadata": {"name": "x", "namespace": "linkerd", "labels": {"app": "x"}}}
    )
    kube.put("pods", merbridge("n9", ns="elsewhere"))
    lists = server.requests("LIST", "pods"), server.requests("LIST", "runtimeclasses")
    view.start()
    assert view.wait_ready(30)
    assert set(view.snapshot().redirectors) == {"n1", "n2"}  # selected by namespace and label only
    assert admit(pod_request(), view.snapshot(), POLICY).mode.value == "ebpf"

    kube.put("pods", merbridge("n2", ready=False))
    eventually(lambda: not view.snapshot().redirectors["n2"][0].ready)
    out = admit(pod_request(), view.snapshot(), POLICY)
    assert (out.mode.value, out.reason) == ("iptables", "no-redirector")
    assert (
        "Merbridge on node n2 (linkerd/merbridge-n2) is not Ready"
        in out.pod["metadata"]["annotations"]["mesh-injector.io/decision"]
    )
    kube.put("pods", merbridge("n2"))
    kube.delete("pods", "merbridge-n1", "linkerd")
    eventually(lambda: "n1" not in view.snapshot().redirectors and view.snapshot().redirectors["n2"][0].ready)
    out = admit(pod_request(), view.snapshot(), POLICY)
    assert out.reason == "no-redirector" and "node n1 runs no Merbridge pod" in "\n".join(out.explanation)

    wants_microvm = pod_request()
    wants_microvm["object"]["metadata"]["annotations"] = {"mesh-injector.io/interception": "microvm"}
    assert admit(wants_microvm, view.snapshot(), POLICY).mode.value != "microvm"
    kube.put("runtimeclasses", runtime_class("kata-qemu", "kata-qemu"))
    eventually(lambda: "kata-qemu" in view.snapshot().runtime_classes)
    out = admit(wants_microvm, view.snapshot(), POLICY)
    assert out.mode.value == "microvm" and out.pod["spec"]["runtimeClassName"] == "kata-qemu"
    # changes arrive by watch: one list each
    assert server.requests("LIST", "pods") - lists[0] == 1
    assert server.requests("LIST", "runtimeclasses") - lists[1] == 1


def test_vertical_pod_autoscalers_are_watched(cluster):
    """A VPA (the published CRD, tests/e2e/vpa/) that covers the proxy makes the next pod's
    proxy VPA's to size; removing the proxy from its policy gives it back to us."""
    kube, view, _ = cluster
    view.start()
    assert view.wait_ready(30)
    request = pod_request()
    request["object"]["metadata"]["labels"]["pod-template-hash"] = "5d8f7c9b6"
    request["object"]["metadata"]["ownerReferences"] = [
        {
            "apiVersion": "apps/v1",
            "kind": "ReplicaSet",
            "name": "api-5d8f7c9b6",
            "uid": "1",
            "controller": True,
        }
    ]
    assert admit(request, view.snapshot(), POLICY).resources.source.value == "profile"
    vpa = {
        "apiVersion": "autoscaling.k8s.io/v1",
        "kind": "VerticalPodAutoscaler",
        "metadata": {"name": "api", "namespace": "shop"},
        "spec": {"targetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "api"}},
    }
    kube.put("verticalpodautoscalers", vpa)
    eventually(lambda: view.snapshot().autoscalers)
    out = admit(request, view.snapshot(), POLICY)
    assert out.resources.source.value == "vpa" and "sized by VPA api" in "\n".join(out.explanation)
    vpa["spec"]["resourcePolicy"] = {"containerPolicies": [{"containerName": "linkerd-proxy", "mode": "Off"}]}
    kube.put("verticalpodautoscalers", vpa)
    eventually(lambda: view.snapshot().autoscalers[("shop", "Deployment", "api")].policies)
    assert admit(request, view.snapshot(), POLICY).resources.source.value == "profile"


ROOTS = ("linkerd", "linkerd-identity-trust-roots")


def test_linkerd_trust_roots_are_watched(cluster):
    """The trust anchors come from the watched ConfigMap: a rotation reaches the next pod,
    and a deleted ConfigMap stops meshing (with the reason) instead of an identity-less proxy."""
    kube, view, server = cluster
    other = {**trust_roots(TRUST_ANCHORS), "metadata": {"name": "other", "namespace": "linkerd"}}
    elsewhere = {
        **trust_roots(TRUST_ANCHORS),
        "metadata": {**trust_roots("")["metadata"], "namespace": "shop"},
    }
    kube.put("configmaps", other)
    kube.put("configmaps", elsewhere)
    lists = server.requests("LIST", "configmaps")
    view.start()
    assert view.wait_ready(30)
    # by namespace and field selector: only the one the flavour reads
    assert view.snapshot().config_maps == {ROOTS: {"ca-bundle.crt": TRUST_ANCHORS}}
    rotated = TRUST_ANCHORS + TRUST_ANCHORS  # a bundle of old and new roots during a rotation
    kube.put("configmaps", trust_roots(rotated))
    eventually(lambda: view.snapshot().config_maps.get(ROOTS) == {"ca-bundle.crt": rotated})
    out = admit(pod_request(), view.snapshot(), POLICY)
    proxy = next(c for c in out.pod["spec"]["containers"] if c["name"] == "linkerd-proxy")
    anchors = next(e["value"] for e in proxy["env"] if e["name"] == "LINKERD2_PROXY_IDENTITY_TRUST_ANCHORS")
    assert anchors.count("BEGIN CERTIFICATE") == 2
    kube.delete("configmaps", "linkerd-identity-trust-roots", "linkerd")
    eventually(lambda: not view.snapshot().config_maps)
    out = admit(pod_request(), view.snapshot(), POLICY)
    assert not out.injected and out.skip is not None and out.skip.value == "no-trust-anchors"
    # one list per ConfigMap the flavour reads (linkerd-config and the trust roots), then watches
    assert server.requests("LIST", "configmaps") - lists == 2, "changes arrive by watch"


def test_the_linkerd_control_plane_config_is_watched(cluster):
    """Linkerd's linkerd-config is watched: installing 2.16 and then upgrading to 2.20 reaches
    the next pod without a restart, and a ConfigMap that is not YAML is named (the policy's
    default version is used until it is fixed)."""
    kube, view, _ = cluster
    view.start()
    assert view.wait_ready(30)
    key = ("linkerd", "linkerd-config")

    def config(values: str) -> dict:
        return {"metadata": {"name": "linkerd-config", "namespace": "linkerd"}, "data": {"values": values}}

    def proxy_of(out) -> dict:
        return next(c for c in out.pod["spec"]["containers"] if c["name"] == "linkerd-proxy")

    kube.put("configmaps", config("linkerdVersion: edge-24.8.2\nproxyInit: {iptablesMode: legacy}\n"))
    eventually(lambda: "24.8.2" in str(view.snapshot().config_maps.get(key)))
    out = admit(pod_request(), view.snapshot(), POLICY)
    assert proxy_of(out)["image"] == "cr.l5d.io/linkerd/proxy:edge-24.8.2"
    assert "_pod_uid" not in {e["name"] for e in proxy_of(out)["env"]}
    kube.put("configmaps", config("linkerdVersion: edge-26.6.3\n"))
    eventually(lambda: "26.6.3" in str(view.snapshot().config_maps.get(key)))
    out = admit(pod_request(), view.snapshot(), POLICY)
    assert proxy_of(out)["image"] == "cr.l5d.io/linkerd/proxy:edge-26.6.3"
    assert "_pod_uid" in {e["name"] for e in proxy_of(out)["env"]}
    kube.put("configmaps", config("proxy: [unclosed"))
    eventually(lambda: "unclosed" in str(view.snapshot().config_maps.get(key)))
    out = admit(pod_request(), view.snapshot(), POLICY)
    assert out.injected and proxy_of(out)["image"] == "cr.l5d.io/linkerd/proxy:edge-26.6.3"
    assert any("linkerd/linkerd-config values is not applied: not YAML" in w for w in out.warnings)


def test_namespace_config_annotations_are_watched(cluster):
    """A namespace's config.linkerd.io annotation reaches the next pod of that namespace: it
    is written on the pod (as Linkerd's injector copies it) and applied; kubectl's
    last-applied copy of the namespace is not kept."""
    kube, view, _ = cluster
    view.start()
    assert view.wait_ready(30)
    shop = namespace("shop", {"mesh-injector.io/inject": "enabled"})
    shop["metadata"]["annotations"] = {
        "config.linkerd.io/proxy-log-level": "debug",
        "kubectl.kubernetes.io/last-applied-configuration": "{" + "x" * 10_000 + "}",
    }
    kube.put("namespaces", shop)
    eventually(lambda: "shop" in view.snapshot().namespace_annotations)
    assert view.snapshot().namespace_annotations["shop"] == {"config.linkerd.io/proxy-log-level": "debug"}
    out = admit(pod_request(), view.snapshot(), POLICY)
    assert out.injected
    assert out.pod["metadata"]["annotations"]["config.linkerd.io/proxy-log-level"] == "debug"
    proxy = next(c for c in out.pod["spec"]["containers"] if c["name"] == "linkerd-proxy")
    log = next(e["value"] for e in proxy["env"] if e["name"] == "LINKERD2_PROXY_LOG")
    assert log.startswith("debug,")


def test_istio_mesh_config_is_watched(cluster):
    """With the istio flavour the revision's mesh ConfigMap is watched, and its defaultConfig
    reaches the next pod's PROXY_CONFIG."""
    import dataclasses

    kube, _, server = cluster
    mesh = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "istio-canary", "namespace": "istio-system"},
        "data": {"mesh": "defaultConfig:\n  discoveryAddress: istiod-canary.mesh-control.svc:15012\n"},
    }
    kube.put("configmaps", mesh)
    proxy = dataclasses.replace(
        POLICY.proxy,
        flavour="istio",
        sections={
            **POLICY.proxy.sections,
            "istio": dataclasses.replace(POLICY.proxy.settings("istio"), revision="canary"),
        },
    )
    policy = dataclasses.replace(POLICY, proxy=proxy)
    view = live_view(server, policy)
    try:
        view.start()
        assert view.wait_ready(30)

        def proxy_config() -> dict:
            out = admit(pod_request(), view.snapshot(), policy)
            spec = out.pod["spec"]
            containers = [*spec.get("initContainers", []), *spec["containers"]]
            container = next(c for c in containers if c["name"] == "istio-proxy")
            return json.loads(next(e["value"] for e in container["env"] if e["name"] == "PROXY_CONFIG"))

        assert proxy_config()["discoveryAddress"] == "istiod-canary.mesh-control.svc:15012"
        mesh["data"] = {"mesh": "defaultConfig:\n  tracing: {sampling: 5}\ntrustDomain: example.org\n"}
        kube.put("configmaps", mesh)
        eventually(lambda: proxy_config().get("tracing") == {"sampling": 5})
        assert view.stale_seconds("configmaps") == 0.0
    finally:
        view.stop()


def test_serve_with_kubeconfig_meshes_from_live_namespaces(cluster):
    _, _, server = cluster
    certs = make_certs(Path(server.run_dir) / "serve-certs")
    with serve_process(certs, "--kubeconfig", server.kubeconfig) as proc:
        client = httpx.Client(verify=certs.client_context(), base_url=proc.url, timeout=10)
        eventually(lambda: client.get("/readyz").status_code == 200, timeout=30)
        r = client.post("/mutate", content=json.dumps(EXAMPLE), headers={"Content-Type": "application/json"})
        assert r.json()["response"]["patchType"] == "JSONPatch"  # namespace shop opted in, live
        metrics = httpx.get(proc.metrics_url).text
        assert 'mesh_injector_cluster_cache_stale_seconds{resource="nodes"} 0.0' in metrics
        client.close()
        assert proc.stop() == 0


def test_dry_run_reads_the_cluster_once(cluster):
    _, _, server = cluster
    review = str(REPO / "examples" / "review.json")
    cmd = [sys.executable, "-m", "webhook", "review", review, "--show", "why"]
    lists = server.requests("LIST", "nodes")
    kubeconfig = ["--kubeconfig", server.kubeconfig]
    out = subprocess.run([*cmd, *kubeconfig], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "eligible nodes: 2 of 2" in out.stdout and "cluster: 1.20" in out.stdout
    assert server.requests("LIST", "nodes") - lists == 1
    bad = subprocess.run(
        [*cmd, "--kubeconfig", "/nonexistent/kubeconfig"], capture_output=True, text=True, timeout=60
    )
    assert bad.returncode == 2 and "cannot load Kubernetes credentials" in bad.stderr


def test_two_instances_give_the_same_answer(cluster):
    """Replicas agree because each decides purely from the same watched state."""
    import copy

    from tests.support import CASES, load_case

    kube, first, server = cluster
    second = live_view(server, rebuild_interval=0.05)
    reviews = [load_case(p).review["request"] for p in CASES]
    for request in reviews:
        request["namespace"] = "shop"  # every golden pod, in a namespace that opted in

    def served() -> tuple[dict, dict, dict]:
        """What the API server holds now."""
        nodes = {o["metadata"]["name"]: o["status"]["nodeInfo"]["kernelVersion"] for o in kube.items("nodes")}
        namespaces = {
            o["metadata"]["name"]: o["metadata"].get("labels") or {}
            for o in kube.items("namespaces")
            if o["metadata"]["name"] in ("shop", "quiet")
        }
        agents = {
            o["spec"]["nodeName"]: o["status"]["conditions"][0]["status"] == "True"
            for o in kube.items("pods", "linkerd")
        }
        return nodes, namespaces, agents

    def seen(view: LiveClusterView) -> tuple[dict, dict, dict]:
        snap = view.snapshot()
        agents = {name: state.ready for name, (state, _) in snap.redirectors.items()}
        namespaces = {k: v for k, v in snap.namespaces.items() if k in ("shop", "quiet")}
        return {name: n.kernel for name, n in snap.nodes.items()}, namespaces, agents

    restricted = {"mesh-injector.io/inject": "enabled", "pod-security.kubernetes.io/enforce": "restricted"}
    changes = [
        lambda: None,
        lambda: kube.put("nodes", node("n1", "4.19.112+")),
        lambda: kube.put("namespaces", namespace("shop", restricted)),
        lambda: kube.delete("nodes", "n1"),
        lambda: kube.put("pods", merbridge("n2", ready=False)),
    ]
    decisions = []
    try:
        first.start()
        second.start()
        assert first.wait_ready(30) and second.wait_ready(30)
        for change in changes:
            change()
            eventually(lambda: seen(first) == served() == seen(second))
            a, b = first.snapshot(), second.snapshot()
            outcomes = [
                (admit(copy.deepcopy(r), a, POLICY), admit(copy.deepcopy(r), b, POLICY)) for r in reviews
            ]
            assert all(x.patch == y.patch and x.warnings == y.warnings for x, y in outcomes)
            decisions.append({x.reason for x, _ in outcomes})
    finally:
        second.stop()
    # the answers compared were real decisions, and the changes moved them
    assert "ebpf-capable" in decisions[0] and "kernel-too-old" in decisions[1]
    assert "iptables-in-restricted-namespace" in decisions[2] and "ebpf-capable" in decisions[3]
    assert "ebpf-capable" not in decisions[4] and "iptables-in-restricted-namespace" in decisions[4]


# --- faults, on the list/watch test server ------------------------------------------------


@pytest.fixture
def faulty(tmp_path):
    """(the test server, a view of it not started yet) with two nodes and an opted-in
    namespace: for what a real API server cannot be made to do on demand."""
    fake = FakeAPIServer()
    fake.put("nodes", node("n1", "6.1.0-18-cloud-amd64"))
    fake.put("nodes", node("n2", "6.8.0-45-generic"))
    fake.put("namespaces", namespace("shop", {"mesh-injector.io/inject": "enabled"}))
    fake.put("configmaps", trust_roots(TRUST_ANCHORS))
    fake.put("pods", merbridge("n1"))
    fake.put("pods", merbridge("n2"))
    fake.start()
    view = LiveClusterView(
        api_client(str(fake.kubeconfig(tmp_path / "kubeconfig"))),
        rebuild_interval=0.02,
        watch_timeout=5,
        redirector=MERBRIDGE,
        config_maps=config_maps(POLICY),
    )
    yield fake, view
    view.stop()
    fake.stop()


def test_an_api_server_without_runtime_classes_is_served(tmp_path):
    """Before 1.20 there is no node.k8s.io/v1: the view is ready, with no RuntimeClass."""
    fake = FakeAPIServer(version="v1.19.16")
    fake.serves_runtimeclasses = False
    fake.serves_autoscalers = False
    fake.put("nodes", node("n1", "6.1.0"))
    fake.start()
    view = LiveClusterView(
        api_client(str(fake.kubeconfig(tmp_path / "kubeconfig"))), rebuild_interval=0.02, watch_timeout=5
    )
    try:
        view.start()
        assert view.wait_ready(10)
        assert view.snapshot().runtime_classes == {} and set(view.snapshot().nodes) == {"n1"}
        assert view.snapshot().autoscalers == {}
        assert view.stale_seconds("runtimeclasses") == 0.0
    finally:
        view.stop()
        fake.stop()


def test_dropped_watch_resumes_from_resource_version(faulty):
    fake, view = faulty
    view.start()
    assert view.wait_ready(10)
    for _ in range(3):
        calls = fake.watch_calls["nodes"]
        fake.drop_watches()
        eventually(lambda calls=calls: fake.watch_calls["nodes"] > calls)  # watching again
    fake.put("nodes", node("n3", "5.15.0-1052-aws"))
    eventually(lambda: "n3" in view.snapshot().nodes)
    assert fake.list_calls["nodes"] == 1, "a dropped watch resumes; it does not relist"
    assert fake.watch_calls["nodes"] >= 4


def test_410_gone_relists(faulty):
    fake, view = faulty
    view.start()
    assert view.wait_ready(10)
    fake.compact()  # history gone: the resuming watch gets 410
    fake.put("nodes", node("n9", "6.6.0"))
    eventually(lambda: "n9" in view.snapshot().nodes)
    assert fake.list_calls["nodes"] >= 2


def test_outage_keeps_last_state_reports_staleness_and_recovers(faulty):
    fake, view = faulty
    view.start()
    assert view.wait_ready(10)
    port = fake.port
    fake.stop()
    eventually(lambda: view.stale_seconds("nodes") > 0.3)
    assert set(view.snapshot().nodes) == {"n1", "n2"}
    assert admit(pod_request(), view.snapshot(), POLICY).injected  # still deciding from the last state
    # the API server comes back on the same address, with a change made meanwhile
    fake.port = port
    fake.put("nodes", node("n1", "5.4.0-1103-aws"))
    fake.start()
    eventually(lambda: view.snapshot().nodes["n1"].kernel == "5.4.0-1103-aws", timeout=40)
    eventually(lambda: view.stale_seconds("nodes") == 0.0, timeout=10)


def test_failed_lists_back_off_and_readiness_waits(faulty):
    fake, view = faulty
    fake.fail_lists["nodes"] = 3
    view.start()
    eventually(lambda: fake.list_calls["nodes"] >= 1)
    assert not view.ready(), "not ready while the nodes' lists fail"
    assert view.wait_ready(60)
    assert fake.list_calls["nodes"] >= 4, "three failed lists, then one that succeeded"
