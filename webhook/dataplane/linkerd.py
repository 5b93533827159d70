"""The ``linkerd`` flavour: what the installed Linkerd control plane's own injector gives a pod.

Which Linkerd it is and how it is configured is read by ``linkerdcontrol`` (the control
plane's ``linkerd-config`` and trust roots, one table per supported version); this module
renders it, the same way for every version, with the pod's own config.linkerd.io
annotations over it.

``linkerd-proxy`` gets the environment Linkerd's injector writes (control-plane addresses
and identities, the trust anchors, the pod's inbound ports, listen addresses, the pod
identity and destination context), its ports, probes, security context and identity
volumes; the ``linkerd.io/*`` labels and annotations Linkerd's tools read. In iptables
mode ``linkerd-init`` runs proxy-init with the version's flags for the chosen firewall
backend (``Build.firewall``); with a CNI plugin installing the rules, or under Merbridge,
``linkerd-network-validator`` checks the redirect, as Linkerd's CNI mode does; in microvm
mode ``linkerd-init`` runs inside the guest.

Where we differ from Linkerd's injector (README: "Linkerd"): resources, placement and the
interception mode are ours (what the control plane says of them is named in the
explanation where it differs); the proxy also drops ALL capabilities, so the pod passes the
``restricted`` Pod Security level; the skip-port annotations always say exactly what the
redirect leaves alone.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from webhook import __version__
from webhook.dataplane.base import (
    Build,
    DataPlane,
    Flavour,
    Kept,
    Ports,
    Redirect,
    field_env,
    image_tag,
    join,
    label_value,
    port_list,
)
from webhook.dataplane.iptables import PortListError, parse_ports
from webhook.dataplane.linkerdcontrol import (
    ADMIN,
    CONFIG_MAP,
    CONTROL,
    DURATION,
    END_ENTITY,
    INBOUND,
    INBOUND_POLICIES,
    INIT,
    INIT_UID,
    KNOWN,
    OUTBOUND,
    PROXY,
    TOKEN,
    TRUST_ROOTS,
    TRUST_ROOTS_KEY,
    UID,
    VALIDATOR,
    VALUES_KEY,
    XTABLES,
    Config,
    Firewall,
    LinkerdSettings,
    Release,
    check_policy,
    config_maps,
    control_plane,
    settings,
    trust_root_sha256,
)
from webhook.nested import dotted
from webhook.policy import FlavourPolicy, Policy
from webhook.reasons import Mode

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
# the proxy variable that lists the pod's own inbound ports (``ports_text``)
INBOUND_PORTS = "LINKERD2_PROXY_INBOUND_PORTS"
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
    prefixes = (CONFIG, CONFIG_ALPHA, CONFIG_BETA)
    own = [k for k in annotations if isinstance(k, str) and k.startswith(prefixes)]
    if not own:
        return conf
    off = set(conf.detect_timeouts_off)
    for key in sorted(own):
        value = annotations[key]
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
            if DURATION.match(text):
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
            if DURATION.match(text):
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
        if not isinstance(items, list):
            continue
        for c in items:
            if not isinstance(c, dict):
                continue
            declared = c.get("ports")
            if isinstance(declared, list):
                for p in declared:
                    if isinstance(p, dict):
                        port = p.get("containerPort")
                        if type(port) is int:
                            ports.add(port)
            for probe in (c.get("readinessProbe"), c.get("livenessProbe")):
                action = probe.get("httpGet") if isinstance(probe, dict) else None
                port = action.get("port") if isinstance(action, dict) else None
                if type(port) is int:
                    ports.add(port)
    return ",".join(sorted([str(p) for p in ports]))


def ports_text(pod: Mapping[str, Any], c: Config) -> str:
    """What ``LINKERD2_PROXY_INBOUND_PORTS`` holds for ``pod`` (empty: the variable is left out)."""
    return _inbound_ports(pod, c.release.init_container_ports)


def _listen(c: Config, port: int) -> str:
    return f"{'0.0.0.0' if c.disable_ipv6 else '[::]'}:{port}"


# What a rendering takes from the control plane's Config alone (and from a pod's config
# annotations over it), made once per Config: a snapshot renders every pod with one.
_KEPT = Kept()

Env = tuple[dict[str, Any], ...]


def _conf_key(conf: PodConfig) -> tuple[Any, ...]:
    """What of ``conf`` the proxy's variables are made of (its warnings are not)."""
    return (
        conf.log_level,
        conf.log_format,
        conf.log_headers,
        conf.opaque_ports,
        conf.inbound_policy,
        tuple(sorted(conf.durations.items())),
        conf.detect_timeouts_off,
        conf.require_identity,
        conf.access_log,
        conf.shutdown_grace_period,
        conf.hostname_labels,
    )


