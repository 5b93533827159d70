"""`audit` and `rollout` against a real API server with the real controllers.

kube-controller-manager (built from the same Debian source as kube-apiserver, see
tests/e2e/run-apiserver.sh) runs the deployment, replicaset and disruption controllers, so a
Deployment really makes ReplicaSets and pods (through the webhook), and a
PodDisruptionBudget's status is the disruption controller's. There is no scheduler and no
kubelet: a stand-in binds each new pod to a node (the binding subresource), reports it
Running and Ready (the status subresource) and removes pods being deleted, so rollouts
complete.
"""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from kubernetes import client, config

from tests import apiserver
from tests.servers import Certs, serve_process
from tests.support import TRUST_ANCHORS, eventually
from tests.test_e2e import certs_cli, make_merbridge, make_node, register_webhook, sent_to
from webhook.kubeapi import request

# this module's API server with the controllers (tests/apiserver.py: its own run directory
# and ports), and its kubeconfig
CONTROLLERS = "deployment,replicaset,disruption,garbagecollector"
SERVER: apiserver.ApiServer
KUBECONFIG = ""
NS = "fleet"
PROXY = "linkerd-proxy"


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


class Kubelet:
    """What a scheduler and kubelets would do for the pods of one namespace."""

    def __init__(self, core: client.CoreV1Api, node: str, namespace: str = NS) -> None:
        self.core, self.node, self.namespace = core, node, namespace
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self.stop.is_set():
            try:
                self.tick()
            except client.ApiException:
                pass  # a pod went away between the list and the write
            self.stop.wait(0.2)

    def tick(self) -> None:
        pods = orjson.loads(self.core.list_namespaced_pod(self.namespace, _preload_content=False).data)[
            "items"
        ]
        for pod in pods:
            meta, spec = pod["metadata"], pod["spec"]
            if meta.get("deletionTimestamp"):
                self.core.delete_namespaced_pod(
                    meta["name"], self.namespace, grace_period_seconds=0, _preload_content=False
                )
            elif not spec.get("nodeName"):
                binding = {
                    "apiVersion": "v1",
                    "kind": "Binding",
                    "metadata": {"name": meta["name"]},
                    "target": {"apiVersion": "v1", "kind": "Node", "name": self.node},
                }
                request(
                    self.core.api_client,
                    "POST",
                    f"/api/v1/namespaces/{self.namespace}/pods/{meta['name']}/binding",
                    body=binding,
                    content_type="application/json",
                )
            elif (pod.get("status") or {}).get("phase") != "Running":
                now = _now()
                statuses = [
                    {
                        "name": c["name"],
                        "ready": True,
                        "restartCount": 0,
                        "image": c["image"],
                        "imageID": "",
                        "state": {"running": {"startedAt": now}},
                    }
                    for c in spec["containers"]
                ]
                status = {
                    "phase": "Running",
                    "conditions": [{"type": "Ready", "status": "True", "lastTransitionTime": now}],
                    "containerStatuses": statuses,
                    "startTime": now,
                }
                self.core.patch_namespaced_pod_status(
                    meta["name"], self.namespace, {"status": status}, _preload_content=False
                )


@contextmanager
def kubelet_world(api: client.ApiClient, core: client.CoreV1Api, d: Path) -> Iterator[dict[str, Any]]:
    """The API clients, webhook certificates in ``d`` and a kubelet for node-0 running the
    pods scheduled there, stopped afterwards."""
    certs_cli(d, "--days", "1")
    kubelet = Kubelet(core, "node-0")
    kubelet.thread.start()
    try:
        yield {
            "api": api,
            "core": core,
            "apps": client.AppsV1Api(api),
            "certs": Certs(d, d / "ca.crt", d / "tls.crt", d / "tls.key"),
            "dir": d,
        }
    finally:
        kubelet.stop.set()
        kubelet.thread.join(5)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    global SERVER, KUBECONFIG
    SERVER = apiserver.started("mesh-injector-fleet", CONTROLLERS)
    KUBECONFIG = SERVER.kubeconfig
    cfg = client.Configuration()
    config.load_kube_config(config_file=KUBECONFIG, client_configuration=cfg)
    api = client.ApiClient(cfg)
    core = client.CoreV1Api(api)
    for ns, labels in ((NS, {"mesh-injector.io/inject": "enabled"}), ("linkerd", {})):
        core.create_namespace({"metadata": {"name": ns, "labels": labels}}, _preload_content=False)
    core.create_namespaced_config_map(
        "linkerd",
        {"metadata": {"name": "linkerd-identity-trust-roots"}, "data": {"ca-bundle.crt": TRUST_ANCHORS}},
        _preload_content=False,
    )
    make_node(core, "node-0", "6.1.0-18-cloud-amd64", {"kubernetes.io/hostname": "node-0"})
    with kubelet_world(api, core, tmp_path_factory.mktemp("fleet-certs")) as world:
        yield world
    apiserver.finish(SERVER)


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "webhook", *args, "--kubeconfig", KUBECONFIG],
        capture_output=True,
        text=True,
        timeout=300,
    )


