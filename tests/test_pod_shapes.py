"""A review whose pod has the wrong JSON type somewhere is refused with 400 naming the path
(where admission reads it) or decided as if the value were absent (where it does not),
under every flavour; it never ends in "internal error, pod admitted without a proxy".

Before, `spec.affinity.nodeAffinity` as a list, a probe as a string or a port list as a
number raised AttributeError or TypeError inside the core. The oracle for "wrong type" is
the Kubernetes Pod schema (``webhook/kubeschema.py``, itself checked against the
``kubernetes-validate`` JSON schema in tests/test_schema.py); the oracle for "read as
absent" is the decision on the same pod without that value."""

from __future__ import annotations

import copy
import json
import re
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from tests.servers import thread_server
from tests.support import CASES, JSON, anchored_policy, load_case
from webhook import kubeschema as schema
from webhook.admission import admit
from webhook.cluster.snapshot import StaticClusterView
from webhook.dataplane import FLAVOURS
from webhook.reasons import Skip
from webhook.serve.app import AppState
from webhook.serve.review import POD_READS, ReviewError, parse_review

CASE = load_case(next(p for p in CASES if p.name == "62-linkerd-ebpf-native-requested"))
POLICIES = {
    name: anchored_policy(f"proxy: {{flavour: {name}, image: reg/proxy:1, initImage: reg/init:1}}")
    for name in FLAVOURS
}
POD_SCHEMA = schema.root_for("v1", "Pod")

# the golden pod with a value at every path admission reads (and a few it does not)
RICH: dict[str, Any] = copy.deepcopy(CASE.review["request"]["object"])
RICH["metadata"]["annotations"]["mesh-injector.io/interception"] = "auto"
RICH["metadata"]["annotations"]["proxy.istio.io/config"] = "concurrency: 2\n"
_probe = {
    "httpGet": {
        "path": "/ready",
        "port": "http",
        "scheme": "HTTP",
        "httpHeaders": [{"name": "a", "value": "b"}],
    },
    "timeoutSeconds": 2,
    "periodSeconds": 5,
}
_app = RICH["spec"]["containers"][0]
_app.update(
    {
        "readinessProbe": _probe,
        "livenessProbe": {"tcpSocket": {"port": 8080}, "initialDelaySeconds": 3},
        "startupProbe": {"grpc": {"port": 8080, "service": "s"}, "failureThreshold": 30},
        "env": [{"name": "MODE", "value": "prod"}],
        "securityContext": {"runAsUser": 1000, "capabilities": {"drop": ["ALL"]}},
        "volumeMounts": [{"name": "data", "mountPath": "/data"}],
    }
)
_app["ports"][0]["protocol"] = "TCP"
_app["resources"]["limits"] = {"memory": "256Mi"}
RICH["spec"].update(
    {
        "initContainers": [{"name": "setup", "image": "busybox", "ports": [{"containerPort": 7000}]}],
        "volumes": [{"name": "data", "emptyDir": {}}],
        "nodeSelector": {"pool": "general"},
        "tolerations": [{"key": "spot", "operator": "Exists", "effect": "PreferNoSchedule"}],
        "affinity": {
            "nodeAffinity": {
                "requiredDuringSchedulingIgnoredDuringExecution": {
                    "nodeSelectorTerms": [
                        {
                            "matchExpressions": [
                                {"key": "topology.kubernetes.io/zone", "operator": "In", "values": ["a", "b"]}
                            ],
                            "matchFields": [
                                {"key": "metadata.name", "operator": "NotIn", "values": ["gen-c1"]}
                            ],
                        }
                    ]
                }
            }
        },
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": 1000,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "restartPolicy": "Always",
        "hostNetwork": False,
        "dnsConfig": {"nameservers": ["10.0.0.10"]},  # not read by admission
    }
)


