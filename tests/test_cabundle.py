"""Self-managed certificates against a real API server (tests/apiserver.py, one for this
module): the Secrets `mesh-injector certs --secret` writes, run exactly as the certificate
Job of deploy/overlays/self-managed runs it (its ServiceAccount's token, its RBAC), and the
webhook's caBundle kept holding the CA by replicas that race each other for real: the API
server checks the resourceVersion each patch tests, so a replica that lost a race sees 422.

Written, read and counted through the API server (its own ``apiserver_request_total`` says
how many patches were accepted), never through the code under test.
"""

from __future__ import annotations

import base64
import copy
import datetime as dt
import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from cryptography import x509

from tests import apiserver
from tests.support import eventually
from webhook.cluster.live import api_client
from webhook.serve import cabundle
from webhook.serve.cabundle import CABundleSync, certificates, merged_bundle
from webhook.serve.certs import generate

MWCS = "/apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations"
NAMESPACE = "mesh-injector"
SECRETS = f"/api/v1/namespaces/{NAMESPACE}/secrets"
REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def server():
    started = apiserver.started("mesh-injector-cabundle")
    yield started
    apiserver.finish(started)


@pytest.fixture(scope="module")
def admin(server):
    with server.http() as http:
        yield http


@pytest.fixture(scope="module")
def api(server):
    """The API client the product is given (the same administrator)."""
    return api_client(server.kubeconfig)


def _mwc(name: str, bundle: bytes = b"") -> dict:
    """Two webhooks (no rules: they are never called) with ``bundle`` as their caBundle."""
    hook = {
        "name": "x.inject.mesh-injector.io",
        "clientConfig": {"service": {"name": "mesh-injector", "namespace": NAMESPACE, "path": "/mutate"}},
        "admissionReviewVersions": ["v1"],
        "sideEffects": "None",
    }
    if bundle:
        hook["clientConfig"]["caBundle"] = base64.b64encode(bundle).decode()
    hooks = [copy.deepcopy(hook), copy.deepcopy(hook)]
    hooks[1]["name"] = "y.inject.mesh-injector.io"
    return {
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "MutatingWebhookConfiguration",
        "metadata": {"name": name},
        "webhooks": hooks,
    }


def created(admin, name: str, bundle: bytes = b"") -> str:
    admin.delete(f"{MWCS}/{name}")
    admin.post(MWCS, json=_mwc(name, bundle)).raise_for_status()
    return name


def stored(admin, name: str) -> dict:
    return admin.get(f"{MWCS}/{name}").raise_for_status().json()


def bundles(admin, name: str) -> list[bytes]:
    hooks = stored(admin, name)["webhooks"]
    return [base64.b64decode(h["clientConfig"].get("caBundle", "")) for h in hooks]


def holds(bundle: bytes, ca_pem: bytes) -> bool:
    fps = {c.fingerprint(c.signature_hash_algorithm) for c in certificates(bundle)}
    return all(c.fingerprint(c.signature_hash_algorithm) in fps for c in certificates(ca_pem))


def accepted_patches(server) -> float:
    return server.requests("PATCH", "mutatingwebhookconfigurations", "200")


def stopped(*replicas: CABundleSync) -> None:
    for r in replicas:
        r.stop()
    for r in replicas:
        if r._thread is not None:
            r._thread.join(30)


def test_merged_bundle_adds_ours_keeps_other_valid_cas_and_drops_expired():
    a, b = generate(dns=["x"]), generate(dns=["x"])
    assert merged_bundle(a.ca_cert, a.ca_cert) is None
    merged = merged_bundle(b.ca_cert, a.ca_cert)
    assert [c.subject for c in certificates(merged)] == [certificates(a.ca_cert)[0].subject] * 2
    assert holds(merged, a.ca_cert) and holds(merged, b.ca_cert)
    later = dt.datetime.now(dt.UTC) + dt.timedelta(days=3650)
    assert not holds(merged_bundle(b.ca_cert, a.ca_cert, now=later), b.ca_cert)  # expired: dropped


