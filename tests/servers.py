"""Real servers for the tests: uvicorn on a real port with real TLS, in a thread (when the
test needs to hand the app a dependency) or as the `mesh-injector serve` process."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

from webhook.serve.app import AppState, create_app
from webhook.serve.certs import generate, write_bundle
from webhook.serve.run import build_server
from webhook.serve.tls import ReloadingTLS


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Certs:
    dir: Path
    ca: Path
    cert: Path
    key: Path

    def client_context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.ca))


def make_certs(directory: Path) -> Certs:
    bundle = generate(dns=["localhost"], ips=["127.0.0.1"], days=2)
    write_bundle(bundle, directory)
    return Certs(directory, directory / "ca.crt", directory / "tls.crt", directory / "tls.key")


@contextmanager
def thread_server(state: AppState, certs: Certs, **kw: float) -> Iterator[str]:
    """The app on uvicorn in a thread, over TLS: for tests that hand it a dependency."""
    port = free_port()
    tls = ReloadingTLS(certs.cert, certs.key, interval=0.2)
    server = build_server(create_app(state), tls, host="127.0.0.1", port=port, **kw)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60  # a start on a loaded machine
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("server did not start")
        time.sleep(0.02)
    tls.start()
    try:
        yield f"https://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        tls.stop()


@dataclass
class Process:
    proc: subprocess.Popen[str]
    url: str
    metrics_url: str
    stdout: Path
    stderr: Path

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        return self.proc.wait(timeout=timeout)


@contextmanager
def serve_process(
    certs: Certs | None, *args: str, env: dict[str, str] | None = None, wrap: tuple[str, ...] = ()
) -> Iterator[Process]:
    """`mesh-injector serve` as users run it, on free ports; ``env`` is added to its
    environment and ``wrap`` goes before the command (it must exec it, keeping the pid)."""
    port, mport = free_port(), free_port()
    cmd = [
        *wrap,
        sys.executable,
        "-m",
        "webhook",
        "serve",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--metrics-host",
        "127.0.0.1",
        "--metrics-port",
        str(mport),
        *args,
    ]
    if certs is not None:
        cmd += ["--tls-cert", str(certs.cert), "--tls-key", str(certs.key)]
    logs = Path(tempfile.mkdtemp(prefix="serve-logs-"))
    # Files, not pipes: a pipe nobody reads fills up with admission log lines and stalls the server.
    out, err = logs / "stdout", logs / "stderr"
    with out.open("w") as fo, err.open("w") as fe:
        proc = subprocess.Popen(
            cmd, stdout=fo, stderr=fe, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
        )
    p = Process(proc, f"https://127.0.0.1:{port}", f"http://127.0.0.1:{mport}/metrics", out, err)
    deadline = time.monotonic() + 60  # a start-up on a machine loaded by other runs, not a measure
    try:
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"serve exited: {err.read_text()}")
            try:
                httpx.get(p.metrics_url, timeout=1)
                with socket.create_connection(("127.0.0.1", port), timeout=1):
                    break
            except (httpx.HTTPError, OSError):
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        yield p
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        shutil.rmtree(logs, ignore_errors=True)