def deployment(name: str, replicas: int) -> dict:
    labels = {"app": name}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": labels},
            "strategy": {"rollingUpdate": {"maxSurge": 1, "maxUnavailable": 1}},
            "template": {
                "metadata": {"labels": labels},
                "spec": {
                    "serviceAccountName": "default",
                    "containers": [{"name": "app", "image": f"registry.example.com/{name}:1"}],
                },
            },
        },
    }


def live_pods(core: client.CoreV1Api, app: str) -> list[dict]:
    items = orjson.loads(
        core.list_namespaced_pod(NS, label_selector=f"app={app}", _preload_content=False).data
    )
    return [p for p in items["items"] if not p["metadata"].get("deletionTimestamp")]


def proxies(pods: list[dict]) -> list[str | None]:
    return [next((c["image"] for c in p["spec"]["containers"] if c["name"] == PROXY), None) for p in pods]


def available(apps: client.AppsV1Api, name: str, replicas: int, ns: str = NS) -> bool:
    status = orjson.loads(apps.read_namespaced_deployment(name, ns, _preload_content=False).data)["status"]
    return status.get("availableReplicas") == replicas and status.get("updatedReplicas") == replicas


def audit(*args: str) -> dict[str, dict]:
    done = cli("audit", "-n", NS, "-o", "json", *args)
    assert done.returncode in (0, 1), done.stderr
    return {w["name"]: w for w in orjson.loads(done.stdout)}


