"""The linkerd flavour follows the installed control plane: which Linkerd it is (its
``linkerd-config``'s ``linkerdVersion``), what it is configured to do (the chart's values in
that ConfigMap), with the policy over it; and what happens when that ConfigMap is missing,
broken, or names a version mesh-injector does not render.

The expectations are written from Linkerd's release history (which edge release each
``version-2.X`` tag is) and its chart templates, not computed by the flavour.
"""

from __future__ import annotations

import copy
import json
import time
from typing import Any

import jsonpatch
import pytest
import yaml

from tests.support import GOLDEN, TRUST_ANCHORS, validate_k8s
from webhook.admission import admit
from webhook.cluster.snapshot import ClusterSnapshot
from webhook.dataplane import linkerdcontrol
from webhook.loading import load_snapshot, parse_policy
from webhook.policy import PolicyError

POLICY = parse_policy("", "test")
CLUSTER = GOLDEN / "clusters" / "linkerd-2.20.yaml"
CONFIG = ("linkerd", "linkerd-config")


def _base() -> ClusterSnapshot:
    return load_snapshot(policy=POLICY, now=time.time(), cluster=str(CLUSTER))


BASE = _base()


def values_220() -> dict[str, Any]:
    return yaml.safe_load(BASE.config_maps[CONFIG]["values"])


def snapshot(values: Any = None, *, text: str | None = None, present: bool = True) -> ClusterSnapshot:
    """The 2.20 cluster with linkerd-config's values replaced (or the ConfigMap removed)."""
    maps = dict(BASE.config_maps)
    if not present:
        maps.pop(CONFIG)
    else:
        maps[CONFIG] = {"values": text if text is not None else yaml.safe_dump(values)}
    return BASE.derive(config_maps=maps)


def with_values(**changes: Any) -> dict[str, Any]:
    """The 2.20 values with dotted paths set."""
    values = values_220()
    for path, value in changes.items():
        *parents, last = path.split("__")
        node = values
        for part in parents:
            node = node.setdefault(part, {})
        node[last] = value
    return values


def request(annotations: dict[str, str] | None = None, namespace: str = "shop") -> dict[str, Any]:
    obj = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": "web-1",
            "namespace": namespace,
            "labels": {"app": "web"},
            "annotations": {"mesh-injector.io/interception": "iptables", **(annotations or {})},
        },
        "spec": {
            "serviceAccountName": "web",
            "containers": [
                {"name": "web", "image": "registry.example.com/web:1", "ports": [{"containerPort": 8080}]}
            ],
        },
    }
    return {
        "uid": "u1",
        "kind": {"group": "", "version": "v1", "kind": "Pod"},
        "resource": {"group": "", "version": "v1", "resource": "pods"},
        "namespace": namespace,
        "operation": "CREATE",
        "object": obj,
    }


def meshed(snap: ClusterSnapshot, policy=POLICY, annotations=None, namespace="shop"):
    out = admit(request(annotations, namespace), snap, policy)
    assert out.injected, out.explanation
    pod = jsonpatch.apply_patch(request(annotations, namespace)["object"], out.patch)
    validate_k8s(pod)
    return out, pod


def container(pod: dict[str, Any], name: str) -> dict[str, Any]:
    spec = pod["spec"]
    return next(c for c in [*spec.get("initContainers", []), *spec["containers"]] if c["name"] == name)


def env(pod: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container(pod, "linkerd-proxy")["env"]}


def arg(pod: dict[str, Any], flag: str) -> str | None:
    args = container(pod, "linkerd-init")["args"]
    return args[args.index(flag) + 1] if flag in args else None


# --- which table a version string is rendered with --------------------------------------


@pytest.mark.parametrize(
    ("text", "line"),
    [
        # the last edge release of each version is its version-2.X tag
        ("edge-24.2.4", "2.15"),
        ("edge-24.2.5", "2.16"),
        ("edge-24.8.2", "2.16"),
        ("edge-24.8.3", "2.17"),
        ("edge-24.11.8", "2.17"),
        ("edge-25.4.4", "2.18"),
        ("edge-25.4.5", "2.19"),
        ("edge-25.10.7", "2.19"),
        ("edge-25.11.1", "2.20"),
        ("edge-26.6.3", "2.20"),
        ("edge-26.7.1", "2.21"),
        ("stable-2.14.10", "2.14"),
        ("2.19.3", "2.19"),
        ("v2.20.0", "2.20"),
        ("version-2.19", "2.19"),
        ("enterprise-2.19.1", "2.19"),
        (" 2.16 ", "2.16"),
    ],
)
def test_version_strings_name_their_linkerd_version(text: str, line: str) -> None:
    version = linkerdcontrol.parse_version(text)
    assert version is not None and version.name == line


@pytest.mark.parametrize(
    "text", ["linkerdVersionValue", "latest", "", "edge-25.13", "edge-x", "dev-undefined", None, 219]
)
def test_what_is_not_a_version_is_none(text: object) -> None:
    assert linkerdcontrol.parse_version(text) is None


