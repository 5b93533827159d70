"""A test-side model of what ``istio-iptables`` installs in a pod's network namespace, from
the flags ``istio-init`` is given: the IPv4 ``nat`` rules of REDIRECT mode, as iptables rules
(1.23, 1.28, 1.30) or, with ``--native-nftables`` (1.27 on), as nftables rules.

Written from ``tools/istio-iptables/pkg/capture/run.go`` and
``tools/istio-nftables/pkg/capture/run.go`` at each tag, and checked against their own
goldens (recorded in ``tests/upstream/facts-istio-<version>.yaml``, key ``rules``) by
``tests/test_istio_netns.py``, which then loads what the model gives for the flags we render
with the real ``iptables-legacy-restore``, ``iptables-nft-restore`` and ``nft -f``.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, replace

NAT = "inet istio-proxy-nat"


@dataclass(frozen=True)
class Capture:
    """istio-iptables' configuration, as its flags set it (its test's defaults elsewhere)."""

    proxy_port: str = "15001"
    inbound_port: str = "15006"
    tunnel_port: str = "15008"
    uid: str = "1337"
    gid: str = ""  # defaults to the uid
    inbound_include: str = ""
    inbound_exclude: str = ""
    outbound_ranges_include: str = ""
    outbound_ranges_exclude: str = ""
    outbound_ports_include: str = ""
    outbound_ports_exclude: str = ""
    native_nftables: bool = False
    force_binary: str = ""

    @property
    def gids(self) -> list[str]:
        return split(self.gid or self.uid)


FLAGS = {
    "-p": "proxy_port",
    "-z": "inbound_port",
    "-u": "uid",
    "-g": "gid",
    "-b": "inbound_include",
    "-d": "inbound_exclude",
    "-i": "outbound_ranges_include",
    "-x": "outbound_ranges_exclude",
    "-q": "outbound_ports_include",
    "-o": "outbound_ports_exclude",
    "--force-iptables-binary": "force_binary",
}


def from_args(args: list[str]) -> Capture:
    """The configuration istio-iptables reads from ``args`` (an istio-init's, command first)."""
    assert args[0] == "istio-iptables", args
    found: dict[str, object] = {}
    rest = list(args[1:])
    while rest:
        flag = rest.pop(0)
        if flag == "--native-nftables":
            found["native_nftables"] = True
        elif flag in FLAGS:
            found[FLAGS[flag]] = rest.pop(0)
        elif flag == "-m":
            assert rest.pop(0) == "REDIRECT"
        else:
            assert flag.startswith("--log_output_level="), flag
    return replace(Capture(), **found)  # type: ignore[arg-type]


def split(text: str) -> list[str]:
    return [p.strip() for p in text.split(",") if p.strip()]


def _v4(text: str) -> list[str]:
    return [c for c in split(text) if c != "*" and ipaddress.ip_network(c, strict=False).version == 4]


def iptables(version: tuple[int, int], c: Capture) -> list[str]:
    """The nat table's chains (``-N``) and rules (``-A``), in the order istio-iptables adds them."""
    rules = ["-N ISTIO_INBOUND", "-N ISTIO_REDIRECT", "-N ISTIO_IN_REDIRECT", "-N ISTIO_OUTPUT"]
    rules += [
        f"-A ISTIO_INBOUND -p tcp --dport {c.tunnel_port} -j RETURN",
        f"-A ISTIO_REDIRECT -p tcp -j REDIRECT --to-ports {c.proxy_port}",
        f"-A ISTIO_IN_REDIRECT -p tcp -j REDIRECT --to-ports {c.inbound_port}",
    ]
    if c.inbound_include:
        rules.append("-A PREROUTING -p tcp -j ISTIO_INBOUND")
        if c.inbound_include == "*":
            rules += [f"-A ISTIO_INBOUND -p tcp --dport {p} -j RETURN" for p in split(c.inbound_exclude)]
            rules.append("-A ISTIO_INBOUND -p tcp -j ISTIO_IN_REDIRECT")
        else:
            rules += [
                f"-A ISTIO_INBOUND -p tcp --dport {p} -j ISTIO_IN_REDIRECT" for p in split(c.inbound_include)
            ]
    # 1.23 sends only TCP to ISTIO_OUTPUT; later versions everything (DNS over UDP)
    rules.append("-A OUTPUT -p tcp -j ISTIO_OUTPUT" if version < (1, 28) else "-A OUTPUT -j ISTIO_OUTPUT")
    rules += [f"-A ISTIO_OUTPUT -p tcp --dport {p} -j RETURN" for p in split(c.outbound_ports_exclude)]
    rules.append("-A ISTIO_OUTPUT -o lo -s 127.0.0.6/32 -j RETURN")
    for flag, ids in (("--uid-owner", split(c.uid)), ("--gid-owner", c.gids)):
        for i in ids:
            rules += [
                f"-A ISTIO_OUTPUT -o lo ! -d 127.0.0.1/32 -p tcp ! --dport {c.tunnel_port} "
                f"-m owner {flag} {i} -j ISTIO_IN_REDIRECT",
                f"-A ISTIO_OUTPUT -o lo -m owner ! {flag} {i} -j RETURN",
                f"-A ISTIO_OUTPUT -m owner {flag} {i} -j RETURN",
            ]
    rules.append("-A ISTIO_OUTPUT -d 127.0.0.1/32 -j RETURN")
    rules += [f"-A ISTIO_OUTPUT -d {cidr} -j RETURN" for cidr in _v4(c.outbound_ranges_exclude)]
    rules += [
        f"-A ISTIO_OUTPUT -p tcp --dport {p} -j ISTIO_REDIRECT" for p in split(c.outbound_ports_include)
    ]
    if c.outbound_ranges_include.strip() == "*":
        rules.append("-A ISTIO_OUTPUT -j ISTIO_REDIRECT")
    else:
        rules += [f"-A ISTIO_OUTPUT -d {cidr} -j ISTIO_REDIRECT" for cidr in _v4(c.outbound_ranges_include)]
    return rules


def restore_text(rules: list[str]) -> str:
    """The rules as ``iptables-restore`` reads them."""
    chains = [f":{r[3:]} - [0:0]" for r in rules if r.startswith("-N ")]
    return "\n".join(["*nat", *chains, *(r for r in rules if not r.startswith("-N ")), "COMMIT", ""])


def nftables(c: Capture) -> list[str]:
    """The commands istio-iptables --native-nftables gives ``nft`` (its knftables transaction)."""
    out = [f"add table {NAT}", f"flush table {NAT}"]
    if c.inbound_include:
        out.append(f"add chain {NAT} prerouting {{ type nat hook prerouting priority -100 ; }}")
    out.append(f"add chain {NAT} output {{ type nat hook output priority -100 ; }}")
    out += [
        f"add chain {NAT} {chain}"
        for chain in ("istio-inbound", "istio-redirect", "istio-in-redirect", "istio-output")
    ]
    rule = f"add rule {NAT}"
    out += [
        f"{rule} istio-inbound meta l4proto tcp tcp dport {c.tunnel_port} counter return",
        f"{rule} istio-redirect meta l4proto tcp counter redirect to :{c.proxy_port}",
        f"{rule} istio-in-redirect meta l4proto tcp counter redirect to :{c.inbound_port}",
    ]
    if c.inbound_include:
        out.append(f"{rule} prerouting meta l4proto tcp counter jump istio-inbound")
        if c.inbound_include == "*":
            out += [
                f"{rule} istio-inbound meta l4proto tcp tcp dport {p} counter return"
                for p in split(c.inbound_exclude)
            ]
            out.append(f"{rule} istio-inbound meta l4proto tcp counter jump istio-in-redirect")
        else:
            out += [
                f"{rule} istio-inbound meta l4proto tcp tcp dport {p} counter jump istio-in-redirect"
                for p in split(c.inbound_include)
            ]
    out.append(f"{rule} output counter jump istio-output")
    for p in split(c.outbound_ports_exclude):
        out += [
            f"{rule} istio-output tcp dport {p} counter return",
            f"{rule} istio-output udp dport {p} counter return",
        ]
    out.append(f"{rule} istio-output oifname lo ip saddr 127.0.0.6/32 counter return")
    for key, ids in (("skuid", split(c.uid)), ("skgid", c.gids)):
        for i in ids:
            out += [
                f"{rule} istio-output oifname lo meta l4proto tcp ip daddr != 127.0.0.1/32 tcp dport != "
                f"{c.tunnel_port} {key} {i} counter jump istio-in-redirect",
                f"{rule} istio-output oifname lo {key} != {i} counter return",
                f"{rule} istio-output {key} {i} counter return",
            ]
    out.append(f"{rule} istio-output ip daddr 127.0.0.1/32 counter return")
    out += [f"{rule} istio-output ip daddr {cidr} counter return" for cidr in _v4(c.outbound_ranges_exclude)]
    out += [
        f"{rule} istio-output tcp dport {p} counter jump istio-redirect"
        for p in split(c.outbound_ports_include)
    ]
    if c.outbound_ranges_include.strip() == "*":
        out.append(f"{rule} istio-output counter jump istio-redirect")
    else:
        out += [
            f"{rule} istio-output ip daddr {cidr} counter jump istio-redirect"
            for cidr in _v4(c.outbound_ranges_include)
        ]
    return out
