"""The ``istio`` flavour: what ``istioctl kube-inject`` gives a pod (Istio 1.23, proxyv2).

``istio-proxy`` running ``pilot-agent proxy sidecar`` with the environment istiod's
template writes (CA address, cert provider, the pod's fields, ``ISTIO_META_*`` with pod
ports, app containers, workload name and owner, cluster and mesh ids), the Prometheus
port, readiness and startup on 15021, UID 1337 and the volumes the agent expects; the
``sidecar.istio.io/status`` annotation (which also keeps Istio's own injector away) and the
``security.istio.io/tlsMode`` label. In iptables mode ``istio-init`` runs ``istio-iptables``
with the pod's skip ports; with a CNI plugin installing the rules, ``istio-validation``
checks them, as Istio's CNI mode does. eBPF and microVM modes add no init container.

Where we differ from ``istioctl kube-inject`` (README: "Istio"): resources and placement are
ours; on legacy placement the proxy is the first container and holds the app until it is
ready (Istio's ``holdApplicationUntilProxyStarts``); containers run with RuntimeDefault
seccomp, so the pod passes ``restricted`` in every mode but iptables.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping
from dataclasses import dataclass
from dataclasses import field as dc_field
from typing import Any

import orjson

from webhook import kubeschema
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
    label_value,
)
from webhook.dataplane.iptables import PortListError, parse_ports
from webhook.dataplane.istiomesh import (
    MESH_KEY,
    MeshConfig,
    cleaned,
    config_map_name,
    merged,
    parse_mesh,
    pod_fields,
)
from webhook.policy import FlavourPolicy, Policy
from webhook.workload import API_VERSIONS


@dataclass(frozen=True, kw_only=True)
class IstioSettings:
    """Where istiod is and how ``istioctl kube-inject`` would configure a proxy."""

    namespace: str = "istio-system"
    revision: str = "default"
    image: str = "docker.io/istio/proxyv2:1.23.2"
    # CA and xDS address; default istiod[-<revision>].<namespace>.svc:15012
    istiod_address: str | None = None
    trust_domain: str = "cluster.local"
    cluster_domain: str = "cluster.local"
    cluster_id: str = "Kubernetes"
    # default: the trust domain, as Istio does
    mesh_id: str | None = None
    log_level: str = "warning"
    component_log_level: str = "misc:error"
    # send the app containers' probes through the agent (Istio's rewriteAppHTTPProbe);
    # a pod's sidecar.istio.io/rewriteAppHTTPProbers annotation overrides it
    rewrite_app_probes: bool = True

    @property
    def ca_address(self) -> str:
        if self.istiod_address:
            return self.istiod_address
        name = "istiod" if self.revision == "default" else f"istiod-{self.revision}"
        return f"{name}.{self.namespace}.svc:15012"


def settings(policy: Policy) -> IstioSettings:
    """The policy's ``proxy.istio``."""
    return policy.proxy.settings("istio")  # type: ignore[no-any-return]


PROXY = "istio-proxy"
INIT = "istio-init"
VALIDATION = "istio-validation"
UID = 1337
STATUS_PORT, HEALTH_PORT, PROM_PORT = 15020, 15021, 15090
RESERVED = (15000, 15001, 15004, 15006, 15008, 15020, 15021, 15053, 15090)
STATUS_ANNOTATION = "sidecar.istio.io/status"
VOLUMES = (
    "workload-socket",
    "credential-socket",
    "workload-certs",
    "istio-envoy",
    "istio-data",
    "istio-podinfo",
    "istio-token",
    "istiod-ca-cert",
)
INCLUDE_RANGES = "traffic.sidecar.istio.io/includeOutboundIPRanges"
INCLUDE_INBOUND = "traffic.sidecar.istio.io/includeInboundPorts"
USER_VOLUME = "sidecar.istio.io/userVolume"
USER_MOUNT = "sidecar.istio.io/userVolumeMount"


@dataclass
class PodConfig:
    """What the pod's Istio annotations ask of the proxy and its rules, checked; and the
    warnings for what is not applied."""

    include_ranges: str = "*"
    include_inbound: str = "*"
    volumes: list[dict[str, Any]] = dc_field(default_factory=list)
    mounts: list[dict[str, Any]] = dc_field(default_factory=list)
    warnings: list[str] = dc_field(default_factory=list)


