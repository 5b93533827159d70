"""The data-plane flavours beyond the golden cases: switching flavour, the meshes' own
resource annotations, trust anchors, the flags the meshes' init images are given, and what
``policy check`` says of each flavour."""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from pathlib import Path

import jsonpatch
import pytest

from tests.support import ANCHORS_POLICY, CASES, TRUST_ANCHORS, anchored_policy, load_case, validate_k8s
from webhook.admission import admit
from webhook.core import ANN_SKIP
from webhook.dataplane import FLAVOURS, PROXY_NAMES
from webhook.dataplane.linkerd import trust_root_sha256
from webhook.loading import parse_policy
from webhook.patch.inject import read_status
from webhook.policy import PolicyError

REPO = Path(__file__).parent.parent
EBPF = load_case(next(p for p in CASES if p.name == "62-linkerd-ebpf-native-requested"))
# the same pod in iptables mode, where the proxy is a native sidecar (ebpf needs a regular container)
BASE = copy.deepcopy(EBPF)
BASE.review["request"]["object"]["metadata"]["annotations"]["mesh-injector.io/interception"] = "iptables"
# every registered flavour (the contract proxy's images are named; the others ignore them)
POLICIES = {
    name: anchored_policy(f"proxy: {{flavour: {name}, image: reg/proxy:1, initImage: reg/init:1}}")
    for name in FLAVOURS
}


def request(obj, annotations=None):
    obj = copy.deepcopy(obj)
    obj["metadata"].setdefault("annotations", {}).update(annotations or {})
    return {**BASE.review["request"], "object": obj}


def mutated(req, policy, snapshot=BASE.snapshot):
    out = admit(req, snapshot, policy)
    return out, jsonpatch.apply_patch(req["object"], out.patch)


def keys_of(pod, prefix):
    meta = pod["metadata"]
    return [k for k in {**meta.get("labels", {}), **meta.get("annotations", {})} if k.startswith(prefix)]


def names(pod):
    spec = pod["spec"]
    return [c["name"] for c in spec.get("initContainers", []) + spec["containers"]] + [
        v["name"] for v in spec.get("volumes", [])
    ]


def with_probes(pod):
    """``pod`` whose app container has a readiness probe on a named HTTPS port, a TCP
    liveness probe and a gRPC startup probe."""
    pod = copy.deepcopy(pod)
    app = pod["spec"]["containers"][0]
    app["ports"] = [{"name": "https", "containerPort": 8443}, {"name": "grpc", "containerPort": 9090}]
    app["readinessProbe"] = {
        "httpGet": {"path": "/ready", "port": "https", "scheme": "HTTPS"},
        "periodSeconds": 5,
        "timeoutSeconds": 2,
    }
    app["livenessProbe"] = {"tcpSocket": {"port": 8443}, "initialDelaySeconds": 3}
    app["startupProbe"] = {"grpc": {"port": 9090}, "failureThreshold": 30}
    return pod


@pytest.mark.parametrize("base", [BASE, EBPF], ids=["iptables", "ebpf"])
@pytest.mark.parametrize("probes", [False, True], ids=["no-probes", "probes"])
@pytest.mark.parametrize("before", list(FLAVOURS))
@pytest.mark.parametrize("after", list(FLAVOURS))
def test_switching_flavour_replaces_the_data_plane_cleanly(before, after, probes, base):
    original = base.review["request"]["object"]
    if probes:  # Istio takes them over: another flavour must get the pod's own back
        original = with_probes(original)
    _, first = mutated(request(original), POLICIES[before])
    out, second = mutated(request(first), POLICIES[after])
    _, fresh = mutated(request(original), POLICIES[after])
    assert second == fresh, "re-injecting with another flavour gives what a first injection would"
    if before != after:
        assert out.patch, "the old data plane is replaced"
        old_prefix = {"linkerd": "linkerd.io/", "istio": "sidecar.istio.io/", "generic": "-"}[before]
        # nothing of the old flavour is left but what the new one writes too (in ebpf mode,
        # Linkerd pods carry sidecar.istio.io/status for Merbridge's CNI plugin)
        assert not set(keys_of(second, old_prefix)) - set(keys_of(fresh, old_prefix))
        old_names = set(names(first)) - set(names(original))
        assert not (old_names - set(names(fresh))) & set(names(second))
    else:
        assert out.patch == []
    validate_k8s(second)


