"""The ``linkerd`` flavour: what ``linkerd inject`` gives a pod (Linkerd 2.16, edge-24.x).

``linkerd-proxy`` with the environment Linkerd's injector writes (control-plane addresses
and identities derived from the control-plane namespace, cluster domain and trust domain;
the trust anchors; the pod's inbound ports; listen addresses; the pod identity and
destination context), its two ports, probes, security context and identity volumes; the
``linkerd.io/*`` labels and annotations Linkerd's tools read. In iptables mode
``linkerd-init`` runs proxy-init with the pod's skip ports added to Linkerd's own; with a
CNI plugin installing the rules, ``linkerd-network-validator`` checks them, as Linkerd's
CNI mode does. eBPF and microVM modes add no init container: the node agent redirects.

Where we differ from ``linkerd inject`` (README: "Linkerd"): resources are ours; the proxy
also drops ALL capabilities and runs with RuntimeDefault seccomp, so the pod passes the
``restricted`` Pod Security level.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from webhook import __version__
from webhook.dataplane.base import (
    Build,
    ConfigMaps,
    ControlPlane,
    DataPlane,
    Flavour,
    Ports,
    Redirect,
    container_ports,
    field_env,
    image_tag,
    join,
    label_value,
    port_list,
)
from webhook.dataplane.iptables import PortListError, parse_ports
from webhook.policy import FlavourPolicy, Policy, PortList
from webhook.reasons import Skip


@dataclass(frozen=True, kw_only=True)
class LinkerdSettings:
    """Where Linkerd's control plane is and how ``linkerd inject`` would configure a proxy."""

    namespace: str = "linkerd"
    cluster_domain: str = "cluster.local"
    trust_domain: str = "cluster.local"
    image: str = "cr.l5d.io/linkerd/proxy:edge-24.8.2"
    init_image: str = "cr.l5d.io/linkerd/proxy-init:v2.4.1"
    # PEM bundle; when unset, the ConfigMap linkerd-identity-trust-roots in ``namespace``.
    trust_anchors_pem: str | None = None
    log_level: str = "warn,linkerd=info,hickory=error"
    log_format: Literal["plain", "json"] = "plain"
    cluster_networks: str = "10.0.0.0/8,100.64.0.0/10,172.16.0.0/12,192.168.0.0/16,fd00::/8"
    default_inbound_policy: Literal[
        "all-unauthenticated", "all-authenticated", "cluster-authenticated", "cluster-unauthenticated", "deny"
    ] = "all-unauthenticated"
    opaque_ports: PortList = "25,587,3306,4444,5432,6379,9300,11211"
    ignore_inbound_ports: PortList = "4567,4568"
    ignore_outbound_ports: PortList = "4567,4568"


def settings(policy: Policy) -> LinkerdSettings:
    """The policy's ``proxy.linkerd``."""
    return policy.proxy.settings("linkerd")  # type: ignore[no-any-return]


def _check_policy(policy: Policy) -> str | None:
    pem = settings(policy).trust_anchors_pem
    if pem is not None and "-----BEGIN CERTIFICATE-----" not in pem:
        return "proxy.linkerd.trustAnchorsPem: expected PEM certificates (-----BEGIN CERTIFICATE-----)"
    return None


PROXY = "linkerd-proxy"
INIT = "linkerd-init"
VALIDATOR = "linkerd-network-validator"
XTABLES = "linkerd-proxy-init-xtables-lock"
END_ENTITY = "linkerd-identity-end-entity"
TOKEN = "linkerd-identity-token"
INBOUND, OUTBOUND, CONTROL, ADMIN = 4143, 4140, 4190, 4191
UID = 2102
INIT_UID = 65534

# the owner kinds Linkerd labels a pod with: linkerd.io/proxy-<kind>
_OWNER_LABEL = {
    "Deployment": "deployment",
    "ReplicaSet": "replicaset",
    "StatefulSet": "statefulset",
    "DaemonSet": "daemonset",
    "Job": "job",
    "CronJob": "cronjob",
    "ReplicationController": "replicationcontroller",
}


