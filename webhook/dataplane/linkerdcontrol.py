"""Linkerd's control plane as the ``linkerd`` flavour reads it.

Which Linkerd is installed, and how it is configured, comes from the control plane's own
objects in its namespace: the ``linkerd-config`` ConfigMap (key ``values``: the chart's
values, as Linkerd's proxy injector reads them) and the trust roots
``linkerd-identity-trust-roots``. The policy's ``proxy.linkerd`` overrides only what it sets;
with no ``linkerd-config`` found, the policy's ``version`` is rendered with that version's
chart defaults.

Each supported version is a ``Release`` here: the chart defaults of what is read, and the
few ways its injector's proxy template differs (the pod-identity variables, the
worker-thread variables, the TCP user timeouts, where ``linkerd-init`` comes from, the
native-sidecar default). ``linkerd-config`` is read over the version's defaults into one
``Config`` per snapshot (kept by the ConfigMaps' texts), which ``webhook.dataplane.linkerd``
renders the same way for every version. A value that cannot be applied is named in a
warning and the default kept; a version older than any known stops the decision.
"""

from __future__ import annotations

import hashlib
import ipaddress
import re
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Literal

import yaml

from webhook.dataplane.base import ConfigMaps, ControlPlane, NativeDefault, RedirectRules, image_tag
from webhook.dataplane.iptables import PortListError, parse_ports
from webhook.nested import dotted, overlay
from webhook.policy import Policy, PortList
from webhook.reasons import Skip

_Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)

Firewall = Literal["legacy", "nft"]
InboundPolicy = Literal[
    "all-unauthenticated", "all-authenticated", "cluster-authenticated", "cluster-unauthenticated", "deny"
]


# --- the supported versions ------------------------------------------------------------


# The chart defaults (charts/linkerd-control-plane/values.yaml) of every value the flavour
# reads that is the same in every supported version.
_CHART: dict[str, Any] = {
    "clusterDomain": "cluster.local",
    "clusterNetworks": "10.0.0.0/8,100.64.0.0/10,172.16.0.0/12,192.168.0.0/16,fd00::/8",
    "imagePullPolicy": "IfNotPresent",
    "disableIPv6": True,
    "cniEnabled": False,
    "identityTrustDomain": "",
    "proxy": {
        "image": {"name": "cr.l5d.io/linkerd/proxy", "pullPolicy": "", "version": ""},
        "enableExternalProfiles": False,
        "outboundConnectTimeout": "1000ms",
        "inboundConnectTimeout": "100ms",
        "outboundDiscoveryCacheUnusedTimeout": "5s",
        "inboundDiscoveryCacheUnusedTimeout": "90s",
        "disableOutboundProtocolDetectTimeout": False,
        "disableInboundProtocolDetectTimeout": False,
        "enableShutdownEndpoint": False,
        "logLevel": "warn,linkerd=info,hickory=error",
        "logFormat": "plain",
        "logHTTPHeaders": "off",
        "ports": {"admin": 4191, "control": 4190, "inbound": 4143, "outbound": 4140},
        "uid": 2102,
        "gid": -1,
        "waitBeforeExitSeconds": 0,
        "await": True,
        "requireIdentityOnInboundPorts": "",
        "opaquePorts": "25,587,3306,4444,5432,6379,9300,11211",
        "shutdownGracePeriod": "",
        "accessLog": "",
        "defaultInboundPolicy": "all-unauthenticated",
        "nativeSidecar": False,
        "livenessProbe": {"initialDelaySeconds": 10, "timeoutSeconds": 1},
        "readinessProbe": {"initialDelaySeconds": 2, "timeoutSeconds": 1},
        "startupProbe": {"initialDelaySeconds": 0, "periodSeconds": 1, "failureThreshold": 120},
        "control": {"streams": {"initialTimeout": "3s", "idleTimeout": "5m", "lifetime": "1h"}},
        "inbound": {"server": {"http2": {"keepAliveInterval": "10s", "keepAliveTimeout": "3s"}}},
        "outbound": {"server": {"http2": {"keepAliveInterval": "10s", "keepAliveTimeout": "3s"}}},
    },
    "proxyInit": {
        "iptablesMode": "legacy",
        "ignoreInboundPorts": "4567,4568",
        "ignoreOutboundPorts": "4567,4568",
        "kubeAPIServerPorts": "443,6443",
        "skipSubnets": "",
    },
}

Edge = tuple[int, int, int]


