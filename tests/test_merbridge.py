"""ebpf mode, proven with Merbridge's real programs (tests/merbridge/, built with Debian's
clang, loaded with bpftool) on a pod that mesh-injector emitted, for Linkerd and Istio.

Two pods on one node: network namespaces joined by a veth pair, each with its own child of
the cgroup Merbridge's programs are attached to, its SO_MARK listener and its entries in
Merbridge's maps (filled from the emitted pod as Merbridge's controller and CNI server
would). In the pod under test, stand-ins run as the emitted containers say: the network
validator with its uid and addresses, the proxy with its uid and outbound listener, the app
as an ordinary uid. The proof: the app's plain connect() reaches the proxy, which reads the
right SO_ORIGINAL_DST; a skipped port goes direct; a meshed peer's proxy reaches the app
port through the inbound proxy but the ports the pod excludes (Linkerd's admin port among
them) directly; Linkerd's validator passes. The negative control runs the same pods with
nothing attached: every connection bypasses the proxy, and the validator fails.

What the mesh's own rules leave alone (the installed control plane's settings, the pod's own
annotations) Merbridge leaves alone too: its parse of the ebpf pod's annotations is compared
with what linkerd-init and istio-init are told for the same pod, and the control plane's ports
are shown bypassing the proxy under the real programs. Pods given another mode (proxyless gRPC
in mode none, Istio pods in iptables mode) are shown broken by Merbridge without the
annotations that keep it off them, and working with them.

Needs root (bpf, mounts, network namespaces) and clang, bpftool, make and iproute2
(.ci/run installs them); skipped with the reason where the kernel or the tools refuse, and
failed instead under CI (``CI`` set), where they are all there.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests import merbridge_harness as mb
from tests.netns import fresh, join, sh
from tests.support import TRUST_ANCHORS, anchored_policy, unavailable
from webhook.admission import admit
from webhook.cluster.snapshot import redirector_selector, snapshot_from_objects
from webhook.dataplane import FLAVOURS, flavour
from webhook.outcome import Outcome
from webhook.versions import KubeVersion

POD = Path(__file__).parent / "merbridge_pod.py"
A_IP, B_IP, UPSTREAM = "10.0.0.5", "10.0.0.6", "10.20.30.40"
# this run's own names (network namespaces, veths, the cgroup): the cgroup2 hierarchy and
# the namespaces are the machine's, shared with any other test run going on at the same time
RUN = uuid.uuid4().hex[:6]
NS_A, NS_B = f"mi-mb-a-{RUN}", f"mi-mb-b-{RUN}"
APP_UID = 1000


@pytest.fixture(scope="module")
def programs(tmp_path_factory) -> Iterator[dict[str, mb.Programs]]:
    if os.geteuid() != 0:
        unavailable("loading eBPF programs, mounting bpffs and creating network namespaces needs root")
    missing = mb.missing_tools()
    if missing:
        unavailable(
            f"missing {', '.join(missing)} (apt-get install clang llvm bpftool libbpf-dev make iproute2)"
        )
    work = tmp_path_factory.mktemp("merbridge")
    bpffs, cg2 = work / "bpffs", work / "cg2"
    bpffs.mkdir()
    cg2.mkdir()
    mounted: list[Path] = []
    try:
        for kind, where in (("bpf", bpffs), ("cgroup2", cg2)):
            done = subprocess.run(["mount", "-t", kind, kind, str(where)], capture_output=True, text=True)
            if done.returncode != 0:
                unavailable(f"cannot mount {kind}: {done.stderr.strip()}")
            mounted.append(where)
        loaded = {}
        for mode in sorted({f.redirect.mode for f in FLAVOURS.values() if f.redirect is not None}):
            progs = mb.Programs(mode, bpffs, cg2)
            try:
                progs.build()
                progs.load()
            except (RuntimeError, subprocess.CalledProcessError) as exc:
                detail = getattr(exc, "stderr", b"") or str(exc)
                unavailable(f"Merbridge's {mode} programs do not build or load here: {str(detail)[-400:]}")
            loaded[mode] = progs
        yield loaded
    finally:
        for where in reversed(mounted):
            subprocess.run(["umount", "-l", str(where)], capture_output=True)


MODERN = KubeVersion(1, 32)  # native sidecars: the proxy starts before the pod's own init containers
OLDER = KubeVersion(1, 28)  # no native sidecars: the proxy is a regular container, started after them


def admitted(
    flavour_name: str,
    pod: dict[str, Any],
    policy_text: str = "",
    server: KubeVersion = MODERN,
    extra: tuple[dict[str, Any], ...] = (),
) -> Outcome:
    """``pod`` admitted in namespace shop of a one-node cluster (this machine's kernel, kubelet
    1.32) where Merbridge runs Ready in CNI mode for the flavour's mesh (Linkerd's, for a
    flavour Merbridge does not know); ``extra``: more objects in the cluster (a control
    plane's ConfigMap)."""
    policy = anchored_policy(f"proxy: {{flavour: {flavour_name}}}\n{policy_text}")
    selector = redirector_selector(policy)
    redirect = flavour(flavour_name).redirect
    mode = redirect.mode if redirect is not None else "linkerd"
    objects = [
        {
            "kind": "Node",
            "metadata": {"name": "node-1", "labels": {"kubernetes.io/hostname": "node-1"}},
            "status": {"nodeInfo": {"kernelVersion": os.uname().release, "kubeletVersion": "v1.32.2"}},
        },
        {"kind": "Namespace", "metadata": {"name": "shop", "labels": {"mesh-injector.io/inject": "enabled"}}},
        {
            "kind": "Pod",
            "metadata": {
                "name": "merbridge-x",
                "namespace": selector.namespace,
                "labels": dict(selector.labels),
            },
            "spec": {
                "nodeName": "node-1",
                "containers": [{"name": "merbridge", "args": ["-m", mode, "--cni-mode"]}],
            },
            "status": {"phase": "Running", "conditions": [{"type": "Ready", "status": "True"}]},
        },
        {
            "kind": "ConfigMap",
            "metadata": {"name": "linkerd-identity-trust-roots", "namespace": "linkerd"},
            "data": {"ca-bundle.crt": TRUST_ANCHORS},
        },
        *extra,
    ]
    snapshot = snapshot_from_objects(objects, server_version=server, redirector=selector)
    request = {"uid": "u", "operation": "CREATE", "kind": {"kind": "Pod"}, "namespace": "shop", "object": pod}
    return admit(request, snapshot, policy)


def emitted(flavour_name: str) -> dict[str, Any]:
    """A pod meshed by mesh-injector in ebpf mode, on a node where Merbridge runs Ready in CNI
    mode for the flavour's mesh; it skips outbound port 9090 and inbound port 9102."""
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": "web-0",
            "namespace": "shop",
            "annotations": {
                "mesh-injector.io/skip-outbound-ports": "9090",
                "mesh-injector.io/skip-inbound-ports": "9102",
            },
        },
        "spec": {
            "containers": [
                {
                    "name": "web",
                    "image": "registry.example.com/web:1",
                    "ports": [{"containerPort": 8080}, {"containerPort": 9102}],
                }
            ]
        },
    }
    out = admitted(flavour_name, pod)
    assert out.injected and out.mode is not None and out.mode.value == "ebpf", out.explanation
    assert out.pod is not None
    return dict(out.pod)


