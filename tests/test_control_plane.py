"""What a flavour reads of its mesh's control plane in the cluster: Istio's mesh config
(the revision's ConfigMap, rendered into PROXY_CONFIG as istiod's injector renders it, with
a pod's proxy.istio.io/config over it) and the config.linkerd.io annotations a pod inherits
from its namespace."""

from __future__ import annotations

import copy
import json

import jsonpatch
import pytest

from tests.support import CASES, anchored_policy, load_case, validate_k8s
from webhook.admission import admit
from webhook.cluster.snapshot import ClusterSnapshot
from webhook.dataplane import istiomesh
from webhook.dataplane.istiomesh import cleaned, duration, merged, parse_mesh, proxy_fields

CASE = load_case(next(p for p in CASES if p.name == "134-istio-mesh-config"))
LINKERD = load_case(next(p for p in CASES if p.name == "135-linkerd-namespace-config"))
ISTIO = anchored_policy("proxy: {flavour: istio, istio: {revision: prod}}")
MESH = ("istio-system", "istio-prod")


def _request(case=CASE, annotations=None, namespace=None):
    req = copy.deepcopy(case.review["request"])
    obj = req["object"]
    if annotations is not None:
        obj["metadata"]["annotations"] = annotations
    if namespace is not None:
        req["namespace"] = obj["metadata"]["namespace"] = namespace
    return req


def _proxy(pod):
    spec = pod["spec"]
    return next(
        c for c in [*spec.get("initContainers", []), *spec["containers"]] if c["name"] == "istio-proxy"
    )


def _env(container, name):
    return next((e.get("value") for e in container.get("env", []) if e["name"] == name), None)


def _with_mesh(text: str | None) -> ClusterSnapshot:
    maps = dict(CASE.snapshot.config_maps)
    if text is None:
        maps.pop(MESH)
    else:
        maps[MESH] = {"mesh": text}
    return CASE.snapshot.derive(config_maps=maps)


def _admit(req, snapshot=CASE.snapshot, policy=ISTIO):
    out = admit(req, snapshot, policy)
    assert out.injected, out.skip
    return out, jsonpatch.apply_patch(req["object"], out.patch)


@pytest.mark.parametrize(
    ("text", "want"),
    [
        ("45s", "45s"),
        ("1.5s", "1.500s"),
        ("0.0001s", "0.000100s"),
        ("2.000000001s", "2.000000001s"),
        ("-3s", "-3s"),
    ],
)
def test_durations_are_written_as_protobuf_json_writes_them(text, want):
    assert duration(text) == want


@pytest.mark.parametrize("text", ["1m", "45", 45, "1.5 s", "s", "1.1234567891s", None])
def test_what_is_not_a_duration_in_seconds_is_refused(text):
    assert duration(text) is None


def test_defaults_and_zero_values_are_left_out_and_fields_are_in_message_order():
    fields, warnings = proxy_fields(
        {
            "proxyMetadata": {"B": "2", "A": "1"},
            "holdApplicationUntilProxyStarts": False,
            "drain_duration": "45s",  # the proto's own name is read too
            "controlPlaneAuthPolicy": "MUTUAL_TLS",
            "interceptionMode": "REDIRECT",
            "statusPort": 15020,
            "extraStatTags": [],
            "concurrency": 0,
            "discoveryAddress": "istiod.istio-system.svc:15012",
            "meshId": "m1",
        },
        "test",
    )
    assert warnings == []
    out = cleaned(fields)
    # concurrency 0 (every core) and hold false are wrapped values: written as given
    assert list(out) == ["concurrency", "proxyMetadata", "meshId", "holdApplicationUntilProxyStarts"]
    assert out["proxyMetadata"] == {"A": "1", "B": "2"} and list(out["proxyMetadata"]) == ["A", "B"]


def test_each_field_that_is_not_applied_is_named_with_the_reason():
    fields, warnings = proxy_fields(
        {
            "statusPort": 15030,
            "proxyAdminPort": 15000,  # the default: nothing to say
            "interceptionMode": "TPROXY",
            "image": {"imageType": "distroless"},
            "drainDuration": "1m",
            "proxyMetadata": {"DNS": True},
            "noSuchField": 1,
            "concurrency": "2",
        },
        "where",
    )
    assert fields == {"proxyAdminPort": 15000}
    text = "\n".join(warnings)
    for name, why in [
        ("statusPort", "status port is 15020"),
        ("interceptionMode", "REDIRECT"),
        ("image", "proxy.istio.image"),
        ("drainDuration", "a duration in seconds"),
        ("proxyMetadata", "quoted strings"),
        ("noSuchField", "not a ProxyConfig field"),
        ("concurrency", "an integer"),
    ]:
        assert any(w.startswith(f"where: {name} ") and why in w for w in warnings), (name, text)
    assert len(warnings) == 7


