"""The ``istio`` flavour: what the installed istiod's own injector gives a pod, for Istio 1.23,
1.28 and 1.30.

The control plane is read from its own objects in istiod's namespace: the injector's
ConfigMap ``istio-sidecar-injector`` (``-<revision>``; its ``values`` and ``config``, see
``istioinjector``) and the mesh config ``istio`` (``-<revision>``; see ``istiomesh``). Its
proxy image names the version; what each version's injector renders differently is data,
one ``Release`` per version below, and the rendering code is the same for every version. The
policy's ``proxy.istio`` overrides only what it sets; without a control plane the policy's
``version`` (the newest known, 1.30, by default) is rendered, and the decision says so.

``istio-proxy`` runs ``pilot-agent proxy sidecar`` with the environment the template writes
(CA address, cert provider, the pod's fields, ``ISTIO_META_*``, cluster, network and mesh
ids), the Prometheus port, readiness and startup on 15021, UID 1337 and the volumes the agent
expects; ``sidecar.istio.io/status`` (which also keeps Istio's own injector away) and the
``security.istio.io/tlsMode`` label. In iptables mode ``istio-init`` runs ``istio-iptables``
with the pod's skip ports, on the firewall backend the decision chose; with a CNI plugin
installing the rules, ``istio-validation`` checks them and the pod carries the annotations
the plugin reads, as Istio's CNI mode does. eBPF and microVM modes add no init container.
A pod asking for Istio's proxyless ``grpc-agent`` template gets the agent alone and the
bootstrap its gRPC app reads; other templates are not rendered (the pod is skipped, saying
which).

Where we differ from Istio's injector (README: "Istio"): resources, placement and the mode
are ours; on legacy placement the proxy is the first container and holds the app until it is
ready (Istio's ``holdApplicationUntilProxyStarts``); containers run with RuntimeDefault
seccomp, so the pod passes ``restricted`` in every mode but iptables.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Literal

import orjson

from webhook.dataplane.base import (
    Build,
    ConfigMaps,
    ControlPlane,
    DataPlane,
    Flavour,
    NativeDefault,
    Ports,
    Redirect,
    RedirectRules,
    Refused,
    container_ports,
    field_env,
    image_tag,
    label_value,
)
from webhook.dataplane.iptables import PortListError, parse_ports
from webhook.dataplane.istioinjector import (
    Injector,
    InjectorConfig,
    Values,
    injector_map_name,
    parse_injector,
)
from webhook.dataplane.istiomesh import (
    MESH_KEY,
    MeshConfig,
    cleaned,
    config_map_name,
    merged,
    parse_mesh,
    pod_fields,
)
from webhook.dataplane.istiopod import (
    CANONICAL_NAME,
    CANONICAL_REVISION,
    PROMETHEUS,
    PROMETHEUS_ENV,
    REWRITE_PROBES,
    PodConfig,
    app_probes,
    first,
    pod_config,
    requested_volumes,
    scraping,
)
from webhook.policy import FlavourPolicy, Policy
from webhook.reasons import Skip
from webhook.workload import API_VERSIONS

Firewall = Literal["legacy", "nft"]


@dataclass(frozen=True, slots=True, kw_only=True)
class Release:
    """What one Istio minor version's injector renders, as data: read from its chart's
    ``injection-template.yaml`` and ``values.yaml``, its ``pkg/kube/inject`` and
    ``tools/istio-iptables``, and checked against its own golden outputs
    (``tests/upstream/facts-istio-<version>.yaml``)."""

    version: tuple[int, int]
    tag: str  # the release checked; the proxy image's tag where no control plane is found
    hub: str  # where that release's images are published
    # the values that turn Istio's CNI mode on (istio-validation, the plugin's annotations)
    cni_values: tuple[str, ...]
    # istio-ca-crl (ConfigMap, optional) mounted at /var/run/secrets/istio/crl
    crl: bool
    # global.trustBundleName names the root certificate's ConfigMap; pilot.env
    # ENABLE_CLUSTER_TRUST_BUNDLE_API projects a ClusterTrustBundle instead
    trust_bundle: bool
    # the divisor the template gives its resourceFieldRefs ("1"), or none
    divisor: str | None
    # global.proxy.seccompProfile is written on istio-proxy and istio-init
    seccomp_values: bool
    # the pod label service.istio.io/workload-name names ISTIO_META_WORKLOAD_NAME
    workload_label: bool
    # the app containers' HTTP and TCP lifecycle hooks also go through the agent
    lifecycle_probes: bool
    # CNI mode writes traffic.sidecar.istio.io/includeInboundPorts even when it is empty
    include_inbound_always: bool
    # global.nativeNftables makes istio-iptables write native nftables (--native-nftables)
    native_nftables: bool
    # global.proxy_init.forceApplyIptables (--force-apply)
    force_apply: bool
    # istio-iptables can be told which iptables binary to use (--force-iptables-binary)
    force_binary: bool
    # what istio-iptables uses in a new pod's network namespace when not told: 1.23 runs the
    # image's `iptables` (legacy); from 1.28 it prefers iptables-nft where no legacy rules exist
    iptables: Firewall
    # where its injector makes istio-proxy a native sidecar: ENABLE_NATIVE_SIDECARS's default
    # ("false": only when istiod sets it true; "auto": where every node's kubelet is at least
    # native_kubelet), and the pod annotation that overrides it (from 1.27)
    native_env: str
    native_kubelet: str = ""
    native_annotation: str | None = None
    # OTEL_RESOURCE_ATTRIBUTES where the mesh config's OpenTelemetry provider asks for them
    otel_attributes: bool = False

    @property
    def name(self) -> str:
        return f"{self.version[0]}.{self.version[1]}"


RELEASES: tuple[Release, ...] = (
    Release(
        version=(1, 23),
        tag="1.23.2",
        hub="docker.io/istio",
        cni_values=("pilot.cni.enabled", "istio_cni.enabled"),
        crl=False,
        trust_bundle=False,
        divisor=None,
        seccomp_values=False,
        workload_label=False,
        lifecycle_probes=False,
        include_inbound_always=False,
        native_nftables=False,
        force_apply=False,
        force_binary=False,
        iptables="legacy",
        native_env="false",
    ),
    Release(
        version=(1, 28),
        tag="1.28.2",
        hub="docker.io/istio",
        cni_values=("pilot.cni.enabled",),
        crl=True,
        trust_bundle=True,
        divisor=None,
        seccomp_values=True,
        workload_label=True,
        lifecycle_probes=True,
        include_inbound_always=True,
        native_nftables=True,
        force_apply=True,
        force_binary=True,
        iptables="nft",
        native_env="auto",
        native_kubelet="1.33",
        native_annotation="sidecar.istio.io/nativeSidecar",
    ),
    Release(
        version=(1, 30),
        tag="1.30.3",
        hub="registry.istio.io/release",
        cni_values=("pilot.cni.enabled",),
        crl=True,
        trust_bundle=True,
        divisor="1",
        seccomp_values=True,
        workload_label=True,
        lifecycle_probes=True,
        include_inbound_always=True,
        native_nftables=True,
        force_apply=True,
        force_binary=True,
        iptables="nft",
        native_env="auto",
        native_kubelet="1.33",
        native_annotation="sidecar.istio.io/nativeSidecar",
        otel_attributes=True,
    ),
)
KNOWN = {r.name: r for r in RELEASES}
NEWEST = RELEASES[-1]

_VERSION = re.compile(r"^v?(\d+)\.(\d+)\.(\d+)(?:[-+][0-9A-Za-z.+-]*)?$")


def parse_version(tag: str) -> tuple[int, int, int] | None:
    """``1.28.2``, ``1.28.2-distroless``, ``1.29.0-rc.1`` -> (1, 28, 2); ``latest``,
    ``1.28-dev``, a digest -> None."""
    m = _VERSION.match(tag.strip())
    return (int(m.group(1)), int(m.group(2)), int(m.group(3))) if m else None


def release_for(version: tuple[int, int, int]) -> tuple[Release | None, str | None]:
    """The release whose shape ``version`` is rendered with (None: older than any known),
    and a warning where it is not one of them exactly."""
    minor = version[:2]
    known = [r for r in RELEASES if r.version <= minor]
    text = ".".join(map(str, version))
    if not known:
        return None, (
            f"Istio {text} is older than the oldest version mesh-injector renders "
            f"({RELEASES[0].name}): its pods are not meshed"
        )
    chosen = known[-1]
    if chosen.version == minor:
        return chosen, None
    if chosen is NEWEST:
        return chosen, (
            f"Istio {text} is newer than the newest version mesh-injector renders ({NEWEST.name}): "
            f"its pods get the {NEWEST.name} shape"
        )
    return chosen, (
        f"Istio {text} is not a version mesh-injector renders exactly "
        f"({', '.join(KNOWN)}): its pods get the {chosen.name} shape, the nearest older one"
    )


@dataclass(frozen=True, kw_only=True)
class IstioSettings:
    """The policy's ``proxy.istio``: where istiod runs, and what the policy sets over what the
    control plane says (None: the control plane's value, else Istio's default)."""

    namespace: str = "istio-system"
    # the revision a pod joins when neither it nor its namespace names one (istio.io/rev)
    revision: str = "default"
    # the other revisions pods may name: their ConfigMaps are read too
    revisions: tuple[str, ...] = ()
    # the version rendered where no control plane is found (or its image names none)
    version: str = NEWEST.name
    image: str | None = None
    # CA and xDS address; default: the control plane's caAddress, else
    # istiod[-<revision>].<namespace>.svc:15012
    istiod_address: str | None = None
    trust_domain: str | None = None
    cluster_domain: str | None = None
    cluster_id: str | None = None
    mesh_id: str | None = None
    log_level: str | None = None
    component_log_level: str | None = None
    # send the app containers' probes through the agent (Istio's rewriteAppHTTPProbe);
    # a pod's sidecar.istio.io/rewriteAppHTTPProbers annotation overrides it
    rewrite_app_probes: bool | None = None


def settings(policy: Policy) -> IstioSettings:
    """The policy's ``proxy.istio``."""
    return policy.proxy.settings("istio")  # type: ignore[no-any-return]


