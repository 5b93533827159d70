"""Field by field against the meshes' own injectors: what both meshes' comparisons share.

``tests/upstream/facts-<mesh>.yaml`` records, for upstream golden cases of features we
support, the input workload and the fields the mesh's injector wrote (recorded by
``tests/upstream/record.py``). Each input is injected here as ``mesh-injector inject``
does (iptables mode and the upstream case's placement, so the mechanisms are the same),
and every field is compared after normalising what is configuration (images, trust
anchors, versions; resources, which we size ourselves).
"""

from __future__ import annotations

import copy
import time
from pathlib import Path
from typing import Any

import yaml

from tests.support import GOLDEN, anchored_policy
from webhook.loading import load_snapshot
from webhook.manifests.process import TEMPLATE_PATHS, process

HERE = Path(__file__).parent


def facts(mesh: str) -> dict[str, Any]:
    return yaml.safe_load((HERE / f"facts-{mesh}.yaml").read_text())


def _configuration(case: str, field: str, value: Any) -> Any:
    """What is configuration rather than rendering, normalised away."""
    if field in (
        "env LINKERD2_PROXY_IDENTITY_TRUST_ANCHORS",
        "annotation linkerd.io/created-by",
        "annotation linkerd.io/proxy-version",
        "annotation linkerd.io/trust-root-sha256",
    ):
        return "<configuration>"
    if isinstance(value, dict) and "resourceFieldRef" in value:
        # the API server defaults a resourceFieldRef's divisor to "0"
        ref = {k: v for k, v in value["resourceFieldRef"].items() if not (k == "divisor" and v == "0")}
        return {"resourceFieldRef": ref}
    return value


def _doc(f: dict[str, Any]) -> dict[str, Any]:
    meta = copy.deepcopy(f["input"]["metadata"])
    annotations = meta.setdefault("annotations", {})
    annotations["mesh-injector.io/interception"] = "iptables"
    annotations["mesh-injector.io/native-sidecar"] = "true" if f["native"] else "false"
    template = {"metadata": meta, "spec": copy.deepcopy(f["input"]["spec"])}
    head = {"metadata": {"name": f["name"], "namespace": f["namespace"]}}
    if f["kind"] == "Pod":
        return {
            "apiVersion": "v1",
            "kind": "Pod",
            **head,
            **template,
            "metadata": {**meta, **head["metadata"]},
        }
    assert TEMPLATE_PATHS[f["kind"]] == ("spec", "template")
    selector = {"matchLabels": dict(meta.get("labels") or {})}
    return {
        "apiVersion": "apps/v1",
        "kind": f["kind"],
        **head,
        "spec": {"selector": selector, "template": template},
    }


def _ours(case: str, f: dict[str, Any]) -> dict[str, Any]:
    policy = anchored_policy(f"proxy: {{flavour: {case.split('-')[0]}}}")
    snapshot = load_snapshot(policy=policy, now=time.time(), cluster=str(GOLDEN / "clusters" / "mixed.yaml"))
    doc = _doc(f)
    out, (result,) = process(doc, snapshot, policy, default_namespace="default", assume_opt_in=True)
    assert result.outcome is not None and result.outcome.injected, result.report()
    template = out if f["kind"] == "Pod" else out["spec"]["template"]
    return {"metadata": template["metadata"], "spec": template["spec"]}


def differences(case: str, f: dict[str, Any]) -> dict[str, tuple[Any, Any]]:
    pod = _ours(case, f)
    spec, meta = pod["spec"], pod["metadata"]
    containers = {c["name"]: c for c in spec.get("containers", []) + spec.get("initContainers", [])}
    proxy = containers["linkerd-proxy" if case.startswith("linkerd") else "istio-proxy"]
    found: dict[str, tuple[Any, Any]] = {}

    def compare(field: str, theirs: Any, ours: Any) -> None:
        theirs, ours = _configuration(case, field, theirs), _configuration(case, field, ours)
        if theirs != ours:
            found[field] = (theirs, ours)

    def env(c: dict[str, Any]) -> dict[str, Any]:
        return {e["name"]: e.get("value", e.get("valueFrom")) for e in c.get("env", [])}

    theirs_env, ours_env = env(f["proxy"]), env(proxy)
    for name in sorted(set(theirs_env) | set(ours_env)):
        compare(f"env {name}", theirs_env.get(name), ours_env.get(name))
    assert list(theirs_env) == [n for n in ours_env if n in theirs_env], "the environment's order"
    for field in (
        "args",
        "ports",
        "readinessProbe",
        "livenessProbe",
        "startupProbe",
        "lifecycle",
        "securityContext",
    ):
        compare(f"proxy.{field}", f["proxy"].get(field), proxy.get(field))
    compare("proxy.volumeMounts", f["proxy"].get("volumeMounts"), proxy.get("volumeMounts"))
    if f["init"] is not None:
        init = containers.get(f["init"]["name"])
        compare("init.args", f["init"]["args"], init["args"] if init else None)
    compare("placement", f["native"], "restartPolicy" in proxy)
    for name, value in f["annotations"].items():
        compare(f"annotation {name}", value, meta.get("annotations", {}).get(name))
    for name, value in f["labels"].items():
        compare(f"label {name}", value, meta.get("labels", {}).get(name))
    compare("volumes", sorted(f["volumes"]), sorted(v["name"] for v in spec.get("volumes", [])))
    for name, probes in f["app_probes"].items():
        for field in ("readinessProbe", "livenessProbe", "startupProbe"):
            compare(f"app {name}.{field}", probes.get(field), containers[name].get(field))
    return found
