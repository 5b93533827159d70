"""Network namespaces for the tests that run real traffic: a pair of them joined by a veth."""

from __future__ import annotations

import subprocess


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