def test_our_resource_annotations_win_over_the_meshes_own():
    obj = BASE.review["request"]["object"]
    linkerd = {"config.linkerd.io/proxy-cpu-request": "321m", "config.linkerd.io/proxy-memory-limit": "700Mi"}
    _, pod = mutated(request(obj, linkerd), POLICIES["linkerd"])
    proxy = next(c for c in pod["spec"]["initContainers"] if c["name"] == "linkerd-proxy")
    assert proxy["resources"]["requests"]["cpu"] == "321m"
    assert proxy["resources"]["limits"]["memory"] == "700Mi"
    assert pod["metadata"]["annotations"]["mesh-injector.io/proxy-resources-source"] == "annotation"

    istio = {"sidecar.istio.io/proxyMemory": "200Mi", "sidecar.istio.io/proxyCPULimit": "1500m"}
    both = {**istio, "mesh-injector.io/proxy-memory-request": "150Mi"}
    _, pod = mutated(request(obj, both), POLICIES["istio"])
    proxy = next(c for c in pod["spec"]["initContainers"] if c["name"] == "istio-proxy")
    assert proxy["resources"]["requests"]["memory"] == "150Mi"  # ours wins where both are given
    assert proxy["resources"]["limits"]["cpu"] == "1500m"

    # another mesh's annotations mean nothing to this flavour
    _, pod = mutated(request(obj, istio), POLICIES["linkerd"])
    assert pod["metadata"]["annotations"]["mesh-injector.io/proxy-resources-source"] == "profile"


def test_linkerd_without_trust_anchors_is_skipped_with_the_reason():
    snapshot = BASE.snapshot.derive(config_maps={})
    out, pod = mutated(request(BASE.review["request"]["object"]), parse_policy(""), snapshot)
    assert not out.injected and out.skip is not None and out.skip.value == "no-trust-anchors"
    assert "ConfigMap linkerd/linkerd-identity-trust-roots" in pod["metadata"]["annotations"][ANN_SKIP]
    assert any("not meshed: no Linkerd trust anchors" in w for w in out.warnings)
    assert not set(names(pod)) & PROXY_NAMES
    # the same pod, with the anchors in the cluster (the ConfigMap) or in the policy
    for snap, policy in ((BASE.snapshot, parse_policy("")), (snapshot, POLICIES["linkerd"])):
        out, pod = mutated(request(BASE.review["request"]["object"]), policy, snap)
        assert out.injected
        proxy = next(c for c in pod["spec"]["initContainers"] if c["name"] == "linkerd-proxy")
        env = {e["name"]: e.get("value") for e in proxy["env"]}
        assert env["LINKERD2_PROXY_IDENTITY_TRUST_ANCHORS"].strip() == TRUST_ANCHORS.strip()
        sha = pod["metadata"]["annotations"]["linkerd.io/trust-root-sha256"]
        assert sha == trust_root_sha256(TRUST_ANCHORS)


def test_linkerd_identity_and_addresses_follow_the_policy():
    policy = anchored_policy(
        "proxy: {linkerd: {namespace: l5d, clusterDomain: corp.example, trustDomain: mesh.example}}"
    )
    _, pod = mutated(request(BASE.review["request"]["object"]), policy)
    proxy = next(c for c in pod["spec"]["initContainers"] if c["name"] == "linkerd-proxy")
    env = {e["name"]: e.get("value") for e in proxy["env"]}
    assert env["LINKERD2_PROXY_DESTINATION_SVC_ADDR"] == "linkerd-dst-headless.l5d.svc.corp.example.:8086"
    assert env["LINKERD2_PROXY_IDENTITY_SVC_NAME"] == (
        "linkerd-identity.l5d.serviceaccount.identity.l5d.mesh.example"
    )
    assert env["LINKERD2_PROXY_DESTINATION_PROFILE_SUFFIXES"] == "svc.corp.example."
    assert env["LINKERD2_PROXY_INBOUND_PORTS"] == "8080,9102"  # the pod's container ports
    labels = pod["metadata"]["labels"]
    assert labels["linkerd.io/control-plane-ns"] == "l5d"
    assert labels["linkerd.io/proxy-deployment"] == "checkout"
    assert labels["linkerd.io/workload-ns"] == "shop"


