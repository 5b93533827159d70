"""What a pod's own Istio annotations ask of the ``istio`` flavour, checked: the traffic it
captures, user volumes, Prometheus scraping through the agent, and the app probes (and, from
Istio 1.28, lifecycle hooks) the agent runs on the pod's behalf.

Istio's injector applies each of these from the pod; what cannot be applied as written is
named in a warning and left out, never an error (the pod is still meshed).
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
from webhook.dataplane.iptables import PortListError, parse_ports

PROXY = "istio-proxy"
STATUS_PORT = 15020
INCLUDE_RANGES = "traffic.sidecar.istio.io/includeOutboundIPRanges"
INCLUDE_INBOUND = "traffic.sidecar.istio.io/includeInboundPorts"
USER_VOLUME = "sidecar.istio.io/userVolume"
USER_MOUNT = "sidecar.istio.io/userVolumeMount"


@dataclass
class PodConfig:
    """What the pod's Istio annotations ask of the proxy and its rules, checked (None: the
    pod says nothing, the control plane's setting holds); and the warnings for what is not
    applied."""

    include_ranges: str | None = None
    include_inbound: str | None = None
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
            conf.include_ranges = "*"
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
            conf.include_inbound = "*"
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


CANONICAL_NAME = ("service.istio.io/canonical-name", "app.kubernetes.io/name", "app")
CANONICAL_REVISION = ("service.istio.io/canonical-revision", "app.kubernetes.io/version", "version")


def first(labels: Mapping[str, Any], keys: tuple[str, ...], default: str) -> str:
    for key in keys:
        value = labels.get(key)
        if isinstance(value, str) and value:
            return value
    return default


REWRITE_PROBES = "sidecar.istio.io/rewriteAppHTTPProbers"
PROMETHEUS = {
    "prometheus.io/path": "/stats/prometheus",
    "prometheus.io/port": str(STATUS_PORT),
    "prometheus.io/scrape": "true",
}
_PROBES = (("readinessProbe", "readyz"), ("livenessProbe", "livez"), ("startupProbe", "startupz"))
_HOOKS = (("preStop", "prestopz"), ("postStart", "poststartz"))
_TRUE, _FALSE = ("1", "t", "true"), ("0", "f", "false")  # what Go's ParseBool takes, any case


MERGE_METRICS = "prometheus.istio.io/merge-metrics"
PROMETHEUS_ENV = "ISTIO_PROMETHEUS_ANNOTATIONS"
_SCRAPE_FIELDS = {
    "prometheus_io_scrape": "scrape",
    "prometheus_io_path": "path",
    "prometheus_io_port": "port",
}


def parse_bool(value: object) -> bool | None:
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
    merge = parse_bool(annotations.get(MERGE_METRICS, "true"))
    if merge is False or parse_bool(found.get("scrape", "true")) is False:
        return Scraping({})  # the pod is not scraped, or not through the agent: as it is
    if found.get("port") == str(STATUS_PORT):
        return Scraping({})  # the pod already points Prometheus at the agent
    app = None
    if found:
        app = orjson.dumps({f: found.get(f, "") for f in ("scrape", "path", "port")}).decode()
    return Scraping(dict(PROMETHEUS), tuple(k for k in spelled if k not in PROMETHEUS), app)


def rewrite_wanted(pod: Mapping[str, Any], default: bool) -> bool:
    annotations = (pod.get("metadata") or {}).get("annotations") or {}
    value = str(annotations.get(REWRITE_PROBES, "")).strip().lower()
    return True if value in _TRUE else False if value in _FALSE else default


def _port(value: object, named: Mapping[str, int]) -> int | None:
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str):
        return int(value) if value.isascii() and value.isdigit() else named.get(value)
    return None


def _prober(probe: object, named: Mapping[str, int], grpc: bool = True) -> dict[str, Any] | None:
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
    elif grpc and isinstance(probe.get("grpc"), dict):
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


def app_probes(
    pod: Mapping[str, Any], default: bool, lifecycle: bool
) -> tuple[str | None, dict[str, dict[str, Any]]]:
    """Istio's probe rewrite: kubelet's probes of the app containers would be refused by
    the sidecar under STRICT mTLS, so they go to the agent on the status port
    (``/app-health/<container>/readyz|livez|startupz``), which runs the original checks
    listed in ``ISTIO_KUBE_APP_PROBERS``. With ``lifecycle`` (Istio 1.28 on) the
    containers' HTTP and TCP ``preStop``/``postStart`` hooks go the same way
    (``/app-lifecycle/<container>/prestopz|poststartz``). Returns that list (JSON; None when
    empty) and the new fields: container -> field -> value."""
    if not rewrite_wanted(pod, default):
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
            hooks = c.get("lifecycle") if lifecycle else None
            if isinstance(hooks, dict):
                new = dict(hooks)
                for hook, suffix in _HOOKS:
                    prober = _prober(hooks.get(hook), named, grpc=False)
                    if prober is not None:
                        url = f"/app-lifecycle/{c['name']}/{suffix}"
                        probers[url] = prober
                        new[hook] = _through_agent(hooks[hook], url)
                if new != hooks:
                    rewrites.setdefault(c["name"], {})["lifecycle"] = new
    if not probers:
        return None, {}
    return orjson.dumps(dict(sorted(probers.items()))).decode(), rewrites
