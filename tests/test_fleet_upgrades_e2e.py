"""Upgrades followed fleet-wide, against a real API server with the real deployment and
replicaset controllers (tests/apiserver.py; a stand-in binds pods and reports them Running,
as in test_fleet_e2e.py).

Two upgrades a platform team makes under running pods, each found by `audit` and rolled out
by `rollout --yes` through the webhook that `serve --kubeconfig` runs:
- the nodes' image: Amazon Linux 2023 for Kubernetes 1.32 becomes the one for 1.33, which
  lacks legacy iptables. The node's new osImage and kubelet reach the webhook through its
  watch of the nodes; pods injected with legacy rules are `stale: firewall legacy -> nft`,
  and the pods that replace them load their rules with iptables-nft-restore.
- the mesh's version: the contract proxy's image goes from 1.4.0 to 1.5.0; pods injected
  under 1.4.0 are `stale: version 1.4.0 -> 1.5.0` and are replaced with the new version.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import httpx
import orjson
import pytest
from kubernetes import client, config

from tests import apiserver
from tests.servers import serve_process
from tests.support import eventually
from tests.test_e2e import register_webhook, sent_to
from tests.test_fleet_e2e import NS, available, deployment, kubelet_world, live_pods

SERVER: apiserver.ApiServer
AL2023_132 = ("Amazon Linux 2023.7.20250623", "v1.32.5-eks-5d632ec", "6.1.141-155.222.amzn2023.x86_64")
AL2023_133 = ("Amazon Linux 2023.8.20250808", "v1.33.3-eks-3a5e3c8", "6.12.37-61.105.amzn2023.x86_64")
POLICY = """apiVersion: mesh-injector.io/v1
kind: InjectionPolicy
proxy:
  flavour: generic
  image: registry.example.com/mesh-proxy:{tag}
  initImage: registry.example.com/mesh-init:1
  generic: {{firewall: legacy}}
"""


def node_reports(core: client.CoreV1Api, name: str, platform: tuple[str, str, str]) -> None:
    """What the node's kubelet would report after booting ``platform`` (the status subresource)."""
    image, kubelet, kernel = platform
    now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    info = {
        "kernelVersion": kernel,
        "kubeletVersion": kubelet,
        "osImage": image,
        "machineID": "m",
        "systemUUID": "s",
        "bootID": "b",
        "containerRuntimeVersion": "containerd://1.7",
        "kubeProxyVersion": kubelet,
        "operatingSystem": "linux",
        "architecture": "amd64",
    }
    ready = {
        "type": "Ready",
        "status": "True",
        "reason": "KubeletReady",
        "message": "ok",
        "lastHeartbeatTime": now,
        "lastTransitionTime": now,
    }
    body = {"status": {"nodeInfo": info, "conditions": [ready]}}
    core.patch_node_status(name, body, _preload_content=False)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    global SERVER
    SERVER = apiserver.started("mesh-injector-upgrades", "deployment,replicaset,garbagecollector")
    cfg = client.Configuration()
    config.load_kube_config(config_file=SERVER.kubeconfig, client_configuration=cfg)
    api = client.ApiClient(cfg)
    core = client.CoreV1Api(api)
    core.create_namespace({"metadata": {"name": NS, "labels": {"mesh-injector.io/inject": "enabled"}}})
    core.create_node({"metadata": {"name": "node-0", "labels": {"kubernetes.io/hostname": "node-0"}}})
    node_reports(core, "node-0", AL2023_132)
    core.patch_node("node-0", {"spec": {"taints": None}}, _preload_content=False)  # no not-ready taint
    with kubelet_world(api, core, tmp_path_factory.mktemp("upgrade-certs")) as world:
        yield world
    apiserver.finish(SERVER)


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "webhook", *args, "--kubeconfig", SERVER.kubeconfig, "-n", NS],
        capture_output=True,
        text=True,
        timeout=300,
    )


def audit(policy: Path) -> dict[str, dict]:
    done = cli("audit", "-o", "json", "--policy", str(policy))
    assert done.returncode in (0, 1), done.stderr
    return {w["name"]: w for w in orjson.loads(done.stdout)}


def injected(pod: dict) -> tuple[str | None, str | None, str]:
    """(the recorded backend, the recorded version, mesh-init's command) of a meshed pod."""
    status = json.loads(pod["metadata"]["annotations"]["mesh-injector.io/status"])
    init = next(c for c in pod["spec"]["initContainers"] if c["name"] == "mesh-init")
    return status.get("firewall"), status.get("meshVersion"), init["command"][-1]