def test_istio_revision_and_address():
    policy = anchored_policy("proxy: {flavour: istio, istio: {revision: canary, trustDomain: corp.example}}")
    _, pod = mutated(request(BASE.review["request"]["object"]), policy)
    proxy = next(c for c in pod["spec"]["initContainers"] if c["name"] == "istio-proxy")
    env = {e["name"]: e.get("value") for e in proxy["env"]}
    assert env["CA_ADDR"] == "istiod-canary.istio-system.svc:15012"
    assert env["TRUST_DOMAIN"] == env["ISTIO_META_MESH_ID"] == "corp.example"
    status = json.loads(pod["metadata"]["annotations"]["sidecar.istio.io/status"])
    assert status["revision"] == "canary" and status["initContainers"] == ["istio-init", "istio-proxy"]
    assert pod["metadata"]["annotations"]["istio.io/rev"] == "canary"


def test_istio_merges_the_pods_own_prometheus_scraping_into_the_agent():
    """As Istio does: Prometheus is pointed at the agent (one port under STRICT mTLS), the
    app's own settings (any spelling Prometheus reads as the same label) go to the agent,
    and a re-injection starts from the pod's own values again."""
    obj = BASE.review["request"]["object"]
    mine = {"prometheus.io/scrape": "true", "prometheus.io/port": "9102", "prometheus.io.path": "/stats"}
    _, pod = mutated(request(obj, mine), POLICIES["istio"])
    annotations = pod["metadata"]["annotations"]
    assert (annotations["prometheus.io/port"], annotations["prometheus.io/path"]) == (
        "15020",
        "/stats/prometheus",
    )
    assert "prometheus.io.path" not in annotations, "the other spelling would compete for the same label"
    proxy = next(c for c in pod["spec"]["initContainers"] if c["name"] == "istio-proxy")
    env = {e["name"]: e.get("value") for e in proxy["env"]}
    assert json.loads(env["ISTIO_PROMETHEUS_ANNOTATIONS"]) == {
        "scrape": "true",
        "path": "/stats",
        "port": "9102",
    }
    status = read_status(pod)
    assert status is not None
    assert status["replaced"] == {"annotations": {"prometheus.io/port": "9102"}}
    assert status["removed"] == {"annotations": {"prometheus.io.path": "/stats"}}
    # injected again with the linkerd flavour: the pod's own scraping comes back as it was
    _, again = mutated(request(pod), POLICIES["linkerd"])
    back = again["metadata"]["annotations"]
    assert {k: back.get(k) for k in (*mine, "prometheus.io/path")} == {**mine, "prometheus.io/path": None}


@pytest.mark.parametrize(
    "mine",
    [
        {"prometheus.io/scrape": "false"},
        {"prometheus.io.scrape": "false"},
        {"prometheus.istio.io/merge-metrics": "false"},
    ],
)
def test_istio_leaves_scraping_alone_where_the_pod_turns_it_or_the_merge_off(mine):
    obj = BASE.review["request"]["object"]
    _, pod = mutated(request(obj, mine), POLICIES["istio"])
    annotations = pod["metadata"]["annotations"]
    assert {k: annotations.get(k) for k in mine} == mine, "the pod's own settings stay"
    assert "prometheus.io/port" not in annotations and "prometheus.io/path" not in annotations
    proxy = next(c for c in pod["spec"]["initContainers"] if c["name"] == "istio-proxy")
    assert "ISTIO_PROMETHEUS_ANNOTATIONS" not in {e["name"] for e in proxy["env"]}


@pytest.mark.parametrize(
    ("flavour", "port", "needle"),
    [("istio", 15021, "15021"), ("linkerd", 4190, "4190"), ("generic", 4143, "4143")],
)
def test_a_port_the_flavours_proxy_needs_is_a_conflict(flavour, port, needle):
    obj = copy.deepcopy(BASE.review["request"]["object"])
    obj["spec"]["containers"][0]["ports"].append({"containerPort": port})
    out = admit(request(obj), BASE.snapshot, POLICIES[flavour])
    assert out.skip is not None and out.skip.value == "proxy-port-conflict"
    assert f"uses port {needle}, which the {flavour} proxy needs" in out.explanation[0]


