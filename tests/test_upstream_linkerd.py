"""Field by field against Linkerd's own injector (``linkerd inject``), at every supported
version: the facts recorded from its goldens (``tests/upstream/facts-linkerd.yaml``, by
``tests/upstream/record.py`` at edge-24.8.2 = 2.16, version-2.19 and version-2.20) compared
with what we inject for the same input, given a control plane that says what the golden was
made with: the version's own ``linkerd-config`` (``tests/golden/clusters/linkerd-<v>.yaml``,
the chart's defaults) with the values the upstream test sets over it, and the trust anchors
it used.

Every field of every container Linkerd adds is compared (each environment variable, in
order; args, command, image, probes, ports, lifecycle, security context, mounts, ...), and
the volumes, the labels and annotations it adds, the app containers' probes and the
placement. Normalised, on both sides, only what differs on purpose (``NORMALISED``); what
else differs must be exactly ``KNOWN``, each with its reason (also in the README); a new
difference fails, and so does a listed one that is gone.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support import GOLDEN
from tests.upstream.compare import _doc, facts
from webhook.cluster.snapshot import ClusterSnapshot
from webhook.dataplane import linkerdcontrol
from webhook.loading import load_snapshot, parse_policy
from webhook.manifests.process import process
from webhook.policy import Policy

FACTS = facts("linkerd")
VERSIONS = ("2.16", "2.19", "2.20")
LINKERD_CONTAINERS = ("linkerd-init", "linkerd-network-validator", "linkerd-proxy")
# the values cli/cmd/inject_test.go sets over the chart's for every golden (its defaultConfig),
# but linkerdVersion: it says "test-inject-control-plane-version", which names no version;
# ours is the version's own edge release, which the table is chosen by
TEST_VALUES = {"proxy.image.version": "test-inject-proxy-version"}
EDGE = {"2.16": "edge-24.8.2", "2.19": "edge-25.10.7", "2.20": "edge-26.6.3"}

# What differs on purpose, normalised on both sides before comparing (README: "Compared with
# the meshes' own injectors"). Nothing else is.
NORMALISED = {
    "annotation linkerd.io/created-by": "who injected the pod (linkerd/cli ... or mesh-injector/...)",
    "container resources": "the proxy is sized by mesh-injector; linkerd-init gets modest resources",
    "securityContext.capabilities.drop ALL": (
        "the proxy and linkerd-init also drop ALL capabilities (Pod Security restricted); linkerd-init "
        "keeps only NET_ADMIN and NET_RAW"
    ),
    "config.linkerd.io/skip-*-ports": (
        "always written, saying what the redirect leaves alone; where Linkerd writes none, it must "
        "equal the ports upstream's own linkerd-init is given (checked, then set aside)"
    ),
}

CLI_PINS = (
    "`linkerd inject` writes the values it was given that differ from the chart's as annotations; "
    "we read the control plane (linkerd-config) instead, where Linkerd's webhook reads them too"
)
# (case, field) -> why ours differs. Fields: "<container>.env NAME", "<container>.FIELD",
# "annotation NAME", "label NAME", "volume NAME", "placement", "app NAME.FIELD".
KNOWN: dict[tuple[str, str], str] = {
    **{
        (f"2.16/{case}", "linkerd-proxy.env LINKERD2_PROXY_CORES"): (
            "threads follow the CPU we size (Linkerd 2.16 sets them from a CPU limit only)"
        )
        for case in (
            "deployment",
            "native-sidecar",
            "udp",
            "pod",
            "statefulset",
            "controller-name",
            "host-network-false",
            "capabilities",
            "proxy-ignores",
            "pod-proxy-ignores",
            "opaque-ports",
            "access-log",
            "params",
            "cni",
            "pod-with-requests",
        )
    },
    ("2.16/native-sidecar", "annotation config.alpha.linkerd.io/proxy-enable-native-sidecar"): CLI_PINS,
    ("2.19/native-sidecar", "annotation config.beta.linkerd.io/proxy-enable-native-sidecar"): CLI_PINS,
    **{(f"{v}/opaque-ports", "annotation config.linkerd.io/opaque-ports"): CLI_PINS for v in VERSIONS},
    **{(f"{v}/access-log", "annotation config.linkerd.io/access-log"): CLI_PINS for v in VERSIONS},
    **{
        (f"{v}/pod-with-requests", f"annotation config.linkerd.io/proxy-{what}"): CLI_PINS
        for v in VERSIONS
        for what in ("cpu-request", "cpu-limit", "memory-request", "memory-limit")
    },
    # the pod's own CPU limit is 160m: Linkerd 2.19+ sets CORES_MAX from a limit annotation only
    **{
        (f"{v}/capabilities", f"{c}.securityContext"): (
            "the proxy and linkerd-init never take the app container's capabilities "
            "(NET_BIND_SERVICE here): the proxy drops ALL and adds none"
        )
        for v in VERSIONS
        for c in ("linkerd-proxy", "linkerd-init")
    },
}


def _values(version: str, assigned: dict[str, Any]) -> dict[str, Any]:
    """The version's linkerd-config values (our fixture), with each dotted path of
    ``assigned`` set whole, as the upstream test assigns its values."""
    docs = yaml.safe_load((GOLDEN / "clusters" / f"linkerd-{version}.yaml").read_text())["items"]
    config = next(d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"] == "linkerd-config")
    values = yaml.safe_load(config["data"]["values"])
    for path, value in {**TEST_VALUES, **assigned}.items():
        *parents, last = path.split(".")
        node = values
        for part in parents:
            node = node.setdefault(part, {})
        node[last] = copy.deepcopy(value)
    return values


def _anchors(f: dict[str, Any]) -> str:
    proxy = next(c for c in [*f["initContainers"], *f["containers"]] if c["name"] == "linkerd-proxy")
    return next(e["value"] for e in proxy["env"] if e["name"] == "LINKERD2_PROXY_IDENTITY_TRUST_ANCHORS")


def _control_plane(f: dict[str, Any], policy: Policy) -> ClusterSnapshot:
    """The version's cluster, with the case's linkerd-config and upstream's trust anchors."""
    version = f["version"]
    snapshot = load_snapshot(
        policy=policy, now=0, cluster=str(GOLDEN / "clusters" / f"linkerd-{version}.yaml")
    )
    maps = dict(snapshot.config_maps)
    maps[("linkerd", "linkerd-config")] = {"values": yaml.safe_dump(_values(version, f["values"]))}
    maps[("linkerd", "linkerd-identity-trust-roots")] = {"ca-bundle.crt": _anchors(f)}
    return snapshot.derive(config_maps=maps)


