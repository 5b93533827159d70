"""Field by field against Istio's own injector, at each version rendered (1.23.2, 1.28.2,
1.30.3): the facts recorded from that version's goldens (``tests/upstream/facts-istio-*.yaml``)
compared with what we inject for the same input, with the control plane's ConfigMaps built
from that version's chart values and set up as that version's own test set it up
(``tests/upstream/istiocp.py``). Nothing in the policy but ``flavour: istio``: the version,
images and settings come from the control plane.

Every container (the app's included), volume, added label and added annotation is compared
whole. Normalised, each on purpose (README: "Compared with the meshes' own injectors"):

- ``resources`` of ``istio-proxy`` and the init container: ours, sized from observed usage;
- ``securityContext.seccompProfile``: ours adds RuntimeDefault where Istio's template has none;
- ``env PROXY_CONFIG``: compared as JSON without ``concurrency`` (ours, from the CPU we size)
  and, on legacy placement, ``holdApplicationUntilProxyStarts`` (ours holds the app);
- ``lifecycle.postStart`` ``pilot-agent wait`` on legacy placement (ours holds the app);
- the API server's defaults: a resourceFieldRef's ``divisor: "0"``, a volume without a source
  (an ``emptyDir``), an empty ``resources: {}`` (Go's writing of an empty struct);
- the image's tag: the fixture names the release (the chart's own ``latest`` names no version).

What remains must be exactly ``KNOWN`` below, each with its reason; a new difference fails,
and so does a listed one that is gone.
"""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest

from tests.support import anchored_policy
from tests.upstream.istiocp import VERSIONS, facts, injector_map, injector_values, mesh_map, node
from webhook.cluster.snapshot import snapshot_from_objects
from webhook.dataplane.istio import KNOWN as RELEASES
from webhook.dataplane.istio import control_plane
from webhook.decide.placement import mesh_native
from webhook.manifests.process import process
from webhook.versions import KubeVersion

FACTS = {v: facts(v) for v in VERSIONS}
CASES = [(v, name) for v in VERSIONS for name in FACTS[v]["cases"]]
OURS = ("istio-proxy", "istio-init", "istio-validation")

# (case, field) -> why ours differs, whatever the version
KNOWN: dict[tuple[str, str], str] = {
    ("grpc-agent", "container istio-proxy.securityContext"): (
        "Istio's grpc-agent template gives the agent no security context; ours runs it as the sidecar "
        "does (UID 1337, non-root, read-only root, no capabilities, RuntimeDefault seccomp)"
    ),
    ("grpc-agent", "annotation proxy.istio.io/overrides"): (
        "Istio's record of the app containers its template changed; ours is in mesh-injector.io/status"
    ),
}


def _kubelets(version: str) -> list[str]:
    # 1.23's test has no nodes (native sidecars only by istiod's environment); ours needs some
    return FACTS[version]["kubelets"] or ["v1.34.0", "v1.34.0"]


def _policy(case: dict[str, Any]):
    # where that version's test turned Istio's CNI mode on, ours is told a CNI plugin installs the rules
    values = case["control_plane"].get("values") or {}
    cni = "interception: {iptables: {cniInstallsRules: true}}" if values.get("pilot.cni.enabled") else ""
    return anchored_policy(f"proxy: {{flavour: istio}}\n{cni}")


def _snapshot(version: str, case: dict[str, Any]):
    setup = case["control_plane"]
    values = injector_values(version, values=setup.get("values"), env=setup.get("istiod_env"))
    docs = [
        *(node(f"node-{i}", k) for i, k in enumerate(_kubelets(version))),
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": case["namespace"]}},
        injector_map(values),
        mesh_map(setup.get("mesh")),
    ]
    return snapshot_from_objects(docs, server_version=KubeVersion(1, 34), source="upstream fixture")


