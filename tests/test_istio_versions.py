"""The ``istio`` flavour follows the installed istiod: the version and settings come from its
``istio-sidecar-injector`` ConfigMap (of the revision the pod joins), the policy overrides
only what it sets, a version outside those rendered is said so (newer: the newest shape;
older: not meshed), bad input in the ConfigMap is a warning and never an error, and
Istio's proxyless gRPC template gets the agent alone.

The clusters are ``tests/golden/clusters/istio-*.yaml``: each version's chart values as
released (1.23.2, 1.28.2 with a 1.30.3 canary revision, 1.30.3 with native nftables), and a
cluster of broken ConfigMaps (``istio-edge.yaml``).
"""

from __future__ import annotations

import copy
import json
import time
from typing import Any

import jsonpatch
import pytest
import yaml

from tests.support import GOLDEN, anchored_policy, with_object
from webhook.admission import admit
from webhook.cluster.snapshot import ClusterSnapshot, snapshot_from_objects
from webhook.core import ANN_STATUS
from webhook.dataplane import istio, istioinjector
from webhook.dataplane.base import Build
from webhook.decide.control import connect
from webhook.loading import load_snapshot
from webhook.policy import PolicyError
from webhook.reasons import Mode
from webhook.versions import KubeVersion

NOW = time.time()


def _policy(text: str = ""):
    return anchored_policy(f"proxy: {{flavour: istio, istio: {{{text}}}}}")


ISTIO = _policy()
EDGE_REVISIONS = "revisions: [newer, older, broken, latest, dev, digest, notag]"


def snapshot(name: str, policy=ISTIO) -> ClusterSnapshot:
    return load_snapshot(policy=policy, now=NOW, cluster=str(GOLDEN / "clusters" / f"{name}.yaml"))


def review(
    namespace: str = "shop",
    *,
    labels: dict[str, str] | None = None,
    annotations: dict[str, str] | None = None,
    containers: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": "web",
            "namespace": namespace,
            "labels": {"app": "web", **(labels or {})},
            "annotations": {"mesh-injector.io/interception": "iptables", **(annotations or {})},
        },
        "spec": {
            "containers": containers
            or [{"name": "web", "image": "web:1", "ports": [{"name": "http", "containerPort": 8080}]}]
        },
    }
    return {
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": "u1",
            "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "namespace": namespace,
            "operation": "CREATE",
            "object": pod,
        },
    }


def decide(rev: dict[str, Any], snap: ClusterSnapshot, policy=ISTIO):
    out = admit(rev["request"], snap, policy)
    pod = (
        jsonpatch.apply_patch(rev["request"]["object"], out.patch) if out.patch else rev["request"]["object"]
    )
    return out, pod


def containers(pod: dict[str, Any]) -> dict[str, dict[str, Any]]:
    spec = pod["spec"]
    return {c["name"]: c for c in [*spec.get("initContainers", []), *spec.get("containers", [])]}


def env(container: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container.get("env", [])}


def line(out) -> str:
    return next(x for x in out.explanation if x.startswith("data plane: istio"))


# --- each version, read from its own ConfigMap ---------------------------------------------


@pytest.mark.parametrize(
    ("cluster", "version", "image"),
    [
        ("istio-1.23", "1.23", "docker.io/istio/proxyv2:1.23.2"),
        ("istio-1.28", "1.28", "docker.io/istio/proxyv2:1.28.2"),
        ("istio-1.30", "1.30", "registry.istio.io/release/proxyv2:1.30.3"),
    ],
)
def test_the_pod_gets_the_version_its_control_plane_runs(cluster, version, image):
    out, pod = decide(review(), snapshot(cluster))
    assert out.injected, out.explanation
    c = containers(pod)
    assert c["istio-proxy"]["image"] == image and c["istio-init"]["image"] == image
    tag = image.rsplit(":", 1)[1]
    assert line(out).startswith(f"data plane: istio {version} ({image}; ")
    assert f"version {tag} from the control plane's image {image}, read from ConfigMap " in line(out)
    # what differs by version, as each version's injector writes it
    volumes = {v["name"] for v in pod["spec"]["volumes"]}
    assert ("istio-ca-crl" in volumes) is (version != "1.23")
    mounts = {m["name"]: m["mountPath"] for m in c["istio-proxy"]["volumeMounts"]}
    assert (mounts.get("istio-ca-crl") == "/var/run/secrets/istio/crl") is (version != "1.23")
    ref = c["istio-proxy"]["env"][7]["valueFrom"]["resourceFieldRef"]  # ISTIO_CPU_LIMIT
    assert ref == (
        {"resource": "limits.cpu", "divisor": "1"} if version == "1.30" else {"resource": "limits.cpu"}
    )
    args = c["istio-init"]["args"]
    assert ("--native-nftables" in args) is (version == "1.30")  # the 1.30 cluster sets nativeNftables