@pytest.mark.parametrize(
    ("text", "table", "warned"),
    [
        ("edge-24.8.2", "2.16", False),
        ("stable-2.16.1", "2.16", False),
        ("edge-24.11.8", "2.16", True),  # 2.17: between known versions, the older one's shape
        ("2.18.0", "2.16", True),
        ("edge-25.10.7", "2.19", False),
        ("edge-25.11.3", "2.19", True),  # a 2.20 pre-release, before its shape was complete
        ("edge-26.5.1", "2.19", True),
        ("edge-26.5.2", "2.20", False),  # native sidecars on by default: 2.20's shape
        ("edge-26.6.3", "2.20", False),
        ("2.20.1", "2.20", False),
        ("edge-26.8.1", "2.20", True),  # newer than any known: the newest shape
        ("2.21.0", "2.20", True),
    ],
)
def test_each_version_is_rendered_with_the_right_table(text: str, table: str, warned: bool) -> None:
    version = linkerdcontrol.parse_version(text)
    assert version is not None
    release, why = linkerdcontrol.release_for(version)
    assert release is not None and release.version == table
    assert (why is not None) is warned


def test_a_pre_release_edge_is_said_to_be_one():
    release, why = linkerdcontrol.release_for(linkerdcontrol.parse_version("edge-26.3.1"))
    assert release is not None and release.version == "2.19"
    assert why == (
        "Linkerd 2.20 (edge-26.3.1) is an edge release of the 2.20 line from before its injector rendered "
        "pods as 2.20 does (edge-26.5.2); the pod is rendered as Linkerd 2.19"
    )


@pytest.mark.parametrize("text", ["stable-2.14.10", "edge-24.2.4", "2.15.2", "edge-23.11.1"])
def test_a_version_older_than_any_known_has_no_table(text: str) -> None:
    version = linkerdcontrol.parse_version(text)
    assert version is not None
    release, why = linkerdcontrol.release_for(version)
    assert release is None and why is not None and "older than the oldest version" in why and "2.16" in why


# --- each version, as its own injector renders it ----------------------------------------


@pytest.mark.parametrize(
    ("version", "image", "init_image", "command", "nft", "pod_env", "native"),
    [
        ("2.16", "proxy:edge-24.8.2", "proxy-init:v2.4.1", None, False, False, False),
        ("2.19", "proxy:edge-25.10.7", "proxy-init:v2.4.3", None, True, True, False),
        (
            "2.20",
            "proxy:edge-26.6.3",
            "proxy:edge-26.6.3",
            ["/usr/lib/linkerd/linkerd2-proxy-init"],
            True,
            True,
            True,
        ),
    ],
)
def test_each_version_s_control_plane_gives_its_own_shape(
    version, image, init_image, command, nft, pod_env, native
):
    snap = load_snapshot(
        policy=POLICY, now=time.time(), cluster=str(GOLDEN / "clusters" / f"linkerd-{version}.yaml")
    )
    out, pod = meshed(snap)
    proxy, init = container(pod, "linkerd-proxy"), container(pod, "linkerd-init")
    assert proxy["image"] == f"cr.l5d.io/linkerd/{image}"
    assert init["image"] == f"cr.l5d.io/linkerd/{init_image}"
    assert init.get("command") == command
    assert (
        init["args"][:4]
        == ["--firewall-bin-path", "iptables-nft", "--firewall-save-bin-path", "iptables-nft-save"]
    ) is nft
    assert ("--firewall-bin-path" in init["args"]) is nft
    names = set(env(pod))
    for name in ("_pod_uid", "_pod_ip", "_pod_containerName", "LINKERD2_PROXY_CORES_MIN",
                 "LINKERD2_PROXY_INBOUND_ACCEPT_USER_TIMEOUT", "LINKERD2_PROXY_OUTBOUND_CONNECT_USER_TIMEOUT",
                 "LINKERD2_PROXY_OUTBOUND_METRICS_HOSTNAME_LABELS"):  # fmt: skip
        assert (name in names) is pod_env, name
    assert pod["metadata"]["annotations"]["linkerd.io/proxy-version"] == image.split(":")[1]
    why = "\n".join(out.explanation)
    assert (
        f"data plane: linkerd {version} (ConfigMap linkerd/linkerd-config, "
        f"linkerdVersion {image.split(':')[1]})" in why
    )
    # the placement is ours (native: the cluster's kubelets are 1.33); where the control
    # plane's default differs, the explanation says what Linkerd's injector would do
    assert "restartPolicy" in proxy
    assert ("proxy.nativeSidecar is false" in why) is (not native)
    assert not out.warnings


