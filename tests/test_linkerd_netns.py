"""Linkerd's linkerd-init, for real, at each supported version and with both firewall
backends: the flags we render for the pod, turned into the rules proxy-init installs for
them (``tests/proxyinit.py``, a model of linkerd2-proxy-init's source), loaded with the
backend proxy-init would run for those flags (``iptables-legacy-restore``, or
``iptables-nft-restore`` for ``--firewall-bin-path iptables-nft``) in a network namespace
this test creates, and proven with real TCP connections: the app's ports reach the proxy's
inbound port, the app's outbound connections its outbound port, and every port the pod's
skip annotations name reaches the app (or the peer) directly.

Needs root, iproute2 and Debian's iptables package (both backends): without them the tests
skip, or fail under CI (``CI`` set). Before our rules, a trivial rule is loaded with each
backend: only where that is refused (the machine's limit, not ours) do the tests skip,
saying so; a rule of ours that does not load fails.
"""

from __future__ import annotations

import time
from typing import Any

import jsonpatch
import pytest
import yaml

from tests import proxyinit
from tests.netns import connect, pod_and_peer, skip_unless_nat
from tests.netns import run as sh
from tests.support import GOLDEN
from webhook.admission import admit
from webhook.loading import load_snapshot, parse_policy

POLICY = parse_policy("", "test")
POD_IP, PEER_IP, PEER2_IP = "10.252.0.2", "10.252.0.1", "10.252.0.3"
APP_UID, PROXY_UID = 1000, 2102


def probe_both_backends(pod: str) -> None:
    for backend in ("legacy", "nft"):
        skip_unless_nat(pod, (proxyinit.RESTORE[backend],), backend)


@pytest.fixture(scope="module")
def netns(tmp_path_factory):
    with pod_and_peer(
        tmp_path_factory.mktemp("l5d-netns"),
        "l5d",
        (
            POD_IP,
            [
                "4143=proxy-inbound",
                "4140=proxy-outbound",
                "4191=proxy-admin",
                "8080=app",
                "8081=app-8081",
                "4567=app-4567",
                "3306=app-3306",
            ],
        ),
        ((PEER_IP, PEER2_IP), ["80=peer-80", "9091=peer-9091", "4568=peer-4568"]),
        tools=("iptables-legacy-restore", "iptables-nft-restore"),
        probe=probe_both_backends,
    ) as net:
        yield net


def linkerd_init(version: str, mode: str, annotations: dict[str, str]) -> dict[str, Any]:
    """The linkerd-init the admission core renders for an iptables-mode pod, under the
    version's control plane set to ``mode``."""
    snapshot = load_snapshot(
        policy=POLICY, now=time.time(), cluster=str(GOLDEN / "clusters" / f"linkerd-{version}.yaml")
    )
    key = ("linkerd", "linkerd-config")
    values = yaml.safe_load(snapshot.config_maps[key]["values"])
    values["proxyInit"]["iptablesMode"] = mode
    snapshot = snapshot.derive(config_maps={**snapshot.config_maps, key: {"values": yaml.safe_dump(values)}})
    obj = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": "web",
            "namespace": "shop",
            "annotations": {"mesh-injector.io/interception": "iptables", **annotations},
        },
        "spec": {"containers": [{"name": "web", "image": "web:1", "ports": [{"containerPort": 8080}]}]},
    }
    request = {"uid": "u", "operation": "CREATE", "kind": {"kind": "Pod"}, "namespace": "shop", "object": obj}
    out = admit(request, snapshot, POLICY)
    assert out.injected, out.explanation
    pod = jsonpatch.apply_patch(obj, out.patch)
    init = next(c for c in pod["spec"]["initContainers"] if c["name"] == "linkerd-init")
    return {"init": init, "annotations": pod["metadata"]["annotations"]}


def load(env: dict[str, Any], init: dict[str, Any]) -> str:
    """The rules proxy-init installs for ``init``'s flags, loaded in a clean nat table with
    the backend it would use; that backend."""
    flags = proxyinit.parse(init["args"])
    backend = proxyinit.backend(flags)
    for name in ("legacy", "nft"):  # a new pod's network namespace has empty tables
        sh("ip", "netns", "exec", env["pod"], proxyinit.LIST[name], "-t", "nat", "-F", check=False)
        sh("ip", "netns", "exec", env["pod"], proxyinit.LIST[name], "-t", "nat", "-X", check=False)
    loaded = sh(
        "ip",
        "netns",
        "exec",
        env["pod"],
        proxyinit.RESTORE[backend],
        input=proxyinit.rules(flags),
        check=False,
    )
    assert loaded.returncode == 0, loaded.stderr  # the trivial rule loaded: ours must too
    return backend


def installed(env: dict[str, Any], backend: str) -> str:
    return sh("ip", "netns", "exec", env["pod"], proxyinit.LIST[backend], "-t", "nat", "-S").stdout


SKIPS = {
    "mesh-injector.io/skip-inbound-ports": "8081",
    "mesh-injector.io/skip-outbound-ports": "9091",
}