def test_without_a_control_plane_the_policys_version_is_rendered_and_the_decision_says_so():
    out, pod = decide(review(), snapshot("istio-edge"))
    assert out.injected
    assert (
        "no control plane found (ConfigMap istio-system/istio-sidecar-injector is not in the cluster state)"
        in line(out)
    )
    assert "the policy's default version 1.30 (proxy.istio.version)" in line(out)
    assert containers(pod)["istio-proxy"]["image"] == "registry.istio.io/release/proxyv2:1.30.3"
    out, pod = decide(review(), snapshot("istio-edge"), _policy("version: '1.23'"))
    assert containers(pod)["istio-proxy"]["image"] == "docker.io/istio/proxyv2:1.23.2"
    assert "istio-ca-crl" not in {v["name"] for v in pod["spec"]["volumes"]}


def test_the_default_policy_pins_no_image_and_names_the_newest_version():
    s = istio.settings(anchored_policy("proxy: {flavour: istio}"))
    assert s.image is None and s.version == "1.30" == istio.NEWEST.name
    with pytest.raises(PolicyError, match=r"proxy.istio.version: '1.25' is not one of the versions rendered"):
        _policy("version: '1.25'")
    with pytest.raises(PolicyError, match=r"proxy.istio.revisions: 'Canary!' is not a revision name"):
        _policy("revisions: ['Canary!']")


def test_the_policy_overrides_only_what_it_sets():
    snap = snapshot("istio-1.28")
    values = json.loads(snap.config_maps[("istio-system", "istio-sidecar-injector")]["values"])
    values["global"]["proxy"]["logLevel"] = "debug"
    values["global"]["multiCluster"]["clusterName"] = "east"
    values["global"]["meshID"] = "prod-mesh"
    maps = dict(snap.config_maps)
    maps[("istio-system", "istio-sidecar-injector")] = {
        **snap.config_maps[("istio-system", "istio-sidecar-injector")],
        "values": json.dumps(values),
    }
    changed = snap.derive(config_maps=maps)
    _, pod = decide(review(), changed)
    proxy = containers(pod)["istio-proxy"]
    assert "--proxyLogLevel=debug" in proxy["args"]
    assert env(proxy)["ISTIO_META_MESH_ID"] == "prod-mesh"
    # a cluster name that is set goes last, as Istio's injector moves it
    assert proxy["env"][-1] == {"name": "ISTIO_META_CLUSTER_ID", "value": "east"}
    _, pod = decide(
        review(), changed, _policy("logLevel: info, image: mirror.example.com/istio/proxyv2:1.28.2")
    )
    proxy = containers(pod)["istio-proxy"]
    assert "--proxyLogLevel=info" in proxy["args"]  # the policy's
    assert (
        proxy["image"] == containers(pod)["istio-init"]["image"] == "mirror.example.com/istio/proxyv2:1.28.2"
    )
    assert env(proxy)["ISTIO_META_MESH_ID"] == "prod-mesh"  # the control plane's: the policy sets none


# --- revisions -----------------------------------------------------------------------------


CANARY = _policy("revisions: [canary]")


def test_a_namespace_labelled_with_a_revision_gets_that_revisions_control_plane():
    out, pod = decide(review("canary-shop"), snapshot("istio-1.28", CANARY), CANARY)
    assert out.injected, out.explanation
    proxy = containers(pod)["istio-proxy"]
    assert proxy["image"] == "registry.istio.io/release/proxyv2:1.30.3"  # the canary is 1.30
    assert env(proxy)["CA_ADDR"] == "istiod-canary.istio-system.svc:15012"
    assert pod["metadata"]["annotations"]["istio.io/rev"] == "canary"
    assert json.loads(pod["metadata"]["annotations"]["sidecar.istio.io/status"])["revision"] == "canary"
    assert "revision canary; version 1.30.3" in line(out)
    assert "ConfigMap istio-system/istio-sidecar-injector-canary" in line(out)
    assert "mesh config from ConfigMap istio-system/istio-canary" in line(out)