def _container(pod: dict[str, Any], name: str, key: str = "containers") -> dict[str, Any] | None:
    return next((c for c in pod["spec"].get(key) or [] if c["name"] == name), None)


def _env(container: dict[str, Any]) -> dict[str, str]:
    return {e["name"]: e.get("value", "") for e in container.get("env") or []}


def _args(container: dict[str, Any], flag: str) -> str:
    args = container["args"]
    return args[args.index(flag) + 1]


class Node:
    """Two pods' network namespaces (veth-joined) and cgroups, torn down on exit."""

    def __init__(self, cg2: Path) -> None:
        self.parent = cg2 / f"mi-pods-{RUN}"
        self.cgroups = {NS_A: self.parent / "a", NS_B: self.parent / "b"}

    def __enter__(self) -> Node:
        self.__exit__()
        fresh(NS_A, NS_B)
        join((NS_A, f"mb{RUN}a", f"{A_IP}/24"), (NS_B, f"mb{RUN}b", f"{B_IP}/24"))
        sh("ip", "-n", NS_A, "addr", "add", f"{UPSTREAM}/32", "dev", "lo")  # a service beyond the pod
        for cg in self.cgroups.values():
            cg.mkdir(parents=True, exist_ok=True)
        return self

    def __exit__(self, *exc: object) -> None:
        for ns in (NS_A, NS_B):
            subprocess.run(["ip", "netns", "pids", ns], capture_output=True)
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)
        for cg in (*self.cgroups.values(), self.parent):
            if cg.is_dir():
                for _ in range(50):
                    try:
                        cg.rmdir()
                        break
                    except OSError:
                        time.sleep(0.1)


def run_pods(node: Node, progs: mb.Programs, pod: dict[str, Any], plane_name: str) -> dict[str, Any]:
    """The target pod in B, the pod under test in A; what the caller saw."""
    mode = progs.mode
    consts = mb.mesh_constants(mode)
    proxy = _container(pod, flavour(plane_name).proxy_name)
    assert proxy is not None
    uid = proxy["securityContext"]["runAsUser"]
    if plane_name == "linkerd":
        bind, port = _env(proxy)["LINKERD2_PROXY_OUTBOUND_LISTEN_ADDR"].rsplit(":", 1)
        peer_ports = {
            "app": 8080,
            "metrics": 9102,
            "admin": 4191,
            "inbound-proxy": consts["IN_REDIRECT_PORT"],
        }
    else:
        bind, port = "0.0.0.0", str(consts["OUT_REDIRECT_PORT"])  # Envoy's outbound listener
        peer_ports = {
            "app": 8080,
            "metrics": 9102,
            "agent": 15020,
            "inbound-proxy": consts["IN_REDIRECT_PORT"],
        }
    plan_b = {
        "cgroup": str(node.cgroups[NS_B]),
        "mark": mb.mark_of(f"/var/run/netns/{NS_B}"),
        "servers": peer_ports,
    }
    plan_a: dict[str, Any] = {
        "cgroup": str(node.cgroups[NS_A]),
        "mark": mb.mark_of(f"/var/run/netns/{NS_A}"),
        "upstream_ip": UPSTREAM,
        "upstream_ports": [8080, 9090],
        "proxy": {"uid": uid, "bind": bind, "port": int(port)},
        "app_uid": APP_UID,
        "peer_ip": B_IP,
        "peer_ports": [8080, 9102, peer_ports.get("admin", peer_ports.get("agent"))],
    }
    validator = _container(pod, "linkerd-network-validator", "initContainers")
    if validator is not None:
        plan_a["validator"] = {
            "uid": validator["securityContext"]["runAsUser"],
            "listen": _args(validator, "--listen-addr"),
            "connect": _args(validator, "--connect-addr"),
        }
    if plane_name == "istio":
        plan_a["istio_validation"] = uid
    return across(plan_b, "caller", plan_a)


def across(target: dict[str, Any], role: str, plan: dict[str, Any]) -> dict[str, Any]:
    """The target on the other host (B) ready, then the pod in A as ``role`` with ``plan``
    (tests/merbridge_pod.py); what A reported."""
    server = subprocess.Popen(
        ["ip", "netns", "exec", NS_B, sys.executable, str(POD), "target", json.dumps(target)],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert server.stdout is not None and "ready" in server.stdout.readline()
        done = subprocess.run(
            ["ip", "netns", "exec", NS_A, sys.executable, str(POD), role, json.dumps(plan)],
            capture_output=True,
            text=True,
            timeout=90,
        )
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout.strip().splitlines()[-1])
    finally:
        server.kill()
        server.wait()


def cni_marked_run(
    progs: mb.Programs, steps: list[dict[str, Any]], marked: bool, servers: dict[str, int]
) -> dict[str, Any]:
    """``steps`` played in A on a node with Merbridge's programs attached, A marked by its
    CNI plugin or not, the controller knowing no pod; ``servers`` on the other host."""
    with Node(progs.cgroup_root) as node:
        progs.forget()
        if marked:
            progs.update(
                "mark_pod_ips_map",
                mb.mark_of(f"/var/run/netns/{NS_A}").to_bytes(4, "little"),
                mb.ip_key(A_IP),
            )
        progs.attach(node.parent)
        try:
            return play_against(node, steps, marked, servers)
        finally:
            progs.detach(node.parent)


