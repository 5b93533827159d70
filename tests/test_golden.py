"""Golden admission cases: every row of the decision table, one folder each.

Each folder holds the AdmissionReview, the dry-run flags and hand-written expectations
(``case.yaml``), and the expected mutated pod (``expected.yaml``, refreshed with
UPDATE_GOLDEN=1 and reviewed by hand). Every case is also re-admitted to prove idempotency.
"""

from __future__ import annotations

import copy
import json

import jsonpatch
import pytest

from tests.support import CASES, compare_golden, load_case, validate_k8s, with_object
from webhook.admission import admit
from webhook.core import ANN_SKIP, ANN_STATUS
from webhook.dataplane import flavour
from webhook.dataplane.generic import INIT as GENERIC_INIT

# what each flavour's proxy runs as
UID = {"generic": 2102, "linkerd": 2102, "istio": 1337}


def _names(spec, key):
    return [c["name"] for c in spec.get(key) or []]


def _rules(pod):
    for c in pod["spec"].get("initContainers") or []:
        if c["name"] == GENERIC_INIT:
            return next(e["value"] for e in c["env"] if e["name"] == "MESH_IPTABLES_RULES")
    return None


def _find(pod, name):
    for key in ("initContainers", "containers"):
        for c in pod["spec"].get(key) or []:
            if c["name"] == name:
                return c
    return None