def _json_objects(annotations: Mapping[str, Any], key: str, conf: PodConfig) -> dict[str, dict[str, Any]]:
    raw = annotations.get(key)
    if raw is None:
        return {}
    try:
        found = orjson.loads(str(raw))
    except orjson.JSONDecodeError as exc:
        conf.warnings.append(f"{key} is not applied: not JSON ({exc})")
        return {}
    if not isinstance(found, dict) or not all(isinstance(v, dict) for v in found.values()):
        conf.warnings.append(
            f'{key} is not applied: expected a JSON object of names to objects, as {{"name": {{...}}}}'
        )
        return {}
    return found


def requested_volumes(pod: Mapping[str, Any]) -> frozenset[str]:
    """The names of the volumes the pod's userVolume annotation asks for."""
    meta = pod.get("metadata")
    annotations = meta.get("annotations") if isinstance(meta, Mapping) else None
    if not isinstance(annotations, Mapping) or USER_VOLUME not in annotations:
        return frozenset()
    try:
        found = orjson.loads(str(annotations[USER_VOLUME]))
    except orjson.JSONDecodeError:
        return frozenset()
    return frozenset(k for k in found if isinstance(k, str)) if isinstance(found, dict) else frozenset()


def pod_config(pod: Mapping[str, Any]) -> PodConfig:
    conf = PodConfig()
    meta = pod.get("metadata") or {}
    annotations = meta.get("annotations") if isinstance(meta, Mapping) else None
    if not isinstance(annotations, Mapping):
        return conf
    ranges = annotations.get(INCLUDE_RANGES)
    if ranges is not None:
        text = ",".join(p.strip() for p in str(ranges).split(",") if p.strip())
        try:
            for part in text.split(",") if text and text != "*" else ():
                ipaddress.ip_network(part, strict=False)
        except ValueError as exc:
            conf.warnings.append(f"{INCLUDE_RANGES} is not applied: {exc}; every range is redirected")
        else:
            conf.include_ranges = text
    inbound = annotations.get(INCLUDE_INBOUND)
    if inbound is not None:
        text = ",".join(p.strip() for p in str(inbound).split(",") if p.strip())
        try:
            if text and text != "*":
                parse_ports(text)
        except PortListError as exc:
            conf.warnings.append(f"{INCLUDE_INBOUND} is not applied: {exc}; every inbound port is redirected")
        else:
            conf.include_inbound = text
    volumes = _json_objects(annotations, USER_VOLUME, conf)
    for name, volume in volumes.items():
        entry = {**volume, "name": name}
        problems = kubeschema.check(entry, "io.k8s.api.core.v1.Volume").errors
        if problems:
            conf.warnings.append(f"{USER_VOLUME}: volume {name!r} is not added: {problems[0]}")
        else:
            conf.volumes.append(entry)
    spec = pod.get("spec") or {}
    own = spec.get("volumes") if isinstance(spec, Mapping) else None
    known = {v.get("name") for v in own if isinstance(v, dict)} if isinstance(own, list) else set()
    known |= {v["name"] for v in conf.volumes}
    for name, mount in _json_objects(annotations, USER_MOUNT, conf).items():
        entry = {**mount, "name": name}
        problems = kubeschema.check(entry, "io.k8s.api.core.v1.VolumeMount").errors
        if problems:
            conf.warnings.append(f"{USER_MOUNT}: mount {name!r} is not added: {problems[0]}")
        elif name not in known:
            conf.warnings.append(f"{USER_MOUNT}: mount {name!r} is not added: the pod has no volume {name!r}")
        else:
            conf.mounts.append(entry)
    return conf


_CANONICAL_NAME = ("service.istio.io/canonical-name", "app.kubernetes.io/name", "app")
_CANONICAL_REVISION = ("service.istio.io/canonical-revision", "app.kubernetes.io/version", "version")


def _first(labels: Mapping[str, Any], keys: tuple[str, ...], default: str) -> str:
    for key in keys:
        value = labels.get(key)
        if isinstance(value, str) and value:
            return value
    return default


def _pod_ports(pod: Mapping[str, Any]) -> str:
    """The app containers' ports laid out as Istio's template writes them: one a line, each
    indented four spaces, a comma before every one but the first."""
    ports = [orjson.dumps(p).decode() for p in container_ports(pod)]
    return "[" + "".join(f"\n    {',' if i else ''}{p}" for i, p in enumerate(ports)) + "\n]"