def register(progs: mb.Programs, pod: dict[str, Any]) -> None:
    """What Merbridge's Go side writes for the two pods (both built from the emitted pod):
    the CNI server's mark -> pod IP, and the controller's local_pod_ips entry."""
    progs.forget()
    annotations = pod["metadata"].get("annotations") or {}
    for ns, ip in ((NS_A, A_IP), (NS_B, B_IP)):
        if mb.cni_plugin_handles(pod):
            progs.update(
                "mark_pod_ips_map", mb.mark_of(f"/var/run/netns/{ns}").to_bytes(4, "little"), mb.ip_key(ip)
            )
        if mb.controller_counts(pod, progs.mode):
            progs.update("local_pod_ips", mb.ip_key(ip), mb.pod_config(annotations))


@pytest.mark.parametrize("plane_name", [name for name, f in FLAVOURS.items() if f.redirect is not None])
def test_an_emitted_ebpf_pod_is_redirected_by_merbridge(programs, plane_name):
    progs = programs[flavour(plane_name).redirect.mode]
    pod = emitted(plane_name)
    consts = mb.mesh_constants(progs.mode)
    proxy = _container(pod, flavour(plane_name).proxy_name)
    assert proxy is not None, "the proxy is a regular container: Merbridge's controller looks only there"
    assert proxy["securityContext"]["runAsUser"] == consts["SIDECAR_USER_ID"]
    assert mb.controller_counts(pod, progs.mode) and mb.cni_plugin_handles(pod)
    if plane_name == "linkerd":
        assert _env(proxy)["LINKERD2_PROXY_OUTBOUND_LISTEN_ADDR"].endswith(f":{consts['OUT_REDIRECT_PORT']}")

    cg2 = progs.cgroup_root
    with Node(cg2) as node:
        register(progs, pod)
        progs.attach(node.parent)
        try:
            seen = run_pods(node, progs, pod, plane_name)
        finally:
            progs.detach(node.parent)
    # the app's plain connect() lands on the proxy, which knows where it was going
    via = seen["app"]["8080"]
    assert via["tag"] == "proxy", seen
    assert via["orig"] == f"{UPSTREAM}:8080" and via["upstream"]["tag"] == "upstream:8080", seen
    # a skipped outbound port goes straight to its server
    assert seen["app"]["9090"]["tag"] == "upstream:9090", seen
    # a meshed peer's proxy: the app port through the inbound proxy, excluded ports directly
    assert seen["proxy_to_peer"]["8080"]["tag"] == "inbound-proxy", seen
    assert seen["proxy_to_peer"]["9102"]["tag"] == "metrics", seen
    if plane_name == "linkerd":
        assert seen["proxy_to_peer"]["4191"]["tag"] == "admin", seen  # Linkerd's admin port, excluded by us
        assert seen["validator"] == {"ok": True}, seen
    else:
        assert seen["proxy_to_peer"]["15020"]["tag"] == "agent", seen  # in Merbridge's own list
        # istio-validation connects as the proxy's uid to loopback: Merbridge redirects neither
        assert seen["istio_validation"]["ok"] is False, seen
        assert _container(pod, "istio-validation", "initContainers") is None

    # negative control: the same pods with nothing attached bypass the proxy
    with Node(cg2) as node:
        register(progs, pod)
        bare = run_pods(node, progs, pod, plane_name)
    assert bare["app"]["8080"]["tag"] == "upstream:8080", bare
    assert bare["proxy_to_peer"]["8080"]["tag"] == "app", bare
    if plane_name == "linkerd":
        assert bare["validator"]["ok"] is False, bare  # the fail-safe: the pod would not start


def test_a_native_sidecar_is_not_what_merbridge_redirects():
    """Why ebpf pods get the legacy placement: Merbridge's controller never counts a pod whose
    proxy is an init container, and its CNI plugin needs the status annotation."""
    pod = emitted("linkerd")
    native = json.loads(json.dumps(pod))
    proxy = native["spec"]["containers"].pop(0)
    native["spec"]["initContainers"] = [{**proxy, "restartPolicy": "Always"}]
    assert mb.controller_counts(pod, "linkerd") and not mb.controller_counts(native, "linkerd")
    unmarked = json.loads(json.dumps(pod))
    del unmarked["metadata"]["annotations"]["sidecar.istio.io/status"]
    assert mb.cni_plugin_handles(pod) and not mb.cni_plugin_handles(unmarked)


def test_merbridge_reads_the_exclusions_as_the_emitted_pod_writes_them():
    """The controller's parse of the annotations, as bytes in its map: Linkerd's own ports and
    the pod's skips, after Merbridge's seven."""
    pod = emitted("linkerd")
    config = mb.pod_config(pod["metadata"]["annotations"])
    exclude_in = [int.from_bytes(config[404 + 2 * i : 406 + 2 * i], "little") for i in range(20)]
    exclude_out = [int.from_bytes(config[444 + 2 * i : 446 + 2 * i], "little") for i in range(20)]
    assert exclude_in[:12] == [15006, 15001, 15008, 15090, 15021, 15020, 15000, 4190, 4191, 4567, 4568, 9102]
    assert exclude_out[:3] == [4567, 4568, 9090] and not any(exclude_out[3:])


def test_without_linkerds_ports_excluded_merbridge_takes_its_admin_port(programs):
    """Why the Linkerd flavour excludes 4190 and 4191: Merbridge's own list has only Istio's
    ports, so a peer proxy's scrape of the admin port (a meshed Prometheus) would land on
    the inbound proxy instead. The same pod with our exclusion annotation taken away shows it."""
    progs = programs["linkerd"]
    pod = emitted("linkerd")
    bare = json.loads(json.dumps(pod))
    del bare["metadata"]["annotations"]["traffic.sidecar.istio.io/excludeInboundPorts"]
    with Node(progs.cgroup_root) as node:
        register(progs, bare)
        progs.attach(node.parent)
        try:
            seen = run_pods(node, progs, bare, "linkerd")
        finally:
            progs.detach(node.parent)
    assert seen["proxy_to_peer"]["4191"]["tag"] == "inbound-proxy", seen
    assert seen["proxy_to_peer"]["4191"]["orig"] == f"{B_IP}:4191", seen