_REVISION = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")


def check(policy: Policy) -> str | None:
    """What is wrong with the policy's ``proxy.istio``, or None."""
    s = settings(policy)
    if s.version not in KNOWN:
        return f"proxy.istio.version: {s.version!r} is not one of the versions rendered ({', '.join(KNOWN)})"
    for where, rev in (("revision", s.revision), *(("revisions", r) for r in s.revisions)):
        if not _REVISION.match(rev):
            return f"proxy.istio.{where}: {rev!r} is not a revision name (lowercase letters, digits and '-')"
    return None


PROXY = "istio-proxy"
INIT = "istio-init"
VALIDATION = "istio-validation"
UID = 1337
STATUS_PORT, HEALTH_PORT, PROM_PORT = 15020, 15021, 15090
RESERVED = (15000, 15001, 15004, 15006, 15008, 15020, 15021, 15053, 15090)
STATUS_ANNOTATION = "sidecar.istio.io/status"
REVISION_LABEL = "istio.io/rev"
TEMPLATES = "inject.istio.io/templates"
WORKLOAD_LABEL = "service.istio.io/workload-name"
NETWORK_LABEL = "topology.istio.io/network"
CNI_ANNOTATIONS = (
    "sidecar.istio.io/interceptionMode",
    "traffic.sidecar.istio.io/includeOutboundIPRanges",
    "traffic.sidecar.istio.io/excludeOutboundIPRanges",
    "traffic.sidecar.istio.io/includeInboundPorts",
    "traffic.sidecar.istio.io/excludeInboundPorts",
    "traffic.sidecar.istio.io/includeOutboundPorts",
    "traffic.sidecar.istio.io/excludeOutboundPorts",
)
# Istio's templates for gateways and its own proxies, never an application pod's
GATEWAY_TEMPLATES = ("gateway", "waypoint", "kube-gateway", "agentgateway")


@dataclass(frozen=True, slots=True)
class Capture:
    """What istio-iptables captures by default (values ``global.proxy``): the pod's own
    traffic annotations replace each."""

    include_ranges: str = "*"
    exclude_ranges: str = ""
    include_inbound: str = "*"
    exclude_inbound: str = ""
    include_outbound: str = ""
    exclude_outbound: str = ""


@dataclass(frozen=True, slots=True, kw_only=True)
class IstioControl:
    """One revision's control plane, as the pod is rendered with it: the release whose shape
    it gets, and every value its injector's template reads, from the ConfigMaps (or the
    policy, or Istio's defaults)."""

    release: Release
    found: bool  # read from the control plane's ConfigMap (else the policy's default version)
    revision: str
    namespace: str
    image: str
    init_image: str
    pull_policy: str | None
    ca_address: str
    cluster_domain: str
    cluster_id: str
    cluster_id_set: bool  # set (not Istio's default): the injector writes it last
    network: str
    mesh_id: str | None
    trust_domain: str
    log_level: str
    component_log_level: str
    agent_log_level: str
    log_as_json: bool
    sts_port: int
    outlier_log_path: str
    pilot_cert_provider: str
    token_audience: str
    readiness: tuple[int, int, int]  # initialDelaySeconds, periodSeconds, failureThreshold
    startup: int | None  # the startup probe's failureThreshold (None: no startup probe)
    capture: Capture
    cni: bool  # the control plane's values turn Istio's CNI mode on
    native_nftables: bool
    force_apply: bool
    seccomp: Mapping[str, Any] | None
    rewrite_probes: bool
    root_cert: Mapping[str, Any]  # the istiod-ca-cert volume's source
    crl_map: str
    config: InjectorConfig
    mesh: MeshConfig | None
    env: Mapping[str, str]  # istiod's environment the values show (pilot.env)


def _image(v: Values, release: Release, path: str) -> str:
    """The image Istio's template gives: ``<path>`` as written where it names a repository
    (contains "/"), else ``<hub>/<name>:<tag>[-<variant>]`` (Istio's ProxyImage)."""
    named = v.text(path, "proxyv2")
    if "/" in named:
        return named
    proxy = v.text("global.proxy.image", "proxyv2")
    name = proxy if "/" not in proxy else "proxyv2"
    hub = v.text("global.hub", release.hub)
    tag = v.text("global.tag", "")
    variant = v.text("global.variant", "")
    if variant:
        for known in ("-distroless", "-debug"):
            if tag.endswith(known):
                tag = tag[: -len(known)]
        if variant != "default":
            tag = f"{tag}-{variant}"
    return f"{hub}/{name}:{tag}" if tag else f"{hub}/{name}"


def _native_default(release: Release, env: Mapping[str, str], known: bool) -> NativeDefault:
    """Where this release's injector makes istio-proxy a native sidecar, given istiod's
    ENABLE_NATIVE_SIDECARS (``known``: the values show istiod's environment)."""
    regular = ((TEMPLATES, "grpc-agent", "Istio's grpc-agent template keeps the agent a regular container"),)
    asked = env.get("ENABLE_NATIVE_SIDECARS", release.native_env)
    where = f"Istio {release.name}'s ENABLE_NATIVE_SIDECARS={asked}"
    if not known and "ENABLE_NATIVE_SIDECARS" not in env:
        where += " (its default; istiod's environment is not in the ConfigMap)"
    if asked == "true":
        return NativeDefault(True, annotation=release.native_annotation, why=where, regular=regular)
    if asked == "auto" and release.native_env == "auto":
        return NativeDefault(
            None,
            min_kubelet=release.native_kubelet,
            annotation=release.native_annotation,
            why=where,
            regular=regular,
        )
    return NativeDefault(False, annotation=release.native_annotation, why=where, regular=regular)


def _ports_text(text: str) -> str:
    return ",".join(p.strip() for p in text.split(",") if p.strip())