def _app_containers(pod: Mapping[str, Any]) -> list[str]:
    containers = (pod.get("spec") or {}).get("containers")
    if not isinstance(containers, list):
        return []
    return [c["name"] for c in containers if isinstance(c, dict) and isinstance(c.get("name"), str)]


def _ports(ports: tuple[tuple[int, int], ...]) -> list[str]:
    """istio-iptables hands each item to ``--dport``: a range as iptables writes one, lo:hi
    (spelled out, 1-65535 would be a 373 KiB argument, over Linux's 128 KiB limit)."""
    return [str(lo) if lo == hi else f"{lo}:{hi}" for lo, hi in ports]


def _resource_env(name: str, resource: str) -> dict[str, Any]:
    return {"name": name, "valueFrom": {"resourceFieldRef": {"resource": resource}}}


@dataclass(frozen=True, slots=True)
class ProxySetup:
    """What the mesh config and the pod's proxy.istio.io/config give the proxy: PROXY_CONFIG
    (as istiod writes it), the trust domain and mesh id, and the proxy's metadata (its
    environment); with the decision's notes and the warnings for what is not applied."""

    config: Mapping[str, Any]
    trust_domain: str
    mesh_id: str
    metadata: Mapping[str, str]
    notes: tuple[str, ...] = ()
    warnings: tuple[str, ...] = ()


def proxy_setup(build: Build, pod: Mapping[str, Any], s: IstioSettings) -> ProxySetup:
    """The mesh's defaultConfig (the policy's values where the cluster has no mesh config),
    the pod's proxy.istio.io/config over it; xDS goes to the revision's istiod unless either
    names another; the proxy's threads follow the CPU we size unless the pod sets them."""
    mesh = build.control if isinstance(build.control, MeshConfig) else None
    base = dict(mesh.proxy) if mesh is not None else {}
    meta = pod.get("metadata")
    annotations = meta.get("annotations") if isinstance(meta, Mapping) else None
    own, warnings = pod_fields(annotations if isinstance(annotations, Mapping) else {})
    config = merged(base, own)
    config.setdefault("discoveryAddress", s.ca_address)
    notes: list[str] = []
    threads = build.resources.threads()
    if "concurrency" in own:
        notes.append(
            f"threads: {own['concurrency']} Envoy worker(s) (concurrency), from proxy.istio.io/config"
        )
    elif threads is not None:
        config["concurrency"] = threads[0]
        instead = (
            f" (instead of the mesh's defaultConfig {base['concurrency']})" if "concurrency" in base else ""
        )
        notes.append(f"threads: {threads[0]} Envoy worker(s) (concurrency), from {threads[1]}{instead}")
    if not build.native:
        if config.get("holdApplicationUntilProxyStarts") is False:
            warnings.append(
                "holdApplicationUntilProxyStarts false is not applied: on legacy placement the proxy "
                "is the first container and holds the app until it is ready"
            )
        config["holdApplicationUntilProxyStarts"] = True
    trust = (mesh.trust_domain if mesh is not None else None) or s.trust_domain
    mesh_id = s.mesh_id or config.get("meshId") or trust
    metadata = dict(sorted((config.get("proxyMetadata") or {}).items()))
    for name in [n for n in metadata if n in _OWN_ENV]:
        warnings.append(f"proxyMetadata {name} is not applied: the injector writes {name} itself")
        del metadata[name]
    return ProxySetup(cleaned(config), trust, mesh_id, metadata, tuple(notes), tuple(warnings))


_OWN_ENV = frozenset(
    {
        "PILOT_CERT_PROVIDER",
        "CA_ADDR",
        "POD_NAME",
        "POD_NAMESPACE",
        "INSTANCE_IP",
        "SERVICE_ACCOUNT",
        "HOST_IP",
        "ISTIO_CPU_LIMIT",
        "PROXY_CONFIG",
        "ISTIO_META_POD_PORTS",
        "ISTIO_META_APP_CONTAINERS",
        "GOMEMLIMIT",
        "GOMAXPROCS",
        "ISTIO_META_CLUSTER_ID",
        "ISTIO_META_NODE_NAME",
        "ISTIO_META_INTERCEPTION_MODE",
        "ISTIO_META_WORKLOAD_NAME",
        "ISTIO_META_OWNER",
        "ISTIO_META_MESH_ID",
        "TRUST_DOMAIN",
        "ISTIO_KUBE_APP_PROBERS",
        "ISTIO_PROMETHEUS_ANNOTATIONS",
    }
)