def proxy_env(build: Build, pod: Mapping[str, Any], c: Config, conf: PodConfig) -> list[dict[str, Any]]:
    """The proxy's variables in the order Linkerd's injector writes them: the parts that
    depend on the control plane and the pod's config annotations are made once per Config;
    the pod's own inbound ports, its threads and whether its proxy serves /shutdown are put
    between them."""
    key = _conf_key(conf)
    head = _KEPT.get(c, "env-head", lambda: _env_head(c))
    before, after = _KEPT.get(c, ("env", key), lambda: _env_around_ports(c, conf))
    threads = build.resources.threads()
    cores = _KEPT.get(c, ("env-cores", threads[0] if threads else None), lambda: tuple(_cores_env(build, c)))
    # a Job's app can stop a regular-container proxy: linkerd-await --shutdown, or POST
    # /shutdown on the admin port (README: "Jobs on clusters without native sidecars")
    if conf.shutdown_endpoint is not None:
        shutdown = conf.shutdown_endpoint
    else:
        shutdown = c.shutdown_endpoint or (build.batch and not build.native)
    env = [*head, *cores]
    if conf.require_identity:
        env.append({"name": "LINKERD2_PROXY_INBOUND_PORTS_REQUIRE_IDENTITY", "value": conf.require_identity})
    env.append(_KEPT.get(c, ("env-shutdown", shutdown), lambda: _shutdown_env(shutdown)))
    env += before
    ports = ports_text(pod, c)
    if ports:
        env.append({"name": INBOUND_PORTS, "value": ports})
    env += after
    return env


def _shutdown_env(shutdown: bool) -> dict[str, Any]:
    return {"name": "LINKERD2_PROXY_SHUTDOWN_ENDPOINT_ENABLED", "value": "true" if shutdown else "false"}


def _env_head(c: Config) -> Env:
    release = c.release
    env: list[dict[str, Any]] = [
        field_env("_pod_name", "metadata.name"),
        field_env("_pod_ns", "metadata.namespace"),
    ]
    if release.pod_env:
        env += [field_env("_pod_uid", "metadata.uid"), field_env("_pod_ip", "status.podIP")]
    env.append(field_env("_pod_nodeName", "spec.nodeName"))
    if release.pod_env:
        env.append({"name": "_pod_containerName", "value": PROXY})
    return tuple(env)