def _resolve(
    injector: Injector | None, mesh: MeshConfig | None, s: IstioSettings, revision: str, where: str
) -> tuple[IstioControl | None, list[str], str]:
    """The control plane for one revision (None: older than any version rendered), the
    warnings, and where its version came from (for the decision's line)."""
    values = injector.values if injector is not None else {}
    v = Values(values, f"{where} key values")
    warnings: list[str] = list(injector.warnings) if injector is not None else []
    found = injector is not None and injector.has_values
    default = KNOWN[s.version]
    # the shape: the control plane's image's version, else the policy's image's, else the policy's
    release: Release | None = default
    origin = f"the policy's default version {default.name} (proxy.istio.version)"
    image = _image(v, default, "global.proxy.image") if found else f"{default.hub}/proxyv2:{default.tag}"
    candidates = [(image, f"the control plane's image {image}")] if found else []
    if s.image:
        candidates.append((s.image, f"the policy's image {s.image}"))
    for named, said in candidates:
        tag = image_tag(named)
        parsed = parse_version(tag) if tag else None
        if parsed is None:
            why = "has no tag" if not tag else f"names no version ({tag})"
            warnings.append(f"{said} {why}: its pods get the {default.name} shape (proxy.istio.version)")
            continue
        release, warning = release_for(parsed)
        origin = f"version {'.'.join(map(str, parsed))} from {said}"
        if warning is not None:
            warnings.append(warning)
        break
    if release is None:
        return None, warnings, origin
    if found:
        # istio-init runs global.proxy_init.image where it names a repository, else the proxy's
        image = _image(v, release, "global.proxy.image")
        named_init = v.text("global.proxy_init.image", "")
        init_image = named_init if "/" in named_init else image
    else:
        image = init_image = f"{release.hub}/proxyv2:{release.tag}"
    if s.image:
        image = init_image = s.image
    istio_ns = v.text("global.istioNamespace", s.namespace)
    rev_name = v.text("revision", "" if revision == "default" else revision)
    ca = s.istiod_address or v.text(
        "global.caAddress", f"istiod{'-' + rev_name if rev_name else ''}.{istio_ns}.svc:15012"
    )
    trust = s.trust_domain or (mesh.trust_domain if mesh is not None else None)
    trust = trust or v.text("global.trustDomain", "cluster.local")
    cluster = s.cluster_id or v.text("global.multiCluster.clusterName", "")
    env_values = v.mapping("pilot.env") or {}
    env = {str(k): str(x).lower() if isinstance(x, bool) else str(x) for k, x in env_values.items()}
    cni = any(v.flag(path) for path in release.cni_values)
    readiness = (
        v.number("global.proxy.readinessInitialDelaySeconds", 0),
        v.number("global.proxy.readinessPeriodSeconds", 15),
        v.number("global.proxy.readinessFailureThreshold", 4),
    )
    startup = v.number("global.proxy.startupProbe.failureThreshold", 600)
    seccomp = v.mapping("global.proxy.seccompProfile") if release.seccomp_values else None
    root = {"configMap": {"name": "istio-ca-root-cert"}}
    if release.trust_bundle:
        bundle = v.text("global.trustBundleName", "")
        if env.get("ENABLE_CLUSTER_TRUST_BUNDLE_API") == "true":
            source = {"name": f"istio.io:istiod-ca:{bundle or 'root-cert'}", "path": "root-cert.pem"}
            root = {"projected": {"sources": [{"clusterTrustBundle": source}]}}
        elif bundle:
            root = {"configMap": {"name": bundle}}
    status = v.number("global.proxy.statusPort", STATUS_PORT)
    if status != STATUS_PORT:
        warnings.append(
            f"{where} global.proxy.statusPort {status} is not applied: the agent's status port is 15020 "
            "(the rewritten probes and Prometheus use it)"
        )
    provider = v.text("global.pilotCertProvider", "istiod")
    if provider != "istiod":
        warnings.append(
            f"{where} global.pilotCertProvider {provider!r} is not applied: istiod's CA root "
            "(ConfigMap istio-ca-root-cert) is mounted"
        )
    for path, why in _NOT_APPLIED.items():
        found_value = v.raw(path)
        if found_value not in (None, "", False, {}, []):
            warnings.append(f"{where} {path} {found_value!r} is not applied: {why}")
    tracer = v.raw("global.proxy.tracer")
    if tracer in ("datadog", "lightstep"):  # the template adds their variables, certificates
        warnings.append(
            f"{where} global.proxy.tracer {tracer!r} is not applied: its variables and certificates are "
            "not added (the mesh config's tracing still reaches PROXY_CONFIG)"
        )
    if release.force_apply:
        force = v.flag("global.proxy_init.forceApplyIptables")
    else:
        force = False
    control = IstioControl(
        release=release,
        found=found,
        revision=revision,
        namespace=s.namespace,
        image=image,
        init_image=init_image,
        pull_policy=v.text("global.imagePullPolicy", "") or None,
        ca_address=ca,
        cluster_domain=s.cluster_domain or v.text("global.proxy.clusterDomain", "cluster.local"),
        cluster_id=cluster or "Kubernetes",
        cluster_id_set=bool(cluster),
        network=v.text("global.network", ""),
        mesh_id=s.mesh_id or v.text("global.meshID", "") or None,
        trust_domain=trust,
        log_level=s.log_level or v.text("global.proxy.logLevel", "warning"),
        component_log_level=s.component_log_level or v.text("global.proxy.componentLogLevel", "misc:error"),
        agent_log_level=v.text("global.logging.level", "default:info"),
        log_as_json=v.flag("global.logAsJson"),
        sts_port=v.number("global.sts.servicePort", 0),
        outlier_log_path=v.text("global.proxy.outlierLogPath", ""),
        pilot_cert_provider="istiod",
        token_audience=v.text("global.sds.token.aud", "istio-ca"),
        readiness=readiness,
        startup=startup if v.flag("global.proxy.startupProbe.enabled", True) else None,
        capture=Capture(
            include_ranges=_ports_text(v.text("global.proxy.includeIPRanges", "*")),
            exclude_ranges=_ports_text(v.text("global.proxy.excludeIPRanges", "")),
            include_inbound=_ports_text(v.text("global.proxy.includeInboundPorts", "*")),
            exclude_inbound=_ports_text(v.text("global.proxy.excludeInboundPorts", "")),
            include_outbound=_ports_text(v.text("global.proxy.includeOutboundPorts", "")),
            exclude_outbound=_ports_text(v.text("global.proxy.excludeOutboundPorts", "")),
        ),
        cni=cni,
        native_nftables=v.flag("global.nativeNftables") if release.native_nftables else False,
        force_apply=force,
        seccomp=dict(seccomp) if seccomp else None,
        rewrite_probes=(
            s.rewrite_app_probes
            if s.rewrite_app_probes is not None
            else v.flag("sidecarInjectorWebhook.rewriteAppHTTPProbe", True)
        ),
        root_cert=root,
        crl_map=v.text("pilot.crlConfigMapName", "istio-ca-crl"),
        config=injector.config if injector is not None else InjectorConfig(),
        mesh=mesh,
        env=env,
    )
    if not release.native_nftables and v.flag("global.nativeNftables"):
        warnings.append(
            f"{where} global.nativeNftables is not applied: Istio {release.name}'s istio-iptables "
            "has no native nftables mode"
        )
    warnings += v.warnings
    return control, warnings, origin


# values the template reads that mesh-injector does not render, and why
_NOT_APPLIED = {
    "global.proxy.privileged": "istio-proxy never runs privileged here (Pod Security)",
    "global.proxy.lifecycle": "the proxy's lifecycle hooks are the placement's (mesh-injector's)",
    "global.proxy.enableCoreDump": "no core-dump init container is added",
    "global.proxy.capNetBindService": "istio-proxy gets no capabilities here",
    "global.mountMtlsCerts": "the istio-certs Secret is not mounted",
    "global.imagePullSecrets": "the pod's imagePullSecrets are the pod's own",
    "global.caName": "GKE workload certificates are not mounted",
}


@lru_cache(maxsize=64)
def _control(
    values: str | None,
    config: str | None,
    mesh_text: str | None,
    s: IstioSettings,
    revision: str,
) -> ControlPlane:
    """One revision's control plane from its ConfigMaps' texts (None: missing), parsed and
    resolved once per distinct input (a snapshot's ConfigMaps are the same strings for
    every pod)."""
    ns = s.namespace
    injector_where = f"ConfigMap {ns}/{injector_map_name(revision)}"
    mesh_where = f"ConfigMap {ns}/{config_map_name(revision)}"
    injector = (
        parse_injector(values, config, injector_where) if values is not None or config is not None else None
    )
    mesh = parse_mesh(mesh_text, f"{mesh_where} key {MESH_KEY}") if mesh_text is not None else None
    control, warnings, origin = _resolve(injector, mesh, s, revision, injector_where)
    if mesh is not None:
        warnings = [*mesh.warnings, *warnings]
    if control is None:
        text = f"{Skip.UNSUPPORTED_VERSION.text}: {warnings[-1]}"
        return ControlPlane(line="", missing=(Skip.UNSUPPORTED_VERSION, text), warnings=tuple(warnings[:-1]))
    release = control.release
    if control.found:
        source = f"{origin}, read from {injector_where}"
    elif injector is not None:
        source = f"{injector_where} has no values, so {origin}"
    else:
        source = f"no control plane found ({injector_where} is not in the cluster state), so {origin}"
    meshed = (
        f"mesh config from {mesh_where}" if mesh is not None else f"no mesh config: {mesh_where} not found"
    )
    line = (
        f"data plane: istio {release.name} ({control.image}; istiod {control.ca_address}, revision "
        f"{revision}; {source}; {meshed})"
    )
    native = _native_default(release, control.env, known=release.version >= (1, 24))
    firewalls: tuple[Firewall, ...] = ("legacy", "nft") if release.force_binary else (release.iptables,)
    return ControlPlane(
        config=control,
        line=line,
        version=release.name,
        found=control.found,
        firewall="nft" if control.native_nftables else release.iptables,
        firewalls=firewalls,
        native=native,
        rules=redirect_rules(control.capture),
        warnings=tuple(warnings),
    )


