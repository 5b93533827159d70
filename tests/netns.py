"""Network namespaces for the tests that run real traffic: a pair of them joined by a veth, and
a pod's namespace beside a peer's with listeners that answer with their name."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from tests.support import unavailable


def sh(*args: str) -> None:
    subprocess.run(args, check=True, capture_output=True, timeout=60)


def join(a: tuple[str, str, str], b: tuple[str, str, str]) -> None:
    """A veth pair between two existing namespaces: (namespace, device, address/prefix) each,
    addressed and up."""
    sh("ip", "link", "add", a[1], "netns", a[0], "type", "veth", "peer", "name", b[1], "netns", b[0])
    for ns, dev, address in (a, b):
        sh("ip", "-n", ns, "addr", "add", address, "dev", dev)
        sh("ip", "-n", ns, "link", "set", dev, "up")


def fresh(*names: str) -> None:
    """Namespaces that exist anew, with loopback up (an earlier run's are deleted first)."""
    for ns in names:
        subprocess.run(["ip", "netns", "del", ns], capture_output=True)
        sh("ip", "netns", "add", ns)
        sh("ip", "-n", ns, "link", "set", "lo", "up")


# --- a pod's namespace and a peer's, with listeners, for the tests that load real rules ----

# Each listener answers every connection with its name and closes: which process a
# connection reached is what the test reads.
LISTENER = textwrap.dedent(
    """
    import socket, sys, threading
    def serve(port, name):
        s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("0.0.0.0", port)); s.listen(16)
        while True:
            c, _ = s.accept()
            c.sendall(name.encode()); c.close()
    for spec in sys.argv[1:]:
        port, name = spec.split("=")
        threading.Thread(target=serve, args=(int(port), name), daemon=True).start()
    print("ready", flush=True)
    threading.Event().wait()
    """
)
# A client as the uid given (the app's, the proxy's, root), from a source address if given.
CLIENT = textwrap.dedent(
    """
    import encodings.idna, os, socket, sys  # import all before giving up root (pyenv lives in /root)
    uid = int(sys.argv[3])
    source = sys.argv[4] if len(sys.argv) > 4 else None
    os.setgid(uid); os.setuid(uid)
    c = socket.socket()
    c.settimeout(5)
    if source:
        c.bind((source, 0))
    c.connect((sys.argv[1], int(sys.argv[2])))
    print(c.recv(100).decode())
    """
)
# a rule that only asks for the nat table in a new namespace: if this is refused, the
# machine has no netfilter for namespaces (nothing of ours has been tried yet)
TRIVIAL_NAT = "*nat\n:OUTPUT ACCEPT [0:0]\n-A OUTPUT -p tcp --dport 9 -j RETURN\nCOMMIT\n"


def skip_unless_nat(
    pod: str, restore: tuple[str, ...], backend: str, env: dict[str, str] | None = None
) -> None:
    """Skip, saying it is the machine's limit, where ``restore`` (an iptables-restore of
    ``backend``) refuses even a trivial nat rule in the namespace ``pod``."""
    probe = run("ip", "netns", "exec", pod, *restore, check=False, input=TRIVIAL_NAT, env=env)
    if probe.returncode != 0:
        pytest.skip(
            f"this kernel refuses even a trivial nat rule with iptables-{backend} in a network "
            f"namespace (environmental, before any rule of ours): {probe.stderr.strip()}"
        )


def run(*cmd: str, check: bool = True, **kw: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(cmd), capture_output=True, text=True, check=check, timeout=30, **kw)


@contextmanager
def pod_and_peer(
    directory: Path,
    prefix: str,
    pod: tuple[str, list[str]],
    peer: tuple[tuple[str, ...], list[str]],
    tools: tuple[str, ...],
    probe: Callable[[str], None] | None = None,
) -> Iterator[dict[str, Any]]:
    """A pod's network namespace at ``pod[0]`` and a peer's at the addresses ``peer[0]``, a
    veth between them, each running the listeners ``pod[1]``/``peer[1]`` (``"port=name"``);
    ``{"pod": ns, "peer": ns, "client": path}``, all removed afterwards. ``probe(pod_ns)``
    runs first, in the empty namespace, to skip where the machine itself refuses.

    Missing root or tools are ``unavailable`` (a failure under CI); a kernel that refuses
    network namespaces is the machine's limit, a skip that says so."""
    if os.geteuid() != 0:
        unavailable("needs root to create network namespaces")
    for tool in ("ip", *tools):
        if shutil.which(tool) is None:
            unavailable(f"{tool} is not installed (apt-get install iproute2 iptables nftables)")
    tag = uuid.uuid4().hex[:6]
    pod_ns, peer_ns = f"{prefix}-pod-{tag}", f"{prefix}-peer-{tag}"
    made = run("ip", "netns", "add", pod_ns, check=False)
    if made.returncode != 0:  # the machine's limit (a container without CAP_SYS_ADMIN), not ours
        pytest.skip(f"this machine refuses network namespaces (environmental): {made.stderr.strip()}")
    procs: list[subprocess.Popen[str]] = []
    try:
        if probe is not None:
            probe(pod_ns)
        run("ip", "netns", "add", peer_ns)
        pod_dev, peer_dev = f"v{tag}a", f"v{tag}b"
        run("ip", "link", "add", pod_dev, "type", "veth", "peer", "name", peer_dev)
        run("ip", "link", "set", pod_dev, "netns", pod_ns)
        run("ip", "link", "set", peer_dev, "netns", peer_ns)
        run("ip", "-n", pod_ns, "addr", "add", f"{pod[0]}/24", "dev", pod_dev)
        for ip in peer[0]:
            run("ip", "-n", peer_ns, "addr", "add", f"{ip}/24", "dev", peer_dev)
        for ns, dev in ((pod_ns, pod_dev), (peer_ns, peer_dev)):
            run("ip", "-n", ns, "link", "set", dev, "up")
            run("ip", "-n", ns, "link", "set", "lo", "up")
        (directory / "listener.py").write_text(LISTENER)
        (directory / "client.py").write_text(CLIENT)
        os.chmod(directory, 0o755)
        for ns, specs in ((pod_ns, pod[1]), (peer_ns, peer[1])):
            p = subprocess.Popen(
                ["ip", "netns", "exec", ns, sys.executable, str(directory / "listener.py"), *specs],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            procs.append(p)
            assert p.stdout is not None and p.stdout.readline().strip() == "ready"
        yield {"pod": pod_ns, "peer": peer_ns, "client": directory / "client.py"}
    finally:
        for p in procs:
            p.kill()
            p.wait()
        run("ip", "netns", "del", pod_ns, check=False)
        run("ip", "netns", "del", peer_ns, check=False)


def connect(net: dict[str, Any], ns: str, host: str, port: int, uid: int, source: str | None = None) -> str:
    """The name of the listener a connection from namespace ``ns`` as ``uid`` reached."""
    cmd = [sys.executable, str(net["client"]), host, str(port), str(uid), *([source] if source else [])]
    out = run("ip", "netns", "exec", ns, *cmd, check=False)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()