def test_missed_then_rolled_then_stale_then_rolled_at_pace_one(cluster, tmp_path):
    core, apps = cluster["core"], cluster["apps"]
    # the webhook is down (not registered): the Deployment's pods are created unmeshed
    apps.create_namespaced_deployment(NS, deployment("web", 2), _preload_content=False)
    eventually(lambda: available(apps, "web", 2), timeout=60)
    assert proxies(live_pods(core, "web")) == [None, None]

    with serve_process(cluster["certs"], "--kubeconfig", KUBECONFIG, "--fleet-interval", "1") as proc:
        ctx = cluster["certs"].client_context()
        eventually(lambda: httpx.get(proc.url + "/readyz", verify=ctx).status_code == 200, timeout=60)
        register_webhook({"api": cluster["api"], "certs": cluster["certs"]}, proc.url)
        sent_to(proc, cluster["core"], NS)

        found = audit()
        assert found["web"]["state"] == "missed" and found["web"]["pods"] == {"missed": 2}
        # serve's gauges say the same, from its own watch of the pods
        missed = f'mesh_injector_fleet_pods{{namespace="{NS}",reason="not-injected",state="missed"}} 2.0'
        eventually(lambda: missed in httpx.get(proc.metrics_url).text, timeout=30)
        assert found["web"]["kind"] == "Deployment"
        failing = cli("audit", "-n", NS, "--fail-on", "missed,stale")
        assert failing.returncode == 1 and "missed" in failing.stdout

        dry = cli("rollout", "-n", NS)
        assert dry.returncode == 0, dry.stderr
        assert "restart" in dry.stdout and "nothing was restarted" in dry.stdout
        assert proxies(live_pods(core, "web")) == [None, None]  # the dry run changed nothing

        done = cli("rollout", "-n", NS, "--yes", "--poll", "0.5", "--timeout", "120")
        assert done.returncode == 0, done.stdout + done.stderr
        assert f"restarting  {NS}/Deployment/web: 2 missed" in done.stdout
        assert "[1/1] available" in done.stdout
        images = proxies(live_pods(core, "web"))
        assert len(images) == 2 and all(i and i.startswith("cr.l5d.io/linkerd/proxy:") for i in images)
        assert audit()["web"]["state"] == "current"
        eventually(lambda: "mesh_injector_fleet_pods{" not in httpx.get(proc.metrics_url).text, timeout=30)

        # a second workload, meshed at creation, and a budget that allows one disruption
        apps.create_namespaced_deployment(NS, deployment("api", 2), _preload_content=False)
        eventually(lambda: available(apps, "api", 2), timeout=60)
        budget = {
            "apiVersion": "policy/v1beta1",
            "kind": "PodDisruptionBudget",
            "metadata": {"name": "all-apps"},
            "spec": {
                "minAvailable": 3,
                "selector": {"matchExpressions": [{"key": "app", "operator": "Exists"}]},
            },
        }
        budgets = f"/apis/policy/v1beta1/namespaces/{NS}/poddisruptionbudgets"  # a 1.20 API server
        request(cluster["api"], "POST", budgets, body=budget, content_type="application/json")

        def allowed() -> int:
            pdb = orjson.loads(request(cluster["api"], "GET", f"{budgets}/all-apps").data)
            return pdb.get("status", {}).get("disruptionsAllowed", -1)

        eventually(lambda: allowed() == 1, timeout=60)
        assert proc.stop() == 0

    # the policy changes (the proxy image): every meshed pod is stale
    policy = tmp_path / "policy.yaml"
    policy.write_text(
        "apiVersion: mesh-injector.io/v1\nkind: InjectionPolicy\n"
        "proxy:\n  linkerd:\n    image: cr.l5d.io/linkerd/proxy:edge-24.9.1\n"
    )
    with serve_process(
        cluster["certs"], "--kubeconfig", KUBECONFIG, "--policy", str(policy), "--fleet-interval", "1"
    ) as proc:
        ctx = cluster["certs"].client_context()
        eventually(lambda: httpx.get(proc.url + "/readyz", verify=ctx).status_code == 200, timeout=60)
        register_webhook({"api": cluster["api"], "certs": cluster["certs"]}, proc.url)
        sent_to(proc, cluster["core"], NS)
        found = audit("--policy", str(policy))
        for name in ("web", "api"):
            assert found[name]["state"] == "stale", found[name]
            assert "proxy-image" in found[name]["fields"]
            change = found[name]["podDetails"][0]["changes"][0]
            assert (
                change["field"] == "proxy-image" and change["wants"] == "cr.l5d.io/linkerd/proxy:edge-24.9.1"
            )

        done = cli(
            "rollout",
            "-n",
            NS,
            "--policy",
            str(policy),
            "--yes",
            "--max-in-flight",
            "1",
            "--poll",
            "0.5",
            "--timeout",
            "120",
        )
        assert done.returncode == 0, done.stdout + done.stderr
        print(done.stdout)
        lines = [line for line in done.stdout.splitlines() if line.startswith(("restarting", "[", "holding"))]
        # pace 1: each is available again before the next starts, within the budget
        assert [line.split()[0] for line in lines if not line.startswith("holding")] == [
            "restarting",
            "[1/2]",
            "restarting",
            "[2/2]",
        ], done.stdout
        assert "within all-apps" in done.stdout
        for name in ("web", "api"):
            assert proxies(live_pods(core, name)) == ["cr.l5d.io/linkerd/proxy:edge-24.9.1"] * 2
        after = audit("--policy", str(policy))
        assert {after[n]["state"] for n in ("web", "api")} == {"current"}
        # run again: nothing to do
        again = cli("rollout", "-n", NS, "--policy", str(policy), "--yes")
        assert again.returncode == 0 and "nothing to restart" in again.stdout
        assert proc.stop() == 0