# the pod's own traffic annotations that replace each of the control plane's global.proxy
# capture settings, as Istio's injector reads them
POD_KEYS = {
    "inbound": "traffic.sidecar.istio.io/excludeInboundPorts",
    "outbound": "traffic.sidecar.istio.io/excludeOutboundPorts",
    "destinations": "traffic.sidecar.istio.io/excludeOutboundIPRanges",
    "only_inbound": "traffic.sidecar.istio.io/includeInboundPorts",
    "only_destinations": "traffic.sidecar.istio.io/includeOutboundIPRanges",
    "only_outbound": "traffic.sidecar.istio.io/includeOutboundPorts",
}


def _capture_ports(text: str, name: str, problems: list[str]) -> Ports:
    """A port list as istio-iptables hands it to iptables (``8000:8100`` is a range there)."""
    try:
        return parse_ports(text.replace(":", "-"))
    except PortListError as exc:
        problems.append(f"global.proxy.{name} {text!r}: {exc}")
        return ()


def _capture_ranges(text: str, name: str, problems: list[str]) -> tuple[str, ...]:
    out = []
    for item in (p.strip() for p in text.split(",")):
        if not item:
            continue
        try:
            out.append(str(ipaddress.ip_network(item, strict=False)))
        except ValueError:
            problems.append(f"global.proxy.{name} {item!r} is not an IP range")
    return tuple(out)


def redirect_rules(capture: Capture) -> RedirectRules:
    """What istio-init leaves alone on a pod without its own traffic annotations: the agent's
    and Envoy's own inbound ports (``-d 15090,15021,15020``) and the control plane's
    ``global.proxy`` capture settings. ``includeInboundPorts`` and ``includeIPRanges`` narrow
    what is redirected (``*``: everything; an empty list: nothing); ``includeOutboundPorts``
    adds ports to what the ranges redirect, which a list of ranges cannot say."""
    problems: list[str] = []
    only_destinations = None
    if capture.include_ranges != "*":
        only_destinations = _capture_ranges(capture.include_ranges, "includeIPRanges", problems)
        if not only_destinations:
            problems.append("global.proxy.includeIPRanges is empty: no outbound traffic is redirected")
        if capture.include_outbound:
            problems.append(
                f"global.proxy.includeOutboundPorts {capture.include_outbound!r} adds ports beside "
                f"includeIPRanges {capture.include_ranges!r}"
            )
    only_inbound = None
    if capture.include_inbound != "*":
        only_inbound = _capture_ports(capture.include_inbound, "includeInboundPorts", problems)
    return RedirectRules(
        proxy_inbound=((STATUS_PORT, STATUS_PORT), (HEALTH_PORT, HEALTH_PORT), (PROM_PORT, PROM_PORT)),
        inbound=_capture_ports(capture.exclude_inbound, "excludeInboundPorts", problems),
        outbound=_capture_ports(capture.exclude_outbound, "excludeOutboundPorts", problems),
        destinations=_capture_ranges(capture.exclude_ranges, "excludeIPRanges", problems),
        only_inbound=only_inbound,
        only_destinations=only_destinations,
        pod_keys=POD_KEYS,
        problems=tuple(problems),
    )


def _served(s: IstioSettings) -> tuple[str, ...]:
    return tuple(dict.fromkeys((s.revision, *s.revisions)))


def config_maps(policy: Policy) -> tuple[tuple[str, str], ...]:
    """Each served revision's injector ConfigMap (istio-sidecar-injector[-<revision>]) and
    mesh config (istio[-<revision>]) in istiod's namespace."""
    s = settings(policy)
    return tuple(
        (s.namespace, name) for rev in _served(s) for name in (injector_map_name(rev), config_map_name(rev))
    )


def _revision_of(name: str) -> str:
    return "default" if name in ("", "default") else name


def control_for(
    maps: ConfigMaps, policy: Policy, labels: Mapping[str, str], ns_labels: Mapping[str, str]
) -> ControlPlane:
    """The control plane of the revision the pod joins: its namespace's istio.io/rev label,
    else its own, else the policy's revision (as Istio's revision webhooks select)."""
    s = settings(policy)
    named = ns_labels.get(REVISION_LABEL) or labels.get(REVISION_LABEL)
    revision = _revision_of(named) if named else s.revision
    if revision not in {_revision_of(r) for r in _served(s)}:
        where = "its namespace's" if ns_labels.get(REVISION_LABEL) else "the pod's"
        text = (
            f"{Skip.UNKNOWN_REVISION.text}: {where} label {REVISION_LABEL}: {named} names a revision the "
            f"policy does not serve (proxy.istio.revision {s.revision}, revisions "
            f"[{', '.join(s.revisions)}]); add it to proxy.istio.revisions"
        )
        return ControlPlane(line="", missing=(Skip.UNKNOWN_REVISION, text))
    injector = maps.get((s.namespace, injector_map_name(revision)))
    mesh = maps.get((s.namespace, config_map_name(revision)))
    return _control(
        injector.get("values") if injector is not None else None,
        injector.get("config") if injector is not None else None,
        mesh.get(MESH_KEY) if mesh is not None else None,
        s,
        revision,
    )


def control_plane(maps: ConfigMaps, policy: Policy) -> ControlPlane:
    """The control plane of the policy's revision."""
    return control_for(maps, policy, {}, {})


def _control_of(build: Build, policy: Policy) -> IstioControl:
    control = build.control
    if isinstance(control, IstioControl):
        return control
    found = control_plane({}, policy).config
    assert isinstance(found, IstioControl)
    return found


# ---------------------------------------------------------------------------- rendering


# a ContainerPort's fields in the order Go's JSON writes the struct
_PORT_FIELDS = ("name", "hostPort", "containerPort", "protocol", "hostIP")


def _pod_ports(pod: Mapping[str, Any]) -> str:
    """The app containers' ports laid out as Istio's template writes them: one a line, each
    indented four spaces, a comma before every one but the first; each port's fields in the
    struct's order, empty ones left out (Go's ``structToJSON``)."""
    ports = [
        orjson.dumps({k: p[k] for k in _PORT_FIELDS if p.get(k) or k == "containerPort"}).decode()
        for p in container_ports(pod)
    ]
    return "[" + "".join(f"\n    {',' if i else ''}{p}" for i, p in enumerate(ports)) + "\n]"


def _app_containers(pod: Mapping[str, Any]) -> list[str]:
    containers = (pod.get("spec") or {}).get("containers")
    if not isinstance(containers, list):
        return []
    return [
        c["name"]
        for c in containers
        if isinstance(c, dict) and isinstance(c.get("name"), str) and c["name"] != PROXY
    ]


def _join(*parts: str) -> str:
    return ",".join(p for p in parts if p)


def _exclude_status_port(excluded: str) -> str:
    """Istio's excludeInboundPort: the status port added last, unless already listed."""
    ports = [p.strip() for p in excluded.split(",") if p.strip()]
    return excluded if str(STATUS_PORT) in ports else ",".join([*ports, str(STATUS_PORT)])


def _resource_env(name: str, resource: str, divisor: str | None) -> dict[str, Any]:
    ref: dict[str, Any] = {"resource": resource}
    if divisor is not None:
        ref["divisor"] = divisor
    return {"name": name, "valueFrom": {"resourceFieldRef": ref}}


def _annotations(pod: Mapping[str, Any]) -> Mapping[str, Any]:
    meta = pod.get("metadata")
    found = meta.get("annotations") if isinstance(meta, Mapping) else None
    return found if isinstance(found, Mapping) else {}


def _labels(pod: Mapping[str, Any]) -> Mapping[str, Any]:
    meta = pod.get("metadata")
    found = meta.get("labels") if isinstance(meta, Mapping) else None
    return found if isinstance(found, Mapping) else {}


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


def proxy_setup(build: Build, pod: Mapping[str, Any], c: IstioControl, *, envoy: bool = True) -> ProxySetup:
    """The mesh's defaultConfig (none where the cluster has no mesh config), the pod's
    proxy.istio.io/config over it; xDS goes to the revision's istiod unless either names
    another; Envoy's threads follow the CPU we size unless the pod sets them, and on legacy
    placement the proxy holds the app (``envoy`` False: the agent alone, neither)."""
    base = dict(c.mesh.proxy) if c.mesh is not None else {}
    own, warnings = pod_fields(_annotations(pod))
    config = merged(base, own)
    config.setdefault("discoveryAddress", c.ca_address)
    notes: list[str] = []
    threads = build.resources.threads()
    if "concurrency" in own:
        notes.append(
            f"threads: {own['concurrency']} Envoy worker(s) (concurrency), from proxy.istio.io/config"
        )
    elif threads is not None and envoy:
        config["concurrency"] = threads[0]
        instead = (
            f" (instead of the mesh's defaultConfig {base['concurrency']})" if "concurrency" in base else ""
        )
        notes.append(f"threads: {threads[0]} Envoy worker(s) (concurrency), from {threads[1]}{instead}")
    if envoy and not build.native:
        if config.get("holdApplicationUntilProxyStarts") is False:
            warnings.append(
                "holdApplicationUntilProxyStarts false is not applied: on legacy placement the proxy "
                "is the first container and holds the app until it is ready"
            )
        config["holdApplicationUntilProxyStarts"] = True
    mesh_id = c.mesh_id or config.get("meshId") or c.trust_domain
    metadata = dict(sorted((config.get("proxyMetadata") or {}).items()))
    for name in [n for n in metadata if n in _OWN_ENV]:
        warnings.append(f"proxyMetadata {name} is not applied: the injector writes {name} itself")
        del metadata[name]
    return ProxySetup(cleaned(config), c.trust_domain, mesh_id, metadata, tuple(notes), tuple(warnings))


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


