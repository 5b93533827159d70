"""The injection policy: data, validated once at start-up.

A policy file is YAML whose shape is the dataclasses below (camelCase keys). Loading is
strict: an unknown field, a wrong type or a value outside its allowed set raises
``PolicyError`` naming the field path and what is allowed, so a bad policy stops start-up
instead of half-working. Fields left out take the defaults of the bundled
``policies/default.yaml``, which is itself just a policy file.
"""

from __future__ import annotations

import dataclasses
import re
import sys
import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from fnmatch import fnmatchcase
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import yaml

from webhook import yamltext
from webhook.nested import overlay
from webhook.quantity import parse_quantity
from webhook.versions import Kernel, KubeVersion, parse_kernel, parse_kube_version


class PolicyError(ValueError):
    """A policy file is unreadable or names a field or value that is not allowed."""


class Duration(float):
    """Seconds, written as ``90s``, ``30m``, ``24h``, ``7d`` (or a bare number of seconds)."""


class Cpu(float):
    """CPU cores, written as a Kubernetes quantity (``250m``, ``1``, ``1.5``)."""


class Memory(int):
    """Bytes, written as a Kubernetes quantity (``64Mi``, ``1Gi``, ``500M``)."""


class PortList(str):
    """Ports and ranges, written as ``25,3306,8000-8100`` (a single port may be a bare number)."""


_LABEL_KEY = re.compile(r"^([a-z0-9]([-a-z0-9.]*[a-z0-9])?/)?[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$")
_LABEL_VALUE = re.compile(r"^([A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?)?$")
_DURATION = re.compile(r"^(\d+(?:\.\d+)?)(s|m|h|d)?$")
_DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, None: 1}
_PORT_LIST = re.compile(r"^\s*(\d+(-\d+)?(\s*,\s*\d+(-\d+)?)*)?\s*$")

Protocol = Literal["grpc", "http", "tcp"]
Throughput = Literal["high", "normal"]
Lifecycle = Literal["service", "batch"]


@dataclass(frozen=True, kw_only=True)
class Amounts:
    cpu: Cpu | None = None
    memory: Memory | None = None


@dataclass(frozen=True, kw_only=True)
class ProfileMatch:
    protocol: Protocol | None = None
    throughput: Throughput | None = None
    lifecycle: Lifecycle | None = None

    def matches(self, protocol: str, throughput: str, lifecycle: str) -> bool:
        return (
            (self.protocol is None or self.protocol == protocol)
            and (self.throughput is None or self.throughput == throughput)
            and (self.lifecycle is None or self.lifecycle == lifecycle)
        )


@dataclass(frozen=True, kw_only=True)
class Profile:
    name: str
    match: ProfileMatch = field(default_factory=ProfileMatch)
    requests: Amounts
    limits: Amounts = field(default_factory=Amounts)


# a dataclass field that is not a key of the policy file (it is filled in as the file is read)
NOT_IN_FILE: Mapping[str, bool] = types.MappingProxyType({"file": False})


def _no_check(policy: Policy) -> str | None:
    return None


@dataclass(frozen=True, slots=True)
class FlavourPolicy:
    """What the policy file holds for one data-plane flavour: the dataclass of its section
    under ``proxy`` (read and checked like the rest of the file; None: it has none), and a
    check of the whole policy (what is wrong, or None). A settings class with a
    ``namespace`` names where the flavour's control plane runs."""

    settings: type | None = None
    check: Callable[[Policy], str | None] = _no_check


Flavours = Mapping[str, FlavourPolicy]


@dataclass(frozen=True, kw_only=True)
class ProxyImages:
    flavour: str  # the name of a registered data-plane flavour
    # the contract proxy's images (the flavour that has no images of its own requires them)
    image: str | None = None
    init_image: str | None = None
    connection_pool_size: int = 4096
    # each flavour's own section, ``proxy.<flavour>``, parsed by the settings class the
    # flavour declares (``FlavourPolicy``)
    sections: Mapping[str, Any] = field(default_factory=dict, metadata=NOT_IN_FILE)

    def settings(self, name: str) -> Any:
        return self.sections[name]