def _user_kubeconfig(path: Path, user: str) -> str:
    """A kubeconfig that authenticates as ``user`` (no group) with a client certificate the
    API server's client CA signed, beside the admin's."""
    import base64
    import datetime

    import yaml
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    pki = apiserver.PKI
    ca_cert = x509.load_pem_x509_certificate((pki / "ca.crt").read_bytes())
    ca_key = serialization.load_pem_private_key((pki / "ca.key").read_bytes(), None)
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, user)]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA256())  # type: ignore[arg-type]
    )
    doc = yaml.safe_load(Path(KUBECONFIG).read_text())
    pem = cert.public_bytes(serialization.Encoding.PEM)
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    for entry in doc["users"]:
        entry["user"] = {
            "client-certificate-data": base64.b64encode(pem).decode(),
            "client-key-data": base64.b64encode(key_pem).decode(),
        }
    path.write_text(yaml.safe_dump(doc))
    return str(path)


def test_audit_and_rollout_need_only_the_shipped_fleet_role(cluster, tmp_path):
    """deploy/operator/fleet-role.yaml is all a person running audit and rollout needs:
    refused without it, a missed workload found and restarted (and meshed) with it."""
    import yaml

    core, apps, api = cluster["core"], cluster["apps"], cluster["api"]
    user = "e2e-fleet-operator"
    limited = _user_kubeconfig(tmp_path / "kubeconfig", user)
    policy = tmp_path / "policy.yaml"  # the policy the other test left every pod current with
    policy.write_text(
        "apiVersion: mesh-injector.io/v1\nkind: InjectionPolicy\n"
        "proxy:\n  linkerd:\n    image: cr.l5d.io/linkerd/proxy:edge-24.9.1\n"
    )

    def as_user(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [
                sys.executable,
                "-m",
                "webhook",
                *args,
                "-n",
                NS,
                "--policy",
                str(policy),
                "--kubeconfig",
                limited,
            ],
            capture_output=True,
            text=True,
            timeout=300,
        )

    refused = as_user("audit")
    assert refused.returncode == 2 and "403" in refused.stderr, refused.stdout + refused.stderr

    rbac = client.RbacAuthorizationV1Api(api)
    role = yaml.safe_load(
        (Path(__file__).resolve().parent.parent / "deploy/operator/fleet-role.yaml").read_text()
    )
    rbac.create_cluster_role(role, _preload_content=False)
    binding = {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "ClusterRoleBinding",
        "metadata": {"name": user},
        "roleRef": {
            "apiGroup": "rbac.authorization.k8s.io",
            "kind": "ClusterRole",
            "name": role["metadata"]["name"],
        },
        "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": user}],
    }
    rbac.create_cluster_role_binding(binding, _preload_content=False)

    # the webhook is down: the new Deployment's pod is created unmeshed (failurePolicy Ignore)
    apps.create_namespaced_deployment(NS, deployment("ops", 1), _preload_content=False)
    eventually(lambda: available(apps, "ops", 1), timeout=60)
    assert proxies(live_pods(core, "ops")) == [None]

    def audited() -> dict[str, dict] | None:
        done = as_user("audit", "-o", "json")
        return {w["name"]: w for w in orjson.loads(done.stdout)} if done.returncode in (0, 1) else None

    found = eventually(audited, timeout=30)  # the binding takes effect within moments
    assert found["ops"]["state"] == "missed", found["ops"]
    assert {found[n]["state"] for n in ("web", "api")} == {"current"}

    with serve_process(
        cluster["certs"], "--kubeconfig", KUBECONFIG, "--policy", str(policy), "--fleet-interval", "0"
    ) as proc:
        ctx = cluster["certs"].client_context()
        eventually(lambda: httpx.get(proc.url + "/readyz", verify=ctx).status_code == 200, timeout=60)
        register_webhook({"api": api, "certs": cluster["certs"]}, proc.url)
        sent_to(proc, cluster["core"], NS)
        done = as_user("rollout", "--yes", "--poll", "0.5", "--timeout", "120")
        assert done.returncode == 0, done.stdout + done.stderr
        assert f"restarting  {NS}/Deployment/ops: 1 missed" in done.stdout
        assert [
            i and i.startswith("cr.l5d.io/linkerd/proxy:edge-24.9.1") for i in proxies(live_pods(core, "ops"))
        ] == [True]
        assert as_user("audit", "-o", "json").returncode == 0
        assert proc.stop() == 0