# --- the pod's own init containers ----------------------------------------------------------

DB_PORT = 5432
WAIT_FOR_DB = {
    "name": "wait-for-db",
    "image": "registry.example.com/tools:1",
    "command": ["sh", "-c", f"until nc -z db {DB_PORT}; do sleep 1; done"],
}
ALLOW_INITS = "interception: {ebpf: {allowInitContainers: true}}"


def pod_with_init() -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "web-0", "namespace": "shop"},
        "spec": {
            "initContainers": [dict(WAIT_FOR_DB)],
            "containers": [{"name": "web", "image": "registry.example.com/web:1"}],
        },
    }


def _uid(pod: dict[str, Any], container: dict[str, Any]) -> int:
    """The uid a container runs as (its own, the pod's, else an ordinary one for the image's)."""
    own = (container.get("securityContext") or {}).get("runAsUser")
    return own if own is not None else (pod["spec"].get("securityContext") or {}).get("runAsUser", APP_UID)


def kubelet_order(
    pod: dict[str, Any], plane_name: str, own: set[str]
) -> tuple[list[dict[str, Any]], str | None]:
    """The steps the stand-ins play for ``pod``, in the order the kubelet starts its containers:
    each init container (the pod's own connect to the database as their uid; the proxy as a
    native sidecar starts there; the network validator and our generic rules run as they
    would), then the regular containers' proxy, then the pod's init container's connect once
    more. Stops at an init container whose rules are another program's (Linkerd's proxy-init,
    istio-init), and says which."""
    plane = flavour(plane_name)

    def proxy(c: dict[str, Any]) -> dict[str, Any]:
        env = _env(c)
        if "LINKERD2_PROXY_OUTBOUND_LISTEN_ADDR" in env:
            bind, port = env["LINKERD2_PROXY_OUTBOUND_LISTEN_ADDR"].rsplit(":", 1)
        elif plane.redirect is not None:
            bind, port = "0.0.0.0", str(mb.mesh_constants(plane.redirect.mode)["OUT_REDIRECT_PORT"])
        else:  # our generic ruleset: where it sends the pod's outbound connections
            rules = next(
                _env(i)["MESH_IPTABLES_RULES"]
                for i in pod["spec"]["initContainers"]
                if i["name"] == plane.init_name
            )
            bind, port = (
                "0.0.0.0",
                re.findall(r"-A MESH_OUTBOUND -p tcp -j REDIRECT --to-ports (\d+)", rules)[0],
            )
        return {
            "do": "proxy",
            "name": c["name"],
            "uid": c["securityContext"]["runAsUser"],
            "bind": bind,
            "port": int(port),
        }

    def connect(c: dict[str, Any], name: str) -> dict[str, Any]:
        return {"do": "connect", "name": name, "uid": _uid(pod, c), "host": B_IP, "port": DB_PORT}

    steps: list[dict[str, Any]] = []
    mine = []
    for c in pod["spec"].get("initContainers") or []:
        if c["name"] in own:
            steps.append(connect(c, c["name"]))
            mine.append(c)
        elif c["name"] == plane.proxy_name:
            steps.append(proxy(c))
        elif c["name"] == "linkerd-network-validator":
            steps.append(
                {
                    "do": "validator",
                    "name": c["name"],
                    "uid": c["securityContext"]["runAsUser"],
                    "listen": _args(c, "--listen-addr"),
                    "connect": _args(c, "--connect-addr"),
                }
            )
        elif plane_name == "generic" and c["name"] == plane.init_name:
            steps.append({"do": "rules", "name": c["name"], "command": c["command"], "env": _env(c)})
        else:
            return steps, c["name"]
    steps += [proxy(c) for c in pod["spec"]["containers"] if c["name"] == plane.proxy_name]
    steps += [connect(c, f"{c['name']}, again") for c in mine]
    return steps, None


def play(node: Node, pod: dict[str, Any], steps: list[dict[str, Any]], marked: bool) -> dict[str, Any]:
    """The database on the other host (B, outside the mesh) and the pod in A, as it starts."""
    return play_against(node, steps, marked, {"db": DB_PORT})


def started(
    progs: mb.Programs, pod: dict[str, Any], plane_name: str, attached: bool = True
) -> dict[str, Any]:
    """``pod`` started on a node where Merbridge's programs run (``attached``), with the state
    Merbridge's Go side keeps for it: a mark only where its CNI plugin takes the pod, an entry
    only where its controller counts it."""
    steps, stopped_at = kubelet_order(pod, plane_name, {WAIT_FOR_DB["name"]})
    marked = mb.cni_plugin_handles(pod)
    with Node(progs.cgroup_root) as node:
        progs.forget()
        annotations = pod["metadata"].get("annotations") or {}
        if marked:
            progs.update(
                "mark_pod_ips_map",
                mb.mark_of(f"/var/run/netns/{NS_A}").to_bytes(4, "little"),
                mb.ip_key(A_IP),
            )
        if mb.controller_counts(pod, progs.mode):
            progs.update("local_pod_ips", mb.ip_key(A_IP), mb.pod_config(annotations))
        if attached:
            progs.attach(node.parent)
        try:
            seen = play(node, pod, steps, marked)
        finally:
            if attached:
                progs.detach(node.parent)
    return {"marked": marked, "stopped_at": stopped_at, **seen}


REFUSED = "ConnectionRefusedError"


def _direct(seen: dict[str, Any]) -> bool:
    return isinstance(seen, dict) and seen.get("tag") == "db" and seen.get("orig") is None


def _via_proxy(seen: dict[str, Any]) -> bool:
    return (
        isinstance(seen, dict)
        and seen.get("tag") == "proxy"
        and seen.get("orig") == f"{B_IP}:{DB_PORT}"
        and (seen.get("upstream") or {}).get("tag") == "db"
    )