def test_drift_is_repaired(admin, api, tmp_path):
    ca = generate(dns=["x"])
    (tmp_path / "ca.crt").write_bytes(ca.ca_cert)
    other = generate(dns=["x"]).ca_cert
    name = created(admin, "drift", b"garbage")
    sync = CABundleSync(api, name, tmp_path / "ca.crt", interval=0.2)
    sync.start()
    try:
        eventually(lambda: all(holds(b, ca.ca_cert) for b in bundles(admin, name)), timeout=30)
        # someone overwrites it (an old manifest re-applied, with another CA): repaired again
        drifted = _mwc(name, other)
        drifted["metadata"]["resourceVersion"] = stored(admin, name)["metadata"]["resourceVersion"]
        admin.put(f"{MWCS}/{name}", json=drifted).raise_for_status()
        assert not any(holds(b, ca.ca_cert) for b in bundles(admin, name))
        eventually(lambda: all(holds(b, ca.ca_cert) for b in bundles(admin, name)), timeout=30)
        assert all(holds(b, other) for b in bundles(admin, name)), "a valid CA already there is kept"
    finally:
        stopped(sync)


def test_two_replicas_do_not_fight(server, admin, api, tmp_path):
    """Two replicas with the same CA, polling every 50 ms: the API server accepts one patch
    in all; once the bundle holds the CA, further rounds of either write nothing."""
    ca = generate(dns=["x"])
    (tmp_path / "ca.crt").write_bytes(ca.ca_cert)
    name = created(admin, "pair")
    before = accepted_patches(server)
    replicas = [CABundleSync(api, name, tmp_path / "ca.crt", interval=0.05) for _ in range(2)]
    for r in replicas:
        r.start()
    try:
        eventually(lambda: all(holds(b, ca.ca_cert) for b in bundles(admin, name)), timeout=30)
    finally:
        stopped(*replicas)
    settled = stored(admin, name)["metadata"]["resourceVersion"]
    assert [r.sync_once() for r in replicas for _ in range(3)] == [False] * 6
    assert stored(admin, name)["metadata"]["resourceVersion"] == settled, "no write once it holds the CA"
    assert accepted_patches(server) - before == 1
    assert sum(r.patches for r in replicas) == 1


def test_a_replica_that_loses_a_race_keeps_the_winners_ca(server, admin, api, monkeypatch):
    """The other replica writes between this one's read and its patch: the API server
    refuses the patch (its test of the resourceVersion read fails: 422), nothing of the
    winner's is overwritten, and the next round adds this replica's CA beside the winner's."""
    mine, theirs = generate(dns=["x"]).ca_cert, generate(dns=["x"]).ca_cert
    name = created(admin, "race")
    loser, winner = CABundleSync(api, name, mine), CABundleSync(api, name, theirs)
    real = cabundle.request
    raced = []

    def the_winner_writes_first(client, method, path, **kw):
        if method == "PATCH" and not raced:  # between the loser's GET and its PATCH
            raced.append(path)
            assert winner.sync_once()
        return real(client, method, path, **kw)

    monkeypatch.setattr(cabundle, "request", the_winner_writes_first)
    refused = server.requests("PATCH", "mutatingwebhookconfigurations", "422")
    assert loser.sync_once() is False and loser.conflicts == 1
    assert server.requests("PATCH", "mutatingwebhookconfigurations", "422") == refused + 1
    assert all(holds(b, theirs) and not holds(b, mine) for b in bundles(admin, name))
    monkeypatch.setattr(cabundle, "request", real)
    assert loser.sync_once() is True
    assert all(holds(b, theirs) and holds(b, mine) for b in bundles(admin, name))


def test_replicas_on_either_side_of_a_ca_rotation_converge(admin, api, tmp_path):
    old, new = generate(dns=["x"]), generate(dns=["x"])
    (tmp_path / "old.crt").write_bytes(old.ca_cert)
    (tmp_path / "new.crt").write_bytes(new.ca_cert)
    name = created(admin, "rotation")
    replicas = [CABundleSync(api, name, tmp_path / f"{n}.crt", interval=0.05) for n in ("old", "new")]
    for r in replicas:
        r.start()
    try:
        eventually(
            lambda: all(holds(b, old.ca_cert) and holds(b, new.ca_cert) for b in bundles(admin, name)),
            timeout=30,
        )
    finally:
        stopped(*replicas)
    settled = stored(admin, name)["metadata"]["resourceVersion"]
    assert [r.sync_once() for r in replicas for _ in range(3)] == [False] * 6
    assert stored(admin, name)["metadata"]["resourceVersion"] == settled, "no flip-flop between the CAs"