def test_a_pods_own_revision_label_counts_where_its_namespace_names_none():
    _, pod = decide(review(labels={"istio.io/rev": "canary"}), snapshot("istio-1.28", CANARY), CANARY)
    assert containers(pod)["istio-proxy"]["image"] == "registry.istio.io/release/proxyv2:1.30.3"
    # the namespace's label wins, as Istio's revision webhooks select
    _out, pod = decide(
        review("canary-shop", labels={"istio.io/rev": "default"}), snapshot("istio-1.28", CANARY), CANARY
    )
    assert containers(pod)["istio-proxy"]["image"] == "registry.istio.io/release/proxyv2:1.30.3"


@pytest.mark.parametrize("policy", [ISTIO, CANARY], ids=["canary-not-served", "blue-not-served"])
def test_a_revision_the_policy_does_not_serve_is_not_meshed_with_a_reason(policy):
    namespace = "canary-shop" if policy is ISTIO else "blue-shop"
    out, pod = decide(review(namespace), snapshot("istio-1.28", policy), policy)
    assert not out.injected and out.skip.value == "unknown-revision"
    named = "canary" if policy is ISTIO else "blue"
    assert f"label istio.io/rev: {named} names a revision the policy does not serve" in out.explanation[0]
    assert "add it to proxy.istio.revisions" in out.explanation[0]
    assert any("pod not meshed" in w and named in w for w in out.warnings)
    assert pod["metadata"]["annotations"]["mesh-injector.io/skip-reason"].startswith(
        "the pod or its namespace names a control-plane revision"
    )


def test_serve_watches_each_served_revisions_configmaps():
    assert istio.config_maps(CANARY) == (
        ("istio-system", "istio-sidecar-injector"),
        ("istio-system", "istio"),
        ("istio-system", "istio-sidecar-injector-canary"),
        ("istio-system", "istio-canary"),
    )


# --- versions outside those rendered, and bad input ----------------------------------------


EDGE = _policy(EDGE_REVISIONS)


def _edge(revision: str):
    return decide(review(labels={"istio.io/rev": revision}), snapshot("istio-edge", EDGE), EDGE)


def test_a_newer_istiod_gets_the_newest_shape_and_a_warning_naming_both_versions():
    out, pod = _edge("newer")
    assert out.injected
    assert containers(pod)["istio-proxy"]["image"] == "docker.io/istio/proxyv2:1.31.0"
    assert line(out).startswith("data plane: istio 1.30 (docker.io/istio/proxyv2:1.31.0; ")
    assert any(
        "Istio 1.31.0 is newer than the newest version mesh-injector renders (1.30): "
        "its pods get the 1.30 shape" in w
        for w in out.warnings
    )


def test_an_older_istiod_is_not_meshed_with_a_reason_and_a_warning():
    out, _pod = _edge("older")
    assert not out.injected and out.skip.value == "unsupported-version"
    assert "Istio 1.22.5 is older than the oldest version mesh-injector renders (1.23)" in out.explanation[0]
    assert any("pod not meshed" in w and "1.22.5" in w for w in out.warnings)


def test_values_that_are_not_json_nor_yaml_are_named_and_the_policys_version_is_rendered():
    out, pod = _edge("broken")
    assert out.injected
    assert any(
        "ConfigMap istio-system/istio-sidecar-injector-broken key values is not applied: "
        "neither JSON nor YAML" in w
        for w in out.warnings
    )
    assert "istio-sidecar-injector-broken has no values, so the policy's default version 1.30" in line(out)
    assert containers(pod)["istio-proxy"]["image"] == "registry.istio.io/release/proxyv2:1.30.3"


@pytest.mark.parametrize(
    ("revision", "image", "why"),
    [
        ("latest", "docker.io/istio/proxyv2:latest", "names no version (latest)"),
        ("dev", "docker.io/istio/proxyv2:1.28-dev", "names no version (1.28-dev)"),
        (
            "digest",
            "docker.io/istio/proxyv2@sha256:4b5c3c6d1d8f0c0a2f1b8e7d6c5b4a3f2e1d0c9b8a7f6e5d4c3b2a1f0e9d8c7b",
            "has no tag",
        ),
        ("notag", "registry.example.com/istio/proxyv2", "has no tag"),
    ],
)
def test_an_image_whose_tag_names_no_version_is_used_as_written_in_the_policys_version(revision, image, why):
    out, pod = _edge(revision)
    assert out.injected, out.explanation
    assert containers(pod)["istio-proxy"]["image"] == image
    assert line(out).startswith(f"data plane: istio 1.30 ({image}; ")
    assert any(
        f"the control plane's image {image} {why}: its pods get the 1.30 shape (proxy.istio.version)" in w
        for w in out.warnings
    )


