"""Self-managed certificates: Secrets created by `mesh-injector certs --secret`, and the
webhook's caBundle kept holding the CA, against the list/watch-speaking test API server."""

from __future__ import annotations

import base64
import copy
import datetime as dt
import subprocess
import sys
import time
from pathlib import Path

import pytest
from cryptography import x509

from tests.fake_apiserver import FakeAPIServer
from tests.support import eventually
from webhook.cluster.live import api_client
from webhook.serve.cabundle import CABundleSync, certificates, merged_bundle
from webhook.serve.certs import generate

MWC = "/apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations/mesh-injector"
SECRETS = "/api/v1/namespaces/mesh-injector/secrets"


def _mwc(bundle: bytes = b"") -> dict:
    hook = {
        "name": "x.inject.mesh-injector.io",
        "clientConfig": {
            "service": {"name": "mesh-injector", "namespace": "mesh-injector", "path": "/mutate"}
        },
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
        "metadata": {"name": "mesh-injector", "resourceVersion": "1"},
        "webhooks": hooks,
    }


def bundles(fake: FakeAPIServer) -> list[bytes]:
    return [base64.b64decode(h["clientConfig"].get("caBundle", "")) for h in fake.store[MWC]["webhooks"]]


def holds(bundle: bytes, ca_pem: bytes) -> bool:
    fps = {c.fingerprint(c.signature_hash_algorithm) for c in certificates(bundle)}
    return all(c.fingerprint(c.signature_hash_algorithm) in fps for c in certificates(ca_pem))


@pytest.fixture
def fake(tmp_path):
    server = FakeAPIServer()
    server.start()
    server.store[MWC] = _mwc()
    yield server, api_client(str(server.kubeconfig(tmp_path / "kubeconfig"))), tmp_path / "kubeconfig"
    server.stop()


def test_merged_bundle_adds_ours_keeps_other_valid_cas_and_drops_expired():
    a, b = generate(dns=["x"]), generate(dns=["x"])
    assert merged_bundle(a.ca_cert, a.ca_cert) is None
    merged = merged_bundle(b.ca_cert, a.ca_cert)
    assert [c.subject for c in certificates(merged)] == [certificates(a.ca_cert)[0].subject] * 2
    assert holds(merged, a.ca_cert) and holds(merged, b.ca_cert)
    later = dt.datetime.now(dt.UTC) + dt.timedelta(days=3650)
    assert not holds(merged_bundle(b.ca_cert, a.ca_cert, now=later), b.ca_cert)  # expired: dropped


def test_drift_is_repaired(fake, tmp_path):
    server, api, _ = fake
    ca = generate(dns=["x"])
    (tmp_path / "ca.crt").write_bytes(ca.ca_cert)
    other = generate(dns=["x"]).ca_cert
    server.store[MWC] = _mwc(b"garbage")
    sync = CABundleSync(api, "mesh-injector", tmp_path / "ca.crt", interval=0.2)
    sync.start()
    try:
        eventually(lambda: all(holds(b, ca.ca_cert) for b in bundles(server)))
        # someone overwrites it (an old manifest re-applied): repaired again
        drifted = _mwc(other)
        drifted["metadata"]["resourceVersion"] = "999"
        server.store[MWC] = drifted
        eventually(lambda: all(holds(b, ca.ca_cert) for b in bundles(server)))
        assert all(holds(b, other) for b in bundles(server)), "a valid CA already there is kept"
    finally:
        sync.stop()


def test_two_replicas_do_not_fight(fake, tmp_path):
    server, api, _ = fake
    ca = generate(dns=["x"])
    (tmp_path / "ca.crt").write_bytes(ca.ca_cert)
    replicas = [CABundleSync(api, "mesh-injector", tmp_path / "ca.crt", interval=0.05) for _ in range(2)]
    for r in replicas:
        r.start()
    try:
        eventually(lambda: all(holds(b, ca.ca_cert) for b in bundles(server)))
        settled = server.patch_calls
        time.sleep(1.0)
        assert server.patch_calls == settled, "no writes once the bundle holds the CA"
        assert settled <= 2 and sum(r.patches for r in replicas) == 1
    finally:
        for r in replicas:
            r.stop()


def test_replicas_on_either_side_of_a_ca_rotation_converge(fake, tmp_path):
    server, api, _ = fake
    old, new = generate(dns=["x"]), generate(dns=["x"])
    (tmp_path / "old.crt").write_bytes(old.ca_cert)
    (tmp_path / "new.crt").write_bytes(new.ca_cert)
    replicas = [
        CABundleSync(api, "mesh-injector", tmp_path / f"{n}.crt", interval=0.05) for n in ("old", "new")
    ]
    for r in replicas:
        r.start()
    try:
        eventually(lambda: all(holds(b, old.ca_cert) and holds(b, new.ca_cert) for b in bundles(server)))
        settled = server.patch_calls
        time.sleep(1.0)
        assert server.patch_calls == settled, "no flip-flop between the old and the new CA"
    finally:
        for r in replicas:
            r.stop()


def _certs(kubeconfig: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "webhook",
            "certs",
            "--secret",
            "mesh-injector/mesh-injector-tls",
            "--kubeconfig",
            str(kubeconfig),
            "--webhook-config",
            "mesh-injector",
            *extra,
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_certs_job_creates_secrets_and_sets_the_ca_bundle_idempotently(fake):
    server, _, kubeconfig = fake
    first = _certs(kubeconfig)
    assert first.returncode == 0, first.stderr
    tls = server.store[f"{SECRETS}/mesh-injector-tls"]
    ca = server.store[f"{SECRETS}/mesh-injector-tls-ca"]
    assert tls["type"] == "kubernetes.io/tls" and set(tls["data"]) == {"tls.crt", "tls.key", "ca.crt"}
    assert set(ca["data"]) == {"ca.crt", "ca.key"}
    ca_pem = base64.b64decode(tls["data"]["ca.crt"])
    assert all(holds(b, ca_pem) for b in bundles(server))
    cert = x509.load_pem_x509_certificate(base64.b64decode(tls["data"]["tls.crt"]))
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(
        x509.DNSName
    )
    assert "mesh-injector.mesh-injector.svc" in sans

    again = _certs(kubeconfig)  # a re-run of the Job changes nothing
    assert again.returncode == 0 and "exists, left as it is" in again.stderr
    assert server.store[f"{SECRETS}/mesh-injector-tls"]["data"] == tls["data"]

    renewed = _certs(kubeconfig, "--force")  # renewal keeps the CA, so the caBundle stays valid
    assert renewed.returncode == 0, renewed.stderr
    data = server.store[f"{SECRETS}/mesh-injector-tls"]["data"]
    assert data["tls.crt"] != tls["data"]["tls.crt"] and data["ca.crt"] == tls["data"]["ca.crt"]
    assert "already holds the CA" in renewed.stderr


def test_serve_keeps_the_ca_bundle(fake, tmp_path):
    from tests.servers import make_certs, serve_process

    server, _, kubeconfig = fake
    certs = make_certs(tmp_path / "certs")
    with serve_process(certs, "--kubeconfig", str(kubeconfig), "--webhook-config", "mesh-injector") as proc:
        eventually(lambda: all(holds(b, certs.ca.read_bytes()) for b in bundles(server)), timeout=20)
        assert proc.stop() == 0
