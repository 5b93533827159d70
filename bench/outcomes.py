"""Every outcome, hashed: proof that a change to the admission path changed no answer.

    python bench/outcomes.py [--against DIR] [--show N]

For every golden case (its review, cluster, policy and clock), and for generated pods
(tests/corpus.py's realistic and adversarial ones, and bench/core.py's novel templates)
under each flavour, ``admit()`` is run the ways the server and the CLI run it: first on a
fresh snapshot, again on the same snapshot twice (a template is kept from its second pod
on, and the third is served from it), for a sibling of the pod (another workload of the
same template), for pods of other templates of its shape (images, variables' values,
annotations and ports changed, as a changed Deployment's), and on its own result
(re-admission). Each
answer (patch, warnings, decision fields, explanation, mutated pod) is serialised by
``orjson`` with sorted keys and hashed with sha256. ``--against DIR`` runs the same in the
checkout at DIR and lists every answer that differs (a performance change must list none).
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson

HERE = Path(__file__).resolve()
REPO = HERE.parent.parent
GOLDEN = REPO / "tests" / "golden"


def _encode(value: object) -> object:
    if isinstance(value, frozenset | set):
        return sorted(value, key=repr)
    return repr(value)


def answer(out: Any) -> bytes:
    """One outcome as canonical JSON: everything a front end reads of it."""
    fields = {
        "patch": out.patch,
        "injected": out.injected,
        "mode": out.mode,
        "mode_reason": out.mode_reason,
        "firewall": out.firewall,
        "skip": out.skip,
        "resources": out.resources,
        "workload": out.workload,
        "namespace": out.namespace,
        "warnings": out.warnings,
        "explanation": out.explanation,
        "pod": out.pod,
    }
    return orjson.dumps(fields, option=orjson.OPT_SORT_KEYS | orjson.OPT_NON_STR_KEYS, default=_encode)


def renamed(request: dict[str, Any], suffix: str) -> dict[str, Any]:
    """The same template, another workload: its names, owner and ``app`` label changed."""
    out = copy.deepcopy(request)
    obj = out.get("object")
    meta = obj.get("metadata") if isinstance(obj, dict) else None
    if not isinstance(meta, dict):
        return out
    for key in ("name", "generateName"):
        if isinstance(meta.get(key), str):
            meta[key] = meta[key].rstrip("-") + suffix + ("-" if key == "generateName" else "")
    for owner in meta.get("ownerReferences") or ():
        if isinstance(owner, dict) and isinstance(owner.get("name"), str):
            owner["name"] += suffix
    labels = meta.get("labels")
    if isinstance(labels, dict) and isinstance(labels.get("app"), str):
        labels["app"] += suffix
    return out


def reshaped(request: dict[str, Any], suffix: str, step: int) -> dict[str, Any]:
    """Another template of the same shape, as a changed Deployment's: every image, every
    variable's value and every annotation value of a domain outside the meshes' and
    Kubernetes' changed, and each container port moved by ``step``."""
    out = copy.deepcopy(request)
    obj = out.get("object")
    if not isinstance(obj, dict):
        return out
    meta = obj.get("metadata")
    annotations = meta.get("annotations") if isinstance(meta, dict) else None
    if isinstance(annotations, dict):
        for k, v in annotations.items():
            domain = k.rpartition("/")[0] if isinstance(k, str) else ""
            if isinstance(v, str) and domain and not domain.endswith(
                ("linkerd.io", "istio.io", "mesh-injector.io", "kubernetes.io", "k8s.io")
            ):
                annotations[k] = v + suffix
    spec = obj.get("spec")
    for key in ("containers", "initContainers"):
        for c in (spec.get(key) if isinstance(spec, dict) else None) or ():
            if not isinstance(c, dict):
                continue
            if isinstance(c.get("image"), str):
                c["image"] += suffix
            for e in c.get("env") if isinstance(c.get("env"), list) else ():
                if isinstance(e, dict) and isinstance(e.get("value"), str):
                    e["value"] += suffix
            for p in c.get("ports") if isinstance(c.get("ports"), list) else ():
                if isinstance(p, dict) and type(p.get("containerPort")) is int:
                    p["containerPort"] = (p["containerPort"] + step - 1) % 65535 + 1
    return out