def test_the_policy_s_version_without_a_control_plane_and_the_decision_says_so():
    out, pod = meshed(snapshot(present=False))
    why = "\n".join(out.explanation)
    assert (
        "data plane: linkerd 2.20 (no control plane found (ConfigMap linkerd/linkerd-config not found): "
        "the policy's default version 2.20)" in why
    )
    assert container(pod, "linkerd-proxy")["image"] == "cr.l5d.io/linkerd/proxy:edge-26.6.3"
    old = parse_policy('proxy: {linkerd: {version: "2.16"}}', "test")
    out, pod = meshed(snapshot(present=False), old)
    assert container(pod, "linkerd-proxy")["image"] == "cr.l5d.io/linkerd/proxy:edge-24.8.2"
    assert "--firewall-bin-path" not in container(pod, "linkerd-init")["args"]
    # the policy's version is only for when there is no control plane to read
    out, pod = meshed(BASE, old)
    assert container(pod, "linkerd-proxy")["image"] == "cr.l5d.io/linkerd/proxy:edge-26.6.3"


def test_a_newer_control_plane_gets_the_newest_shape_and_a_warning_naming_both():
    out, pod = meshed(snapshot(with_values(linkerdVersion="edge-26.8.1")))
    assert container(pod, "linkerd-proxy")["image"] == "cr.l5d.io/linkerd/proxy:edge-26.8.1"
    assert container(pod, "linkerd-init")["command"] == ["/usr/lib/linkerd/linkerd2-proxy-init"]
    (warning,) = out.warnings
    assert (
        "Linkerd 2.21 (edge-26.8.1) is newer than the newest version mesh-injector renders (2.20)" in warning
    )


def test_an_older_control_plane_is_not_meshed_with_the_reason():
    out = admit(request(), snapshot(with_values(linkerdVersion="stable-2.14.10")), POLICY)
    assert not out.injected and out.skip is not None and out.skip.value == "unsupported-version"
    pod = jsonpatch.apply_patch(request()["object"], out.patch)
    reason = pod["metadata"]["annotations"]["mesh-injector.io/skip-reason"]
    assert (
        "Linkerd 2.14 (stable-2.14.10) is older than the oldest version mesh-injector renders (2.16" in reason
    )
    assert any("pod not meshed" in w and "stable-2.14.10" in w for w in out.warnings)


def test_a_version_between_known_ones_is_rendered_as_the_older_one_with_a_warning():
    values = with_values(linkerdVersion="edge-25.4.4")
    values["proxyInit"]["image"] = {"name": "cr.l5d.io/linkerd/proxy-init", "version": "v2.4.2"}
    out, pod = meshed(snapshot(values))
    assert container(pod, "linkerd-proxy")["image"] == "cr.l5d.io/linkerd/proxy:edge-25.4.4"
    assert container(pod, "linkerd-init")["image"] == "cr.l5d.io/linkerd/proxy-init:v2.4.2"
    assert "command" not in container(pod, "linkerd-init") and "_pod_uid" not in env(pod)
    (warning,) = out.warnings
    assert "Linkerd 2.18 (edge-25.4.4) is not a version mesh-injector renders" in warning
    assert "rendered as Linkerd 2.16" in warning


# --- bad input: a clear line and warning, never an internal error ------------------------


@pytest.mark.parametrize(
    ("text", "said"),
    [
        ("proxy: [unclosed", "values is not applied: not YAML or JSON"),
        ("- a\n- list\n", "values is not applied: not a mapping of the chart's values (a list)"),
        ('{"proxy": ', "values is not applied: not YAML or JSON"),
        ("", "values is not applied: not a mapping of the chart's values (a NoneType)"),
    ],
)
def test_values_that_are_not_the_chart_s_are_named_and_the_default_version_is_used(text, said):
    out, pod = meshed(snapshot(text=text))
    assert any(f"ConfigMap linkerd/linkerd-config {said}" in w for w in out.warnings), out.warnings
    assert container(pod, "linkerd-proxy")["image"] == "cr.l5d.io/linkerd/proxy:edge-26.6.3"
    assert any(
        line.startswith("data plane: linkerd 2.20 (ConfigMap linkerd/linkerd-config unreadable")
        for line in out.explanation
    )


def test_a_configmap_without_values_is_named():
    snap = BASE.derive(config_maps={**BASE.config_maps, CONFIG: {"other": "x"}})
    out, _ = meshed(snap)
    assert any(
        "ConfigMap linkerd/linkerd-config values is not applied: has no key values" in w for w in out.warnings
    )


@pytest.mark.parametrize("said", ["linkerdVersionValue", "latest", None, 3])
def test_a_version_that_does_not_parse_is_named_and_the_values_still_apply(said):
    values = with_values(linkerdVersion=said, proxy__logLevel="debug")
    if said is None:
        del values["linkerdVersion"]
    out, pod = meshed(snapshot(values))
    assert any(f"linkerdVersion {said!r} is not a Linkerd version" in w for w in out.warnings), out.warnings
    # the image gets the default version's tag (there is no other), the values still apply
    assert container(pod, "linkerd-proxy")["image"] == "cr.l5d.io/linkerd/proxy:edge-26.6.3"
    assert env(pod)["LINKERD2_PROXY_LOG"].startswith("debug,")


