"""Self-managed certificates in a cluster: the Secrets, and the webhook's caBundle.

``ensure_secrets`` (``mesh-injector certs --secret NS/NAME``, run by a Job) creates the
serving Secret (``tls.crt``, ``tls.key``, ``ca.crt``) and the CA Secret (``<name>-ca``)
when they do not exist; creation is atomic on the API server, so concurrent runs agree
on one winner. ``--force`` renews the serving certificate under the existing CA.

``CABundleSync`` (``mesh-injector serve --webhook-config NAME --ca-bundle FILE``) keeps
every webhook's ``caBundle`` *containing* the CA the server's certificate chains to,
re-patching when it drifts. Replicas cannot fight: a replica only ever adds its CA,
keeping the other unexpired CAs already there (during a CA rotation old and new stay side
by side until the old one expires), and its JSON patch starts with a ``test`` of the
``resourceVersion`` it read, so concurrent writers never overwrite each other blindly;
the loser re-reads, finds its CA present, and does nothing.
"""

from __future__ import annotations

import base64
import datetime as dt
import logging
import re
import threading
from pathlib import Path
from typing import Any

import orjson
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.serialization import Encoding
from kubernetes import client
from kubernetes.client.rest import ApiException

from webhook.errors import CertError
from webhook.kubeapi import request
from webhook.serve.certs import Bundle, generate, service_names

log = logging.getLogger("mesh_injector.cabundle")
_PEM = re.compile(rb"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----", re.S)


def certificates(pem: bytes) -> list[x509.Certificate]:
    out = []
    for block in _PEM.findall(pem):
        try:
            out.append(x509.load_pem_x509_certificate(block))
        except ValueError:
            continue  # a damaged entry in someone else's bundle: dropped on the next write
    return out


def _fingerprint(cert: x509.Certificate) -> bytes:
    return cert.fingerprint(hashes.SHA256())


def merged_bundle(current: bytes, ours: bytes, now: dt.datetime | None = None) -> bytes | None:
    """The bundle to write so that it holds our CA, or None when it already does."""
    now = now or dt.datetime.now(dt.UTC)
    mine = certificates(ours)
    if not mine:
        raise CertError("the CA bundle holds no certificate")
    have = certificates(current)
    present = {_fingerprint(c) for c in have}
    if all(_fingerprint(c) in present for c in mine):
        return None
    wanted = {_fingerprint(c) for c in mine}
    keep = [c for c in have if c.not_valid_after_utc > now and _fingerprint(c) not in wanted]
    return b"".join(c.public_bytes(Encoding.PEM) for c in [*mine, *keep])


