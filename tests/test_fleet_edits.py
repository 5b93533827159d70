"""`audit` on a pod whose injection was edited after admission (its proxy's image changed by
hand, `kubectl set image` on the pod) says what changed: `stale: proxy-image`, with the
image it has and the one admission would give it. It used to say the pod "would not be
meshed now", since admission leaves a proxy it did not add as it is
(`proxy-already-present`)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import jsonpatch
import yaml

from webhook.admission import admit
from webhook.fleet.audit import State, audit
from webhook.loading import load_policy, load_snapshot

ROOT = Path(__file__).parent.parent
NOW = 1_780_000_000.0
PROXY = "linkerd-proxy"
# what examples/cluster.yaml's control plane (Linkerd 2.20, linkerd-config: proxy image
# cr.l5d.io/linkerd/proxy, version edge-26.6.3) has its pods given
INJECTED = "cr.l5d.io/linkerd/proxy:edge-26.6.3"


def injected_pod() -> tuple[dict, object, object]:
    policy = load_policy()
    snapshot = load_snapshot(policy=policy, now=NOW, cluster=str(ROOT / "examples" / "cluster.yaml"))
    request = json.loads((ROOT / "examples" / "review.json").read_text())["request"]
    request["object"]["metadata"]["namespace"] = request["namespace"]
    pod = jsonpatch.apply_patch(request["object"], admit(request, snapshot, policy).patch)
    pod["metadata"]["name"] = "checkout-7d9c8b6f5-aaaaa"
    return pod, policy, snapshot


def proxy_of(pod: dict) -> dict:
    spec = pod["spec"]
    return next(c for c in spec["containers"] + spec.get("initContainers", []) if c["name"] == PROXY)


def test_an_edited_proxy_image_is_stale_proxy_image():
    pod, policy, snapshot = injected_pod()
    assert proxy_of(pod)["image"] == INJECTED
    (current,) = audit([pod], snapshot, policy).pods()
    assert current.state is State.CURRENT
    proxy_of(pod)["image"] = "cr.l5d.io/linkerd/proxy:edge-24.1.1"
    (found,) = audit([pod], snapshot, policy).pods()
    assert (found.state, found.reason) == (State.STALE, "proxy-image")
    assert [(c.field, c.has, c.wants) for c in found.changes] == [
        ("proxy-image", "cr.l5d.io/linkerd/proxy:edge-24.1.1", INJECTED)
    ]
    assert found.detail == f"proxy-image: cr.l5d.io/linkerd/proxy:edge-24.1.1 -> {INJECTED}"


def test_another_edit_of_the_proxy_is_stale_proxy():
    pod, policy, snapshot = injected_pod()
    proxy_of(pod)["env"].append({"name": "EXTRA", "value": "1"})
    (found,) = audit([pod], snapshot, policy).pods()
    assert (found.state, found.reason) == (State.STALE, "proxy")
    assert found.detail == "proxy: changed since it was injected -> as admission adds it"


def test_audit_says_so_in_its_table(tmp_path):
    pod, *_ = injected_pod()
    proxy_of(pod)["image"] = "cr.l5d.io/linkerd/proxy:edge-24.1.1"
    docs = yaml.safe_load((ROOT / "examples" / "cluster.yaml").read_text())
    docs["items"].append(pod)
    path = tmp_path / "cluster.yaml"
    path.write_text(yaml.safe_dump(docs))
    out = subprocess.run(
        [sys.executable, "-m", "webhook", "audit", "--cluster", str(path), "--now", "2026-05-28T00:00:00Z"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    (row,) = [line for line in out.stdout.splitlines() if "checkout" in line]
    assert row.split()[3:5] == ["stale", "1"]
    assert row.endswith(f"proxy-image: cr.l5d.io/linkerd/proxy:edge-24.1.1 -> {INJECTED}")
    assert "would not be meshed now" not in out.stdout