@dataclass(frozen=True, slots=True, kw_only=True)
class Release:
    """One supported Linkerd version as its own injector renders a pod: its chart's defaults
    (``values``) and how its proxy template differs from the others'."""

    version: str  # "2.20"
    edge: str  # the edge release this version is, whose images are its defaults
    first_edge: Edge  # the first edge release whose injector renders as this table says
    values: Mapping[str, Any]
    # linkerd-init: the proxy-init image of its own (its chart's proxyInit.image), or None:
    # it runs from the proxy image, with ``init_command``
    init_command: tuple[str, ...] = ()
    pod_env: bool = False  # _pod_uid, _pod_ip and _pod_containerName (edge-25.1.1)
    workers: bool = False  # proxy.runtime.workers: LINKERD2_PROXY_CORES_MIN (edge-25.3.3)
    user_timeouts: bool = False  # LINKERD2_PROXY_*_USER_TIMEOUT (edge-24.10.1)
    hostname_labels: bool = False  # proxy.metrics.hostnameLabels (edge-25.3.4)
    init_container_ports: bool = False  # the inbound ports include init containers' (2.20)
    # the per-pod annotations its injector reads beyond 2.16's (without their prefix)
    annotations: frozenset[str] = frozenset()
    # the pod annotation its injector reads for native placement ("true"/"false")
    native_annotation: str = "config.alpha.linkerd.io/proxy-enable-native-sidecar"

    @property
    def native(self) -> bool:
        """Whether this version's chart places the proxy as a native sidecar by default."""
        return bool(self.values["proxy"]["nativeSidecar"])


RELEASES: tuple[Release, ...] = (
    Release(
        version="2.16",
        edge="edge-24.8.2",
        first_edge=(24, 2, 5),
        values=overlay(
            _CHART,
            {
                "proxy": {"cores": 0},
                "proxyInit": {
                    "image": {"name": "cr.l5d.io/linkerd/proxy-init", "pullPolicy": "", "version": "v2.4.1"}
                },
            },
        ),
    ),
    Release(
        version="2.19",
        edge="edge-25.10.7",
        first_edge=(25, 4, 5),
        values=overlay(
            _CHART,
            {
                "proxy": {
                    "cores": None,
                    "runtime": {"workers": {"minimum": 1}},
                    "metrics": {"hostnameLabels": False},
                },
                "proxyInit": {
                    "iptablesMode": "nft",
                    "image": {"name": "cr.l5d.io/linkerd/proxy-init", "pullPolicy": "", "version": "v2.4.3"},
                },
            },
        ),
        pod_env=True,
        workers=True,
        user_timeouts=True,
        hostname_labels=True,
        annotations=frozenset({"proxy-metrics-hostname-labels", "beta:proxy-enable-native-sidecar"}),
        native_annotation="config.beta.linkerd.io/proxy-enable-native-sidecar",
    ),
    Release(
        version="2.20",
        edge="edge-26.6.3",
        first_edge=(26, 5, 2),
        values=overlay(
            _CHART,
            {
                "proxy": {
                    "cores": None,
                    "runtime": {"workers": {"minimum": 1}},
                    "metrics": {"hostnameLabels": False},
                    "nativeSidecar": True,
                },
                "proxyInit": {"iptablesMode": "nft"},
            },
        ),
        init_command=("/usr/lib/linkerd/linkerd2-proxy-init",),
        pod_env=True,
        workers=True,
        user_timeouts=True,
        hostname_labels=True,
        init_container_ports=True,
        annotations=frozenset(
            {"proxy-metrics-hostname-labels", "proxy-enable-native-sidecar", "proxy-additional-env"}
        ),
        native_annotation="config.linkerd.io/proxy-enable-native-sidecar",
    ),
)
KNOWN = {r.version: r for r in RELEASES}
NEWEST, OLDEST = RELEASES[-1], RELEASES[0]
DEFAULT_VERSION = NEWEST.version
# the last edge release of each Linkerd version (its ``version-2.X`` tag): which version an
# edge release belongs to
VERSION_EDGES: tuple[tuple[str, Edge], ...] = (
    ("2.15", (24, 2, 4)),
    ("2.16", (24, 8, 2)),
    ("2.17", (24, 11, 8)),
    ("2.18", (25, 4, 4)),
    ("2.19", (25, 10, 7)),
    ("2.20", (26, 6, 3)),
)
FIREWALLS: tuple[Firewall, ...] = ("legacy", "nft")  # what proxy-init v2.4.x can be told to use

_EDGE = re.compile(r"^edge-(\d{2})\.(\d{1,2})\.(\d{1,3})$")
_VERSION = re.compile(r"^(?:stable-|version-|enterprise-|v)?(\d+)\.(\d+)(?:\.(\d+))?(?:[-+].*)?$")