@pytest.mark.parametrize("plane_name", [name for name, f in FLAVOURS.items() if f.redirect is not None])
def test_an_init_container_is_refused_under_ebpf_and_reaches_its_server_in_the_fallback(programs, plane_name):
    """Merbridge's CNI mode marks the pod from its creation: under ebpf (here allowed by the
    policy) the pod's own init container, run before the proxy (a regular container), is sent
    to a proxy port nothing listens on yet, and refused; once the proxy runs, the same
    connection reaches the database through it. What admission chooses instead for the same
    pod (iptables; the legacy placement of a cluster without native sidecars, where the
    mesh's init container runs after the pod's own): Merbridge does not take the pod (for
    Istio, whose pods carry sidecar.istio.io/status, because the pod is told to be left
    alone), and the init container reaches the database directly; with native sidecars
    Merbridge leaves it alone too."""
    plane = flavour(plane_name)
    progs = programs[plane.redirect.mode]
    wait = WAIT_FOR_DB["name"]

    allowed = admitted(plane_name, pod_with_init(), ALLOW_INITS)
    assert allowed.mode is not None and allowed.mode.value == "ebpf", allowed.explanation
    pod = dict(allowed.pod or {})
    seen = started(progs, pod, plane_name)
    assert seen["marked"] and seen["stopped_at"] is None, seen
    assert REFUSED in seen[wait]["error"], seen  # before the proxy: refused
    assert _via_proxy(seen[f"{wait}, again"]), seen  # with the proxy running: through it
    if plane_name == "linkerd":
        assert seen["linkerd-network-validator"] == {"ok": True}, seen
    # negative control: with Merbridge's programs not attached the same pod reaches the database
    bare = started(progs, pod, plane_name, attached=False)
    assert _direct(bare[wait]), bare

    fallback = admitted(plane_name, pod_with_init(), server=OLDER)
    assert fallback.mode is not None and fallback.mode.value == "iptables", fallback.explanation
    assert fallback.mode_reason is not None and fallback.mode_reason.value == "init-containers-before-proxy"
    assert any("ebpf is not possible" in w and wait in w for w in fallback.warnings), fallback.warnings
    pod = dict(fallback.pod or {})
    inits = [c["name"] for c in pod["spec"]["initContainers"]]
    assert inits == [wait, plane.init_name], inits  # the mesh's rules come after the pod's own
    seen = started(progs, pod, plane_name)
    assert seen["stopped_at"] == plane.init_name, seen
    # Merbridge's CNI plugin leaves the pod alone: Linkerd's carries no sidecar.istio.io/status,
    # Istio's carries sidecar.istio.io/inject "false" (without it, the plugin would take it and
    # refuse its init container: see test_an_iptables_istio_pod_is_kept_off_merbridges_cni_plugin)
    assert not seen["marked"] and _direct(seen[wait]), seen
    assert len(fallback.warnings) == 1, fallback.warnings

    native = admitted(plane_name, pod_with_init())
    assert native.mode is not None and native.mode.value == "iptables", native.explanation
    pod = dict(native.pod or {})
    assert [c["name"] for c in pod["spec"]["initContainers"]] == [plane.init_name, plane.proxy_name, wait]
    assert not mb.cni_plugin_handles(pod), (
        "one regular container: Merbridge's CNI plugin leaves the pod alone"
    )
    assert len(native.warnings) == 1, native.warnings


def test_native_placement_sends_an_init_container_through_the_running_proxy(programs):
    """The iptables fallback with native sidecars, for real with our generic ruleset (the
    meshes' own init images render theirs): the rules are installed first, then the proxy
    starts, then the pod's init container, whose connection the rules send to the proxy, which
    reaches the database. Without native sidecars the pod's init container runs before the
    rules and reaches the database directly. Merbridge runs on the node and takes neither."""
    policy = "proxy: {flavour: generic, image: reg/proxy:1, initImage: reg/init:1}"
    wait = WAIT_FOR_DB["name"]
    progs = programs["linkerd"]

    native = admitted("generic", pod_with_init(), policy)
    assert native.mode is not None and native.mode.value == "iptables", native.explanation
    pod = dict(native.pod or {})
    assert [c["name"] for c in pod["spec"]["initContainers"]] == ["mesh-init", "mesh-proxy", wait]
    seen = started(progs, pod, "generic")
    assert not seen["marked"] and seen["stopped_at"] is None, seen
    assert seen["mesh-init"]["ok"], seen
    assert _via_proxy(seen[wait]), seen

    legacy = admitted("generic", pod_with_init(), policy, server=OLDER)
    pod = dict(legacy.pod or {})
    assert [c["name"] for c in pod["spec"]["initContainers"]] == [wait, "mesh-init"]
    seen = started(progs, pod, "generic")
    assert _direct(seen[wait]), seen  # before the rules
    assert _via_proxy(seen[f"{wait}, again"]), seen  # the same connection once rules and proxy are in


# --- what the control plane's own rules leave alone, Merbridge leaves alone -------------------

GOLDEN_CLUSTERS = Path(__file__).parent / "golden" / "clusters"
OWN_INBOUND = {15006, 15001, 15008, 15090, 15021, 15020, 15000}  # parsePodConfigFromAnnotations


def _config_map(cluster: str, name: str) -> dict[str, Any]:
    import yaml

    items = yaml.safe_load((GOLDEN_CLUSTERS / f"{cluster}.yaml").read_text())["items"]
    return json.loads(
        json.dumps(next(i for i in items if i["kind"] == "ConfigMap" and i["metadata"]["name"] == name))
    )


def linkerd_config(ignore_in: str, ignore_out: str, skip_subnets: str = "") -> dict[str, Any]:
    """Linkerd 2.20's linkerd-config (its chart's values) with these proxyInit settings."""
    cm = _config_map("linkerd-2.20", "linkerd-config")
    values = cm["data"]["values"]
    for key, value in (
        ("ignoreInboundPorts", ignore_in),
        ("ignoreOutboundPorts", ignore_out),
        ("skipSubnets", skip_subnets),
    ):
        values, n = re.subn(rf"(\n  {key}:)[^\n]*", rf"\g<1> {json.dumps(value)}", values)
        assert n == 1, key
    cm["data"]["values"] = values
    return cm


