"""Manifests are checked against the Kubernetes schema as ``kubectl`` checks them, in every
verb that reads one: unknown fields are warnings, wrong types and missing required fields
are errors naming the path, and what ``serve`` refuses the offline verbs refuse too."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.support import K8S_SCHEMA_VERSION
from tests.support import run_cli as run
from webhook import kubeschema as schema
from webhook.serve.review import POD_READS, ReviewError, parse_review

REPO = Path(__file__).resolve().parent.parent
CLUSTER = str(REPO / "examples" / "cluster.yaml")

DEPLOYMENT: dict[str, Any] = {
    "apiVersion": "apps/v1",
    "kind": "Deployment",
    "metadata": {"name": "web", "namespace": "shop", "labels": {"app": "web"}},
    "spec": {
        "replicas": 2,
        "selector": {"matchLabels": {"app": "web"}},
        "template": {
            "metadata": {"labels": {"app": "web"}, "annotations": {"team": "shop"}},
            "spec": {
                "containers": [
                    {
                        "name": "app",
                        "image": "shop/web:1.4",
                        "ports": [{"containerPort": 8080, "name": "http"}],
                        "env": [{"name": "MODE", "value": "prod"}],
                        "resources": {"requests": {"cpu": "100m", "memory": 128}},
                        "readinessProbe": {"httpGet": {"port": "http", "path": "/ready"}},
                    }
                ],
                "volumes": [{"name": "data", "emptyDir": {}}],
            },
        },
    },
}


def _definitions_file() -> Path:
    root = Path(kubernetes_validate.__file__).parent / "kubernetes-json-schema"
    return root / f"v{schema.schema_release()}.0-local-strict" / "_definitions.json"


# --- the schema itself ------------------------------------------------------------------


def test_the_shipped_schema_is_built_from_the_kubernetes_definitions_of_its_release() -> None:
    definitions = json.loads(_definitions_file().read_text())
    shipped = json.loads((REPO / "webhook" / "data" / "workload-schema.json").read_text())
    assert shipped == schema.build(definitions, schema.schema_release())
    assert schema.schema_release() == K8S_SCHEMA_VERSION
    assert shipped["kinds"]["apps/v1 Deployment"] == "io.k8s.api.apps.v1.Deployment"
    assert shipped["kinds"]["batch/v1 CronJob"] == "io.k8s.api.batch.v1.CronJob"


def test_a_valid_deployment_has_no_findings() -> None:
    assert schema.check(DEPLOYMENT, "io.k8s.api.apps.v1.Deployment") == schema.Findings()


def test_findings_name_the_path_and_what_was_expected() -> None:
    doc = copy.deepcopy(DEPLOYMENT)
    pod = doc["spec"]["template"]["spec"]
    pod["containres"] = []
    pod["containers"][0]["env"][0]["value"] = 1
    pod["containers"][0]["ports"][0]["containerPort"] = "8080"
    del pod["containers"][0]["name"]
    doc["metadata"]["labels"]["tier"] = True
    found = schema.check(doc, "io.k8s.api.apps.v1.Deployment")
    assert found.warnings == ('unknown field "spec.template.spec.containres"',)
    assert set(found.errors) == {
        "metadata.labels.tier: expected a string, got a boolean (true)",
        "spec.template.spec.containers[0].env[0].value: expected a string, got an integer (1)",
        'spec.template.spec.containers[0].ports[0].containerPort: expected an integer, got a string ("8080")',
        "spec.template.spec.containers[0].name: required field is missing",
    }


def test_status_is_not_checked_because_the_api_server_drops_it() -> None:
    doc = {**copy.deepcopy(DEPLOYMENT), "status": {"replicas": "many", "conditions": [{"nonsense": 1}]}}
    assert schema.check(doc, "io.k8s.api.apps.v1.Deployment") == schema.Findings()


# Values to put where the schema wants something else, and paths to put them at: JSON
# values only (no YAML dates), and no float where an integer goes (Go refuses 2.0 for an
# int32; JSON Schema calls it an integer, so the two checkers differ there on purpose).
_VALUES = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-5, 5),
    st.sampled_from(["", "x", "80", "1Gi"]),
    st.just([]),
    st.just({}),
    st.just([{"name": "x"}]),
    st.just({"unknownField": 1}),
)


def _paths(node: Any, path: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    found = [path]
    if isinstance(node, dict):
        for key, value in node.items():
            found += _paths(value, (*path, key))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            found += _paths(value, (*path, i))
    return found


@st.composite
def _mutated(draw: st.DrawFn) -> dict[str, Any]:
    doc = copy.deepcopy(DEPLOYMENT)
    for _ in range(draw(st.integers(1, 3))):
        # apiVersion and kind choose the schema: they are not what is checked
        paths = [p for p in _paths(doc) if p and p[0] not in ("apiVersion", "kind")]
        if not paths:
            break
        path = draw(st.sampled_from(paths))
        parent: Any = doc
        for key in path[:-1]:
            parent = parent[key]
        action = draw(st.sampled_from(["set", "delete", "add"]))
        if action == "delete":
            del parent[path[-1]]
        elif action == "add" and isinstance(parent, dict):
            key = draw(st.sampled_from(["containres", "imagee", "podSpec", "x"]))
            parent[key] = copy.deepcopy(draw(_VALUES))
        else:
            parent[path[-1]] = copy.deepcopy(draw(_VALUES))
    return doc


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_mutated())
def test_findings_agree_with_the_kubernetes_json_schema(doc: dict[str, Any]) -> None:
    """Errors exactly where the schema without strictness refuses the document; errors or
    warnings exactly where the strict schema (no unknown fields) refuses it. (The JSON
    schema does not check a quantity's text; the API server does, and so do we: that is
    compared with the real API server in tests/test_quantities.py.)"""
    found = schema.check(doc, "io.k8s.api.apps.v1.Deployment")
    found = schema.Findings(tuple(e for e in found.errors if "expected a quantity" not in e), found.warnings)

    def refused(strict: bool) -> bool:
        try:
            kubernetes_validate.validate(copy.deepcopy(doc), K8S_SCHEMA_VERSION, strict=strict)
        except kubernetes_validate.ValidationError:
            return True
        return False

    assert bool(found.errors) == refused(strict=False), found
    assert bool(found.errors or found.warnings) == refused(strict=True), found


# --- the verbs --------------------------------------------------------------------------


def _manifest(doc: dict[str, Any]) -> str:
    return yaml.safe_dump(doc, sort_keys=False)


def test_inject_warns_of_an_unknown_field_and_still_injects(tmp_path: Path) -> None:
    doc = copy.deepcopy(DEPLOYMENT)
    doc["spec"]["template"]["spec"]["containres"] = []
    out = run("inject", "-f", "-", "--cluster", CLUSTER, stdin=_manifest(doc))
    assert out.returncode == 0, out.stderr
    assert 'warning: unknown field "spec.template.spec.containres"' in out.stderr
    injected = yaml.safe_load(out.stdout)
    spec = injected["spec"]["template"]["spec"]
    assert "linkerd-proxy" in [c["name"] for c in spec["containers"] + spec.get("initContainers", [])]
    assert spec["containres"] == [], "the unknown field is the user's: it is kept"


def test_inject_leaves_an_invalid_document_unchanged_and_exits_1() -> None:
    bad = copy.deepcopy(DEPLOYMENT)
    bad["spec"]["template"]["spec"]["containers"] = "nope"
    bad_text = _manifest(bad)
    good_text = _manifest({**copy.deepcopy(DEPLOYMENT), "metadata": {"name": "ok", "namespace": "shop"}})
    out = run("inject", "-f", "-", "--cluster", CLUSTER, stdin=bad_text + "---\n" + good_text)
    assert out.returncode == 1
    assert out.stdout.startswith(bad_text), "the invalid document is written back as it was"
    assert "Deployment shop/web: unchanged, not a valid Deployment: spec.template.spec.containers: " in (
        out.stderr
    )
    assert 'expected an array, got a string ("nope")' in out.stderr
    assert "1 workload(s) are not valid Kubernetes objects" in out.stderr
    assert "Deployment shop/ok: injected with mode" in out.stderr
    assert "traceback" not in out.stderr.lower()


def test_check_reports_an_invalid_workload_as_an_error_row_and_exits_1() -> None:
    bad = copy.deepcopy(DEPLOYMENT)
    bad["spec"]["template"]["spec"]["containers"][0]["ports"] = {"containerPort": 80}
    out = run("check", "-f", "-", "--cluster", CLUSTER, stdin=_manifest(bad))
    assert out.returncode == 1
    row = next(line for line in out.stdout.splitlines() if line.startswith("Deployment shop/web"))
    assert row.split()[2] == "error"
    assert "invalid: spec.template.spec.containers[0].ports: expected an array, got an object" in row
    as_json = run("check", "-f", "-", "--cluster", CLUSTER, "-o", "json", stdin=_manifest(bad))
    assert as_json.returncode == 1
    (record,) = json.loads(as_json.stdout)
    assert record["reason"] == "invalid" and record["meshed"] is None
    assert record["errors"] == ["spec.template.spec.containers[0].ports: expected an array, got an object"]


def test_an_old_api_version_has_its_pod_template_checked() -> None:
    doc = copy.deepcopy(DEPLOYMENT)
    doc["apiVersion"] = "extensions/v1beta1"
    doc["spec"]["template"]["spec"]["containers"][0]["image"] = ["shop/web"]
    out = run("check", "-f", "-", "--cluster", CLUSTER, "-o", "json", stdin=_manifest(doc))
    (record,) = json.loads(out.stdout)
    assert record["errors"] == ["spec.template.spec.containers[0].image: expected a string, got an array"]


def test_review_refuses_a_pod_of_the_wrong_shape_and_warns_of_unknown_fields(tmp_path: Path) -> None:
    review = json.loads((REPO / "examples" / "review.json").read_text())
    review["request"]["object"]["spec"]["containres"] = []
    path = tmp_path / "review.json"
    path.write_text(json.dumps(review))
    out = run("review", str(path), "--cluster", CLUSTER)
    assert out.returncode == 0, out.stderr
    assert "warning: " in out.stderr and 'unknown field "request.object.spec.containres"' in out.stderr
    review["request"]["object"]["metadata"]["annotations"] = {"sidecar": True}
    path.write_text(json.dumps(review))
    out = run("review", str(path), "--cluster", CLUSTER)
    assert out.returncode == 2
    assert out.stderr.strip().endswith(
        "not a valid Pod: request.object.metadata.annotations.sidecar: "
        "expected a string, got a boolean (true)"
    )


# every path admission reads that is reached without a list or map: one value of a wrong
# type each (tests/test_pod_shapes.py covers all of them, inside lists and maps too)
_DIRECT = sorted(
    {tuple(part.strip("[]{}") for part in r.split(".")[: n + 1]) for r in POD_READS for n in range(2)}
)


@pytest.mark.parametrize("path", _DIRECT, ids=".".join)
def test_what_serve_refuses_every_offline_verb_refuses(path: tuple[str, ...]) -> None:
    """A pod whose ``path`` has the wrong type: serve answers 400 (ReviewError), the Pod
    schema reports an error at the same path, and ``check`` of it as a manifest fails."""
    pod: dict[str, Any] = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "p", "namespace": "shop"},
        "spec": {"containers": [{"name": "app", "image": "x"}]},
    }
    node = pod
    for key in path[:-1]:
        node = node.setdefault(key, {})
    node[path[-1]] = "wrong"
    if not schema.check(pod, "io.k8s.api.core.v1.Pod").errors:
        node[path[-1]] = 7  # a string goes there
    review = {
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {"uid": "u", "object": pod},
    }
    with pytest.raises(ReviewError, match=r"\.".join(path) + ": expected"):
        parse_review(review)
    found = schema.check(pod, "io.k8s.api.core.v1.Pod")
    assert any(e.startswith(".".join(path) + ": expected") for e in found.errors), found
    out = run("check", "-f", "-", "--cluster", CLUSTER, "-o", "json", stdin=json.dumps(pod))
    assert out.returncode == 1
    assert json.loads(out.stdout)[0]["reason"] == "invalid"
