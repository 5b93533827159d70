"""The ``linkerd`` flavour: what the installed Linkerd control plane's own injector gives a pod.

Which Linkerd, and how it is configured, is read from the control plane's own objects: the
``linkerd-config`` ConfigMap (key ``values``: the chart's values, as the proxy injector
reads them) and the trust roots ``linkerd-identity-trust-roots``, both in the control
plane's namespace. The policy's ``proxy.linkerd`` overrides only what it sets; with no
``linkerd-config`` found, the policy's ``version`` (Linkerd 2.20 unless it says otherwise)
is rendered with that version's chart defaults.

Each supported version is a ``Release``: the chart defaults of what is read, and the few
ways its injector's template differs (the pod-identity variables, the worker-thread
variables, the TCP user timeouts, where ``linkerd-init`` comes from, the native-sidecar
default). The rendering code below is the same for every version.

``linkerd-proxy`` gets the environment Linkerd's injector writes (control-plane addresses
and identities, the trust anchors, the pod's inbound ports, listen addresses, the pod
identity and destination context), its ports, probes, security context and identity
volumes; the ``linkerd.io/*`` labels and annotations Linkerd's tools read. In iptables
mode ``linkerd-init`` runs proxy-init with the version's flags for the chosen firewall
backend (``Build.firewall``); with a CNI plugin installing the rules,
``linkerd-network-validator`` checks them, as Linkerd's CNI mode does. eBPF and microVM
modes add no init container of their own beyond what they need.

Where we differ from Linkerd's injector (README: "Linkerd"): resources, placement and the
interception mode are ours (what the control plane says of them is named in the
explanation where it differs); the proxy also drops ALL capabilities, so the pod passes the
``restricted`` Pod Security level; the skip-port annotations always say exactly what the
redirect leaves alone.
"""

from __future__ import annotations

import hashlib
import re
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, Literal

import yaml

from webhook import __version__
from webhook.dataplane.base import (
    Build,
    ConfigMaps,
    ControlPlane,
    DataPlane,
    Flavour,
    Ports,
    Redirect,
    field_env,
    image_tag,
    join,
    label_value,
    port_list,
)
from webhook.dataplane.iptables import PortListError, parse_ports
from webhook.policy import FlavourPolicy, Policy, PortList
from webhook.reasons import Mode, Skip

_Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)

Firewall = Literal["legacy", "nft"]
InboundPolicy = Literal[
    "all-unauthenticated", "all-authenticated", "cluster-authenticated", "cluster-unauthenticated", "deny"
]


# --- the supported versions ------------------------------------------------------------