def test_the_pods_fields_replace_the_meshs_whole_but_metadata_and_headers_merge():
    base = {
        "tracing": {"zipkin": {"address": "z:9411"}},
        "proxyMetadata": {"A": "1", "B": "1"},
        "proxyHeaders": {"server": {"disabled": True}},
    }
    pod = {
        "tracing": {"sampling": 5},
        "proxyMetadata": {"B": "2"},
        "proxyHeaders": {"requestId": {"disabled": True}},
    }
    out = merged(base, pod)
    assert out["tracing"] == {"sampling": 5}
    assert out["proxyMetadata"] == {"A": "1", "B": "2"}
    assert out["proxyHeaders"] == {"server": {"disabled": True}, "requestId": {"disabled": True}}


def test_a_broken_mesh_config_is_named_and_the_policys_values_are_used():
    out, pod = _admit(_request(), _with_mesh("defaultConfig: [unclosed"))
    assert any(
        "ConfigMap istio-system/istio-prod key mesh is not applied: not YAML" in w for w in out.warnings
    )
    proxy = _proxy(pod)
    # the revision's istiod (from the policy) and the pod's own fields; nothing of the mesh's
    assert json.loads(_env(proxy, "PROXY_CONFIG")) == {
        "discoveryAddress": "istiod-prod.istio-system.svc:15012",
        "concurrency": 1,
        "proxyMetadata": {"ORDERS_FEATURE": "on"},
        "terminationDrainDuration": "30s",
    }
    assert _env(proxy, "TRUST_DOMAIN") == "cluster.local"


def test_without_the_revisions_configmap_the_decision_says_so():
    out = admit(_request(), _with_mesh(None), ISTIO)
    assert out.injected
    why = "\n".join(out.detail().explanation)
    assert "no mesh config: ConfigMap istio-system/istio-prod not found" in why
    proxy = _proxy(out.pod)
    assert _env(proxy, "TRUST_DOMAIN") == "cluster.local"
    assert _env(proxy, "ISTIO_META_DNS_CAPTURE") is None


def test_the_mesh_config_gives_the_trust_domain_metadata_and_mesh_id():
    _out, pod = _admit(_request(annotations={"mesh-injector.io/interception": "iptables"}))
    proxy = _proxy(pod)
    assert _env(proxy, "TRUST_DOMAIN") == "prod.example.com"
    assert _env(proxy, "ISTIO_META_MESH_ID") == "prod.example.com"
    assert _env(proxy, "ISTIO_META_DNS_CAPTURE") == "true"
    init = next(c for c in pod["spec"]["initContainers"] if c["name"] == "istio-init")
    assert _env(init, "ISTIO_META_DNS_CAPTURE") == "true"  # istio-iptables reads it (DNS capture)
    config = json.loads(_env(proxy, "PROXY_CONFIG"))
    assert config["tracing"] == {"zipkin": {"address": "zipkin.istio-system:9411"}}
    assert config["terminationDrainDuration"] == "20s"
    assert "drainDuration" not in config and "statusPort" not in config
    validate_k8s(pod)


def test_the_pods_concurrency_wins_and_ours_replaces_the_meshs():
    own = {"mesh-injector.io/interception": "iptables", istiomesh.POD_ANNOTATION: "concurrency: 4"}
    out, pod = _admit(_request(annotations=own))
    assert json.loads(_env(_proxy(pod), "PROXY_CONFIG"))["concurrency"] == 4
    assert any(
        "4 Envoy worker(s) (concurrency), from proxy.istio.io/config" in line
        for line in out.detail().explanation
    )
    out, pod = _admit(_request(annotations={"mesh-injector.io/interception": "iptables"}))
    assert json.loads(_env(_proxy(pod), "PROXY_CONFIG"))["concurrency"] == 1
    assert any("(instead of the mesh's defaultConfig 2)" in line for line in out.detail().explanation)