def _placement(f: dict[str, Any]) -> bool:
    return any(c["name"] == "linkerd-proxy" for c in f["initContainers"])


def ours(f: dict[str, Any]) -> dict[str, Any]:
    """The template we inject for the case's input: iptables mode (the mechanism Linkerd's
    injector renders), its placement, and a CNI plugin where the control plane has one."""
    cni = bool(f["values"].get("cniEnabled"))
    policy = parse_policy(f"interception: {{iptables: {{cniInstallsRules: {str(cni).lower()}}}}}", "test")
    snapshot = _control_plane(f, policy)
    doc = _doc({**f, "native": _placement(f)})
    out, (result,) = process(doc, snapshot, policy, default_namespace="default", assume_opt_in=True)
    assert result.outcome is not None and result.outcome.injected, result.report()
    template = out if f["kind"] == "Pod" else out["spec"]["template"]
    return {"metadata": template["metadata"], "spec": template["spec"]}


def _normalised(container: dict[str, Any], theirs: dict[str, Any]) -> dict[str, Any]:
    out = {k: v for k, v in container.items() if k != "resources"}
    caps = (out.get("securityContext") or {}).get("capabilities")
    upstream = (theirs.get("securityContext") or {}).get("capabilities") or {}
    if isinstance(caps, dict) and caps.get("drop") == ["ALL"] and "drop" not in upstream:
        kept = {k: v for k, v in caps.items() if k != "drop"}
        security = {k: v for k, v in out["securityContext"].items() if k != "capabilities"}
        out["securityContext"] = {**security, **({"capabilities": kept} if kept else {})}
    return out


