"""Where a new pod template's time goes in ``admit()``: the cost of each step, in process.

    python bench/steps.py [--calls 2000] [--policy FILE] [--cluster FILE] [--rounds 3]

The steps are timed over pod templates of a shape the memo has not seen (bench/core.py's
review with a new image tag, variable value, annotation, container port and workload each
time, and a variable renamed), against the snapshot ``serve --cluster
examples/cluster.yaml`` builds, so each call decides and renders from scratch. Each step
that ``webhook.admission`` calls is timed where it is called (a wrapper around the name
``admission`` imported), and the fingerprints of what is added where
``webhook.patch.inject`` computes them; the step medians are of each call's total for that
step. Above the steps: the whole ``admit()`` for a new shape, for a new template of a shape
seen before (what a changed Deployment's rollout sends: the same review without the
renamed variable), a sibling template (the same template, another workload) and an
identical pod, with the bare baseline of bench/core.py (``orjson`` parsing the review and
dumping its uid).

This is a regression guard, not a test: run it before and after a change to the
admission path and compare the lines (``--against DIR`` runs the same measurement on the
checkout in DIR, alternating with this one, and prints both).
"""

from __future__ import annotations

import argparse
import functools
import os
import statistics
import subprocess
import sys
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from core import distinct_workload, fill, template_port, typical_review

HERE = Path(__file__).resolve()
REPO = HERE.parent.parent

# (row label, the name ``webhook.admission`` calls it by); in the order _decide runs them
STEPS = (
    ("memo key (template_key)", "template_key"),
    ("take off an earlier injection", "taken_off"),
    ("gates (admissible)", "admissible"),
    ("control plane (connect)", "connect"),
    ("survey (nodes, kernels, traits)", "survey"),
    ("pick (the mode)", "pick"),
    ("firewall backend", "choose_firewall"),
    ("place (native or not)", "place"),
    ("resources", "proxy_resources"),
    ("render (flavour + placing)", "render"),
    ("diff (the patch)", "diff"),
    ("alias paths (memo entry)", "alias_paths"),
)


def load(policy_file: str | None, cluster_file: str | None) -> tuple[Any, Any]:
    from webhook.cluster.snapshot import config_map_from_object
    from webhook.loading import load_policy, load_snapshot

    policy = load_policy(policy_file)
    snapshot = load_snapshot(policy=policy, now=time.time(), cluster=str(REPO / "examples" / "cluster.yaml"))
    if cluster_file:
        docs = yaml.safe_load(Path(cluster_file).read_text())
        extra = dict(snapshot.config_maps)
        for item in docs["items"] if docs.get("kind") == "List" else [docs]:
            found = config_map_from_object(item) if item.get("kind") == "ConfigMap" else None
            if found is not None:
                extra[found[0]] = found[1]
        snapshot = snapshot.derive(config_maps=extra)
    return policy, snapshot


def requests(calls: int, salt: str) -> tuple[list[dict], list[dict], list[dict], bytes]:
    """(new shapes, new templates of one shape, sibling templates, the identical review's
    body), parsed as the server parses them (one ``orjson.loads`` of the body each). A new
    template changes what a changed Deployment's does (image tag, a variable's value, an
    annotation, the port); a new shape also renames a variable, which no memo can share."""
    raw = orjson.dumps(distinct_workload(typical_review()))
    novel = [
        orjson.loads(fill(raw, f"{salt}-{i}", f"{salt}-{i}", template_port(i)))["request"]
        for i in range(calls)
    ]
    shapes = [
        orjson.loads(fill(raw, f"{salt}-n{i}", f"{salt}-n{i}", template_port(i)))["request"]
        for i in range(calls)
    ]
    for i, request in enumerate(shapes):
        env = request["object"]["spec"]["containers"][0]["env"]
        env[0]["name"] = f"{env[0]['name']}_{salt.replace('-', '_')}_{i}"
    sibling = [orjson.loads(fill(raw, f"{salt}-s{i}"))["request"] for i in range(calls)]
    return shapes, novel, sibling, fill(raw)


def timed(name: str, fn: Callable[..., Any], spent: dict[str, float]) -> Callable[..., Any]:
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        t = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            spent[name] += time.perf_counter() - t

    return wrapper