@dataclass(frozen=True, kw_only=True)
class Redirector:
    """Where the node agent that performs ebpf mode runs: Merbridge's DaemonSet pods."""

    # default: the namespace of the flavour's control plane (its settings' ``namespace``),
    # where Merbridge's own manifests install it
    namespace: str | None = None
    # equality-based label selector of its pods, as kubectl -l takes it
    selector: str = "app=merbridge"
    # count a node only where Merbridge runs with --cni-mode: without it, inbound traffic
    # from other nodes and the pod's exclusions bypass the redirect
    require_cni_mode: bool = True
    # add the mesh's network validator where it works under the redirector (Linkerd's), so
    # a pod whose traffic is not redirected fails to start instead of bypassing its proxy
    network_validator: bool = True

    def labels(self) -> dict[str, str]:
        """The selector as key -> value (validated at load)."""
        pairs = (item.split("=", 1) for item in self.selector.split(",") if item.strip())
        return {k.strip(): v.strip() for k, v in pairs}


@dataclass(frozen=True, kw_only=True)
class EbpfRules:
    # false: ebpf is never chosen (asked for by annotation, the pod falls back)
    enabled: bool = True
    min_kernel: Kernel
    capable_kernels: tuple[str, ...] = ()
    # true: a pod with init containers of its own gets ebpf too, though Merbridge sends
    # their connections to a proxy that only starts after them (fit for init containers
    # that connect nowhere, or only to loopback or excluded ports)
    allow_init_containers: bool = False
    redirector: Redirector = field(default_factory=Redirector)


@dataclass(frozen=True, kw_only=True)
class MicrovmRules:
    min_kernel: Kernel
    min_server_version: KubeVersion
    runtime_class: str = "kata-qemu"
    # RuntimeClass handlers (or names, for a class not in the cluster state) that run a pod
    # in a sandbox, where host eBPF and host-side rules cannot see its sockets
    sandbox_handlers: tuple[str, ...] = ()
    # those of them that run gVisor's netstack, which refuses some iptables features
    gvisor_handlers: tuple[str, ...] = ()


# the two backends of iptables: the legacy x_tables kernel API, or nf_tables
Firewall = Literal["legacy", "nft"]


@dataclass(frozen=True, kw_only=True)
class NodesWithout:
    """Nodes known to lack a firewall backend, by what each one reports in
    ``status.nodeInfo``: its OS image (an fnmatch pattern), and where given, a kubelet and a
    kernel at least this. Every condition given must hold; a node that does not report what a
    condition reads is not known to match it."""

    backend: Firewall
    os_image: str = "*"
    min_kubelet: KubeVersion | None = None
    min_kernel: Kernel | None = None

    def matches(self, os_image: str | None, kubelet: str | None, kernel: str | None) -> bool:
        if not fnmatchcase(os_image or "", self.os_image):
            return False
        if self.min_kubelet is not None:
            have = parse_kube_version(kubelet)
            if have is None or have < self.min_kubelet:
                return False
        if self.min_kernel is not None:
            running = parse_kernel(kernel)
            if running is None or running < self.min_kernel:
                return False
        return True

    def describe(self) -> str:
        conditions = [f"osImage {self.os_image}"]
        if self.min_kubelet is not None:
            conditions.append(f"kubelet >= {self.min_kubelet}")
        if self.min_kernel is not None:
            conditions.append(f"kernel >= {self.min_kernel}")
        return " and ".join(conditions)


@dataclass(frozen=True, kw_only=True)
class IptablesRules:
    cni_installs_rules: bool = False
    # nodes whose kernel is known to lack a backend: the init container's rules are never
    # installed with a backend an eligible node lacks
    nodes_without: tuple[NodesWithout, ...] = ()


@dataclass(frozen=True, kw_only=True)
class Interception:
    ebpf: EbpfRules
    microvm: MicrovmRules
    iptables: IptablesRules = field(default_factory=IptablesRules)
    high_throughput_cpu: Cpu


@dataclass(frozen=True, kw_only=True)
class NativeSidecar:
    min_version: KubeVersion


@dataclass(frozen=True, kw_only=True)
class VerticalPodAutoscaling:
    """How proxy sizing composes with a VerticalPodAutoscaler that controls the proxy."""

    # true: the pod's own resource annotations are written even where VPA sizes the proxy
    # (VPA then sees a proxy it does not set, and its updater may evict the pod to fix it)
    annotations_win: bool = False


