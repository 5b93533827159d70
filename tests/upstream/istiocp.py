"""An Istio control plane as the tests install it: the ConfigMaps istiod's chart writes for a
version (``istio-sidecar-injector`` with that version's chart values, recorded in
``tests/upstream/facts-istio-<version>.yaml``; the mesh config ``istio``), and nodes.

Only the facts are recorded (``tests/upstream/record.py``); these ConfigMaps are built here
the way the chart builds them: ``values`` as the JSON the chart's ``toPrettyJson`` writes,
``config`` with the templates the chart ships (their text is not read by mesh-injector,
only their names) and the injection policy.
"""

from __future__ import annotations

import copy
import json
from functools import cache
from pathlib import Path
from typing import Any

import yaml

HERE = Path(__file__).parent
VERSIONS = ("1.23", "1.28", "1.30")
TEMPLATES = ("sidecar", "gateway", "grpc-simple", "grpc-agent", "waypoint", "kube-gateway")


@cache
def facts(version: str) -> dict[str, Any]:
    """The facts recorded for ``version`` (read once; callers copy what they change)."""
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    return yaml.load((HERE / f"facts-istio-{version}.yaml").read_text(), Loader=loader)


def _set(values: dict[str, Any], path: str, value: Any) -> None:
    node = values
    *parents, last = path.split(".")
    for part in parents:
        node = node.setdefault(part, {})
    node[last] = value


def injector_values(
    version: str,
    tag: str | None = None,
    values: dict[str, Any] | None = None,
    env: dict[str, str] | None = None,
) -> dict[str, Any]:
    """The chart's values for ``version`` with its release tag (the chart's own is
    ``latest``, which names no version), ``values`` set by dotted path, and istiod's
    environment where the chart puts it in the ConfigMap (pilot.env, from 1.24)."""
    f = facts(version)
    out = copy.deepcopy(f["chart_values"])
    _set(out, "global.tag", tag or f["tag"])
    for path, value in (values or {}).items():
        _set(out, path, value)
    if env and "env" in out["pilot"]:
        out["pilot"]["env"] = {**out["pilot"]["env"], **env}
    return out


def injector_map(
    values: dict[str, Any] | str,
    *,
    revision: str = "default",
    namespace: str = "istio-system",
    config: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The ConfigMap ``istio-sidecar-injector[-<revision>]``."""
    name = "istio-sidecar-injector" if revision == "default" else f"istio-sidecar-injector-{revision}"
    conf = {
        "defaultTemplates": ["sidecar"],
        "policy": "enabled",
        "alwaysInjectSelector": [],
        "neverInjectSelector": [],
        "injectedAnnotations": {},
        "template": "{{ Template_Version_And_Istio_Version_Mismatched_Check_Installation }}",
        # the chart ships each template's text; its names are what is read
        "templates": {t: f"# the chart's {t} template\n" for t in TEMPLATES},
        **(config or {}),
    }
    text = values if isinstance(values, str) else json.dumps(values, indent=2)
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": name, "namespace": namespace, "labels": {"istio.io/rev": revision}},
        "data": {"values": text, "config": yaml.safe_dump(conf, sort_keys=False)},
    }


def mesh_map(
    mesh: dict[str, Any] | None = None, *, revision: str = "default", namespace: str = "istio-system"
) -> dict[str, Any]:
    """The mesh config ``istio[-<revision>]`` as the chart writes it by default."""
    istiod = "istiod" if revision == "default" else f"istiod-{revision}"
    base: dict[str, Any] = {
        "defaultConfig": {"discoveryAddress": f"{istiod}.{namespace}.svc:15012"},
        "defaultProviders": {"metrics": ["prometheus"]},
        "enablePrometheusMerge": True,
        "rootNamespace": namespace,
        "trustDomain": "cluster.local",
    }
    for key, value in (mesh or {}).items():
        base[key] = (
            {**base[key], **value} if isinstance(value, dict) and isinstance(base.get(key), dict) else value
        )
    name = "istio" if revision == "default" else f"istio-{revision}"
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": name, "namespace": namespace},
        "data": {"mesh": yaml.safe_dump(base, sort_keys=False)},
    }


def node(name: str, kubelet: str, kernel: str = "6.1.0-18-cloud-amd64") -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": name, "labels": {"kubernetes.io/hostname": name}},
        "status": {"nodeInfo": {"kernelVersion": kernel, "kubeletVersion": kubelet}},
    }
