"""In-sandbox interception, proven in a real gVisor sandbox (Debian's ``runsc``).

A pod that names a gVisor RuntimeClass is meshed in microvm mode: host eBPF and host-side
rules cannot see a sandbox's sockets, so the flavour's init container installs the rules
inside it. Here the emitted pod's init container command runs, with its environment, inside
a real gVisor sandbox on its own netstack (``--network=sandbox``), in a pod network namespace
joined by a veth pair to an upstream's; then a stand-in proxy with the emitted proxy's uid
and outbound port, and the app as an ordinary uid. The app's plain connect() must reach the
proxy with the right SO_ORIGINAL_DST, a skipped port and the proxy's own connection must go
direct. Without the init container (the negative control) the app reaches the upstream
directly. The same sandbox shows why Linkerd's proxy-init cannot run there: it refuses
``-m comment`` and ``-m multiport``.

gVisor refuses the nft backend, so the decision gives a gVisor pod the legacy one: the
emitted command names ``iptables-legacy-restore`` (the init image ships it, as Debian's
iptables package does). For an image whose plain ``iptables-restore`` is meant, the test
still puts a legacy one first on the PATH.
Needs root and runsc (.ci/run installs it); skipped with the reason where no sandbox can start,
and failed instead under CI (``CI`` set).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.netns import fresh, join, sh
from tests.support import load_case, unavailable
from webhook.admission import admit

HERE = Path(__file__).parent
# this run's own network namespaces and veths (the machine's, shared with concurrent runs)
RUN = uuid.uuid4().hex[:6]
POD_NS, UP_NS = f"mi-sbx-pod-{RUN}", f"mi-sbx-up-{RUN}"
POD_DEV, UP_DEV = f"sbx{RUN}p", f"sbx{RUN}u"
POD_IP, UP_IP = "10.99.7.1", "10.99.7.2"
UPSTREAM_SERVER = """
import json, socket, sys, threading
def serve(port):
    srv = socket.create_server(("0.0.0.0", port))
    while True:
        c, peer = srv.accept()
        c.sendall(json.dumps({"tag": f"upstream:{port}", "peer": peer[0]}).encode())
        c.close()
for p in map(int, sys.argv[1:]):
    threading.Thread(target=serve, args=(p,), daemon=True).start()
