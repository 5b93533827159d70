"""The Pod Security Standards controls, for the containers and volumes we add.

Follows the published standards (kubernetes.io/docs/concepts/security/pod-security-standards,
the version of Kubernetes 1.30, which every later release keeps). Pod-level fields set by
the pod's owner count where the standard lets them (``runAsNonRoot``, ``runAsUser`` and
``seccompProfile`` are inherited by every container), since what matters is the pod the
API server will see.

baseline: no privileged containers; capabilities added only from the baseline list; no
host ports; no hostPath volumes; seccomp not ``Unconfined``; ``procMount`` Default;
SELinux type only the container types, no user or role.
restricted (on top): volumes only of the listed types; ``allowPrivilegeEscalation: false``;
``runAsNonRoot: true``; ``runAsUser`` not 0; seccomp ``RuntimeDefault`` or ``Localhost``;
capabilities drop ``ALL`` and add at most ``NET_BIND_SERVICE``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

BASELINE_CAPABILITIES = frozenset(
    {
        "AUDIT_WRITE",
        "CHOWN",
        "DAC_OVERRIDE",
        "FOWNER",
        "FSETID",
        "KILL",
        "MKNOD",
        "NET_BIND_SERVICE",
        "SETFCAP",
        "SETGID",
        "SETPCAP",
        "SETUID",
        "SYS_CHROOT",
    }
)
RESTRICTED_VOLUMES = frozenset(
    {
        "configMap",
        "csi",
        "downwardAPI",
        "emptyDir",
        "ephemeral",
        "persistentVolumeClaim",
        "projected",
        "secret",
    }
)
_SELINUX_TYPES = frozenset({"", "container_t", "container_init_t", "container_kvm_t", "container_engine_t"})
_RANK = {"privileged": 0, "baseline": 1, "restricted": 2}


@dataclass(frozen=True, slots=True)
class Violation:
    level: str  # the lowest level the control belongs to
    where: str  # "container linkerd-init", "volume istio-data"
    control: str
    detail: str

    def __str__(self) -> str:
        return f"{self.where}: {self.control} ({self.detail})"


def _map(value: object) -> Mapping[str, Any]:
    return value if isinstance(value, dict) else {}


def _container(c: Mapping[str, Any], pod_sc: Mapping[str, Any]) -> Iterable[Violation]:
    where = f"container {c.get('name')}"
    sc = _map(c.get("securityContext"))
    caps = _map(sc.get("capabilities"))
    added = [str(a) for a in caps.get("add") or []]
    if sc.get("privileged") is True:
        yield Violation("baseline", where, "privileged", "privileged: true")
    extra = sorted(set(added) - BASELINE_CAPABILITIES)
    if extra:
        yield Violation("baseline", where, "capabilities", f"adds {', '.join(extra)}")
    for p in c.get("ports") or []:
        if isinstance(p, dict) and p.get("hostPort"):
            yield Violation("baseline", where, "host ports", f"hostPort {p['hostPort']}")
    seccomp = _map(sc.get("seccompProfile")).get("type") or _map(pod_sc.get("seccompProfile")).get("type")
    if seccomp == "Unconfined":
        yield Violation("baseline", where, "seccomp", "Unconfined")
    if sc.get("procMount") not in (None, "Default"):
        yield Violation("baseline", where, "procMount", str(sc.get("procMount")))
    selinux = _map(sc.get("seLinuxOptions"))
    if selinux.get("type", "") not in _SELINUX_TYPES or selinux.get("user") or selinux.get("role"):
        yield Violation("baseline", where, "SELinux", str(dict(selinux)))
    # restricted
    if sc.get("allowPrivilegeEscalation") is not False:
        yield Violation("restricted", where, "privilege escalation", "allowPrivilegeEscalation is not false")
    non_root = sc.get("runAsNonRoot", pod_sc.get("runAsNonRoot"))
    if non_root is not True:
        yield Violation("restricted", where, "running as non-root", "runAsNonRoot is not true")
    if sc.get("runAsUser", pod_sc.get("runAsUser")) == 0:
        yield Violation("restricted", where, "running as non-root user", "runAsUser: 0")
    if seccomp not in ("RuntimeDefault", "Localhost"):
        yield Violation("restricted", where, "seccomp", f"type {seccomp or 'unset'}")
    if "ALL" not in (caps.get("drop") or []):
        yield Violation("restricted", where, "capabilities", "does not drop ALL")
    beyond = sorted(set(added) - {"NET_BIND_SERVICE"})
    if beyond:
        yield Violation("restricted", where, "capabilities", f"adds {', '.join(beyond)}")


def _volume(v: Mapping[str, Any]) -> Iterable[Violation]:
    where = f"volume {v.get('name')}"
    kinds = [k for k in v if k != "name"]
    if "hostPath" in kinds:
        yield Violation("baseline", where, "hostPath volumes", "hostPath")
    other = [k for k in kinds if k not in RESTRICTED_VOLUMES]
    if other:
        yield Violation("restricted", where, "volume types", ", ".join(other))


def check_added(
    pod: Mapping[str, Any], containers: Iterable[str], volumes: Iterable[str], level: str
) -> list[Violation]:
    """What of the named containers (and init containers) and volumes of ``pod`` violates
    ``level`` (``privileged`` allows everything)."""
    rank = _RANK.get(level, 2)
    if rank == 0:
        return []
    spec = _map(pod.get("spec"))
    pod_sc = _map(spec.get("securityContext"))
    names, vols = set(containers), set(volumes)
    out: list[Violation] = []
    for key in ("initContainers", "containers"):
        for c in spec.get(key) or []:
            if isinstance(c, dict) and c.get("name") in names:
                out += [v for v in _container(c, pod_sc) if _RANK[v.level] <= rank]
    for vol in spec.get("volumes") or []:
        if isinstance(vol, dict) and vol.get("name") in vols:
            out += [v for v in _volume(vol) if _RANK[v.level] <= rank]
    return list({str(v): v for v in out}.values())  # one line per finding, in order