def istio_injector(**proxy: str) -> dict[str, Any]:
    """istiod 1.28.2's istio-sidecar-injector (its chart's values) with these global.proxy settings."""
    cm = _config_map("istio-1.28", "istio-sidecar-injector")
    values = json.loads(cm["data"]["values"])
    values["global"]["proxy"].update(proxy)
    cm["data"]["values"] = json.dumps(values)
    return cm


def _ports(config: bytes, offset: int) -> set[int]:
    return {
        p for i in range(20) if (p := int.from_bytes(config[offset + 2 * i : offset + 2 * i + 2], "little"))
    }


def _cidrs(config: bytes, offset: int) -> set[str]:
    import ipaddress

    out = set()
    for i in range(20):
        net, mask = config[offset + 8 * i : offset + 8 * i + 4], config[offset + 8 * i + 4]
        if net != b"\0\0\0\0":
            out.add(str(ipaddress.ip_network((net, mask))))
    return out


def merbridge_leaves(pod: dict[str, Any]) -> dict[str, Any]:
    """What Merbridge's controller makes of the pod's annotations (its podConfig, ported in
    the harness), as sets: inbound ports left alone (its own seven taken out: they are Istio's
    ports, which it leaves alone for every mesh), only these inbound ports (None: every one),
    outbound ports and destinations left alone."""
    config = mb.pod_config(pod["metadata"].get("annotations") or {})
    only_in = _ports(config, 324)
    return {
        "inbound": _ports(config, 404) - OWN_INBOUND,
        "only_inbound": only_in or None,
        "outbound": _ports(config, 444),
        "destinations": _cidrs(config, 4),
    }


def _expand(items: list[str]) -> set[int]:
    out: set[int] = set()
    for item in items:
        lo, _, hi = item.replace(":", "-").partition("-")
        out |= set(range(int(lo), int(hi or lo) + 1))
    return out


def proxy_init_leaves(pod: dict[str, Any]) -> dict[str, Any]:
    """What linkerd-init leaves alone, read from its arguments by the test's model of proxy-init."""
    from tests.proxyinit import parse

    init = _container(pod, "linkerd-init", "initContainers")
    assert init is not None
    flags = parse(init["args"])
    return {
        "inbound": _expand(flags.inbound_ignore) - OWN_INBOUND,
        "only_inbound": None,
        "outbound": _expand(flags.outbound_ignore),
        "destinations": set(),
        "sources": set(flags.subnets),
    }


def istio_init_leaves(pod: dict[str, Any]) -> dict[str, Any]:
    """What istio-init leaves alone, read from its arguments by the test's model of istio-iptables
    (-d applies where -b is "*")."""
    from tests.istio_rules import from_args, split

    init = _container(pod, "istio-init", "initContainers")
    assert init is not None
    c = from_args(init["args"])
    return {
        "inbound": (_expand(split(c.inbound_exclude)) if c.inbound_include == "*" else set()) - OWN_INBOUND,
        "only_inbound": None if c.inbound_include == "*" else _expand(split(c.inbound_include)),
        "outbound": _expand(split(c.outbound_ports_exclude)),
        "destinations": set(split(c.outbound_ranges_exclude)),
    }


BARE = {
    "apiVersion": "v1",
    "kind": "Pod",
    "metadata": {"name": "web-0", "namespace": "shop"},
    "spec": {
        "containers": [
            {"name": "web", "image": "registry.example.com/web:1", "ports": [{"containerPort": 8080}]}
        ]
    },
}


def _with(annotations: dict[str, str]) -> dict[str, Any]:
    pod = json.loads(json.dumps(BARE))
    pod["metadata"]["annotations"] = dict(annotations)
    return pod


LINKERD_PLANES = [
    # the chart's defaults
    (linkerd_config("4567,4568", "4567,4568"), {}),
    # more ports than the chart's, a range among them
    (linkerd_config("4567,4568,25,9000-9003", "4567,4568,3306"), {}),
    # the pod's own lists replace the control plane's, ours are added
    (
        linkerd_config("4567,4568,25", "4567,4568,3306"),
        {
            "config.linkerd.io/skip-inbound-ports": "7000",
            "config.linkerd.io/skip-outbound-ports": "5432",
            "mesh-injector.io/skip-outbound-ports": "6379",
        },
    ),
]
ISTIO_PLANES = [
    (istio_injector(), {}),
    (
        istio_injector(
            excludeInboundPorts="9000", excludeOutboundPorts="5432,6379", excludeIPRanges="169.254.169.254/32"
        ),
        {},
    ),
    (istio_injector(includeInboundPorts="8080,9090", excludeOutboundPorts="5432"), {}),
    (
        istio_injector(excludeInboundPorts="9000", excludeIPRanges="169.254.169.254/32"),
        {
            "traffic.sidecar.istio.io/excludeInboundPorts": "7000",
            "traffic.sidecar.istio.io/excludeOutboundIPRanges": "10.9.0.0/16",
            "mesh-injector.io/skip-inbound-ports": "7001",
        },
    ),
]


@pytest.mark.parametrize(
    ("plane_name", "config_map", "annotations"),
    [("linkerd", cm, a) for cm, a in LINKERD_PLANES] + [("istio", cm, a) for cm, a in ISTIO_PLANES],
)
def test_merbridge_leaves_alone_what_the_meshs_init_container_would(plane_name, config_map, annotations):
    """The same pod under the same control plane, in ebpf mode and in iptables mode: what
    Merbridge's controller reads from the ebpf pod (its own parse of the annotations) leaves
    alone the ports and destinations the mesh's init container is told to leave alone (read
    from its arguments by the test's models of proxy-init and istio-iptables)."""
    ebpf = admitted(plane_name, _with(annotations), extra=(config_map,))
    assert ebpf.mode is not None and ebpf.mode.value == "ebpf", ebpf.explanation
    iptables = admitted(
        plane_name, _with({**annotations, "mesh-injector.io/interception": "iptables"}), extra=(config_map,)
    )
    assert iptables.mode is not None and iptables.mode.value == "iptables", iptables.explanation
    seen = merbridge_leaves(dict(ebpf.pod or {}))
    if plane_name == "linkerd":
        told = proxy_init_leaves(dict(iptables.pod or {}))
        assert told.pop("sources") == set()
    else:
        told = istio_init_leaves(dict(iptables.pod or {}))
    assert seen == told, (seen, told)


