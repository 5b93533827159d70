"""Fingerprints put together from kept parts are the fingerprints of the whole item.

``webhook.patch.prints.fingerprint`` builds an item's canonical text from its fields' texts,
each mapping in them found by its JSON among the parts seen before. The oracle here is the
definition, written out again: sha256 of the sorted-keys JSON of the item without the fields
the API server defaults, its resources, and the values of variables that name the workload.
"""

from __future__ import annotations

import copy
import hashlib
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from webhook.patch import prints
from webhook.patch.prints import fingerprint

DROPPED = {
    *("terminationMessagePath", "terminationMessagePolicy", "imagePullPolicy", "protocol"),
    *("timeoutSeconds", "periodSeconds", "successThreshold", "failureThreshold", "scheme"),
    *("apiVersion", "defaultMode", "divisor", "resources"),
}
NAMING = {"ISTIO_META_OWNER", "ISTIO_META_WORKLOAD_NAME"}


def by_definition(item: object) -> str:
    def strip(node: object) -> object:
        if isinstance(node, dict):
            if node.get("name") in NAMING and "value" in node:
                return {k: v for k, v in node.items() if k != "value"}
            return {k: strip(v) for k, v in node.items() if k not in DROPPED}
        if isinstance(node, list):
            return [strip(v) for v in node]
        return node

    text = json.dumps(strip(item), sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


KEYS = st.sampled_from(
    ["name", "value", "image", "env", "ports", "containerPort", "resources", "protocol", "periodSeconds",
     "apiVersion", "fieldRef", "valueFrom", "zeta", "Ärger", "émoji-😀", "a/b~c", "", "probe"]
)  # fmt: skip
SCALARS = (
    st.text(max_size=12)
    | st.integers(-(2**40), 2**40)
    | st.booleans()
    | st.none()
    | st.sampled_from(["ISTIO_META_OWNER", "ISTIO_META_WORKLOAD_NAME", "LINKERD2_PROXY_LOG"])
)
TREES = st.recursive(
    SCALARS, lambda inner: st.lists(inner, max_size=5) | st.dictionaries(KEYS, inner, max_size=6)
)


@settings(max_examples=400, deadline=None)
@given(TREES)
def test_a_fingerprint_is_the_hash_of_the_canonical_text(item: object) -> None:
    try:
        expected = by_definition(item)
    except TypeError:  # a "name" that is a list or a mapping: refused, as it always was
        with pytest.raises(TypeError):
            fingerprint(item)
        return
    assert fingerprint(item) == expected
    assert fingerprint(copy.deepcopy(item)) == expected  # found among the kept parts


def test_a_container_with_one_variable_changed_gets_its_own_fingerprint() -> None:
    proxy = {
        "name": "linkerd-proxy",
        "image": "cr.l5d.io/linkerd/proxy:edge-26.6.3",
        "imagePullPolicy": "IfNotPresent",
        "env": [{"name": f"V{i}", "value": str(i)} for i in range(40)]
        + [{"name": "_pod_ns", "valueFrom": {"fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.name"}}}]
        + [{"name": "ISTIO_META_WORKLOAD_NAME", "value": "checkout"}],
        "readinessProbe": {"httpGet": {"path": "/ready", "port": 4191}, "periodSeconds": 10},
        "resources": {"requests": {"cpu": "100m"}},
    }
    first = fingerprint(proxy)
    assert first == by_definition(proxy)
    changed = copy.deepcopy(proxy)
    changed["env"][7]["value"] = "other"
    assert fingerprint(changed) == by_definition(changed) != first
    # what the API server defaults, the resources and the workload's name do not count
    stored = copy.deepcopy(proxy)
    stored["env"][40]["valueFrom"]["fieldRef"]["apiVersion"] = "v2"
    stored["resources"] = {"requests": {"cpu": "2"}}
    stored["env"][41]["value"] = "payments"
    stored["terminationMessagePath"] = "/dev/termination-log"
    assert fingerprint(stored) == first
    prints.forget()
    assert fingerprint(changed) == by_definition(changed)


@pytest.mark.parametrize("item", [{1: "a"}, {"name": "x", "env": [{2: "b"}]}, [{"a": {3: "c"}}]])
def test_what_json_cannot_hold_is_refused_as_before(item: object) -> None:
    with pytest.raises(TypeError):
        fingerprint(item)