class CABundleSync:
    def __init__(self, api: client.ApiClient, name: str, ca: Path | bytes, *, interval: float = 30.0) -> None:
        """``ca``: the CA as PEM, or a file to re-read each round (it follows rotations)."""
        self.api = api
        self.path = f"/apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations/{name}"
        self.name = name
        self.ca = ca
        self.interval = interval
        self.patches = 0
        self.conflicts = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def sync_once(self) -> bool:
        """Make every webhook's caBundle hold our CA; True when a patch was written."""
        ours = self.ca.read_bytes() if isinstance(self.ca, Path) else self.ca
        mwc = orjson.loads(request(self.api, "GET", self.path, timeout=(5, 10)).data)
        ops: list[dict[str, Any]] = [
            {"op": "test", "path": "/metadata/resourceVersion", "value": mwc["metadata"]["resourceVersion"]}
        ]
        for i, hook in enumerate(mwc.get("webhooks") or []):
            current = base64.b64decode((hook.get("clientConfig") or {}).get("caBundle") or "")
            wanted = merged_bundle(current, ours)
            if wanted is not None:
                ops.append(
                    {
                        "op": "add",
                        "path": f"/webhooks/{i}/clientConfig/caBundle",
                        "value": base64.b64encode(wanted).decode("ascii"),
                    }
                )
        if len(ops) == 1:
            return False
        try:
            request(
                self.api,
                "PATCH",
                self.path,
                body=ops,
                content_type="application/json-patch+json",
                timeout=(5, 10),
            )
        except ApiException as exc:
            if exc.status in (409, 422):  # someone wrote first: re-read next round
                self.conflicts += 1
                return False
            raise
        self.patches += 1
        log.info(f"caBundle of MutatingWebhookConfiguration {self.name} updated to include our CA")
        return True

    def ensure(self, attempts: int = 5) -> bool:
        """One-shot (``certs --webhook-config``): rounds until the bundle holds our CA, a
        round lost to another writer (a replica patching at the same moment) being tried
        again on what it wrote; True when this call wrote the CA."""
        for _ in range(attempts):
            self.conflicts = 0
            if self.sync_once():
                return True
            if not self.conflicts:
                return False  # it holds the CA
        raise CertError(
            f"MutatingWebhookConfiguration {self.name}: the caBundle changed under each of "
            f"{attempts} patches; other writers keep changing it"
        )

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="cabundle-sync", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            wait = self.interval
            try:
                if self.sync_once() or self.conflicts:
                    wait = 1.0  # confirm soon after a write or a lost race
                    self.conflicts = 0
            except Exception as exc:  # the API is away or refuses: keep serving, retry
                log.warning(f"caBundle sync of {self.name}: {type(exc).__name__}: {str(exc)[:200]}")
                wait = min(self.interval, 5.0)
            self._stop.wait(wait)

    def stop(self) -> None:
        self._stop.set()


def _secret(name: str, namespace: str, data: dict[str, bytes], kind: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "labels": {"app.kubernetes.io/name": "mesh-injector"},
        },
        "type": kind,
        "data": {k: base64.b64encode(v).decode("ascii") for k, v in data.items()},
    }


def ensure_secrets(
    api: client.ApiClient, *, namespace: str, name: str, service: str, dns: list[str], days: int, force: bool
) -> tuple[Bundle, bool]:
    """The serving and CA Secrets, created when absent; (the bundle in force, whether written)."""
    core = client.CoreV1Api(api)

    def read(secret: str) -> dict[str, bytes] | None:
        try:
            obj = orjson.loads(core.read_namespaced_secret(secret, namespace, _preload_content=False).data)
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise
        return {k: base64.b64decode(v) for k, v in (obj.get("data") or {}).items()}

    names = [*service_names(service, namespace), *dns]
    serving, ca = read(name), read(f"{name}-ca")
    if serving is not None and not force:
        return Bundle(serving.get("ca.crt", b""), b"", serving.get("tls.crt", b""), b""), False
    reuse = (ca["ca.crt"], ca["ca.key"]) if ca and "ca.crt" in ca and "ca.key" in ca else None
    bundle = generate(dns=names, days=days, common_name=service, ca=reuse)
    if ca is None:
        try:
            core.create_namespaced_secret(
                namespace,
                _secret(
                    f"{name}-ca", namespace, {"ca.crt": bundle.ca_cert, "ca.key": bundle.ca_key}, "Opaque"
                ),
            )
        except ApiException as exc:
            if exc.status != 409:
                raise
            return ensure_secrets(
                api, namespace=namespace, name=name, service=service, dns=dns, days=days, force=force
            )  # another run created the CA first: use it
    body = _secret(
        name,
        namespace,
        {"tls.crt": bundle.cert, "tls.key": bundle.key, "ca.crt": bundle.ca_cert},
        "kubernetes.io/tls",
    )
    if serving is None:
        try:
            core.create_namespaced_secret(namespace, body)
        except ApiException as exc:
            if exc.status != 409:
                raise
            return ensure_secrets(
                api, namespace=namespace, name=name, service=service, dns=dns, days=days, force=False
            )
    else:
        core.replace_namespaced_secret(name, namespace, body)
    return bundle, True