@pytest.mark.parametrize("version", ["2.16", "2.19", "2.20"])
@pytest.mark.parametrize("mode", ["legacy", "nft"])
def test_linkerd_init_redirects_real_traffic_with_each_backend(netns, version: str, mode: str) -> None:
    rendered = linkerd_init(version, mode, SKIPS)
    init = rendered["init"]
    assert (version == "2.20") is (init.get("command") == ["/usr/lib/linkerd/linkerd2-proxy-init"])
    backend = load(netns, init)
    assert backend == mode
    other = {"legacy": "nft", "nft": "legacy"}[mode]
    assert "PROXY_INIT_REDIRECT" in installed(netns, mode)
    assert "PROXY_INIT_REDIRECT" not in installed(netns, other), f"the rules are not in {other}"
    pod, peer = netns["pod"], netns["peer"]
    # the app's port reaches the proxy's inbound port
    assert connect(netns, peer, POD_IP, 8080, 0) == "proxy-inbound"
    # the ports the pod's annotation says are skipped reach the app directly: ours, and
    # Linkerd's own (4567,4568); the proxy's admin port is never redirected (probes)
    inbound, outbound = (
        rendered["annotations"]["config.linkerd.io/skip-inbound-ports"],
        rendered["annotations"]["config.linkerd.io/skip-outbound-ports"],
    )
    assert (inbound, outbound) == ("4567,4568,8081", "4567,4568,9091")
    assert connect(netns, peer, POD_IP, 8081, 0) == "app-8081"
    assert connect(netns, peer, POD_IP, 4567, 0) == "app-4567"
    assert connect(netns, peer, POD_IP, 4191, 0) == "proxy-admin"
    # the app's outbound connections go to the proxy's outbound port, the proxy's own do not
    assert connect(netns, pod, PEER_IP, 80, APP_UID) == "proxy-outbound"
    assert connect(netns, pod, PEER_IP, 80, PROXY_UID) == "peer-80"
    # outbound skip ports leave directly; loopback inside the pod is not redirected
    assert connect(netns, pod, PEER_IP, 9091, APP_UID) == "peer-9091"
    assert connect(netns, pod, PEER_IP, 4568, APP_UID) == "peer-4568"
    assert connect(netns, pod, "127.0.0.1", 8080, APP_UID) == "app"


@pytest.mark.parametrize("mode", ["legacy", "nft"])
def test_the_pods_own_skip_ports_replace_linkerd_s_and_still_reach_the_app(netns, mode: str) -> None:
    """config.linkerd.io/skip-inbound-ports replaces the control plane's 4567,4568 (as
    Linkerd's injector does) and ours add to it: exactly what the annotation then says."""
    own = {"config.linkerd.io/skip-inbound-ports": "3306", "mesh-injector.io/skip-inbound-ports": "8081"}
    rendered = linkerd_init("2.20", mode, own)
    assert rendered["annotations"]["config.linkerd.io/skip-inbound-ports"] == "3306,8081"
    load(netns, rendered["init"])
    peer = netns["peer"]
    assert connect(netns, peer, POD_IP, 3306, 0) == "app-3306"
    assert connect(netns, peer, POD_IP, 8081, 0) == "app-8081"
    assert connect(netns, peer, POD_IP, 4567, 0) == "proxy-inbound"  # no longer skipped
    assert connect(netns, peer, POD_IP, 8080, 0) == "proxy-inbound"


@pytest.mark.parametrize("mode", ["legacy", "nft"])
def test_skipped_subnets_are_inbound_sources_left_alone(netns, mode: str) -> None:
    """config.linkerd.io/skip-subnets: connections from those sources reach the app, the
    others the proxy (proxy-init's --subnets-to-ignore matches inbound sources)."""
    rendered = linkerd_init("2.19", mode, {"config.linkerd.io/skip-subnets": f"{PEER2_IP}/32"})
    assert proxyinit.parse(rendered["init"]["args"]).subnets == [f"{PEER2_IP}/32"]
    load(netns, rendered["init"])
    peer = netns["peer"]
    assert connect(netns, peer, POD_IP, 8080, 0, source=PEER2_IP) == "app"
    assert connect(netns, peer, POD_IP, 8080, 0, source=PEER_IP) == "proxy-inbound"


def test_the_model_follows_proxy_init_s_flag_rules() -> None:
    """The model itself, against proxy-init's rules (no kernel needed)."""
    flags = proxyinit.parse(
        ["--incoming-proxy-port", "4143", "--outgoing-proxy-port=4140", "--proxy-uid", "2102"]
    )
    assert proxyinit.backend(flags) == "legacy"
    assert proxyinit.backend(proxyinit.parse(["--firewall-bin-path", "iptables-nft"])) == "nft"
    with pytest.raises(ValueError, match="refused"):
        proxyinit.backend(proxyinit.parse(["--firewall-bin-path", "/sbin/xtables"]))
    # 15 port references per multiport rule; a range counts two
    ports = [str(p) for p in range(1, 14)] + ["100-200", "300"]
    groups = proxyinit._multiport(ports)
    assert groups == [[*map(str, range(1, 14)), "100:200"], ["300"]]
    text = proxyinit.rules(
        proxyinit.parse(["--inbound-ports-to-ignore", "4190,4191", "--incoming-proxy-port", "4143"])
    )
    assert "-A PROXY_INIT_REDIRECT -p tcp -m multiport --dports 4190,4191 -j RETURN" in text
