"""Field by field against the meshes' own injectors.

``tests/upstream/facts.yaml`` records, for upstream golden cases of features we support
(Linkerd edge-24.8.2's ``linkerd inject``, Istio 1.23.2's ``istioctl kube-inject``), the
input workload and the fields their injector wrote: the proxy's environment, arguments,
ports, probes, lifecycle and security context, the init container's arguments, the pod's
added labels, annotations and volumes. Each input is injected here as ``mesh-injector
inject`` does (iptables mode and the upstream case's placement, so the mechanisms are the
same), and every field is compared after normalising what is configuration (images,
trust anchors, versions; resources, which we size ourselves). What remains must be exactly
the differences listed below, each with its reason (also in the README); a new one fails.
"""

from __future__ import annotations

import copy
import json
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support import GOLDEN, anchored_policy
from webhook.loading import load_snapshot
from webhook.manifests.process import TEMPLATE_PATHS, process

FACTS = yaml.safe_load((Path(__file__).parent / "upstream" / "facts.yaml").read_text())

# (case, field) -> why ours differs. Fields: "env NAME", "proxy.FIELD", "init.args",
# "annotation NAME", "label NAME", "volumes".
ISTIO = (
    "istio-hello",
    "istio-hello-probes",
    "istio-native-sidecar",
    "istio-prometheus-scrape",
    "istio-prometheus-scrape-dotted",
)
ISTIO_LEGACY = tuple(c for c in ISTIO if c != "istio-native-sidecar")
LINKERD = ("linkerd-deployment", "linkerd-native-sidecar", "linkerd-udp")
KNOWN: dict[tuple[str, str], str] = {
    **{
        (
            case,
            "env LINKERD2_PROXY_CORES",
        ): "threads follow the CPU we size (Linkerd sets them from a CPU limit only)"
        for case in LINKERD
    },
    **{
        (case, "proxy.securityContext"): "the proxy also drops ALL capabilities (Pod Security restricted)"
        for case in LINKERD
    },
    ("linkerd-native-sidecar", "annotation config.alpha.linkerd.io/proxy-enable-native-sidecar"): (
        "the placement is ours, recorded in mesh-injector.io/status and the decision"
    ),
    **{
        (
            case,
            "env PROXY_CONFIG",
        ): "concurrency follows the CPU we size (and hold on legacy placement, below)"
        for case in ISTIO
    },
    **{
        (
            case,
            "proxy.lifecycle",
        ): "legacy placement holds the app until the proxy is ready (pilot-agent wait)"
        for case in ISTIO_LEGACY
    },
    **{
        (case, "proxy.securityContext"): "every container we add runs with RuntimeDefault seccomp"
        for case in ISTIO
    },
}


def _configuration(case: str, field: str, value: Any) -> Any:
    """What is configuration rather than rendering, normalised away."""
    if field in (
        "env LINKERD2_PROXY_IDENTITY_TRUST_ANCHORS",
        "annotation linkerd.io/created-by",
        "annotation linkerd.io/proxy-version",
        "annotation linkerd.io/trust-root-sha256",
    ):
        return "<configuration>"
    if isinstance(value, dict) and "resourceFieldRef" in value:
        # the API server defaults a resourceFieldRef's divisor to "0"
        ref = {k: v for k, v in value["resourceFieldRef"].items() if not (k == "divisor" and v == "0")}
        return {"resourceFieldRef": ref}
    return value


def _doc(f: dict[str, Any]) -> dict[str, Any]:
    meta = copy.deepcopy(f["input"]["metadata"])
    annotations = meta.setdefault("annotations", {})
    annotations["mesh-injector.io/interception"] = "iptables"
    annotations["mesh-injector.io/native-sidecar"] = "true" if f["native"] else "false"
    template = {"metadata": meta, "spec": copy.deepcopy(f["input"]["spec"])}
    head = {"metadata": {"name": f["name"], "namespace": f["namespace"]}}
    if f["kind"] == "Pod":
        return {
            "apiVersion": "v1",
            "kind": "Pod",
            **head,
            **template,
            "metadata": {**meta, **head["metadata"]},
        }
    assert TEMPLATE_PATHS[f["kind"]] == ("spec", "template")
    selector = {"matchLabels": dict(meta.get("labels") or {})}
    return {
        "apiVersion": "apps/v1",
        "kind": f["kind"],
        **head,
        "spec": {"selector": selector, "template": template},
    }