def test_a_merbridge_restart_makes_its_nodes_ebpf_pods_stale_and_rollout_restarts_them(cluster):
    """Merbridge (CNI mode) Ready on node-1: a Deployment's pods there are meshed in ebpf mode
    and current. Merbridge's container restarts (its startedAt, through the status
    subresource, after the pods' start): it no longer redirects Linkerd's pods, so audit says
    stale (redirector-restarted, naming Merbridge and the node), serve's gauge counts them,
    and rollout restarts the Deployment, whose new pods are current again."""
    core, apps, api = cluster["core"], cluster["apps"], cluster["api"]
    ns, node = "ebpf", "node-1"
    core.create_namespace(
        {"metadata": {"name": ns, "labels": {"mesh-injector.io/inject": "enabled"}}}, _preload_content=False
    )
    make_node(core, node, "6.1.0-18-cloud-amd64", {"kubernetes.io/hostname": node})
    long_ago = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() - 3600))
    make_merbridge(core, "linkerd", node, "linkerd", started=long_ago)
    kubelet = Kubelet(core, node, ns)
    kubelet.thread.start()
    body = deployment("lost", 2)
    body["spec"]["template"]["spec"]["nodeSelector"] = {"kubernetes.io/hostname": node}

    def audited() -> dict[str, dict]:
        done = cli("audit", "-n", ns, "-o", "json")
        assert done.returncode in (0, 1), done.stderr
        return {w["name"]: w for w in orjson.loads(done.stdout)}

    def modes() -> list[str]:
        items = orjson.loads(core.list_namespaced_pod(ns, _preload_content=False).data)["items"]
        live = [p for p in items if not p["metadata"].get("deletionTimestamp")]
        return [p["metadata"]["labels"].get("mesh-injector.io/interception", "") for p in live]

    try:
        with serve_process(cluster["certs"], "--kubeconfig", KUBECONFIG, "--fleet-interval", "1") as proc:
            ctx = cluster["certs"].client_context()
            eventually(lambda: httpx.get(proc.url + "/readyz", verify=ctx).status_code == 200, timeout=60)
            register_webhook({"api": api, "certs": cluster["certs"]}, proc.url)
            sent_to(proc, core, ns)
            apps.create_namespaced_deployment(ns, body, _preload_content=False)
            eventually(lambda: available(apps, "lost", 2, ns), timeout=60)
            assert modes() == ["ebpf", "ebpf"]
            assert audited()["lost"]["state"] == "current"

            time.sleep(1.1)  # timestamps have whole seconds: the restart comes after the pods' start
            make_merbridge(core, "linkerd", node, "linkerd", started=_now())
            found = audited()["lost"]
            assert found["state"] == "stale" and found["fields"] == ["redirector-restarted"], found
            change = found["podDetails"][0]["changes"][0]
            assert change["has"].startswith(
                f"not redirected since Merbridge on node {node} (linkerd/merbridge-{node})"
            )
            labels = f'namespace="{ns}",reason="redirector-restarted",state="stale"'
            stale = f"mesh_injector_fleet_pods{{{labels}}} 2.0"
            eventually(lambda: stale in httpx.get(proc.metrics_url).text, timeout=30)

            time.sleep(1.1)
            done = cli("rollout", "-n", ns, "--yes", "--poll", "0.5", "--timeout", "120")
            assert done.returncode == 0, done.stdout + done.stderr
            assert f"restarting  {ns}/Deployment/lost: 2 stale (redirector-restarted)" in done.stdout
            assert modes() == ["ebpf", "ebpf"]
            assert audited()["lost"]["state"] == "current"
            eventually(lambda: f'namespace="{ns}"' not in httpx.get(proc.metrics_url).text, timeout=30)
            assert proc.stop() == 0
    finally:
        kubelet.stop.set()
        kubelet.thread.join(5)