# config.linkerd.io/* annotations of the pod: each is applied as Linkerd's injector applies
# it, or named in a warning saying why not. Nothing the user wrote for the mesh is ignored
# without a word.
CONFIG = "config.linkerd.io/"
CONFIG_ALPHA = "config.alpha.linkerd.io/"
# applied elsewhere: the proxy's resources (sizing) and the skip ports (the exclusions)
_APPLIED_ELSEWHERE = frozenset(
    {
        "proxy-cpu-request",
        "proxy-cpu-limit",
        "proxy-memory-request",
        "proxy-memory-limit",
        "skip-inbound-ports",
        "skip-outbound-ports",
        "skip-subnets",
    }
)
_NOT_APPLIED = {
    **dict.fromkeys(
        ("proxy-image", "proxy-version", "init-image", "init-image-version", "image-pull-policy"),
        "the images are the policy's proxy.linkerd.image and initImage",
    ),
    **dict.fromkeys(
        ("debug-image", "debug-image-version", "debug-image-pull-policy", "enable-debug-sidecar"),
        "no debug sidecar is injected",
    ),
    **dict.fromkeys(
        ("admin-port", "control-port", "inbound-port", "outbound-port", "proxy-uid", "proxy-gid"),
        "the proxy's ports and user are fixed (the redirect rules and Merbridge are built for them)",
    ),
    "pod-inbound-ports": "the inbound ports are read from the pod's containers and probes",
    **dict.fromkeys(
        ("proxy-ephemeral-storage-request", "proxy-ephemeral-storage-limit"),
        "the proxy's resources are sized by mesh-injector (CPU and memory)",
    ),
    "proxy-enable-native-sidecar": "the placement is decided by the policy's nativeSidecar",
}
_DURATIONS = {
    "proxy-inbound-connect-timeout": "LINKERD2_PROXY_INBOUND_CONNECT_TIMEOUT",
    "proxy-outbound-connect-timeout": "LINKERD2_PROXY_OUTBOUND_CONNECT_TIMEOUT",
    "proxy-outbound-discovery-cache-unused-timeout": "LINKERD2_PROXY_OUTBOUND_DISCOVERY_IDLE_TIMEOUT",
    "proxy-inbound-discovery-cache-unused-timeout": "LINKERD2_PROXY_INBOUND_DISCOVERY_IDLE_TIMEOUT",
}
_DURATION = re.compile(r"^(\d+(\.\d+)?(ns|us|µs|ms|s|m|h))+$")
_INBOUND_POLICIES = (
    "all-unauthenticated",
    "all-authenticated",
    "cluster-authenticated",
    "cluster-unauthenticated",
    "deny",
    "audit",
)
HEADERS_OFF = ",[{headers}]=off,[{request}]=off"  # the chart's default: no headers or tokens in logs
LINKERD_OPAQUE_PORTS = "25,587,3306,4444,5432,6379,9300,11211"  # the control plane's default


@dataclass
class PodConfig:
    """What the pod's config.linkerd.io annotations set, checked; and the warnings."""

    log_level: str
    log_format: str
    log_headers: bool = False
    opaque_ports: str = ""
    opaque_from_pod: bool = False
    inbound_policy: str = ""
    durations: dict[str, str] = field(default_factory=dict)
    detect_timeouts_off: tuple[str, ...] = ()
    require_identity: str = ""
    warnings: list[str] = field(default_factory=list)