print("ready", flush=True); threading.Event().wait()
"""


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory) -> Iterator[Path]:
    if os.geteuid() != 0:
        unavailable("starting a gVisor sandbox and creating network namespaces needs root")
    for tool in ("runsc", "iptables-legacy-restore", "ip", "unshare"):
        if shutil.which(tool) is None:
            unavailable(f"{tool} is not installed (apt-get install runsc iptables iproute2)")
    work = tmp_path_factory.mktemp("sandbox")
    for ns in (POD_NS, UP_NS):
        subprocess.run(["ip", "netns", "del", ns], capture_output=True)
        sh("ip", "netns", "add", ns)
        sh("ip", "-n", ns, "link", "set", "lo", "up")
    sh(
        "ip",
        "link",
        "add",
        POD_DEV,
        "netns",
        POD_NS,
        "type",
        "veth",
        "peer",
        "name",
        UP_DEV,
        "netns",
        UP_NS,
    )
    for ns, dev, ip in ((POD_NS, POD_DEV, POD_IP), (UP_NS, UP_DEV, UP_IP)):
        sh("ip", "-n", ns, "addr", "add", f"{ip}/24", "dev", dev)
        sh("ip", "-n", ns, "link", "set", dev, "up")
    upstream = subprocess.Popen(
        ["ip", "netns", "exec", UP_NS, sys.executable, "-c", UPSTREAM_SERVER, "8080", "5432"],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert upstream.stdout is not None and upstream.stdout.readline().strip() == "ready"
        shim = work / "shim"
        shim.mkdir()
        (shim / "iptables-restore").symlink_to(shutil.which("iptables-legacy-restore") or "")
        yield work
    finally:
        upstream.kill()
        upstream.wait()
        for ns in (POD_NS, UP_NS):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)


def pod_network() -> None:
    """A fresh pod network namespace, veth-joined to the upstream's: gVisor takes the
    interface's addresses into its own netstack and does not give them back. The old pair
    is deleted first, at once: a deleted namespace takes its veth (and the peer's end) with
    it only once nothing holds it any more, which on a busy machine can be later."""
    subprocess.run(["ip", "-n", UP_NS, "link", "del", UP_DEV], capture_output=True)
    fresh(POD_NS)
    join((POD_NS, POD_DEV, f"{POD_IP}/24"), (UP_NS, UP_DEV, f"{UP_IP}/24"))


def run_in_gvisor(work: Path, name: str, plan: dict[str, Any]) -> dict[str, Any]:
    """``tests/sandbox_pod.py`` as the sandbox's process, in a fresh pod network namespace;
    what it printed."""
    pod_network()
    run = work / name
    bundle, state = run / "bundle", run / "state"
    bundle.mkdir(parents=True)
    state.mkdir()
    (run / "plan.json").write_text(json.dumps({**plan, "shim": "/mnt/work/shim"}))
    runsc = ["runsc", "--root", str(state), "--platform=ptrace", "--network=sandbox", "--net-raw"]
    inside = ["/usr/bin/python3", "/mnt/tests/sandbox_pod.py", f"/mnt/work/{name}/plan.json"]
    sh("runsc", "spec", "--bundle", str(bundle), "--", *inside)
    config = json.loads((bundle / "config.json").read_text())
    caps = ["CAP_NET_ADMIN", "CAP_NET_RAW", "CAP_SETUID", "CAP_SETGID", "CAP_KILL", "CAP_DAC_OVERRIDE"]
    config["process"]["capabilities"] = {k: caps for k in ("bounding", "effective", "permitted")}
    config["process"]["env"] = ["PATH=/usr/sbin:/usr/bin:/sbin:/bin"]
    config["process"]["terminal"] = False
    config["root"] = {"path": "/", "readonly": True}
    config["mounts"] += [
        {"destination": "/mnt/tests", "type": "bind", "source": str(HERE), "options": ["rbind", "ro"]},
        {"destination": "/mnt/work", "type": "bind", "source": str(work), "options": ["rbind", "ro"]},
        {"destination": "/run", "type": "tmpfs", "source": "tmpfs"},
        {"destination": "/tmp", "type": "tmpfs", "source": "tmpfs"},
    ]
    for ns in config["linux"]["namespaces"]:
        if ns["type"] == "network":
            ns["path"] = f"/var/run/netns/{POD_NS}"
    (bundle / "config.json").write_text(json.dumps(config))
    out = run / "out.txt"
    cid = f"mi-{name}-{os.getpid()}"
    try:
        with out.open("w") as sink:
            created = subprocess.run(
                [*runsc, "create", "--bundle", str(bundle), cid], stdout=sink, stderr=sink, timeout=60
            )
        if created.returncode != 0:
            unavailable(f"runsc cannot create a sandbox here: {out.read_text()[-400:]}")
        # this runsc takes a network namespace for the host's when /proc/sys/net/core/rmem_default
        # exists, which it does in every netns on kernels >= 6: hide /proc/sys/net from `start`
        started = subprocess.run(
            [
                "unshare",
                "-m",
                "sh",
                "-c",
                "mount --make-rprivate / && mount -t tmpfs mask /proc/sys/net && exec "
                + " ".join(runsc)
                + f" start {cid}",
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )
        if started.returncode != 0:
            unavailable(f"runsc cannot start a sandbox here: {started.stderr[-400:]}")
        waited = subprocess.run([*runsc, "wait", cid], capture_output=True, text=True, timeout=120)
        assert '"exitStatus":0' in waited.stdout.replace(" ", ""), out.read_text()
    finally:
        subprocess.run([*runsc, "kill", cid, "KILL"], capture_output=True, timeout=20)
        subprocess.run([*runsc, "delete", "-force", cid], capture_output=True, timeout=20)
        time.sleep(0.2)
    lines = [line for line in out.read_text().splitlines() if line.startswith("{")]
    assert lines, out.read_text()
    return json.loads(lines[-1])


def emitted_gvisor_pod() -> dict[str, Any]:
    """A pod naming the gVisor RuntimeClass, meshed by the generic flavour: microvm, with
    mesh-init's rules to install inside the sandbox; it skips outbound 5432."""
    case = load_case(HERE / "golden" / "cases" / "113-sandboxed-gvisor-generic")
    request = json.loads(json.dumps(case.review["request"]))
    request["object"]["metadata"]["annotations"]["mesh-injector.io/skip-outbound-ports"] = "5432"
    out = admit(request, case.snapshot, case.policy)
    assert out.injected and out.mode is not None and out.mode.value == "microvm", out.explanation
    assert out.pod is not None
    return dict(out.pod)


def _find(pod: dict[str, Any], name: str) -> dict[str, Any]:
    return next(
        c for key in ("initContainers", "containers") for c in pod["spec"].get(key) or [] if c["name"] == name
    )


def test_the_emitted_init_container_redirects_inside_gvisor(sandbox):
    pod = emitted_gvisor_pod()
    assert pod["spec"]["runtimeClassName"] == "gvisor"
    init, proxy = _find(pod, "mesh-init"), _find(pod, "mesh-proxy")
    assert "| iptables-legacy-restore --noflush" in init["command"][-1]  # gVisor has no nft backend
    env = {e["name"]: e["value"] for e in init["env"]}
    proxy_env = {e["name"]: e.get("value") for e in proxy["env"]}
    plan = {
        "init": {"command": init["command"], "env": env},
        "proxy_uid": proxy["securityContext"]["runAsUser"],
        "proxy_port": int(proxy_env["MESH_PROXY_OUTBOUND_PORT"]),
        "app_uid": 1000,
        "upstream": UP_IP,
        "ports": [8080, 5432],
        # what Linkerd's proxy-init writes, and what our ruleset uses
        "probe": [
            ["-m", "comment", "--comment", "proxy-init", "-j", "RETURN"],
            ["-p", "tcp", "-m", "multiport", "--dports", "4190,4191", "-j", "RETURN"],
            ["-m", "owner", "--uid-owner", "2102", "-j", "RETURN"],
            ["-p", "tcp", "--dport", "8000:8002", "-j", "RETURN"],
        ],
    }
    seen = run_in_gvisor(sandbox, "meshed", plan)
    assert seen["init"]["rc"] == 0, seen  # the emitted rules load into gVisor's netstack
    via = seen["app"]["8080"]
    assert via["tag"] == "proxy" and via["uid"] == proxy["securityContext"]["runAsUser"], seen
    assert via["orig"] == f"{UP_IP}:8080" and via["upstream"]["tag"] == "upstream:8080", seen
    assert seen["app"]["5432"]["tag"] == "upstream:5432", seen  # skipped: direct
    assert seen["proxy_own"]["tag"] == "upstream:8080", seen  # the proxy's uid is never redirected
    assert seen["probe"]["-m comment --comment proxy-init -j RETURN"] is False, seen
    assert seen["probe"]["-p tcp -m multiport --dports 4190,4191 -j RETURN"] is False, seen
    assert seen["probe"]["-m owner --uid-owner 2102 -j RETURN"] is True, seen

    # negative control: the same sandbox without the init container's rules
    bare = run_in_gvisor(sandbox, "bare", {**plan, "init": None, "probe": None})
    assert bare["app"]["8080"].get("tag") == "upstream:8080", bare
