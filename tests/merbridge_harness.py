"""Merbridge's real eBPF programs, built, loaded and fed as Merbridge itself does.

- ``build``/``load``: the programs in ``tests/merbridge/upstream`` compiled with Merbridge's
  own Makefile (``make compile MESH_MODE=… CNI_MODE=true``) and pinned with the ``bpftool``
  lines of its ``load-*`` targets, into a bpffs of the test's own. The one change is the
  build copy of ``headers/maps.h``: libbpf 1.x refuses its legacy map definitions, so they
  are rewritten as BTF-defined maps of the same types and sizes.
- What Merbridge's Go side writes into the maps, ported from its source: the controller's
  ``local_pod_ips`` entry for a pod (``controller/pod.go``: which pods it counts as meshed,
  ``parsePodConfigFromAnnotations``, the ``podConfig`` layout) and the CNI server's
  per-pod-network-namespace mark (``internal/cni-server``: an FNV-32a of the netns path, a
  listener on 39807 with that SO_MARK, ``mark_pod_ips_map[mark] = pod IP``). The CNI
  plugin's own filter (``pkg/cniplugin``: ``ignorePodIstio``) decides whether that happens.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import os
import re
import shutil
import struct
import subprocess
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

SOURCE = Path(__file__).parent / "merbridge" / "upstream" / "bpf"
CACHE = Path(os.environ.get("MERBRIDGE_CACHE", Path.home() / ".cache" / "mesh-injector" / "merbridge"))
TOOLS = ("clang", "bpftool", "make", "ip")
LOAD_TARGETS = ("load-connect", "load-sockops", "load-getsock", "load-redir", "load-bind")
# what each mode attaches to the cgroup (bind4 only where Merbridge's Makefile attaches it)
ATTACH = {
    "linkerd": (
        ("connect4", "connect/mb_sock_connect4"),
        ("sock_ops", "sockops"),
        ("getsockopt", "get_sockopts"),
        ("bind4", "bind"),
    ),
    "istio": (
        ("connect4", "connect/mb_sock_connect4"),
        ("sock_ops", "sockops"),
        ("getsockopt", "get_sockopts"),
    ),
}
MARK_PORT = 39807  # SOCK_IP_MARK_PORT
MAX_ITEMS = 20  # MaxItemLen
MESH_H = SOURCE / "headers" / "mesh.h"


def mesh_constants(mode: str) -> dict[str, int]:
    """SIDECAR_USER_ID, OUT_REDIRECT_PORT and IN_REDIRECT_PORT Merbridge compiles for ``mode``."""
    text = MESH_H.read_text()
    block = text.split(f"MESH == {mode.upper()}", 1)[1].split("#elif", 1)[0]
    return {k: int(v) for k, v in re.findall(r"#define (\w+) (\d+)", block)}


def missing_tools() -> list[str]:
    return [t for t in TOOLS if shutil.which(t) is None]


def _sh(*args: str, cwd: Path | None = None) -> str:
    done = subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=300)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(args)}: {(done.stderr or done.stdout).strip()[-800:]}")
    return done.stdout


def btf_maps(text: str) -> str:
    """``headers/maps.h`` with its ``struct bpf_elf_map __section("maps")`` definitions as
    BTF-defined maps (``__section(".maps")``, ``__uint(key, value)`` members)."""
    fields = {"type": "type", "size_key": "key_size", "size_value": "value_size", "max_elem": "max_entries"}

    def rewrite(m: re.Match[str]) -> str:
        members = []
        for line in m.group(2).splitlines():
            field = re.match(r"\s*\.(\w+)\s*=\s*(.*?),?\s*$", line)
            if field and field.group(1) in fields:
                members.append(f"    __uint({fields[field.group(1)]}, {field.group(2)});")
        return "struct {\n" + "\n".join(members) + f'\n}} {m.group(1)} __section(".maps");'

    legacy = re.compile(r'struct bpf_elf_map __section\("maps"\) (\w+) = \{(.*?)\};', re.S)
    out, n = legacy.subn(rewrite, text)
    if n == 0:
        raise RuntimeError("headers/maps.h: no legacy map definitions found")
    return out.replace(
        '#include "helpers.h"', '#include "helpers.h"\n#define __uint(name, val) int (*name)[val]', 1
    )


def _digest() -> str:
    h = hashlib.sha256()
    for path in sorted(SOURCE.rglob("*")):
        if path.is_file():
            h.update(path.relative_to(SOURCE).as_posix().encode() + path.read_bytes())
    h.update(_sh("clang", "--version").encode())
    return h.hexdigest()[:16]


class Programs:
    """Merbridge's programs for one mesh mode, compiled (cached) and pinned under ``bpffs``."""

    def __init__(self, mode: str, bpffs: Path, cgroup_root: Path) -> None:
        self.mode = mode
        self.build_dir = CACHE / _digest() / f"{mode}-cni"
        self.pins = bpffs / mode
        self.cgroup_root = cgroup_root

    def _make(self, *targets: str, dry: bool = False) -> str:
        flags = [
            f"PROG_MOUNT_PATH={self.pins}",
            f"MESH_MODE={self.mode}",
            f"CGROUP2_PATH={self.cgroup_root}",
            "CNI_MODE=true",
        ]
        return _sh("make", "-s", *(["-n"] if dry else []), "-C", str(self.build_dir), *targets, *flags)

    def build(self) -> None:
        """Compile into a directory of this run's own, then move it into the cache in one
        rename: a run building at the same time never sees (or removes) a half-built tree."""
        if (self.build_dir / "mb_connect.o").exists():
            return
        self.build_dir.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{self.build_dir.name}-", dir=self.build_dir.parent))
        final, work = self.build_dir, tmp / "src"
        try:
            shutil.copytree(SOURCE, work)
            for path in work.rglob("*"):
                path.chmod(0o755 if path.is_dir() else 0o644)
            maps = work / "headers" / "maps.h"
            maps.write_text(btf_maps(maps.read_text()))
            self.build_dir = work
            try:
                self._make("compile")
            finally:
                self.build_dir = final
            try:
                work.rename(final)
            except OSError:  # another run finished first: its build is the same
                if not (final / "mb_connect.o").exists():
                    raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    def load(self) -> None:
        """Pin the programs and maps with the bpftool lines of the Makefile's load targets."""
        self.pins.mkdir(parents=True, exist_ok=True)
        for target in LOAD_TARGETS:
            script = self._make(target, dry=True).replace("sudo ", "")
            subprocess.run(["bash", "-e", "-c", script], cwd=self.build_dir, check=True, capture_output=True)

    def attach(self, cgroup: Path) -> None:
        for kind, pin in ATTACH[self.mode]:
            _sh("bpftool", "cgroup", "attach", str(cgroup), kind, "pinned", str(self.pins / pin))
        _sh(
            "bpftool",
            "prog",
            "attach",
            "pinned",
            str(self.pins / "redir"),
            "msg_verdict",
            "pinned",
            str(self.pins / "sock_pair_map"),
        )

    def detach(self, cgroup: Path) -> None:
        for kind, pin in ATTACH[self.mode]:
            subprocess.run(
                ["bpftool", "cgroup", "detach", str(cgroup), kind, "pinned", str(self.pins / pin)],
                capture_output=True,
            )
        subprocess.run(
            [
                "bpftool",
                "prog",
                "detach",
                "pinned",
                str(self.pins / "redir"),
                "msg_verdict",
                "pinned",
                str(self.pins / "sock_pair_map"),
            ],
            capture_output=True,
        )

    def update(self, table: str, key: bytes, value: bytes) -> None:
        _sh(
            "bpftool",
            "map",
            "update",
            "pinned",
            str(self.pins / table),
            "key",
            "hex",
            *(f"{b:02x}" for b in key),
            "value",
            "hex",
            *(f"{b:02x}" for b in value),
        )

    def forget(self) -> None:
        """Empty the per-pod state (the CNI server's marks, the controller's pods, caches)."""
        for table in ("local_pod_ips", "mark_pod_ips_map", "cgroup_info_map", "cookie_original_dst"):
            path = self.pins / table
            out = subprocess.run(
                ["bpftool", "-j", "map", "dump", "pinned", str(path)], capture_output=True, text=True
            )
            for entry in json.loads(out.stdout or "[]"):
                key = entry.get("key")
                if isinstance(key, list):
                    subprocess.run(
                        ["bpftool", "map", "delete", "pinned", str(path), "key", "hex", *key],
                        capture_output=True,
                    )