def _doc(case: dict[str, Any], native: bool) -> dict[str, Any]:
    meta = copy.deepcopy(case["input"]["metadata"])
    annotations = meta.setdefault("annotations", {})
    annotations["mesh-injector.io/interception"] = "iptables"
    annotations["mesh-injector.io/native-sidecar"] = "true" if native else "false"
    template = {"metadata": meta, "spec": copy.deepcopy(case["input"]["spec"])}
    head = {"name": case["name"], "namespace": case["namespace"]}
    if case["kind"] == "Pod":
        return {"apiVersion": "v1", "kind": "Pod", "metadata": {**meta, **head}, "spec": template["spec"]}
    api = "batch/v1" if case["kind"] in ("Job", "CronJob") else "apps/v1"
    spec: dict[str, Any] = {"template": template}
    if case["kind"] != "Job":
        spec["selector"] = {"matchLabels": dict(meta.get("labels") or {})}
    return {"apiVersion": api, "kind": case["kind"], "metadata": head, "spec": spec}


def _ours(version: str, name: str) -> tuple[dict[str, Any], Any]:
    case = FACTS[version]["cases"][name]
    snapshot = _snapshot(version, case)
    out, (result,) = process(
        _doc(case, case["native"]), snapshot, _policy(case), default_namespace="default", assume_opt_in=True
    )
    assert result.outcome is not None and result.outcome.injected, result.report()
    template = out if case["kind"] == "Pod" else out["spec"]["template"]
    return template, result.outcome


def _env_value(env: list[dict[str, Any]], name: str) -> Any:
    return next((e for e in env if e["name"] == name), None)


def _normal(c: dict[str, Any], theirs: dict[str, Any] | None, native: bool) -> dict[str, Any]:
    """A container as compared: the API server's defaults dropped; for ours, the sub-keys that
    differ on purpose (see the module's docstring) where Istio's has none of them."""
    c = copy.deepcopy(c)
    if c.get("resources") == {}:  # Go writes an empty struct; the pod has none
        del c["resources"]
    for e in c.get("env", []):
        ref = (e.get("valueFrom") or {}).get("resourceFieldRef")
        if ref is not None and ref.get("divisor") == "0":
            del ref["divisor"]
    if c["name"] not in OURS:
        return c
    c.pop("resources", None)
    c.pop("image", None)
    config = _env_value(c.get("env", []), "PROXY_CONFIG")
    if config is not None:
        parsed = json.loads(config["value"])
        parsed.pop("concurrency", None)
        if not native:
            parsed.pop("holdApplicationUntilProxyStarts", None)
        config["value"] = parsed
    if theirs is None:
        return c
    sc = c.get("securityContext")
    if isinstance(sc, dict) and "seccompProfile" not in (theirs.get("securityContext") or {}):
        if sc.get("seccompProfile") == {"type": "RuntimeDefault"}:
            del sc["seccompProfile"]
    wait = {"exec": {"command": ["pilot-agent", "wait"]}}
    hooks = c.get("lifecycle")
    if not native and isinstance(hooks, dict) and hooks.get("postStart") == wait:
        if "postStart" not in (theirs.get("lifecycle") or {}):
            del hooks["postStart"]
            if not hooks:
                del c["lifecycle"]
    return c


def _theirs(c: dict[str, Any], native: bool) -> dict[str, Any]:
    c = _normal(c, None, native)
    return c


def _volume(v: dict[str, Any]) -> dict[str, Any]:
    sources = set(v) - {"name"}
    return {**v, "emptyDir": v.get("emptyDir") or {}} if not sources or sources == {"emptyDir"} else v


def _image(theirs: str, tag: str) -> str:
    repo, _, _ = theirs.rpartition(":")
    return f"{repo}:{tag}"