def dry_run_backend(core: client.CoreV1Api) -> str | None:
    """The backend the webhook gives a pod now (a server-side dry run through admission)."""
    body = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "probe", "labels": {"app": "probe"}},
        "spec": {"serviceAccountName": "default", "containers": [{"name": "app", "image": "app:1"}]},
    }
    pod = orjson.loads(core.create_namespaced_pod(NS, body, dry_run="All", _preload_content=False).data)
    status = (pod["metadata"].get("annotations") or {}).get("mesh-injector.io/status")
    return json.loads(status).get("firewall") if status else None


def serving(cluster, policy: Path):
    return serve_process(
        cluster["certs"], "--kubeconfig", SERVER.kubeconfig, "--policy", str(policy), "--fleet-interval", "0"
    )


def ready(cluster, proc) -> None:
    ctx = cluster["certs"].client_context()
    eventually(lambda: httpx.get(proc.url + "/readyz", verify=ctx).status_code == 200, timeout=60)
    register_webhook({"api": cluster["api"], "certs": cluster["certs"]}, proc.url)
    sent_to(proc, cluster["core"], NS)  # the API server calls it now


def rollout(policy: Path) -> str:
    done = cli("rollout", "--policy", str(policy), "--yes", "--poll", "0.5", "--timeout", "120")
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def test_a_node_image_without_legacy_iptables_and_a_new_mesh_version_are_rolled_out(cluster, tmp_path):
    core, apps = cluster["core"], cluster["apps"]
    before, after = tmp_path / "v140.yaml", tmp_path / "v150.yaml"
    before.write_text(POLICY.format(tag="1.4.0"))
    after.write_text(POLICY.format(tag="1.5.0"))
    # pods on ``iptables`` (no Merbridge here), injected while the node ran AL2023 for 1.32
    template = deployment("web", 2)
    template["spec"]["template"]["metadata"]["annotations"] = {"mesh-injector.io/interception": "iptables"}

    with serving(cluster, before) as proc:
        ready(cluster, proc)
        apps.create_namespaced_deployment(NS, template, _preload_content=False)
        eventually(lambda: available(apps, "web", 2), timeout=60)
        pods = live_pods(core, "web")
        assert [injected(p)[:2] for p in pods] == [("legacy", "1.4.0")] * 2
        assert all("| iptables-legacy-restore --noflush" in injected(p)[2] for p in pods)
        assert audit(before)["web"]["state"] == "current"

        # the node group is upgraded to the 1.33 image: same node, new osImage and kubelet
        node_reports(core, "node-0", AL2023_133)
        found = audit(before)["web"]
        assert found["state"] == "stale" and found["fields"] == ["firewall"], found
        changes = [c for p in found["podDetails"] for c in p["changes"]]
        assert changes == [{"field": "firewall", "has": "legacy", "wants": "nft"}] * 2
        # the webhook's own watch of the nodes has seen the new image, then the restart
        eventually(lambda: dry_run_backend(core) == "nft", timeout=30)
        out = rollout(before)
        assert f"restarting  {NS}/Deployment/web: 2 stale (firewall)" in out
        pods = live_pods(core, "web")
        assert [injected(p)[:2] for p in pods] == [("nft", "1.4.0")] * 2
        assert all("| iptables-nft-restore --noflush" in injected(p)[2] for p in pods)
        assert audit(before)["web"]["state"] == "current"
        assert proc.stop() == 0

    # the mesh is upgraded: the contract proxy 1.5.0
    with serving(cluster, after) as proc:
        ready(cluster, proc)
        found = audit(after)["web"]
        assert found["state"] == "stale" and found["fields"] == ["proxy-image", "version"], found
        versions = [c for p in found["podDetails"] for c in p["changes"] if c["field"] == "version"]
        assert versions == [{"field": "version", "has": "1.4.0", "wants": "1.5.0"}] * 2
        out = rollout(after)
        assert f"restarting  {NS}/Deployment/web: 2 stale (proxy-image, version)" in out
        assert [injected(p)[:2] for p in live_pods(core, "web")] == [("nft", "1.5.0")] * 2
        assert audit(after)["web"]["state"] == "current"
        assert "nothing to restart" in rollout(after)
        assert proc.stop() == 0