@dataclass(frozen=True, slots=True)
class Version:
    """A Linkerd version string, read: the version line it belongs to (``2.19``), and the
    edge release where it names one."""

    text: str
    line: tuple[int, int]
    edge: Edge | None = None

    @property
    def name(self) -> str:
        return f"{self.line[0]}.{self.line[1]}"


def parse_version(text: object) -> Version | None:
    """``edge-25.10.7`` -> 2.19 (edge-25.10.7); ``stable-2.14.10``, ``2.19.3``, ``v2.19``,
    ``version-2.20``, ``enterprise-2.19.1`` -> that line; anything else -> None."""
    if not isinstance(text, str):
        return None
    raw = text.strip()
    m = _EDGE.match(raw)
    if m is not None:
        edge = (int(m.group(1)), int(m.group(2)), int(m.group(3)))
        for name, last in VERSION_EDGES:
            if edge <= last:
                major, minor = name.split(".")
                return Version(raw, (int(major), int(minor)), edge)
        newest = VERSION_EDGES[-1][0].split(".")
        return Version(raw, (int(newest[0]), int(newest[1]) + 1), edge)
    m = _VERSION.match(raw)
    if m is None:
        return None
    return Version(raw, (int(m.group(1)), int(m.group(2))))


def _line(release: Release) -> tuple[int, int]:
    major, minor = release.version.split(".")
    return int(major), int(minor)


def release_for(version: Version) -> tuple[Release | None, str | None]:
    """The table a control plane of ``version`` is rendered with, and why it is not that
    version's own (a warning), or (None, why) where it is older than any known."""
    said = (
        f"Linkerd {version.name} ({version.text})"
        if version.text != version.name
        else f"Linkerd {version.name}"
    )
    if version.line < _line(OLDEST) or (version.edge is not None and version.edge < OLDEST.first_edge):
        return None, (
            f"{said} is older than the oldest version mesh-injector renders ({OLDEST.version}, "
            f"{OLDEST.edge}); supported: {', '.join(KNOWN)}"
        )
    if version.line > _line(NEWEST):
        return NEWEST, (
            f"{said} is newer than the newest version mesh-injector renders ({NEWEST.version}); "
            f"the pod is rendered as Linkerd {NEWEST.version} renders it"
        )
    found = [
        r
        for r in RELEASES
        if _line(r) <= version.line and (version.edge is None or r.first_edge <= version.edge)
    ]
    release = found[-1]
    if _line(release) == version.line:
        return release, None
    own = next((r for r in RELEASES if _line(r) == version.line), None)
    if own is not None and version.edge is not None:
        first = "edge-{}.{}.{}".format(*own.first_edge)
        return release, (
            f"{said} is an edge release of the {own.version} line from before its injector rendered "
            f"pods as {own.version} does ({first}); the pod is rendered as Linkerd {release.version}"
        )
    return release, (
        f"{said} is not a version mesh-injector renders (supported: {', '.join(KNOWN)}); the pod is "
        f"rendered as Linkerd {release.version}, the newest known version before it"
    )


# --- the policy's section -----------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class LinkerdSettings:
    """The policy's ``proxy.linkerd``: where Linkerd's control plane is, and what to set over
    what it says. Every field left null comes from the control plane's ``linkerd-config``
    (else from ``version``'s chart defaults)."""

    namespace: str = "linkerd"
    # the version rendered where no linkerd-config is found
    version: str = DEFAULT_VERSION
    cluster_domain: str | None = None
    trust_domain: str | None = None
    image: str | None = None
    init_image: str | None = None
    # PEM bundle; when unset, the ConfigMap linkerd-identity-trust-roots in ``namespace``.
    trust_anchors_pem: str | None = None
    log_level: str | None = None
    log_format: Literal["plain", "json"] | None = None
    cluster_networks: str | None = None
    default_inbound_policy: InboundPolicy | None = None
    opaque_ports: PortList | None = None
    ignore_inbound_ports: PortList | None = None
    ignore_outbound_ports: PortList | None = None


def settings(policy: Policy) -> LinkerdSettings:
    """The policy's ``proxy.linkerd``."""
    return policy.proxy.settings("linkerd")  # type: ignore[no-any-return]