def differences(version: str, name: str) -> dict[str, tuple[Any, Any]]:
    f = FACTS[version]
    case = f["cases"][name]
    ours, _ = _ours(version, name)
    native = case["native"]
    found: dict[str, tuple[Any, Any]] = {}

    def compare(field: str, theirs: Any, mine: Any) -> None:
        if theirs != mine:
            found[field] = (theirs, mine)

    spec, meta = ours["spec"], ours["metadata"]
    mine = {c["name"]: c for c in [*spec.get("initContainers", []), *spec.get("containers", [])]}
    theirs = {c["name"]: c for c in [*case["initContainers"], *case["containers"]]}
    for cname in sorted(set(mine) | set(theirs)):
        t, m = theirs.get(cname), mine.get(cname)
        if t is None or m is None:
            compare(f"container {cname}", t, m)
            continue
        if cname in OURS:
            compare(f"container {cname}.image", _image(t["image"], f["tag"]), m["image"])
        tn, mn = _theirs(t, native), _normal(m, t, native)
        for key in sorted(set(tn) | set(mn)):
            compare(f"container {cname}.{key}", tn.get(key), mn.get(key))
    compare("placement", native, "istio-proxy" in [c["name"] for c in spec.get("initContainers", [])])
    theirs_volumes = {v["name"]: _volume(v) for v in case["volumes"]}
    mine_volumes = {v["name"]: _volume(v) for v in spec.get("volumes", [])}
    for vname in sorted(set(theirs_volumes) | set(mine_volumes)):
        compare(f"volume {vname}", theirs_volumes.get(vname), mine_volumes.get(vname))
    had = case["input"]["metadata"]
    for key, singular in (("labels", "label"), ("annotations", "annotation")):
        own = had.get(key) or {}
        mine_added = {
            k: v
            for k, v in (meta.get(key) or {}).items()
            if own.get(k) != v and not k.startswith("mesh-injector.io/")
        }
        for k in sorted(set(case[key]) | set(mine_added)):
            t, m = case[key].get(k), mine_added.get(k)
            if k == "sidecar.istio.io/status":
                t, m = json.loads(t) if t else t, json.loads(m) if m else m
            compare(f"{singular} {k}", t, m)
    return found


@pytest.mark.parametrize(("version", "name"), CASES, ids=[f"{v}-{n}" for v, n in CASES])
def test_every_field_is_as_that_versions_injector_writes_it(version: str, name: str) -> None:
    found = differences(version, name)
    expected = {field for (c, field) in KNOWN if c == name}
    unexplained = {k: v for k, v in found.items() if k not in expected}
    assert not unexplained, json.dumps(unexplained, indent=1, default=str)[:4000]
    gone = expected - set(found)
    assert not gone, f"listed as different but now the same (take them off KNOWN and the README): {gone}"


@pytest.mark.parametrize("version", VERSIONS)
def test_at_least_eight_inputs_per_version_each_from_that_versions_goldens(version: str) -> None:
    f = FACTS[version]
    assert f["tag"].startswith(version + ".") and len(f["cases"]) >= 8
    for name, case in f["cases"].items():
        assert case["source"].startswith(f"istio/istio {f['tag']}: pkg/kube/inject/testdata/inject/"), name
        assert any(c["name"] == "istio-proxy" for c in [*case["containers"], *case["initContainers"]]), name


@pytest.mark.parametrize(("version", "name"), CASES, ids=[f"{v}-{n}" for v, n in CASES])
def test_the_version_rendered_is_the_control_planes(version: str, name: str) -> None:
    """The control plane's image tag picks the shape: the decision says which version."""
    _, outcome = _ours(version, name)
    lines = [line for line in outcome.explanation if line.startswith("data plane: istio ")]
    assert lines and lines[0].startswith(f"data plane: istio {version} ("), lines
    assert f"version {FACTS[version]['tag']} from the control plane's image" in lines[0]


@pytest.mark.parametrize(("version", "name"), CASES, ids=[f"{v}-{n}" for v, n in CASES])
def test_the_versions_native_default_is_where_its_injector_placed_the_proxy(version: str, name: str) -> None:
    """Each version's native-sidecar default, as data (1.23: only with istiod's
    ENABLE_NATIVE_SIDECARS=true; from 1.27: where every node's kubelet is at least 1.33),
    gives the placement that version's injector chose in its own test (its nodes' kubelets,
    istiod's environment)."""
    case = FACTS[version]["cases"][name]
    snapshot = _snapshot(version, case)
    plane = control_plane(snapshot.config_maps, _policy(case))
    default = plane.native
    env = case["control_plane"].get("istiod_env") or {}
    if version == "1.23" and env:  # 1.23's ConfigMap does not show istiod's environment
        assert default is not None and default.on is False
        default = type(default)(env["ENABLE_NATIVE_SIDECARS"] == "true", why="istiod's environment")
    if not FACTS[version]["kubelets"]:  # 1.23's test has no nodes
        snapshot = snapshot.derive(nodes={}, groups=())
    assert default is not None
    annotations = case["input"]["metadata"].get("annotations") or {}
    assert mesh_native(default, annotations, None, snapshot)[0] is case["native"]


def test_every_version_rendered_is_compared() -> None:
    assert set(VERSIONS) == set(RELEASES)