def _emitted_bare(plane_name: str, config_map: dict[str, Any] | None) -> dict[str, Any]:
    """An ebpf pod with app ports 8080 and 9102 and no skip annotations of its own."""
    pod = json.loads(json.dumps(BARE))
    pod["spec"]["containers"][0]["ports"].append({"containerPort": 9102})
    out = admitted(plane_name, pod, extra=(config_map,) if config_map else ())
    assert out.mode is not None and out.mode.value == "ebpf", out.explanation
    return dict(out.pod or {})


@pytest.mark.parametrize("plane_name", ["linkerd", "istio"])
def test_the_control_planes_own_exclusions_reach_merbridges_programs(programs, plane_name):
    """A control plane that leaves inbound port 9102 and outbound port 9090 alone (linkerd-config's
    proxyInit ignore ports; istiod's global.proxy exclusions), no skip annotation on the pod:
    under Merbridge's real programs a peer's proxy reaches 9102 directly and the app reaches
    9090 directly, as the mesh's own init container would let them; with the charts' defaults
    both go through the proxy."""
    progs = programs[flavour(plane_name).redirect.mode]
    if plane_name == "linkerd":
        told = linkerd_config("4567,4568,9102", "4567,4568,9090")
    else:
        told = istio_injector(excludeInboundPorts="9102", excludeOutboundPorts="9090")
    for config_map, direct in ((told, True), (None, False)):
        pod = _emitted_bare(plane_name, config_map)
        with Node(progs.cgroup_root) as node:
            register(progs, pod)
            progs.attach(node.parent)
            try:
                seen = run_pods(node, progs, pod, plane_name)
            finally:
                progs.detach(node.parent)
        assert seen["app"]["8080"]["tag"] == "proxy", seen
        assert seen["proxy_to_peer"]["8080"]["tag"] == "inbound-proxy", seen
        if direct:
            assert seen["app"]["9090"]["tag"] == "upstream:9090", seen
            assert seen["proxy_to_peer"]["9102"]["tag"] == "metrics", seen
        else:
            assert seen["app"]["9090"]["tag"] == "proxy", seen
            assert seen["proxy_to_peer"]["9102"]["tag"] == "inbound-proxy", seen


# --- pods of other modes, kept off Merbridge ----------------------------------------------

GRPC = {"inject.istio.io/templates": "grpc-agent"}
GRPC_PORT = 9090


def grpc_pod(*apps: str, native: bool = True) -> dict[str, Any]:
    annotations = dict(GRPC)
    if not native:
        annotations["mesh-injector.io/native-sidecar"] = "false"
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "rates-0", "namespace": "shop", "annotations": annotations},
        "spec": {
            "containers": [
                {
                    "name": app,
                    "image": f"registry.example.com/{app}:1",
                    "ports": [{"containerPort": GRPC_PORT}],
                }
                for app in apps
            ]
        },
    }


def _without(pod: dict[str, Any], *keys: str) -> dict[str, Any]:
    """``pod`` as it would be without the annotations that keep Merbridge off it."""
    bare = json.loads(json.dumps(pod))
    for key in keys:
        del bare["metadata"]["annotations"][key]
    return bare


def _proxy_to(
    node: Node, progs: mb.Programs, caller: dict[str, Any], target: dict[str, Any]
) -> dict[str, Any]:
    """An Istio ebpf pod (A) whose Envoy connects to the proxyless pod (B), with the state
    Merbridge's Go side keeps for each: B serves its gRPC port only (no Envoy, nothing on 15006)."""
    consts = mb.mesh_constants("istio")
    progs.forget()
    for ns, ip, pod in ((NS_A, A_IP, caller), (NS_B, B_IP, target)):
        if mb.cni_plugin_handles(pod):
            progs.update(
                "mark_pod_ips_map", mb.mark_of(f"/var/run/netns/{ns}").to_bytes(4, "little"), mb.ip_key(ip)
            )
        if mb.controller_counts(pod, "istio"):
            progs.update(
                "local_pod_ips", mb.ip_key(ip), mb.pod_config(pod["metadata"].get("annotations") or {})
            )
    plan_b = {
        "cgroup": str(node.cgroups[NS_B]),
        "mark": mb.mark_of(f"/var/run/netns/{NS_B}"),
        "marked": mb.cni_plugin_handles(target),
        "servers": {"rates": GRPC_PORT},
    }
    plan_a = {
        "cgroup": str(node.cgroups[NS_A]),
        "mark": mb.mark_of(f"/var/run/netns/{NS_A}"),
        "upstream_ip": UPSTREAM,
        "upstream_ports": [],
        "proxy": {"uid": consts["SIDECAR_USER_ID"], "bind": "0.0.0.0", "port": consts["OUT_REDIRECT_PORT"]},
        "app_uid": APP_UID,
        "peer_ip": B_IP,
        "peer_ports": [GRPC_PORT],
    }
    server = subprocess.Popen(
        ["ip", "netns", "exec", NS_B, sys.executable, str(POD), "target", json.dumps(plan_b)],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert server.stdout is not None and "ready" in server.stdout.readline()
        progs.attach(node.parent)
        try:
            done = subprocess.run(
                ["ip", "netns", "exec", NS_A, sys.executable, str(POD), "caller", json.dumps(plan_a)],
                capture_output=True,
                text=True,
                timeout=90,
            )
        finally:
            progs.detach(node.parent)
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout.strip().splitlines()[-1])["proxy_to_peer"][str(GRPC_PORT)]
    finally:
        server.kill()
        server.wait()