def _network(pod: Mapping[str, Any], c: IstioControl) -> str:
    """The pod's network: its topology.istio.io/network label, else the control plane's."""
    own = _labels(pod).get(NETWORK_LABEL)
    return own if isinstance(own, str) and own else c.network


def _identity_env(build: Build, pod: Mapping[str, Any], label: bool) -> list[dict[str, Any]]:
    """ISTIO_META_WORKLOAD_NAME and ISTIO_META_OWNER, as the template names the workload
    (``label``: the pod's service.istio.io/workload-name label names it, where it has one)."""
    kind, workload = build.workload.kind, build.workload.name
    api = API_VERSIONS.get(kind, "v1")
    owner = f"kubernetes://apis/{api}/namespaces/{build.workload.namespace}/{kind.lower()}s/{workload}"
    named = _labels(pod).get(WORKLOAD_LABEL) if label else None
    return [
        {
            "name": "ISTIO_META_WORKLOAD_NAME",
            "value": named if isinstance(named, str) and named else workload,
        },
        {"name": "ISTIO_META_OWNER", "value": owner},
    ]


def _cluster_env(env: list[dict[str, Any]], c: IstioControl, network: str) -> list[dict[str, Any]]:
    """Istio's injector moves the cluster id (where one is set) and the network to the end,
    sorted (its updateClusterEnvs)."""
    moved = {}
    if c.cluster_id_set:
        moved["ISTIO_META_CLUSTER_ID"] = c.cluster_id
    if network:
        moved["ISTIO_META_NETWORK"] = network
    if not moved:
        return env
    kept = [e for e in env if e["name"] not in moved]
    return [*kept, *({"name": k, "value": moved[k]} for k in sorted(moved))]


def proxy_env(
    build: Build, pod: Mapping[str, Any], c: IstioControl, setup: ProxySetup
) -> list[dict[str, Any]]:
    divisor = c.release.divisor
    network = _network(pod, c)
    env = [
        {"name": "PILOT_CERT_PROVIDER", "value": c.pilot_cert_provider},
        {"name": "CA_ADDR", "value": c.ca_address},
        field_env("POD_NAME", "metadata.name"),
        field_env("POD_NAMESPACE", "metadata.namespace"),
        field_env("INSTANCE_IP", "status.podIP"),
        field_env("SERVICE_ACCOUNT", "spec.serviceAccountName"),
        field_env("HOST_IP", "status.hostIP"),
        _resource_env("ISTIO_CPU_LIMIT", "limits.cpu", divisor),
        {"name": "PROXY_CONFIG", "value": orjson.dumps(setup.config).decode() + "\n"},
        {"name": "ISTIO_META_POD_PORTS", "value": _pod_ports(pod)},
        {"name": "ISTIO_META_APP_CONTAINERS", "value": ",".join(_app_containers(pod))},
        _resource_env("GOMEMLIMIT", "limits.memory", divisor),
        _resource_env("GOMAXPROCS", "limits.cpu", divisor),
        {"name": "ISTIO_META_CLUSTER_ID", "value": c.cluster_id},
        field_env("ISTIO_META_NODE_NAME", "spec.nodeName"),
        {"name": "ISTIO_META_INTERCEPTION_MODE", "value": "REDIRECT"},
        *_identity_env(build, pod, c.release.workload_label),
        {"name": "ISTIO_META_MESH_ID", "value": setup.mesh_id},
        {"name": "TRUST_DOMAIN", "value": setup.trust_domain},
        *_otel_env(build, pod, c),
        *({"name": k, "value": v} for k, v in setup.metadata.items()),
    ]
    return _cluster_env(env, c, network)


OTEL = "resource.opentelemetry.io/"


def _otel_env(build: Build, pod: Mapping[str, Any], c: IstioControl) -> list[dict[str, Any]]:
    """Istio 1.30's OTEL_RESOURCE_ATTRIBUTES (its otelResourceAttributes): the OTel K8s
    service attributes, each from the pod's resource.opentelemetry.io/ annotation where it
    has one (service.version: else the app.kubernetes.io/version label, else a single
    container's image tag and digest)."""
    if not (c.release.otel_attributes and c.mesh is not None and c.mesh.otel_semantic_conventions):
        return []
    annotations, labels = _annotations(pod), _labels(pod)
    containers = [x for x in (pod.get("spec") or {}).get("containers") or [] if isinstance(x, dict)]
    namespace = build.workload.namespace

    def own(name: str) -> str | None:
        found = annotations.get(OTEL + name)
        return found if isinstance(found, str) and found else None

    space = own("service.namespace") or namespace
    attrs = [f"service.namespace={space}"] if space else []
    version = own("service.version") or labels.get("app.kubernetes.io/version") or None
    if version is None and len(containers) == 1:
        image = str(containers[0].get("image") or "")
        image, _, digest = image.partition("@")
        tag = image.rsplit(":", 1)[1] if ":" in image.rsplit("/", 1)[-1] else ""
        version = f"{tag}@{digest}" if tag and digest else digest or tag or None
    if version:
        attrs.append(f"service.version={version}")
    instance = own("service.instance.id")
    if instance is None and containers:
        instance = f"{namespace}.$(POD_NAME).{containers[0].get('name')}"
    if instance:
        attrs.append(f"service.instance.id={instance}")
    return [{"name": "OTEL_RESOURCE_ATTRIBUTES", "value": ",".join(attrs)}] if attrs else []


def _security(c: IstioControl) -> dict[str, Any]:
    """The security context of istio-proxy and istio-validation: the proxy's uid, nothing
    more (Istio's sidecar template), and a seccomp profile: the control plane's where its
    values set one, else RuntimeDefault (ours)."""
    return {
        "allowPrivilegeEscalation": False,
        "capabilities": {"drop": ["ALL"]},
        "privileged": False,
        "readOnlyRootFilesystem": True,
        "runAsGroup": UID,
        "runAsNonRoot": True,
        "runAsUser": UID,
        "seccompProfile": dict(c.seccomp) if c.seccomp else {"type": "RuntimeDefault"},
    }


def _agent_args(c: IstioControl, *, outlier: bool) -> list[str]:
    args = [
        "proxy",
        "sidecar",
        "--domain",
        f"$(POD_NAMESPACE).svc.{c.cluster_domain}",
        f"--proxyLogLevel={c.log_level}",
        f"--proxyComponentLogLevel={c.component_log_level}",
        f"--log_output_level={c.agent_log_level}",
    ]
    if c.sts_port:
        args.append(f"--stsPort={c.sts_port}")
    if c.log_as_json:
        args.append("--log_as_json")
    if outlier and c.outlier_log_path:
        args.append(f"--outlierLogPath={c.outlier_log_path}")
    return args


def _readiness(c: IstioControl, port: int) -> dict[str, Any]:
    delay, period, threshold = c.readiness
    probe: dict[str, Any] = {"httpGet": {"path": "/healthz/ready", "port": port}}
    if delay:
        probe["initialDelaySeconds"] = delay
    probe.update(periodSeconds=period, timeoutSeconds=3, failureThreshold=threshold)
    return probe


def proxy_container(
    build: Build, pod: Mapping[str, Any], c: IstioControl, setup: ProxySetup, conf: PodConfig | None = None
) -> dict[str, Any]:
    mounts = [
        {"mountPath": "/var/run/secrets/workload-spiffe-uds", "name": "workload-socket"},
        {"mountPath": "/var/run/secrets/credential-uds", "name": "credential-socket"},
        {"mountPath": "/var/run/secrets/workload-spiffe-credentials", "name": "workload-certs"},
        {"mountPath": "/var/run/secrets/istio", "name": "istiod-ca-cert"},
        *([{"mountPath": "/var/run/secrets/istio/crl", "name": "istio-ca-crl"}] if c.release.crl else []),
        {"mountPath": "/var/lib/istio/data", "name": "istio-data"},
        {"mountPath": "/etc/istio/proxy", "name": "istio-envoy"},
        {"mountPath": "/var/run/secrets/tokens", "name": "istio-token"},
        {"mountPath": "/etc/istio/pod", "name": "istio-podinfo"},
    ]
    container: dict[str, Any] = {
        "args": _agent_args(c, outlier=True),
        "env": proxy_env(build, pod, c, setup),
        "image": c.image,
        "name": PROXY,
        "ports": [{"containerPort": PROM_PORT, "name": "http-envoy-prom", "protocol": "TCP"}],
        "readinessProbe": _readiness(c, HEALTH_PORT),
        "resources": build.resources.as_k8s(),
        "securityContext": _security(c),
        "volumeMounts": mounts,
    }
    if c.startup is not None:
        container["startupProbe"] = {
            "httpGet": {"path": "/healthz/ready", "port": HEALTH_PORT},
            "periodSeconds": 1,
            "timeoutSeconds": 3,
            "failureThreshold": c.startup,
        }
    if c.pull_policy:
        container["imagePullPolicy"] = c.pull_policy
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