@pytest.mark.parametrize("flavour", list(FLAVOURS))
def test_a_job_on_legacy_placement_is_told_how_to_stop_the_proxy(flavour):
    obj = copy.deepcopy(BASE.review["request"]["object"])
    obj["spec"]["restartPolicy"] = "Never"
    out, pod = mutated(request(obj, {"mesh-injector.io/native-sidecar": "false"}), POLICIES[flavour])
    how = {"linkerd": "linkerd-await --shutdown", "istio": "/quitquitquit", "generic": "POST /shutdown"}
    assert any(how[flavour] in w for w in out.warnings), out.warnings
    if flavour == "linkerd":
        proxy = pod["spec"]["containers"][0]
        env = {e["name"]: e.get("value") for e in proxy["env"]}
        assert env["LINKERD2_PROXY_SHUTDOWN_ENDPOINT_ENABLED"] == "true"


def test_generic_needs_its_images_named():
    with pytest.raises(PolicyError, match=r"proxy.image: required with proxy.flavour: generic"):
        parse_policy("proxy: {flavour: generic}")
    with pytest.raises(PolicyError, match=r"proxy.flavour: 'envoy' is not allowed"):
        parse_policy("proxy: {flavour: envoy}")
    with pytest.raises(PolicyError, match=r"trustAnchorsPem: expected PEM"):
        parse_policy("proxy: {linkerd: {trustAnchorsPem: nope}}")


