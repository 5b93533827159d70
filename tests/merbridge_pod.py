"""What runs inside a test pod's network namespace (``ip netns exec NS python merbridge_pod.py
ROLE PLAN``), as the kubelet and Merbridge's CNI server would set it up: the process joins the
pod's cgroup, opens Merbridge's mark listener (0.0.0.0:39807 with the netns's SO_MARK), then
plays the pod's containers with the uids the emitted pod gives them. Prints one JSON line.

Roles:
- ``target``: a pod on the same node with servers on ports (app, proxy inbound, admin), each
  answering with its port and the SO_ORIGINAL_DST it sees; runs until killed.
- ``caller``: the pod under test: the network validator (if any), then the proxy, then the
  app's plain connects and the proxy's own connects to the target pod.
- ``play``: a pod's containers in the order the kubelet starts them (``steps``): the rules of
  an init container run as it runs them, the network validator, the proxy (where it starts:
  a native sidecar among the init containers, else after them), and the connects of the
  pod's own init containers, each as its uid. Without ``marked`` (Merbridge's CNI plugin
  does not take the pod) no mark listener is opened.
"""

from __future__ import annotations

import json
import os
import secrets
import socket
import struct
import subprocess
import sys
import threading
import time
from typing import Any

from podnet import as_uid, fetch, original_dst


def setup(plan: dict[str, Any]) -> socket.socket | None:
    with open(os.path.join(plan["cgroup"], "cgroup.procs"), "w") as f:
        f.write(str(os.getpid()))
    if not plan.get("marked", True):
        return None
    mark = socket.socket()
    mark.setsockopt(socket.SOL_SOCKET, socket.SO_MARK, struct.pack("I", plan["mark"]))
    mark.bind(("0.0.0.0", 39807))
    mark.listen()
    return mark


def serve(ip: str, port: int, tag: str) -> socket.socket:
    """A server answering each connection with what it is and what it saw."""
    srv = socket.create_server((ip, port), reuse_port=True)

    def loop() -> None:
        while True:
            conn, _ = srv.accept()
            reply = {"tag": tag, "port": conn.getsockname()[1], "orig": original_dst(conn)}
            conn.sendall(json.dumps(reply).encode())
            conn.close()

    threading.Thread(target=loop, daemon=True).start()
    return srv


def validator(listen: str, connect: str) -> dict[str, Any]:
    """linkerd-network-validator's check: listen, connect to an address nothing serves, and
    expect its own token back (only a redirect can bring the connection to the listener)."""
    host, port = listen.rsplit(":", 1)
    token = secrets.token_hex(16).encode()
    srv = socket.create_server((host, int(port)))

    def answer() -> None:
        conn, _ = srv.accept()
        conn.sendall(token)
        conn.close()

    threading.Thread(target=answer, daemon=True).start()
    chost, cport = connect.rsplit(":", 1)
    try:
        s = socket.create_connection((chost, int(cport)), timeout=3)
        got = s.recv(64)
        s.close()
        return {"ok": got == token}
    except OSError as exc:
        return {"ok": False, "error": str(exc)}
    finally:
        srv.close()


def istio_validation() -> dict[str, Any]:
    """istio-validation's check: listeners on 127.0.0.1:15001 and :15006, a client bound to
    127.0.0.1 connecting to 127.0.0.6:15002 (which the rules must send to a listener)."""
    servers = [socket.create_server(("127.0.0.1", p)) for p in (15001, 15006)]
    try:
        s = socket.socket()
        s.settimeout(3)
        s.bind(("127.0.0.1", 0))
        s.connect(("127.0.0.6", 15002))
        s.close()
        return {"ok": True}
    except OSError as exc:
        return {"ok": False, "error": str(exc)}
    finally:
        for srv in servers:
            srv.close()


