"""Istio's proxy configuration, as istiod's injector renders it into ``PROXY_CONFIG``.

The revision's mesh config (the ConfigMap ``istio``, or ``istio-<revision>``, in istiod's
namespace, key ``mesh``) holds ``defaultConfig``: the ProxyConfig every proxy starts from. A
pod's ``proxy.istio.io/config`` annotation replaces whole fields of it (``proxyMetadata`` is
merged name by name, as Istio merges it). What remains is written without the fields that
equal the agent's own defaults (Istio's ``cleanProxyConfig``), in the ProxyConfig message's
field order, as protobuf's JSON writes it. ``proxyMetadata`` also becomes environment
variables of the proxy and its init container. The mesh's ``trustDomain`` is the proxy's.

Fields that would change the pod itself are not applied, each named in a warning: the
proxy's status and admin ports, its interception mode and image are fixed here (its probes,
the redirect rules and Merbridge are built for them).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import yaml

from webhook import yamltext

MESH_KEY = "mesh"
POD_ANNOTATION = "proxy.istio.io/config"
DEFAULT_DISCOVERY = "istiod.istio-system.svc:15012"  # pilot-agent's own default

_STRING = "string"
_DURATION = "duration"
_INT = "int"
_WRAPPED_INT = "wrapped int"
_BOOL = "wrapped bool"
_STRING_MAP = "string map"
_STRINGS = "strings"
_OBJECT = "object"
# ProxyConfig's fields, by their JSON names, in the message's order (protobuf's JSON writes
# them so); an enum's allowed names, its first being the zero value (not written)
FIELDS: dict[str, str | tuple[str, ...]] = {
    "configPath": _STRING,
    "binaryPath": _STRING,
    "serviceCluster": _STRING,
    "tracingServiceName": ("APP_LABEL_AND_NAMESPACE", "CANONICAL_NAME_ONLY", "CANONICAL_NAME_AND_NAMESPACE"),
    "drainDuration": _DURATION,
    "parentShutdownDuration": _DURATION,
    "discoveryAddress": _STRING,
    "discoveryRefreshDelay": _DURATION,
    "zipkinAddress": _STRING,
    "statsdUdpAddress": _STRING,
    "envoyMetricsServiceAddress": _STRING,
    "proxyAdminPort": _INT,
    "availabilityZone": _STRING,
    "controlPlaneAuthPolicy": ("NONE", "MUTUAL_TLS", "INHERIT"),
    "customConfigFile": _STRING,
    "statNameLength": _INT,
    "concurrency": _WRAPPED_INT,
    "proxyBootstrapTemplatePath": _STRING,
    "interceptionMode": ("REDIRECT", "TPROXY", "NONE"),
    "tracing": _OBJECT,
    "sds": _OBJECT,
    "envoyAccessLogService": _OBJECT,
    "envoyMetricsService": _OBJECT,
    "proxyMetadata": _STRING_MAP,
    "runtimeValues": _STRING_MAP,
    "statusPort": _INT,
    "extraStatTags": _STRINGS,
    "gatewayTopology": _OBJECT,
    "terminationDrainDuration": _DURATION,
    "meshId": _STRING,
    "readinessProbe": _OBJECT,
    "proxyStatsMatcher": _OBJECT,
    "holdApplicationUntilProxyStarts": _BOOL,
    "caCertificatesPem": _STRINGS,
    "image": _OBJECT,
    "privateKeyProvider": _OBJECT,
    "proxyHeaders": _OBJECT,
}
# what Istio's cleanProxyConfig leaves out: the agent's defaults
DEFAULTS: dict[str, Any] = {
    "configPath": "./etc/istio/proxy",
    "binaryPath": "/usr/local/bin/envoy",
    "serviceCluster": "istio-proxy",
    "drainDuration": "45s",
    "terminationDrainDuration": "5s",
    "discoveryAddress": DEFAULT_DISCOVERY,
    "proxyAdminPort": 15000,
    "controlPlaneAuthPolicy": "MUTUAL_TLS",
    "statNameLength": 189,
    "statusPort": 15020,
}
# fields that change the pod itself: only their defaults are taken
NOT_APPLIED = {
    "statusPort": "the agent's status port is 15020 (the rewritten probes and Prometheus use it)",
    "proxyAdminPort": "Envoy's admin port is 15000",
    "interceptionMode": "the redirect is REDIRECT (the rules, CNI and Merbridge are built for it)",
    "image": "the proxy's image is the policy's proxy.istio.image",
}
_SECONDS = re.compile(r"^(-?)(\d+)(?:\.(\d{1,9}))?s$")


@dataclass(frozen=True, slots=True)
class MeshConfig:
    """The parts of the mesh config the injector renders: ``defaultConfig`` checked (as
    ProxyConfig fields, by JSON name), ``trustDomain``; and what was not taken."""

    proxy: Mapping[str, Any]
    trust_domain: str | None
    warnings: tuple[str, ...] = ()
    # an OpenTelemetry extension provider enriches spans with the OTel K8s service attributes
    # (serviceAttributeEnrichment: OTEL_SEMANTIC_CONVENTIONS): Istio 1.30's injector then
    # writes OTEL_RESOURCE_ATTRIBUTES
    otel_semantic_conventions: bool = False


def config_map_name(revision: str) -> str:
    return "istio" if revision in ("", "default") else f"istio-{revision}"


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(part[:1].upper() + part[1:] for part in rest)


def duration(value: object) -> str | None:
    """A protobuf Duration as its JSON form writes it ("45s", "1.500s"), or None."""
    if not isinstance(value, str):
        return None
    m = _SECONDS.match(value.strip())
    if m is None:
        return None
    sign, whole, frac = m.group(1), int(m.group(2)), (m.group(3) or "").rstrip("0")
    if not frac:
        return f"{sign}{whole}s"
    digits = 3 if len(frac) <= 3 else 6 if len(frac) <= 6 else 9
    return f"{sign}{whole}.{frac.ljust(digits, '0')}s"


def _value(name: str, kind: str | tuple[str, ...], value: object) -> tuple[Any, str | None]:
    """(the value as protobuf's JSON writes it, or None; what is wrong with it)."""
    if isinstance(kind, tuple):
        if value in kind:
            return value, None
        return None, f"one of {', '.join(kind)}"
    if kind == _STRING:
        return (value, None) if isinstance(value, str) else (None, "a string")
    if kind == _DURATION:
        found = duration(value)
        return (found, None) if found is not None else (None, 'a duration in seconds, as "45s" or "0.5s"')
    if kind in (_INT, _WRAPPED_INT):
        ok = type(value) is int and -(2**31) <= value < 2**31
        return (value, None) if ok else (None, "an integer")
    if kind == _BOOL:
        return (value, None) if isinstance(value, bool) else (None, "true or false")
    if kind == _STRING_MAP:
        ok = isinstance(value, Mapping) and all(isinstance(v, str) for v in value.values())
        return (dict(value), None) if ok else (None, "a map of names to quoted strings")
    if kind == _STRINGS:
        ok = isinstance(value, list) and all(isinstance(v, str) for v in value)
        return (list(value), None) if ok else (None, "a list of strings")
    return (value, None) if isinstance(value, Mapping) else (None, "an object")


def proxy_fields(raw: object, where: str) -> tuple[dict[str, Any], list[str]]:
    """A ProxyConfig from YAML data: each field checked; (the fields, warnings naming what
    was left out and why)."""
    if raw is None:
        return {}, []
    if not isinstance(raw, Mapping):
        return {}, [f"{where} is not applied: not a ProxyConfig object"]
    out: dict[str, Any] = {}
    warnings: list[str] = []
    for key, value in raw.items():
        name = _camel(str(key))
        kind = FIELDS.get(name)
        if kind is None:
            warnings.append(f"{where}: {key} is not applied: not a ProxyConfig field")
            continue
        if value is None:
            continue
        found, want = _value(name, kind, value)
        if want is not None:
            warnings.append(f"{where}: {key} {value!r} is not applied: expected {want}")
            continue
        if name in NOT_APPLIED and found != DEFAULTS.get(
            name, (kind[0] if isinstance(kind, tuple) else None)
        ):
            warnings.append(f"{where}: {key} {value!r} is not applied: {NOT_APPLIED[name]}")
            continue
        out[name] = found
    return out, warnings


@lru_cache(maxsize=16)
def parse_mesh(text: str, where: str) -> MeshConfig:
    """The ``mesh`` key of Istio's mesh ConfigMap (parsed once per distinct text)."""
    try:
        doc = yamltext.load(text)  # refuses an alias bomb and a key named twice
    except yaml.YAMLError as exc:
        problem = str(exc).replace("\n", " ")
        return MeshConfig({}, None, (f"{where} is not applied: not YAML ({problem})",))
    if doc is None:
        return MeshConfig({}, None)
    if not isinstance(doc, Mapping):
        return MeshConfig({}, None, (f"{where} is not applied: not a MeshConfig object",))
    proxy, warnings = proxy_fields(doc.get("defaultConfig"), f"{where} defaultConfig")
    trust = doc.get("trustDomain")
    if trust is not None and not (isinstance(trust, str) and trust):
        warnings.append(f"{where}: trustDomain {trust!r} is not applied: expected a name")
        trust = None
    providers = doc.get("extensionProviders")
    otel = isinstance(providers, list) and any(
        isinstance(p, Mapping)
        and isinstance(p.get("opentelemetry"), Mapping)
        and p["opentelemetry"].get("serviceAttributeEnrichment") == "OTEL_SEMANTIC_CONVENTIONS"
        for p in providers
    )
    return MeshConfig(proxy, trust, tuple(warnings), otel)


def merged(base: Mapping[str, Any], pod: Mapping[str, Any]) -> dict[str, Any]:
    """The pod's fields over the mesh's: each replaces the mesh's whole, but the proxy's
    metadata, merged name by name, and the proxy headers, field by field (Istio's
    MergeProxyConfig)."""
    out = {**base, **pod}
    for name in ("proxyMetadata", "proxyHeaders"):
        if name in base and name in pod:
            out[name] = {**base[name], **pod[name]}
    return out


def pod_fields(annotations: Mapping[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """The pod's ``proxy.istio.io/config`` (YAML or JSON), checked."""
    raw = annotations.get(POD_ANNOTATION)
    if raw is None:
        return {}, []
    try:
        doc = yamltext.load(str(raw))
    except yaml.YAMLError as exc:
        problem = str(exc).replace("\n", " ")
        return {}, [f"{POD_ANNOTATION} is not applied: not YAML ({problem})"]
    return proxy_fields(doc, POD_ANNOTATION)


def cleaned(config: Mapping[str, Any]) -> dict[str, Any]:
    """``config`` as istiod writes PROXY_CONFIG: without the agent's defaults and protobuf's
    zero values (an enum's first name, empty text, lists and maps), in field order."""
    out: dict[str, Any] = {}
    for name, kind in FIELDS.items():
        if name not in config:
            continue
        value = config[name]
        if name in DEFAULTS and value == DEFAULTS[name]:
            continue
        zero = isinstance(kind, tuple) and value == kind[0] and name != "tracingServiceName"
        if zero or (kind in (_STRING, _INT, _STRING_MAP, _STRINGS) and not value):
            continue
        out[name] = dict(sorted(value.items())) if kind == _STRING_MAP else value  # maps: sorted
    return out