@dataclass(frozen=True, kw_only=True)
class Sizing:
    window: Duration
    half_life: Duration
    min_samples: int
    min_span: Duration
    cpu_percentile: float
    memory_percentile: float
    margin: float
    limit_factor: float
    cpu_limits: bool
    oom_lookback: Duration
    oom_factor: float
    oom_min_increase: Memory
    floor: Amounts
    cap: Amounts
    vertical_pod_autoscaler: VerticalPodAutoscaling = field(default_factory=VerticalPodAutoscaling)


@dataclass(frozen=True, kw_only=True)
class PodSecurity:
    # the level namespaces without a pod-security.kubernetes.io/enforce label get (the API
    # server's own default, from its admission configuration, is invisible to a webhook)
    default_level: Literal["privileged", "baseline", "restricted"] = "privileged"


@dataclass(frozen=True, kw_only=True)
class OtherMeshes:
    # sidecar.istio.io/inject: "false" and linkerd.io/inject: disabled count as the pod's opt-out
    respect_opt_outs: bool = True
    # Istio's and Linkerd's port and IP-range exclusion annotations are added to ours
    translate_exclusions: bool = True


@dataclass(frozen=True, kw_only=True)
class Policy:
    api_version: Literal["mesh-injector.io/v1"] = "mesh-injector.io/v1"
    kind: Literal["InjectionPolicy"] = "InjectionPolicy"
    inject_by_default: bool
    injector_namespace: str
    excluded_namespaces: tuple[str, ...] = ()
    proxy: ProxyImages
    interception: Interception
    native_sidecar: NativeSidecar
    pod_security: PodSecurity = field(default_factory=PodSecurity)
    other_meshes: OtherMeshes = field(default_factory=OtherMeshes)
    sizing: Sizing
    profiles: tuple[Profile, ...]

    @property
    def redirector_namespace(self) -> str:
        """Where the redirector's pods are looked for: the policy's, else where Merbridge's own
        manifests put it for the flavour's mesh."""
        configured = self.interception.ebpf.redirector.namespace
        if configured:
            return configured
        home = getattr(self.proxy.sections.get(self.proxy.flavour), "namespace", None)
        return home if isinstance(home, str) else "merbridge"

    def profile_for(self, protocol: str, throughput: str, lifecycle: str) -> Profile:
        for profile in self.profiles:
            if profile.match.matches(protocol, throughput, lifecycle):
                return profile
        raise AssertionError("validated policies end with a catch-all profile")


# --- loading -----------------------------------------------------------------------


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(part.capitalize() for part in rest)


def _describe(tp: Any) -> str:
    if typing.get_origin(tp) is Literal:
        return "one of " + ", ".join(repr(v) for v in typing.get_args(tp))
    names = {
        bool: "true or false",
        int: "an integer",
        float: "a number",
        str: "a string",
        Duration: "a duration such as 90s, 30m, 24h, 7d",
        Cpu: "a CPU quantity such as 250m or 1",
        Memory: "a memory quantity such as 64Mi or 1Gi",
        Kernel: "a kernel version such as 5.10",
        KubeVersion: "a Kubernetes version such as 1.32",
        PortList: "ports and ranges such as 25,3306,8000-8100",
    }
    return names.get(tp, getattr(tp, "__name__", str(tp)))


def _quantity(value: Any, path: str, what: str) -> Decimal:
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise PolicyError(f"{path}: expected {what}, got {value!r}")
    try:
        q = parse_quantity(value)
    except (ValueError, InvalidOperation, TypeError):
        raise PolicyError(f"{path}: {value!r} is not {what}") from None
    if q < 0:
        raise PolicyError(f"{path}: {value!r} must not be negative")
    return q


def _quote_hint(value: Any) -> str:
    """What to write instead of a YAML number or boolean where text was meant."""
    if isinstance(value, bool | int | float):
        return " (YAML read an unquoted value as a number or boolean: put it in quotes)"
    return ""


class _Written(float):
    """A YAML float that remembers how it was written (``5.10``, read as 5.1)."""

    written: str