def pod_config(pod: Mapping[str, Any], s: LinkerdSettings) -> PodConfig:
    meta = pod.get("metadata") or {}
    annotations = meta.get("annotations") if isinstance(meta, Mapping) else None
    conf = PodConfig(
        log_level=s.log_level,
        log_format=s.log_format,
        opaque_ports=s.opaque_ports,
        inbound_policy=s.default_inbound_policy,
    )
    if not isinstance(annotations, Mapping):
        return conf
    off: list[str] = []
    for key, value in sorted(annotations.items()):
        if not isinstance(key, str) or not key.startswith((CONFIG, CONFIG_ALPHA)):
            continue
        name = key.split("/", 1)[1]
        text = str(value).strip()

        def refuse(why: str, key: str = key, text: str = text) -> None:
            conf.warnings.append(f"{key}: {text!r} is not applied: {why}")

        if name in _APPLIED_ELSEWHERE:
            continue
        if name == "proxy-log-level":
            conf.log_level = text if text else conf.log_level
        elif name == "proxy-log-format":
            if text in ("plain", "json"):
                conf.log_format = text
            else:
                refuse("Linkerd takes plain or json")
        elif name == "proxy-log-http-headers":
            if text in ("insecure", "off"):
                conf.log_headers = text == "insecure"
            else:
                refuse("Linkerd takes insecure or off")
        elif name == "opaque-ports":
            try:
                parse_ports(text)
            except PortListError as exc:
                refuse(f"{exc} (named ports are not resolved here: give numbers)")
            else:
                conf.opaque_ports, conf.opaque_from_pod = text, True
        elif name == "default-inbound-policy":
            if text in _INBOUND_POLICIES:
                conf.inbound_policy = text
            else:
                refuse("Linkerd takes " + ", ".join(_INBOUND_POLICIES))
        elif name in _DURATIONS:
            if _DURATION.match(text):
                conf.durations[_DURATIONS[name]] = text
            else:
                refuse("not a duration such as 100ms, 5s or 1m")
        elif name in (
            "proxy-disable-inbound-protocol-detect-timeout",
            "proxy-disable-outbound-protocol-detect-timeout",
        ):
            if text.lower() == "true":
                off.append("INBOUND" if "inbound" in name else "OUTBOUND")
            elif text.lower() != "false":
                refuse("Linkerd takes true or false")
        elif name == "proxy-require-identity-inbound-ports":
            try:
                parse_ports(text)
            except PortListError as exc:
                refuse(str(exc))
            else:
                conf.require_identity = text
        else:
            refuse(_NOT_APPLIED.get(name, "mesh-injector does not support it"))
    conf.detect_timeouts_off = tuple(off)
    return conf


TRUST_ROOTS = "linkerd-identity-trust-roots"
TRUST_ROOTS_KEY = "ca-bundle.crt"


def config_maps(policy: Policy) -> tuple[tuple[str, str], ...]:
    """The identity trust roots Linkerd publishes in its control plane's namespace; not read
    where the policy gives the anchors."""
    s = settings(policy)
    return () if s.trust_anchors_pem else ((s.namespace, TRUST_ROOTS),)


def control_plane(maps: ConfigMaps, policy: Policy) -> ControlPlane:
    """The trust anchors (the policy's, else the ConfigMap's PEM bundle); without them no
    pod is meshed."""
    s = settings(policy)
    if s.trust_anchors_pem:
        anchors, where = s.trust_anchors_pem, "policy proxy.linkerd.trustAnchorsPem"
    else:
        bundle = (maps.get((s.namespace, TRUST_ROOTS)) or {}).get(TRUST_ROOTS_KEY)
        anchors = bundle if bundle is not None and "-----BEGIN CERTIFICATE-----" in bundle else None
        where = f"ConfigMap {s.namespace}/{TRUST_ROOTS}"
    if anchors is None:
        text = (
            f"no Linkerd trust anchors: {where} was not found and the policy sets no "
            "proxy.linkerd.trustAnchorsPem; a proxy without them cannot get an identity"
        )
        return ControlPlane(line="", missing=(Skip.NO_TRUST_ANCHORS, text))
    return ControlPlane(config=anchors, line=f"data plane: linkerd ({s.image}; trust anchors from {where})")