def _ignored(container: dict[str, Any] | None, flag: str) -> str | None:
    """The ports upstream's linkerd-init is given besides the proxy's own (4190,4191)."""
    if container is None or flag not in container.get("args", []):
        return None
    value = container["args"][container["args"].index(flag) + 1]
    return ",".join(p for p in value.split(",") if p not in ("4190", "4191")) or None


def differences(case: str, f: dict[str, Any]) -> dict[str, tuple[Any, Any]]:
    pod = ours(f)
    spec, meta = pod["spec"], pod["metadata"]
    found: dict[str, tuple[Any, Any]] = {}

    def compare(name: str, theirs: Any, mine: Any) -> None:
        if theirs != mine:
            found[name] = (theirs, mine)

    def added(key: str) -> list[dict[str, Any]]:
        return [c for c in spec.get(key, []) if c["name"] in LINKERD_CONTAINERS]

    theirs_all = {c["name"]: c for c in [*f["initContainers"], *f["containers"]]}
    mine_all = {c["name"]: c for c in [*added("initContainers"), *added("containers")]}
    for key in ("initContainers", "containers"):
        compare(f"placement {key}", [c["name"] for c in f[key]], [c["name"] for c in added(key)])
    compare("placement", _placement(f), "restartPolicy" in mine_all.get("linkerd-proxy", {}))
    for name in sorted(set(theirs_all) | set(mine_all)):
        theirs, mine = theirs_all.get(name), mine_all.get(name)
        if theirs is None or mine is None:
            compare(f"{name}", theirs is not None, mine is not None)
            continue
        theirs_n = {k: v for k, v in theirs.items() if k != "resources"}
        mine_n = _normalised(mine, theirs)
        for field in sorted(set(theirs_n) | set(mine_n)):
            if field == "env":
                t_env = {e["name"]: e.get("value", e.get("valueFrom")) for e in theirs_n.get("env", [])}
                m_env = {e["name"]: e.get("value", e.get("valueFrom")) for e in mine_n.get("env", [])}
                for var in sorted(set(t_env) | set(m_env)):
                    compare(f"{name}.env {var}", t_env.get(var), m_env.get(var))
                shared = [n for n in m_env if n in t_env]
                compare(f"{name}.env order", [n for n in t_env if n in m_env], shared)
            else:
                compare(f"{name}.{field}", theirs_n.get(field), mine_n.get(field))
    theirs_volumes = {v["name"]: v for v in f["volumes"]}
    mine_volumes = {v["name"]: v for v in spec.get("volumes", []) if v["name"].startswith("linkerd-")}
    for name in sorted(set(theirs_volumes) | set(mine_volumes)):
        compare(f"volume {name}", theirs_volumes.get(name), mine_volumes.get(name))
    own = f["input"]["metadata"].get("annotations") or {}
    mine_annotations = {
        k: v
        for k, v in (meta.get("annotations") or {}).items()
        if "linkerd.io/" in k and k not in own and k != "linkerd.io/created-by"
    }
    theirs_annotations = {k: v for k, v in f["annotations"].items() if k != "linkerd.io/created-by"}
    for way, flag in (("inbound", "--inbound-ports-to-ignore"), ("outbound", "--outbound-ports-to-ignore")):
        key = f"config.linkerd.io/skip-{way}-ports"
        if key not in theirs_annotations and key in mine_annotations:
            # not written by Linkerd where its ignore ports are the chart's: ours must say
            # exactly what upstream's own linkerd-init is told (or, with a CNI plugin, ours)
            skipped = _ignored(theirs_all.get("linkerd-init") or mine_all.get("linkerd-init"), flag)
            compare(f"annotation {key} (the ports linkerd-init skips)", skipped, mine_annotations.pop(key))
    for name in sorted(set(theirs_annotations) | set(mine_annotations)):
        compare(f"annotation {name}", theirs_annotations.get(name), mine_annotations.get(name))
    own_labels = f["input"]["metadata"].get("labels") or {}
    mine_labels = {
        k: v for k, v in (meta.get("labels") or {}).items() if "linkerd.io/" in k and k not in own_labels
    }
    for name in sorted(set(f["labels"]) | set(mine_labels)):
        compare(f"label {name}", f["labels"].get(name), mine_labels.get(name))
    for name, probes in f["app_probes"].items():
        container = next(
            c for c in [*spec.get("containers", []), *spec.get("initContainers", [])] if c["name"] == name
        )
        for field in ("readinessProbe", "livenessProbe", "startupProbe"):
            compare(f"app {name}.{field}", probes.get(field), container.get(field))
    return found