def check_policy(policy: Policy) -> str | None:
    s = settings(policy)
    if s.trust_anchors_pem is not None and "-----BEGIN CERTIFICATE-----" not in s.trust_anchors_pem:
        return "proxy.linkerd.trustAnchorsPem: expected PEM certificates (-----BEGIN CERTIFICATE-----)"
    if s.version not in KNOWN:
        known = ", ".join(KNOWN)
        return f"proxy.linkerd.version: {s.version!r} is not a version mesh-injector renders; one of {known}"
    for key, ports in (
        ("ignoreInboundPorts", s.ignore_inbound_ports),
        ("ignoreOutboundPorts", s.ignore_outbound_ports),
    ):
        try:
            parse_ports(ports or "")
        except PortListError as exc:
            return f"proxy.linkerd.{key}: {exc}"
    for key, image in (("image", s.image), ("initImage", s.init_image)):
        if image is not None and not image_tag(image) and "@" not in image:
            return f"proxy.linkerd.{key}: {image!r} has no tag; write the version, e.g. {image}:{NEWEST.edge}"
    return None


# --- the control plane, as read ----------------------------------------------------------

PROXY = "linkerd-proxy"
INIT = "linkerd-init"
VALIDATOR = "linkerd-network-validator"
XTABLES = "linkerd-proxy-init-xtables-lock"
END_ENTITY = "linkerd-identity-end-entity"
TOKEN = "linkerd-identity-token"
INBOUND, OUTBOUND, CONTROL, ADMIN = 4143, 4140, 4190, 4191
UID = 2102
INIT_UID = 65534

TRUST_ROOTS = "linkerd-identity-trust-roots"
TRUST_ROOTS_KEY = "ca-bundle.crt"
CONFIG_MAP = "linkerd-config"
VALUES_KEY = "values"


@dataclass(frozen=True, slots=True, kw_only=True)
class Config:
    """Everything a pod's rendering takes from the control plane (or the policy over it), for
    one snapshot; a pod's own config.linkerd.io annotations go over it (``PodConfig``)."""

    release: Release
    anchors: str
    namespace: str
    cluster_domain: str
    trust_domain: str
    image: str
    pull_policy: str
    init_image: str
    init_pull_policy: str
    log_level: str
    log_format: str
    log_headers: bool
    cluster_networks: str
    default_inbound_policy: str
    opaque_ports: str
    # the control plane's proxy.opaquePorts: what its destination service assumes of a pod
    # without the opaque-ports annotation
    opaque_default: str
    ignore_inbound: str
    ignore_outbound: str
    skip_subnets: str
    disable_ipv6: bool
    firewall: Firewall
    native: bool  # the control plane's proxy.nativeSidecar (the placement is ours)
    native_from: str  # whose that is: the control plane's, or the version's chart default
    await_proxy: bool
    wait_before_exit: int
    shutdown_endpoint: bool
    external_profiles: bool
    require_identity: str
    # (env name, value) of the timeouts the chart writes, in its order
    durations: tuple[tuple[str, str], ...]
    detect_timeouts_off: tuple[str, ...]  # "OUTBOUND", "INBOUND"
    streams: tuple[str, str, str]
    params: tuple[tuple[str, str], ...]  # proxy.inbound / proxy.outbound: env name, value
    hostname_labels: bool
    access_log: str
    shutdown_grace_period: str
    # proxy.runtime.workers (minimum, maximum, maximumCPURatio), or proxy.cores
    workers: tuple[int, int | None, str | None] | None
    gid: int
    probes: Mapping[str, Mapping[str, int]]
    cni_enabled: bool
    notes: tuple[str, ...] = ()  # what is read but decided by mesh-injector


class _Reader:
    """The control plane's values over the release's chart defaults, each checked: a value
    of the wrong kind is named in a warning and the default is used."""

    def __init__(self, values: Mapping[str, Any], release: Release, where: str) -> None:
        self.values = values
        self.release = release
        self.where = where
        self.warnings: list[str] = []

    def raw(self, path: str) -> Any:
        value = dotted(self.values, path)
        return dotted(self.release.values, path) if value is None else value

    def refuse(self, path: str, value: Any, what: str) -> Any:
        """Name ``value`` in a warning; the chart's default instead."""
        default = dotted(self.release.values, path)
        self.warnings.append(
            f"{self.where} {path}: {value!r} is not applied: expected {what}; "
            f"Linkerd {self.release.version}'s default {default!r} is used"
        )
        return default

    def text(self, path: str) -> str:
        value = self.raw(path)
        if value is None:  # neither the control plane nor the chart sets it
            return ""
        if isinstance(value, bool) or not isinstance(value, str | int | float):
            return str(self.refuse(path, value, "text") or "")
        return str(value)

    def flag(self, path: str) -> bool:
        value = self.raw(path)
        if not isinstance(value, bool):
            return bool(self.refuse(path, value, "true or false"))
        return value

    def number(self, path: str) -> int:
        value = self.raw(path)
        if isinstance(value, bool) or not isinstance(value, int):
            found = self.refuse(path, value, "an integer")
            return int(found) if isinstance(found, int) else 0
        return value

    def ports(self, path: str) -> str:
        value = self.raw(path)
        text = str(value) if isinstance(value, int) and not isinstance(value, bool) else value
        if not isinstance(text, str):
            return str(self.refuse(path, value, "ports and ranges such as 25,3306,8000-8100") or "")
        try:
            parse_ports(text)
        except PortListError as exc:
            return str(self.refuse(path, value, f"ports and ranges ({exc})") or "")
        return text


