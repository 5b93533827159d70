"""A test-side model of Linkerd's proxy-init: the nat rules it installs for the flags a
``linkerd-init`` container is given, and which iptables backend it installs them with.

Learnt from linkerd/linkerd2-proxy-init (``proxy-init/cmd/root.go`` and
``pkg/iptables/iptables.go``), the same at the versions Linkerd 2.16, 2.19 and 2.20 run
(proxy-init v2.4.1, v2.4.3 and, inside the 2.20 proxy image, v2.4.9): a chain
``PROXY_INIT_REDIRECT`` from PREROUTING (inbound: ignored ports and source subnets return,
the rest is redirected to the proxy's inbound port) and a chain ``PROXY_INIT_OUTPUT`` from
OUTPUT (outbound: the proxy's own user and group and loopback return, ignored ports return,
the rest is redirected to its outbound port). Port lists are cut into ``multiport`` rules
of at most 15 port references (a range counts two). Without ``--firewall-bin-path`` (or
``--iptables-mode``) it runs ``iptables-legacy``; ``iptables-nft`` selects nf_tables.

proxy-init runs one ``iptables -t nat -A ...`` command per rule; the same rules are written
here as one ``iptables-restore`` input, loaded with that backend's restore command.
"""

from __future__ import annotations

from dataclasses import dataclass, field

MULTIPORT_LIMIT = 15
BACKENDS = {"iptables-legacy": "legacy", "iptables-nft": "nft", "iptables": "plain"}


@dataclass
class Flags:
    incoming: int = -1
    outgoing: int = -1
    uid: int = -1
    gid: int = -1
    inbound_ignore: list[str] = field(default_factory=list)
    outbound_ignore: list[str] = field(default_factory=list)
    subnets: list[str] = field(default_factory=list)
    firewall_bin: str = ""
    mode: str = ""
    ipv6: bool = True


def parse(args: list[str]) -> Flags:
    """proxy-init's command line (cobra flags: ``--flag value`` or ``--flag=value``)."""
    flags = Flags()
    it = iter(args)
    for raw in it:
        name, eq, value = raw.partition("=")
        if name == "--ipv6":
            flags.ipv6 = (value or "true") == "true"
            continue
        if not eq:
            value = next(it)
        if name == "--incoming-proxy-port":
            flags.incoming = int(value)
        elif name == "--outgoing-proxy-port":
            flags.outgoing = int(value)
        elif name == "--proxy-uid":
            flags.uid = int(value)
        elif name == "--proxy-gid":
            flags.gid = int(value)
        elif name == "--inbound-ports-to-ignore":
            flags.inbound_ignore += [p for p in value.split(",") if p]
        elif name == "--outbound-ports-to-ignore":
            flags.outbound_ignore += [p for p in value.split(",") if p]
        elif name == "--subnets-to-ignore":
            flags.subnets += [s.strip() for s in value.split(",") if s.strip()]
        elif name == "--firewall-bin-path":
            flags.firewall_bin = value
        elif name == "--iptables-mode":
            flags.mode = value
        elif name in ("--firewall-save-bin-path", "--log-format", "--log-level", "--timeout-close-wait-secs"):
            pass
        else:
            raise ValueError(f"proxy-init has no flag {name}")
    return flags


def backend(flags: Flags) -> str:
    """legacy, nft or plain: which iptables proxy-init runs."""
    if flags.mode:
        return flags.mode
    if flags.firewall_bin in ("", "iptables-legacy"):
        return "legacy"
    if flags.firewall_bin not in BACKENDS:
        raise ValueError(f"--firewall-bin-path {flags.firewall_bin!r} is refused by proxy-init")
    return BACKENDS[flags.firewall_bin]


def _destination(item: str) -> tuple[str, int]:
    lo, _, hi = item.partition("-")
    lo_n, hi_n = int(lo), int(hi or lo)
    if not 0 < lo_n <= hi_n < 65536:
        raise ValueError(f"invalid port range {item!r}")
    return (str(lo_n), 1) if lo_n == hi_n else (f"{lo_n}:{hi_n}", 2)


def _multiport(items: list[str]) -> list[list[str]]:
    """The port lists of the ``multiport`` rules, at most 15 references each."""
    groups: list[list[str]] = []
    current: list[str] = []
    count = 0
    for item in items:
        dest, weight = _destination(item)
        if count + weight > MULTIPORT_LIMIT:
            groups.append(current)
            current, count = [], 0
        current.append(dest)
        count += weight
    if current:
        groups.append(current)
    return groups


def rules(flags: Flags) -> str:
    """The nat table proxy-init leaves behind, as ``iptables-restore`` input."""
    redirect, output = "PROXY_INIT_REDIRECT", "PROXY_INIT_OUTPUT"
    lines = ["*nat", f":{redirect} - [0:0]", f":{output} - [0:0]"]

    def comment(text: str) -> str:
        return f'-m comment --comment "proxy-init/{text}"'

    for group in _multiport(flags.inbound_ignore):
        ports = ",".join(group)
        lines.append(
            f"-A {redirect} -p tcp -m multiport --dports {ports} -j RETURN {comment('ignore-port-' + ports)}"
        )
    for subnet in flags.subnets:
        lines.append(f"-A {redirect} -s {subnet} -j RETURN {comment('ignore-subnet-' + subnet)}")
    to_proxy = comment("redirect-all-incoming-to-proxy-port")
    lines.append(f"-A {redirect} -p tcp -j REDIRECT --to-ports {flags.incoming} {to_proxy}")
    lines.append(f"-A PREROUTING -j {redirect} {comment('install-proxy-init-prerouting')}")
    if flags.uid > 0:
        lines.append(
            f"-A {output} -m owner --uid-owner {flags.uid} -j RETURN {comment('ignore-proxy-user-id')}"
        )
    if flags.gid > 0:
        lines.append(
            f"-A {output} -m owner --gid-owner {flags.gid} -j RETURN {comment('ignore-proxy-group-id')}"
        )
    lines.append(f"-A {output} -o lo -j RETURN {comment('ignore-loopback')}")
    for group in _multiport(flags.outbound_ignore):
        ports = ",".join(group)
        lines.append(
            f"-A {output} -p tcp -m multiport --dports {ports} -j RETURN {comment('ignore-port-' + ports)}"
        )
    to_proxy = comment("redirect-all-outgoing-to-proxy-port")
    lines.append(f"-A {output} -p tcp -j REDIRECT --to-ports {flags.outgoing} {to_proxy}")
    lines.append(f"-A OUTPUT -j {output} {comment('install-proxy-init-output')}")
    lines.append("COMMIT")
    return "\n".join(lines) + "\n"


RESTORE = {"legacy": "iptables-legacy-restore", "nft": "iptables-nft-restore", "plain": "iptables-restore"}
LIST = {"legacy": "iptables-legacy", "nft": "iptables-nft", "plain": "iptables"}