def test_an_image_without_a_tag_gets_the_version_s_and_a_warning():
    values = with_values(linkerdVersion="edge-25.10.7")
    values["proxyInit"]["image"] = {"name": "registry.example.com/proxy-init", "version": ""}
    out, pod = meshed(snapshot(values))
    assert container(pod, "linkerd-init")["image"] == "registry.example.com/proxy-init:v2.4.3"
    assert any(
        "proxyInit.image: image 'registry.example.com/proxy-init' has no tag" in w for w in out.warnings
    )
    values = with_values(proxy__image={"name": "registry.example.com/proxy:v9", "version": "v10"})
    out, pod = meshed(snapshot(values))
    assert container(pod, "linkerd-proxy")["image"] == "registry.example.com/proxy:v9"
    assert any("already has a tag; version 'v10' is not added" in w for w in out.warnings)


@pytest.mark.parametrize(
    ("path", "value", "said"),
    [
        (
            "proxyInit__iptablesMode",
            "xtables",
            "proxyInit.iptablesMode: 'xtables' is not applied: expected legacy or nft",
        ),
        ("proxy__logFormat", "yaml", "proxy.logFormat: 'yaml' is not applied"),
        ("proxyInit__ignoreInboundPorts", "http", "proxyInit.ignoreInboundPorts: 'http' is not applied"),
        ("proxy__await", "sometimes", "proxy.await: 'sometimes' is not applied: expected true or false"),
        (
            "proxy__outboundConnectTimeout",
            "5 seconds",
            "proxy.outboundConnectTimeout: '5 seconds' is not applied",
        ),
        (
            "proxy__ports__admin",
            5000,
            "proxy.ports.admin: 5000 is not applied: the proxy's ports and user are fixed",
        ),
        ("proxy__uid", 3000, "proxy.uid: 3000 is not applied"),
        ("proxy__securityContext", {"runAsUser": 0}, "proxy.securityContext is not applied"),
        ("proxy__additionalEnv", [{"name": "A", "value": "1"}], "proxy.additionalEnv: [{'name': 'A'"),
        ("proxy__tracing", {"enabled": True}, "proxy.tracing.enabled: True is not applied"),
        ("identity__serviceAccountTokenProjection", False, "identity.serviceAccountTokenProjection: False"),
        (
            "proxy__startupProbe__failureThreshold",
            "many",
            "proxy.startupProbe.failureThreshold: 'many' is not applied",
        ),
    ],
)
def test_a_value_of_the_wrong_kind_is_named_and_the_chart_s_default_kept(path, value, said):
    out, pod = meshed(snapshot(with_values(**{path: value})))
    assert any(said in w for w in out.warnings), out.warnings
    assert container(pod, "linkerd-proxy")["securityContext"]["runAsUser"] == 2102


def test_the_policy_refuses_a_version_it_does_not_render_and_an_image_without_a_tag():
    with pytest.raises(
        PolicyError,
        match=r"proxy.linkerd.version: '2.18' is not a version mesh-injector renders; one of 2.16, 2.19, 2.20",  # noqa: E501
    ):
        parse_policy('proxy: {linkerd: {version: "2.18"}}', "test")
    with pytest.raises(PolicyError, match=r"proxy.linkerd.image: 'cr.l5d.io/linkerd/proxy' has no tag"):
        parse_policy("proxy: {linkerd: {image: cr.l5d.io/linkerd/proxy}}", "test")
    with pytest.raises(
        PolicyError, match=r"proxy.linkerd.version: 2.2 is a YAML number|proxy.linkerd.version"
    ):
        parse_policy("proxy: {linkerd: {version: 2.20}}", "test")


# --- what the control plane says reaches the pod ------------------------------------------