def test_values_may_be_yaml_and_a_value_of_the_wrong_type_is_named():
    text = "global:\n  tag: 1.28.2\n  hub: docker.io/istio\n  proxy:\n    readinessPeriodSeconds: often\n"
    parsed = istioinjector.parse_injector(text, None, "ConfigMap x/y")
    assert parsed.has_values and parsed.values["global"]["tag"] == "1.28.2"
    maps = {("istio-system", "istio-sidecar-injector"): {"values": text}}
    plane = istio.control_plane(maps, ISTIO)
    assert plane.version == "1.28"
    assert (
        "ConfigMap istio-system/istio-sidecar-injector key values global.proxy.readinessPeriodSeconds "
        "'often' is not applied: expected a number"
    ) in plane.warnings
    assert plane.config.readiness == (0, 15, 4)


def test_the_configmaps_are_parsed_once_per_distinct_text():
    snap = snapshot("istio-1.28")
    istio._control.cache_clear()
    for i in range(5):
        rev = review(labels={"n": str(i)})
        rev["request"]["object"]["metadata"]["name"] = f"web-{i}"
        snap.templates.clear()
        assert decide(rev, snap)[0].injected
    info = istio._control.cache_info()
    assert info.misses == 1 and info.hits == 4


# --- the firewall backend, flavour side ------------------------------------------------------


@pytest.mark.parametrize(
    ("cluster", "firewall", "firewalls"),
    [
        ("istio-1.23", "legacy", ("legacy",)),
        ("istio-1.28", "nft", ("legacy", "nft")),
        ("istio-1.30", "nft", ("legacy", "nft")),
    ],
)
def test_what_each_versions_istio_iptables_uses_and_can_be_told(cluster, firewall, firewalls):
    plane = istio.control_plane(snapshot(cluster).config_maps, ISTIO)
    assert plane.firewall == firewall and plane.firewalls == firewalls


def _render(cluster: str, firewall: str, pod: dict[str, Any] | None = None):
    snap = snapshot(cluster)
    plane = istio.control_plane(snap.config_maps, ISTIO)
    obj = pod or review()["request"]["object"]
    out = admit(review()["request"], snap, ISTIO)
    build = Build(
        mode=Mode.IPTABLES,
        native=True,
        protocol="http",
        resources=out.resources,
        init="rules",
        workload=out.workload,
        control=plane.config,
        firewall=firewall,
    )
    return istio.render(build, obj, ISTIO)


def test_the_init_container_is_told_the_backend_the_decision_chose_where_its_version_can_be():
    # 1.28 uses iptables-nft by itself in a new pod: told nothing, as Istio's injector
    args = _render("istio-1.28", "nft").inits[0]["args"]
    assert "--force-iptables-binary" not in args and "--native-nftables" not in args
    plane = _render("istio-1.28", "legacy")
    assert plane.inits[0]["args"][-2:] == ["--force-iptables-binary", "legacy"]
    assert "firewall: istio-init is told to use iptables-legacy" in plane.notes
    # 1.30 with nativeNftables: native nftables; legacy nodes get legacy iptables instead
    assert _render("istio-1.30", "nft").inits[0]["args"][-1] == "--native-nftables"
    plane = _render("istio-1.30", "legacy")
    assert "--native-nftables" not in plane.inits[0]["args"]
    assert plane.inits[0]["args"][-2:] == ["--force-iptables-binary", "legacy"]
    # 1.23's istio-iptables cannot be told: it uses legacy, and the decision says so
    plane = _render("istio-1.23", "nft")
    assert "--force-iptables-binary" not in plane.inits[0]["args"]
    assert (
        "firewall: Istio 1.23's istio-iptables cannot be told to use iptables-nft; it uses iptables-legacy"
        in plane.notes
    )


# --- native sidecars: the placement is ours, the control plane's default said -----------------


def _with_kubelets(cluster: str, kubelet: str) -> ClusterSnapshot:
    docs = yaml.safe_load((GOLDEN / "clusters" / f"{cluster}.yaml").read_text())["items"]
    for doc in docs:
        if doc["kind"] == "Node":
            doc["status"]["nodeInfo"]["kubeletVersion"] = kubelet
    return snapshot_from_objects(docs, server_version=KubeVersion(1, 34))