def _ours(case: str, f: dict[str, Any]) -> dict[str, Any]:
    policy = anchored_policy(f"proxy: {{flavour: {case.split('-')[0]}}}")
    snapshot = load_snapshot(policy=policy, now=time.time(), cluster=str(GOLDEN / "clusters" / "mixed.yaml"))
    doc = _doc(f)
    out, (result,) = process(doc, snapshot, policy, default_namespace="default", assume_opt_in=True)
    assert result.outcome is not None and result.outcome.injected, result.report()
    template = out if f["kind"] == "Pod" else out["spec"]["template"]
    return {"metadata": template["metadata"], "spec": template["spec"]}


def differences(case: str, f: dict[str, Any]) -> dict[str, tuple[Any, Any]]:
    pod = _ours(case, f)
    spec, meta = pod["spec"], pod["metadata"]
    containers = {c["name"]: c for c in spec.get("containers", []) + spec.get("initContainers", [])}
    proxy = containers["linkerd-proxy" if case.startswith("linkerd") else "istio-proxy"]
    found: dict[str, tuple[Any, Any]] = {}

    def compare(field: str, theirs: Any, ours: Any) -> None:
        theirs, ours = _configuration(case, field, theirs), _configuration(case, field, ours)
        if theirs != ours:
            found[field] = (theirs, ours)

    def env(c: dict[str, Any]) -> dict[str, Any]:
        return {e["name"]: e.get("value", e.get("valueFrom")) for e in c.get("env", [])}

    theirs_env, ours_env = env(f["proxy"]), env(proxy)
    for name in sorted(set(theirs_env) | set(ours_env)):
        compare(f"env {name}", theirs_env.get(name), ours_env.get(name))
    assert list(theirs_env) == [n for n in ours_env if n in theirs_env], "the environment's order"
    for field in (
        "args",
        "ports",
        "readinessProbe",
        "livenessProbe",
        "startupProbe",
        "lifecycle",
        "securityContext",
    ):
        compare(f"proxy.{field}", f["proxy"].get(field), proxy.get(field))
    compare("proxy.volumeMounts", f["proxy"].get("volumeMounts"), proxy.get("volumeMounts"))
    if f["init"] is not None:
        init = containers.get(f["init"]["name"])
        compare("init.args", f["init"]["args"], init["args"] if init else None)
    compare("placement", f["native"], "restartPolicy" in proxy)
    for name, value in f["annotations"].items():
        compare(f"annotation {name}", value, meta.get("annotations", {}).get(name))
    for name, value in f["labels"].items():
        compare(f"label {name}", value, meta.get("labels", {}).get(name))
    compare("volumes", sorted(f["volumes"]), sorted(v["name"] for v in spec.get("volumes", [])))
    for name, probes in f["app_probes"].items():
        for field in ("readinessProbe", "livenessProbe", "startupProbe"):
            compare(f"app {name}.{field}", probes.get(field), containers[name].get(field))
    return found


@pytest.mark.parametrize("case", sorted(FACTS))
def test_every_field_is_as_the_mesh_s_own_injector_writes_it(case: str) -> None:
    found = differences(case, FACTS[case])
    expected = {field for (c, field) in KNOWN if c == case}
    unexplained = {k: v for k, v in found.items() if k not in expected}
    assert not unexplained, json.dumps(unexplained, indent=1, default=str)[:3000]
    gone = expected - set(found)
    assert not gone, f"listed as different but now the same (take them off KNOWN and the README): {gone}"


def test_the_facts_are_upstream_goldens_of_features_we_support() -> None:
    """Each case names where its facts come from, and the proxy and init containers there."""
    for case, f in FACTS.items():
        assert f["source"].startswith(("linkerd/linkerd2 edge-24.8.2:", "istio/istio 1.23.2:")), case
        assert f["proxy"]["env"], case
        assert f["init"] is None or f["init"]["args"], case