def test_the_control_plane_s_settings_are_rendered_as_its_injector_renders_them():
    values = with_values(
        clusterDomain="corp.example",
        identityTrustDomain="mesh.example",
        clusterNetworks="10.0.0.0/8",
        disableIPv6=False,
        proxy__logLevel="info",
        proxy__logFormat="json",
        proxy__logHTTPHeaders="insecure",
        proxy__defaultInboundPolicy="cluster-authenticated",
        proxy__opaquePorts="3306",
        proxy__gid=2102,
        proxy__accessLog="json",
        proxy__shutdownGracePeriod="25s",
        proxy__enableShutdownEndpoint=True,
        proxy__enableExternalProfiles=True,
        proxy__disableInboundProtocolDetectTimeout=True,
        proxy__requireIdentityOnInboundPorts="8080",
        proxy__outboundConnectTimeout="2000ms",
        proxy__metrics={"hostnameLabels": True},
        proxy__image={
            "name": "registry.example.com/linkerd/proxy",
            "version": "edge-26.6.3-patched",
            "pullPolicy": "Always",
        },
        proxyInit__ignoreInboundPorts="22",
        proxyInit__ignoreOutboundPorts="",
        proxyInit__skipSubnets="10.1.0.0/16",
    )
    _, pod = meshed(snapshot(values))
    e = env(pod)
    assert e["LINKERD2_PROXY_DESTINATION_SVC_ADDR"] == "linkerd-dst-headless.linkerd.svc.corp.example.:8086"
    assert (
        e["LINKERD2_PROXY_IDENTITY_LOCAL_NAME"]
        == "$(_pod_sa).$(_pod_ns).serviceaccount.identity.linkerd.mesh.example"
    )
    assert e["_l5d_trustdomain"] == "mesh.example"
    assert (
        e["LINKERD2_PROXY_DESTINATION_PROFILE_NETWORKS"]
        == e["LINKERD2_PROXY_POLICY_CLUSTER_NETWORKS"]
        == "10.0.0.0/8"
    )
    assert e["LINKERD2_PROXY_INBOUND_LISTEN_ADDR"] == "[::]:4143"  # IPv6 not disabled
    assert e["LINKERD2_PROXY_OUTBOUND_LISTEN_ADDRS"] == "127.0.0.1:4140,[::1]:4140"
    assert e["LINKERD2_PROXY_LOG"] == "info" and e["LINKERD2_PROXY_LOG_FORMAT"] == "json"
    assert e["LINKERD2_PROXY_INBOUND_DEFAULT_POLICY"] == "cluster-authenticated"
    assert e["LINKERD2_PROXY_INBOUND_PORTS_DISABLE_PROTOCOL_DETECTION"] == "3306"
    assert e["LINKERD2_PROXY_ACCESS_LOG"] == "json" and e["LINKERD2_PROXY_SHUTDOWN_GRACE_PERIOD"] == "25s"
    assert e["LINKERD2_PROXY_SHUTDOWN_ENDPOINT_ENABLED"] == "true"
    assert e["LINKERD2_PROXY_DESTINATION_PROFILE_SUFFIXES"] == "."
    assert (
        e["LINKERD2_PROXY_INBOUND_DETECT_TIMEOUT"] == "365d"
        and "LINKERD2_PROXY_OUTBOUND_DETECT_TIMEOUT" not in e
    )
    assert e["LINKERD2_PROXY_INBOUND_PORTS_REQUIRE_IDENTITY"] == "8080"
    assert e["LINKERD2_PROXY_OUTBOUND_CONNECT_TIMEOUT"] == "2000ms"
    assert e["LINKERD2_PROXY_OUTBOUND_METRICS_HOSTNAME_LABELS"] == "true"
    proxy, init = container(pod, "linkerd-proxy"), container(pod, "linkerd-init")
    assert proxy["image"] == init["image"] == "registry.example.com/linkerd/proxy:edge-26.6.3-patched"
    assert proxy["imagePullPolicy"] == init["imagePullPolicy"] == "Always"
    assert proxy["securityContext"]["runAsGroup"] == 2102
    assert "--ipv6=false" not in init["args"] and arg(pod, "--proxy-gid") == "2102"
    assert arg(pod, "--inbound-ports-to-ignore") == "4190,4191,22"
    assert arg(pod, "--outbound-ports-to-ignore") is None
    assert arg(pod, "--subnets-to-ignore") == "10.1.0.0/16"
    annotations = pod["metadata"]["annotations"]
    assert annotations["config.linkerd.io/skip-inbound-ports"] == "22"
    assert "config.linkerd.io/skip-outbound-ports" not in annotations
    # the destination service assumes the control plane's opaque ports: nothing to tell it
    assert "config.linkerd.io/opaque-ports" not in annotations


def test_the_firewall_backend_is_the_control_plane_s_and_rendered_as_the_version_s_flags():
    for mode, flags in (
        ("legacy", []),
        ("nft", ["--firewall-bin-path", "iptables-nft", "--firewall-save-bin-path", "iptables-nft-save"]),
    ):
        control = linkerdcontrol.control_plane(
            snapshot(with_values(proxyInit__iptablesMode=mode)).config_maps, POLICY
        )
        assert control.firewall == mode and control.firewalls == ("legacy", "nft")
        assert control.version == "2.20" and control.found
        _, pod = meshed(snapshot(with_values(proxyInit__iptablesMode=mode)))
        assert container(pod, "linkerd-init")["args"][: len(flags)] == flags
        assert ("--firewall-bin-path" in container(pod, "linkerd-init")["args"]) is bool(flags)


