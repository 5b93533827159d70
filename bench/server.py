"""Benchmark of the webhook over TLS against a bare FastAPI endpoint, in the same run.

    python bench/server.py [--seconds 10] [--rounds 3] [--against DIR]

Both servers get the same ~6 KB pod review (the one bench/core.py uses) from wrk, each
request with its own uid as the API server sends them:
throughput at 16 connections (and each server's own CPU time per request over that run, read
from /proc: steadier than throughput where wrk and the servers share the cores), and p50/p99
latency at 1 connection, in four scenarios:

- identical pods (a ReplicaSet scaling up): the same review but for its uid;
- a new pod template on every request: the image tag, a variable's value, an annotation and
  the container's port change, and the workload with them (a changed Deployment rolling
  out, a namespace of one-off Jobs of one CronJob);
- a sibling template: the same template, a different workload on every request (its
  Deployment, ReplicaSet, ``app`` label and generateName; many Deployments of one chart);
- a new template *shape* on every request: as a new template, and a variable renamed too,
  so that no memo can share anything (``webhook.decide.memo``: a new template of a shape
  seen before, as a changed Deployment's is, shares the shape's decision; this load is
  what a pod of a kind never seen costs).

The bare baseline is FastAPI on uvicorn with uvloop and httptools, the fastest stack
uvicorn has. mesh-injector runs exactly as `mesh-injector serve` does (its log line per
admission goes to /dev/null), deciding against examples/cluster.yaml, so every request is
a real injection. ``--against DIR`` also serves the mesh-injector of another checkout (the
code before a change) in the same rounds. Rounds alternate the servers' order; each
round's ratios are printed and the medians last.
"""

from __future__ import annotations

import argparse
import json
import os
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
# The review has bench/core.py's placeholders; each wrk thread fills them: a new uid and
# otherwise the same values every request ("none"), a new workload per request
# ("workload"), or a new template and workload per request ("template"). A run's id (a
# wrk argument) keeps later runs from meeting the templates of earlier ones in the
# server's memo.
LUA = """
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
local f = io.open("{body}", "rb")
local template = f:read("*a")
f:close()
local vary = "{vary}"
-- the template cut at its placeholders once, so a request costs wrk one concatenation (four
-- gsubs over the whole review per request made wrk, on the same two cores, the bottleneck)
local names = {{"__UID__", "__SEQ__", "__TPL__", '"__PORT__"', "__SHP__"}}
local parts, slots = {{}}, {{}}
local pos = 1
while true do
  local first, name, last = nil, nil, nil
  for _, n in ipairs(names) do
    local s, e = template:find(n, pos, true)
    if s and (first == nil or s < first) then first, name, last = s, n, e end
  end
  if first == nil then
    parts[#parts + 1] = template:sub(pos)
    break
  end
  parts[#parts + 1] = template:sub(pos, first - 1)
  slots[#parts] = name
  pos = last + 1
end
local function filled(uid, seq, tpl, port, shp)
  local values = {{
    ["__UID__"] = uid, ["__SEQ__"] = seq, ["__TPL__"] = tpl, ['"__PORT__"'] = tostring(port),
    ["__SHP__"] = shp,
  }}
  local out = {{}}
  for i, part in ipairs(parts) do
    out[#out + 1] = part
    if slots[i] then out[#out + 1] = values[slots[i]] end
  end
  return table.concat(out)
end
local threads = 0
function setup(thread)
  threads = threads + 1
  thread:set("tid", threads)
end
local run = "0"
function init(args)
  run = (args[1] or "0") .. "-" .. tostring(tid or 0)
end
local n = 0
request = function()
  n = n + 1
  local seq = run .. "-" .. tostring(n)
  if vary == "none" then return wrk.format(nil, nil, nil, filled(seq, "0", "0", 9090, "0")) end
  if vary == "workload" then return wrk.format(nil, nil, nil, filled(seq, seq, "0", 9090, "0")) end
  local port = 10000 + n % 20000
  if vary == "template" then return wrk.format(nil, nil, nil, filled(seq, seq, seq, port, "0")) end
  local shp = seq:gsub("%-", "_")
  return wrk.format(nil, nil, nil, filled(seq, seq, seq, port, shp))
end
"""
SCENARIOS = (
    ("identical pods (ReplicaSet)", "none"),
    ("a new pod template per request", "template"),
    ("a sibling template (new workload)", "workload"),
    ("a new template shape per request", "shape"),
)
# the targets against the bare endpoint: (throughput ratio at least, 1-connection p99 ratio at most)
TARGETS = {"none": (0.9, 1.3), "template": (0.5, 1.3)}


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
    url: str,
    lua: Path,
    connections: int,
    seconds: int,
    *,
    refusals_ok: bool = False,
    timeout: int = 2,
    run: str = "0",
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
            "--",
            run,
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