# Linkerd's per-pod configuration annotations (pkg/inject's ProxyAnnotations and
# ProxyAlphaConfigAnnotations at edge-24.8.2), each with a value Linkerd accepts.
LINKERD_CONFIG = {
    "config.linkerd.io/admin-port": "5000",
    "config.linkerd.io/control-port": "5001",
    "config.linkerd.io/enable-debug-sidecar": "true",
    "config.linkerd.io/enable-external-profiles": "true",
    "config.linkerd.io/image-pull-policy": "Always",
    "config.linkerd.io/inbound-port": "5002",
    "config.linkerd.io/init-image": "example.com/proxy-init",
    "config.linkerd.io/init-image-version": "v9",
    "config.linkerd.io/outbound-port": "5003",
    "config.linkerd.io/pod-inbound-ports": "8080",
    "config.linkerd.io/proxy-cpu-limit": "1500m",
    "config.linkerd.io/proxy-cpu-request": "200m",
    "config.linkerd.io/proxy-image": "example.com/proxy",
    "config.linkerd.io/proxy-admin-shutdown": "enabled",
    "config.linkerd.io/proxy-log-format": "json",
    "config.linkerd.io/proxy-log-level": "debug",
    "config.linkerd.io/proxy-log-http-headers": "insecure",
    "config.linkerd.io/proxy-memory-limit": "300Mi",
    "config.linkerd.io/proxy-memory-request": "70Mi",
    "config.linkerd.io/proxy-ephemeral-storage-limit": "1Gi",
    "config.linkerd.io/proxy-ephemeral-storage-request": "10Mi",
    "config.linkerd.io/proxy-uid": "3000",
    "config.linkerd.io/proxy-gid": "3000",
    "config.linkerd.io/proxy-version": "edge-24.9.1",
    "config.linkerd.io/proxy-require-identity-inbound-ports": "8080",
    "config.linkerd.io/skip-inbound-ports": "9000",
    "config.linkerd.io/opaque-ports": "4000",
    "config.linkerd.io/skip-outbound-ports": "9001",
    "config.linkerd.io/proxy-outbound-connect-timeout": "2s",
    "config.linkerd.io/proxy-inbound-connect-timeout": "200ms",
    "config.linkerd.io/proxy-await": "disabled",
    "config.linkerd.io/default-inbound-policy": "deny",
    "config.linkerd.io/skip-subnets": "10.9.0.0/16",
    "config.linkerd.io/access-log": "apache",
    "config.linkerd.io/shutdown-grace-period": "30s",
    "config.linkerd.io/proxy-outbound-discovery-cache-unused-timeout": "10s",
    "config.linkerd.io/proxy-inbound-discovery-cache-unused-timeout": "120s",
    "config.linkerd.io/proxy-disable-outbound-protocol-detect-timeout": "true",
    "config.linkerd.io/proxy-disable-inbound-protocol-detect-timeout": "true",
    "config.alpha.linkerd.io/proxy-wait-before-exit-seconds": "10",
    "config.alpha.linkerd.io/proxy-enable-native-sidecar": "true",
}


@pytest.mark.parametrize("annotation", sorted(LINKERD_CONFIG))
def test_no_linkerd_configuration_annotation_is_ignored_without_a_word(annotation: str) -> None:
    """Each of Linkerd's per-pod settings changes what is injected, or a warning names it."""
    f = FACTS["linkerd-deployment"]
    policy = anchored_policy("proxy: {flavour: linkerd}")
    snapshot = load_snapshot(policy=policy, now=time.time(), cluster=str(GOLDEN / "clusters" / "mixed.yaml"))

    def inject(extra: dict[str, str]) -> tuple[dict[str, Any], tuple[str, ...]]:
        doc = _doc(f)
        doc["spec"]["template"]["metadata"]["annotations"].update(extra)
        out, (result,) = process(doc, snapshot, policy, default_namespace="default", assume_opt_in=True)
        assert result.outcome is not None and result.outcome.injected, result.report()
        spec = out["spec"]["template"]["spec"]
        return {k: spec.get(k) for k in ("containers", "initContainers")}, result.outcome.warnings

    plain, _ = inject({})
    changed, warnings = inject({annotation: LINKERD_CONFIG[annotation]})
    warned = [w for w in warnings if annotation in w]
    assert changed != plain or warned, f"{annotation} neither applied nor warned about"
    assert not (changed != plain and warned), f"{annotation} both applied and warned about: {warned}"