INBOUND_POLICIES = (
    "all-unauthenticated",
    "all-authenticated",
    "cluster-authenticated",
    "cluster-unauthenticated",
    "deny",
    "audit",
)

DURATION = re.compile(r"^(\d+(\.\d+)?(ns|us|µs|ms|s|m|h))+$")


def _snake(name: str) -> str:
    """camelCase -> CAMEL_CASE, as the chart's ``snakecase | upper`` writes a parameter."""
    return re.sub(r"(?<=[a-z0-9])(?=[A-Z])", "_", name).upper()


def _params(values: Mapping[str, Any]) -> tuple[tuple[str, str], ...]:
    """proxy.inbound / proxy.outbound: {scope: {protocol: {param: value}}} -> environment,
    in the order the chart's template writes them (each level sorted by name)."""
    out: list[tuple[str, str]] = []
    for way in ("inbound", "outbound"):
        scopes = values.get(way) if isinstance(values, Mapping) else None
        for scope, protos in sorted((scopes or {}).items()) if isinstance(scopes, Mapping) else ():
            for proto, params in sorted(protos.items()) if isinstance(protos, Mapping) else ():
                for param, value in sorted(params.items()) if isinstance(params, Mapping) else ():
                    text = ("true" if value else "false") if isinstance(value, bool) else str(value)
                    out.append(
                        (
                            f"LINKERD2_PROXY_{way.upper()}_{_snake(scope)}_{_snake(proto)}_{_snake(param)}",
                            text,
                        )
                    )
    return tuple(out)


def _image(name: str, version: str, default: str, fallback: str, where: str, warnings: list[str]) -> str:
    """The image as the chart writes it: ``name:version`` (``version`` else ``default``). A
    name that already carries a tag or digest is used as it is (the chart would add a second
    tag); an image left without any tag gets ``fallback``, the version's own, with a warning."""
    if "@" in name or image_tag(name):
        if version:
            warnings.append(
                f"{where}: name {name!r} already has a tag; version {version!r} is not added to it"
            )
        return name
    if version or default:
        return f"{name}:{version or default}"
    warnings.append(f"{where}: image {name!r} has no tag and no version is given; {name}:{fallback} is used")
    return f"{name}:{fallback}"


@lru_cache(maxsize=16)
def parse_values(text: str) -> tuple[Mapping[str, Any] | None, str | None]:
    """The ``values`` of linkerd-config (YAML or JSON), parsed once per distinct text: (the
    mapping, None) or (None, what is wrong)."""
    try:
        doc = yaml.load(text, Loader=_Loader)  # a safe loader (CSafeLoader where built)
    except yaml.YAMLError as exc:
        return None, "not YAML or JSON (" + " ".join(str(exc).split())[:160] + ")"
    if not isinstance(doc, Mapping):
        return None, f"not a mapping of the chart's values (a {type(doc).__name__})"
    return doc, None


def _positive(value: object) -> int | None:
    """A count the chart takes (cores, workers): a positive integer, else None."""
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None