def test_legacy_placement_holds_the_app_whatever_the_config_says():
    own = {
        "mesh-injector.io/interception": "iptables",
        "mesh-injector.io/native-sidecar": "false",
        istiomesh.POD_ANNOTATION: "holdApplicationUntilProxyStarts: false",
    }
    out, pod = _admit(_request(annotations=own))
    assert pod["spec"]["containers"][0]["name"] == "istio-proxy"
    assert json.loads(_env(_proxy(pod), "PROXY_CONFIG"))["holdApplicationUntilProxyStarts"] is True
    assert any("holdApplicationUntilProxyStarts false is not applied" in w for w in out.warnings)


def test_a_pod_config_that_is_not_yaml_is_named():
    own = {"mesh-injector.io/interception": "iptables", istiomesh.POD_ANNOTATION: "{concurrency: [1"}
    out, _ = _admit(_request(annotations=own))
    assert any(
        w.startswith("mesh-injector: proxy.istio.io/config is not applied: not YAML") for w in out.warnings
    )


def test_a_mesh_text_is_parsed_once():
    text = "defaultConfig: {meshId: once}\n"
    assert parse_mesh(text, "w") is parse_mesh(text, "w")


def test_reinjection_after_the_mesh_config_changed_follows_it():
    """A stored pod re-admitted (as a controller's copy would be) takes the current mesh
    config, with nothing of the earlier one left."""
    _out, pod = _admit(_request())
    stored = {**_request(), "object": pod}
    changed = _with_mesh("defaultConfig:\n  tracing: {sampling: 1}\ntrustDomain: new.example.com\n")
    again, repod = _admit(stored, changed)
    assert again.patch
    proxy = _proxy(repod)
    assert _env(proxy, "TRUST_DOMAIN") == "new.example.com"
    assert _env(proxy, "ISTIO_META_DNS_CAPTURE") is None
    assert json.loads(_env(proxy, "PROXY_CONFIG"))["tracing"] == {"sampling": 1}
    fresh = admit(_request(), changed, ISTIO)
    assert _proxy(repod) == _proxy(fresh.pod)


# --- Linkerd: what a pod inherits from its namespace ------------------------------------


def test_the_namespaces_config_is_inherited_the_pods_own_wins():
    req = _request(LINKERD)
    out = admit(req, LINKERD.snapshot, LINKERD.policy)
    annotations = out.pod["metadata"]["annotations"]
    assert annotations["config.linkerd.io/proxy-log-level"] == "info"  # the pod's own
    assert annotations["config.linkerd.io/skip-outbound-ports"] == "5432"
    assert "kubectl.kubernetes.io/last-applied-configuration" not in annotations
    status = json.loads(annotations["mesh-injector.io/status"])
    assert "config.linkerd.io/proxy-log-level" not in status["annotations"]
    assert "config.linkerd.io/skip-outbound-ports" in status["annotations"]


def test_an_inherited_annotation_follows_the_namespace_on_reinjection():
    req = _request(LINKERD)
    out = admit(req, LINKERD.snapshot, LINKERD.policy)
    stored = {**req, "object": out.pod}
    ns = dict(LINKERD.snapshot.namespace_annotations)
    ns["tuned"] = {"config.linkerd.io/skip-outbound-ports": "3306"}
    changed = LINKERD.snapshot.derive(namespace_annotations=ns)
    again = admit(stored, changed, LINKERD.policy)
    pod = jsonpatch.apply_patch(out.pod, again.patch)
    annotations = pod["metadata"]["annotations"]
    assert annotations["config.linkerd.io/skip-outbound-ports"] == "3306"
    assert "config.linkerd.io/opaque-ports" not in annotations  # no longer the namespace's
    init = next(c for c in pod["spec"]["initContainers"] if c["name"] == "linkerd-init")
    ignored = init["args"][init["args"].index("--outbound-ports-to-ignore") + 1]
    assert "3306" in ignored and "5432" not in ignored


def test_other_flavours_inherit_nothing():
    req = _request(LINKERD)
    policy = anchored_policy("proxy: {flavour: generic, image: reg/proxy:1, initImage: reg/init:1}")
    out = admit(req, LINKERD.snapshot, policy)
    assert out.injected
    annotations = out.pod["metadata"]["annotations"]
    assert "config.linkerd.io/opaque-ports" not in annotations