def proxy(bind: str, port: int, ready_w: int) -> None:
    """The stand-in proxy: accept redirected connections, read SO_ORIGINAL_DST, connect there
    (as the proxy's uid, which the redirect must leave alone) and relay the answer."""
    srv = socket.socket()
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind((bind, port))
    srv.listen(16)
    os.write(ready_w, b"r")
    while True:
        conn, _ = srv.accept()
        orig = original_dst(conn)
        try:
            host, oport = (orig or "0.0.0.0:0").rsplit(":", 1)
            upstream = fetch(host, int(oport))
        except OSError as exc:
            upstream = {"error": str(exc)}
        conn.sendall(json.dumps({"tag": "proxy", "orig": orig, "upstream": upstream}).encode())
        conn.close()


def target(plan: dict[str, Any]) -> None:
    mark = setup(plan)  # kept open for the pod's life, as the CNI server keeps it
    servers = [serve("0.0.0.0", port, tag) for tag, port in plan["servers"].items()]
    print(json.dumps({"ready": len(servers)}), flush=True)
    while mark is None or mark.fileno() >= 0:
        time.sleep(3600)


def start_proxy(p: dict[str, Any]) -> int:
    """The stand-in proxy in a child running as its uid, listening when this returns."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.setgid(p["uid"])
        os.setuid(p["uid"])
        proxy(p["bind"], p["port"], w)
        os._exit(0)
    os.read(r, 1)
    return pid


def reach(host: str, port: int) -> Any:
    """A plain connect, as an init container's ``nc`` would make it: what answered, or why not."""
    try:
        return fetch(host, port)
    except OSError as exc:
        return {"error": f"{type(exc).__name__}: {exc}"}


def play(plan: dict[str, Any]) -> None:
    mark = setup(plan)
    result: dict[str, Any] = {}
    proxies: list[int] = []
    try:
        for step in plan["steps"]:
            name, do = step["name"], step["do"]
            if do == "rules":
                env = {**os.environ, **step["env"]}
                done = subprocess.run(step["command"], env=env, capture_output=True, text=True, timeout=30)
                result[name] = {"ok": done.returncode == 0, "stderr": done.stderr[-400:]}
            elif do == "validator":
                result[name] = as_uid(step["uid"], validator, step["listen"], step["connect"])
            elif do == "proxy":
                proxies.append(start_proxy(step))
                result[name] = {"listening": f"{step['bind']}:{step['port']}"}
            else:
                result[name] = as_uid(step["uid"], reach, step["host"], step["port"])
    finally:
        for pid in proxies:
            os.kill(pid, 9)
            os.waitpid(pid, 0)
    print(json.dumps(result), flush=True)
    if mark is not None:
        mark.close()


def caller(plan: dict[str, Any]) -> None:
    mark = setup(plan)  # kept open for the pod's life, as the CNI server keeps it
    for port in plan["upstream_ports"]:
        serve(plan["upstream_ip"], port, f"upstream:{port}")
    result: dict[str, Any] = {}
    if plan.get("validator"):
        v = plan["validator"]
        result["validator"] = as_uid(v["uid"], validator, v["listen"], v["connect"])
    if plan.get("istio_validation"):
        result["istio_validation"] = as_uid(plan["istio_validation"], istio_validation)
    p = plan["proxy"]
    pid = start_proxy(p)
    try:
        result["app"] = {
            str(port): as_uid(plan["app_uid"], fetch, plan["upstream_ip"], port)
            for port in plan["upstream_ports"]
        }
        result["proxy_to_peer"] = {
            str(port): as_uid(p["uid"], fetch, plan["peer_ip"], port) for port in plan["peer_ports"]
        }
    finally:
        os.kill(pid, 9)
        os.waitpid(pid, 0)
    print(json.dumps(result), flush=True)
    if mark is not None:
        mark.close()


if __name__ == "__main__":
    role, raw = sys.argv[1], json.loads(sys.argv[2])
    {"target": target, "caller": caller, "play": play}[role](raw)