def proxy_env(
    build: Build, pod: Mapping[str, Any], s: IstioSettings, setup: ProxySetup
) -> list[dict[str, Any]]:
    kind, workload = build.workload.kind, build.workload.name
    api = API_VERSIONS.get(kind, "v1")
    owner = f"kubernetes://apis/{api}/namespaces/{build.workload.namespace}/{kind.lower()}s/{workload}"
    return [
        {"name": "PILOT_CERT_PROVIDER", "value": "istiod"},
        {"name": "CA_ADDR", "value": s.ca_address},
        field_env("POD_NAME", "metadata.name"),
        field_env("POD_NAMESPACE", "metadata.namespace"),
        field_env("INSTANCE_IP", "status.podIP"),
        field_env("SERVICE_ACCOUNT", "spec.serviceAccountName"),
        field_env("HOST_IP", "status.hostIP"),
        _resource_env("ISTIO_CPU_LIMIT", "limits.cpu"),
        {"name": "PROXY_CONFIG", "value": orjson.dumps(setup.config).decode() + "\n"},
        {"name": "ISTIO_META_POD_PORTS", "value": _pod_ports(pod)},
        {"name": "ISTIO_META_APP_CONTAINERS", "value": ",".join(_app_containers(pod))},
        _resource_env("GOMEMLIMIT", "limits.memory"),
        _resource_env("GOMAXPROCS", "limits.cpu"),
        {"name": "ISTIO_META_CLUSTER_ID", "value": s.cluster_id},
        field_env("ISTIO_META_NODE_NAME", "spec.nodeName"),
        {"name": "ISTIO_META_INTERCEPTION_MODE", "value": "REDIRECT"},
        {"name": "ISTIO_META_WORKLOAD_NAME", "value": workload},
        {"name": "ISTIO_META_OWNER", "value": owner},
        {"name": "ISTIO_META_MESH_ID", "value": setup.mesh_id},
        {"name": "TRUST_DOMAIN", "value": setup.trust_domain},
        *({"name": k, "value": v} for k, v in setup.metadata.items()),
    ]


def proxy_container(
    build: Build, pod: Mapping[str, Any], s: IstioSettings, setup: ProxySetup, conf: PodConfig | None = None
) -> dict[str, Any]:
    ready = {"httpGet": {"path": "/healthz/ready", "port": HEALTH_PORT}}
    container: dict[str, Any] = {
        "args": [
            "proxy",
            "sidecar",
            "--domain",
            f"$(POD_NAMESPACE).svc.{s.cluster_domain}",
            f"--proxyLogLevel={s.log_level}",
            f"--proxyComponentLogLevel={s.component_log_level}",
            "--log_output_level=default:info",
        ],
        "env": proxy_env(build, pod, s, setup),
        "image": s.image,
        "imagePullPolicy": "IfNotPresent",
        "name": PROXY,
        "ports": [{"containerPort": PROM_PORT, "name": "http-envoy-prom", "protocol": "TCP"}],
        "readinessProbe": {**ready, "failureThreshold": 4, "periodSeconds": 15, "timeoutSeconds": 3},
        "resources": build.resources.as_k8s(),
        "securityContext": _as_proxy_user(),
        "startupProbe": {**ready, "failureThreshold": 600, "periodSeconds": 1, "timeoutSeconds": 3},
        "volumeMounts": [
            {"mountPath": "/var/run/secrets/workload-spiffe-uds", "name": "workload-socket"},
            {"mountPath": "/var/run/secrets/credential-uds", "name": "credential-socket"},
            {"mountPath": "/var/run/secrets/workload-spiffe-credentials", "name": "workload-certs"},
            {"mountPath": "/var/run/secrets/istio", "name": "istiod-ca-cert"},
            {"mountPath": "/var/lib/istio/data", "name": "istio-data"},
            {"mountPath": "/etc/istio/proxy", "name": "istio-envoy"},
            {"mountPath": "/var/run/secrets/tokens", "name": "istio-token"},
            {"mountPath": "/etc/istio/pod", "name": "istio-podinfo"},
        ],
    }
    if conf is not None and conf.mounts:
        container["volumeMounts"] += conf.mounts
    if build.native:
        container["restartPolicy"] = "Always"
        # the pod is shutting down: the agent drains Envoy's listeners before its SIGTERM
        drain = ["pilot-agent", "request", f"--debug-port={STATUS_PORT}", "POST", "drain"]
        container["lifecycle"] = {"preStop": {"exec": {"command": drain}}}
    else:
        container["lifecycle"] = {"postStart": {"exec": {"command": ["pilot-agent", "wait"]}}}
    return container


