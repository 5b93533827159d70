"""The ``generic`` flavour: the ``mesh-proxy`` contract, for a proxy image of your own.

``mesh-proxy`` learns its mode, protocol hint and pool size from ``MESH_PROXY_*``
variables; in iptables mode ``mesh-init`` loads the ruleset ``webhook.dataplane.iptables`` renders
(inbound to 4143, outbound to 4140, UID 2102 exempt), so the rules are ours and tested. It
loads them with the backend the decision chose (``Build.firewall``): ``iptables-nft-restore``
or ``iptables-legacy-restore``, both in Debian's (and Alpine's) iptables package. Without a
control plane of its own, the backend it is asked for is the policy's
(``proxy.generic.firewall``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from webhook.dataplane.base import (
    Build,
    ConfigMaps,
    ControlPlane,
    DataPlane,
    Flavour,
    RedirectRules,
    field_env,
    image_tag,
)
from webhook.dataplane.iptables import (
    ADMIN_PORT,
    INBOUND_PORT,
    OUTBOUND_PORT,
    PROXY_PORTS,
    PROXY_UID,
    render_rules,
)
from webhook.policy import Firewall, FlavourPolicy, Policy
from webhook.reasons import Mode

PROXY = "mesh-proxy"
INIT = "mesh-init"
PROXY_VOLUME = "mesh-proxy-run"
# the iptables-restore of each backend: mesh-init names the one chosen, never the image's
# default ``iptables-restore`` (which is one or the other by the image's alternatives)
RESTORE: Mapping[Firewall, str] = {"legacy": "iptables-legacy-restore", "nft": "iptables-nft-restore"}


@dataclass(frozen=True, kw_only=True)
class GenericSettings:
    """The policy's ``proxy.generic``: what a control plane would say for the contract proxy."""

    # the backend mesh-init loads its rules with, where every eligible node has it
    firewall: Firewall = "nft"


def settings(policy: Policy) -> GenericSettings:
    return policy.proxy.settings("generic")  # type: ignore[no-any-return]


def _volume() -> dict[str, Any]:
    return {"name": PROXY_VOLUME, "emptyDir": {"medium": "Memory"}}