def configure(
    values: Mapping[str, Any], release: Release, s: LinkerdSettings, anchors: str, where: str, *, tag: str
) -> tuple[Config, list[str]]:
    """The control plane's ``values`` read over ``release``'s chart defaults, with the
    policy's settings over them; and what could not be applied. ``tag``: the images' tag
    where ``proxy.image.version`` gives none (the control plane's version, as its chart
    writes it; the release's own where that is unknown)."""
    r = _Reader(values, release, where)
    warnings = r.warnings
    image = s.image or _image(
        r.text("proxy.image.name"),
        r.text("proxy.image.version"),
        tag,
        release.edge,
        f"{where} proxy.image",
        warnings,
    )
    pull = r.text("proxy.image.pullPolicy") or r.text("imagePullPolicy") or "IfNotPresent"
    if release.init_command:
        init_image, init_pull = s.init_image or image, pull
    else:
        init_image = s.init_image or _image(
            r.text("proxyInit.image.name"),
            r.text("proxyInit.image.version"),
            "",
            str(dotted(release.values, "proxyInit.image.version")),
            f"{where} proxyInit.image",
            warnings,
        )
        init_pull = r.text("proxyInit.image.pullPolicy") or r.text("imagePullPolicy") or "IfNotPresent"
    mode = r.text("proxyInit.iptablesMode")
    if mode not in FIREWALLS:
        mode = str(r.refuse("proxyInit.iptablesMode", mode, "legacy or nft"))
    log_format = s.log_format or r.text("proxy.logFormat")
    if log_format not in ("plain", "json"):
        log_format = str(r.refuse("proxy.logFormat", log_format, "plain or json"))
    headers = r.text("proxy.logHTTPHeaders")
    if headers not in ("insecure", "off", ""):
        headers = str(r.refuse("proxy.logHTTPHeaders", headers, "insecure or off"))
    inbound_policy = s.default_inbound_policy or r.text("proxy.defaultInboundPolicy")
    if inbound_policy not in INBOUND_POLICIES:
        inbound_policy = str(
            r.refuse("proxy.defaultInboundPolicy", inbound_policy, "one of " + ", ".join(INBOUND_POLICIES))
        )
    durations: list[tuple[str, str]] = []
    for env, path in (
        ("LINKERD2_PROXY_INBOUND_CONNECT_TIMEOUT", "proxy.inboundConnectTimeout"),
        ("LINKERD2_PROXY_OUTBOUND_CONNECT_TIMEOUT", "proxy.outboundConnectTimeout"),
        ("LINKERD2_PROXY_OUTBOUND_DISCOVERY_IDLE_TIMEOUT", "proxy.outboundDiscoveryCacheUnusedTimeout"),
        ("LINKERD2_PROXY_INBOUND_DISCOVERY_IDLE_TIMEOUT", "proxy.inboundDiscoveryCacheUnusedTimeout"),
    ):
        value = r.text(path)
        if value and not DURATION.match(value):
            value = str(r.refuse(path, value, "a duration such as 100ms or 5s"))
        if value:
            durations.append((env, value))
    off = tuple(
        way
        for way, path in (
            ("OUTBOUND", "proxy.disableOutboundProtocolDetectTimeout"),
            ("INBOUND", "proxy.disableInboundProtocolDetectTimeout"),
        )
        if r.flag(path)
    )
    workers: tuple[int, int | None, str | None] | None = None
    cores = _positive(dotted(values, "proxy.cores"))
    found = r.raw("proxy.runtime.workers") if release.workers else None
    if cores is not None:
        workers = (cores, None, None)
    elif isinstance(found, Mapping):
        ratio = found.get("maximumCPURatio")
        workers = (
            _positive(found.get("minimum")) or 1,
            _positive(found.get("maximum")),
            str(ratio)
            if isinstance(ratio, int | float) and not isinstance(ratio, bool) and ratio > 0
            else None,
        )
    probes = {
        name: {
            key: r.number(f"proxy.{name}.{key}")
            for key in dotted(release.values, f"proxy.{name}")  # the chart's keys, in its order
        }
        for name in ("livenessProbe", "readinessProbe", "startupProbe")
    }
    notes: list[str] = []
    for path, ours in (
        ("proxy.ports.inbound", INBOUND),
        ("proxy.ports.outbound", OUTBOUND),
        ("proxy.ports.control", CONTROL),
        ("proxy.ports.admin", ADMIN),
        ("proxy.uid", UID),
    ):
        given = dotted(values, path)
        if given is not None and given != ours:
            warnings.append(
                f"{where} {path}: {given!r} is not applied: the proxy's ports and user are fixed at "
                f"{ours} (the redirect rules and Merbridge are built for them)"
            )
    for path, default in (
        ("proxy.additionalEnv", None),
        ("proxy.experimentalEnv", None),
        ("proxy.tracing.enabled", False),
        ("proxy.isGateway", False),
        ("proxy.isIngress", False),
        ("identity.serviceAccountTokenProjection", True),
    ):
        given = dotted(values, path)
        if given is not None and given != default and given not in ([], {}, ""):
            warnings.append(
                f"{where} {path}: {given!r} is not applied: mesh-injector does not render it "
                "(the proxy gets the chart's default)"
            )
    custom = dotted(values, "proxy.securityContext")
    if isinstance(custom, Mapping) and custom:
        warnings.append(
            f"{where} proxy.securityContext is not applied: the proxy's security context is "
            "mesh-injector's (non-root, read-only, no capabilities; Pod Security restricted)"
        )
    resources = dotted(values, "proxy.resources")
    if isinstance(resources, Mapping) and any(
        isinstance(v, Mapping) and any(v.values()) for v in resources.values()
    ):
        notes.append(
            f"{where} proxy.resources is not used: the proxy is sized by mesh-injector (see resources)"
        )
    trust = s.trust_domain or r.text("identityTrustDomain") or s.cluster_domain or r.text("clusterDomain")
    gid = r.number("proxy.gid")
    config = Config(
        release=release,
        anchors=anchors,
        namespace=s.namespace,
        cluster_domain=s.cluster_domain or r.text("clusterDomain"),
        trust_domain=trust,
        image=image,
        pull_policy=pull,
        init_image=init_image,
        init_pull_policy=init_pull,
        log_level=s.log_level or r.text("proxy.logLevel"),
        log_format=log_format,
        log_headers=headers == "insecure",
        cluster_networks=s.cluster_networks or r.text("clusterNetworks"),
        default_inbound_policy=inbound_policy,
        opaque_ports=s.opaque_ports if s.opaque_ports is not None else r.text("proxy.opaquePorts"),
        opaque_default=r.text("proxy.opaquePorts"),
        ignore_inbound=s.ignore_inbound_ports
        if s.ignore_inbound_ports is not None
        else r.ports("proxyInit.ignoreInboundPorts"),
        ignore_outbound=s.ignore_outbound_ports
        if s.ignore_outbound_ports is not None
        else r.ports("proxyInit.ignoreOutboundPorts"),
        skip_subnets=r.text("proxyInit.skipSubnets"),
        disable_ipv6=r.flag("disableIPv6"),
        firewall=mode,  # type: ignore[arg-type]
        native=r.flag("proxy.nativeSidecar"),
        native_from="the control plane's"
        if dotted(values, "proxy.nativeSidecar") is not None
        else f"Linkerd {release.version}'s default",
        await_proxy=r.flag("proxy.await"),
        wait_before_exit=max(0, r.number("proxy.waitBeforeExitSeconds")),
        shutdown_endpoint=r.flag("proxy.enableShutdownEndpoint"),
        external_profiles=r.flag("proxy.enableExternalProfiles"),
        require_identity=r.text("proxy.requireIdentityOnInboundPorts"),
        durations=tuple(durations),
        detect_timeouts_off=off,
        streams=(
            r.text("proxy.control.streams.initialTimeout"),
            r.text("proxy.control.streams.idleTimeout"),
            r.text("proxy.control.streams.lifetime"),
        ),
        params=_params({way: r.raw(f"proxy.{way}") for way in ("inbound", "outbound")}),
        hostname_labels=release.hostname_labels and r.flag("proxy.metrics.hostnameLabels"),
        access_log=r.text("proxy.accessLog"),
        shutdown_grace_period=r.text("proxy.shutdownGracePeriod"),
        workers=workers,
        gid=gid,
        probes=probes,
        cni_enabled=r.flag("cniEnabled"),
        notes=tuple(notes),
    )
    return config, warnings