# --- the certificate Job of deploy/overlays/self-managed ---------------------------------


@pytest.fixture(scope="module")
def self_managed(server, admin):
    """deploy/overlays/self-managed rendered by real kustomize and created in the API
    server, as ``kubectl apply -k`` would (nothing runs it: there is no kubelet); its Job."""
    from tests.test_deploy import render

    objs = render("overlays/self-managed")
    # what the Job needs, in the order apply creates it (the rest is the webhook's Deployment)
    order = [
        "Namespace",
        "ServiceAccount",
        "ClusterRole",
        "Role",
        "ClusterRoleBinding",
        "RoleBinding",
        "MutatingWebhookConfiguration",
        "Job",
    ]
    for obj in sorted((o for o in objs if o["kind"] in order), key=lambda o: order.index(o["kind"])):
        group, _, version = obj["apiVersion"].rpartition("/")
        kind = obj["kind"].lower() + "s"
        base = f"/apis/{group}/{version}" if group else f"/api/{version}"
        ns = obj["metadata"].get("namespace")
        collection = f"{base}/namespaces/{ns}/{kind}" if ns else f"{base}/{kind}"
        answer = admin.post(collection, json=obj)
        assert answer.status_code == 201, f"{obj['kind']} {obj['metadata']['name']}: {answer.text}"
    return next(o for o in objs if o["kind"] == "Job")


def run_the_job(
    server, job: dict, directory: Path, *extra: str, account: str | None = None
) -> subprocess.CompletedProcess[str]:
    """The Job's container as a pod runs it: the image's entrypoint (``mesh-injector``) with
    the Job's arguments (``--in-cluster`` among them), as its ServiceAccount (or ``account``)."""
    spec = job["spec"]["template"]["spec"]
    (container,) = spec["containers"]
    env, wrap = server.as_pod(job["metadata"]["namespace"], account or spec["serviceAccountName"], directory)
    entrypoint = Path(sys.executable).parent / "mesh-injector"
    return subprocess.run(
        [*wrap, str(entrypoint), *container["args"], *extra],
        capture_output=True,
        text=True,
        timeout=120,
        env={**{k: v for k, v in os.environ.items() if not k.startswith("KUBE")}, **env},
    )


def test_the_certificate_job_creates_the_secrets_and_sets_the_ca_bundle_idempotently(
    server, admin, self_managed, tmp_path
):
    job = self_managed
    args = job["spec"]["template"]["spec"]["containers"][0]["args"]
    webhook = next(a.split("=", 1)[1] for a in args if a.startswith("--webhook-config="))
    assert bundles(admin, webhook) == [b"", b""], "deployed without a caBundle"
    first = run_the_job(server, job, tmp_path / "sa")
    assert first.returncode == 0, first.stderr
    tls = admin.get(f"{SECRETS}/mesh-injector-tls").raise_for_status().json()
    ca = admin.get(f"{SECRETS}/mesh-injector-tls-ca").raise_for_status().json()
    assert tls["type"] == "kubernetes.io/tls" and set(tls["data"]) == {"tls.crt", "tls.key", "ca.crt"}
    assert set(ca["data"]) == {"ca.crt", "ca.key"}
    ca_pem = base64.b64decode(tls["data"]["ca.crt"])
    assert all(holds(b, ca_pem) for b in bundles(admin, webhook))
    cert = x509.load_pem_x509_certificate(base64.b64decode(tls["data"]["tls.crt"]))
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "mesh-injector.mesh-injector.svc" in sans.get_values_for_type(x509.DNSName)

    again = run_the_job(server, job, tmp_path / "sa")  # a re-run of the Job changes nothing
    assert again.returncode == 0 and "exists, left as it is" in again.stderr, again.stderr
    assert admin.get(f"{SECRETS}/mesh-injector-tls").json()["data"] == tls["data"]
    assert "caBundle already holds the CA" in again.stderr

    renewed = run_the_job(server, job, tmp_path / "sa", "--force")  # the CA is kept
    assert renewed.returncode == 0, renewed.stderr
    data = admin.get(f"{SECRETS}/mesh-injector-tls").json()["data"]
    assert data["tls.crt"] != tls["data"]["tls.crt"] and data["ca.crt"] == tls["data"]["ca.crt"]
    assert "caBundle already holds the CA" in renewed.stderr