def _as_written(data: Any, node: Any) -> Any:
    """``data`` (the policy as read) with each float replaced by a ``_Written`` of its text
    in the file, found at the same place in the composed ``node``."""
    if isinstance(data, dict) and isinstance(node, yaml.MappingNode):
        keys = {k.value: v for k, v in node.value if isinstance(k, yaml.ScalarNode)}
        return {k: _as_written(v, keys.get(k)) for k, v in data.items()}
    if isinstance(data, list) and isinstance(node, yaml.SequenceNode) and len(node.value) == len(data):
        return [_as_written(v, n) for v, n in zip(data, node.value, strict=True)]
    if type(data) is float and isinstance(node, yaml.ScalarNode):
        number = _Written(data)
        number.written = node.value
        return number
    return data


def _version_text(value: Any, path: str, what: str) -> str:
    """A version's text; a YAML float is refused, since it has lost its trailing zeros
    (``5.10`` reads as 5.1, ``1.30`` as 1.3)."""
    if isinstance(value, float):
        written = getattr(value, "written", repr(value))
        read = f", which reads as {float(value)!r}" if written != repr(float(value)) else ""
        raise PolicyError(
            f'{path}: {written} is a YAML number{read}: write the version in quotes, "{written}"'
        )
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise PolicyError(f"{path}: expected {what}, got {value!r}")
    return str(value)