@pytest.mark.parametrize("case", sorted(FACTS))
def test_every_field_is_as_linkerd_s_own_injector_writes_it(case: str) -> None:
    found = differences(case, FACTS[case])
    expected = {field for (c, field) in KNOWN if c == case}
    unexplained = {k: v for k, v in found.items() if k not in expected}
    assert not unexplained, json.dumps(unexplained, indent=1, default=str)[:4000]
    gone = expected - set(found)
    assert not gone, f"listed as different but now the same (take them off KNOWN and the README): {gone}"


@pytest.mark.parametrize("version", VERSIONS)
def test_each_version_is_compared_on_at_least_eight_of_its_goldens(version: str) -> None:
    """Each case names where its facts come from: that version's tag of linkerd/linkerd2."""
    tag = {"2.16": "edge-24.8.2", "2.19": "version-2.19", "2.20": "version-2.20"}[version]
    cases = [f for case, f in FACTS.items() if case.startswith(f"{version}/")]
    assert len(cases) >= 8
    for f in cases:
        assert f["source"].startswith(f"linkerd/linkerd2 {tag}: cli/cmd/testdata/inject_"), f["source"]
        assert f["version"] == version
        assert any(c["name"] == "linkerd-proxy" for c in [*f["initContainers"], *f["containers"]])
        # the version's native-sidecar default, as our table records it, is its injector's
        native = f["values"].get("proxy.nativeSidecar", linkerdcontrol.KNOWN[version].native)
        assert _placement(f) is native, f["source"]


def test_the_versions_differ_where_their_injectors_do() -> None:
    """The recorded goldens themselves say what changed between the versions, and so does
    what we inject for each (so a table that renders every version alike cannot pass)."""

    def env_names(f: dict[str, Any]) -> list[str]:
        proxy = next(c for c in [*f["initContainers"], *f["containers"]] if c["name"] == "linkerd-proxy")
        return [e["name"] for e in proxy["env"]]

    def init(f: dict[str, Any]) -> dict[str, Any]:
        return next(c for c in f["initContainers"] if c["name"] == "linkerd-init")

    new = {"_pod_uid", "_pod_ip", "_pod_containerName", "LINKERD2_PROXY_CORES_MIN"}
    for facts_of in (
        FACTS,
        {case: _as_facts(ours(f), f) for case, f in FACTS.items() if case.endswith("/deployment")},
    ):
        old, mid, now = (facts_of[f"{v}/deployment"] for v in VERSIONS)
        assert not new & set(env_names(old)) and new <= set(env_names(mid)) <= set(env_names(now))
        assert "--firewall-bin-path" not in init(old)["args"]  # legacy iptables
        assert init(mid)["args"][:2] == init(now)["args"][:2] == ["--firewall-bin-path", "iptables-nft"]
        assert "command" not in init(mid) and init(now)["command"] == ["/usr/lib/linkerd/linkerd2-proxy-init"]
        assert init(now)["image"] == "cr.l5d.io/linkerd/proxy:test-inject-proxy-version"
        assert init(mid)["image"] == "cr.l5d.io/linkerd/proxy-init:v2.4.3"
        assert init(old)["image"] == "cr.l5d.io/linkerd/proxy-init:v2.4.1"