def measure(policy: Any, snapshot: Any, calls: int, salt: str) -> dict[str, float]:
    """Medians in µs: each step's per-call total for a novel template, then whole calls."""
    from webhook import admission
    from webhook.admission import admit
    from webhook.patch import inject

    shapes, novel, sibling, body = requests(calls, salt)
    same = orjson.loads(body)["request"]
    assert admit(novel[0], snapshot, policy).injected, "the benchmark's pod must be meshed"
    assert admit(shapes[0], snapshot, policy).injected, "the benchmark's pod must be meshed"
    out: dict[str, float] = {}

    def whole(reqs: list[dict]) -> float:
        times = []
        for request in reqs:
            t = time.perf_counter()
            admit(request, snapshot, policy)
            times.append(time.perf_counter() - t)
        return statistics.median(times) * 1e6

    # the whole calls first, unwrapped
    out["baseline (orjson parse + dump)"] = baseline(body, calls)
    out["admit: a new shape (decided and rendered)"] = whole(shapes[calls // 2 :])
    out["admit: a new template of a shape seen before"] = whole(novel[calls // 2 :])
    out["admit: a sibling template"] = whole(sibling)
    out["admit: an identical pod"] = whole([same] * calls)
    # then each step, wrapped where admission calls it
    spent: dict[str, float] = defaultdict(float)
    saved = {attr: getattr(admission, attr) for _, attr in STEPS if hasattr(admission, attr)}
    saved_fp = inject.fingerprint
    try:
        for attr, fn in saved.items():
            setattr(admission, attr, timed(attr, fn, spent))
        inject.fingerprint = timed("fingerprint", saved_fp, spent)
        per: dict[str, list[float]] = defaultdict(list)
        for request in shapes[1 : calls // 2]:
            spent.clear()
            t = time.perf_counter()
            admit(request, snapshot, policy)
            total = time.perf_counter() - t
            for _, attr in STEPS:
                per[attr].append(spent[attr])
            per["fingerprint"].append(spent["fingerprint"])
            per["total"].append(total)
    finally:
        for attr, fn in saved.items():
            setattr(admission, attr, fn)
        inject.fingerprint = saved_fp
    for label, attr in STEPS:
        if attr == "render":
            out["render (flavour + placing), without fingerprints"] = (
                statistics.median(r - f for r, f in zip(per["render"], per["fingerprint"], strict=True)) * 1e6
            )
            out["  fingerprints of what is added"] = statistics.median(per["fingerprint"]) * 1e6
        else:
            out[label] = statistics.median(per[attr]) * 1e6
    out["admit, steps timed (the sum above + the orchestration)"] = statistics.median(per["total"]) * 1e6
    return out


def baseline(body: bytes, calls: int) -> float:
    """The least any webhook does with the review (bench/core.py's baseline)."""
    times = []
    for _ in range(calls):
        t = time.perf_counter()
        orjson.dumps(orjson.loads(body)["request"]["uid"])
        times.append(time.perf_counter() - t)
    return statistics.median(times) * 1e6


def one_run(args: argparse.Namespace, salt: str) -> dict[str, float]:
    policy, snapshot = load(args.policy, args.cluster)
    return measure(policy, snapshot, args.calls, salt)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--calls", type=int, default=2000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--policy", help="the policy to decide with (default: the built-in one)")
    ap.add_argument("--cluster", help="a cluster file whose ConfigMaps are added to the example's")
    ap.add_argument("--against", type=Path, help="also measure the checkout in DIR, alternating")
    ap.add_argument("--json", action="store_true", help=argparse.SUPPRESS)  # one run, for --against
    args = ap.parse_args()
    if args.json:
        sys.stdout.write(orjson.dumps(one_run(args, str(os.getpid()))).decode())
        return
    codes: list[tuple[str, Path]] = [("this checkout", REPO)]
    if args.against:
        codes.append(("against", args.against.resolve()))
    results: dict[str, list[dict[str, float]]] = {name: [] for name, _ in codes}
    for rnd in range(args.rounds):
        for name, code in codes if rnd % 2 == 0 else codes[::-1]:
            # each run in its own interpreter, importing the package of ``code``
            cmd = [sys.executable, str(HERE), "--json", "--calls", str(args.calls)]
            cmd += ["--policy", args.policy] if args.policy else []
            cmd += ["--cluster", args.cluster] if args.cluster else []
            env = {**os.environ, "PYTHONPATH": str(code)}
            done = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=code, check=False)
            if done.returncode != 0:
                sys.exit(f"{name} ({code}): {done.stderr.strip()}")
            results[name].append(orjson.loads(done.stdout))
    print(
        f"admit() of a new pod template, per step: median µs of {args.calls // 2} calls, "
        f"median of {args.rounds} runs"
    )
    header = f"{'step':<58}" + "".join(f"{name:>16}" for name, _ in codes)
    if len(codes) == 2:
        header += f"{'ratio':>8}"
    print(header)
    labels = list(dict.fromkeys(label for runs in results.values() for label in runs[0]))
    for label in labels:
        row = [
            statistics.median(r[label] for r in results[name]) if label in results[name][0] else None
            for name, _ in codes
        ]
        line = f"{label:<58}" + "".join(f"{v:16.1f}" if v is not None else f"{'-':>16}" for v in row)
        if len(row) == 2 and row[0] is not None and row[1]:
            line += f"{row[0] / row[1]:8.2f}"
        print(line)


if __name__ == "__main__":
    main()
