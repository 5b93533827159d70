"""The iptables fallback, for real: the ruleset mesh-init carries, loaded with the real
iptables-restore inside a network namespace, proven with real TCP connections.

Two namespaces joined by a veth pair: "pod" (the meshed pod) and "peer" (another host).
Listeners answer with their own name, so each connection tells where it really arrived.
Each backend mesh-init can be given is proven, in its own pair of namespaces: the decision
(the policy's ``proxy.generic.firewall`` here, no node being known to lack it) makes
mesh-init run ``iptables-legacy-restore`` or ``iptables-nft-restore`` (both from Debian's
iptables), and the rules must land in that backend's tables and not in the other's. The
test's own ``iptables-restore`` and ``iptables`` (the trivial rule, flushing, listing) are
that backend's too, put first on the PATH.

Needs root, iproute2 and iptables (.ci/run installs them): without them the tests skip, or
fail under CI (``CI`` set). Before our rules, a trivial rule is loaded with the same
backend: only where even that is refused (a kernel or container without netfilter in
network namespaces, which is the machine's, not ours) do the tests skip, saying so. An
error loading our own rules is a failure.
"""

from __future__ import annotations

import os
import shutil

import pytest

from tests.netns import connect, pod_and_peer, skip_unless_nat
from tests.netns import run as sh
from tests.support import unavailable
from webhook.admission import admit
from webhook.cluster.snapshot import build_snapshot
from webhook.loading import parse_policy

# the generic flavour: mesh-init carries the ruleset we render (the meshes' init images
# render their own; tests/test_flavours.py checks the flags they are given), loaded with the
# backend the policy asks for
BACKENDS = ("legacy", "nft")
GENERIC = {
    backend: parse_policy(
        "proxy: {flavour: generic, image: proxy:1, initImage: proxy-init:1, "
        f"generic: {{firewall: {backend}}}}}"
    )
    for backend in BACKENDS
}

POD_IP, PEER_IP = "10.251.0.2", "10.251.0.1"  # addresses inside namespaces this test creates
APP_UID, PROXY_UID = 1000, 2102


def shim(directory, backend: str) -> dict[str, str]:
    """An environment whose ``iptables-restore`` and ``iptables`` are ``backend``'s (the
    multi-call binaries take the applet from the name they are called by)."""
    directory.mkdir()
    for name in ("iptables-restore", "iptables"):
        real = name.replace("iptables", f"iptables-{backend}", 1)
        found = shutil.which(real)
        if found is None:
            unavailable(f"{real} is not installed (apt-get install iproute2 iptables)")
        (directory / name).symlink_to(found)
    return {**os.environ, "PATH": f"{directory}:{os.environ.get('PATH', '')}"}


@pytest.fixture(scope="module", params=BACKENDS)
def netns(request, tmp_path_factory):
    backend = request.param
    d = tmp_path_factory.mktemp(f"netns-{backend}")
    env = shim(d / "bin", backend)

    def probe(pod: str) -> None:
        skip_unless_nat(pod, ("iptables-restore", "--noflush"), backend, env)
        sh("ip", "netns", "exec", pod, "iptables", "-t", "nat", "-F", env=env)

    with pod_and_peer(
        d,
        "mi",
        (
            POD_IP,
            ["4143=proxy-inbound", "4140=proxy-outbound", "4191=proxy-admin", "8080=app", "8081=app-8081"],
        ),
        ((PEER_IP,), ["80=peer-80", "9091=peer-9091"]),
        tools=(),
        probe=probe,
    ) as net:
        yield {**net, "env": env, "backend": backend}


def mesh_init_of(netns: dict, annotations: dict[str, str]) -> dict:
    """The mesh-init container the real admission core builds for an iptables-mode pod, with
    the backend this pair of namespaces is for: it runs that backend's iptables-restore."""
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": "web",
            "annotations": {
                "mesh-injector.io/inject": "enabled",
                "mesh-injector.io/interception": "iptables",
                **annotations,
            },
        },
        "spec": {"containers": [{"name": "app", "image": "app", "ports": [{"containerPort": 8080}]}]},
    }
    out = admit(
        {"uid": "u", "operation": "CREATE", "kind": {"kind": "Pod"}, "namespace": "shop", "object": pod},
        build_snapshot(),
        GENERIC[netns["backend"]],
    )
    assert out.pod is not None and out.firewall == netns["backend"], out.explanation
    init = next(c for c in out.pod["spec"]["initContainers"] if c["name"] == "mesh-init")
    assert f"| iptables-{netns['backend']}-restore --noflush" in init["command"][-1]
    return init


def load(netns: dict, init: dict, rules: str) -> None:
    """Run exactly what the init container runs, with the same environment, in the pod's
    network namespace, against the backend under test; any error is ours (the fixture has
    shown that this backend works here)."""
    loaded = sh(
        "ip",
        "netns",
        "exec",
        netns["pod"],
        *init["command"],
        check=False,
        env={**netns["env"], "MESH_IPTABLES_RULES": rules},
    )
    assert loaded.returncode == 0, f"iptables-{netns['backend']}: {loaded.stderr}"


