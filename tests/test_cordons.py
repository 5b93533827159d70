"""A cordoned node is among a pod's eligible nodes exactly when the pod tolerates
``node.kubernetes.io/unschedulable:NoSchedule`` (the scheduler's NodeUnschedulable filter),
and a DaemonSet's pods tolerate it because the DaemonSet controller adds that toleration.

Before, cordoned nodes were always left out: a DaemonSet on a cluster whose cordoned node
runs kernel 4.19 without Merbridge got ebpf, and its pod on that node would have carried a
proxy nothing redirects. Expectations here are written from the Kubernetes rules
(``Toleration.ToleratesTaint``, ``AddOrUpdateDaemonPodTolerations``), not from the code."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.fake_apiserver import merbridge, namespace, node, trust_roots
from tests.support import TRUST_ANCHORS
from webhook.cluster.snapshot import snapshot_from_objects
from webhook.decide.scheduling import eligible_nodes

REPO = Path(__file__).resolve().parent.parent
UNSCHEDULABLE = {"key": "node.kubernetes.io/unschedulable", "effect": "NoSchedule"}


def cordoned(obj: dict, *, tainted: bool) -> dict:
    """``kubectl cordon``: spec.unschedulable; the node lifecycle controller then adds the
    taint (a snapshot taken in between has the field alone)."""
    obj["spec"]["unschedulable"] = True
    if tainted:
        obj["spec"]["taints"] = [UNSCHEDULABLE]
    return obj


@pytest.mark.parametrize("tainted", [True, False], ids=["cordoned and tainted", "cordoned only"])
@pytest.mark.parametrize(
    ("tolerations", "lands_on_cordoned"),
    [
        ([], False),
        ([{"key": "node.kubernetes.io/unschedulable", "operator": "Exists", "effect": "NoSchedule"}], True),
        ([{"key": "node.kubernetes.io/unschedulable", "operator": "Exists"}], True),  # any effect
        ([{"operator": "Exists"}], True),  # empty key and Exists: every taint
        ([{"operator": "Exists", "effect": "NoSchedule"}], True),
        ([{"key": "node.kubernetes.io/unschedulable", "operator": "Exists", "effect": "NoExecute"}], False),
        ([{"key": "node.kubernetes.io/unschedulable", "operator": "Equal", "value": ""}], True),  # no value
        ([{"key": "node.kubernetes.io/unschedulable", "value": ""}], True),  # Equal is the default
        ([{"key": "node.kubernetes.io/unschedulable", "operator": "Equal", "value": "true"}], False),
        ([{"key": "node.kubernetes.io/not-ready", "operator": "Exists"}], False),
        ([{"key": "node.kubernetes.io/unschedulable", "operator": "Matches"}], False),  # no such operator
    ],
)
def test_a_cordoned_node_is_eligible_exactly_when_the_pod_tolerates_the_unschedulable_taint(
    tolerations, lands_on_cordoned, tainted
):
    snapshot = snapshot_from_objects(
        [node("up", "6.1.0"), cordoned(node("cordoned", "4.19.112+"), tainted=tainted)]
    )
    found = eligible_nodes(snapshot, {"tolerations": tolerations, "containers": [{"name": "a"}]})
    assert set(found.sample) == ({"up", "cordoned"} if lands_on_cordoned else {"up"})
    assert found.excluded == ({} if lands_on_cordoned else {"cordoned": 1})


# --- the cluster: the cordoned node runs 4.19 and no Merbridge ------------------


def cluster_file(tmp_path: Path) -> str:
    objects = [
        node("a", "6.1.112-124.190.amzn2023.x86_64"),
        node("b", "6.1.112-124.190.amzn2023.x86_64"),
        cordoned(node("old", "4.19.112+"), tainted=True),
        merbridge("a"),
        merbridge("b"),
        namespace("shop", {"mesh-injector.io/inject": "enabled"}),
        trust_roots(TRUST_ANCHORS),
    ]
    path = tmp_path / "cluster.yaml"
    path.write_text(yaml.safe_dump({"apiVersion": "v1", "kind": "List", "items": objects}))
    return str(path)


def workload(kind: str, tolerations: list[dict] | None) -> dict:
    spec: dict = {"containers": [{"name": "agent", "image": "agent:1"}]}
    if tolerations is not None:
        spec["tolerations"] = tolerations
    return {
        "apiVersion": "apps/v1",
        "kind": kind,
        "metadata": {"name": f"{kind.lower()}-x", "namespace": "shop"},
        "spec": {
            "selector": {"matchLabels": {"app": "x"}},
            "template": {"metadata": {"labels": {"app": "x"}}, "spec": spec},
        },
    }


def check(tmp_path: Path, doc: dict) -> dict:
    manifest = tmp_path / "m.yaml"
    manifest.write_text(yaml.safe_dump(doc))
    cluster = cluster_file(tmp_path)
    out = subprocess.run(
        [sys.executable, "-m", "webhook", "check", "-f", str(manifest), "--cluster", cluster, "-o", "json"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
        env=dict(os.environ),
    )
    assert out.returncode == 0, out.stderr
    (record,) = json.loads(out.stdout)
    return record


@pytest.mark.parametrize(
    ("kind", "tolerations", "mode"),
    [
        # the DaemonSet controller adds node.kubernetes.io/unschedulable:NoSchedule to its pods
        ("DaemonSet", None, "iptables"),
        ("DaemonSet", [{"operator": "Exists"}], "iptables"),
        # a Deployment's pods tolerate it only if the template says so
        ("Deployment", None, "ebpf"),
        ("Deployment", [{"operator": "Exists"}], "iptables"),
        ("Deployment", [{"key": "node.kubernetes.io/unschedulable", "operator": "Exists"}], "iptables"),
    ],
)
def test_check_counts_the_cordoned_node_for_pods_that_tolerate_it(kind, tolerations, mode, tmp_path):
    record = check(tmp_path, workload(kind, tolerations))
    assert record["meshed"] is True and record["mode"] == mode, record["explanation"]
    eligible = next(line for line in record["explanation"] if line.startswith("eligible nodes:"))
    if mode == "iptables":
        assert eligible.startswith("eligible nodes: 3 of 3")
        assert "cordoned nodes too: the pod tolerates node.kubernetes.io/unschedulable" in eligible
        assert any("kernel-too-old" in line and "4.19.112+" in line for line in record["explanation"])
    else:
        assert eligible.startswith("eligible nodes: 2 of 3") and "1 cordoned" in eligible


def test_inject_leaves_the_daemonset_s_tolerations_as_written(tmp_path):
    """The controller's tolerations decide where its pods land; they are not the user's to
    find in their manifest."""
    doc = workload("DaemonSet", [{"key": "dedicated", "operator": "Equal", "value": "agents"}])
    manifest = tmp_path / "ds.yaml"
    manifest.write_text(yaml.safe_dump(doc))
    out = subprocess.run(
        [sys.executable, "-m", "webhook", "inject", "-f", str(manifest), "--cluster", cluster_file(tmp_path)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
    )
    assert out.returncode == 0, out.stderr
    injected = yaml.safe_load(out.stdout)
    spec = injected["spec"]["template"]["spec"]
    assert spec["tolerations"] == [{"key": "dedicated", "operator": "Equal", "value": "agents"}]
    assert "linkerd-init" in [c["name"] for c in spec["initContainers"]], "iptables: the cordoned 4.19 node"
