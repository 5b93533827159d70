"""`audit` (classification by the admission core) and the pacing of `rollout`.

The rollout engine runs here against a small in-memory fleet behind its own ``Fleet``
interface (the real API server and controllers are in test_fleet_e2e.py); these tests
drive the orders a real cluster can produce only by chance: a budget that holds, a
workload that never becomes available, a run interrupted mid-rollout.
"""

from __future__ import annotations

import copy
import dataclasses
import itertools
import json
import subprocess
import sys
from pathlib import Path

import jsonpatch
import pytest
import yaml

from webhook.admission import admit
from webhook.cluster.snapshot import Node, build_snapshot
from webhook.dataplane import FLAVOURS
from webhook.fleet.audit import State, audit
from webhook.fleet.rollout import Step, plan, rolled_out, run, unavailable_at_once
from webhook.loading import load_policy, load_snapshot
from webhook.workload import WorkloadKey

ROOT = Path(__file__).parent.parent
NOW = 1_780_000_000.0


def policy_file(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "policy.yaml"
    path.write_text("apiVersion: mesh-injector.io/v1\nkind: InjectionPolicy\n" + body)
    return path


@pytest.fixture
def fleet(tmp_path):
    """The example cluster with pods of a Deployment injected by the current policy, by an
    older one (another proxy image), by one with other profile resources, and never."""
    policy = load_policy()
    snapshot = load_snapshot(policy=policy, now=NOW, cluster=str(ROOT / "examples" / "cluster.yaml"))
    review = json.loads((ROOT / "examples" / "review.json").read_text())
    request = review["request"]
    pod = request["object"]
    pod["metadata"]["namespace"] = request["namespace"]

    def injected(by, name: str) -> dict:
        out = jsonpatch.apply_patch(pod, admit(request, snapshot, by).patch)
        out["metadata"]["name"] = name
        return out

    old = load_policy(
        policy_file(tmp_path, "proxy:\n  linkerd:\n    image: cr.l5d.io/linkerd/proxy:edge-24.5.1\n")
    )
    pods = {
        "current": injected(policy, "checkout-7d9c8b6f5-aaaaa"),
        "old-image": injected(old, "checkout-7d9c8b6f5-bbbbb"),
        "unmeshed": {
            **copy.deepcopy(pod),
            "metadata": {**pod["metadata"], "name": "checkout-7d9c8b6f5-ccccc"},
        },
    }
    return policy, snapshot, pods, pod, request


def test_audit_classifies_current_stale_and_missed_and_names_the_fields(fleet):
    policy, snapshot, pods, *_ = fleet
    report = audit(pods.values(), snapshot, policy)
    (w,) = [w for w in report.workloads if w.workload == WorkloadKey("shop", "Deployment", "checkout")]
    states = {p.name: p for p in w.pods}
    assert states["checkout-7d9c8b6f5-aaaaa"].state is State.CURRENT
    stale = states["checkout-7d9c8b6f5-bbbbb"]
    assert stale.state is State.STALE and stale.reason == "proxy-image"
    assert stale.changes[0].has == "cr.l5d.io/linkerd/proxy:edge-24.5.1"
    assert stale.changes[0].wants == "cr.l5d.io/linkerd/proxy:edge-26.6.3"
    missed = states["checkout-7d9c8b6f5-ccccc"]
    assert missed.state is State.MISSED and missed.reason == "not-injected"
    assert w.state is State.MISSED and w.count(State.STALE) == 1 and w.restartable


def test_resources_beyond_the_tolerance_are_stale_within_it_current(fleet, tmp_path):
    policy, snapshot, _, pod, request = fleet
    # the example pod gets the grpc profile: 150m / 96Mi requested
    for cpu, tolerance, state in (
        ("165m", 0.2, State.CURRENT),
        ("250m", 0.2, State.STALE),
        ("250m", 0.7, State.CURRENT),
    ):
        other = load_policy(
            policy_file(
                tmp_path,
                "profiles:\n  - name: grpc\n    match: {protocol: grpc}\n"
                f"    requests: {{cpu: {cpu}, memory: 96Mi}}\n    limits: {{memory: 384Mi}}\n"
                "  - name: default\n    match: {}\n    requests: {cpu: 50m, memory: 64Mi}\n",
            )
        )
        live = jsonpatch.apply_patch(pod, admit(request, snapshot, other).patch)
        (found,) = audit([live], snapshot, policy, tolerance=tolerance).pods()
        assert found.state is state, (cpu, tolerance, found)
        if state is State.STALE:
            assert found.changes[0].field == "resources"
            assert found.changes[0].has == f"requests.cpu {cpu}"
            assert found.changes[0].wants == "requests.cpu 150m"
            assert found.changes[0].text() == f"resources: requests.cpu {cpu} -> requests.cpu 150m"


def test_finished_and_terminating_pods_are_not_audited_and_a_skipped_pod_is_out_of_scope(fleet):
    policy, snapshot, _, pod, _ = fleet
    done = {**copy.deepcopy(pod), "status": {"phase": "Succeeded"}}
    going = copy.deepcopy(pod)
    going["metadata"]["deletionTimestamp"] = "2026-01-01T00:00:00Z"
    assert list(audit([done, going], snapshot, policy).pods()) == []
    plain = copy.deepcopy(pod)
    plain["metadata"]["namespace"] = "default"  # did not opt in
    (found,) = audit([plain], snapshot, policy).pods()
    assert found.state is State.OUT_OF_SCOPE and found.reason == "not-opted-in"


def test_a_pod_of_another_mesh_is_reported_as_such(fleet):
    policy, snapshot, _, pod, _ = fleet
    istio = copy.deepcopy(pod)
    istio["metadata"].setdefault("annotations", {})["sidecar.istio.io/status"] = (
        '{"containers":["istio-proxy"]}'
    )
    istio["spec"]["containers"].append({"name": "istio-proxy", "image": "docker.io/istio/proxyv2:1.23.2"})
    (found,) = audit([istio], snapshot, policy).pods()
    assert found.state is State.OTHER_MESH


def test_audit_cli_on_a_cluster_file(fleet, tmp_path):
    _, _, pods, *_ = fleet
    docs = yaml.safe_load((ROOT / "examples" / "cluster.yaml").read_text())
    docs["items"] += list(pods.values())
    path = tmp_path / "cluster.yaml"
    path.write_text(yaml.safe_dump(docs))
    cmd = [sys.executable, "-m", "webhook", "audit", "--cluster", str(path), "--now", "2026-05-28T00:00:00Z"]
    table = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert table.returncode == 0, table.stderr
    assert "checkout  missed" in table.stdout and "1 missed 1 stale 1 current" in table.stdout
    fail = subprocess.run([*cmd, "--fail-on", "stale"], capture_output=True, text=True, timeout=60)
    assert fail.returncode == 1
    records = json.loads(
        subprocess.run([*cmd, "-o", "json"], capture_output=True, text=True, timeout=60).stdout
    )
    (checkout,) = [r for r in records if r["name"] == "checkout"]
    assert checkout["fields"] == ["init-image", "proxy-image"] and checkout["pods"] == {
        "missed": 1,
        "stale": 1,
        "current": 1,
    }
    bad = subprocess.run([*cmd[:4], "--fail-on", "broken"], capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "choose from missed, stale" in bad.stderr
    nothing = subprocess.run([*cmd[:4]], capture_output=True, text=True, timeout=60)
    assert nothing.returncode == 2 and "--kubeconfig FILE, or --cluster FILE" in nothing.stderr
    yes = subprocess.run(
        [sys.executable, "-m", "webhook", "rollout", "--cluster", str(path), "--yes"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert yes.returncode == 2 and "restarting needs the cluster itself" in yes.stderr


# --- upgrades: the mesh's version, the nodes' firewall ---------------------------------

GENERIC = "proxy:\n  flavour: generic\n  image: registry.example.com/mesh-proxy:{tag}\n"
GENERIC += "  initImage: registry.example.com/mesh-init:1\n  generic: {{firewall: legacy}}\n"


def _pool(os_image: str, kubelet: str, kernel: str) -> list[Node]:
    return [
        Node(name=f"node-{i}", labels={"kubernetes.io/hostname": f"node-{i}"}, kernel=kernel, kubelet=kubelet,
             os_image=os_image)
        for i in range(3)
    ]  # fmt: skip


AL2023_132 = _pool("Amazon Linux 2023.7.20250623", "v1.32.5-eks-5d632ec", "6.1.141-155.222.amzn2023.x86_64")
AL2023_133 = _pool("Amazon Linux 2023.8.20250808", "v1.33.3-eks-3a5e3c8", "6.12.37-61.105.amzn2023.x86_64")


def _cluster(nodes: list[Node]):
    namespaces = {"shop": {"mesh-injector.io/inject": "enabled"}}
    return build_snapshot(nodes=nodes, namespaces=namespaces, built_at=NOW)


def _iptables_pod(fleet) -> tuple[dict, dict]:
    *_, pod, request = fleet
    pod = copy.deepcopy(pod)
    pod["metadata"].setdefault("annotations", {})["mesh-injector.io/interception"] = "iptables"
    return pod, {**request, "object": pod}


def _status(pod: dict) -> dict:
    return json.loads(pod["metadata"]["annotations"]["mesh-injector.io/status"])


def test_nodes_that_lost_legacy_iptables_make_their_pods_stale_on_the_firewall(fleet, tmp_path):
    # injected while the pool ran Amazon Linux 2023 for 1.32: the mesh's legacy backend
    policy = load_policy(policy_file(tmp_path, GENERIC.format(tag="1.4.0")))
    pod, request = _iptables_pod(fleet)
    live = jsonpatch.apply_patch(pod, admit(request, _cluster(AL2023_132), policy).patch)
    assert _status(live)["firewall"] == "legacy"
    (found,) = audit([live], _cluster(AL2023_132), policy).pods()
    assert found.state is State.CURRENT, found
    # the pool is upgraded to 1.33, whose nodes lack legacy: the pod would get nft now
    report = audit([live], _cluster(AL2023_133), policy)
    (found,) = report.pods()
    assert found.state is State.STALE and found.reason == "firewall", found
    assert [c.text() for c in found.changes] == ["firewall: legacy -> nft"]
    # rollout restarts it like any stale workload
    (step,) = plan(report.needing_restart())
    assert step.workload == WorkloadKey("shop", "Deployment", "checkout") and step.left_alone is None
    assert step.why == "1 stale (firewall)"


def test_a_new_mesh_version_makes_pods_stale_naming_both_versions(fleet, tmp_path):
    pod, request = _iptables_pod(fleet)
    snapshot = _cluster(AL2023_132)
    before = load_policy(policy_file(tmp_path, GENERIC.format(tag="1.4.0")))
    live = jsonpatch.apply_patch(pod, admit(request, snapshot, before).patch)
    assert _status(live)["meshVersion"] == "1.4.0"
    now = load_policy(policy_file(tmp_path, GENERIC.format(tag="1.5.0")))
    (found,) = audit([live], snapshot.derive(), now).pods()
    assert found.state is State.STALE and found.reason == "version", found
    assert [c.text() for c in found.changes][:2] == [
        "version: 1.4.0 -> 1.5.0",
        "proxy-image: registry.example.com/mesh-proxy:1.4.0 -> registry.example.com/mesh-proxy:1.5.0",
    ]


def test_the_version_alone_makes_a_pod_stale(fleet, monkeypatch):
    """The control plane was upgraded and admission renders the same pod but for the version
    it records (a mesh whose images a mirror pins, say): stale on the version alone."""
    policy, snapshot, _, pod, request = fleet
    plane = FLAVOURS[policy.proxy.flavour]

    def at(version: str):
        def control_plane(maps, policy):
            return dataclasses.replace(plane.control_plane(maps, policy), version=version)

        return dataclasses.replace(plane, control_plane=control_plane)

    monkeypatch.setitem(FLAVOURS, plane.name, at("2.19"))
    live = jsonpatch.apply_patch(pod, admit(request, snapshot.derive(), policy).patch)
    assert _status(live)["meshVersion"] == "2.19"
    monkeypatch.setitem(FLAVOURS, plane.name, at("2.20"))
    (found,) = audit([live], snapshot.derive(), policy).pods()
    assert found.state is State.STALE and [c.text() for c in found.changes] == ["version: 2.19 -> 2.20"]
    monkeypatch.setitem(FLAVOURS, plane.name, at("2.19"))
    (found,) = audit([live], snapshot.derive(), policy).pods()
    assert found.state is State.CURRENT, found


def test_an_injection_that_recorded_no_version_or_backend_is_judged_by_what_it_carries(fleet, tmp_path):
    policy = load_policy(policy_file(tmp_path, GENERIC.format(tag="1.4.0")))
    pod, request = _iptables_pod(fleet)
    snapshot = _cluster(AL2023_132)
    live = jsonpatch.apply_patch(pod, admit(request, snapshot, policy).patch)
    status = _status(live)
    del status["firewall"], status["meshVersion"]  # as injected before they were recorded
    live["metadata"]["annotations"]["mesh-injector.io/status"] = json.dumps(status)
    (found,) = audit([live], snapshot, policy).pods()
    assert found.state is State.CURRENT, found


# --- Merbridge restarted under ebpf pods ------------------------------------------------------

RESTARTED = "2026-05-27T10:00:00Z"  # Merbridge's container on ip-10-0-1-11 started again


def with_merbridge_starts(tmp_path: Path, starts: dict[str, str], cni: bool = True) -> Path:
    """The example cluster with Merbridge's container on each node of ``starts`` running
    since that time (as the kubelet reports it: ``state.running.startedAt``)."""
    docs = yaml.safe_load((ROOT / "examples" / "cluster.yaml").read_text())
    for obj in docs["items"]:
        node = (obj.get("spec") or {}).get("nodeName")
        if obj["kind"] == "Pod" and node in starts:
            obj["status"]["containerStatuses"] = [
                {
                    "name": "merbridge",
                    "ready": True,
                    "restartCount": 1,
                    "state": {"running": {"startedAt": starts[node]}},
                    "lastState": {"terminated": {"exitCode": 137, "reason": "OOMKilled"}},
                }
            ]
            if not cni:
                obj["spec"]["containers"][0]["args"] = ["/app/mbctl", "-m", "linkerd"]
    path = tmp_path / "cluster.yaml"
    path.write_text(yaml.safe_dump(docs))
    return path


def ebpf_pod(fleet, node: str, started: str, name: str) -> dict:
    """The example Deployment's pod, admitted on ``node`` (in ebpf mode: Merbridge is Ready
    there) and running since ``started``."""
    policy, snapshot, *_, request = fleet
    placed = copy.deepcopy(request)
    placed["object"]["spec"]["nodeName"] = node
    out = admit(placed, snapshot, policy)
    assert out.mode is not None and out.mode.value == "ebpf", out.explanation
    live = jsonpatch.apply_patch(placed["object"], out.patch)
    live["metadata"]["name"] = name
    live["status"] = {"phase": "Running", "startTime": started}
    return live


def test_an_ebpf_pod_started_before_its_nodes_merbridge_is_stale_naming_merbridge_and_the_node(
    fleet, tmp_path
):
    policy = fleet[0]
    cluster = with_merbridge_starts(
        tmp_path, {"ip-10-0-1-11": RESTARTED, "ip-10-0-2-12": "2026-05-20T08:00:00Z"}
    )
    snapshot = load_snapshot(policy=policy, now=NOW, cluster=str(cluster))
    assert {n: t.isoformat() for n, t in snapshot.redirector_starts.items()} == {
        "ip-10-0-1-11": "2026-05-27T10:00:00+00:00",
        "ip-10-0-2-12": "2026-05-20T08:00:00+00:00",
    }
    before = ebpf_pod(fleet, "ip-10-0-1-11", "2026-05-27T09:59:59Z", "checkout-7d9c8b6f5-aaaaa")
    after = ebpf_pod(fleet, "ip-10-0-1-11", "2026-05-27T10:00:01Z", "checkout-7d9c8b6f5-bbbbb")
    other = ebpf_pod(fleet, "ip-10-0-2-12", "2026-05-21T00:00:00Z", "checkout-7d9c8b6f5-ccccc")
    report = audit([before, after, other], snapshot, policy)
    states = {p.name: p for p in report.pods()}
    lost = states["checkout-7d9c8b6f5-aaaaa"]
    assert lost.state is State.STALE and lost.reason == "redirector-restarted", lost
    assert lost.changes[0].field == "redirector-restarted" and len(lost.changes) == 1
    assert lost.changes[0].has == (
        "not redirected since Merbridge on node ip-10-0-1-11 (linkerd/merbridge-11x7k) started at "
        "2026-05-27T10:00:00Z, after the pod (started 2026-05-27T09:59:59Z): it takes back only "
        "Istio's agent after a restart"
    )
    assert lost.detail.startswith("redirector-restarted: not redirected since Merbridge on node ip-10-0-1-11")
    assert states["checkout-7d9c8b6f5-bbbbb"].state is State.CURRENT
    assert states["checkout-7d9c8b6f5-ccccc"].state is State.CURRENT
    (w,) = report.workloads
    assert w.state is State.STALE and w.fields() == ["redirector-restarted"]
    # rollout restarts the workload: its new pods start after Merbridge and are redirected
    (step,) = plan(report.needing_restart())
    assert step.workload == WorkloadKey("shop", "Deployment", "checkout") and step.left_alone is None
    assert "1 stale (redirector-restarted)" in step.why


def test_a_restart_loses_only_what_merbridge_does_not_take_back(fleet, tmp_path):
    """Istio's proxy (pilot-agent on 15001) is taken back by Merbridge's repair pass; without
    CNI mode nothing was opened in the pod, so nothing is lost; a pod that has not started
    yet, or whose node's Merbridge start is not known, is not judged."""
    from webhook.dataplane import flavour
    from webhook.modes.ebpf import lost_on_restart

    policy = fleet[0]
    cluster = with_merbridge_starts(tmp_path, {"ip-10-0-1-11": RESTARTED})
    snapshot = load_snapshot(policy=policy, now=NOW, cluster=str(cluster))
    started = snapshot.redirector_starts["ip-10-0-1-11"].replace(hour=9)
    assert lost_on_restart(flavour("linkerd"), "ip-10-0-1-11", started, snapshot) is not None
    assert lost_on_restart(flavour("istio"), "ip-10-0-1-11", started, snapshot) is None
    assert lost_on_restart(flavour("linkerd"), "ip-10-0-2-12", started, snapshot) is None  # start unknown
    pending = ebpf_pod(fleet, "ip-10-0-1-11", "2026-05-27T09:00:00Z", "checkout-7d9c8b6f5-aaaaa")
    del pending["status"]["startTime"]
    (found,) = audit([pending], snapshot, policy).pods()
    assert found.state is State.CURRENT, found

    plain = load_policy(
        policy_file(tmp_path, "interception:\n  ebpf:\n    redirector:\n      requireCniMode: false\n")
    )
    no_cni = load_snapshot(
        policy=plain,
        now=NOW,
        cluster=str(with_merbridge_starts(tmp_path, {"ip-10-0-1-11": RESTARTED}, cni=False)),
    )
    assert not no_cni.redirectors["ip-10-0-1-11"][0].cni_mode
    old = ebpf_pod(
        (plain, no_cni, *fleet[2:]), "ip-10-0-1-11", "2026-05-27T09:00:00Z", "checkout-7d9c8b6f5-aaaaa"
    )
    (found,) = audit([old], no_cni, plain).pods()
    assert found.state is State.CURRENT, found


def test_the_watch_counts_pods_merbridge_lost_as_audit_does(fleet, tmp_path):
    from webhook.fleet.watch import PodStore, count_states, expand

    policy = fleet[0]
    snapshot = load_snapshot(
        policy=policy, now=NOW, cluster=str(with_merbridge_starts(tmp_path, {"ip-10-0-1-11": RESTARTED}))
    )
    pods = [
        ebpf_pod(fleet, "ip-10-0-1-11", started, f"checkout-7d9c8b6f5-{i}")
        for i, started in enumerate(["2026-05-27T08:00:00Z"] * 3 + ["2026-05-27T11:00:00Z"] * 2)
    ]
    store = PodStore()
    slim = [store.slim(p) for p in pods]
    assert len({id(s.shared) for s in slim}) == 1  # one template: the start time is each pod's own
    assert [b["status"]["startTime"] for b in expand(slim)] == [
        *["2026-05-27T08:00:00+00:00"] * 3,
        *["2026-05-27T11:00:00+00:00"] * 2,
    ]
    counts = count_states(slim, snapshot, policy, 0.2)
    assert counts == {("shop", "stale", "redirector-restarted"): 3}
    stale = [p for p in audit(pods, snapshot, policy).pods() if p.state is State.STALE]
    assert len(stale) == 3


# --- the pace -------------------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t

    def sleep(self, s: float) -> None:
        self.t += s


def deployment(name: str, replicas: int = 2, *, rolling: bool = False, labels: dict | None = None) -> dict:
    return {
        "kind": "Deployment",
        "metadata": {"name": name, "generation": 2 if rolling else 1},
        "spec": {
            "replicas": replicas,
            "strategy": {"rollingUpdate": {"maxSurge": 1, "maxUnavailable": 1}},
            "template": {"metadata": {"labels": labels or {"app": name}}},
        },
        "status": {
            "observedGeneration": 1,
            "replicas": replicas,
            "updatedReplicas": replicas,
            "availableReplicas": replicas,
        },
    }


class FakeFleet:
    """Workloads become available ``takes`` seconds after a restart; a budget's allowance
    drops while a workload it selects is rolling, as the disruption controller reports."""

    def __init__(self, clock: Clock, objs: dict[str, dict], budgets: list[dict], takes: float = 5.0) -> None:
        self.clock, self.objs, self._budgets, self.takes = clock, objs, budgets, takes
        self.restarts: list[tuple[float, str]] = []
        self.done_at: dict[str, float] = {}

    def workload(self, key: WorkloadKey) -> dict | None:
        obj = self.objs.get(key.name)
        if obj is not None and key.name in self.done_at and self.clock() >= self.done_at[key.name]:
            obj["status"]["observedGeneration"] = obj["metadata"]["generation"]
        return copy.deepcopy(obj)

    def restart(self, key: WorkloadKey, at: str) -> None:
        self.restarts.append((self.clock(), key.name))
        self.objs[key.name]["metadata"]["generation"] += 1
        self.done_at[key.name] = self.clock() + self.takes

    def rolling(self) -> list[str]:
        return [n for n, o in self.objs.items() if not rolled_out(o)[0]]

    def budgets(self, namespace: str) -> list[dict]:
        out = copy.deepcopy(self._budgets)
        for b in out:
            b["status"]["disruptionsAllowed"] -= len(self.rolling())
        return out


def steps(*names: str) -> list[Step]:
    return [Step(WorkloadKey("ns", "Deployment", n), "1 stale (proxy-image)") for n in names]


def test_at_most_n_in_flight_each_waited_on_until_available():
    clock = Clock()
    fake = FakeFleet(clock, {n: deployment(n) for n in "abc"}, [])
    lines: list[str] = []
    result = run(
        fake, steps("a", "b", "c"), max_in_flight=1, poll=1, say=lines.append, clock=clock, sleep=clock.sleep
    )
    assert result.ok and [n for _, n in fake.restarts] == ["a", "b", "c"]
    times = [t for t, _ in fake.restarts]
    assert all(later - earlier >= fake.takes for earlier, later in itertools.pairwise(times))
    assert [line.split()[0] for line in lines] == ["restarting", "[1/3]"] * 1 + [
        "restarting",
        "[2/3]",
        "restarting",
        "[3/3]",
    ]

    clock2 = Clock()
    fake2 = FakeFleet(clock2, {n: deployment(n) for n in "abcd"}, [])
    run(fake2, steps(*"abcd"), max_in_flight=2, poll=1, say=lambda _: None, clock=clock2, sleep=clock2.sleep)
    assert [t for t, _ in fake2.restarts][:2] == [0.0, 0.0] and min(
        t for t, _ in fake2.restarts[2:]
    ) >= fake2.takes


def test_a_budget_that_would_break_holds_the_next_workload():
    clock = Clock()
    budget = {
        "metadata": {"name": "shared"},
        "spec": {"selector": {"matchLabels": {"tier": "web"}}},
        "status": {"disruptionsAllowed": 1},
    }
    objs = {n: deployment(n, labels={"app": n, "tier": "web"}) for n in "ab"}
    fake = FakeFleet(clock, objs, [budget])
    lines: list[str] = []
    result = run(
        fake, steps("a", "b"), max_in_flight=2, poll=1, say=lines.append, clock=clock, sleep=clock.sleep
    )
    assert result.ok
    (ta, _), (tb, _) = fake.restarts
    assert ta == 0 and tb >= fake.takes, "b waited for a: the budget allows one disruption"
    assert any(
        line.startswith("holding     ns/Deployment/b: PodDisruptionBudget shared allows 0") for line in lines
    )
    assert "within shared" in lines[0]


def test_a_budget_that_never_allows_it_times_out_and_starts_nothing():
    clock = Clock()
    budget = {"metadata": {"name": "strict"}, "spec": {"selector": {}}, "status": {"disruptionsAllowed": 0}}
    fake = FakeFleet(clock, {"a": deployment("a")}, [budget])
    result = run(fake, steps("a"), poll=5, timeout=30, say=lambda _: None, clock=clock, sleep=clock.sleep)
    assert not result.ok and fake.restarts == []
    assert "PodDisruptionBudget strict allows 0, the update takes 1" in result.failed[0][1]


def test_a_workload_that_never_becomes_available_stops_the_run():
    clock = Clock()
    fake = FakeFleet(clock, {n: deployment(n) for n in "ab"}, [], takes=10_000)
    result = run(
        fake, steps("a", "b"), poll=5, timeout=60, say=lambda _: None, clock=clock, sleep=clock.sleep
    )
    assert [n for _, n in fake.restarts] == ["a"], "nothing more is started"
    assert result.failed[0][0].name == "a" and "not available after 60s" in result.failed[0][1]


def test_an_interrupted_rollout_is_waited_on_not_restarted_again():
    clock = Clock()
    objs = {"a": deployment("a", rolling=True), "b": deployment("b")}
    fake = FakeFleet(clock, objs, [])
    fake.done_at["a"] = 3.0  # its controller is still replacing pods from the earlier run
    result = run(fake, steps("a", "b"), poll=1, say=lambda _: None, clock=clock, sleep=clock.sleep)
    assert result.waited == [WorkloadKey("ns", "Deployment", "a")]
    assert [n for _, n in fake.restarts] == ["b"] and fake.restarts[0][0] >= 3.0


def test_what_is_left_alone_and_how_much_an_update_takes_down():
    from webhook.fleet.audit import PodAudit, WorkloadAudit

    def group(kind: str) -> WorkloadAudit:
        key = WorkloadKey("ns", kind, "x")
        return WorkloadAudit(key, [PodAudit("ns", "p", key, State.MISSED, "not-injected", "")])

    made = plan(
        [group(k) for k in ("Deployment", "StatefulSet", "DaemonSet", "Pod", "Job", "CronJob", "ReplicaSet")]
    )
    assert [s.left_alone is None for s in made] == [True, True, True, False, False, False, False]
    assert "bare pod" in (made[3].left_alone or "")
    d = deployment("a", replicas=10)
    d["spec"]["strategy"] = {"rollingUpdate": {"maxUnavailable": "25%", "maxSurge": "25%"}}
    assert unavailable_at_once(d) == 2
    d["spec"]["strategy"] = {"rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1}}
    assert unavailable_at_once(d) == 0
    d["spec"]["strategy"] = {"type": "Recreate"}
    assert unavailable_at_once(d) == 10
    assert (
        unavailable_at_once({"kind": "StatefulSet", "spec": {"updateStrategy": {"type": "OnDelete"}}}) is None
    )


# --- serve's watch ------------------------------------------------------------------------


def test_the_watch_keeps_what_admission_reads_once_per_template_and_counts_as_audit_does(fleet):
    from kubernetes.client import ApiClient

    from webhook.fleet.watch import FleetWatch, PodStore, count_states, expand

    policy, snapshot, pods, *_ = fleet
    stored = []
    for i in range(12):  # three pods per shape, on two nodes, as the API server hands them over
        pod = copy.deepcopy(list(pods.values())[i % 3])
        pod["metadata"]["name"] += f"-{i}"
        pod["metadata"]["managedFields"] = [{"manager": "kubelet", "fieldsV1": {"f:status": {}}}]
        pod["spec"]["nodeName"] = ("ip-10-0-1-11", "ip-10-0-2-12")[i % 2]
        pod["status"] = {"phase": "Running", "podIP": f"10.1.0.{i}"}
        stored.append(pod)
    finished = {**copy.deepcopy(stored[0]), "status": {"phase": "Succeeded"}}
    store = PodStore()
    assert store.slim(finished) is None
    slim = [store.slim(p) for p in stored]
    assert len({id(s.shared) for s in slim}) == 3, "one copy of what each template's pods share"
    for original, back in zip(stored, expand(slim), strict=True):
        assert "managedFields" not in back["metadata"] and back["status"] == {"phase": "Running"}
        assert back["spec"] == original["spec"] and back["metadata"]["name"] == original["metadata"]["name"]
    expected: dict[tuple[str, str, str], int] = {}
    for p in audit(stored, snapshot, policy).pods():
        if p.state in (State.MISSED, State.STALE):
            expected[(p.namespace, p.state.value, p.reason)] = (
                expected.get((p.namespace, p.state.value, p.reason), 0) + 1
            )
    counts = count_states(slim, snapshot, policy, 0.2)
    assert counts == expected == {("shop", "missed", "not-injected"): 4, ("shop", "stale", "proxy-image"): 4}
    watch = FleetWatch(ApiClient(), lambda: snapshot, policy)  # not started: no request is made
    watch.counts = counts
    text = "".join(f"{m.name}{s.labels}{s.value}" for m in watch.collect() for s in m.samples)
    assert "'state': 'missed'" in text and "'reason': 'proxy-image'" in text
