"""Serving certificates that follow the files on disk, with no restart.

The listening socket keeps one ``SSLContext`` whose ``sni_callback`` hands every new
handshake the *current* context. A background thread polls the certificate and key files
(content, not mtime, so the ``..data`` symlink swap of a mounted Secret is seen) and swaps
in a freshly built context once both files load and match. Established connections keep
the certificate they were handshaken with; nothing is dropped. A half-written or
mismatched pair is ignored and retried at the next poll.

TLS 1.2 is the floor and, under 1.3, only forward-secret AEAD suites are offered (ECDHE
with AES-GCM or ChaCha20-Poly1305, for ECDSA and RSA certificates alike): no CBC, no
static RSA key exchange. The API server (Go's crypto/tls) negotiates 1.3 or these.

The embedded default certificate (``serve`` without ``--tls-cert``) never touches a disk:
its files are anonymous memory files (``memfd_create``), reachable as
``/proc/<pid>/fd/<n>`` only while the server runs, and gone with it, however it ends.
"""

from __future__ import annotations

import hashlib
import logging
import os
import ssl
import threading
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path

from webhook.serve.certs import not_after

log = logging.getLogger("mesh_injector.tls")

# OpenSSL cipher string for TLS 1.2 (1.3 suites are all AEAD and configured apart).
TLS12_CIPHERS = "ECDHE+AESGCM:ECDHE+CHACHA20"


class MemoryFiles:
    """Files that live in memory only, for as long as this object (and the process) does.

    ``paths[name]`` opens the file from this process; ``public[name]`` from another process
    of the same user (``curl --cacert``). Nothing is ever written to a file system, so a
    crash or SIGKILL leaves no private key behind and no path that outlives the process.
    """

    def __init__(self, files: Mapping[str, bytes]) -> None:
        if not hasattr(os, "memfd_create"):
            raise OSError("this platform has no memfd_create: give --tls-cert and --tls-key")
        self._fds: list[int] = []
        self.paths: dict[str, Path] = {}
        self.public: dict[str, Path] = {}
        for name, content in files.items():
            fd = os.memfd_create(f"mesh-injector-{name}")
            self._fds.append(fd)
            os.write(fd, content)
            self.paths[name] = Path(f"/proc/self/fd/{fd}")
            self.public[name] = Path(f"/proc/{os.getpid()}/fd/{fd}")

    def close(self) -> None:
        for fd in self._fds:
            os.close(fd)
        self._fds.clear()


def _context(cert: Path, key: Path) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.set_ciphers(TLS12_CIPHERS)
    ctx.load_cert_chain(str(cert), str(key))
    ctx.set_alpn_protocols(["http/1.1"])
    return ctx


def _digest(*paths: Path) -> str:
    h = hashlib.sha256()
    for p in paths:
        h.update(p.read_bytes())
        h.update(b"\0")
    return h.hexdigest()


class ReloadingTLS:
    def __init__(self, cert: str | Path, key: str | Path, *, interval: float = 2.0) -> None:
        self.cert = Path(cert)
        self.key = Path(key)
        self.interval = interval
        self.reloads = 0
        self.failures = 0
        self._digest = _digest(self.cert, self.key)
        self._current = _context(self.cert, self.key)
        self.expiry = not_after(self.cert.read_bytes())
        self.listener = _context(self.cert, self.key)
        self.listener.sni_callback = self._pick
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _pick(self, sslobj: ssl.SSLObject, server_name: str | None, ctx: ssl.SSLContext) -> None:
        current = self._current
        if current is not ctx:
            sslobj.context = current

    def check(self) -> bool:
        """Reload when the files changed; True when a new certificate is now served."""
        try:
            digest = _digest(self.cert, self.key)
            if digest == self._digest:
                return False
            ctx = _context(self.cert, self.key)
            expiry = not_after(self.cert.read_bytes())
            if _digest(self.cert, self.key) != digest:
                return False  # changed while loading: take it at the next poll
        except (OSError, ssl.SSLError, ValueError) as exc:
            self.failures += 1
            log.warning("certificate reload failed, still serving the previous one: %s", exc)
            return False
        self._current, self._digest, self.expiry = ctx, digest, expiry
        self.reloads += 1
        log.info(
            "serving certificate reloaded from %s (valid until %s)",
            self.cert,
            datetime.fromtimestamp(expiry, UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        )
        return True

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="cert-reloader", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.check()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