def test_what_mesh_injector_decides_itself_is_said_where_the_control_plane_differs():
    values = with_values(
        proxy__nativeSidecar=False,
        proxy__await=False,
        cniEnabled=True,
        proxy__resources={
            "cpu": {"request": "100m", "limit": ""},
            "memory": {"request": "", "limit": "250Mi"},
        },
    )
    out, pod = meshed(snapshot(values))
    why = "\n".join(out.explanation)
    assert (
        "placement: the control plane's own injector would make the proxy a regular container here "
        "(the control plane's proxy.nativeSidecar is false); the placement is mesh-injector's" in why
    )
    assert "the control plane's proxy.await is false; the proxy still holds the app until it is ready" in why
    assert (
        "the control plane says cniEnabled (linkerd-cni installs the rules), but the policy's "
        "interception.iptables.cniInstallsRules is false: linkerd-init is added" in why
    )
    assert "proxy.resources is not used: the proxy is sized by mesh-injector" in why
    assert "startupProbe" in container(pod, "linkerd-proxy") and "linkerd-init" in [
        c["name"] for c in pod["spec"]["initContainers"]
    ]


def test_the_version_s_native_annotation_is_what_its_injector_would_place_by():
    """Under 2.20 (native by default) a pod's config.linkerd.io/proxy-enable-native-sidecar:
    "false" is what Linkerd's injector would follow; ours stays native and says so."""
    out, pod = meshed(BASE, annotations={"config.linkerd.io/proxy-enable-native-sidecar": "false"})
    assert "restartPolicy" in container(pod, "linkerd-proxy")
    why = "\n".join(out.explanation)
    assert (
        "would make the proxy a regular container here (config.linkerd.io/proxy-enable-native-sidecar: false)"
        in why
    )
    out, _ = meshed(BASE)
    assert "the control plane's own injector would" not in "\n".join(out.explanation)


def test_the_policy_overrides_only_what_it_sets():
    policy = parse_policy(
        "proxy: {linkerd: {image: 'registry.example.com/proxy:pinned', logLevel: debug, "
        "ignoreInboundPorts: '9999'}}",
        "test",
    )
    _, pod = meshed(snapshot(with_values(proxy__logFormat="json", proxy__logLevel="info")), policy)
    e = env(pod)
    assert container(pod, "linkerd-proxy")["image"] == "registry.example.com/proxy:pinned"
    assert container(pod, "linkerd-init")["image"] == "registry.example.com/proxy:pinned"  # 2.20: the proxy's
    assert e["LINKERD2_PROXY_LOG"].startswith("debug,") and e["LINKERD2_PROXY_LOG_FORMAT"] == "json"
    assert arg(pod, "--inbound-ports-to-ignore") == "4190,4191,9999"


def test_under_a_vertical_pod_autoscaler_the_threads_are_the_control_plane_s():
    """Where VPA sizes the proxy no thread count of ours is set; Linkerd's chart's is
    (proxy.runtime.workers from 2.19, proxy.cores before)."""
    vpa = load_snapshot(policy=POLICY, now=time.time(), cluster=str(GOLDEN / "clusters" / "vpa.yaml"))
    maps = {
        **vpa.config_maps,
        CONFIG: {
            "values": yaml.safe_dump(with_values(proxy__runtime={"workers": {"minimum": 2, "maximum": 4}}))
        },
    }
    case = json.loads((GOLDEN / "cases" / "117-vpa-sizes-the-proxy" / "review.json").read_text())["request"]
    out = admit(case, vpa.derive(config_maps=maps), POLICY)
    e = env(out.pod)
    assert (e["LINKERD2_PROXY_CORES"], e["LINKERD2_PROXY_CORES_MIN"], e["LINKERD2_PROXY_CORES_MAX"]) == (
        "2",
        "2",
        "4",
    )


# --- the skip annotations say exactly what the proxy leaves alone, in every mode ----------


def skipped(pod: dict[str, Any]) -> tuple[str | None, str | None]:
    annotations = pod["metadata"]["annotations"]
    return annotations.get("config.linkerd.io/skip-inbound-ports"), annotations.get(
        "config.linkerd.io/skip-outbound-ports"
    )


def test_the_pods_own_skip_ports_and_ours_are_all_on_the_annotation():
    own = {"config.linkerd.io/skip-inbound-ports": "3306", "mesh-injector.io/skip-inbound-ports": "7000"}
    _, pod = meshed(BASE, annotations=own)
    # the pod's own list replaces the control plane's (4567,4568), as Linkerd's injector does
    assert arg(pod, "--inbound-ports-to-ignore") == "4190,4191,3306,7000"
    assert skipped(pod) == ("3306,7000", "4567,4568")
    status = json.loads(pod["metadata"]["annotations"]["mesh-injector.io/status"])
    assert status["replaced"] == {"annotations": {"config.linkerd.io/skip-inbound-ports": "3306"}}
    # admitted again (a controller's copy): the user's value is back before the decision
    again = admit({**request(own), "object": pod}, BASE, POLICY)
    assert again.patch == []