def trust_root_sha256(pem: str) -> str:
    return hashlib.sha256(pem.strip().encode()).hexdigest()


def _identity(s: LinkerdSettings, account: str) -> str:
    return f"{account}.{s.namespace}.serviceaccount.identity.{s.namespace}.{s.trust_domain}"


def _inbound_ports(pod: Mapping[str, Any]) -> str:
    """The app containers' ports and their readiness and liveness HTTP probes' numbered
    ports, in the order Linkerd's injector writes them (sorted as text)."""
    ports = {p["containerPort"] for p in container_ports(pod)}
    containers = (pod.get("spec") or {}).get("containers")
    for c in containers if isinstance(containers, list) else ():
        for probe in ("readinessProbe", "livenessProbe"):
            handler = c.get(probe) if isinstance(c, dict) else None
            action = handler.get("httpGet") if isinstance(handler, dict) else None
            port = action.get("port") if isinstance(action, dict) else None
            if type(port) is int:
                ports.add(port)
    return ",".join(sorted(str(p) for p in ports))


def proxy_env(
    build: Build, pod: Mapping[str, Any], s: LinkerdSettings, conf: PodConfig
) -> list[dict[str, Any]]:
    svc = f"{s.namespace}.svc.{s.cluster_domain}."
    env: list[dict[str, Any]] = [
        field_env("_pod_name", "metadata.name"),
        field_env("_pod_ns", "metadata.namespace"),
        field_env("_pod_nodeName", "spec.nodeName"),
    ]
    threads = build.resources.threads()
    if threads is not None:
        env.append({"name": "LINKERD2_PROXY_CORES", "value": str(threads[0])})
    if conf.require_identity:
        env.append({"name": "LINKERD2_PROXY_INBOUND_PORTS_REQUIRE_IDENTITY", "value": conf.require_identity})
    # a Job's app can stop a regular-container proxy: linkerd-await --shutdown, or POST
    # /shutdown on the admin port (README: "Jobs on clusters without native sidecars")
    shutdown = "true" if build.batch and not build.native else "false"
    env.append({"name": "LINKERD2_PROXY_SHUTDOWN_ENDPOINT_ENABLED", "value": shutdown})
    env += [
        {"name": "LINKERD2_PROXY_LOG", "value": conf.log_level + ("" if conf.log_headers else HEADERS_OFF)},
        {"name": "LINKERD2_PROXY_LOG_FORMAT", "value": conf.log_format},
        {"name": "LINKERD2_PROXY_DESTINATION_SVC_ADDR", "value": f"linkerd-dst-headless.{svc}:8086"},
        {"name": "LINKERD2_PROXY_DESTINATION_PROFILE_NETWORKS", "value": s.cluster_networks},
        {"name": "LINKERD2_PROXY_POLICY_SVC_ADDR", "value": f"linkerd-policy.{svc}:8090"},
        {"name": "LINKERD2_PROXY_POLICY_WORKLOAD", "value": '{"ns":"$(_pod_ns)", "pod":"$(_pod_name)"}\n'},
        {"name": "LINKERD2_PROXY_INBOUND_DEFAULT_POLICY", "value": conf.inbound_policy},
        {"name": "LINKERD2_PROXY_POLICY_CLUSTER_NETWORKS", "value": s.cluster_networks},
        {"name": "LINKERD2_PROXY_CONTROL_STREAM_INITIAL_TIMEOUT", "value": "3s"},
        {"name": "LINKERD2_PROXY_CONTROL_STREAM_IDLE_TIMEOUT", "value": "5m"},
        {"name": "LINKERD2_PROXY_CONTROL_STREAM_LIFETIME", "value": "1h"},
        *(
            {"name": name, "value": conf.durations.get(name, default)}
            for name, default in (
                ("LINKERD2_PROXY_INBOUND_CONNECT_TIMEOUT", "100ms"),
                ("LINKERD2_PROXY_OUTBOUND_CONNECT_TIMEOUT", "1000ms"),
                ("LINKERD2_PROXY_OUTBOUND_DISCOVERY_IDLE_TIMEOUT", "5s"),
                ("LINKERD2_PROXY_INBOUND_DISCOVERY_IDLE_TIMEOUT", "90s"),
            )
        ),
        *(
            {"name": f"LINKERD2_PROXY_{way}_DETECT_TIMEOUT", "value": "365d"}
            for way in conf.detect_timeouts_off
        ),
        {"name": "LINKERD2_PROXY_CONTROL_LISTEN_ADDR", "value": f"0.0.0.0:{CONTROL}"},
        {"name": "LINKERD2_PROXY_ADMIN_LISTEN_ADDR", "value": f"0.0.0.0:{ADMIN}"},
        {"name": "LINKERD2_PROXY_OUTBOUND_LISTEN_ADDR", "value": f"127.0.0.1:{OUTBOUND}"},
        {"name": "LINKERD2_PROXY_OUTBOUND_LISTEN_ADDRS", "value": f"127.0.0.1:{OUTBOUND}"},
        {"name": "LINKERD2_PROXY_INBOUND_LISTEN_ADDR", "value": f"0.0.0.0:{INBOUND}"},
        field_env("LINKERD2_PROXY_INBOUND_IPS", "status.podIPs"),
    ]
    ports = _inbound_ports(pod)
    if ports:
        env.append({"name": "LINKERD2_PROXY_INBOUND_PORTS", "value": ports})
    env += [
        {"name": "LINKERD2_PROXY_DESTINATION_PROFILE_SUFFIXES", "value": f"svc.{s.cluster_domain}."},
        {"name": "LINKERD2_PROXY_INBOUND_ACCEPT_KEEPALIVE", "value": "10000ms"},
        {"name": "LINKERD2_PROXY_OUTBOUND_CONNECT_KEEPALIVE", "value": "10000ms"},
        {"name": "LINKERD2_PROXY_INBOUND_SERVER_HTTP2_KEEP_ALIVE_INTERVAL", "value": "10s"},
        {"name": "LINKERD2_PROXY_INBOUND_SERVER_HTTP2_KEEP_ALIVE_TIMEOUT", "value": "3s"},
        {"name": "LINKERD2_PROXY_OUTBOUND_SERVER_HTTP2_KEEP_ALIVE_INTERVAL", "value": "10s"},
        {"name": "LINKERD2_PROXY_OUTBOUND_SERVER_HTTP2_KEEP_ALIVE_TIMEOUT", "value": "3s"},
        {"name": "LINKERD2_PROXY_INBOUND_PORTS_DISABLE_PROTOCOL_DETECTION", "value": conf.opaque_ports},
        {
            "name": "LINKERD2_PROXY_DESTINATION_CONTEXT",
            "value": '{"ns":"$(_pod_ns)", "nodeName":"$(_pod_nodeName)", "pod":"$(_pod_name)"}\n',
        },
        field_env("_pod_sa", "spec.serviceAccountName"),
        {"name": "_l5d_ns", "value": s.namespace},
        {"name": "_l5d_trustdomain", "value": s.trust_domain},
        {"name": "LINKERD2_PROXY_IDENTITY_DIR", "value": "/var/run/linkerd/identity/end-entity"},
        {
            "name": "LINKERD2_PROXY_IDENTITY_TRUST_ANCHORS",
            "value": (build.control or "").strip() + "\n",
        },
        {"name": "LINKERD2_PROXY_IDENTITY_TOKEN_FILE", "value": f"/var/run/secrets/tokens/{TOKEN}"},
        {"name": "LINKERD2_PROXY_IDENTITY_SVC_ADDR", "value": f"linkerd-identity-headless.{svc}:8080"},
        {
            "name": "LINKERD2_PROXY_IDENTITY_LOCAL_NAME",
            "value": f"$(_pod_sa).$(_pod_ns).serviceaccount.identity.{s.namespace}.{s.trust_domain}",
        },
        {"name": "LINKERD2_PROXY_IDENTITY_SVC_NAME", "value": _identity(s, "linkerd-identity")},
        {"name": "LINKERD2_PROXY_DESTINATION_SVC_NAME", "value": _identity(s, "linkerd-destination")},
        {"name": "LINKERD2_PROXY_POLICY_SVC_NAME", "value": _identity(s, "linkerd-destination")},
    ]
    return env