def _placement_notes(out) -> list[str]:
    return [x for x in out.explanation if "the control plane's own injector would" in x]


def test_where_istios_own_injector_would_place_the_proxy_differently_the_decision_says_so():
    # kubelets 1.33: Istio 1.28 would make it a native sidecar too; nothing to say
    out, pod = decide(review(), snapshot("istio-1.28"))
    assert "istio-proxy" in [c["name"] for c in pod["spec"]["initContainers"]]
    assert _placement_notes(out) == []
    # kubelets 1.31: ours is native (from 1.29), Istio 1.28's auto mode needs 1.33
    out, pod = decide(review(), _with_kubelets("istio-1.28", "v1.31.2"))
    assert "istio-proxy" in [c["name"] for c in pod["spec"]["initContainers"]]
    assert _placement_notes(out) == [
        "placement: the control plane's own injector would make the proxy a regular container here (Istio "
        "1.28's ENABLE_NATIVE_SIDECARS=auto; node ip-10-0-1-11's kubelet is v1.31.2); the placement is "
        "mesh-injector's (cluster 1.34 and every eligible kubelet (lowest 1.31) are at least 1.29)"
    ]
    # 1.23 makes it native only where istiod sets ENABLE_NATIVE_SIDECARS=true, which its
    # ConfigMap does not show
    out, _ = decide(review(), snapshot("istio-1.23"))
    (note,) = _placement_notes(out)
    assert (
        "(Istio 1.23's ENABLE_NATIVE_SIDECARS=false (its default; istiod's environment is not in the " in note
    )
    # the pod's own Istio annotation is what Istio's injector follows
    out, _ = decide(review(annotations={"sidecar.istio.io/nativeSidecar": "false"}), snapshot("istio-1.28"))
    assert "(sidecar.istio.io/nativeSidecar: false)" in _placement_notes(out)[0]


# --- templates: proxyless gRPC, and what is not rendered ------------------------------------


GRPC = {"inject.istio.io/templates": "grpc-agent"}


def test_grpc_agent_gets_the_agent_alone_and_the_app_its_bootstrap():
    rev = review(annotations={**GRPC, "mesh-injector.io/native-sidecar": "false"})
    out, pod = decide(rev, snapshot("istio-1.28"))
    assert out.injected, out.explanation
    c = containers(pod)
    assert "istio-init" not in c and "istio-validation" not in c
    agent = env(c["istio-proxy"])
    assert agent["DISABLE_ENVOY"] == "true" and agent["ISTIO_META_GENERATOR"] == "grpc"
    app = c["web"]
    assert env(app) == {
        "GRPC_XDS_EXPERIMENTAL_SECURITY_SUPPORT": "true",
        "GRPC_XDS_BOOTSTRAP": "/etc/istio/proxy/grpc-bootstrap.json",
    }
    assert {m["name"]: m["mountPath"] for m in app["volumeMounts"]} == {
        "istio-data": "/var/lib/istio/data",
        "istio-xds": "/etc/istio/proxy",
        "workload-certs": "/var/run/secrets/workload-spiffe-credentials",
    }
    annotations = pod["metadata"]["annotations"]
    assert annotations["sidecar.istio.io/rewriteAppHTTPProbers"] == "false"
    assert json.loads(annotations["sidecar.istio.io/status"])["containers"] == ["istio-proxy", "web"]
    assert any(
        "proxyless gRPC (inject.istio.io/templates: grpc-agent)" in x and "nothing is redirected" in x
        for x in out.explanation
    )
    # admitted again: nothing changes; and without the template, the app is as it was
    assert admit(with_object(rev, pod)["request"], snapshot("istio-1.28"), ISTIO).patch == []
    again = copy.deepcopy(pod)
    del again["metadata"]["annotations"]["inject.istio.io/templates"]
    _out2, plain = decide(with_object(rev, again), snapshot("istio-1.28"))
    assert containers(plain)["web"] == rev["request"]["object"]["spec"]["containers"][0]
    assert "istio-init" in containers(plain)