@pytest.mark.parametrize("path", CASES, ids=lambda p: p.name)
def test_golden(path):
    case = load_case(path)
    request = case.review["request"]
    original = copy.deepcopy(request["object"])
    out = admit(request, case.snapshot, case.policy)
    assert request["object"] == original, "admit must not modify the received object"

    patched = jsonpatch.apply_patch(original, out.patch) if out.patch else original
    if out.pod is not None and request["kind"]["kind"] == "Pod":
        assert patched == out.pod, "the patch must turn the received object into the mutated pod"
    assert not any("managedFields" in op["path"] for op in out.patch)

    exp = case.expect
    assert out.injected is exp["injected"], out.explanation
    if "mode" in exp:
        assert out.mode is not None and out.mode.value == exp["mode"], out.explanation
        assert patched["metadata"]["labels"]["mesh-injector.io/interception"] == exp["mode"]
    if "reason" in exp:
        assert out.reason == exp["reason"], out.explanation
    if "skip" in exp:
        assert out.skip is not None and out.skip.value == exp["skip"], out.explanation
    if exp.get("patch_empty"):
        assert out.patch == []
    if "skip_annotated" in exp:
        annotations = patched["metadata"].get("annotations") or {}
        assert (ANN_SKIP in annotations) is exp["skip_annotated"]
        assert any("not meshed" in w for w in out.warnings)
    if "warnings" in exp:
        assert len(out.warnings) == exp["warnings"], out.warnings
    if "skip_contains" in exp:
        reason = (patched["metadata"].get("annotations") or {}).get(ANN_SKIP, "")
        for text in exp["skip_contains"]:
            assert text in reason, reason
    if out.injected:
        spec = patched["spec"]
        status = json.loads(patched["metadata"]["annotations"][ANN_STATUS])
        assert status["mode"] == out.mode.value
        assert status["flavour"] == case.policy.proxy.flavour
        plane = flavour(status["flavour"])
        proxy_name, init_name = plane.proxy_name, plane.init_name
        proxy = _find(patched, proxy_name)
        native = proxy_name in _names(spec, "initContainers")
        assert native is (proxy.get("restartPolicy") == "Always")
        if plane.name != "istio":  # Istio's proxy has a startup probe in both placements
            assert native is ("startupProbe" in proxy)
        assert status["nativeSidecar"] is native
        if "native" in exp:
            assert native is exp["native"], out.explanation
        if "init" in exp:
            assert (init_name in _names(spec, "initContainers")) is exp["init"]
        proxies = _names(spec, "containers") + _names(spec, "initContainers")
        assert proxies.count(proxy_name) == 1
        sc = proxy["securityContext"]
        assert sc["runAsUser"] == UID[plane.name] and sc["runAsNonRoot"] and sc["readOnlyRootFilesystem"]
        assert sc["capabilities"] == {"drop": ["ALL"]} and not sc["allowPrivilegeEscalation"]
        if out.mode.value == "ebpf":  # Merbridge redirects: no rules of the mesh's own, no native sidecar
            assert init_name not in _names(spec, "initContainers") and not native
        if out.mode.value == "microvm":  # the rules are installed inside the sandbox
            assert init_name in _names(spec, "initContainers") and spec.get("runtimeClassName")
        if "firewall" in exp:
            # the backend of the init container's rules: on the outcome, recorded in the status,
            # and (for our own mesh-init) the iptables-restore it runs; none where nothing of
            # ours installs rules
            assert out.firewall == exp["firewall"], out.explanation
            assert status.get("firewall") == exp["firewall"]
            init = _find(patched, GENERIC_INIT) if plane.name == "generic" else None
            if exp["firewall"] is None:
                assert init is None
            elif init is not None:
                assert f"| iptables-{exp['firewall']}-restore --noflush" in init["command"][-1]
        if "firewall_reason" in exp:
            line = f"firewall: {exp['firewall']} ({exp['firewall_reason']}):"
            assert any(e.startswith(line) for e in out.explanation), out.explanation
        if "annotations" in exp:
            # what Merbridge and the meshes read of the pod: a value, or null for absent
            annotations = patched["metadata"].get("annotations") or {}
            for key, want in exp["annotations"].items():
                assert annotations.get(key) == want, (key, annotations.get(key))
        if "decision_contains" in exp:
            for text in exp["decision_contains"]:
                assert text in patched["metadata"]["annotations"]["mesh-injector.io/decision"]
        if "source" in exp:
            assert (
                patched["metadata"]["annotations"]["mesh-injector.io/proxy-resources-source"] == exp["source"]
            )
        if "resources" in exp:
            assert proxy["resources"] == exp["resources"]
        if "protocol" in exp:
            assert any(line.startswith(f"workload: protocol {exp['protocol']} ") for line in out.explanation)
            if plane.name == "generic":
                env = {e["name"]: e.get("value") for e in proxy["env"]}
                assert env["MESH_PROXY_PROTOCOL_HINT"] == exp["protocol"]
        if "init_order" in exp:
            assert (
                _names(spec, "initContainers")[-len(exp["init_order"]) :] == exp["init_order"]
                or _names(spec, "initContainers") == exp["init_order"]
            )
            assert [n for n in _names(spec, "initContainers") if n != proxy_name] == [
                n for n in exp["init_order"] if n != proxy_name
            ]
        if "first_container" in exp:
            assert _names(spec, "containers")[0] == exp["first_container"]
        if "rules_contain" in exp:
            rules = _rules(patched)
            for line in exp["rules_contain"]:
                assert line in rules
        if "init_name" in exp:
            assert exp["init_name"] in _names(spec, "initContainers")
        if "init_args" in exp:
            assert _find(patched, exp.get("init_name", init_name))["args"] == exp["init_args"]
        if exp.get("lifecycle_warning"):
            assert any("keeps the pod running" in w for w in out.warnings)
        # the user's containers are untouched
        before = {
            c["name"]: c
            for c in original["spec"].get("containers", []) + original["spec"].get("initContainers", [])
        }
        appended = status.get("appended", {})
        for c in spec.get("containers", []) + spec.get("initContainers", []):
            if c["name"] in before and c["name"] not in status["containers"] + status["initContainers"]:
                # but for the items the status lists as added to it (Istio's proxyless gRPC)
                added = appended.get(c["name"], {})
                kept = {k: [x for x in c[k] if x["name"] not in added[k]] or None for k in added}
                assert {**c, **kept} == {**before[c["name"]], **{k: before[c["name"]].get(k) for k in added}}
    if "eligible" in exp:
        assert any(line.startswith(f"eligible nodes: {exp['eligible']} of") for line in out.explanation)
    if exp.get("managed_fields_untouched"):
        assert patched["metadata"]["managedFields"] == original["metadata"]["managedFields"]

    if patched.get("kind") == "Pod":
        validate_k8s(patched)
    compare_golden(path / "expected.yaml", {"pod": patched, "warnings": list(out.warnings)})

    # Re-admission of the result is a no-op.
    again = admit(with_object(case.review, patched)["request"], case.snapshot, case.policy)
    assert again.patch == [], again.patch


def test_there_are_enough_cases():
    assert len(CASES) >= 30