def test_a_skip_list_written_with_spaces_reaches_proxy_init_without_them():
    _, pod = meshed(BASE, annotations={"config.linkerd.io/skip-inbound-ports": " 3306, 5432 ,"})
    assert arg(pod, "--inbound-ports-to-ignore") == "4190,4191,3306,5432"
    assert pod["metadata"]["annotations"]["config.linkerd.io/skip-inbound-ports"] == "3306,5432"


def test_a_namespace_s_skip_ports_and_ours_are_all_on_the_annotation():
    ns = {**BASE.namespace_annotations, "shop": {"config.linkerd.io/skip-outbound-ports": "5432"}}
    snap = BASE.derive(namespace_annotations=ns)
    _, pod = meshed(snap, annotations={"mesh-injector.io/skip-outbound-ports": "6379"})
    assert arg(pod, "--outbound-ports-to-ignore") == "5432,6379"
    assert skipped(pod) == ("4567,4568", "5432,6379")
    status = json.loads(pod["metadata"]["annotations"]["mesh-injector.io/status"])
    assert "replaced" not in status  # the namespace's value is not the pod's own
    again = admit({**request({"mesh-injector.io/skip-outbound-ports": "6379"}), "object": pod}, snap, POLICY)
    assert again.patch == []
    # the namespace changes its mind: the next admission follows it, nothing of the old left
    moved = snap.derive(
        namespace_annotations={**ns, "shop": {"config.linkerd.io/skip-outbound-ports": "3306"}}
    )
    again = admit({**request({"mesh-injector.io/skip-outbound-ports": "6379"}), "object": pod}, moved, POLICY)
    repod = jsonpatch.apply_patch(pod, again.patch)
    assert (
        skipped(repod) == ("4567,4568", "3306,6379")
        and arg(repod, "--outbound-ports-to-ignore") == "3306,6379"
    )


def test_under_merbridge_the_annotation_says_what_merbridge_is_told():
    mixed = load_snapshot(policy=POLICY, now=time.time(), cluster=str(GOLDEN / "clusters" / "mixed.yaml"))
    own = {
        "mesh-injector.io/interception": "ebpf",
        "config.linkerd.io/skip-inbound-ports": "3306",
        "mesh-injector.io/skip-inbound-ports": "7000",
        "mesh-injector.io/skip-outbound-ports": "9000",
    }
    req = request(own)
    req["object"]["spec"]["nodeSelector"] = {"pool": "general"}
    out = admit(req, mixed, POLICY)
    assert out.injected and out.mode is not None and out.mode.value == "ebpf", out.explanation
    annotations = jsonpatch.apply_patch(req["object"], out.patch)["metadata"]["annotations"]
    # the pod's own skip-inbound-ports replaces the control plane's 4567,4568, as linkerd-init
    # is told in iptables mode; outbound it has none, so the control plane's hold
    assert annotations["traffic.sidecar.istio.io/excludeInboundPorts"] == "3306,4190,4191,7000"
    assert annotations["config.linkerd.io/skip-inbound-ports"] == "3306,7000"
    assert annotations["traffic.sidecar.istio.io/excludeOutboundPorts"] == "4567,4568,9000"
    assert annotations["config.linkerd.io/skip-outbound-ports"] == "4567,4568,9000"
    # the same pod in iptables mode: linkerd-init leaves the same ports alone
    req = request({**own, "mesh-injector.io/interception": "iptables"})
    req["object"]["spec"]["nodeSelector"] = {"pool": "general"}
    out = admit(req, mixed, POLICY)
    pod = jsonpatch.apply_patch(req["object"], out.patch)
    assert arg(pod, "--inbound-ports-to-ignore") == "4190,4191,3306,7000"
    assert arg(pod, "--outbound-ports-to-ignore") == "4567,4568,9000"
    assert skipped(pod) == ("3306,7000", "4567,4568,9000")


def test_with_a_cni_plugin_the_annotation_is_what_the_plugin_applies():
    policy = parse_policy("interception: {iptables: {cniInstallsRules: true}}", "test")
    _, pod = meshed(BASE, policy)
    assert skipped(pod) == (None, None)  # linkerd-cni's own configuration applies
    _, pod = meshed(BASE, policy, annotations={"mesh-injector.io/skip-inbound-ports": "7000"})
    assert skipped(pod) == ("7000", None)


def test_the_opaque_ports_annotation_is_written_where_the_proxy_differs_from_what_the_destination_assumes():
    policy = parse_policy("proxy: {linkerd: {opaquePorts: '5432'}}", "test")
    _, pod = meshed(BASE, policy)
    assert env(pod)["LINKERD2_PROXY_INBOUND_PORTS_DISABLE_PROTOCOL_DETECTION"] == "5432"
    assert pod["metadata"]["annotations"]["config.linkerd.io/opaque-ports"] == "5432"
    _, pod = meshed(BASE, policy, annotations={"config.linkerd.io/opaque-ports": "6379"})
    assert env(pod)["LINKERD2_PROXY_INBOUND_PORTS_DISABLE_PROTOCOL_DETECTION"] == "6379"
    assert pod["metadata"]["annotations"]["config.linkerd.io/opaque-ports"] == "6379"
    _, pod = meshed(BASE)
    assert "config.linkerd.io/opaque-ports" not in pod["metadata"]["annotations"]