def fresh_nat(netns: dict) -> None:
    """mesh-init runs once, against the empty nat table of a new pod: start from one again."""
    sh("ip", "netns", "exec", netns["pod"], "iptables", "-t", "nat", "-F", env=netns["env"])
    sh("ip", "netns", "exec", netns["pod"], "iptables", "-t", "nat", "-X", env=netns["env"])


def test_ruleset_redirects_real_traffic(netns):
    init = mesh_init_of(
        netns, {"mesh-injector.io/skip-inbound-ports": "8081", "mesh-injector.io/skip-outbound-ports": "9091"}
    )
    rules = next(e["value"] for e in init["env"] if e["name"] == "MESH_IPTABLES_RULES")
    fresh_nat(netns)
    load(netns, init, rules)
    listed = sh("ip", "netns", "exec", netns["pod"], "iptables", "-t", "nat", "-S", env=netns["env"]).stdout
    assert "-A MESH_OUTBOUND -m owner --uid-owner 2102 -j RETURN" in listed
    other = {"legacy": "nft", "nft": "legacy"}[netns["backend"]]
    elsewhere = sh("ip", "netns", "exec", netns["pod"], f"iptables-{other}", "-t", "nat", "-S", check=False)
    assert "MESH_OUTBOUND" not in elsewhere.stdout, "the rules live in the backend under test"

    pod, peer = netns["pod"], netns["peer"]
    # inbound traffic to the app port arrives at the proxy's inbound port
    assert connect(netns, peer, POD_IP, 8080, 0) == "proxy-inbound"
    # skip-inbound-ports reach the app directly; so does the proxy's admin port (probes)
    assert connect(netns, peer, POD_IP, 8081, 0) == "app-8081"
    assert connect(netns, peer, POD_IP, 4191, 0) == "proxy-admin"
    # outbound traffic from the app's UID goes to the proxy's outbound port
    assert connect(netns, pod, PEER_IP, 80, APP_UID) == "proxy-outbound"
    # the proxy's own traffic is not redirected (no loop)
    assert connect(netns, pod, PEER_IP, 80, PROXY_UID) == "peer-80"
    # skip-outbound-ports leave directly
    assert connect(netns, pod, PEER_IP, 9091, APP_UID) == "peer-9091"
    # loopback inside the pod is not looped back into the proxy
    assert connect(netns, pod, "127.0.0.1", 8080, APP_UID) == "app"


def test_default_ruleset_loads_and_redirects_everything(netns):
    init = mesh_init_of(netns, {})
    rules = next(e["value"] for e in init["env"] if e["name"] == "MESH_IPTABLES_RULES")
    fresh_nat(netns)
    load(netns, init, rules)
    assert connect(netns, netns["peer"], POD_IP, 8081, 0) == "proxy-inbound"
    assert connect(netns, netns["pod"], PEER_IP, 9091, APP_UID) == "proxy-outbound"


def test_other_meshes_exclusions_reach_the_loaded_rules(netns):
    """Istio's and Linkerd's exclusion annotations, translated into our ruleset: the peer's
    address (an excluded range) and an excluded port leave directly, the rest is redirected."""
    init = mesh_init_of(
        netns,
        {
            "traffic.sidecar.istio.io/excludeOutboundIPRanges": f"{PEER_IP}/32",
            "config.linkerd.io/skip-inbound-ports": "8081",
        },
    )
    rules = next(e["value"] for e in init["env"] if e["name"] == "MESH_IPTABLES_RULES")
    assert f"-A MESH_OUTBOUND -d {PEER_IP}/32 -j RETURN" in rules
    fresh_nat(netns)
    load(netns, init, rules)
    pod, peer = netns["pod"], netns["peer"]
    assert connect(netns, pod, PEER_IP, 80, APP_UID) == "peer-80"  # the excluded range
    assert connect(netns, peer, POD_IP, 8081, 0) == "app-8081"  # Linkerd's skip-inbound-ports
    assert connect(netns, peer, POD_IP, 8080, 0) == "proxy-inbound"


def test_linkerds_skip_subnets_leave_inbound_sources_alone(netns):
    """config.linkerd.io/skip-subnets is proxy-init's --subnets-to-ignore: inbound connections
    from those sources reach the app directly. Translated into our ruleset it is a rule on the
    source in the inbound chain: the peer (in the range) reaches the app port directly, while
    the app's own outbound connections to the same peer still go to the proxy (it is not a
    destination exclusion)."""
    init = mesh_init_of(netns, {"config.linkerd.io/skip-subnets": f"{PEER_IP}/32"})
    rules = next(e["value"] for e in init["env"] if e["name"] == "MESH_IPTABLES_RULES")
    assert f"-A MESH_INBOUND -s {PEER_IP}/32 -j RETURN" in rules and f"-d {PEER_IP}/32" not in rules
    fresh_nat(netns)
    load(netns, init, rules)
    pod, peer = netns["pod"], netns["peer"]
    assert connect(netns, peer, POD_IP, 8080, 0) == "app"  # from the skipped source: the app itself
    assert connect(netns, pod, PEER_IP, 80, APP_UID) == "proxy-outbound"  # to it: through the proxy