def _paths(node: Any, path: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    found = [path] if path else []
    if isinstance(node, dict):
        for key, value in node.items():
            found += _paths(value, (*path, key))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            found += _paths(value, (*path, i))
    return found


# the same pod where the scheduling scalars decide: tolerating legacy-1's taint brings its
# 4.14 kernel in (iptables); a toleration, term or value read wrongly would leave it out
SCHEDULED: dict[str, Any] = copy.deepcopy(RICH)
del SCHEDULED["spec"]["nodeSelector"]
SCHEDULED["spec"]["tolerations"] = [
    {"key": "pool", "operator": "Equal", "value": "legacy", "effect": "NoSchedule"}
]
SCHEDULED["spec"]["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"][
    "nodeSelectorTerms"
][0]["matchExpressions"] = [{"key": "pool", "operator": "In", "values": ["general", "legacy"]}]
BASES = {"rich": RICH, "scheduled": SCHEDULED}
assert all(schema.check(base, POD_SCHEMA).errors == () for base in BASES.values())
PATHS = [
    (name, p) for name, base in BASES.items() for p in _paths(base) if p[0] not in ("apiVersion", "kind")
]
WRONG = [
    "x",
    "8080",
    7,
    1.5,
    True,
    [],
    ["x"],
    [7],
    [{"a": 1}],
    {},
    {"a": 1},
    {"a": []},
]


# a finding of a wrong JSON type (not of a quantity's text, which serve leaves to the API server)
TYPE_ERROR = re.compile(r": expected (?!a quantity)")


def written(path: tuple[Any, ...]) -> str:
    """A path as the Kubernetes schema and the 400 answer write it: ``spec.containers[0].ports``."""
    out = ""
    for step in path:
        out += f"[{step}]" if isinstance(step, int) else f".{step}"
    return out.lstrip(".")


def at(
    pod: dict[str, Any], path: tuple[Any, ...], value: Any = None, *, remove: bool = False
) -> dict[str, Any]:
    pod = copy.deepcopy(pod)
    parent: Any = pod
    for step in path[:-1]:
        parent = parent[step]
    if remove:
        del parent[path[-1]]
    else:
        parent[path[-1]] = copy.deepcopy(value)
    return pod


def request(pod: dict[str, Any]) -> dict[str, Any]:
    return {**CASE.review["request"], "object": pod}


def decision(outcome: Any) -> tuple[Any, ...]:
    """What was decided and everything said about it: a reader that took a wrong value for
    something (a toleration of key "7") would show in the explanation if not the mode."""
    return outcome.injected, outcome.mode, outcome.skip, outcome.warnings, outcome.explanation


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(where=st.sampled_from(PATHS), value=st.sampled_from(WRONG))
def test_a_wrong_type_is_refused_naming_its_path_or_read_as_absent(where, value):
    base_name, path = where
    base = BASES[base_name]
    pod = at(base, path, value)
    wrong_type = [
        e
        for e in schema.check(pod, POD_SCHEMA).errors
        if e.startswith(f"{written(path)}: ") and TYPE_ERROR.search(e)
    ]
    assume(wrong_type)  # a value of the right type is not what this test is about
    review = {**CASE.review, "request": request(pod)}
    try:
        parse_review(review)
    except ReviewError as refused:  # what serve answers 400, and review exits 2 with
        assert str(refused) == f"request.object.{wrong_type[0]}"
        return
    absent = request(at(base, path, remove=True))
    for name, policy in POLICIES.items():
        got = admit(request(pod), CASE.snapshot, policy)
        if got.skip is Skip.INVALID_POD:
            continue  # left for the API server to refuse, as the README says
        assert decision(got) == decision(admit(absent, CASE.snapshot, policy)), (name, path, value)


BARE: dict[str, Any] = {
    "apiVersion": "v1",
    "kind": "Pod",
    "metadata": {"name": "p"},
    "spec": {"containers": [{"name": "app", "image": "x"}]},
}


def with_leaf(read: str, leaf: Any) -> dict[str, Any]:
    """A small pod with ``leaf`` at ``read`` (``spec.containers[].ports[].containerPort``:
    the first item of each list, a key ``k`` of each map)."""
    pod = copy.deepcopy(BARE)
    steps = re.findall(r"[^.\[\]{}]+|\[\]|\{\}", read)
    node: Any = pod
    for i, step in enumerate(steps):
        following = steps[i + 1] if i + 1 < len(steps) else None
        empty: Any = [] if following == "[]" else {}
        if step == "[]":
            if not node:
                node.append(empty)
            key: Any = 0
        else:
            key = "k" if step == "{}" else step
            if following is not None and not isinstance(node.get(key), (dict, list)):
                node[key] = empty
        if following is None:
            node[key] = leaf
        node = node[key]
    return pod


@pytest.mark.parametrize("read", POD_READS)
def test_every_path_admission_reads_is_refused_with_a_wrong_type(read):
    """Each path the check covers, given a value of another type than the Kubernetes API's
    (an integer where a string goes, else a string, else a list): 400 naming it."""
    for leaf in (7, "x", ["x"]):
        pod = with_leaf(read, leaf)
        errors = [e for e in schema.check(pod, POD_SCHEMA).errors if TYPE_ERROR.search(e)]
        if errors:
            break
    else:
        raise AssertionError(f"{read}: no value tried is of a wrong type there")
    with pytest.raises(ReviewError) as refused:
        parse_review({**CASE.review, "request": request(pod)})
    assert str(refused.value) == f"request.object.{errors[0]}"


# --- the reported shapes, through the real server -------------------------------------

REPORTED = [
    (("spec", "affinity"), "x", 'request.object.spec.affinity: expected an object, got a string ("x")'),
    (
        ("spec", "affinity", "nodeAffinity"),
        [],
        "request.object.spec.affinity.nodeAffinity: expected an object, got an array",
    ),
    (("spec", "tolerations"), "x", 'request.object.spec.tolerations: expected an array, got a string ("x")'),
    (
        ("spec", "containers", 0, "readinessProbe"),
        "x",
        'request.object.spec.containers[0].readinessProbe: expected an object, got a string ("x")',
    ),
    (
        ("spec", "containers", 0, "ports"),
        7,
        "request.object.spec.containers[0].ports: expected an array, got an integer (7)",
    ),
    (
        ("spec", "tolerations", 0, "key"),
        7,
        "request.object.spec.tolerations[0].key: expected a string, got an integer (7)",
    ),
]


@pytest.mark.parametrize("flavour", list(FLAVOURS))
def test_the_reported_shapes_get_400_naming_the_path_and_the_server_keeps_serving(flavour, certs):
    state = AppState(cluster=StaticClusterView(CASE.snapshot), policy=POLICIES[flavour])
    with (
        thread_server(state, certs) as url,
        httpx.Client(base_url=url, verify=certs.client_context()) as client,
    ):
        for path, value, message in REPORTED:
            body = {**CASE.review, "request": request(at(RICH, path, value))}
            got = client.post("/mutate", content=json.dumps(body), headers=JSON)
            assert got.status_code == 400 and got.json() == {"error": message}
        good = client.post(
            "/mutate", content=json.dumps({**CASE.review, "request": request(RICH)}), headers=JSON
        )
        assert good.status_code == 200 and good.json()["response"]["patchType"] == "JSONPatch"
    assert state.metrics.admissions.labels("error", "none")._value.get() == 0
    assert state.metrics.rejected.labels("400")._value.get() == len(REPORTED)