def _overlay(base: Mapping[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    """``over`` on ``base``, mapping by mapping (as Helm merges values files)."""
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = _overlay(out[key], value)
        else:
            out[key] = value
    return out


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

    @property
    def native(self) -> bool:
        """Whether this version's chart places the proxy as a native sidecar by default."""
        return bool(self.values["proxy"]["nativeSidecar"])


RELEASES: tuple[Release, ...] = (
    Release(
        version="2.16",
        edge="edge-24.8.2",
        first_edge=(24, 2, 5),
        values=_overlay(
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
        values=_overlay(
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
    ),
    Release(
        version="2.20",
        edge="edge-26.6.3",
        first_edge=(26, 5, 2),
        values=_overlay(
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


def _check_policy(policy: Policy) -> str | None:
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


def _dig(values: Mapping[str, Any], path: str) -> Any:
    node: Any = values
    for part in path.split("."):
        if not isinstance(node, Mapping):
            return None
        node = node.get(part)
    return node


class _Reader:
    """The control plane's values over the release's chart defaults, each checked: a value
    of the wrong kind is named in a warning and the default is used."""

    def __init__(self, values: Mapping[str, Any], release: Release, where: str) -> None:
        self.values = values
        self.release = release
        self.where = where
        self.warnings: list[str] = []

    def raw(self, path: str) -> Any:
        value = _dig(self.values, path)
        return _dig(self.release.values, path) if value is None else value

    def refuse(self, path: str, value: Any, what: str) -> Any:
        """Name ``value`` in a warning; the chart's default instead."""
        default = _dig(self.release.values, path)
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


_DURATION = re.compile(r"^(\d+(\.\d+)?(ns|us|µs|ms|s|m|h))+$")


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
            str(_dig(release.values, "proxyInit.image.version")),
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
        if value and not _DURATION.match(value):
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
    cores = _positive(_dig(values, "proxy.cores"))
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
            for key in _dig(release.values, f"proxy.{name}")  # the chart's keys, in its order
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
        given = _dig(values, path)
        if given is not None and given != ours:
            warnings.append(
                f"{where} {path}: {given!r} is not applied: the proxy's ports and user are fixed at "
                f"{ours} (the redirect rules and Merbridge are built for them)"
            )
    custom = _dig(values, "proxy.securityContext")
    if isinstance(custom, Mapping) and custom:
        warnings.append(
            f"{where} proxy.securityContext is not applied: the proxy's security context is "
            "mesh-injector's (non-root, read-only, no capabilities; Pod Security restricted)"
        )
    resources = _dig(values, "proxy.resources")
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
        if _dig(values, "proxy.nativeSidecar") is not None
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
    return ControlPlane(
        config=config,
        line=line,
        version=release.version,
        found=bool(values),
        firewall=config.firewall,
        firewalls=FIREWALLS,
        warnings=tuple(warnings),
    )


def trust_root_sha256(pem: str) -> str:
    """What Linkerd writes in linkerd.io/trust-root-sha256: the digest of the bundle exactly
    as the control plane publishes it."""
    return hashlib.sha256(pem.encode()).hexdigest()


# --- a pod's own configuration: its config.linkerd.io annotations ------------------------

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
CONFIG_BETA = "config.beta.linkerd.io/"
# applied elsewhere: the proxy's resources (sizing) and the skip ports (the exclusions and
# the rendering of the skip lists)
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
        "the images are the control plane's (linkerd-config) or the policy's proxy.linkerd.image/initImage",
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
        ("proxy-ephemeral-storage-request", "proxy-ephemeral-storage-limit", "proxy-cpu-ratio-limit"),
        "the proxy's resources and threads are sized by mesh-injector (CPU and memory)",
    ),
    "proxy-enable-native-sidecar": "the placement is decided by the policy's nativeSidecar",
    "proxy-await": "the proxy always holds the app until it is ready (mesh-injector's placement)",
}
_DURATIONS = {
    "proxy-inbound-connect-timeout": "LINKERD2_PROXY_INBOUND_CONNECT_TIMEOUT",
    "proxy-outbound-connect-timeout": "LINKERD2_PROXY_OUTBOUND_CONNECT_TIMEOUT",
    "proxy-outbound-discovery-cache-unused-timeout": "LINKERD2_PROXY_OUTBOUND_DISCOVERY_IDLE_TIMEOUT",
    "proxy-inbound-discovery-cache-unused-timeout": "LINKERD2_PROXY_INBOUND_DISCOVERY_IDLE_TIMEOUT",
}
INBOUND_POLICIES = (
    "all-unauthenticated",
    "all-authenticated",
    "cluster-authenticated",
    "cluster-unauthenticated",
    "deny",
    "audit",
)
HEADERS_OFF = ",[{headers}]=off,[{request}]=off"  # the chart's default: no headers or tokens in logs


@dataclass
class PodConfig:
    """The control plane's configuration with what the pod's config.linkerd.io annotations
    set over it, checked; and the warnings."""

    log_level: str
    log_format: str
    log_headers: bool
    opaque_ports: str
    opaque_from_pod: bool = False
    inbound_policy: str = ""
    durations: dict[str, str] = field(default_factory=dict)
    detect_timeouts_off: tuple[str, ...] = ()
    require_identity: str = ""
    access_log: str = ""
    shutdown_grace_period: str = ""
    shutdown_endpoint: bool | None = None
    hostname_labels: bool = False
    warnings: list[str] = field(default_factory=list)


def _applies(name: str, key: str, release: Release) -> bool:
    """Whether ``release``'s injector reads this annotation (a newer one's is warned about)."""
    newer = {"proxy-metrics-hostname-labels", "proxy-enable-native-sidecar", "proxy-additional-env"}
    if key.startswith(CONFIG_BETA):
        return f"beta:{name}" in release.annotations
    if key.startswith(CONFIG) and name in newer:
        return name in release.annotations
    return True


def pod_config(pod: Mapping[str, Any], c: Config) -> PodConfig:
    meta = pod.get("metadata") or {}
    annotations = meta.get("annotations") if isinstance(meta, Mapping) else None
    conf = PodConfig(
        log_level=c.log_level,
        log_format=c.log_format,
        log_headers=c.log_headers,
        opaque_ports=c.opaque_ports,
        inbound_policy=c.default_inbound_policy,
        durations=dict(c.durations),
        detect_timeouts_off=c.detect_timeouts_off,
        require_identity=c.require_identity,
        access_log=c.access_log,
        shutdown_grace_period=c.shutdown_grace_period,
        hostname_labels=c.hostname_labels,
    )
    if not isinstance(annotations, Mapping):
        return conf
    off = set(conf.detect_timeouts_off)
    for key, value in sorted(annotations.items()):
        if not isinstance(key, str) or not key.startswith((CONFIG, CONFIG_ALPHA, CONFIG_BETA)):
            continue
        name = key.split("/", 1)[1]
        text = str(value).strip()

        def refuse(why: str, key: str = key, text: str = text) -> None:
            conf.warnings.append(f"{key}: {text!r} is not applied: {why}")

        if not _applies(name, key, c.release):
            refuse(f"Linkerd {c.release.version}'s injector does not read it")
        elif name in _APPLIED_ELSEWHERE:
            continue
        elif name == "proxy-log-level":
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
            if text in INBOUND_POLICIES:
                conf.inbound_policy = text
            else:
                refuse("Linkerd takes " + ", ".join(INBOUND_POLICIES))
        elif name in _DURATIONS:
            if _DURATION.match(text):
                conf.durations[_DURATIONS[name]] = text
            else:
                refuse("not a duration such as 100ms, 5s or 1m")
        elif name in (
            "proxy-disable-inbound-protocol-detect-timeout",
            "proxy-disable-outbound-protocol-detect-timeout",
        ):
            way = "INBOUND" if "inbound" in name else "OUTBOUND"
            if text.lower() in ("true", "false"):
                (off.add if text.lower() == "true" else off.discard)(way)
            else:
                refuse("Linkerd takes true or false")
        elif name == "proxy-require-identity-inbound-ports":
            try:
                parse_ports(text)
            except PortListError as exc:
                refuse(str(exc))
            else:
                conf.require_identity = text
        elif name == "access-log":
            if text in ("apache", "json"):
                conf.access_log = text
            else:
                refuse("Linkerd takes apache or json")
        elif name == "shutdown-grace-period":
            if _DURATION.match(text):
                conf.shutdown_grace_period = text
            else:
                refuse("not a duration such as 30s")
        elif name == "proxy-admin-shutdown":
            if text in ("enabled", "disabled"):
                conf.shutdown_endpoint = text == "enabled"
            else:
                refuse("Linkerd takes enabled or disabled")
        elif name == "proxy-metrics-hostname-labels":
            if text.lower() in ("true", "false"):
                conf.hostname_labels = text.lower() == "true"
            else:
                refuse("Linkerd takes true or false")
        else:
            refuse(_NOT_APPLIED.get(name, "mesh-injector does not support it"))
    conf.detect_timeouts_off = tuple(w for w in ("OUTBOUND", "INBOUND") if w in off)
    return conf


# --- rendering ---------------------------------------------------------------------------


def _identity(c: Config, account: str) -> str:
    return f"{account}.{c.namespace}.serviceaccount.identity.{c.namespace}.{c.trust_domain}"


def _inbound_ports(pod: Mapping[str, Any], with_inits: bool) -> str:
    """The app containers' ports (and, from 2.20, the init containers') and their readiness
    and liveness HTTP probes' numbered ports, in the order Linkerd's injector writes them
    (sorted as text)."""
    spec = pod.get("spec") or {}
    keys = ("initContainers", "containers") if with_inits else ("containers",)
    ports: set[int] = set()
    for key in keys:
        items = spec.get(key)
        for c in items if isinstance(items, list) else ():
            if not isinstance(c, dict):
                continue
            for p in c.get("ports") or () if isinstance(c.get("ports"), list) else ():
                if isinstance(p, dict) and type(p.get("containerPort")) is int:
                    ports.add(p["containerPort"])
            for probe in ("readinessProbe", "livenessProbe"):
                action = (c.get(probe) or {}).get("httpGet") if isinstance(c.get(probe), dict) else None
                port = action.get("port") if isinstance(action, dict) else None
                if type(port) is int:
                    ports.add(port)
    return ",".join(sorted(str(p) for p in ports))


def _listen(c: Config, port: int) -> str:
    return f"{'0.0.0.0' if c.disable_ipv6 else '[::]'}:{port}"


def proxy_env(build: Build, pod: Mapping[str, Any], c: Config, conf: PodConfig) -> list[dict[str, Any]]:
    release = c.release
    svc = f"{c.namespace}.svc.{c.cluster_domain}."
    env: list[dict[str, Any]] = [
        field_env("_pod_name", "metadata.name"),
        field_env("_pod_ns", "metadata.namespace"),
    ]
    if release.pod_env:
        env += [field_env("_pod_uid", "metadata.uid"), field_env("_pod_ip", "status.podIP")]
    env.append(field_env("_pod_nodeName", "spec.nodeName"))
    if release.pod_env:
        env.append({"name": "_pod_containerName", "value": PROXY})
    env += _cores_env(build, c)
    if conf.require_identity:
        env.append({"name": "LINKERD2_PROXY_INBOUND_PORTS_REQUIRE_IDENTITY", "value": conf.require_identity})
    # a Job's app can stop a regular-container proxy: linkerd-await --shutdown, or POST
    # /shutdown on the admin port (README: "Jobs on clusters without native sidecars")
    if conf.shutdown_endpoint is not None:
        shutdown = conf.shutdown_endpoint
    else:
        shutdown = c.shutdown_endpoint or (build.batch and not build.native)
    env.append({"name": "LINKERD2_PROXY_SHUTDOWN_ENDPOINT_ENABLED", "value": "true" if shutdown else "false"})
    env += [
        {"name": "LINKERD2_PROXY_LOG", "value": conf.log_level + ("" if conf.log_headers else HEADERS_OFF)},
        {"name": "LINKERD2_PROXY_LOG_FORMAT", "value": conf.log_format},
        {"name": "LINKERD2_PROXY_DESTINATION_SVC_ADDR", "value": f"linkerd-dst-headless.{svc}:8086"},
        {"name": "LINKERD2_PROXY_DESTINATION_PROFILE_NETWORKS", "value": c.cluster_networks},
        {"name": "LINKERD2_PROXY_POLICY_SVC_ADDR", "value": f"linkerd-policy.{svc}:8090"},
        {"name": "LINKERD2_PROXY_POLICY_WORKLOAD", "value": '{"ns":"$(_pod_ns)", "pod":"$(_pod_name)"}\n'},
        {"name": "LINKERD2_PROXY_INBOUND_DEFAULT_POLICY", "value": conf.inbound_policy},
        {"name": "LINKERD2_PROXY_POLICY_CLUSTER_NETWORKS", "value": c.cluster_networks},
        {"name": "LINKERD2_PROXY_CONTROL_STREAM_INITIAL_TIMEOUT", "value": c.streams[0]},
        {"name": "LINKERD2_PROXY_CONTROL_STREAM_IDLE_TIMEOUT", "value": c.streams[1]},
        {"name": "LINKERD2_PROXY_CONTROL_STREAM_LIFETIME", "value": c.streams[2]},
        *({"name": name, "value": value} for name, value in _durations(conf)),
        *(
            {"name": f"LINKERD2_PROXY_{way}_DETECT_TIMEOUT", "value": "365d"}
            for way in conf.detect_timeouts_off
        ),
        {"name": "LINKERD2_PROXY_CONTROL_LISTEN_ADDR", "value": _listen(c, CONTROL)},
        {"name": "LINKERD2_PROXY_ADMIN_LISTEN_ADDR", "value": _listen(c, ADMIN)},
        {"name": "LINKERD2_PROXY_OUTBOUND_LISTEN_ADDR", "value": f"127.0.0.1:{OUTBOUND}"},
        {
            "name": "LINKERD2_PROXY_OUTBOUND_LISTEN_ADDRS",
            "value": f"127.0.0.1:{OUTBOUND}" + ("" if c.disable_ipv6 else f",[::1]:{OUTBOUND}"),
        },
        {"name": "LINKERD2_PROXY_INBOUND_LISTEN_ADDR", "value": _listen(c, INBOUND)},
        field_env("LINKERD2_PROXY_INBOUND_IPS", "status.podIPs"),
    ]
    ports = _inbound_ports(pod, release.init_container_ports)
    if ports:
        env.append({"name": "LINKERD2_PROXY_INBOUND_PORTS", "value": ports})
    suffixes = "." if c.external_profiles else f"svc.{c.cluster_domain}."
    env += [
        {"name": "LINKERD2_PROXY_DESTINATION_PROFILE_SUFFIXES", "value": suffixes},
        {"name": "LINKERD2_PROXY_INBOUND_ACCEPT_KEEPALIVE", "value": "10000ms"},
        {"name": "LINKERD2_PROXY_OUTBOUND_CONNECT_KEEPALIVE", "value": "10000ms"},
    ]
    if release.user_timeouts:
        env += [
            {"name": "LINKERD2_PROXY_INBOUND_ACCEPT_USER_TIMEOUT", "value": "30s"},
            {"name": "LINKERD2_PROXY_OUTBOUND_CONNECT_USER_TIMEOUT", "value": "30s"},
        ]
    if release.hostname_labels:
        env.append(
            {
                "name": "LINKERD2_PROXY_OUTBOUND_METRICS_HOSTNAME_LABELS",
                "value": str(conf.hostname_labels).lower(),
            }
        )
    env += [{"name": name, "value": value} for name, value in c.params]
    if conf.opaque_ports:
        env.append(
            {"name": "LINKERD2_PROXY_INBOUND_PORTS_DISABLE_PROTOCOL_DETECTION", "value": conf.opaque_ports}
        )
    env += [
        {
            "name": "LINKERD2_PROXY_DESTINATION_CONTEXT",
            "value": '{"ns":"$(_pod_ns)", "nodeName":"$(_pod_nodeName)", "pod":"$(_pod_name)"}\n',
        },
        field_env("_pod_sa", "spec.serviceAccountName"),
        {"name": "_l5d_ns", "value": c.namespace},
        {"name": "_l5d_trustdomain", "value": c.trust_domain},
        {"name": "LINKERD2_PROXY_IDENTITY_DIR", "value": "/var/run/linkerd/identity/end-entity"},
        {"name": "LINKERD2_PROXY_IDENTITY_TRUST_ANCHORS", "value": c.anchors.strip() + "\n"},
        {"name": "LINKERD2_PROXY_IDENTITY_TOKEN_FILE", "value": f"/var/run/secrets/tokens/{TOKEN}"},
        {"name": "LINKERD2_PROXY_IDENTITY_SVC_ADDR", "value": f"linkerd-identity-headless.{svc}:8080"},
        {
            "name": "LINKERD2_PROXY_IDENTITY_LOCAL_NAME",
            "value": f"$(_pod_sa).$(_pod_ns).serviceaccount.identity.{c.namespace}.{c.trust_domain}",
        },
        {"name": "LINKERD2_PROXY_IDENTITY_SVC_NAME", "value": _identity(c, "linkerd-identity")},
        {"name": "LINKERD2_PROXY_DESTINATION_SVC_NAME", "value": _identity(c, "linkerd-destination")},
        {"name": "LINKERD2_PROXY_POLICY_SVC_NAME", "value": _identity(c, "linkerd-destination")},
    ]
    if conf.access_log:
        env.append({"name": "LINKERD2_PROXY_ACCESS_LOG", "value": conf.access_log})
    if conf.shutdown_grace_period:
        env.append({"name": "LINKERD2_PROXY_SHUTDOWN_GRACE_PERIOD", "value": conf.shutdown_grace_period})
    return env


def _durations(conf: PodConfig) -> list[tuple[str, str]]:
    order = (
        "LINKERD2_PROXY_INBOUND_CONNECT_TIMEOUT",
        "LINKERD2_PROXY_OUTBOUND_CONNECT_TIMEOUT",
        "LINKERD2_PROXY_OUTBOUND_DISCOVERY_IDLE_TIMEOUT",
        "LINKERD2_PROXY_INBOUND_DISCOVERY_IDLE_TIMEOUT",
    )
    return [(name, conf.durations[name]) for name in order if conf.durations.get(name)]


def _cores_env(build: Build, c: Config) -> list[dict[str, Any]]:
    """The proxy's worker threads: the count the CPU we size pays for (``Build.resources``);
    where a VerticalPodAutoscaler sizes the proxy, what the control plane says (as Linkerd
    writes it: ``proxy.cores``, or from 2.19 ``proxy.runtime.workers``)."""
    threads = build.resources.threads()
    if threads is not None:
        n = str(threads[0])
        return [{"name": "LINKERD2_PROXY_CORES", "value": n}] + (
            [{"name": "LINKERD2_PROXY_CORES_MIN", "value": n}] if c.release.workers else []
        )
    if c.workers is None:
        return []
    minimum, maximum, ratio = c.workers
    env = [{"name": "LINKERD2_PROXY_CORES", "value": str(minimum)}]
    if c.release.workers:
        env.append({"name": "LINKERD2_PROXY_CORES_MIN", "value": str(minimum)})
        if maximum is not None:
            env.append({"name": "LINKERD2_PROXY_CORES_MAX", "value": str(maximum)})
        if ratio is not None:
            env.append({"name": "LINKERD2_PROXY_CORES_MAX_RATIO", "value": ratio})
    return env


def _probe(c: Config, name: str, path: str) -> dict[str, Any]:
    """A probe as the chart writes it (a zero is left out, as the API's JSON leaves it)."""
    return {"httpGet": {"path": path, "port": ADMIN}, **{k: v for k, v in c.probes[name].items() if v}}


def proxy_container(build: Build, pod: Mapping[str, Any], c: Config, conf: PodConfig) -> dict[str, Any]:
    security: dict[str, Any] = {
        "allowPrivilegeEscalation": False,
        "capabilities": {"drop": ["ALL"]},
        "readOnlyRootFilesystem": True,
        "runAsNonRoot": True,
        "runAsUser": UID,
        "seccompProfile": {"type": "RuntimeDefault"},
    }
    if c.gid >= 0:
        security["runAsGroup"] = c.gid
    container: dict[str, Any] = {
        "name": PROXY,
        "image": c.image,
        "imagePullPolicy": c.pull_policy,
        "env": proxy_env(build, pod, c, conf),
        "livenessProbe": _probe(c, "livenessProbe", "/live"),
        "ports": [
            {"containerPort": INBOUND, "name": "linkerd-proxy"},
            {"containerPort": ADMIN, "name": "linkerd-admin"},
        ],
        "readinessProbe": _probe(c, "readinessProbe", "/ready"),
        "resources": build.resources.as_k8s(),
        "securityContext": security,
        "terminationMessagePolicy": "FallbackToLogsOnError",
        "volumeMounts": [
            {"mountPath": "/var/run/linkerd/identity/end-entity", "name": END_ENTITY},
            {"mountPath": "/var/run/secrets/tokens", "name": TOKEN},
        ],
    }
    if build.native:
        container["restartPolicy"] = "Always"
        container["startupProbe"] = _probe(c, "startupProbe", "/ready")
    else:
        # the app starts once the proxy is ready (the proxy is the first container)
        lifecycle: dict[str, Any] = {
            "postStart": {
                "exec": {"command": ["/usr/lib/linkerd/linkerd-await", "--timeout=2m", f"--port={ADMIN}"]}
            }
        }
        if c.wait_before_exit:
            lifecycle["preStop"] = {"exec": {"command": ["/bin/sleep", str(c.wait_before_exit)]}}
        container["lifecycle"] = lifecycle
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
# proxy-init's flags for each firewall backend (without any, it runs iptables-legacy)
FIREWALL_FLAGS: Mapping[Firewall, tuple[str, ...]] = {
    "legacy": (),
    "nft": ("--firewall-bin-path", "iptables-nft", "--firewall-save-bin-path", "iptables-nft-save"),
}


def _minus(ranges: Ports, taken: Ports) -> Ports:
    """The ports of ``ranges`` that ``taken`` does not cover, as ranges."""
    out: list[tuple[int, int]] = []
    for lo, hi in ranges:
        start = lo
        for tlo, thi in taken:
            if thi < start or tlo > hi:
                continue
            if tlo > start:
                out.append((start, tlo - 1))
            start = max(start, thi + 1)
        if start <= hi:
            out.append((start, hi))
    return tuple(out)


def _own(pod: Mapping[str, Any], name: str) -> tuple[str, Ports] | None:
    """The pod's own (or inherited) ``config.linkerd.io/<name>`` port list, read as Linkerd
    reads it; None where it has none (or one that is not a port list: the exclusions step
    already named it)."""
    annotations = (pod.get("metadata") or {}).get("annotations")
    raw = annotations.get(CONFIG + name) if isinstance(annotations, Mapping) else None
    if raw is None:
        return None
    text = ",".join(item.strip() for item in str(raw).split(",") if item.strip())
    try:
        return text, parse_ports(text)
    except PortListError:
        return None


def skip_lists(build: Build, pod: Mapping[str, Any], c: Config, policy: Policy) -> tuple[str, str]:
    """(inbound, outbound): the ports the redirect leaves alone besides the proxy's own, as
    ``linkerd-init`` is given them and as the pod's skip annotations must say them.

    Linkerd's own: the pod's ``config.linkerd.io/skip-*-ports`` where it has one (it replaces
    the control plane's ``proxyInit.ignore*Ports``, as Linkerd's injector does), else the
    control plane's (with a CNI plugin: none, the plugin's own apply); ours and the other
    meshes' exclusions are added. Under Merbridge (ebpf): what it is told
    (``never_redirected``) and the pod's exclusions."""
    if build.mode is Mode.EBPF:
        ins, outs = _never(policy)
        return join(ins, port_list(_minus(build.skip_inbound, parse_ports(ins)))), join(
            outs, port_list(_minus(build.skip_outbound, parse_ports(outs)))
        )
    out = []
    # a CNI plugin (linkerd-cni) applies the pod's annotation, else its own configuration,
    # never the control plane's proxyInit ports
    cni = build.validator
    for name, default, extra in (
        ("skip-inbound-ports", "" if cni else c.ignore_inbound, build.skip_inbound),
        ("skip-outbound-ports", "" if cni else c.ignore_outbound, build.skip_outbound),
    ):
        own = _own(pod, name)
        base_text, base = own if own is not None else (default, parse_ports(default))
        out.append(join(base_text, port_list(_minus(extra, base))))
    return out[0], out[1]


def init_args(build: Build, c: Config, inbound: str, outbound: str, subnets: str) -> list[str]:
    """proxy-init's flags, as the version's chart writes them for the chosen backend."""
    args = [*FIREWALL_FLAGS[build.firewall]]
    if c.disable_ipv6:
        args.append("--ipv6=false")
    args += [
        "--incoming-proxy-port",
        str(INBOUND),
        "--outgoing-proxy-port",
        str(OUTBOUND),
        "--proxy-uid",
        str(UID),
    ]
    if c.gid >= 0:
        args += ["--proxy-gid", str(c.gid)]
    args += ["--inbound-ports-to-ignore", join(f"{CONTROL},{ADMIN}", inbound)]
    if outbound:
        args += ["--outbound-ports-to-ignore", outbound]
    if subnets:
        args += ["--subnets-to-ignore", subnets]
    return args


def init_container(build: Build, c: Config, inbound: str, outbound: str, subnets: str) -> dict[str, Any]:
    security = {**_INIT_SECURITY_BASE, "capabilities": {"add": ["NET_ADMIN", "NET_RAW"], "drop": ["ALL"]}}
    container: dict[str, Any] = {
        "args": init_args(build, c, inbound, outbound, subnets),
        "image": c.init_image,
        "imagePullPolicy": c.init_pull_policy,
        "name": INIT,
        "resources": _INIT_RESOURCES,
        "securityContext": security,
        "terminationMessagePolicy": "FallbackToLogsOnError",
        "volumeMounts": [{"mountPath": "/run", "name": XTABLES}],
    }
    if c.release.init_command:
        container["command"] = list(c.release.init_command)
    return container


def validator_container(c: Config) -> dict[str, Any]:
    return {
        "args": [
            "--log-format",
            "plain",
            "--log-level",
            "debug",
            "--connect-addr",
            "1.1.1.1:20001" if c.disable_ipv6 else "[fd00::1]:20001",
            "--listen-addr",
            f"0.0.0.0:{OUTBOUND}" if c.disable_ipv6 else f"[::]:{OUTBOUND}",
            "--timeout",
            "10s",
        ],
        "command": ["/usr/lib/linkerd/linkerd2-network-validator"],
        "image": c.image,
        "imagePullPolicy": c.pull_policy,
        "name": VALIDATOR,
        "resources": _INIT_RESOURCES,
        "securityContext": {
            **{k: v for k, v in _INIT_SECURITY_BASE.items() if k != "privileged"},
            "capabilities": {"drop": ["ALL"]},
        },
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


def _subnets(build: Build, pod: Mapping[str, Any], c: Config) -> tuple[str, list[str]]:
    """proxy-init's ``--subnets-to-ignore`` (inbound connections from these sources are not
    redirected): the pod's ``config.linkerd.io/skip-subnets``, else the control plane's
    ``proxyInit.skipSubnets``; and a warning for the outbound destinations the pod asks to
    leave alone, which proxy-init cannot."""
    annotations = (pod.get("metadata") or {}).get("annotations")
    own = annotations.get(CONFIG + "skip-subnets") if isinstance(annotations, Mapping) else None
    mine = [p.strip() for p in str(own).split(",") if p.strip()] if own is not None else []
    subnets = ",".join(mine) if own is not None else c.skip_subnets
    outbound = [cidr for cidr in build.skip_cidrs if cidr not in mine and cidr.split("/")[0] not in mine]
    if not outbound:
        return subnets, []
    return subnets, [
        f"outbound traffic to {', '.join(outbound)} still goes through the proxy: Linkerd's proxy-init "
        "leaves only inbound connections from listed subnets alone (--subnets-to-ignore), never "
        "outbound destinations; skip those ports (mesh-injector.io/skip-outbound-ports) instead"
    ]


def _notes(build: Build, c: Config) -> list[str]:
    """Where the control plane would decide otherwise than mesh-injector did."""
    notes = list(c.notes)
    if build.native != c.native:
        mine = "a native sidecar" if build.native else "a regular container"
        theirs = "a native sidecar" if c.native else "a regular container (first in containers)"
        notes.append(
            f"placement: the proxy is {mine} (mesh-injector's placement); {c.native_from} "
            f"proxy.nativeSidecar is {str(c.native).lower()}, so Linkerd's own injector would make it "
            f"{theirs}"
        )
    if not c.await_proxy:
        notes.append(
            "the control plane's proxy.await is false; the proxy still holds the app until it is ready "
            "(mesh-injector's placement)"
        )
    if build.mode is not Mode.EBPF and build.init_rules and c.cni_enabled:
        notes.append(
            "the control plane says cniEnabled (linkerd-cni installs the rules), but the policy's "
            "interception.iptables.cniInstallsRules is false: linkerd-init is added"
        )
    if build.validator and build.mode is Mode.IPTABLES and not c.cni_enabled:
        notes.append(
            "the policy says a CNI plugin installs the rules (cniInstallsRules); the control plane's "
            "cniEnabled is false"
        )
    return notes


def render(build: Build, pod: Mapping[str, Any], policy: Policy) -> DataPlane:
    c: Config = build.control
    inits: tuple[dict[str, Any], ...] = ()
    volumes: list[dict[str, Any]] = []
    inbound, outbound = skip_lists(build, pod, c, policy)
    warnings: list[str] = []
    if build.init_rules:
        subnets, problems = _subnets(build, pod, c)
        warnings += problems
        inits = (init_container(build, c, inbound, outbound, subnets),)
        volumes.append(_xtables_volume())
    elif build.validator:
        inits = (validator_container(c),)
    volumes += _identity_volumes()
    labels = {"linkerd.io/control-plane-ns": c.namespace, "linkerd.io/workload-ns": build.workload.namespace}
    owner = _OWNER_LABEL.get(build.workload.kind)
    named = frozenset({f"linkerd.io/proxy-{owner}"} if owner is not None else ())
    if owner is not None:
        labels[f"linkerd.io/proxy-{owner}"] = label_value(build.workload.name)
    conf = pod_config(pod, c)
    annotations = {
        "linkerd.io/created-by": f"mesh-injector/{__version__}",
        "linkerd.io/proxy-version": image_tag(c.image) or c.image,
        "linkerd.io/trust-root-sha256": trust_root_sha256(c.anchors),
    }
    # what Linkerd's destination service reads from the pod, always exactly what the proxy
    # does: the ports the redirect leaves alone (no mTLS or HTTP/2 hints for them), and the
    # opaque ports where they are not the control plane's default (which it assumes)
    told: dict[str, str] = {}
    if inbound:
        annotations[CONFIG + "skip-inbound-ports"] = inbound
    if outbound:
        annotations[CONFIG + "skip-outbound-ports"] = outbound
    if not conf.opaque_from_pod and conf.opaque_ports != c.opaque_default:
        told[CONFIG + "opaque-ports"] = conf.opaque_ports
    threads = build.resources.threads()
    notes = [f"threads: {threads[0]} proxy worker(s), from {threads[1]}"] if threads else []
    return DataPlane(
        inits=inits,
        proxy=proxy_container(build, pod, c, conf),
        volumes=tuple(volumes),
        labels=labels,
        annotations=annotations,
        default_annotations=told,
        named=named,
        notes=(*notes, *_notes(build, c)),
        warnings=(*conf.warnings, *warnings),
    )


def _never(policy: Policy) -> tuple[str, str]:
    """The policy's ignore ports, else the default version's (Linkerd's 4567,4568)."""
    s = settings(policy)
    chart = KNOWN[s.version].values["proxyInit"]
    ins = s.ignore_inbound_ports if s.ignore_inbound_ports is not None else chart["ignoreInboundPorts"]
    outs = s.ignore_outbound_ports if s.ignore_outbound_ports is not None else chart["ignoreOutboundPorts"]
    return ins, outs


def never_redirected(policy: Policy) -> tuple[Ports, Ports]:
    """The control and admin ports, and the policy's ignore ports (else the default
    version's: Linkerd's 4567,4568): what Merbridge is told to leave alone."""
    ins, outs = _never(policy)
    return tuple(sorted({(CONTROL, CONTROL), (ADMIN, ADMIN), *parse_ports(ins)})), parse_ports(outs)


def describe(policy: Policy, cni: bool) -> list[str]:
    s = settings(policy)
    release = KNOWN[s.version]
    anchors = (
        "from the policy (proxy.linkerd.trustAnchorsPem)"
        if s.trust_anchors_pem
        else f"from ConfigMap {s.namespace}/{TRUST_ROOTS}, key {TRUST_ROOTS_KEY} "
        "(watched by serve; read from --cluster or --kubeconfig by the dry-run verbs)"
    )
    image = s.image or f"{_dig(release.values, 'proxy.image.name')}:{release.edge}"
    init = s.init_image or (
        f"{image} ({release.init_command[0]})"
        if release.init_command
        else "{}:{}".format(*(_dig(release.values, f"proxyInit.image.{k}") for k in ("name", "version")))
    )
    where = f"ConfigMap {s.namespace}/{CONFIG_MAP}"
    return [
        f"data plane: linkerd: {PROXY}, the version and settings of the control plane ({where}, key "
        f"{VALUES_KEY}; supported {', '.join(KNOWN)}); without it Linkerd {release.version}: {image}",
        f"  control plane: namespace {s.namespace}; destination linkerd-dst-headless, policy linkerd-policy, "
        "identity linkerd-identity-headless (in its namespace, at its cluster domain)",
        f"  identity: trust anchors {anchors}",
        "  iptables mode: " + (f"{VALIDATOR} (a CNI plugin installs the rules)" if cni else f"{INIT} {init}"),
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
    inherits=(CONFIG, CONFIG_ALPHA, CONFIG_BETA),
    redirect=Redirect(mode="linkerd", uid=UID, outbound=OUTBOUND, inbound=INBOUND),
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
        CONFIG + "skip-outbound-ports",
        CONFIG + "opaque-ports",
    ),
    # linkerd.io/proxy-<kind>; and the config annotations a pod inherits from its namespace
    mark_prefixes=("linkerd.io/proxy-", CONFIG, CONFIG_ALPHA, CONFIG_BETA),
)