def _env_around_ports(c: Config, conf: PodConfig) -> tuple[Env, Env]:
    """The variables before the pod's inbound ports and after them."""
    release = c.release
    svc = f"{c.namespace}.svc.{c.cluster_domain}."
    before = [
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
    suffixes = "." if c.external_profiles else f"svc.{c.cluster_domain}."
    after = [
        {"name": "LINKERD2_PROXY_DESTINATION_PROFILE_SUFFIXES", "value": suffixes},
        {"name": "LINKERD2_PROXY_INBOUND_ACCEPT_KEEPALIVE", "value": "10000ms"},
        {"name": "LINKERD2_PROXY_OUTBOUND_CONNECT_KEEPALIVE", "value": "10000ms"},
    ]
    if release.user_timeouts:
        after += [
            {"name": "LINKERD2_PROXY_INBOUND_ACCEPT_USER_TIMEOUT", "value": "30s"},
            {"name": "LINKERD2_PROXY_OUTBOUND_CONNECT_USER_TIMEOUT", "value": "30s"},
        ]
    if release.hostname_labels:
        after.append(
            {
                "name": "LINKERD2_PROXY_OUTBOUND_METRICS_HOSTNAME_LABELS",
                "value": str(conf.hostname_labels).lower(),
            }
        )
    after += [{"name": name, "value": value} for name, value in c.params]
    if conf.opaque_ports:
        after.append(
            {"name": "LINKERD2_PROXY_INBOUND_PORTS_DISABLE_PROTOCOL_DETECTION", "value": conf.opaque_ports}
        )
    after += [
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
        after.append({"name": "LINKERD2_PROXY_ACCESS_LOG", "value": conf.access_log})
    if conf.shutdown_grace_period:
        after.append({"name": "LINKERD2_PROXY_SHUTDOWN_GRACE_PERIOD", "value": conf.shutdown_grace_period})
    return tuple(before), tuple(after)


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
    fixed = _KEPT.get(c, "proxy", lambda: _proxy_fixed(c))
    container: dict[str, Any] = {
        "name": PROXY,
        "image": c.image,
        "imagePullPolicy": c.pull_policy,
        "env": proxy_env(build, pod, c, conf),
        "livenessProbe": fixed["livenessProbe"],
        "ports": fixed["ports"],
        "readinessProbe": fixed["readinessProbe"],
        "resources": build.resources.as_k8s(),
        "securityContext": fixed["securityContext"],
        "terminationMessagePolicy": "FallbackToLogsOnError",
        "volumeMounts": fixed["volumeMounts"],
    }
    if build.native:
        container["restartPolicy"] = "Always"
        container["startupProbe"] = fixed["startupProbe"]
    else:
        # the app starts once the proxy is ready (the proxy is the first container)
        container["lifecycle"] = fixed["lifecycle"]
    return container


def _proxy_fixed(c: Config) -> dict[str, Any]:
    """The parts of the proxy container that are the same for every pod of a Config."""
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
    wait = ["/usr/lib/linkerd/linkerd-await", "--timeout=2m", f"--port={ADMIN}"]
    lifecycle: dict[str, Any] = {"postStart": {"exec": {"command": wait}}}
    if c.wait_before_exit:
        lifecycle["preStop"] = {"exec": {"command": ["/bin/sleep", str(c.wait_before_exit)]}}
    return {
        "livenessProbe": _probe(c, "livenessProbe", "/live"),
        "ports": [
            {"containerPort": INBOUND, "name": "linkerd-proxy"},
            {"containerPort": ADMIN, "name": "linkerd-admin"},
        ],
        "readinessProbe": _probe(c, "readinessProbe", "/ready"),
        "securityContext": security,
        "volumeMounts": [
            {"mountPath": "/var/run/linkerd/identity/end-entity", "name": END_ENTITY},
            {"mountPath": "/var/run/secrets/tokens", "name": TOKEN},
        ],
        "startupProbe": _probe(c, "startupProbe", "/ready"),
        "lifecycle": lifecycle,
    }


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
    meshes' exclusions are added. Under Merbridge (ebpf) the same: it is told what
    linkerd-init would leave alone (``ControlPlane.rules``)."""
    # a CNI plugin (linkerd-cni) applies the pod's annotation, else its own configuration,
    # never the control plane's proxyInit ports
    cni = build.validator and build.mode is Mode.IPTABLES
    annotations = (pod.get("metadata") or {}).get("annotations")
    if not isinstance(annotations, Mapping):
        annotations = {}
    inbound, outbound = annotations.get(SKIP_INBOUND), annotations.get(SKIP_OUTBOUND)
    own = (None if inbound is None else str(inbound), None if outbound is None else str(outbound))
    key = (cni, build.skip_inbound, build.skip_outbound, own)
    return _SKIPS.get(c, key, lambda: _skip_lists(build, pod, c, cni))


# The skip lists by what they are made of, apart from the fixed parts in _KEPT: pods whose
# own lists differ come and go without pushing those out.
_SKIPS = Kept()
SKIP_INBOUND, SKIP_OUTBOUND = CONFIG + "skip-inbound-ports", CONFIG + "skip-outbound-ports"


def _skip_lists(build: Build, pod: Mapping[str, Any], c: Config, cni: bool) -> tuple[str, str]:
    out = []
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


def _annotations(c: Config) -> tuple[tuple[str, str], ...]:
    return (
        ("linkerd.io/created-by", f"mesh-injector/{__version__}"),
        ("linkerd.io/proxy-version", image_tag(c.image) or c.image),
        ("linkerd.io/trust-root-sha256", trust_root_sha256(c.anchors)),
    )


def _notes(build: Build, c: Config) -> list[str]:
    """Where the control plane would decide otherwise than mesh-injector did."""
    notes = list(c.notes)
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
        volumes.append(_KEPT.get(c, "xtables-volume", _xtables_volume))
    elif build.validator:
        inits = (_KEPT.get(c, "validator", lambda: validator_container(c)),)
    volumes += _KEPT.get(c, "identity-volumes", lambda: tuple(_identity_volumes()))
    labels = {"linkerd.io/control-plane-ns": c.namespace, "linkerd.io/workload-ns": build.workload.namespace}
    owner = _OWNER_LABEL.get(build.workload.kind)
    named = frozenset({f"linkerd.io/proxy-{owner}"} if owner is not None else ())
    if owner is not None:
        labels[f"linkerd.io/proxy-{owner}"] = label_value(build.workload.name)
    conf = pod_config(pod, c)
    annotations = dict(_KEPT.get(c, "annotations", lambda: _annotations(c)))
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


def describe(policy: Policy, cni: bool) -> list[str]:
    s = settings(policy)
    release = KNOWN[s.version]
    anchors = (
        "from the policy (proxy.linkerd.trustAnchorsPem)"
        if s.trust_anchors_pem
        else f"from ConfigMap {s.namespace}/{TRUST_ROOTS}, key {TRUST_ROOTS_KEY} "
        "(watched by serve; read from --cluster or --kubeconfig by the dry-run verbs)"
    )
    image = s.image or f"{dotted(release.values, 'proxy.image.name')}:{release.edge}"
    init = s.init_image or (
        f"{image} ({release.init_command[0]})"
        if release.init_command
        else "{}:{}".format(*(dotted(release.values, f"proxyInit.image.{k}") for k in ("name", "version")))
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
    policy=FlavourPolicy(settings=LinkerdSettings, check=check_policy),
    config_maps=config_maps,
    control_plane=control_plane,
    dry_run_needs=(
        "Linkerd's trust anchors; give --cluster with the output of `kubectl get configmap "
        "-n linkerd linkerd-identity-trust-roots -o yaml`, or --kubeconfig, or set "
        "proxy.linkerd.trustAnchorsPem in --policy"
    ),
    inherits=(CONFIG, CONFIG_ALPHA, CONFIG_BETA),
    redirect=Redirect(mode="linkerd", uid=UID, outbound=OUTBOUND, inbound=INBOUND, repaired=False),
    skips_sources=True,
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
    shapes=True,
    ports_text=ports_text,
    ports_env=INBOUND_PORTS,
)