def _as_facts(pod: dict[str, Any], f: dict[str, Any]) -> dict[str, Any]:
    spec = pod["spec"]
    return {
        key: [c for c in spec.get(key, []) if c["name"] in LINKERD_CONTAINERS]
        for key in ("initContainers", "containers")
    }


# Linkerd's per-pod configuration annotations at 2.16 (pkg/inject's ProxyAnnotations and
# ProxyAlphaConfigAnnotations at edge-24.8.2), each with a value Linkerd accepts; and what
# 2.19 and 2.20 add and drop.
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
ADDED = {
    "2.19": {
        "config.linkerd.io/proxy-metrics-hostname-labels": "true",
        "config.beta.linkerd.io/proxy-enable-native-sidecar": "true",
    },
    "2.20": {
        "config.linkerd.io/proxy-metrics-hostname-labels": "true",
        "config.linkerd.io/proxy-enable-native-sidecar": "true",
        "config.linkerd.io/proxy-additional-env": '[{"name": "FOO", "value": "bar"}]',
    },
}
DROPPED = {"2.20": {"config.linkerd.io/init-image", "config.linkerd.io/init-image-version"}}
ANNOTATIONS = [
    (version, name, value)
    for version in VERSIONS
    for name, value in sorted({**LINKERD_CONFIG, **ADDED.get(version, {})}.items())
    if name not in DROPPED.get(version, ())
]


@pytest.mark.parametrize(("version", "annotation", "value"), ANNOTATIONS)
def test_no_linkerd_configuration_annotation_is_ignored_without_a_word(
    version: str, annotation: str, value: str
) -> None:
    """Each of the version's per-pod settings changes what is injected, or a warning names it."""
    f = FACTS[f"{version}/deployment"]
    policy = parse_policy("", "test")
    snapshot = _control_plane(f, policy)

    def inject(extra: dict[str, str]) -> tuple[dict[str, Any], tuple[str, ...]]:
        doc = _doc({**f, "native": _placement(f)})
        doc["spec"]["template"]["metadata"]["annotations"].update(extra)
        out, (result,) = process(doc, snapshot, policy, default_namespace="default", assume_opt_in=True)
        assert result.outcome is not None and result.outcome.injected, result.report()
        spec = out["spec"]["template"]["spec"]
        return {k: spec.get(k) for k in ("containers", "initContainers")}, result.outcome.warnings

    plain, _ = inject({})
    changed, warnings = inject({annotation: value})
    warned = [w for w in warnings if annotation in w]
    assert changed != plain or warned, f"{annotation} neither applied nor warned about"
    assert not (changed != plain and warned), f"{annotation} both applied and warned about: {warned}"


def test_the_fixtures_are_each_version_s_own_control_plane() -> None:
    """The clusters the comparison starts from carry linkerd-config as each version's chart
    writes it: the version, the images, the iptables mode and the native-sidecar default."""
    for version, mode, native in (("2.16", "legacy", False), ("2.19", "nft", False), ("2.20", "nft", True)):
        values = _values(version, {})
        assert values["linkerdVersion"] == EDGE[version]
        assert values["proxyInit"]["iptablesMode"] == mode
        assert values["proxy"]["nativeSidecar"] is native
        assert ("image" in values["proxyInit"]) is (version != "2.20")
    assert Path(GOLDEN / "clusters" / "linkerd-2.20.yaml").exists()
