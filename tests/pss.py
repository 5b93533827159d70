"""An oracle of the Pod Security Standards, written for the tests from the published text
(https://kubernetes.io/docs/concepts/security/pod-security-standards/, as of Kubernetes
v1.30; later releases keep these controls), independent of webhook/podsecurity.

It judges a whole pod the way the API server's PodSecurity admission does at ``latest``,
and returns the set of (control, where) findings, so a test can check that meshing a pod
adds no finding the pod did not already have.
"""

from __future__ import annotations

from typing import Any

BASELINE_CAPS = {
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
RESTRICTED_VOLUME_TYPES = {
    "configMap",
    "csi",
    "downwardAPI",
    "emptyDir",
    "ephemeral",
    "persistentVolumeClaim",
    "projected",
    "secret",
}


def _containers(spec: dict[str, Any]) -> list[dict[str, Any]]:
    return [
        c
        for key in ("initContainers", "containers", "ephemeralContainers")
        for c in spec.get(key) or []
        if isinstance(c, dict)
    ]


def baseline(pod: dict[str, Any]) -> set[tuple[str, str]]:
    spec = pod.get("spec") or {}
    psc = spec.get("securityContext") or {}
    out: set[tuple[str, str]] = set()
    for field in ("hostNetwork", "hostPID", "hostIPC"):
        if spec.get(field):
            out.add(("host namespaces", field))
    for v in spec.get("volumes") or []:
        if "hostPath" in v:
            out.add(("hostPath volumes", v["name"]))
    for sysctl in psc.get("sysctls") or []:
        out.add(("sysctls", sysctl.get("name", "")))  # only the safe set is allowed; tests add none
    if (psc.get("seccompProfile") or {}).get("type") == "Unconfined":
        out.add(("seccomp", "pod"))
    for c in _containers(spec):
        sc = c.get("securityContext") or {}
        name = c.get("name", "")
        if sc.get("privileged"):
            out.add(("privileged containers", name))
        for cap in (sc.get("capabilities") or {}).get("add") or []:
            if cap not in BASELINE_CAPS:
                out.add(("capabilities", f"{name}:{cap}"))
        for p in c.get("ports") or []:
            if p.get("hostPort"):
                out.add(("host ports", f"{name}:{p['hostPort']}"))
        if (sc.get("seccompProfile") or {}).get("type") == "Unconfined":
            out.add(("seccomp", name))
        if sc.get("procMount", "Default") != "Default":
            out.add(("/proc mount type", name))
    return out


def restricted(pod: dict[str, Any]) -> set[tuple[str, str]]:
    spec = pod.get("spec") or {}
    psc = spec.get("securityContext") or {}
    out = baseline(pod)
    for v in spec.get("volumes") or []:
        kinds = set(v) - {"name"}
        if not kinds <= RESTRICTED_VOLUME_TYPES:
            out.add(("volume types", v["name"]))
    for c in _containers(spec):
        sc = c.get("securityContext") or {}
        name = c.get("name", "")
        if sc.get("allowPrivilegeEscalation") is not False:
            out.add(("privilege escalation", name))
        if sc.get("runAsNonRoot", psc.get("runAsNonRoot")) is not True:
            out.add(("running as non-root", name))
        if sc.get("runAsUser", psc.get("runAsUser")) == 0:
            out.add(("running as non-root user", name))
        seccomp = (sc.get("seccompProfile") or {}).get("type") or (psc.get("seccompProfile") or {}).get(
            "type"
        )
        if seccomp not in ("RuntimeDefault", "Localhost"):
            out.add(("seccomp", name))
        caps = sc.get("capabilities") or {}
        if "ALL" not in (caps.get("drop") or []):
            out.add(("capabilities drop ALL", name))
        for cap in caps.get("add") or []:
            if cap != "NET_BIND_SERVICE":
                out.add(("capabilities", f"{name}:{cap}"))
    return out


def findings(pod: dict[str, Any], level: str) -> set[tuple[str, str]]:
    return {"privileged": lambda p: set(), "baseline": baseline, "restricted": restricted}[level](pod)