def _security() -> dict[str, Any]:
    return {
        "runAsUser": PROXY_UID,
        "runAsGroup": PROXY_UID,
        "runAsNonRoot": True,
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "privileged": False,
        "capabilities": {"drop": ["ALL"]},
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def proxy_container(build: Build, policy: Policy) -> dict[str, Any]:
    env = [
        {"name": "MESH_PROXY_INTERCEPTION_MODE", "value": build.mode.value},
        {"name": "MESH_PROXY_PROTOCOL_HINT", "value": build.protocol},
        {"name": "MESH_PROXY_CONNECTION_POOL_SIZE", "value": str(policy.proxy.connection_pool_size)},
        {"name": "MESH_PROXY_INBOUND_PORT", "value": str(INBOUND_PORT)},
        {"name": "MESH_PROXY_OUTBOUND_PORT", "value": str(OUTBOUND_PORT)},
        {"name": "MESH_PROXY_ADMIN_PORT", "value": str(ADMIN_PORT)},
        field_env("MESH_POD_NAME", "metadata.name"),
        field_env("MESH_POD_NAMESPACE", "metadata.namespace"),
    ]
    if build.mode is Mode.MICROVM and build.runtime_class:
        env.append({"name": "MESH_PROXY_SANDBOX_RUNTIME", "value": build.runtime_class})
    ready = {"httpGet": {"path": "/ready", "port": ADMIN_PORT}}
    container: dict[str, Any] = {
        "name": PROXY,
        "image": policy.proxy.image,
        "imagePullPolicy": "IfNotPresent",
        "ports": [
            {"name": "mesh-inbound", "containerPort": INBOUND_PORT, "protocol": "TCP"},
            {"name": "mesh-outbound", "containerPort": OUTBOUND_PORT, "protocol": "TCP"},
            {"name": "mesh-admin", "containerPort": ADMIN_PORT, "protocol": "TCP"},
        ],
        "env": env,
        "resources": build.resources.as_k8s(),
        "securityContext": _security(),
        "readinessProbe": {**ready, "periodSeconds": 2, "failureThreshold": 3},
        "volumeMounts": [{"name": PROXY_VOLUME, "mountPath": "/var/run/mesh-proxy"}],
        "terminationMessagePolicy": "FallbackToLogsOnError",
    }
    if build.native:
        container["restartPolicy"] = "Always"
        container["startupProbe"] = {**ready, "periodSeconds": 1, "failureThreshold": 120}
    return container


def init_container(rules: str, firewall: Firewall, policy: Policy) -> dict[str, Any]:
    load = f'printf "%s" "$MESH_IPTABLES_RULES" | {RESTORE[firewall]} --noflush'
    return {
        "name": INIT,
        "image": policy.proxy.init_image,
        "imagePullPolicy": "IfNotPresent",
        "command": ["/bin/sh", "-c", load],
        "env": [{"name": "MESH_IPTABLES_RULES", "value": rules}],
        "resources": {"requests": {"cpu": "10m", "memory": "16Mi"}, "limits": {"memory": "64Mi"}},
        "securityContext": {
            "runAsUser": 0,
            "runAsNonRoot": False,
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
            "privileged": False,
            "capabilities": {"drop": ["ALL"], "add": ["NET_ADMIN", "NET_RAW"]},
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "terminationMessagePolicy": "FallbackToLogsOnError",
    }


def rules_for(build: Build) -> str:
    return render_rules(
        skip_inbound=build.skip_inbound,
        skip_outbound=build.skip_outbound,
        skip_cidrs=build.skip_cidrs,
        skip_sources=build.skip_sources,
    )


def render(build: Build, pod: Mapping[str, Any], policy: Policy) -> DataPlane:
    inits = (init_container(rules_for(build), build.firewall, policy),) if build.init_rules else ()
    return DataPlane(
        inits=inits,
        proxy=proxy_container(build, policy),
        volumes=(_volume(),),
    )


# what our ruleset always leaves alone: the proxy's admin port
RULES = RedirectRules(proxy_inbound=((ADMIN_PORT, ADMIN_PORT),))


def control_plane(maps: ConfigMaps, policy: Policy) -> ControlPlane:
    """No control plane of its own: the policy's images and backend; the contract proxy's
    version is its image's tag (recorded on the pod, so audit sees an upgrade)."""
    return ControlPlane(
        line=f"data plane: generic ({policy.proxy.image})",
        version=image_tag(policy.proxy.image or ""),
        firewall=settings(policy).firewall,
        firewalls=("nft", "legacy"),
        rules=RULES,
    )


def describe(policy: Policy, cni: bool) -> list[str]:
    return [
        f"data plane: generic: {PROXY} {policy.proxy.image}",
        "  iptables mode: "
        + (
            "no init container (a CNI plugin installs the rules)"
            if cni
            else f"{INIT} {policy.proxy.init_image} (iptables-nft-restore or iptables-legacy-restore: "
            f"{settings(policy).firewall} unless a node lacks it)"
        ),
    ]


def _check_policy(policy: Policy) -> str | None:
    """The contract proxy has no image of its own: the policy names the one built."""
    if policy.proxy.flavour != FLAVOUR.name:
        return None
    for key, value in (("image", policy.proxy.image), ("initImage", policy.proxy.init_image)):
        if value is None:
            return (
                f"proxy.{key}: required with proxy.flavour: generic (the contract proxy has no "
                "default image; name the one you built)"
            )
    return None


FLAVOUR = Flavour(
    name="generic",
    control_plane=control_plane,
    proxy_name=PROXY,
    init_name=INIT,
    ports=PROXY_PORTS,
    admin="POST /shutdown on port 4191",
    labels_read=(),
    resource_annotations={},
    reads_workload=False,
    render=render,
    describe=describe,
    policy=FlavourPolicy(settings=GenericSettings, check=_check_policy),
    skips_sources=True,
    # our ruleset: -m owner, -o lo, -d, --dport and REDIRECT, which gVisor's netstack loads
    rules_in_gvisor=True,
    containers=(PROXY, INIT),
    volumes=(_volume(),),
    shapes=True,
)
