"""istio-init's rules for real, at each Istio version, on each firewall backend it can use.

The flags we render for ``istio-init`` (``istio.render``, from the version's control plane and
the backend the decision chose) are turned into the rules ``istio-iptables`` installs by a
test-side model (``tests/istio_rules.py``), itself checked here against ``istio-iptables``'
and ``istio-nftables``' own goldens of each version. Those rules are then loaded with the
real ``iptables-legacy-restore``, ``iptables-nft-restore`` or ``nft -f`` in a network
namespace this test creates, joined to a "peer" namespace by a veth pair, and real TCP
connections show where traffic lands: inbound to the proxy's 15006, the app's outbound to
15001, and the skip ports, the health port and the proxy's own traffic left alone.

Needs root, iproute2, iptables and nftables; without them it skips saying why, but under CI
(``CI`` set) a missing tool or privilege fails (``tests.support.unavailable``). Only the
machine's own limits skip there, said as such: a kernel that refuses network namespaces, or
a trivial rule of the backend in one (probed before any rule of ours).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests import netns as ns
from tests.istio_rules import Capture, from_args, iptables, nftables, restore_text
from tests.upstream.istiocp import VERSIONS, facts, injector_map, injector_values, mesh_map
from webhook.core import ProxyResources
from webhook.dataplane import istio
from webhook.dataplane.base import Build
from webhook.loading import parse_policy
from webhook.reasons import Mode, ResourceSource
from webhook.workload import WorkloadKey

POD_IP, PEER_IP = "10.252.0.2", "10.252.0.1"
APP_UID, PROXY_UID = 1000, 1337
POLICY = parse_policy("proxy: {flavour: istio}")

# ---------------------------------------------------------------- the model, against Istio's goldens

RULE_CASES = [
    (v, tool, name) for v in VERSIONS for tool, cases in facts(v)["rules"].items() for name in cases
]


@pytest.mark.parametrize(("version", "tool", "name"), RULE_CASES, ids=["-".join(c) for c in RULE_CASES])
def test_the_model_installs_what_istio_iptables_installs(version, tool, name):
    recorded = facts(version)["rules"][tool][name]
    capture = Capture(**recorded["config"])
    major, minor = map(int, version.split("."))
    model = iptables((major, minor), capture) if tool == "istio-iptables" else nftables(capture)
    assert model == recorded["rules"], recorded["source"]


def test_every_version_is_modelled_and_nftables_from_1_28():
    assert {v for v, tool, _ in RULE_CASES if tool == "istio-iptables"} == set(VERSIONS)
    assert {v for v, tool, _ in RULE_CASES if tool == "istio-nftables"} == {"1.28", "1.30"}


# ---------------------------------------------------------------- the flags we render

SKIPS = {
    "mesh-injector.io/skip-inbound-ports": "8081,7000-7002",
    "mesh-injector.io/skip-outbound-ports": "9091",
}


def init_args(version: str, firewall: str, native_nftables: bool) -> list[str]:
    """istio-init's flags as we render them for a pod with skip ports, from the version's
    control plane (its chart's values; nativeNftables as given), on ``firewall``."""
    values = injector_values(version, values={"global.nativeNftables": native_nftables})
    maps = {}
    for doc in (injector_map(values), mesh_map()):
        maps[(doc["metadata"]["namespace"], doc["metadata"]["name"])] = doc["data"]
    plane = istio.control_plane(maps, POLICY)
    assert plane.version == version
    build = Build(
        mode=Mode.IPTABLES,
        native=True,
        protocol="http",
        resources=ProxyResources(
            cpu_request=0.1,
            memory_request=128 * 2**20,
            cpu_limit=None,
            memory_limit=None,
            source=ResourceSource.PROFILE,
            detail="test",
        ),
        init="rules",
        skip_inbound=((7000, 7002), (8081, 8081)),
        skip_outbound=((9091, 9091),),
        workload=WorkloadKey("shop", "Deployment", "web"),
        control=plane.config,
        firewall=firewall,  # type: ignore[arg-type]
    )
    pod = {
        "metadata": {"name": "web", "annotations": SKIPS},
        "spec": {"containers": [{"name": "web", "image": "w"}]},
    }
    (init,) = istio.render(build, pod, POLICY).inits
    return init["args"]


# (version, backend the decision chose, the control plane's nativeNftables, how it loads)
RUNS = [
    ("1.23", "legacy", False, "iptables-legacy-restore"),
    ("1.28", "nft", False, "iptables-nft-restore"),
    ("1.28", "legacy", False, "iptables-legacy-restore"),
    ("1.28", "nft", True, "nft"),
    ("1.30", "nft", True, "nft"),
    ("1.30", "nft", False, "iptables-nft-restore"),
    ("1.30", "legacy", True, "iptables-legacy-restore"),
]


@pytest.mark.parametrize(("version", "firewall", "native", "loader"), RUNS)
def test_the_flags_say_which_backend_and_every_skip_port(version, firewall, native, loader):
    args = init_args(version, firewall, native)
    capture = from_args(args)
    assert capture.native_nftables is (loader == "nft")
    # the backend istio-iptables uses: by itself (1.23 legacy, 1.28 on nft), or as told
    release = istio.KNOWN[version]
    told = capture.force_binary or ("nft" if capture.native_nftables else release.iptables)
    assert told == firewall
    assert capture.inbound_include == "*" and capture.outbound_ranges_include == "*"
    ranges = "7000-7002" if loader == "nft" else "7000:7002"  # nft's range, iptables' range
    assert capture.inbound_exclude == f"15090,15021,{ranges},8081,15020"
    assert capture.outbound_ports_exclude == "9091"


# ---------------------------------------------------------------- loaded for real


PROBES = {
    "iptables-legacy-restore": "*nat\n:MI_PROBE - [0:0]\nCOMMIT\n",
    "iptables-nft-restore": "*nat\n:MI_PROBE - [0:0]\nCOMMIT\n",
    "nft": "add table inet mi-probe\n",
}


def _loader_cmd(loader: str) -> list[str]:
    return ["nft", "-f", "-"] if loader == "nft" else [loader]


@pytest.fixture
def pod_net(tmp_path: Path):
    """A pod's network namespace and a peer's, a veth between them; listeners answering with
    their name: in the pod the proxy's ports, the app's, the health port; at the peer two."""
    with ns.pod_and_peer(
        tmp_path,
        "mi-i",
        (
            POD_IP,
            [
                "15001=proxy-outbound",
                "15006=proxy-inbound",
                "15021=agent-health",
                "8080=app",
                "8081=app-8081",
                "7001=app-7001",
            ],
        ),
        ((PEER_IP,), ["80=peer-80", "9091=peer-9091"]),
        tools=("iptables-legacy-restore", "iptables-nft-restore", "nft"),
    ) as net:
        yield net


def _connect(net: dict[str, Any], where: str, host: str, port: int, uid: int) -> str:
    return ns.connect(net, net[where], host, port, uid)


def _load(net: dict[str, Any], loader: str, text: str) -> None:
    probe = ns.run("ip", "netns", "exec", net["pod"], *_loader_cmd(loader), input=PROBES[loader], check=False)
    if probe.returncode != 0:
        pytest.skip(
            f"this machine refuses even a trivial {loader} rule in a network namespace (environmental, "
            f"before any rule of ours): {probe.stderr.strip()}"
        )
    if loader == "nft":
        ns.run("ip", "netns", "exec", net["pod"], "nft", "delete", "table", "inet", "mi-probe")
    loaded = ns.run("ip", "netns", "exec", net["pod"], *_loader_cmd(loader), input=text, check=False)
    assert loaded.returncode == 0, f"{loader} refused the rules: {loaded.stderr}\n{text}"


def _listed(net: dict[str, Any], cmd: list[str]) -> str:
    return ns.run("ip", "netns", "exec", net["pod"], *cmd, check=False).stdout


@pytest.mark.parametrize(("version", "firewall", "native", "loader"), RUNS)
def test_the_rules_redirect_real_connections_on_that_backend(pod_net, version, firewall, native, loader):
    capture = from_args(init_args(version, firewall, native))
    major, minor = map(int, version.split("."))
    if loader == "nft":
        text = "\n".join(nftables(capture)) + "\n"
    else:
        text = restore_text(iptables((major, minor), capture))
    _load(pod_net, loader, text)
    # the rules are in the backend they were given to, and only there
    legacy = _listed(pod_net, ["iptables-legacy-save", "-t", "nat"])
    tables = _listed(pod_net, ["nft", "list", "ruleset"])
    if loader == "iptables-legacy-restore":
        assert "ISTIO_INBOUND" in legacy and "ISTIO_INBOUND" not in tables
    elif loader == "iptables-nft-restore":
        assert "ISTIO_INBOUND" in tables and "ISTIO_INBOUND" not in legacy
    else:
        assert "table inet istio-proxy-nat" in tables and "ISTIO_INBOUND" not in legacy
    # inbound: to the proxy's 15006, but the skip ports (a port and a range) and the health port
    assert _connect(pod_net, "peer", POD_IP, 8080, 0) == "proxy-inbound"
    assert _connect(pod_net, "peer", POD_IP, 8081, 0) == "app-8081"
    assert _connect(pod_net, "peer", POD_IP, 7001, 0) == "app-7001"
    assert _connect(pod_net, "peer", POD_IP, 15021, 0) == "agent-health"
    # outbound: the app's to the proxy's 15001, but the skip port; the proxy's own leave directly
    assert _connect(pod_net, "pod", PEER_IP, 80, APP_UID) == "proxy-outbound"
    assert _connect(pod_net, "pod", PEER_IP, 9091, APP_UID) == "peer-9091"
    assert _connect(pod_net, "pod", PEER_IP, 80, PROXY_UID) == "peer-80"