# --- Merbridge's Go side, ported ----------------------------------------------------------


def ip_key(ip: str) -> bytes:
    """``linux.IP2Linux`` of an IPv4 address: the 16-byte, IPv4-mapped form of Go's ``net.ParseIP``."""
    return b"\0" * 10 + b"\xff\xff" + ipaddress.IPv4Address(ip).packed


def mark_of(netns_path: str) -> int:
    """``getMarkKeyOfNetns``: FNV-32a of the network namespace's path."""
    h = 0x811C9DC5
    for byte in netns_path.encode():
        h = ((h ^ byte) * 0x01000193) & 0xFFFFFFFF
    return h


def _containers(pod: Mapping[str, Any]) -> list[dict[str, Any]]:
    return [c for c in (pod.get("spec") or {}).get("containers") or [] if isinstance(c, dict)]


def controller_counts(pod: Mapping[str, Any], mode: str) -> bool:
    """``IsIstioInjectedSidecar`` / ``IsLinkerdInjectedSidecar``: the proxy among
    ``spec.containers`` (init containers are never looked at), beside another container."""
    proxy = {"istio": "istio-proxy", "linkerd": "linkerd-proxy"}[mode]
    containers = _containers(pod)
    return any(c.get("name") == proxy for c in containers) and len(containers) != 1


