"""Certificates for the webhook: a CA and an ECDSA P-256 serving certificate.

The API server verifies the webhook against the ``caBundle`` in the
MutatingWebhookConfiguration, so the serving certificate must carry the Service's DNS
names as SANs (``svc``, ``svc.ns``, ``svc.ns.svc``, ``svc.ns.svc.cluster.local``).
Keys are written with mode 0600 and existing files are never overwritten unless asked.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from webhook.errors import CertError

FILES = ("ca.crt", "ca.key", "tls.crt", "tls.key")


@dataclass(frozen=True)
class Bundle:
    ca_cert: bytes
    ca_key: bytes
    cert: bytes
    key: bytes


def service_names(service: str, namespace: str) -> list[str]:
    return [
        service,
        f"{service}.{namespace}",
        f"{service}.{namespace}.svc",
        f"{service}.{namespace}.svc.cluster.local",
    ]


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _load_ca(ca: tuple[bytes, bytes]) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    try:
        cert = x509.load_pem_x509_certificate(ca[0])
        key = serialization.load_pem_private_key(ca[1], password=None)
    except ValueError as exc:
        raise CertError(f"the existing CA cannot be read: {exc}") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise CertError("the existing CA key is not an EC key")
    return cert, key


def generate(
    *,
    dns: list[str],
    ips: Sequence[str] = (),
    days: int = 365,
    common_name: str = "mesh-injector",
    now: dt.datetime | None = None,
    ca: tuple[bytes, bytes] | None = None,
) -> Bundle:
    """A serving certificate signed by ``ca`` (PEM cert, key) or by a fresh CA."""
    if days < 1:
        raise CertError(f"--days: {days} must be at least 1")
    try:
        addresses = [ipaddress.ip_address(ip) for ip in ips]
    except ValueError as exc:
        raise CertError(f"--ip: {exc}") from None
    now = now or dt.datetime.now(dt.UTC)
    start = now - dt.timedelta(minutes=5)  # tolerate clock skew between nodes
    if ca is not None:
        return _serving(dns, addresses, days, now, start, *_load_ca(ca))
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"{common_name}-ca")])
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(now + dt.timedelta(days=max(days * 2, days + 30)))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_cert_sign=True,
                crl_sign=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    return _serving(dns, addresses, days, now, start, ca_cert, ca_key)


def _serving(
    dns: list[str],
    addresses: list[ipaddress.IPv4Address | ipaddress.IPv6Address],
    days: int,
    now: dt.datetime,
    start: dt.datetime,
    ca_cert: x509.Certificate,
    ca_key: ec.EllipticCurvePrivateKey,
) -> Bundle:
    key = ec.generate_private_key(ec.SECP256R1())
    sans: list[x509.GeneralName] = [x509.DNSName(d) for d in dns]
    sans += [x509.IPAddress(a) for a in addresses]
    cert = (
        x509.CertificateBuilder()
        .subject_name(
            x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, dns[0] if dns else "mesh-injector")])
        )
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    pem = serialization.Encoding.PEM
    return Bundle(ca_cert.public_bytes(pem), _key_pem(ca_key), cert.public_bytes(pem), _key_pem(key))


def _write(path: Path, data: bytes, mode: int) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.chmod(tmp, mode)
    os.replace(tmp, path)  # atomic: a server watching the directory never reads half a file


def write_bundle(bundle: Bundle, out: Path, *, force: bool = False) -> list[Path]:
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise CertError(f"{out}: cannot create directory ({exc.strerror})") from None
    paths = [out / name for name in FILES]
    existing = [p for p in paths if p.exists()]
    if existing and not force:
        raise CertError(f"{existing[0]} already exists; pass --force to replace the certificates")
    data = (bundle.ca_cert, bundle.ca_key, bundle.cert, bundle.key)
    try:
        for path, content in zip(paths, data, strict=True):
            _write(path, content, 0o600 if path.name.endswith(".key") else 0o644)
    except OSError as exc:
        raise CertError(f"{out}: cannot write ({exc.strerror})") from None
    return paths


def not_after(cert_pem: bytes) -> float:
    """Expiry of the first certificate in ``cert_pem``, as a Unix timestamp."""
    cert = x509.load_pem_x509_certificate(cert_pem)
    return cert.not_valid_after_utc.timestamp()