def test_policy_check_explains_the_flavour(tmp_path):
    def check(text):
        path = tmp_path / "p.yaml"
        path.write_text(text)
        out = subprocess.run(
            [sys.executable, "-m", "webhook", "policy", "check", str(path)],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert out.returncode == 0, out.stderr
        return out.stdout

    text = check("")
    assert "the version and settings of the control plane (ConfigMap linkerd/linkerd-config" in text
    assert "without it Linkerd 2.20: cr.l5d.io/linkerd/proxy:edge-26.6.3" in text
    assert "ConfigMap linkerd/linkerd-identity-trust-roots" in text
    assert "linkerd-init cr.l5d.io/linkerd/proxy:edge-26.6.3 (/usr/lib/linkerd/linkerd2-proxy-init)" in text
    text = check('proxy: {linkerd: {version: "2.16"}}')
    assert "without it Linkerd 2.16: cr.l5d.io/linkerd/proxy:edge-24.8.2" in text
    assert "linkerd-init cr.l5d.io/linkerd/proxy-init:v2.4.1" in text
    text = check("proxy: {flavour: istio, istio: {revision: canary}}")
    assert "istiod: istiod-canary.istio-system.svc:15012 (revision canary)" in text
    assert (
        "mesh config: defaultConfig and trustDomain from ConfigMap istio-system/istio-canary, key mesh"
        in text
    )
    text = check(ANCHORS_POLICY.read_text() + "interception: {iptables: {cniInstallsRules: true}}\n")
    assert "trust anchors from the policy" in text and "linkerd-network-validator" in text
    text = check("proxy: {flavour: generic, image: reg/p:1, initImage: reg/i:1}")
    assert "mesh-proxy reg/p:1" in text and "mesh-init reg/i:1" in text


def test_decision_and_explanation_name_the_flavour():
    for name, policy in POLICIES.items():
        out, pod = mutated(request(BASE.review["request"]["object"]), policy)
        assert out.explanation[0].startswith(f"decision: meshed, {name} proxy")
        assert pod["metadata"]["annotations"]["mesh-injector.io/decision"].startswith(f"{name} proxy; mode")
        assert read_status(pod)["flavour"] == name


def test_istio_takes_over_the_app_probes_and_lists_the_originals():
    """As Istio's injector does (rewriteAppHTTPProbe): kubelet's probes would be refused by
    the sidecar under STRICT mTLS, so they ask the agent on 15020, which runs the original
    checks listed in ISTIO_KUBE_APP_PROBERS (named ports resolved, HTTPS kept there)."""
    original = with_probes(BASE.review["request"]["object"])
    out, pod = mutated(request(original), POLICIES["istio"])
    app = next(c for c in pod["spec"]["containers"] if c["name"] == "app")
    assert app["readinessProbe"] == {
        "httpGet": {"path": "/app-health/app/readyz", "port": 15020, "scheme": "HTTP"},
        "periodSeconds": 5,
        "timeoutSeconds": 2,
    }
    assert app["livenessProbe"] == {
        "httpGet": {"path": "/app-health/app/livez", "port": 15020},
        "initialDelaySeconds": 3,
    }
    assert app["startupProbe"] == {
        "httpGet": {"path": "/app-health/app/startupz", "port": 15020},
        "failureThreshold": 30,
    }
    proxy = next(c for c in pod["spec"]["initContainers"] if c["name"] == "istio-proxy")
    env = {e["name"]: e.get("value") for e in proxy["env"]}
    assert env["ISTIO_KUBE_APP_PROBERS"] == (
        '{"/app-health/app/livez":{"tcpSocket":{"port":8443}},'
        '"/app-health/app/readyz":{"httpGet":{"path":"/ready","port":8443,"scheme":"HTTPS"},'
        '"timeoutSeconds":2},'
        '"/app-health/app/startupz":{"grpc":{"port":9090}}}'
    )
    original_app = original["spec"]["containers"][0]
    assert read_status(pod)["probes"] == {
        "app": {f: original_app[f] for f in ("readinessProbe", "livenessProbe", "startupProbe")}
    }
    assert any(line.startswith("probes: the istio agent runs them") for line in out.explanation)
    validate_k8s(pod)
    again, _ = mutated(request(pod), POLICIES["istio"])
    assert again.patch == []


@pytest.mark.parametrize(
    ("annotation", "policy"),
    [
        ("false", "proxy: {flavour: istio}"),
        (None, "proxy: {flavour: istio, istio: {rewriteAppProbes: false}}"),
    ],
    ids=["pod-annotation", "policy"],
)
def test_istio_probe_rewrite_can_be_turned_off(annotation, policy):
    original = with_probes(BASE.review["request"]["object"])
    extra = {"sidecar.istio.io/rewriteAppHTTPProbers": annotation} if annotation else None
    _, pod = mutated(request(original, extra), anchored_policy(policy))
    app = next(c for c in pod["spec"]["containers"] if c["name"] == "app")
    for field in ("readinessProbe", "livenessProbe", "startupProbe"):
        assert app[field] == original["spec"]["containers"][0][field]
    proxy = next(c for c in pod["spec"]["initContainers"] if c["name"] == "istio-proxy")
    assert "ISTIO_KUBE_APP_PROBERS" not in {e["name"] for e in proxy["env"]}
    assert "probes" not in read_status(pod)


def test_a_probe_on_a_port_name_the_container_lacks_is_left_alone():
    original = with_probes(BASE.review["request"]["object"])
    original["spec"]["containers"][0]["readinessProbe"]["httpGet"]["port"] = "admin"
    _, pod = mutated(request(original), POLICIES["istio"])
    app = next(c for c in pod["spec"]["containers"] if c["name"] == "app")
    assert app["readinessProbe"] == original["spec"]["containers"][0]["readinessProbe"]
    assert app["livenessProbe"]["httpGet"]["port"] == 15020
    assert set(read_status(pod)["probes"]["app"]) == {"livenessProbe", "startupProbe"}


@pytest.mark.parametrize("key", ["includeOutboundIPRanges", "includeInboundPorts", "includeOutboundPorts"])
def test_an_include_list_merbridge_would_cut_rules_ebpf_out(key):
    """Merbridge reads the pod's include lists itself and keeps 20 items of each: with 21,
    ebpf is not chosen (the 21st would silently not be redirected)."""
    many = (
        ",".join(f"10.{i}.0.0/16" for i in range(21))
        if "Ranges" in key
        else ",".join(map(str, range(8000, 8021)))
    )
    obj = copy.deepcopy(EBPF.review["request"]["object"])
    obj["metadata"]["annotations"].pop("mesh-injector.io/interception", None)
    out = admit(request(obj), EBPF.snapshot, POLICIES["linkerd"])
    assert out.injected and out.pod["metadata"]["labels"]["mesh-injector.io/interception"] == "ebpf"
    out = admit(request(obj, {f"traffic.sidecar.istio.io/{key}": many}), EBPF.snapshot, POLICIES["linkerd"])
    assert out.injected and out.pod["metadata"]["labels"]["mesh-injector.io/interception"] == "iptables"
    why = "\n".join(out.detail().explanation)
    assert f"traffic.sidecar.istio.io/{key} lists 21 items; Merbridge keeps the first 20" in why
    few = ",".join(many.split(",")[:20])
    out = admit(request(obj, {f"traffic.sidecar.istio.io/{key}": few}), EBPF.snapshot, POLICIES["linkerd"])
    assert out.pod["metadata"]["labels"]["mesh-injector.io/interception"] == "ebpf"