def cni_plugin_handles(pod: Mapping[str, Any]) -> bool:
    """``ignorePodIstio`` (every mode but Kuma's and OSM's), negated: more than one container,
    not ``sidecar.istio.io/inject`` false, ``sidecar.istio.io/status`` present, and no
    ``DISABLE_ENVOY`` on an istio-proxy container."""
    annotations = (pod.get("metadata") or {}).get("annotations") or {}
    for c in _containers(pod):
        if c.get("name") == "istio-proxy":
            env = {e.get("name"): e.get("value") for e in c.get("env") or []}
            if str(env.get("DISABLE_ENVOY", "")).lower() in ("1", "t", "true"):
                return False
    if len(_containers(pod)) <= 1:
        return False
    if str(annotations.get("sidecar.istio.io/inject", "")).lower() in ("0", "f", "false"):
        return False
    return "sidecar.istio.io/status" in annotations


def _ports(value: str) -> list[int]:
    out = []
    for item in value.split(","):
        if item.strip():
            # getPortsFromString parses the untrimmed item: " 25" is dropped, as there
            if re.fullmatch(r"\d+", item) and int(item) < 65536:
                out.append(int(item))
    return out


def _ranges(value: str) -> list[tuple[bytes, int]]:
    out = []
    for item in value.split(","):
        if item == "*":
            out.append((b"\0\0\0\0", 0))
        elif item.strip():
            try:
                net = ipaddress.ip_network(item, strict=False)  # untrimmed, as ParseCIDR is given it
            except ValueError:
                continue
            last4 = net.network_address.packed[-4:]
            out.append((last4, net.prefixlen))
    return out


def pod_config(annotations: Mapping[str, str]) -> bytes:
    """``parsePodConfigFromAnnotations`` into the ``podConfig`` struct (484 bytes)."""
    status = 15021
    if re.fullmatch(r"\d+", annotations.get("status.sidecar.istio.io/port", "")):
        status = int(annotations["status.sidecar.istio.io/port"])
    exclude_in = [15006, 15001, 15008, 15090, 15021, 15020, 15000]
    exclude_in += _ports(annotations.get("traffic.sidecar.istio.io/excludeInboundPorts", ""))
    exclude_out = _ports(annotations.get("traffic.sidecar.istio.io/excludeOutboundPorts", ""))
    include_in = _ports(annotations.get("traffic.sidecar.istio.io/includeInboundPorts", ""))
    include_out = _ports(annotations.get("traffic.sidecar.istio.io/includeOutboundPorts", ""))
    ex_ranges = _ranges(annotations.get("traffic.sidecar.istio.io/excludeOutboundIPRanges", ""))
    in_ranges = _ranges(annotations.get("traffic.sidecar.istio.io/includeOutboundIPRanges", ""))

    def cidrs(items: list[tuple[bytes, int]]) -> bytes:
        items = items[:MAX_ITEMS] + [(b"\0\0\0\0", 0)] * (MAX_ITEMS - min(len(items), MAX_ITEMS))
        return b"".join(net + struct.pack("<B3x", mask) for net, mask in items)

    def ports(items: list[int]) -> bytes:
        items = items[:MAX_ITEMS] + [0] * (MAX_ITEMS - min(len(items), MAX_ITEMS))
        return struct.pack(f"<{MAX_ITEMS}H", *items)

    out = struct.pack("<HH", status, 0) + cidrs(ex_ranges) + cidrs(in_ranges)
    out += ports(include_in) + ports(include_out) + ports(exclude_in) + ports(exclude_out)
    assert len(out) == 484
    return out