@dataclass(frozen=True, slots=True)
class Traffic:
    """What istio-iptables (or Istio's CNI plugin) captures for this pod: the control
    plane's defaults, each replaced by the pod's own annotation, with our skip ports and
    ranges added (``skip_inbound``/``skip_outbound``: ours, as port ranges)."""

    include_ranges: str
    exclude_ranges: str
    include_inbound: str
    exclude_inbound: str  # the defaults that hold for the pod (without our skip ports)
    include_outbound: str
    exclude_outbound: str
    skip_inbound: Ports = ()
    skip_outbound: Ports = ()

    def inbound(self, style: str = ":") -> str:
        """The ports left alone inbound, the status port last (Istio's excludeInboundPort).
        ``style``: how a range of ours is written: ":" as iptables takes it, "-" as nft takes
        it (native nftables), "" each port written out (Istio's CNI plugin reads no ranges)."""
        return _exclude_status_port(_join(self.exclude_inbound, *_items(self.skip_inbound, style)))

    def outbound(self, style: str = ":") -> str:
        return _join(self.exclude_outbound, *_items(self.skip_outbound, style))


def _items(ports: Ports, style: str) -> list[str]:
    if not style:
        return [str(p) for lo, hi in ports for p in range(lo, hi + 1)]
    return [str(lo) if lo == hi else f"{lo}{style}{hi}" for lo, hi in ports]


# the most ports our skip lists may spell out in an annotation Istio's CNI plugin reads
CNI_PORTS_MAX = 1024


def traffic(build: Build, pod: Mapping[str, Any], c: IstioControl, conf: PodConfig) -> Traffic:
    own = _annotations(pod)
    defaults = c.capture
    # the pod's own exclusion annotations are already among our skip ports (translated);
    # the control plane's defaults hold only where the pod has none of its own
    ranges = "" if "traffic.sidecar.istio.io/excludeOutboundIPRanges" in own else defaults.exclude_ranges
    inbound = "" if "traffic.sidecar.istio.io/excludeInboundPorts" in own else defaults.exclude_inbound
    outbound = "" if "traffic.sidecar.istio.io/excludeOutboundPorts" in own else defaults.exclude_outbound
    include_inbound = conf.include_inbound if conf.include_inbound is not None else defaults.include_inbound
    return Traffic(
        include_ranges=conf.include_ranges if conf.include_ranges is not None else defaults.include_ranges,
        exclude_ranges=_join(ranges, *build.skip_cidrs),
        include_inbound=include_inbound,
        exclude_inbound=inbound,
        include_outbound=defaults.include_outbound,
        exclude_outbound=outbound,
        skip_inbound=build.skip_inbound,
        skip_outbound=build.skip_outbound,
    )


def init_args(build: Build, c: IstioControl, t: Traffic, notes: list[str]) -> list[str]:
    """istio-iptables' flags as this version's template writes them, on the firewall backend
    the decision chose."""
    validation = build.validator
    args = ["istio-iptables", "-p", "15001", "-z", "15006", "-u", str(UID), "-m", "REDIRECT"]
    args += ["-i", t.include_ranges, "-x", t.exclude_ranges, "-b", t.include_inbound]
    release = c.release
    native = c.native_nftables and build.firewall == "nft"
    style = "-" if native else ":"  # istio-iptables hands each item to --dport, or to nft
    args += ["-d", _join(str(PROM_PORT), str(HEALTH_PORT), t.inbound(style))]
    if t.include_outbound:
        args += ["-q", t.include_outbound]
    if t.outbound(style):
        args += ["-o", t.outbound(style)]
    args.append(f"--log_output_level={c.agent_log_level}")
    if c.log_as_json:
        args.append("--log_as_json")
    if validation:
        args += ["--run-validation", "--skip-rule-apply"]
    elif c.force_apply:
        args.append("--force-apply")
    if native:
        args.append("--native-nftables")
    if build.firewall != ("nft" if native else release.iptables):
        if release.force_binary:
            args += ["--force-iptables-binary", build.firewall]
            notes.append(f"firewall: istio-init is told to use iptables-{build.firewall}")
        else:
            notes.append(
                f"firewall: Istio {release.name}'s istio-iptables cannot be told to use "
                f"iptables-{build.firewall}; it uses iptables-{release.iptables}"
            )
    if c.native_nftables and not native:
        notes.append("firewall: the control plane's native nftables are not used on this pod's nodes")
    return args


def init_container(
    build: Build, c: IstioControl, t: Traffic, metadata: Mapping[str, str], notes: list[str]
) -> dict[str, Any]:
    validation = build.validator
    security = (
        _security(c)
        if validation
        else {
            "allowPrivilegeEscalation": False,
            "capabilities": {"add": ["NET_ADMIN", "NET_RAW"], "drop": ["ALL"]},
            "privileged": False,
            "readOnlyRootFilesystem": False,
            "runAsGroup": 0,
            "runAsNonRoot": False,
            "runAsUser": 0,
            "seccompProfile": dict(c.seccomp) if c.seccomp else {"type": "RuntimeDefault"},
        }
    )
    container: dict[str, Any] = {
        "args": init_args(build, c, t, notes),
        "image": c.init_image,
        "name": VALIDATION if validation else INIT,
        "resources": {"limits": {"cpu": "2", "memory": "1Gi"}, "requests": {"cpu": "10m", "memory": "40Mi"}},
        "securityContext": security,
    }
    if c.pull_policy:
        container["imagePullPolicy"] = c.pull_policy
    if metadata:  # the proxy's metadata, as Istio's template gives istio-init too
        container["env"] = [{"name": k, "value": v} for k, v in metadata.items()]
    return container


def cni_annotations(c: IstioControl, t: Traffic, warnings: list[str]) -> dict[str, str]:
    """What Istio's CNI plugin reads of the pod (its CNI-mode template writes them). The
    plugin takes single ports only, so our skip ranges are written out, port by port."""
    spelled = sum(hi - lo + 1 for lo, hi in (*t.skip_inbound, *t.skip_outbound))
    spell = spelled <= CNI_PORTS_MAX
    if not spell:
        warnings.append(
            f"the pod's skip ports are not applied: Istio's CNI plugin reads single ports only, these are "
            f"{spelled}, more than the {CNI_PORTS_MAX} written out for it; the plugin redirects them"
        )
        t = Traffic(
            t.include_ranges, t.exclude_ranges, t.include_inbound, t.exclude_inbound, t.include_outbound,
            t.exclude_outbound,
        )  # fmt: skip
    out = {"sidecar.istio.io/interceptionMode": "REDIRECT"}
    if t.include_ranges:
        out["traffic.sidecar.istio.io/includeOutboundIPRanges"] = t.include_ranges
    if t.exclude_ranges:
        out["traffic.sidecar.istio.io/excludeOutboundIPRanges"] = t.exclude_ranges
    if t.include_inbound or c.release.include_inbound_always:
        out["traffic.sidecar.istio.io/includeInboundPorts"] = t.include_inbound
    out["traffic.sidecar.istio.io/excludeInboundPorts"] = t.inbound("")
    if t.include_outbound:
        out["traffic.sidecar.istio.io/includeOutboundPorts"] = t.include_outbound
    if t.outbound(""):
        out["traffic.sidecar.istio.io/excludeOutboundPorts"] = t.outbound("")
    return out


def _common_volumes(c: IstioControl) -> list[dict[str, Any]]:
    return [
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
                            "audience": c.token_audience,
                            "expirationSeconds": 43200,
                            "path": "istio-token",
                        }
                    }
                ]
            },
        },
        {**c.root_cert, "name": "istiod-ca-cert"},
    ]


def sidecar_volumes(c: IstioControl) -> tuple[dict[str, Any], ...]:
    return (
        {"emptyDir": {}, "name": "workload-socket"},
        {"emptyDir": {}, "name": "credential-socket"},
        {"emptyDir": {}, "name": "workload-certs"},
        {"emptyDir": {"medium": "Memory"}, "name": "istio-envoy"},
        *_common_volumes(c),
        *(
            [{"configMap": {"name": c.crl_map, "optional": True}, "name": "istio-ca-crl"}]
            if c.release.crl
            else []
        ),
    )