def init_args(build: Build, validation: bool, conf: PodConfig | None = None) -> list[str]:
    """istio-iptables' flags, the pod's skip ports added to Istio's own, and what it
    includes (every range and port unless its annotations narrow them)."""
    conf = conf or PodConfig()
    inbound = ",".join([str(PROM_PORT), str(HEALTH_PORT), str(STATUS_PORT), *_ports(build.skip_inbound)])
    args = ["istio-iptables", "-p", "15001", "-z", "15006", "-u", str(UID), "-m", "REDIRECT"]
    args += ["-i", conf.include_ranges, "-x", ",".join(build.skip_cidrs), "-b", conf.include_inbound]
    args += ["-d", inbound]
    if build.skip_outbound:
        args += ["-o", ",".join(_ports(build.skip_outbound))]
    args.append("--log_output_level=default:info")
    if validation:
        args += ["--run-validation", "--skip-rule-apply"]
    return args


def init_container(
    build: Build,
    s: IstioSettings,
    *,
    validation: bool,
    conf: PodConfig | None = None,
    metadata: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    security = (
        _as_proxy_user()
        if validation
        else {
            "allowPrivilegeEscalation": False,
            "capabilities": {"add": ["NET_ADMIN", "NET_RAW"], "drop": ["ALL"]},
            "privileged": False,
            "readOnlyRootFilesystem": False,
            "runAsGroup": 0,
            "runAsNonRoot": False,
            "runAsUser": 0,
            "seccompProfile": {"type": "RuntimeDefault"},
        }
    )
    container: dict[str, Any] = {
        "args": init_args(build, validation, conf),
        "image": s.image,
        "imagePullPolicy": "IfNotPresent",
        "name": VALIDATION if validation else INIT,
        "resources": {"limits": {"cpu": "2", "memory": "1Gi"}, "requests": {"cpu": "10m", "memory": "40Mi"}},
        "securityContext": security,
    }
    if metadata:  # the proxy's metadata, as Istio's template gives istio-init too
        container["env"] = [{"name": k, "value": v} for k, v in metadata.items()]
    return container


def _as_proxy_user() -> dict[str, Any]:
    """The security context of istio-proxy and istio-validation: the proxy's uid, nothing
    more (Istio's sidecar template)."""
    return {
        "allowPrivilegeEscalation": False,
        "capabilities": {"drop": ["ALL"]},
        "privileged": False,
        "readOnlyRootFilesystem": True,
        "runAsGroup": UID,
        "runAsNonRoot": True,
        "runAsUser": UID,
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def _volumes() -> tuple[dict[str, Any], ...]:
    return (
        {"emptyDir": {}, "name": "workload-socket"},
        {"emptyDir": {}, "name": "credential-socket"},
        {"emptyDir": {}, "name": "workload-certs"},
        {"emptyDir": {"medium": "Memory"}, "name": "istio-envoy"},
        {"emptyDir": {}, "name": "istio-data"},
        {
            "downwardAPI": {
                "items": [
                    {"fieldRef": {"fieldPath": "metadata.labels"}, "path": "labels"},
                    {"fieldRef": {"fieldPath": "metadata.annotations"}, "path": "annotations"},
                ]
            },
            "name": "istio-podinfo",
        },
        {
            "name": "istio-token",
            "projected": {
                "sources": [
                    {
                        "serviceAccountToken": {
                            "audience": "istio-ca",
                            "expirationSeconds": 43200,
                            "path": "istio-token",
                        }
                    }
                ]
            },
        },
        {"configMap": {"name": "istio-ca-root-cert"}, "name": "istiod-ca-cert"},
    )


REWRITE_PROBES = "sidecar.istio.io/rewriteAppHTTPProbers"
_PROMETHEUS = {
    "prometheus.io/path": "/stats/prometheus",
    "prometheus.io/port": str(STATUS_PORT),
    "prometheus.io/scrape": "true",
}
_PROBES = (("readinessProbe", "readyz"), ("livenessProbe", "livez"), ("startupProbe", "startupz"))
_TRUE, _FALSE = ("1", "t", "true"), ("0", "f", "false")  # what Go's ParseBool takes, any case


MERGE_METRICS = "prometheus.istio.io/merge-metrics"
PROMETHEUS_ENV = "ISTIO_PROMETHEUS_ANNOTATIONS"
_SCRAPE_FIELDS = {
    "prometheus_io_scrape": "scrape",
    "prometheus_io_path": "path",
    "prometheus_io_port": "port",
}


def _bool(value: object) -> bool | None:
    text = str(value).strip().lower()
    return True if text in _TRUE else False if text in _FALSE else None


@dataclass(frozen=True)
class Scraping:
    """Istio's metrics merge: the agent serves the app's metrics with Envoy's on 15020, so
    Prometheus scrapes one port that STRICT mTLS leaves open. The app's own
    ``prometheus.io/*`` annotations (any spelling Prometheus reads as the same label, e.g.
    ``prometheus.io.scrape``) go to the agent in ``ISTIO_PROMETHEUS_ANNOTATIONS``."""

    annotations: Mapping[str, str]  # ours, over the pod's
    removed: tuple[str, ...] = ()  # the pod's other spellings, taken off (and put back on strip)
    app: str | None = None  # the app's scrape configuration, for the agent


def scraping(annotations: Mapping[str, Any]) -> Scraping:
    found: dict[str, str] = {}
    spelled: list[str] = []
    for key in sorted(k for k in annotations if isinstance(k, str)):
        field_name = _SCRAPE_FIELDS.get(re.sub(r"[^a-zA-Z0-9_]", "_", key))
        if field_name is not None:
            found[field_name] = str(annotations[key])
            spelled.append(key)
    merge = _bool(annotations.get(MERGE_METRICS, "true"))
    if merge is False or _bool(found.get("scrape", "true")) is False:
        return Scraping({})  # the pod is not scraped, or not through the agent: as it is
    if found.get("port") == str(STATUS_PORT):
        return Scraping({})  # the pod already points Prometheus at the agent
    app = None
    if found:
        app = orjson.dumps({f: found.get(f, "") for f in ("scrape", "path", "port")}).decode()
    return Scraping(dict(_PROMETHEUS), tuple(k for k in spelled if k not in _PROMETHEUS), app)


def _rewrite_wanted(pod: Mapping[str, Any], s: IstioSettings) -> bool:
    annotations = (pod.get("metadata") or {}).get("annotations") or {}
    value = str(annotations.get(REWRITE_PROBES, "")).strip().lower()
    return True if value in _TRUE else False if value in _FALSE else s.rewrite_app_probes


def _port(value: object, named: Mapping[str, int]) -> int | None:
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str):
        return int(value) if value.isascii() and value.isdigit() else named.get(value)
    return None


def _prober(probe: object, named: Mapping[str, int]) -> dict[str, Any] | None:
    """What the agent checks for ``probe`` (Istio's prober: the handler with its port as a
    number, and the timeout), or None when it has no handler the agent can run."""
    if not isinstance(probe, dict):
        return None
    prober: dict[str, Any]
    if isinstance(probe.get("httpGet"), dict):
        action = probe["httpGet"]
        port = _port(action.get("port"), named)
        if port is None:
            return None
        get = {"path": action.get("path"), "port": port}
        get.update((k, action[k]) for k in ("host", "scheme", "httpHeaders") if k in action)
        prober = {"httpGet": {k: v for k, v in get.items() if v is not None}}
    elif isinstance(probe.get("tcpSocket"), dict):
        port = _port(probe["tcpSocket"].get("port"), named)
        if port is None:
            return None
        tcp = {"port": port, **({"host": probe["tcpSocket"]["host"]} if "host" in probe["tcpSocket"] else {})}
        prober = {"tcpSocket": tcp}
    elif isinstance(probe.get("grpc"), dict):
        prober = {"grpc": dict(probe["grpc"])}
    else:
        return None
    if probe.get("timeoutSeconds"):
        prober["timeoutSeconds"] = probe["timeoutSeconds"]
    return prober


def _through_agent(probe: dict[str, Any], url: str) -> dict[str, Any]:
    """``probe`` asking the agent instead: an HTTP GET of ``url`` on the status port, in
    place of the handler (an HTTPS check becomes HTTP to the agent, which uses HTTPS)."""
    out: dict[str, Any] = {}
    for key, value in probe.items():
        if key in ("httpGet", "tcpSocket", "grpc"):
            get = dict(value) if key == "httpGet" else {}
            get["path"], get["port"] = url, STATUS_PORT
            if get.get("scheme") == "HTTPS":
                get["scheme"] = "HTTP"
            out["httpGet"] = get
        else:
            out[key] = value
    return out


def app_probes(pod: Mapping[str, Any], s: IstioSettings) -> tuple[str | None, dict[str, dict[str, Any]]]:
    """Istio's probe rewrite: kubelet's probes of the app containers would be refused by
    the sidecar under STRICT mTLS, so they go to the agent on the status port
    (``/app-health/<container>/readyz|livez|startupz``), which runs the original checks
    listed in ``ISTIO_KUBE_APP_PROBERS``. Returns that list (JSON; None when empty) and
    the new probes: container -> field -> probe."""
    if not _rewrite_wanted(pod, s):
        return None, {}
    spec = pod.get("spec") or {}
    probers: dict[str, dict[str, Any]] = {}
    rewrites: dict[str, dict[str, Any]] = {}
    for key in ("initContainers", "containers"):
        for c in spec.get(key) or []:
            if not isinstance(c, dict) or c.get("name") == PROXY:
                continue
            named = {
                p["name"]: p["containerPort"]
                for p in (c.get("ports") if isinstance(c.get("ports"), list) else ())
                if isinstance(p, dict) and isinstance(p.get("name"), str) and "containerPort" in p
            }
            for field, suffix in _PROBES:
                prober = _prober(c.get(field), named)
                if prober is not None:
                    url = f"/app-health/{c['name']}/{suffix}"
                    probers[url] = prober
                    rewrites.setdefault(c["name"], {})[field] = _through_agent(c[field], url)
    if not probers:
        return None, {}
    return orjson.dumps(dict(sorted(probers.items()))).decode(), rewrites


def render(build: Build, pod: Mapping[str, Any], policy: Policy) -> DataPlane:
    s = settings(policy)
    conf = pod_config(pod)
    setup = proxy_setup(build, pod, s)
    inits: tuple[dict[str, Any], ...] = ()
    if build.init_rules or build.validator:
        inits = (init_container(build, s, validation=build.validator, conf=conf, metadata=setup.metadata),)
    proxy = proxy_container(build, pod, s, setup, conf)
    probers, probes = app_probes(pod, s)
    if probers is not None:
        proxy["env"].append({"name": "ISTIO_KUBE_APP_PROBERS", "value": probers})
    names = [c["name"] for c in inits]
    status = {
        "initContainers": [*names, PROXY] if build.native else names,
        "containers": None if build.native else [PROXY],  # Istio writes null for none
        "volumes": [*VOLUMES, *(v["name"] for v in conf.volumes)],
        "imagePullSecrets": None,
        "revision": s.revision,
    }
    labels = (pod.get("metadata") or {}).get("labels") or {}
    apps = _app_containers(pod)
    defaults = {
        "kubectl.kubernetes.io/default-container": apps[0] if apps else PROXY,
        "kubectl.kubernetes.io/default-logs-container": apps[0] if apps else PROXY,
    }
    pod_annotations = (pod.get("metadata") or {}).get("annotations") or {}
    scrape = scraping(pod_annotations if isinstance(pod_annotations, Mapping) else {})
    if scrape.app is not None:
        proxy["env"].append({"name": PROMETHEUS_ENV, "value": scrape.app})
    named = _first(labels, _CANONICAL_NAME, "") == ""
    return DataPlane(
        inits=inits,
        proxy=proxy,
        volumes=(*_volumes(), *conf.volumes),
        labels={
            "security.istio.io/tlsMode": "istio",
            "service.istio.io/canonical-name": _first(
                labels, _CANONICAL_NAME, label_value(build.workload.name)
            ),
            "service.istio.io/canonical-revision": _first(labels, _CANONICAL_REVISION, "latest"),
        },
        annotations={
            "istio.io/rev": s.revision,
            STATUS_ANNOTATION: orjson.dumps(status).decode(),
            **scrape.annotations,
        },
        removed_annotations=scrape.removed,
        default_annotations=defaults,
        probes=probes,
        named=frozenset({"service.istio.io/canonical-name"} if named else ()),
        notes=setup.notes,
        warnings=(*conf.warnings, *setup.warnings),
    )


def config_maps(policy: Policy) -> tuple[tuple[str, str], ...]:
    """The revision's mesh config: ConfigMap istio (or istio-<revision>) in istiod's namespace."""
    s = settings(policy)
    return ((s.namespace, config_map_name(s.revision)),)


def control_plane(maps: ConfigMaps, policy: Policy) -> ControlPlane:
    """The revision's mesh config, parsed (once per distinct text); without it, the policy's
    values (and Istio's defaults) are used."""
    s = settings(policy)
    ((namespace, name),) = config_maps(policy)
    where = f"ConfigMap {namespace}/{name}"
    line = f"data plane: istio ({s.image}; istiod {s.ca_address}, revision {s.revision}"
    data = maps.get((namespace, name))
    if data is None or MESH_KEY not in data:
        return ControlPlane(line=f"{line}; no mesh config: {where} not found, the policy's values)")
    mesh = parse_mesh(data[MESH_KEY], f"{where} key {MESH_KEY}")
    return ControlPlane(config=mesh, line=f"{line}; mesh config from {where})", warnings=mesh.warnings)


def never_redirected(policy: Policy) -> tuple[Ports, Ports]:
    """What istio-iptables' -d always leaves to the pod: Envoy's Prometheus port, the health
    and status ports."""
    return ((HEALTH_PORT, HEALTH_PORT), (STATUS_PORT, STATUS_PORT), (PROM_PORT, PROM_PORT)), ()


def describe(policy: Policy, cni: bool) -> list[str]:
    s = settings(policy)
    ((ns, mesh),) = config_maps(policy)
    return [
        f"data plane: istio: {PROXY} {s.image}",
        f"  istiod: {s.ca_address} (revision {s.revision}); trust domain {s.trust_domain}, "
        f"cluster id {s.cluster_id}, mesh id {s.mesh_id or s.trust_domain}",
        f"  mesh config: defaultConfig and trustDomain from ConfigMap {ns}/{mesh}, key mesh, over "
        "these (watched by serve; read from --cluster or --kubeconfig by the dry-run verbs)",
        "  iptables mode: "
        + (f"{VALIDATION} (a CNI plugin installs the rules)" if cni else f"{INIT} {s.image}"),
    ]


FLAVOUR = Flavour(
    name="istio",
    proxy_name=PROXY,
    init_name=INIT,
    ports=RESERVED,
    admin="POST /quitquitquit on port 15020",
    labels_read=(*_CANONICAL_NAME, *_CANONICAL_REVISION),
    resource_annotations={
        "sidecar.istio.io/proxyCPU": "proxy-cpu-request",
        "sidecar.istio.io/proxyCPULimit": "proxy-cpu-limit",
        "sidecar.istio.io/proxyMemory": "proxy-memory-request",
        "sidecar.istio.io/proxyMemoryLimit": "proxy-memory-limit",
    },
    reads_workload=True,
    render=render,
    describe=describe,
    policy=FlavourPolicy(settings=IstioSettings),
    config_maps=config_maps,
    control_plane=control_plane,
    redirect=Redirect(mode="istio", uid=UID, outbound=15001, inbound=15006, repaired=True),
    never_redirected=never_redirected,
    gvisor_gap="istio-iptables' rules are not shown to load in gVisor's netstack",
    writes_sidecar_status=True,
    containers=(PROXY, INIT, VALIDATION),
    named_env=("ISTIO_META_WORKLOAD_NAME", "ISTIO_META_OWNER"),
    volumes=_volumes(),
    requested_volumes=requested_volumes,
    marks=(
        "security.istio.io/tlsMode",
        "service.istio.io/canonical-name",
        "service.istio.io/canonical-revision",
        "istio.io/rev",
        STATUS_ANNOTATION,
        "kubectl.kubernetes.io/default-container",
        "kubectl.kubernetes.io/default-logs-container",
        *_PROMETHEUS,
    ),
)
