"""Field by field against Linkerd's own injector (``linkerd inject``): the facts recorded
from its goldens (``tests/upstream/facts-linkerd.yaml``) compared with what we inject for
the same input (``tests/upstream/compare.py``). What remains must be exactly the
differences listed below, each with its reason (also in the README); a new one fails.
"""

from __future__ import annotations

import json
import time
from typing import Any

import pytest

from tests.support import GOLDEN, anchored_policy
from tests.upstream.compare import _doc, differences, facts
from webhook.loading import load_snapshot
from webhook.manifests.process import process

FACTS = facts("linkerd")
LINKERD = tuple(FACTS)

# (case, field) -> why ours differs. Fields: "env NAME", "proxy.FIELD", "init.args",
# "annotation NAME", "label NAME", "volumes".
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
}


@pytest.mark.parametrize("case", sorted(FACTS))
def test_every_field_is_as_linkerd_s_own_injector_writes_it(case: str) -> None:
    found = differences(case, FACTS[case])
    expected = {field for (c, field) in KNOWN if c == case}
    unexplained = {k: v for k, v in found.items() if k not in expected}
    assert not unexplained, json.dumps(unexplained, indent=1, default=str)[:3000]
    gone = expected - set(found)
    assert not gone, f"listed as different but now the same (take them off KNOWN and the README): {gone}"


def test_the_facts_are_linkerd_s_goldens_of_features_we_support() -> None:
    """Each case names where its facts come from, and the proxy and init containers there."""
    for case, f in FACTS.items():
        assert f["source"].startswith("linkerd/linkerd2 edge-24.8.2:"), case
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