def grpc_volumes(c: IstioControl) -> tuple[dict[str, Any], ...]:
    return (
        {"emptyDir": {}, "name": "workload-socket"},
        {"emptyDir": {}, "name": "workload-certs"},
        {"emptyDir": {"medium": "Memory"}, "name": "istio-xds"},
        *_common_volumes(c),
    )


def _templates(pod: Mapping[str, Any], c: IstioControl) -> tuple[str, list[str]]:
    """The template the pod is rendered with ("sidecar" or "grpc-agent") and warnings;
    ``Refused`` where it asks for one that is not rendered (Istio's selectTemplates)."""
    raw = _annotations(pod).get(TEMPLATES)
    known = c.config.templates
    warnings: list[str] = []
    if raw is None:
        chosen = list(c.config.default_templates)
        extra = [t for t in chosen if t != "sidecar"]
        if extra:
            warnings.append(
                f"the control plane's defaultTemplates {', '.join(extra)} are not rendered: only "
                "Istio's own sidecar template is"
            )
        return "sidecar", warnings
    names = [t.strip() for t in str(raw).split(",") if t.strip()]
    if known is not None:
        missing = [t for t in names if t not in known]
        if missing:
            raise Refused(
                Skip.UNSUPPORTED_TEMPLATE,
                f"{Skip.UNSUPPORTED_TEMPLATE.text}: {TEMPLATES}: {raw} names {', '.join(missing)}, which "
                f"the control plane does not have (it has {', '.join(sorted(known))})",
            )
    if names == ["sidecar"]:
        return "sidecar", warnings
    if names == ["grpc-agent"]:
        return "grpc-agent", warnings
    if "grpc-simple" in names:
        why = (
            "Istio's grpc-simple template adds no proxy, only a busybox init container writing a bootstrap "
            "for plain-text xDS to istiod; mesh-injector renders the proxyless grpc-agent template "
            f"({TEMPLATES}: grpc-agent)"
        )
    elif any(t in GATEWAY_TEMPLATES for t in names):
        why = "gateway templates are for Istio's own gateway deployments, not application pods"
    elif len(names) > 1:
        why = "only sidecar or grpc-agent, alone, are rendered"
    else:
        why = "only Istio's sidecar and grpc-agent templates are rendered (custom templates are not read)"
    raise Refused(Skip.UNSUPPORTED_TEMPLATE, f"{Skip.UNSUPPORTED_TEMPLATE.text}: {TEMPLATES}: {raw}: {why}")


def _status(inits: list[str], containers: list[str] | None, volumes: list[str], revision: str) -> str:
    return orjson.dumps(
        {
            "initContainers": inits or None,
            "containers": containers or None,  # Istio writes null for none
            "volumes": volumes,
            "imagePullSecrets": None,
            "revision": revision,
        }
    ).decode()


def _canonical_labels(build: Build, pod: Mapping[str, Any]) -> dict[str, str]:
    labels = _labels(pod)
    return {
        "service.istio.io/canonical-name": first(labels, CANONICAL_NAME, label_value(build.workload.name)),
        "service.istio.io/canonical-revision": first(labels, CANONICAL_REVISION, "latest"),
    }


def _defaults(pod: Mapping[str, Any]) -> dict[str, str]:
    apps = _app_containers(pod)
    return {
        "kubectl.kubernetes.io/default-container": apps[0] if apps else PROXY,
        "kubectl.kubernetes.io/default-logs-container": apps[0] if apps else PROXY,
    }


def _native_note(build: Build, c: IstioControl, notes: list[str]) -> None:
    """Where the control plane's CNI setting and ours differ, say which holds."""
    if build.validator and not c.cni:
        notes.append(
            "cni: the policy says a CNI plugin installs the rules (istio-validation checks them), though "
            "the control plane's values do not turn Istio's CNI plugin on"
        )
    elif build.init_rules and c.cni:
        notes.append(
            "cni: the control plane's values turn Istio's CNI plugin on, but the policy's "
            "interception.iptables.cniInstallsRules is false: istio-init installs the rules"
        )


def render(build: Build, pod: Mapping[str, Any], policy: Policy) -> DataPlane:
    c = _control_of(build, policy)
    template, warnings = _templates(pod, c)
    if template == "grpc-agent":
        return render_grpc_agent(build, pod, c, warnings)
    conf = pod_config(pod)
    setup = proxy_setup(build, pod, c)
    notes = list(setup.notes)
    t = traffic(build, pod, c, conf)
    inits: tuple[dict[str, Any], ...] = ()
    if build.init_rules or build.validator:
        inits = (init_container(build, c, t, setup.metadata, notes),)
    _native_note(build, c, notes)
    proxy = proxy_container(build, pod, c, setup, conf)
    probers, probes = app_probes(pod, c.rewrite_probes, c.release.lifecycle_probes)
    if probers is not None:
        proxy["env"].append({"name": "ISTIO_KUBE_APP_PROBERS", "value": probers})
    scrape = scraping(_annotations(pod))
    if scrape.app is not None:
        proxy["env"].append({"name": PROMETHEUS_ENV, "value": scrape.app})
    volumes = (*sidecar_volumes(c), *conf.volumes)
    names = [i["name"] for i in inits]
    status = _status(
        [*names, PROXY] if build.native else names,
        None if build.native else [PROXY],
        [v["name"] for v in volumes],
        c.revision,
    )
    labels = {"security.istio.io/tlsMode": "istio", **_canonical_labels(build, pod)}
    network = _network(pod, c)
    if network:
        labels[NETWORK_LABEL] = network
    named = first(_labels(pod), CANONICAL_NAME, "") == ""
    extra = cni_annotations(c, t, warnings) if build.validator else {}
    if c.native_nftables and build.init is None:
        notes.append("firewall: no init container here, so the control plane's native nftables play no part")
    return DataPlane(
        inits=inits,
        proxy=proxy,
        volumes=volumes,
        labels=labels,
        annotations={
            REVISION_LABEL: c.revision,
            STATUS_ANNOTATION: status,
            **scrape.annotations,
            **extra,
            **c.config.injected_annotations,
        },
        removed_annotations=scrape.removed,
        default_annotations=_defaults(pod),
        probes=probes,
        named=frozenset({"service.istio.io/canonical-name"} if named else ()),
        notes=tuple(notes),
        warnings=(*warnings, *conf.warnings, *setup.warnings, *_sources_warning(build)),
    )


def _sources_warning(build: Build) -> list[str]:
    """Inbound sources the pod asks to leave alone (Linkerd's ``skip-subnets``, translated):
    istio-iptables, Istio's CNI plugin and Merbridge all match inbound traffic by port only."""
    if not build.skip_sources:
        return []
    return [
        f"inbound connections from {', '.join(build.skip_sources)} (config.linkerd.io/skip-subnets) still go "
        "through the proxy: Istio's rules leave inbound traffic alone by port only, never by source; skip "
        "the ports those clients use (mesh-injector.io/skip-inbound-ports) instead"
    ]


# ---------------------------------------------------------------------- proxyless gRPC

GRPC_APP_ENV = (
    {"name": "GRPC_XDS_EXPERIMENTAL_SECURITY_SUPPORT", "value": "true"},
    {"name": "GRPC_XDS_BOOTSTRAP", "value": "/etc/istio/proxy/grpc-bootstrap.json"},
)
GRPC_APP_MOUNTS = (
    {"mountPath": "/var/lib/istio/data", "name": "istio-data"},
    {"mountPath": "/etc/istio/proxy", "name": "istio-xds"},
    {"mountPath": "/var/run/secrets/workload-spiffe-credentials", "name": "workload-certs"},
)


def no_redirect(pod: Mapping[str, Any], control: ControlPlane) -> str | None:
    """Why a pod needs no redirect: it asks for the proxyless ``grpc-agent`` template (which
    the control plane has). Its app speaks xDS to the agent itself and calls its peers
    directly, so no mode's mechanism has anything to do for it. A template that is not
    rendered is refused when the pod is rendered, not here."""
    c = control.config
    if not isinstance(c, IstioControl) or TEMPLATES not in _annotations(pod):
        return None
    try:
        template, _ = _templates(pod, c)
    except Refused:
        return None
    if template != "grpc-agent":
        return None
    return (
        f"proxyless gRPC ({TEMPLATES}: grpc-agent): the app speaks xDS to the agent itself and calls its "
        "peers directly, so nothing is redirected"
    )