def config_maps(policy: Policy) -> tuple[tuple[str, str], ...]:
    """The control plane's configuration and, unless the policy gives them, its identity
    trust roots, both in the control plane's namespace."""
    s = settings(policy)
    maps = ((s.namespace, CONFIG_MAP),)
    return maps if s.trust_anchors_pem else (*maps, (s.namespace, TRUST_ROOTS))


# (policy id, the ConfigMaps' texts) -> (policy, what they make): a snapshot rebuilt for any
# other change (a node, a namespace) reads the same control plane again, so its reading is
# kept by the texts it is made of (a few entries: the control plane changes rarely)
_READ: OrderedDict[tuple[Any, ...], tuple[Policy, ControlPlane]] = OrderedDict()


def control_plane(maps: ConfigMaps, policy: Policy) -> ControlPlane:
    """What Linkerd's control plane says, with the policy over it (made once per distinct
    ConfigMap text and policy; see ``read_control_plane``)."""
    s = settings(policy)
    config, roots = maps.get((s.namespace, CONFIG_MAP)), maps.get((s.namespace, TRUST_ROOTS))
    key = (
        id(policy),
        None if config is None else ("values", config.get(VALUES_KEY)),
        None if roots is None else ("bundle", roots.get(TRUST_ROOTS_KEY)),
    )
    found = _READ.get(key)
    if found is not None and found[0] is policy:
        return found[1]
    plane = read_control_plane(maps, policy)
    _READ[key] = (policy, plane)  # keeps the policy alive, so its id is not reused meanwhile
    while len(_READ) > 16:
        try:
            _READ.popitem(last=False)
        except KeyError:  # another thread took the last one first
            break
    return plane