def test_a_proxyless_pod_with_a_regular_agent_is_kept_off_merbridges_controller(programs):
    """Merbridge's controller counts a grpc-agent pod whose agent is a regular container
    (istio-proxy beside another container), so a meshed Envoy on the node connecting to it is
    sent to port 15006, where nothing listens in a proxyless pod: refused. The pod mesh-injector
    emits carries an inbound list of one port Merbridge always leaves alone: the Envoy's
    connection reaches the gRPC server."""
    out = admitted("istio", grpc_pod("rates", native=False))
    assert (
        out.mode is not None and out.mode.value == "none" and out.mode_reason.value == "nothing-to-redirect"
    )
    kept = dict(out.pod or {})
    assert (
        _container(kept, "istio-proxy") is not None
        and _container(kept, "istio-init", "initContainers") is None
    )
    assert mb.controller_counts(kept, "istio") and not mb.cni_plugin_handles(kept)  # DISABLE_ENVOY
    caller = emitted("istio")
    with Node(programs["istio"].cgroup_root) as node:
        seen = _proxy_to(node, programs["istio"], caller, kept)
    assert seen.get("tag") == "rates" and seen.get("port") == GRPC_PORT, seen
    exposed = _without(kept, "traffic.sidecar.istio.io/includeInboundPorts")
    with Node(programs["istio"].cgroup_root) as node:
        seen = _proxy_to(node, programs["istio"], caller, exposed)
    assert REFUSED in seen.get("error", ""), seen


def test_a_proxyless_pod_with_two_apps_is_kept_off_merbridges_cni_plugin(programs):
    """A grpc-agent pod whose agent is a native sidecar beside two app containers: Merbridge's CNI
    plugin takes it (sidecar.istio.io/status beside two regular containers; it looks for
    DISABLE_ENVOY only on a regular istio-proxy) and sends its apps' connections to port 15001,
    where nothing listens: refused. The pod mesh-injector emits says sidecar.istio.io/inject
    "false", which the plugin honours: the app reaches its server."""
    out = admitted("istio", grpc_pod("rates", "metrics"))
    assert out.mode is not None and out.mode.value == "none", out.explanation
    kept = dict(out.pod or {})
    assert _container(kept, "istio-proxy", "initContainers") is not None
    assert not mb.controller_counts(kept, "istio")
    steps = [{"do": "connect", "name": "rates", "uid": APP_UID, "host": B_IP, "port": DB_PORT}]
    exposed = _without(kept, "sidecar.istio.io/inject")
    progs = programs["istio"]
    for pod, fine in ((kept, True), (exposed, False)):
        marked = mb.cni_plugin_handles(pod)
        assert marked is not fine
        seen = cni_marked_run(progs, steps, marked, {"db": DB_PORT})
        if fine:
            assert _direct(seen["rates"]), seen
        else:
            assert REFUSED in seen["rates"]["error"], seen


def _restore() -> str | None:
    import shutil

    return next((t for t in ("iptables-nft-restore", "iptables-legacy-restore") if shutil.which(t)), None)


def test_an_iptables_istio_pod_is_kept_off_merbridges_cni_plugin(programs):
    """An Istio pod in iptables mode with two app containers and its proxy a native sidecar,
    skipping outbound port 5432: istio-init's rules (the test's model of istio-iptables, loaded
    with the real iptables-restore) send the app's connections to Envoy but 5432's. Merbridge's
    CNI plugin would take the pod too (sidecar.istio.io/status beside two regular containers)
    and, its controller not counting a native proxy, apply none of the pod's exclusions: 5432
    would go through Envoy as well. The pod mesh-injector emits says sidecar.istio.io/inject
    "false": 5432 reaches the database directly, 8080 through Envoy."""
    from tests.istio_rules import from_args, iptables, restore_text

    loader = _restore()
    if loader is None:
        unavailable("no iptables-nft-restore or iptables-legacy-restore (apt-get install iptables)")
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": "web-0",
            "namespace": "shop",
            "annotations": {
                "mesh-injector.io/interception": "iptables",
                "mesh-injector.io/skip-outbound-ports": "5432",
            },
        },
        "spec": {
            "containers": [
                {"name": "web", "image": "registry.example.com/web:1", "ports": [{"containerPort": 8080}]},
                {"name": "sync", "image": "registry.example.com/sync:1"},
            ]
        },
    }
    out = admitted("istio", pod)
    assert out.mode is not None and out.mode.value == "iptables", out.explanation
    kept = dict(out.pod or {})
    init = _container(kept, "istio-init", "initContainers")
    proxy = _container(kept, "istio-proxy", "initContainers")
    assert init is not None and proxy is not None  # native: Merbridge's controller does not count it
    assert not mb.controller_counts(kept, "istio")
    version = tuple(
        int(x)
        for x in json.loads(kept["metadata"]["annotations"]["mesh-injector.io/status"])["meshVersion"].split(
            "."
        )
    )
    rules = restore_text(iptables(version, from_args(init["args"])))
    consts = mb.mesh_constants("istio")
    steps = [
        {
            "do": "rules",
            "name": "istio-init",
            "command": ["sh", "-c", f'printf "%s" "$RULES" | {loader}'],
            "env": {"RULES": rules},
        },
        {
            "do": "proxy",
            "name": "istio-proxy",
            "uid": consts["SIDECAR_USER_ID"],
            "bind": "0.0.0.0",
            "port": consts["OUT_REDIRECT_PORT"],
        },
        {"do": "connect", "name": "to 5432", "uid": APP_UID, "host": B_IP, "port": DB_PORT},
        {"do": "connect", "name": "to 8080", "uid": APP_UID, "host": B_IP, "port": 8080},
    ]
    exposed = _without(kept, "sidecar.istio.io/inject")
    progs = programs["istio"]
    for shown, fine in ((kept, True), (exposed, False)):
        marked = mb.cni_plugin_handles(shown)
        assert marked is not fine
        seen = cni_marked_run(progs, steps, marked, {"db": DB_PORT, "web": 8080})
        assert seen["istio-init"]["ok"], seen
        via = seen["to 8080"]
        assert via.get("tag") == "proxy" and via.get("orig") == f"{B_IP}:8080", seen
        if fine:
            assert _direct(seen["to 5432"]), seen
        else:
            assert _via_proxy(seen["to 5432"]), seen


def play_against(
    node: Node, steps: list[dict[str, Any]], marked: bool, servers: dict[str, int]
) -> dict[str, Any]:
    """``play`` with these servers on the other host (B, outside the mesh)."""
    peer = {"cgroup": str(node.cgroups[NS_B]), "marked": False, "servers": servers}
    plan = {
        "cgroup": str(node.cgroups[NS_A]),
        "mark": mb.mark_of(f"/var/run/netns/{NS_A}"),
        "marked": marked,
        "steps": steps,
    }
    return across(peer, "play", plan)
