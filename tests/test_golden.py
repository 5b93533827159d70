"""Golden admission cases: every row of the decision table, one folder each.

Each folder holds the AdmissionReview, the dry-run flags and the hand-written expectations
(``case.yaml``: the decision and what the control planes read, checked by
``tests/expectations.py``), and the expected mutated pod (``expected.yaml``, refreshed with
UPDATE_GOLDEN=1, which prints the diff of every file it rewrites for review). Every case is
also re-admitted to prove idempotency.
"""

from __future__ import annotations

import copy

import jsonpatch
import pytest
import yaml

from tests import expectations
from tests.support import CASES, compare_golden, load_case, validate_k8s, with_object
from webhook.admission import admit


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

    expectations.check(case.meta, case.policy.proxy.flavour, original, patched, list(out.warnings), out)

    if patched.get("kind") == "Pod":
        validate_k8s(patched)
    compare_golden(path / "expected.yaml", {"pod": patched, "warnings": list(out.warnings)})

    # Re-admission of the result is a no-op.
    again = admit(with_object(case.review, patched)["request"], case.snapshot, case.policy)
    assert again.patch == [], again.patch


def test_there_are_enough_cases():
    assert len(CASES) >= 30


def test_a_case_file_with_a_key_nobody_reads_is_an_error():
    meta = yaml.safe_load((CASES[0] / "case.yaml").read_text())
    expectations.check_case_file(meta)
    with pytest.raises(AssertionError, match=r"unknown keys \['proxys'\]"):
        expectations.check_case_file({**meta, "expect": {**meta["expect"], "proxys": 1}})
    with pytest.raises(AssertionError, match=r"unknown keys \['expected'\]"):
        expectations.check_case_file({**meta, "expected": {}})
    injected = {k: v for k, v in meta["expect"].items() if k != "resources"}
    with pytest.raises(AssertionError, match=r"missing \['resources'\]"):
        expectations.check_case_file({**meta, "expect": injected})