def runs(request: dict[str, Any], snapshot: Any, policy: Any) -> Iterator[tuple[str, bytes]]:
    """(how, the answer) for the ways one request is admitted."""
    import jsonpatch

    from webhook.admission import admit

    fresh = snapshot.derive()
    first = admit(request, fresh, policy)
    yield "first", answer(first)
    yield "memoised", answer(admit(copy.deepcopy(request), fresh, policy))
    yield "memoised, served", answer(admit(copy.deepcopy(request), fresh, policy))
    yield "sibling", answer(admit(renamed(request, "-x7"), fresh, policy))
    yield "sibling, again", answer(admit(renamed(request, "-y9"), fresh, policy))
    yield "another template", answer(admit(reshaped(request, "-r1", 1), fresh, policy))
    yield "another template, again", answer(admit(reshaped(request, "-r2", 7), fresh, policy))
    other = renamed(reshaped(request, "-r3", 1), "-z3")
    yield "another template, renamed", answer(admit(other, fresh, policy))
    obj = request.get("object")
    if first.patch and isinstance(obj, dict):
        again = dict(request, object=jsonpatch.apply_patch(obj, first.patch))
        yield "re-admitted", answer(admit(again, snapshot.derive(), policy))
        yield "re-admitted, memoised", answer(admit(again, fresh, policy))
        yield "re-admitted, served", answer(admit(again, fresh, policy))


def _tests_of_this_checkout() -> None:
    """The golden cases and generators of this checkout, whichever package is measured (it
    was imported first, from ``PYTHONPATH``)."""
    import webhook  # noqa: F401

    if sys.path[0] != str(REPO):
        sys.path.insert(0, str(REPO))


def golden() -> Iterator[tuple[str, dict[str, Any], Any, Any]]:
    _tests_of_this_checkout()
    from tests.support import CASES, load_case

    for path in CASES:
        case = load_case(path)
        yield f"golden {path.name}", case.review["request"], case.snapshot, case.policy


def generated(count: int) -> Iterator[tuple[str, dict[str, Any], Any, Any]]:
    _tests_of_this_checkout()
    from core import distinct_workload, fill, template_port, typical_review

    from tests.corpus import corpus
    from tests.support import anchored_policy, load_snapshot, owned_pod_review

    setups = [
        ("linkerd", "", "linkerd-2.20"),
        ("linkerd 2.16", "", "linkerd-2.16"),
        ("istio", "proxy: {flavour: istio}", "istio-1.28"),
        ("istio 1.23", "proxy: {flavour: istio}", "istio-1.23"),
        ("generic", "proxy: {flavour: generic, image: 'reg/proxy:1', initImage: 'reg/init:1'}", "mixed"),
    ]
    now = time.mktime((2025, 6, 1, 0, 0, 0, 0, 0, -1))
    raw = orjson.dumps(distinct_workload(typical_review()))
    for name, text, cluster in setups:
        policy = anchored_policy(text)
        snapshot = load_snapshot(policy=policy, now=now, cluster=str(GOLDEN / "clusters" / f"{cluster}.yaml"))
        example = load_snapshot(policy=policy, now=now, cluster=str(REPO / "examples" / "cluster.yaml"))
        for i, pod in enumerate(corpus(25 + len(name), count, "shop")):
            review = owned_pod_review("shop", "ReplicaSet", "corpus", {})
            review["request"]["object"] = pod
            for where, snap in (("golden cluster", snapshot), ("example cluster", example)):
                yield f"{name} corpus {i} ({where})", review["request"], snap, policy
        for i in range(count // 4):
            request = orjson.loads(fill(raw, str(i), str(i), template_port(i)))["request"]
            yield f"{name} novel template {i}", request, example, policy


def digests(count: int) -> dict[str, str]:
    out: dict[str, str] = {}
    for label, request, snapshot, policy in (*golden(), *generated(count)):
        for how, data in runs(request, snapshot, policy):
            out[f"{label}: {how}"] = hashlib.sha256(data).hexdigest()
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--against", type=Path, help="the checkout to compare with")
    ap.add_argument("--count", type=int, default=120, help="generated pods per flavour")
    ap.add_argument("--json", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.json:
        sys.stdout.write(json.dumps(digests(args.count)))
        return
    found = {}
    for name, code in (("this checkout", REPO), ("against", args.against)):
        if code is None:
            continue
        cmd = [sys.executable, str(HERE), "--json", "--count", str(args.count)]
        env = {**os.environ, "PYTHONPATH": str(code.resolve())}
        done = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=code, check=False)
        if done.returncode != 0:
            sys.exit(f"{name} ({code}): {done.stderr.strip()[-2000:]}")
        found[name] = json.loads(done.stdout)
    mine = found["this checkout"]
    print(f"{len(mine)} answers; sha256 of all: {hashlib.sha256(json.dumps(mine).encode()).hexdigest()}")
    if args.against:
        theirs = found["against"]
        differ = sorted(k for k in mine.keys() | theirs.keys() if mine.get(k) != theirs.get(k))
        for key in differ:
            print(f"differs: {key}")
        print(f"{len(differ)} of {len(mine.keys() | theirs.keys())} answers differ from {args.against}")
        sys.exit(1 if differ else 0)


if __name__ == "__main__":
    main()