def test_outbound_ranges_linkerd_init_cannot_leave_alone_are_named():
    out, pod = meshed(
        BASE, annotations={"traffic.sidecar.istio.io/excludeOutboundIPRanges": "169.254.169.254/32"}
    )
    assert arg(pod, "--subnets-to-ignore") is None
    assert any(
        "outbound traffic to 169.254.169.254/32 still goes through the proxy" in w for w in out.warnings
    )
    out, pod = meshed(BASE, annotations={"config.linkerd.io/skip-subnets": "10.9.0.0/16"})
    assert arg(pod, "--subnets-to-ignore") == "10.9.0.0/16" and not out.warnings


# --- read once per snapshot ---------------------------------------------------------------


def test_the_control_plane_is_read_once_for_many_pods(monkeypatch):
    calls = []
    real = linkerdcontrol.read_control_plane

    def counting(maps, policy):
        calls.append(1)
        return real(maps, policy)

    monkeypatch.setattr(linkerdcontrol, "read_control_plane", counting)
    values = with_values(proxy__logLevel="trace")  # a text not read before in this process
    snap = snapshot(values)
    for i in range(5):
        req = request({"mesh-injector.io/skip-inbound-ports": str(7000 + i)})  # 5 distinct pods
        assert admit(req, snap, POLICY).injected
    assert len(calls) == 1
    # a new snapshot with the same ConfigMap reads nothing again; a changed one is read
    assert admit(request(), snapshot(values), POLICY).injected and len(calls) == 1
    assert admit(request(), snapshot(with_values(proxy__logLevel="off")), POLICY).injected and len(calls) == 2


def test_a_fresh_reading_is_the_same_as_a_kept_one():
    snap = snapshot(values_220())
    kept = linkerdcontrol.control_plane(snap.config_maps, POLICY)
    fresh = linkerdcontrol.read_control_plane(copy.deepcopy(dict(snap.config_maps)), POLICY)
    assert kept == fresh and kept.config.anchors.strip() == TRUST_ANCHORS.strip()


# --- the flavour renders the backend the decision chose ----------------------------------


@pytest.mark.parametrize(("control", "chosen"), [("nft", "legacy"), ("legacy", "nft"), ("nft", "nft")])
def test_the_init_container_gets_the_flags_of_the_backend_the_decision_chose(control, chosen):
    """``Build.firewall`` (the decision's: the control plane's setting unless a node lacks it)
    is what linkerd-init is told, whatever the control plane said."""
    from webhook.core import ProxyResources
    from webhook.dataplane import linkerd
    from webhook.dataplane.base import Build
    from webhook.reasons import Mode, ResourceSource
    from webhook.workload import WorkloadKey

    plane = linkerdcontrol.control_plane(
        snapshot(with_values(proxyInit__iptablesMode=control)).config_maps, POLICY
    )
    assert plane.firewall == control
    build = Build(
        mode=Mode.IPTABLES,
        native=True,
        protocol="http",
        resources=ProxyResources(
            cpu_request=0.1, memory_request=64 << 20, cpu_limit=None, memory_limit=None,
            source=ResourceSource.PROFILE, detail="test",
        ),
        init="rules",
        workload=WorkloadKey("shop", "Deployment", "web"),
        control=plane.config,
        firewall=chosen,
    )  # fmt: skip
    rendered = linkerd.render(build, request()["object"], POLICY)
    (init,) = rendered.inits
    nft = ["--firewall-bin-path", "iptables-nft", "--firewall-save-bin-path", "iptables-nft-save"]
    assert (init["args"][:4] == nft) is (chosen == "nft")
    assert ("--firewall-bin-path" in init["args"]) is (chosen == "nft")


@pytest.mark.parametrize(
    ("version", "key"),
    [
        # Linkerd's pkg/k8s/labels.go: 2.16 has no hostname-labels annotation; 2.19 has no
        # additional-env one and knows the native-sidecar one only as alpha and beta
        ("2.16", "config.linkerd.io/proxy-metrics-hostname-labels"),
        ("2.19", "config.linkerd.io/proxy-additional-env"),
        ("2.19", "config.linkerd.io/proxy-enable-native-sidecar"),
    ],
)
def test_an_annotation_only_a_newer_injector_reads_is_said_not_to_apply(version, key):
    snap = load_snapshot(
        policy=POLICY, now=time.time(), cluster=str(GOLDEN / "clusters" / f"linkerd-{version}.yaml")
    )
    out, _ = meshed(snap, annotations={key: "true"})
    assert f"{key}: 'true' is not applied: Linkerd {version}'s injector does not read it" in "\n".join(
        out.warnings
    ), out.warnings