def test_the_apps_own_env_of_the_same_name_is_kept_and_never_taken_off():
    own = [{"name": "GRPC_XDS_BOOTSTRAP", "value": "/mine.json"}]
    rev = review(annotations=GRPC, containers=[{"name": "web", "image": "web:1", "env": own}])
    _out, pod = decide(rev, snapshot("istio-1.28"))
    assert env(containers(pod)["web"])["GRPC_XDS_BOOTSTRAP"] == "/mine.json"
    status = json.loads(pod["metadata"]["annotations"][ANN_STATUS])
    assert status["appended"]["web"]["env"] == ["GRPC_XDS_EXPERIMENTAL_SECURITY_SUPPORT"]
    again = copy.deepcopy(pod)
    del again["metadata"]["annotations"]["inject.istio.io/templates"]
    _, plain = decide(with_object(rev, again), snapshot("istio-1.28"))
    assert containers(plain)["web"]["env"] == own


@pytest.mark.parametrize(
    ("asked", "why"),
    [
        ("grpc-simple", "Istio's grpc-simple template adds no proxy"),
        ("gateway", "gateway templates are for Istio's own gateway deployments"),
        ("sidecar,grpc-agent", "only sidecar or grpc-agent, alone, are rendered"),
        ("hello", "names hello, which the control plane does not have (it has "),
    ],
)
def test_a_template_that_is_not_rendered_is_not_meshed_with_a_reason(asked, why):
    out, pod = decide(review(annotations={"inject.istio.io/templates": asked}), snapshot("istio-1.28"))
    assert not out.injected and out.skip.value == "unsupported-template"
    assert f"inject.istio.io/templates: {asked}" in out.explanation[0] and why in out.explanation[0]
    assert any("pod not meshed" in w and asked in w for w in out.warnings)
    assert "istio-proxy" not in containers(pod)


def test_an_unknown_template_without_the_control_planes_config_is_not_meshed_either():
    out, _ = decide(review(annotations={"inject.istio.io/templates": "custom"}), snapshot("istio-edge"))
    assert out.skip.value == "unsupported-template"
    assert "custom templates are not read" in out.explanation[0]


def test_connect_reads_the_pods_revision():
    snap = snapshot("istio-1.28", CANARY)
    rev = review("canary-shop")["request"]["object"]
    from webhook.core import Notes
    from webhook.dataplane import flavour

    got = connect(flavour("istio"), rev, "canary-shop", {}, snap, CANARY, Notes())
    assert got.control.config.revision == "canary"


@pytest.mark.parametrize(
    ("values", "config"),
    [
        ("[1, 2]", None),
        ('"just text"', None),
        ('{"global": 5}', None),
        ('{"global": {"proxy": "x", "tag": {"a": 1}, "hub": ["r"]}}', None),
        ('{"global": {"tag": true, "proxy": {"readinessPeriodSeconds": -1.5, "statusPort": "x"}}}', None),
        ('{"pilot": {"env": "x", "cni": 7}, "sidecarInjectorWebhook": []}', None),
        ('{"global": {"tag": "1.28.2", "proxy": {"seccompProfile": "RuntimeDefault"}}}', "templates: 5"),
        (
            '{"global": {"tag": "1.28.2"}}',
            "defaultTemplates: x\ninjectedAnnotations: [1]\nneverInjectSelector: 3",
        ),
        ('{"global": {"tag": "1.28.2"}}', ": not: yaml: ["),
        ("", ""),
        ("\x00\xff", "\x00"),
    ],
)
def test_a_malformed_injector_configmap_is_named_never_an_error(values, config):
    """Whatever istiod's ConfigMap holds, the pod is decided: meshed with what can be read
    (the rest named in warnings) or not meshed with a reason, never an internal error."""
    data = {"values": values} if config is None else {"values": values, "config": config}
    snap = snapshot("istio-edge").derive(config_maps={("istio-system", "istio-sidecar-injector"): data})
    out, pod = decide(review(), snap)
    assert out.injected or out.skip is not None, out.explanation
    if out.injected:
        assert containers(pod)["istio-proxy"]["image"]
        assert line(out).startswith("data plane: istio ")
    assert admit(with_object(review(), pod)["request"], snap, ISTIO).patch == []


def test_a_value_of_the_wrong_type_is_named_once():
    data = {"values": '{"global": {"tag": true}}'}
    snap = snapshot("istio-edge").derive(config_maps={("istio-system", "istio-sidecar-injector"): data})
    out, _ = decide(review(), snap)
    named = [w for w in out.warnings if "global.tag True is not applied: expected a string" in w]
    assert len(named) == 1, out.warnings
