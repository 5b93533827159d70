"""Memory under hostile load: many large, distinct reviews at once, then normal ones.

    python bench/hostile.py [--seconds 60] [--normal 5000] [--limit-mib 256]

`mesh-injector serve` (as users run it, deciding against examples/cluster.yaml) gets:
1. 16 wrk connections sending *distinct* reviews of just under 3 MiB (the body limit) for
   ``--seconds``, each pod carrying ~30,000 env entries (many small JSON objects: the most
   Python memory per byte), while one client keeps sending normal ~5 KB reviews;
2. then ``--normal`` normal reviews on one keep-alive connection.
It prints the server's RSS before (baseline), its peak (the kernel's VmHWM) and after the
normal reviews (settled), the refusals (503 from the body budget), and the normal reviews'
p50/p99 during and after the flood. The figure to compare with `deploy/`'s memory limit is
the peak.
"""

from __future__ import annotations

import argparse
import http.client
import json
import shutil
import ssl
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from core import typical_review
from server import LUA, serve_command, wait_port, wrk

from tests.servers import free_port
from webhook.serve.app import MAX_BODY
from webhook.serve.certs import generate, write_bundle


def large_review() -> dict:
    """A distinct-per-request review just under the 3 MiB limit, mostly env entries."""
    review = typical_review()
    meta = review["request"]["object"]["metadata"]
    meta["generateName"] = "bulk-__SEQ__-"
    meta["labels"]["bench-seq"] = "__SEQ__"
    app = review["request"]["object"]["spec"]["containers"][0]
    entry = len(json.dumps({"name": "BULK_00000", "value": "v" * 48})) + 2
    count = (MAX_BODY - len(json.dumps(review)) - 4096) // entry
    app["env"] = [{"name": f"BULK_{i:05d}", "value": f"{i:05d}" + "v" * 43} for i in range(count)]
    return review


def status(pid: int) -> dict[str, int]:
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            out[key] = int(value.split()[0]) // 1024  # MiB
    return out


class NormalClient:
    """Normal reviews on one keep-alive TLS connection; latency of each."""

    def __init__(self, port: int, ca: Path, body: bytes) -> None:
        self.ctx = ssl.create_default_context(cafile=str(ca))
        self.port = port
        self.body = body
        self.latencies: list[float] = []
        self.failures = 0
        self.conn = self._connect()

    def _connect(self) -> http.client.HTTPSConnection:
        return http.client.HTTPSConnection("127.0.0.1", self.port, context=self.ctx, timeout=30)

    def one(self) -> None:
        start = time.perf_counter()
        try:
            self.conn.request("POST", "/mutate", self.body, {"Content-Type": "application/json"})
            resp = self.conn.getresponse()
            data = resp.read()
            ok = resp.status == 200 and b'"patchType"' in data
        except (OSError, http.client.HTTPException):
            self.conn.close()
            self.conn = self._connect()
            ok = False
        self.latencies.append(time.perf_counter() - start)
        self.failures += not ok

    def figures(self) -> str:
        lat = sorted(self.latencies)
        if not lat:
            return "none sent"
        p = lambda q: lat[min(len(lat) - 1, int(q * len(lat)))] * 1000  # noqa: E731
        return f"{len(lat)} reviews, {self.failures} failed, p50 {p(0.5):.2f} ms, p99 {p(0.99):.2f} ms"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=int, default=60)
    ap.add_argument("--normal", type=int, default=5000)
    ap.add_argument("--limit-mib", type=int, default=256, help="the container limit to compare the peak with")
    ap.add_argument("--no-trickle", action="store_true", help="no normal reviews during the flood")
    args = ap.parse_args()
    if shutil.which("wrk") is None:
        sys.exit("wrk is not installed (apt-get install wrk)")
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        write_bundle(generate(dns=["localhost"], ips=["127.0.0.1"], days=1), d)
        big = json.dumps(large_review()).encode()
        assert len(big) + 64 < MAX_BODY, len(big)
        (d / "big.json").write_bytes(big)
        (d / "flood.lua").write_text(LUA.format(body=d / "big.json", vary="workload"))
        normal = json.dumps(typical_review()).encode()
        port, mport = free_port(), free_port()
        devnull = open("/dev/null", "w")
        server = subprocess.Popen(serve_command(d, port, mport), stdout=devnull, stderr=devnull)
        try:
            wait_port(port)
            client = NormalClient(port, d / "ca.crt", normal)
            for _ in range(200):  # warm: imports, memos, TLS session
                client.one()
            time.sleep(1)
            baseline = status(server.pid)["VmRSS"]
            print(f"large review {len(big)} bytes, normal review {len(normal)} bytes")
            print(f"RSS baseline after 200 normal reviews: {baseline} MiB")

            during = NormalClient(port, d / "ca.crt", normal)
            stop = threading.Event()

            def trickle() -> None:
                while not stop.is_set():
                    during.one()
                    time.sleep(0.01)

            t = threading.Thread(target=trickle)
            if not args.no_trickle:
                t.start()
            flood = wrk(
                f"https://127.0.0.1:{port}/mutate",
                d / "flood.lua",
                16,
                args.seconds,
                refusals_ok=True,
                timeout=30,
            )
            stop.set()
            if t.is_alive():
                t.join()
            after_flood = status(server.pid)
            mib = (flood["requests"] - flood["refused"]) * len(big) / 2**20
            print(
                f"flood: {flood['requests']} large reviews in {args.seconds}s, "
                f"{flood['refused']} refused (503), "
                f"{mib:.0f} MiB admitted; RSS at its end {after_flood['VmRSS']} MiB"
            )
            print(f"normal reviews during the flood: {during.figures()}")
            time.sleep(2)
            print(f"RSS 2 s after the flood: {status(server.pid)['VmRSS']} MiB")
            after = NormalClient(port, d / "ca.crt", normal)
            for _ in range(args.normal):
                after.one()
            time.sleep(2)
            final = status(server.pid)
            print(f"normal reviews after the flood: {after.figures()}")
            peak, settled = final["VmHWM"], final["VmRSS"]
            print(
                f"RSS peak {peak} MiB (target <= 200), settled {settled} MiB "
                f"= baseline + {settled - baseline} "
                f"(target <= +20); peak vs limit {args.limit_mib} MiB: {peak / args.limit_mib:.0%}"
            )
            alive = server.poll() is None
            print(f"server alive: {alive}")
        finally:
            server.terminate()
            server.wait(timeout=30)


if __name__ == "__main__":
    main()