def proxy_container(
    build: Build, pod: Mapping[str, Any], s: LinkerdSettings, conf: PodConfig
) -> dict[str, Any]:
    ready = {"httpGet": {"path": "/ready", "port": ADMIN}}
    container: dict[str, Any] = {
        "name": PROXY,
        "image": s.image,
        "imagePullPolicy": "IfNotPresent",
        "env": proxy_env(build, pod, s, conf),
        "livenessProbe": {
            "httpGet": {"path": "/live", "port": ADMIN},
            "initialDelaySeconds": 10,
            "timeoutSeconds": 1,
        },
        "ports": [
            {"containerPort": INBOUND, "name": "linkerd-proxy"},
            {"containerPort": ADMIN, "name": "linkerd-admin"},
        ],
        "readinessProbe": {**ready, "initialDelaySeconds": 2, "timeoutSeconds": 1},
        "resources": build.resources.as_k8s(),
        "securityContext": {
            "allowPrivilegeEscalation": False,
            "capabilities": {"drop": ["ALL"]},
            "readOnlyRootFilesystem": True,
            "runAsNonRoot": True,
            "runAsUser": UID,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "terminationMessagePolicy": "FallbackToLogsOnError",
        "volumeMounts": [
            {"mountPath": "/var/run/linkerd/identity/end-entity", "name": END_ENTITY},
            {"mountPath": "/var/run/secrets/tokens", "name": TOKEN},
        ],
    }
    if build.native:
        container["restartPolicy"] = "Always"
        container["startupProbe"] = {**ready, "failureThreshold": 120, "periodSeconds": 1}
    else:
        # the app starts once the proxy is ready (the proxy is the first container)
        container["lifecycle"] = {
            "postStart": {
                "exec": {"command": ["/usr/lib/linkerd/linkerd-await", "--timeout=2m", f"--port={ADMIN}"]}
            }
        }
    return container


_INIT_SECURITY_BASE = {
    "allowPrivilegeEscalation": False,
    "privileged": False,
    "readOnlyRootFilesystem": True,
    "runAsGroup": INIT_UID,
    "runAsNonRoot": True,
    "runAsUser": INIT_UID,
    "seccompProfile": {"type": "RuntimeDefault"},
}
_INIT_RESOURCES = {"limits": {"cpu": "100m", "memory": "50Mi"}, "requests": {"cpu": "10m", "memory": "10Mi"}}


def init_args(build: Build, s: LinkerdSettings) -> list[str]:
    """proxy-init's flags: Linkerd's own, with the pod's skip ports added to Linkerd's."""
    args = [
        "--ipv6=false",
        "--incoming-proxy-port",
        str(INBOUND),
        "--outgoing-proxy-port",
        str(OUTBOUND),
        "--proxy-uid",
        str(UID),
        "--inbound-ports-to-ignore",
        join(f"{CONTROL},{ADMIN}", s.ignore_inbound_ports, port_list(build.skip_inbound)),
    ]
    outbound = join(s.ignore_outbound_ports, port_list(build.skip_outbound))
    if outbound:
        args += ["--outbound-ports-to-ignore", outbound]
    if build.skip_cidrs:
        args += ["--subnets-to-ignore", ",".join(build.skip_cidrs)]
    return args


def init_container(build: Build, s: LinkerdSettings) -> dict[str, Any]:
    security = {**_INIT_SECURITY_BASE, "capabilities": {"add": ["NET_ADMIN", "NET_RAW"], "drop": ["ALL"]}}
    return {
        "args": init_args(build, s),
        "image": s.init_image,
        "imagePullPolicy": "IfNotPresent",
        "name": INIT,
        "resources": _INIT_RESOURCES,
        "securityContext": security,
        "terminationMessagePolicy": "FallbackToLogsOnError",
        "volumeMounts": [{"mountPath": "/run", "name": XTABLES}],
    }


def validator_container(s: LinkerdSettings) -> dict[str, Any]:
    return {
        "args": [
            "--log-format",
            "plain",
            "--log-level",
            "debug",
            "--connect-addr",
            "1.1.1.1:20001",
            "--listen-addr",
            f"0.0.0.0:{OUTBOUND}",
            "--timeout",
            "10s",
        ],
        "command": ["/usr/lib/linkerd/linkerd2-network-validator"],
        "image": s.image,
        "imagePullPolicy": "IfNotPresent",
        "name": VALIDATOR,
        "resources": _INIT_RESOURCES,
        "securityContext": {**_INIT_SECURITY_BASE, "capabilities": {"drop": ["ALL"]}},
        "terminationMessagePolicy": "FallbackToLogsOnError",
    }


def _xtables_volume() -> dict[str, Any]:
    return {"emptyDir": {}, "name": XTABLES}


def _identity_volumes() -> list[dict[str, Any]]:
    return [
        {"emptyDir": {"medium": "Memory"}, "name": END_ENTITY},
        {
            "name": TOKEN,
            "projected": {
                "sources": [
                    {
                        "serviceAccountToken": {
                            "audience": "identity.l5d.io",
                            "expirationSeconds": 86400,
                            "path": TOKEN,
                        }
                    }
                ]
            },
        },
    ]


def render(build: Build, pod: Mapping[str, Any], policy: Policy) -> DataPlane:
    s = settings(policy)
    inits: tuple[dict[str, Any], ...] = ()
    volumes: list[dict[str, Any]] = []
    if build.init_rules:
        inits = (init_container(build, s),)
        volumes.append(_xtables_volume())
    elif build.validator:
        inits = (validator_container(s),)
    volumes += _identity_volumes()
    labels = {"linkerd.io/control-plane-ns": s.namespace, "linkerd.io/workload-ns": build.workload.namespace}
    owner = _OWNER_LABEL.get(build.workload.kind)
    named = frozenset({f"linkerd.io/proxy-{owner}"} if owner is not None else ())
    if owner is not None:
        labels[f"linkerd.io/proxy-{owner}"] = label_value(build.workload.name)
    annotations = {
        "linkerd.io/created-by": f"mesh-injector/{__version__}",
        "linkerd.io/proxy-version": image_tag(s.image) or s.image,
        "linkerd.io/trust-root-sha256": trust_root_sha256(build.control or ""),
    }
    conf = pod_config(pod, s)
    # what Linkerd's destination service reads from the pod: the ports its proxy does not
    # front (no mTLS or HTTP/2 hints for them) and, where ours differ from the control
    # plane's default, the opaque ports
    told: dict[str, str] = {}
    if build.skip_inbound:
        told[CONFIG + "skip-inbound-ports"] = port_list(build.skip_inbound)
    if not conf.opaque_from_pod and conf.opaque_ports != LINKERD_OPAQUE_PORTS:
        told[CONFIG + "opaque-ports"] = conf.opaque_ports
    threads = build.resources.threads()
    notes = (f"threads: {threads[0]} proxy worker(s), from {threads[1]}",) if threads else ()
    return DataPlane(
        inits=inits,
        proxy=proxy_container(build, pod, s, conf),
        volumes=tuple(volumes),
        labels=labels,
        annotations=annotations,
        default_annotations=told,
        named=named,
        notes=notes,
        warnings=tuple(conf.warnings),
    )


def never_redirected(policy: Policy) -> tuple[Ports, Ports]:
    """The control and admin ports, and the policy's ignore ports (Linkerd's defaults)."""
    s = settings(policy)
    try:
        inbound, outbound = parse_ports(s.ignore_inbound_ports), parse_ports(s.ignore_outbound_ports)
    except PortListError:  # proxy-init would refuse them too; the policy check says so
        inbound, outbound = (), ()
    return tuple(sorted({(CONTROL, CONTROL), (ADMIN, ADMIN), *inbound})), outbound


def describe(policy: Policy, cni: bool) -> list[str]:
    s = settings(policy)
    anchors = (
        "from the policy (proxy.linkerd.trustAnchorsPem)"
        if s.trust_anchors_pem
        else f"from ConfigMap {s.namespace}/{TRUST_ROOTS}, key {TRUST_ROOTS_KEY} "
        "(watched by serve; read from --cluster or --kubeconfig by the dry-run verbs)"
    )
    svc = f"{s.namespace}.svc.{s.cluster_domain}."
    return [
        f"data plane: linkerd: {PROXY} {s.image}",
        f"  control plane: namespace {s.namespace}; destination linkerd-dst-headless.{svc}:8086, "
        f"policy linkerd-policy.{svc}:8090, identity linkerd-identity-headless.{svc}:8080",
        f"  identity: trust domain {s.trust_domain}; trust anchors {anchors}",
        "  iptables mode: "
        + (f"{VALIDATOR} (a CNI plugin installs the rules)" if cni else f"{INIT} {s.init_image}"),
    ]


FLAVOUR = Flavour(
    name="linkerd",
    proxy_name=PROXY,
    init_name=INIT,
    ports=(OUTBOUND, INBOUND, CONTROL, ADMIN),
    admin="linkerd-await --shutdown, or POST /shutdown on port 4191",
    labels_read=(),
    resource_annotations={
        "config.linkerd.io/proxy-cpu-request": "proxy-cpu-request",
        "config.linkerd.io/proxy-cpu-limit": "proxy-cpu-limit",
        "config.linkerd.io/proxy-memory-request": "proxy-memory-request",
        "config.linkerd.io/proxy-memory-limit": "proxy-memory-limit",
    },
    reads_workload=True,
    render=render,
    describe=describe,
    policy=FlavourPolicy(settings=LinkerdSettings, check=_check_policy),
    config_maps=config_maps,
    control_plane=control_plane,
    dry_run_needs=(
        "Linkerd's trust anchors; give --cluster with the output of `kubectl get configmap "
        "-n linkerd linkerd-identity-trust-roots -o yaml`, or --kubeconfig, or set "
        "proxy.linkerd.trustAnchorsPem in --policy"
    ),
    inherits=(CONFIG, CONFIG_ALPHA),
    redirect=Redirect(mode="linkerd", uid=UID, outbound=OUTBOUND, inbound=INBOUND, repaired=False),
    never_redirected=never_redirected,
    validator_under_redirector=True,
    gvisor_gap="proxy-init writes -m comment and matches port lists with -m multiport",
    containers=(PROXY, INIT, VALIDATOR),
    volumes=(_xtables_volume(), *_identity_volumes()),
    marks=(
        "linkerd.io/control-plane-ns",
        "linkerd.io/workload-ns",
        "linkerd.io/created-by",
        "linkerd.io/proxy-version",
        "linkerd.io/trust-root-sha256",
        CONFIG + "skip-inbound-ports",
        CONFIG + "opaque-ports",
    ),
    # linkerd.io/proxy-<kind>; and the config annotations a pod inherits from its namespace
    mark_prefixes=("linkerd.io/proxy-", CONFIG, CONFIG_ALPHA),
)