def test_the_job_without_its_rbac_fails_in_one_line_naming_what_was_refused(
    server, admin, self_managed, tmp_path
):
    """Run as an account nothing is bound to: exit 2 and the API server's refusal, not a
    traceback."""
    body = {"metadata": {"name": "unbound"}}
    admin.post(f"/api/v1/namespaces/{NAMESPACE}/serviceaccounts", json=body).raise_for_status()
    out = run_the_job(server, self_managed, tmp_path / "sa", account="unbound")
    assert out.returncode == 2, out.stderr
    assert "Traceback" not in out.stderr and len(out.stderr.strip().splitlines()) == 1, out.stderr
    refused = f"mesh-injector: error: Secret {NAMESPACE}/mesh-injector-tls: HTTP 403: Forbidden"
    assert out.stderr.startswith(refused), out.stderr
    assert "system:serviceaccount:mesh-injector:unbound" in out.stderr


def test_a_job_that_loses_the_race_to_a_replica_patches_again(server, admin, api, monkeypatch, capsys):
    """A serving replica writes its CA between the Job's read and its patch: the API server
    refuses the Job's patch (422), and the Job reads again and adds its CA beside the
    replica's instead of reporting a caBundle that does not hold it."""
    from webhook.cli import main

    name = created(admin, "job-race")
    replica_ca = generate(dns=["x"]).ca_cert
    replica = CABundleSync(api, name, replica_ca)
    real = cabundle.request
    raced = []

    def the_replica_writes_first(client, method, path, **kw):
        if method == "PATCH" and not raced:
            raced.append(path)
            assert replica.sync_once()
        return real(client, method, path, **kw)

    monkeypatch.setattr(cabundle, "request", the_replica_writes_first)
    refused = server.requests("PATCH", "mutatingwebhookconfigurations", "422")
    args = ["certs", "--secret", f"{NAMESPACE}/race-tls", "--kubeconfig", server.kubeconfig]
    assert main([*args, "--webhook-config", name]) == 0
    assert server.requests("PATCH", "mutatingwebhookconfigurations", "422") == refused + 1
    assert f"MutatingWebhookConfiguration {name}: caBundle updated" in capsys.readouterr().err
    tls = admin.get(f"{SECRETS}/race-tls").raise_for_status().json()
    job_ca = base64.b64decode(tls["data"]["ca.crt"])
    assert all(holds(b, job_ca) and holds(b, replica_ca) for b in bundles(admin, name))


def test_the_certificate_jobs_account_can_touch_nothing_else(server, self_managed):
    """Its Role names the two Secrets; creating is the one verb that cannot be limited."""
    token = server.token(NAMESPACE, self_managed["spec"]["template"]["spec"]["serviceAccountName"])
    bearer = {"Authorization": f"Bearer {token}"}
    with httpx.Client(base_url=server.url, verify=server.tls(), headers=bearer) as job:
        assert job.get(f"{SECRETS}/mesh-injector-tls-ca").status_code in (200, 404)
        assert job.get(SECRETS).status_code == 403  # no listing
        assert job.get(f"{SECRETS}/someone-elses").status_code == 403
        assert job.get(f"{MWCS}/drift").status_code == 403  # only its own webhook configuration
        assert job.get("/api/v1/namespaces/default/secrets/x").status_code == 403


def test_serve_keeps_the_ca_bundle(admin, server, tmp_path):
    from tests.servers import make_certs, serve_process

    name = created(admin, "served")
    certs = make_certs(tmp_path / "certs")
    with serve_process(certs, "--kubeconfig", server.kubeconfig, "--webhook-config", name) as proc:
        eventually(lambda: all(holds(b, certs.ca.read_bytes()) for b in bundles(admin, name)), timeout=60)
        assert proc.stop() == 0
