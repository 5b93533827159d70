"""Benchmark of the webhook over TLS against a bare FastAPI endpoint, in the same run.

    python bench/server.py [--seconds 10]

Both servers get the same ~5 KB pod review (the one bench/core.py uses) from wrk:
throughput at 16 connections, and p50/p99 latency at 1 connection. mesh-injector runs
exactly as `mesh-injector serve` does (its log line per admission goes to /dev/null),
deciding against examples/cluster.yaml, so every request is a real injection.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from core import typical_review

from tests.servers import free_port
from webhook.certs import generate, write_bundle

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


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=int, default=10)
    args = ap.parse_args()
    if shutil.which("wrk") is None:
        sys.exit("wrk is not installed (apt-get install wrk)")
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        write_bundle(generate(dns=["localhost"], ips=["127.0.0.1"], days=1), d)
        review = typical_review()
        review["request"]["object"]["metadata"]["labels"]["bench-seq"] = "__SEQ__"
        (d / "review.json").write_text(json.dumps(review))
        for unique in ("false", "true"):
            (d / f"post-{unique}.lua").write_text(LUA.format(body=d / "review.json", unique=unique))
        mesh_port, metrics_port, bare_port = free_port(), free_port(), free_port()
        devnull = open("/dev/null", "w")
        mesh = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "webhook",
                "serve",
                "--host",
                "127.0.0.1",
                "--port",
                str(mesh_port),
                "--metrics-host",
                "127.0.0.1",
                "--metrics-port",
                str(metrics_port),
                "--tls-cert",
                str(d / "tls.crt"),
                "--tls-key",
                str(d / "tls.key"),
                "--cluster",
                str(REPO / "examples" / "cluster.yaml"),
            ],
            stdout=devnull,
            stderr=devnull,
        )
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
            results = {}
            for scenario, lua in (
                ("identical pods (ReplicaSet)", "post-false.lua"),
                ("a distinct pod per request", "post-true.lua"),
            ):
                for name, port in (("bare FastAPI endpoint", bare_port), ("mesh-injector", mesh_port)):
                    url = f"https://127.0.0.1:{port}/mutate"
                    wrk(url, d / lua, 4, 2)  # warm-up
                    results[(scenario, name)] = (
                        wrk(url, d / lua, 16, args.seconds),
                        wrk(url, d / lua, 1, args.seconds),
                    )
            for (scenario, name), (many, one) in results.items():
                print(
                    f"{scenario:<28} {name:<22} 16 conns: {many['rps']:7.0f} req/s   "
                    f"1 conn: p50 {one['p50']:.2f} ms  p99 {one['p99']:.2f} ms"
                )
            for scenario in ("identical pods (ReplicaSet)", "a distinct pod per request"):
                (bm, b1), (mm, m1) = (
                    results[(scenario, "bare FastAPI endpoint")],
                    results[(scenario, "mesh-injector")],
                )
                print(
                    f"ratio mesh-injector / bare, {scenario}: throughput {mm['rps'] / bm['rps']:.2f}x, "
                    f"p50 {m1['p50'] / b1['p50']:.2f}x, p99 {m1['p99'] / b1['p99']:.2f}x"
                )
        finally:
            for p in (mesh, bare):
                p.terminate()
                p.wait(timeout=30)


if __name__ == "__main__":
    main()