def render_grpc_agent(
    build: Build, pod: Mapping[str, Any], c: IstioControl, warnings: list[str]
) -> DataPlane:
    """Istio's ``grpc-agent`` template: proxyless gRPC. The agent alone (no Envoy,
    ``DISABLE_ENVOY``) serves xDS and certificates to the app over the ``istio-xds`` volume;
    each app container gets the bootstrap's path and that volume. Nothing is redirected, so
    no init container is added whatever the mode."""
    conf = pod_config(pod)
    setup = proxy_setup(build, pod, c, envoy=False)
    notes = list(setup.notes)
    network = _network(pod, c)
    env = [
        {"name": "ISTIO_META_GENERATOR", "value": "grpc"},
        {"name": "OUTPUT_CERTS", "value": "/var/lib/istio/data"},
        {"name": "PILOT_CERT_PROVIDER", "value": c.pilot_cert_provider},
        {"name": "CA_ADDR", "value": c.ca_address},
        field_env("POD_NAME", "metadata.name"),
        field_env("POD_NAMESPACE", "metadata.namespace"),
        field_env("INSTANCE_IP", "status.podIP"),
        field_env("SERVICE_ACCOUNT", "spec.serviceAccountName"),
        field_env("HOST_IP", "status.hostIP"),
        {"name": "PROXY_CONFIG", "value": orjson.dumps(setup.config).decode() + "\n"},
        {"name": "ISTIO_META_POD_PORTS", "value": _pod_ports(pod)},
        {"name": "ISTIO_META_APP_CONTAINERS", "value": ",".join(_app_containers(pod))},
        {"name": "ISTIO_META_CLUSTER_ID", "value": c.cluster_id},
        field_env("ISTIO_META_NODE_NAME", "spec.nodeName"),
        *_identity_env(build, pod, False),
        {"name": "ISTIO_META_MESH_ID", "value": setup.mesh_id},
        {"name": "TRUST_DOMAIN", "value": setup.trust_domain},
        *({"name": k, "value": v} for k, v in setup.metadata.items()),
        {"name": "ISTIO_META_DNS_CAPTURE", "value": "false"},
        {"name": "DISABLE_ENVOY", "value": "true"},
    ]
    proxy: dict[str, Any] = {
        "args": _agent_args(c, outlier=False),
        "env": _cluster_env(env, c, network),
        "image": c.image,
        "lifecycle": {
            "postStart": {
                "exec": {
                    "command": ["pilot-agent", "wait", f"--url=http://localhost:{STATUS_PORT}/healthz/ready"]
                }
            }
        },
        "name": PROXY,
        "ports": [{"containerPort": STATUS_PORT, "name": "mesh-metrics", "protocol": "TCP"}],
        "readinessProbe": _readiness(c, STATUS_PORT),
        "resources": build.resources.as_k8s(),
        "securityContext": _security(c),
        "volumeMounts": [
            {"mountPath": "/var/run/secrets/workload-spiffe-uds", "name": "workload-socket"},
            {"mountPath": "/var/run/secrets/workload-spiffe-credentials", "name": "workload-certs"},
            {"mountPath": "/var/run/secrets/istio", "name": "istiod-ca-cert"},
            {"mountPath": "/var/lib/istio/data", "name": "istio-data"},
            {"mountPath": "/etc/istio/proxy", "name": "istio-xds"},
            {"mountPath": "/var/run/secrets/tokens", "name": "istio-token"},
            {"mountPath": "/etc/istio/pod", "name": "istio-podinfo"},
            *conf.mounts,
        ],
    }
    if c.pull_policy:
        proxy["imagePullPolicy"] = c.pull_policy
    if build.native:
        proxy["restartPolicy"] = "Always"
    volumes = (*grpc_volumes(c), *conf.volumes)
    apps = _app_containers(pod)
    appended = {name: {"env": GRPC_APP_ENV, "volumeMounts": GRPC_APP_MOUNTS} for name in apps}
    status = _status(
        [PROXY] if build.native else [],
        apps if build.native else [PROXY, *apps],
        [v["name"] for v in volumes],
        c.revision,
    )
    scrape = scraping(_annotations(pod))
    if scrape.app is not None:
        proxy["env"].append({"name": PROMETHEUS_ENV, "value": scrape.app})
    labels = _canonical_labels(build, pod)
    if network:
        labels[NETWORK_LABEL] = network
    named = first(_labels(pod), CANONICAL_NAME, "") == ""
    return DataPlane(
        inits=(),
        proxy=proxy,
        volumes=volumes,
        labels=labels,
        annotations={
            REVISION_LABEL: c.revision,
            STATUS_ANNOTATION: status,
            REWRITE_PROBES: "false",
            **scrape.annotations,
            **c.config.injected_annotations,
        },
        removed_annotations=scrape.removed,
        default_annotations=_defaults(pod),
        appended=appended,
        named=frozenset({"service.istio.io/canonical-name"} if named else ()),
        notes=tuple(notes),
        warnings=(*warnings, *conf.warnings, *setup.warnings),
    )


# ---------------------------------------------------------------------------- the flavour


def describe(policy: Policy, cni: bool) -> list[str]:
    s = settings(policy)
    control = control_plane({}, policy).config
    assert isinstance(control, IstioControl)
    image = s.image or "the control plane's (values global.hub, global.tag, global.proxy.image)"
    injector = ", ".join(
        f"{ns}/{name}" for ns, name in config_maps(policy) if name.startswith("istio-sidecar")
    )
    ns, mesh = s.namespace, config_map_name(s.revision)
    return [
        f"data plane: istio: {PROXY} {image}",
        f"  istiod: {control.ca_address} (revision {s.revision}); trust domain, cluster id and mesh id "
        "from the control plane unless the policy sets them",
        f"  versions rendered: {', '.join(KNOWN)}; without a control plane: {s.version} ({control.image})",
        f"  control plane: ConfigMap {injector}, keys values and config (the version, images and "
        "settings), watched by serve; read from --cluster or --kubeconfig by the dry-run verbs",
        f"  mesh config: defaultConfig and trustDomain from ConfigMap {ns}/{mesh}, key mesh",
        f"  revisions: {', '.join(_served(s))} (a namespace's or pod's istio.io/rev label picks one)",
        "  iptables mode: "
        + (f"{VALIDATION} (a CNI plugin installs the rules)" if cni else f"{INIT} (istio-iptables)"),
        f"  proxyless gRPC: {TEMPLATES}: grpc-agent (the agent, no Envoy, no init container)",
    ]


FLAVOUR = Flavour(
    name="istio",
    proxy_name=PROXY,
    init_name=INIT,
    ports=RESERVED,
    admin="POST /quitquitquit on port 15020",
    labels_read=(*CANONICAL_NAME, *CANONICAL_REVISION, REVISION_LABEL, WORKLOAD_LABEL, NETWORK_LABEL),
    resource_annotations={
        "sidecar.istio.io/proxyCPU": "proxy-cpu-request",
        "sidecar.istio.io/proxyCPULimit": "proxy-cpu-limit",
        "sidecar.istio.io/proxyMemory": "proxy-memory-request",
        "sidecar.istio.io/proxyMemoryLimit": "proxy-memory-limit",
    },
    reads_workload=True,
    render=render,
    describe=describe,
    policy=FlavourPolicy(settings=IstioSettings, check=check),
    config_maps=config_maps,
    control_plane=control_plane,
    control_for=control_for,
    redirect=Redirect(mode="istio", uid=UID, outbound=15001, inbound=15006, repaired=True),
    no_redirect=no_redirect,
    cni_reads=(*CNI_ANNOTATIONS, "sidecar.istio.io/inject"),
    gvisor_gap="istio-iptables' rules are not shown to load in gVisor's netstack",
    writes_sidecar_status=True,
    containers=(PROXY, INIT, VALIDATION),
    named_env=("ISTIO_META_WORKLOAD_NAME", "ISTIO_META_OWNER"),
    volumes=tuple(
        {"name": name}
        for name in (
            "workload-socket",
            "credential-socket",
            "workload-certs",
            "istio-envoy",
            "istio-data",
            "istio-podinfo",
            "istio-token",
            "istiod-ca-cert",
            "istio-ca-crl",
            "istio-xds",
        )
    ),
    requested_volumes=requested_volumes,
    appends=(
        *(("env", e["name"]) for e in GRPC_APP_ENV),
        *(("volumeMounts", m["name"]) for m in GRPC_APP_MOUNTS),
    ),
    marks=(
        "security.istio.io/tlsMode",
        "service.istio.io/canonical-name",
        "service.istio.io/canonical-revision",
        NETWORK_LABEL,
        REVISION_LABEL,
        STATUS_ANNOTATION,
        REWRITE_PROBES,
        "kubectl.kubernetes.io/default-container",
        "kubectl.kubernetes.io/default-logs-container",
        *PROMETHEUS,
        *CNI_ANNOTATIONS,
    ),
)
