"""Benchmark of the webhook over TLS against a bare FastAPI endpoint, in the same run.

    python bench/server.py [--seconds 10]

Both servers get the same ~5 KB pod review (the one bench/core.py uses) from wrk:
throughput at 16 connections, and p50/p99 latency at 1 connection, in two scenarios:
identical pods (a ReplicaSet scaling up) and a distinct workload on every request (its
Deployment, ReplicaSet, labels and generateName all differ: many Deployments rolling at
once). The bare baseline is FastAPI on uvicorn with uvloop and httptools, the fastest stack
uvicorn has. mesh-injector runs exactly as `mesh-injector serve` does (its log line per
admission goes to /dev/null), deciding against examples/cluster.yaml, so every request is
a real injection. Rounds alternate bare and mesh-injector; each round's ratios are printed
and the medians last.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from core import distinct_workload, typical_review

from tests.servers import free_port
from webhook.serve.certs import generate, write_bundle

REPO = Path(__file__).resolve().parent.parent
LUA = """
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
local f = io.open("{body}", "rb")
local body = f:read("*a")
f:close()
local unique = {unique}
local n = 0
wrk.body = body
request = function()
  if not unique then return wrk.format() end
  n = n + 1  -- a distinct pod each request: nothing can be reused but the workload's eligibility
  return wrk.format(nil, nil, nil, (body:gsub("__SEQ__", tostring(n) .. "-" .. tostring(math.random(1e9)))))
end
"""


def wait_port(port: int) -> None:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"port {port} did not open")


def to_ms(text: str) -> float:
    m = re.match(r"([\d.]+)(us|ms|s)", text)
    assert m, text
    return float(m.group(1)) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[m.group(2)]


def wrk(
    url: str, lua: Path, connections: int, seconds: int, *, refusals_ok: bool = False, timeout: int = 2
) -> dict[str, float]:
    out = subprocess.run(
        [
            "wrk",
            "-t",
            str(min(2, connections)),
            "-c",
            str(connections),
            "-d",
            f"{seconds}s",
            "--latency",
            "--timeout",
            f"{timeout}s",
            "-s",
            str(lua),
            url,
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    lat = {p: to_ms(re.search(rf"^\s+{p}%\s+(\S+)", out, re.M).group(1)) for p in ("50", "99")}
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    socket_errors = re.search(r"Socket errors: (.*)", out)
    if socket_errors or (errors and not refusals_ok):
        raise RuntimeError(f"wrk saw errors: {out}")
    total = int(re.search(r"(\d+) requests in", out).group(1))
    refused = int(errors.group(1)) if errors else 0
    return {"rps": rps, "p50": lat["50"], "p99": lat["99"], "requests": total, "refused": refused}


def serve_command(certs: Path, port: int, metrics_port: int) -> list[str]:
    """`mesh-injector serve` as users run it, on loopback, deciding against the example cluster."""
    return [
        *(sys.executable, "-m", "webhook", "serve", "--host", "127.0.0.1", "--port", str(port)),
        *("--metrics-host", "127.0.0.1", "--metrics-port", str(metrics_port)),
        *("--tls-cert", str(certs / "tls.crt"), "--tls-key", str(certs / "tls.key")),
        *("--cluster", str(REPO / "examples" / "cluster.yaml")),
    ]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=int, default=10)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    if shutil.which("wrk") is None:
        sys.exit("wrk is not installed (apt-get install wrk)")
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        write_bundle(generate(dns=["localhost"], ips=["127.0.0.1"], days=1), d)
        review = distinct_workload(typical_review())
        (d / "review.json").write_text(json.dumps(review))
        for unique in ("false", "true"):
            (d / f"post-{unique}.lua").write_text(LUA.format(body=d / "review.json", unique=unique))
        mesh_port, metrics_port, bare_port = free_port(), free_port(), free_port()
        devnull = open("/dev/null", "w")
        mesh = subprocess.Popen(serve_command(d, mesh_port, metrics_port), stdout=devnull, stderr=devnull)
        bare = subprocess.Popen(
            [
                sys.executable,
                str(REPO / "bench" / "bare_app.py"),
                str(bare_port),
                str(d / "tls.crt"),
                str(d / "tls.key"),
            ],
            stdout=devnull,
            stderr=devnull,
        )
        try:
            wait_port(mesh_port)
            wait_port(bare_port)
            check = subprocess.run(
                [
                    "curl",
                    "-sS",
                    "--cacert",
                    str(d / "ca.crt"),
                    "-H",
                    "Content-Type: application/json",
                    "--data-binary",
                    f"@{d / 'review.json'}",
                    f"https://127.0.0.1:{mesh_port}/mutate",
                ],
                capture_output=True,
                text=True,
            )
            assert json.loads(check.stdout)["response"]["patchType"] == "JSONPatch", check.stdout
            size = len(json.dumps(review["request"]["object"]))
            print(
                f"pod {size} bytes, review {len(json.dumps(review))} bytes; wrk {args.seconds}s per run, TLS"
            )
            scenarios = (
                ("identical pods (ReplicaSet)", "post-false.lua"),
                ("a distinct workload per request", "post-true.lua"),
            )
            servers = (("bare FastAPI endpoint", bare_port), ("mesh-injector", mesh_port))
            for _, lua in scenarios:
                for _, port in servers:
                    wrk(f"https://127.0.0.1:{port}/mutate", d / lua, 4, 2)  # warm-up
            ratios: dict[str, list[tuple[float, float]]] = {name: [] for name, _ in scenarios}
            for rnd in range(1, args.rounds + 1):
                for scenario, lua in scenarios:
                    got = {}
                    for name, port in servers if rnd % 2 else servers[::-1]:
                        url = f"https://127.0.0.1:{port}/mutate"
                        got[name] = (wrk(url, d / lua, 16, args.seconds), wrk(url, d / lua, 1, args.seconds))
                    (bm, b1), (mm, m1) = got["bare FastAPI endpoint"], got["mesh-injector"]
                    ratios[scenario].append((mm["rps"] / bm["rps"], m1["p99"] / b1["p99"]))
                    for name, (many, one) in got.items():
                        print(
                            f"round {rnd} {scenario:<32} {name:<22} 16 conns: {many['rps']:7.0f} req/s   "
                            f"1 conn: p50 {one['p50']:.2f} ms  p99 {one['p99']:.2f} ms"
                        )
                    print(
                        f"round {rnd} ratio mesh-injector / bare, {scenario}: throughput "
                        f"{ratios[scenario][-1][0]:.2f}x, 1-conn p99 {ratios[scenario][-1][1]:.2f}x"
                    )
            for scenario, rs in ratios.items():
                print(
                    f"median of {len(rs)} rounds, {scenario}: throughput "
                    f"{statistics.median(r[0] for r in rs):.2f}x (target >= 0.8), 1-conn p99 "
                    f"{statistics.median(r[1] for r in rs):.2f}x (target <= 1.5)"
                )
        finally:
            for p in (mesh, bare):
                p.terminate()
                p.wait(timeout=30)


if __name__ == "__main__":
    main()
