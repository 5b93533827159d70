"""What runs inside the gVisor sandbox of tests/test_sandbox.py, as the pod's containers would:
the emitted init container's command with its environment (the rules, loaded by
iptables-restore into gVisor's own netstack), then a stand-in proxy with the emitted proxy's
uid and outbound port, then the app's plain connects. Prints one JSON line.

Usage: sandbox_pod.py PLAN.json
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from typing import Any

from podnet import as_uid, fetch, original_dst


def proxy(uid: int, port: int) -> int:
    """The stand-in proxy, forked; returns once it listens (it says so on a pipe)."""
    ready, tell = os.pipe()
    pid = os.fork()
    if pid:
        os.close(tell)
        said = os.read(ready, 1)
        os.close(ready)
        if said != b"1":
            raise RuntimeError("the stand-in proxy did not start listening")
        return pid
    os.close(ready)
    os.setgid(uid)
    os.setuid(uid)
    srv = socket.socket()
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind(("0.0.0.0", port))
    srv.listen(8)
    os.write(tell, b"1")
    os.close(tell)
    while True:
        conn, _ = srv.accept()
        orig = original_dst(conn)
        host, oport = (orig or "0.0.0.0:0").rsplit(":", 1)
        conn.sendall(
            json.dumps(
                {"tag": "proxy", "uid": os.getuid(), "orig": orig, "upstream": fetch(host, int(oport))}
            ).encode()
        )
        conn.close()


def probe(features: list[list[str]]) -> dict[str, bool]:
    """Which iptables features this netstack accepts, on a scratch chain."""
    ipt = ["iptables-legacy", "-w", "-t", "nat"]
    subprocess.run([*ipt, "-N", "MI_PROBE"], capture_output=True)
    out = {}
    for feature in features:
        done = subprocess.run([*ipt, "-A", "MI_PROBE", *feature], capture_output=True)
        out[" ".join(feature)] = done.returncode == 0
    subprocess.run([*ipt, "-F", "MI_PROBE"], capture_output=True)
    subprocess.run([*ipt, "-X", "MI_PROBE"], capture_output=True)
    return out


def main(plan: dict[str, Any]) -> None:
    result: dict[str, Any] = {}
    if plan.get("init"):
        init = plan["init"]
        env = {**os.environ, **init["env"], "PATH": f"{plan['shim']}:{os.environ.get('PATH', '')}"}
        done = subprocess.run(init["command"], env=env, capture_output=True, text=True, timeout=30)
        result["init"] = {"rc": done.returncode, "stderr": done.stderr.strip()[-300:]}
    if plan.get("probe"):
        result["probe"] = probe(plan["probe"])
    pid = proxy(plan["proxy_uid"], plan["proxy_port"])
    try:
        result["app"] = {str(p): as_uid(plan["app_uid"], fetch, plan["upstream"], p) for p in plan["ports"]}
        result["proxy_own"] = as_uid(plan["proxy_uid"], fetch, plan["upstream"], plan["ports"][0])
    finally:
        os.kill(pid, 9)
        os.waitpid(pid, 0)
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    with open(sys.argv[1]) as plan:
        main(json.load(plan))