def cpu_seconds(pid: int) -> float:
    """The CPU time (user + system) process ``pid`` has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def serve_command(certs: Path, port: int, metrics_port: int) -> list[str]:
    """`mesh-injector serve` as users run it, on loopback, deciding against the example cluster."""
    return [
        *(sys.executable, "-m", "webhook", "serve", "--host", "127.0.0.1", "--port", str(port)),
        *("--metrics-host", "127.0.0.1", "--metrics-port", str(metrics_port)),
        *("--tls-cert", str(certs / "tls.crt"), "--tls-key", str(certs / "tls.key")),
        *("--cluster", str(REPO / "examples" / "cluster.yaml")),
    ]


def start_mesh(certs: Path, code: Path | None, devnull: object) -> tuple[subprocess.Popen, int]:
    """`mesh-injector serve` of this checkout, or of the checkout at ``code`` (``python -m
    webhook`` run there imports that one's package)."""
    port = free_port()
    env = dict(os.environ)
    if code is not None:
        env["PYTHONPATH"] = str(code)
    proc = subprocess.Popen(
        serve_command(certs, port, free_port()),
        stdout=devnull,
        stderr=devnull,
        cwd=code or REPO,
        env=env,
    )
    return proc, port


def injects(certs: Path, port: int, body: Path) -> None:
    """The server really meshes the review (a JSON patch in its answer)."""
    check = subprocess.run(
        [
            *("curl", "-sS", "--cacert", str(certs / "ca.crt"), "-H", "Content-Type: application/json"),
            *("--data-binary", f"@{body}", f"https://127.0.0.1:{port}/mutate"),
        ],
        capture_output=True,
        text=True,
    )
    assert json.loads(check.stdout)["response"]["patchType"] == "JSONPatch", check.stdout


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=int, default=10)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument(
        "--against", type=Path, help="also serve the mesh-injector of this checkout (code before a change)"
    )
    args = ap.parse_args()
    if shutil.which("wrk") is None:
        sys.exit("wrk is not installed (apt-get install wrk)")
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        write_bundle(generate(dns=["localhost"], ips=["127.0.0.1"], days=1), d)
        review = distinct_workload(typical_review())
        # a variable's name: what makes a new shape (the "shape" load fills it per request)
        review["request"]["object"]["spec"]["containers"][0]["env"][0]["name"] += "___SHP__"
        (d / "review.json").write_text(json.dumps(review))
        for _, vary in SCENARIOS:
            (d / f"post-{vary}.lua").write_text(LUA.format(body=d / "review.json", vary=vary))
        # one filled-in review, to check that each server really meshes it
        (d / "one.json").write_text(
            json.dumps(review)
            .replace("__UID__", "0")
            .replace("__SEQ__", "0")
            .replace("__TPL__", "0")
            .replace('"__PORT__"', "9090")
            .replace("__SHP__", "0")
        )
        devnull = open("/dev/null", "w")
        bare_port = free_port()
        procs = [
            subprocess.Popen(
                [sys.executable, str(REPO / "bench" / "bare_app.py"), str(bare_port), str(d / "tls.crt"),
                 str(d / "tls.key")],
                stdout=devnull,
                stderr=devnull,
            )
        ]  # fmt: skip
        servers = [("bare FastAPI endpoint", bare_port)]
        pids = {"bare FastAPI endpoint": procs[0].pid}
        for name, code in (("mesh-injector", None), ("mesh-injector (against)", args.against)):
            if name == "mesh-injector" or code is not None:
                proc, port = start_mesh(d, code.resolve() if code else None, devnull)
                procs.append(proc)
                servers.append((name, port))
                pids[name] = proc.pid
        try:
            for _, port in servers:
                wait_port(port)
            for _, port in servers[1:]:
                injects(d, port, d / "one.json")
            size = len(json.dumps(review["request"]["object"]))
            print(
                f"pod {size} bytes, review {len(json.dumps(review))} bytes; wrk {args.seconds}s per run, TLS"
                + (f"; against {args.against}" if args.against else "")
            )
            runs = iter(range(1, 1 << 30))
            for _, vary in SCENARIOS:
                for _, port in servers:
                    url = f"https://127.0.0.1:{port}/mutate"
                    wrk(url, d / f"post-{vary}.lua", 4, 2, run=f"w{next(runs)}")  # warm-up
            names = [name for name, _ in servers[1:]]
            ratios: dict[tuple[str, str], list[tuple[float, float]]] = {
                (scenario, name): [] for scenario, _ in SCENARIOS for name in names
            }
            for rnd in range(1, args.rounds + 1):
                for scenario, vary in SCENARIOS:
                    got = {}
                    order = servers if rnd % 2 else servers[::-1]
                    for name, port in order:
                        url, lua = f"https://127.0.0.1:{port}/mutate", d / f"post-{vary}.lua"
                        used = cpu_seconds(pids[name])
                        many = wrk(url, lua, 16, args.seconds, run=f"r{next(runs)}")
                        # the server's own CPU per request: steadier than throughput on a
                        # machine where wrk, the servers and other work share the cores
                        many["cpu_us"] = (cpu_seconds(pids[name]) - used) / many["requests"] * 1e6
                        got[name] = (many, wrk(url, lua, 1, args.seconds, run=f"r{next(runs)}"))
                    bm, b1 = got["bare FastAPI endpoint"]
                    for name, (many, one) in got.items():
                        print(
                            f"round {rnd} {scenario:<34} {name:<24} 16 conns: {many['rps']:7.0f} req/s, "
                            f"server CPU {many['cpu_us']:4.0f} µs/request   "
                            f"1 conn: p50 {one['p50']:.2f} ms  p99 {one['p99']:.2f} ms"
                        )
                    for name in names:
                        mm, m1 = got[name]
                        ratios[(scenario, name)].append(
                            (mm["rps"] / bm["rps"], m1["p99"] / b1["p99"], mm["cpu_us"] / bm["cpu_us"])
                        )
                        print(
                            f"round {rnd} ratio {name} / bare, {scenario}: throughput "
                            f"{ratios[(scenario, name)][-1][0]:.2f}x, 1-conn p99 "
                            f"{ratios[(scenario, name)][-1][1]:.2f}x, server CPU per request "
                            f"{ratios[(scenario, name)][-1][2]:.2f}x"
                        )
            for scenario, vary in SCENARIOS:
                least, most = TARGETS.get(vary, (None, None))
                for name in names:
                    rs = ratios[(scenario, name)]
                    print(
                        f"median of {len(rs)} rounds, {name}, {scenario}: throughput "
                        f"{statistics.median(r[0] for r in rs):.2f}x"
                        + (f" (target >= {least})" if least else "")
                        + f", 1-conn p99 {statistics.median(r[1] for r in rs):.2f}x"
                        + (f" (target <= {most})" if most else "")
                        + f", server CPU per request {statistics.median(r[2] for r in rs):.2f}x"
                    )
        finally:
            for p in procs:
                p.terminate()
                p.wait(timeout=30)


if __name__ == "__main__":
    main()