def _convert(tp: Any, value: Any, path: str) -> Any:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None:
            return None
        return _convert(args[0], value, path)
    if origin is Literal:
        allowed = typing.get_args(tp)
        if value not in allowed:
            raise PolicyError(f"{path}: {value!r} is not allowed; expected {_describe(tp)}")
        return value
    if origin is tuple:
        (item,) = typing.get_args(tp)[:1]
        if not isinstance(value, list):
            raise PolicyError(f"{path}: expected a list, got {type(value).__name__}")
        return tuple(_convert(item, v, f"{path}[{i}]") for i, v in enumerate(value))
    if dataclasses.is_dataclass(tp):
        return _build(tp, value, path)
    if tp is bool:
        if not isinstance(value, bool):
            raise PolicyError(f"{path}: expected true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise PolicyError(f"{path}: expected an integer, got {value!r}")
        if value < 0:
            raise PolicyError(f"{path}: {value} must not be negative")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value:
            raise PolicyError(f"{path}: expected a number, got {value!r}")
        if value < 0 or value == float("inf"):
            raise PolicyError(f"{path}: {value} must be a finite number, not negative")
        return float(value)
    if tp is str:
        if not isinstance(value, str) or not value:
            raise PolicyError(f"{path}: expected a non-empty string, got {value!r}{_quote_hint(value)}")
        return value
    if tp is PortList:
        if isinstance(value, int) and not isinstance(value, bool):
            value = str(value)
        if not isinstance(value, str) or not _PORT_LIST.match(value):
            raise PolicyError(f"{path}: {value!r} is not {_describe(tp)}{_quote_hint(value)}")
        for item in filter(None, (i.strip() for i in value.split(","))):
            lo, _, hi = item.partition("-")
            if not 1 <= int(lo) <= int(hi or lo) <= 65535:
                raise PolicyError(f"{path}: {item!r} is outside 1-65535 or reversed")
        return value  # a plain str: it is written into pods as it is
    if tp is Duration:
        m = _DURATION.match(str(value)) if not isinstance(value, bool) else None
        if m is None:
            raise PolicyError(f"{path}: {value!r} is not {_describe(tp)}")
        return Duration(float(m.group(1)) * _DURATION_UNITS[m.group(2)])
    if tp is Cpu:
        return Cpu(float(_quantity(value, path, _describe(tp))))
    if tp is Memory:
        return Memory(int(_quantity(value, path, _describe(tp))))
    if tp is Kernel:
        kernel = parse_kernel(_version_text(value, path, _describe(tp)))
        if kernel is None:
            raise PolicyError(f"{path}: {value!r} is not {_describe(tp)}")
        return kernel
    if tp is KubeVersion:
        version = parse_kube_version(_version_text(value, path, _describe(tp)))
        if version is None:
            raise PolicyError(f"{path}: {value!r} is not {_describe(tp)}")
        return version
    raise TypeError(f"unsupported policy field type {tp!r}")  # a bug in this module, not input


def _file_fields(cls: Any) -> dict[str, dataclasses.Field[Any]]:
    """The keys a policy file may give for ``cls``, and their fields."""
    return {_camel(f.name): f for f in dataclasses.fields(cls) if f.metadata.get("file", True)}


def _build(cls: Any, value: Any, path: str) -> Any:
    if not isinstance(value, dict):
        raise PolicyError(f"{path or 'policy'}: expected a mapping, got {type(value).__name__}")
    hints = typing.get_type_hints(cls)
    fields = _file_fields(cls)
    kwargs = {}
    for key, f in fields.items():
        sub = f"{path}.{key}" if path else key
        if key in value:
            kwargs[f.name] = _convert(hints[f.name], value[key], sub)
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise PolicyError(f"{sub}: required field is missing")
    return cls(**kwargs)


def _unknown_fields(cls: Any, value: Any, path: str, flavours: Flavours) -> list[str]:
    """Every field the file names that the policy does not have, each with what is allowed
    there (all of them at once: fixing one typo per run is slow). Under ``proxy``, each
    flavour's section is allowed too."""
    if not isinstance(value, dict):
        return []
    hints = typing.get_type_hints(cls)
    fields = _file_fields(cls)
    sections = _sections(flavours) if cls is ProxyImages else {}
    where = f"{path}." if path else ""
    out = [
        f"{where}{key}: unknown field; allowed fields here are " + ", ".join(sorted([*fields, *sections]))
        for key in sorted(set(map(str, value)) - set(fields) - set(sections))
    ]
    for key, settings in sections.items():
        if key in value:
            out += _unknown_fields(settings, value[key], f"{where}{key}", flavours)
    for key, f in fields.items():
        if key not in value:
            continue
        tp = hints[f.name]
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if typing.get_origin(tp) in (typing.Union, types.UnionType) and args:
            tp = args[0]
        if typing.get_origin(tp) is tuple and isinstance(value[key], list):
            item = typing.get_args(tp)[0]
            if dataclasses.is_dataclass(item):
                for i, v in enumerate(value[key]):
                    out += _unknown_fields(item, v, f"{where}{key}[{i}]", flavours)
        elif dataclasses.is_dataclass(tp):
            out += _unknown_fields(tp, value[key], f"{where}{key}", flavours)
    return out


def _sections(flavours: Flavours) -> dict[str, type]:
    return {name: f.settings for name, f in flavours.items() if f.settings is not None}


def _build_policy(data: dict[str, Any], flavours: Flavours) -> Policy:
    """The policy, each flavour's section under ``proxy`` read by its own settings class."""
    proxy = data.get("proxy")
    if not isinstance(proxy, dict):
        return _build(Policy, data, "")  # refused there, with the path
    chosen = proxy.get("flavour")
    if not (isinstance(chosen, str) and chosen in flavours):
        allowed = ", ".join(repr(name) for name in flavours)
        raise PolicyError(f"proxy.flavour: {chosen!r} is not allowed; expected one of {allowed}")
    sections = _sections(flavours)
    own = {k: v for k, v in proxy.items() if k not in sections}
    policy = _build(Policy, {**data, "proxy": own}, "")
    parsed = {name: _build(cls, proxy.get(name, {}), f"proxy.{name}") for name, cls in sections.items()}
    return dataclasses.replace(policy, proxy=dataclasses.replace(policy.proxy, sections=parsed))


def _check(policy: Policy, flavours: Flavours) -> Policy:
    for flavour in flavours.values():
        problem = flavour.check(policy)
        if problem is not None:
            raise PolicyError(problem)
    redirector = policy.interception.ebpf.redirector
    for item in redirector.selector.split(","):
        key, eq, value = item.partition("=")
        if not eq or not _LABEL_KEY.match(key.strip()) or not _LABEL_VALUE.match(value.strip()):
            raise PolicyError(
                f"interception.ebpf.redirector.selector: {redirector.selector!r} is not an equality-based "
                "label selector such as app=merbridge or app=merbridge,tier=node"
            )
    if not policy.profiles or policy.profiles[-1].match != ProfileMatch():
        raise PolicyError("profiles: the last profile must have an empty match (the catch-all)")
    for i, p in enumerate(policy.profiles):
        if p.requests.cpu is None or p.requests.memory is None:
            raise PolicyError(f"profiles[{i}].requests: both cpu and memory are required")
    s = policy.sizing
    for name, pct in (("cpuPercentile", s.cpu_percentile), ("memoryPercentile", s.memory_percentile)):
        if not 0 < pct <= 100:
            raise PolicyError(f"sizing.{name}: {pct} must be in (0, 100]")
    if s.half_life <= 0 or s.window <= 0:
        raise PolicyError("sizing: window and halfLife must be positive")
    if s.half_life * 300 < s.window:
        # readings an eighth of the window old would weigh under 2^-100: nothing can
        # tell them apart from no reading at all
        raise PolicyError("sizing.halfLife: must be at least 1/300 of sizing.window")
    if s.limit_factor < 1:
        raise PolicyError(f"sizing.limitFactor: {s.limit_factor} must be at least 1")
    if s.oom_factor < 1:
        raise PolicyError(f"sizing.oomFactor: {s.oom_factor} must be at least 1")
    if s.min_samples < 1:
        raise PolicyError("sizing.minSamples: must be at least 1 (sizing from no samples is no sizing)")
    if policy.proxy.connection_pool_size < 1:
        raise PolicyError("proxy.connectionPoolSize: must be at least 1")
    for key in ("cpu", "memory"):
        lo, hi = getattr(s.floor, key), getattr(s.cap, key)
        if lo is None or hi is None:
            raise PolicyError(f"sizing.floor/cap: {key} is required in both")
        if lo > hi:
            raise PolicyError(f"sizing.floor.{key} is above sizing.cap.{key}")
    return policy


def _read_yaml(text: str, source: str) -> dict[str, Any]:
    try:
        data = yamltext.load(text)
    except yaml.composer.ComposerError as exc:
        if "single document" not in str(exc):
            raise PolicyError(f"{source}: not valid YAML ({exc.problem})") from None
        count = sum(1 for d in yamltext.load_all(text) if d is not None)
        raise PolicyError(
            f"{source}: a policy is one YAML document, this file has {count}; "
            "merge them into one or remove the extra '---'"
        ) from None
    except yaml.YAMLError as exc:
        refused = yamltext.refusal(exc, source)
        if refused is not None:
            raise PolicyError(refused) from None
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or "syntax error"
        raise PolicyError(f"{source}: not valid YAML{where}: {problem}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise PolicyError(f"{source}: a policy is a YAML mapping, got {type(data).__name__}")
    return _as_written(data, yaml.compose(text, Loader=yamltext.Loader))


def default_policy_text() -> str:
    return resources.files("webhook").joinpath("data/default-policy.yaml").read_text(encoding="utf-8")


def parse_policy(text: str, source: str, flavours: Flavours) -> Policy:
    """The policy in ``text`` over the defaults; ``flavours``: the data-plane flavours there
    are, by name (``webhook.loading`` gives the registered ones)."""
    base = _read_yaml(default_policy_text(), "default policy")
    given = _read_yaml(text, source)
    unknown = _unknown_fields(Policy, given, "", flavours)
    if unknown:
        raise PolicyError(f"{source}: " + f"\n{source}: ".join(unknown))
    data = overlay(base, given)  # field by field; lists are replaced whole
    try:
        return _check(_build_policy(data, flavours), flavours)
    except PolicyError as exc:
        raise PolicyError(f"{source}: {exc}") from None


def load_policy(path: str | Path | None, flavours: Flavours) -> Policy:
    """The default policy, or the file at ``path`` (``-``: standard input) layered over it."""
    if path is None:
        return parse_policy("", "default policy", flavours)
    source = "<stdin>" if str(path) == "-" else str(path)
    try:
        raw = sys.stdin.buffer.read() if source == "<stdin>" else Path(path).read_bytes()
    except OSError as exc:
        raise PolicyError(f"{source}: cannot read policy file ({exc.strerror})") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise PolicyError(
            f"{source}: not UTF-8 text (byte 0x{raw[exc.start]:02x} at offset {exc.start}); "
            "save the policy as UTF-8"
        ) from None
    return parse_policy(text, source, flavours)
