"""One real kube-apiserver + etcd per test module (tests/e2e/run-apiserver.sh), each in its
own run directory on its own free loopback ports, so that concurrent test runs never stop
or reuse each other's API server. The build and the PKI are shared (made once, under a lock,
in ``K8S_WORKDIR``, default ``~/.cache/k8s-apiserver``).

Where the harness cannot run (not root), the tests that need it skip and say why; under CI
(``CI`` set), where ``.ci/run`` has installed what it needs, a failure to build or start it
fails the test instead of skipping it. A start that does not end with a serving API server
(etcd or kube-apiserver dead, or not ready within ``READY_WAIT`` seconds) is a failed start.
"""

from __future__ import annotations

import atexit
import os
import shutil
import socket
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import NoReturn

from tests import support

HARNESS = Path(__file__).parent / "e2e" / "run-apiserver.sh"
WORKDIR = Path(os.environ.get("K8S_WORKDIR", Path.home() / ".cache" / "k8s-apiserver"))
PKI = WORKDIR / "pki"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class ApiServer:
    """A harness instance: ``start()`` (again after ``stop()`` keeps its etcd data),
    ``kubeconfig`` for clients, ``env`` for running the harness by hand."""

    run_dir: Path
    controllers: str = ""
    env: dict[str, str] = field(init=False)

    def __post_init__(self) -> None:
        self.env = {
            **os.environ,
            "K8S_WORKDIR": str(WORKDIR),
            "RUN_DIR": str(self.run_dir),
            "API_PORT": str(free_port()),
            "ETCD_PORT": str(free_port()),
            "ETCD_PEER_PORT": str(free_port()),
        }
        if self.controllers:
            self.env["CONTROLLERS"] = self.controllers

    @property
    def kubeconfig(self) -> str:
        return str(self.run_dir / "kubeconfig")

    def start(self, timeout: float = 1800) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["bash", str(HARNESS)], env=self.env, capture_output=True, text=True, timeout=timeout
        )

    def stop(self) -> None:
        subprocess.run(["bash", str(HARNESS), "stop"], env=self.env, capture_output=True, timeout=60)

    def log(self, name: str = "kube-apiserver") -> str:
        path = self.run_dir / "run" / f"{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""


def unavailable(why: str) -> NoReturn:
    """Skip, saying why; under CI, where the harness's tools are installed, fail instead."""
    support.unavailable(f"the real API server: {why}")


def started(prefix: str, controllers: str = "") -> ApiServer:
    """A fresh API server on an empty etcd, in a new run directory (removed by ``finish``).

    A free port is only free when it is looked at: if another process takes one before etcd
    or the API server binds it, the start is tried again on new ports (three times in all).
    Whatever happens to the test process, its servers are stopped when it exits."""
    if os.geteuid() != 0:
        unavailable("the API server harness installs Debian packages and needs root")
    tail = ""
    for _ in range(3):
        server = ApiServer(Path(tempfile.mkdtemp(prefix=f"{prefix}-")), controllers)
        done = server.start()
        if done.returncode == 0:
            atexit.register(_stop_if_running, server)
            return server
        tail = (done.stdout + done.stderr)[-1500:]
        finish(server)
        if "address already in use" not in tail.lower():
            break
    unavailable(f"could not build or start kube-apiserver: {tail}")


def _stop_if_running(server: ApiServer) -> None:
    if server.run_dir.exists():  # not finished yet
        finish(server)


def finish(server: ApiServer) -> None:
    server.stop()
    shutil.rmtree(server.run_dir, ignore_errors=True)