def read_control_plane(maps: ConfigMaps, policy: Policy) -> ControlPlane:
    """What Linkerd's control plane says, with the policy over it: its version (the table the
    pod is rendered with) and its settings; the trust anchors, without which no pod is
    meshed; a version older than any known, with which none is."""
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
    name = f"ConfigMap {s.namespace}/{CONFIG_MAP}"
    warnings: list[str] = []
    found = maps.get((s.namespace, CONFIG_MAP))
    values: Mapping[str, Any] = {}
    release = KNOWN[s.version]
    tag = release.edge
    source = f"no control plane found ({name} not found): the policy's default version {release.version}"
    if found is not None:
        text = found.get(VALUES_KEY)
        parsed, problem = parse_values(text) if isinstance(text, str) else (None, f"has no key {VALUES_KEY}")
        if parsed is None:
            warnings.append(
                f"{name} {VALUES_KEY} is not applied: {problem}; "
                f"the policy's default version {release.version} is used"
            )
            source = f"{name} unreadable: the policy's default version {release.version}"
        else:
            values = parsed
            said = parsed.get("linkerdVersion")
            version = parse_version(said)
            if version is None:
                warnings.append(
                    f"{name} linkerdVersion {said!r} is not a Linkerd version (edge-YY.M.N, stable-2.X.Y, "
                    f"2.X.Y): the pod is rendered as the policy's default version {release.version}, "
                    "with the control plane's values"
                )
                source = (
                    f"{name} (linkerdVersion {said!r} unreadable: the policy's default version "
                    f"{release.version})"
                )
            else:
                picked, why = release_for(version)
                if picked is None:
                    text = f"{Skip.UNSUPPORTED_VERSION.text}: {why}"
                    return ControlPlane(
                        line="", version=version.name, found=True, missing=(Skip.UNSUPPORTED_VERSION, text)
                    )
                if why is not None:
                    warnings.append(f"{name}: {why}")
                release, tag = picked, version.text
                source = f"{name}, linkerdVersion {version.text}"
    config, problems = configure(values, release, s, anchors, name, tag=tag)
    warnings += problems
    init = "from the proxy image" if release.init_command else config.init_image
    line = (
        f"data plane: linkerd {release.version} ({source}): proxy {config.image}, linkerd-init {init}, "
        f"iptables {config.firewall}; trust anchors from {where}"
    )
    native = NativeDefault(
        config.native,
        annotation=release.native_annotation,
        why=f"{config.native_from} proxy.nativeSidecar is {str(config.native).lower()}",
    )
    return ControlPlane(
        config=config,
        line=line,
        version=release.version,
        found=bool(values),
        firewall=config.firewall,
        firewalls=FIREWALLS,
        native=native,
        rules=redirect_rules(config),
        warnings=tuple(warnings),
    )


# the pod annotations that replace the control plane's proxy-init lists, as Linkerd's
# injector reads them (the namespace's, inherited, count as the pod's)
POD_KEYS = {
    "inbound": "config.linkerd.io/skip-inbound-ports",
    "outbound": "config.linkerd.io/skip-outbound-ports",
    "sources": "config.linkerd.io/skip-subnets",
}


def redirect_rules(config: Config) -> RedirectRules:
    """What linkerd-init leaves alone on a pod without its own skip annotations: the proxy's
    control and admin ports, ``proxyInit.ignoreInboundPorts``/``ignoreOutboundPorts``, and
    inbound connections from ``proxyInit.skipSubnets`` (``--subnets-to-ignore``: a rule on the
    source in proxy-init's inbound chain)."""
    sources, problems = [], []
    for item in (p.strip() for p in config.skip_subnets.split(",")):
        if not item:
            continue
        try:
            sources.append(str(ipaddress.ip_network(item, strict=False)))
        except ValueError:
            problems.append(f"proxyInit.skipSubnets {item!r} is not an IP range")
    return RedirectRules(
        proxy_inbound=((CONTROL, CONTROL), (ADMIN, ADMIN)),
        inbound=parse_ports(config.ignore_inbound),
        outbound=parse_ports(config.ignore_outbound),
        sources=tuple(sources),
        pod_keys=POD_KEYS,
        problems=tuple(problems),
    )


def trust_root_sha256(pem: str) -> str:
    """What Linkerd writes in linkerd.io/trust-root-sha256: the digest of the bundle exactly
    as the control plane publishes it."""
    return hashlib.sha256(pem.encode()).hexdigest()
