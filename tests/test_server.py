"""The webhook over the network: real uvicorn, real TLS verified against a generated CA."""

from __future__ import annotations

import base64
import copy
import json
import logging
import os
import random
import re
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import jsonpatch
import pytest
import yaml
from cryptography import x509

from tests import expectations
from tests.servers import serve_process, thread_server
from tests.support import CASES, EXAMPLE, JSON, anchored_policy, eventually, load_case, unavailable
from webhook.admission import admit
from webhook.cluster.snapshot import StaticClusterView, build_snapshot
from webhook.serve.answers import Answers
from webhook.serve.app import AppState
from webhook.serve.certs import generate, write_bundle

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def live(certs):
    state = AppState(cluster=StaticClusterView(build_snapshot()), policy=anchored_policy(), read_timeout=1.5)
    with thread_server(state, certs) as url:
        yield state, url


@pytest.fixture
def client(certs, live):
    with httpx.Client(base_url=live[1], verify=certs.client_context(), timeout=10) as c:
        yield c


def decoded_patch(body):
    raw = body["response"].get("patch")
    return json.loads(base64.b64decode(raw)) if raw else []


@pytest.mark.parametrize("path", CASES, ids=lambda p: p.name)
def test_golden_reviews_over_https_answer_the_reviewed_expectations(path, live, client):
    """Each golden review through the real server: the patch it answers turns the received
    pod into the case's reviewed ``expected.yaml``, its warnings are the reviewed ones, and
    the case's hand-written expectations (the decision and what the control planes read)
    hold for what it answered. Nothing is compared with the core run again."""
    state, _ = live
    case = load_case(path)
    state.cluster, state.policy = StaticClusterView(case.snapshot), case.policy
    r = client.post("/mutate", content=json.dumps(case.review), headers=JSON)
    assert r.status_code == 200
    body = r.json()
    assert body["apiVersion"] == "admission.k8s.io/v1" and body["kind"] == "AdmissionReview"
    assert body["response"]["uid"] == case.review["request"]["uid"]
    assert body["response"]["allowed"] is True
    original = case.review["request"]["object"]
    patch = decoded_patch(body)
    assert ("patchType" in body["response"]) is bool(patch)
    if patch:
        assert body["response"]["patchType"] == "JSONPatch"
    pod = jsonpatch.apply_patch(copy.deepcopy(original), patch) if patch else original
    warnings = body["response"].get("warnings", [])
    reviewed = yaml.safe_load((path / "expected.yaml").read_text())
    assert pod == reviewed["pod"]
    assert warnings == reviewed["warnings"]
    expectations.check(case.meta, case.policy.proxy.flavour, original, pod, warnings)
    # the same review with other uids (a ReplicaSet's next pods; the third is answered from
    # the kept answer where the review can be kept): the first answer with each one's uid
    again = copy.deepcopy(case.review)
    for n in (2, 3):
        again["request"]["uid"] = uid = f"{case.review['request']['uid']}-{n}"
        text = json.dumps(again)
        answer = client.post("/mutate", content=text, headers=JSON).json()
        assert answer == {**body, "response": {**body["response"], "uid": uid}}
    assert len(state.answers) == (Answers.key(text.encode(), again) is not None)


@pytest.mark.parametrize(
    ("body", "ctype", "status", "needle"),
    [
        (b'{"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionRev', "application/json", 400, "not JSON"),
        (b'{"apiVersion": "v1", "kind": "Pod"}', "application/json", 400, "expected 'AdmissionReview'"),
        (
            b'{"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", '
            b'"request": {"operation": "CREATE"}}',
            "application/json",
            400,
            "request.uid",
        ),
        (b"[1, 2, 3]", "application/json", 400, "expected an AdmissionReview object"),
        (json.dumps(EXAMPLE).encode(), "text/plain", 415, "not application/json"),
        (json.dumps(EXAMPLE).encode(), "", 415, "not application/json"),
    ],
)
def test_bad_requests(client, body, ctype, status, needle):
    headers = {"Content-Type": ctype} if ctype else {}
    r = client.post("/mutate", content=body, headers=headers)
    assert r.status_code == status
    assert needle in r.json()["error"]


def test_wrong_method_and_path_are_answered_like_every_refusal_and_counted(client, live):
    state, _ = live

    def counted(code: str) -> float:
        return state.metrics.rejected.labels(code)._value.get()

    before = counted("405"), counted("404")
    got = client.get("/mutate")
    assert got.status_code == 405 and got.headers["allow"] == "POST"
    assert got.json() == {"error": "GET is not allowed on /mutate; use POST"}
    assert client.put("/mutate", content=b"{}", headers=JSON).status_code == 405
    assert client.post("/healthz").json() == {"error": "POST is not allowed on /healthz; use GET"}
    missing = client.get("/nope")
    assert missing.status_code == 404 and "no such path '/nope'" in missing.json()["error"]
    assert counted("405") - before[0] == 3 and counted("404") - before[1] == 1
    assert client.get("/healthz").status_code == 200


def _tls_socket(certs, url):
    port = int(url.rsplit(":", 1)[1])
    raw = socket.create_connection(("127.0.0.1", port), timeout=10)
    return certs.client_context().wrap_socket(raw, server_hostname="localhost")


def _read_response(sock) -> tuple[int, bytes]:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    length = int(re.search(rb"content-length: (\d+)", head, re.I).group(1))
    while len(rest) < length:
        rest += sock.recv(65536)
    return status, rest


def test_declared_oversize_body_is_refused_without_reading_it(certs, live):
    sock = _tls_socket(certs, live[1])
    sock.sendall(
        b"POST /mutate HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Content-Length: 4000000\r\n\r\n"
    )
    # answered although not one body byte was sent: a server that read first would answer
    # 408 once its read timeout passed, never 413
    status, body = _read_response(sock)
    assert status == 413 and b"limit" in body
    sock.close()


def test_streamed_oversize_body_is_refused(client):
    def chunks():
        for _ in range(4):
            yield b" " * (1024 * 1024)

    r = client.post("/mutate", content=chunks(), headers=JSON)
    assert r.status_code == 413


def _trickler(certs, url) -> tuple[ssl.SSLSocket, threading.Event]:
    """A client that declares 100 bytes and sends one every 0.3 s; set the event to stop it."""
    sock = _tls_socket(certs, url)
    sock.sendall(
        b"POST /mutate HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{"
    )
    stop = threading.Event()

    def trickle():
        while not stop.wait(0.3):
            try:
                sock.sendall(b" ")
            except OSError:
                return

    threading.Thread(target=trickle, daemon=True).start()
    return sock, stop


def test_slow_client_does_not_hold_up_others_and_times_out(certs, live, client):
    state, url = live
    # held for a minute (the read timeout in force when its request began): the others are
    # all answered while it is still unanswered, however slow this machine is today
    state.read_timeout = 60
    try:
        held, stop_held = _trickler(certs, url)
    finally:
        state.read_timeout = 1.5
    try:
        for _ in range(20):
            assert client.post("/mutate", content=json.dumps(EXAMPLE), headers=JSON).status_code == 200
        held.setblocking(False)
        with pytest.raises(ssl.SSLWantReadError):  # nothing for it yet (not even an early answer)
            held.recv(1)
    finally:
        stop_held.set()
        held.close()
    sock, stop = _trickler(certs, url)
    status, body = _read_response(sock)  # the read timeout (1.5 s) answers the trickler
    stop.set()
    assert status == 408 and b"not received within 1.5s" in body
    sock.close()


def test_core_failure_allows_the_pod_and_keeps_serving(certs):
    def exploding(request, snapshot, policy):
        if request["uid"] == "boom":
            raise KeyError("bug")
        return admit(request, snapshot, policy)

    state = AppState(
        cluster=StaticClusterView(build_snapshot()), policy=anchored_policy(), admit_fn=exploding
    )
    with thread_server(state, certs) as url, httpx.Client(base_url=url, verify=certs.client_context()) as c:
        bad = copy.deepcopy(EXAMPLE)
        bad["request"]["uid"] = "boom"
        r = c.post("/mutate", content=json.dumps(bad), headers=JSON)
        assert r.status_code == 200
        resp = r.json()["response"]
        assert resp == {
            "uid": "boom",
            "allowed": True,
            "warnings": ["mesh-injector: internal error, pod admitted without a proxy: KeyError"],
        }
        r = c.post("/mutate", content=json.dumps(EXAMPLE), headers=JSON)
        assert r.status_code == 200 and r.json()["response"]["uid"] == EXAMPLE["request"]["uid"]
        errors = state.metrics.admissions.labels("error", "none")._value.get()
        assert errors == 1


def test_dry_run_gets_the_same_answer_and_leaves_no_log(client, live, caplog):
    state, _ = live
    state.cluster, state.policy = (
        StaticClusterView(build_snapshot(namespaces={"shop": {"mesh-injector.io/inject": "enabled"}})),
        anchored_policy(),
    )
    dry = copy.deepcopy(EXAMPLE)
    dry["request"]["dryRun"] = True
    dry["request"]["uid"] = "dry-1"
    wet = copy.deepcopy(EXAMPLE)
    wet["request"]["uid"] = "wet-1"
    with caplog.at_level(logging.INFO, logger="mesh_injector.admission"):
        a = client.post("/mutate", content=json.dumps(dry), headers=JSON).json()["response"]
        b = client.post("/mutate", content=json.dumps(wet), headers=JSON).json()["response"]
    assert a["patch"] == b["patch"] and a["patch"]
    logged = [json.loads(r.getMessage()) for r in caplog.records if r.name == "mesh_injector.admission"]
    assert [line["uid"] for line in logged] == ["wet-1"]
    line = logged[0]
    assert line["outcome"] == "injected" and line["workload"] == "shop/Deployment/checkout"
    assert "object" not in line and "spec" not in json.dumps(line)


OPTED_IN = {"shop": {"mesh-injector.io/inject": "enabled"}}


def _counting(calls: list[str], fail_first: bool = False):
    """``admit`` that records the uid of each request it decides (and raises on the first)."""

    def counted(request, snapshot, policy):
        calls.append(request["uid"])
        if fail_first and len(calls) == 1:
            raise KeyError("bug")
        return admit(request, snapshot, policy)

    return counted


def _review(uid: str, **request: object) -> bytes:
    review = copy.deepcopy(EXAMPLE)
    review["request"].update(uid=uid, **request)
    return json.dumps(review).encode()


def test_a_replicasets_pods_are_answered_from_the_first_ones_answer(certs, caplog):
    """Reviews the same but for their uid (a ReplicaSet's pods) are decided twice (the second
    answer is kept): each later one gets its own uid back with that patch, which is the patch
    ``admit`` gives it, and is counted and logged as its own admission."""
    calls: list[str] = []
    snapshot = build_snapshot(namespaces=OPTED_IN)
    state = AppState(cluster=StaticClusterView(snapshot), policy=anchored_policy(), admit_fn=_counting(calls))
    uids = [f"rs-pod-{i}" for i in range(4)]
    with (
        thread_server(state, certs) as url,
        httpx.Client(base_url=url, verify=certs.client_context()) as c,
        caplog.at_level(logging.INFO, logger="mesh_injector.admission"),
    ):
        answers = [c.post("/mutate", content=_review(uid), headers=JSON).json() for uid in uids]
    assert calls == ["rs-pod-0", "rs-pod-1"] and len(state.answers) == 1
    assert [a["response"]["uid"] for a in answers] == uids
    fresh = admit(json.loads(_review("rs-pod-3"))["request"], snapshot, state.policy)
    assert fresh.injected and decoded_patch(answers[3]) == fresh.patch
    assert answers[0]["response"] == {**answers[3]["response"], "uid": "rs-pod-0"}
    assert state.metrics.admissions.labels("injected", fresh.mode.value)._value.get() == 4
    logged = [json.loads(r.getMessage()) for r in caplog.records if r.name == "mesh_injector.admission"]
    assert [(line["uid"], line["outcome"], line["mode"]) for line in logged] == [
        (uid, "injected", fresh.mode.value) for uid in uids
    ]
    assert {line["workload"] for line in logged} == {"shop/Deployment/checkout"}
    # the kept answers' lines are the first one's, field for field, with their own uid and time
    for line in logged[1:]:
        assert list(line) == list(logged[0]) and isinstance(line["duration_ms"], float)
        assert line == {**logged[0], "uid": line["uid"], "duration_ms": line["duration_ms"]}


def test_a_kept_answer_is_not_served_for_a_new_snapshot_a_failure_or_a_uid_seen_twice(certs):
    calls: list[str] = []
    state = AppState(
        cluster=StaticClusterView(build_snapshot(namespaces=OPTED_IN)),
        policy=anchored_policy(),
        admit_fn=_counting(calls, fail_first=True),
    )
    with thread_server(state, certs) as url, httpx.Client(base_url=url, verify=certs.client_context()) as c:

        def post(body: bytes) -> dict:
            r = c.post("/mutate", content=body, headers=JSON)
            assert r.status_code == 200
            return r.json()["response"]

        # a failed decision is answered (allowed, unmeshed) and never kept
        assert "patch" not in post(_review("a")) and "patch" in post(_review("b"))
        assert "patch" in post(_review("c")) and "patch" in post(_review("d"))
        assert calls == ["a", "b", "c"]
        # the uid also elsewhere in the review: decided every time
        doubled = copy.deepcopy(EXAMPLE)
        for uid in ("e", "f", "g"):
            doubled["request"]["uid"] = uid
            doubled["request"]["object"]["metadata"]["labels"]["release"] = uid
            post(json.dumps(doubled).encode())
        assert calls[3:] == ["e", "f", "g"]
        # a new snapshot (the namespace no longer opted in) is decided on afresh
        state.cluster = StaticClusterView(build_snapshot())
        skipped = post(_review("h"))
        assert calls[6:] == ["h"] and "patch" not in skipped and skipped["uid"] == "h"
        assert post(_review("i")) == post(_review("j")) | {"uid": "i"} and calls[7:] == ["i"]
        # a dry run is a review of its own, answered the same
        assert post(_review("k", dryRun=True)) == {**skipped, "uid": "k"} and calls[8:] == ["k"]


def test_a_bad_review_is_refused_every_time(client, live):
    review = copy.deepcopy(EXAMPLE)
    review["request"]["object"]["spec"]["containers"] = {"not": "a list"}
    for uid in ("bad-1", "bad-2"):
        review["request"]["uid"] = uid
        r = client.post("/mutate", content=json.dumps(review), headers=JSON)
        assert r.status_code == 400 and "spec.containers" in r.json()["error"]


@pytest.mark.filterwarnings("ignore:ssl.TLSVersion:DeprecationWarning")
def test_tls_12_is_the_minimum(certs, live):
    port = int(live[1].rsplit(":", 1)[1])
    old = certs.client_context()
    old.minimum_version = ssl.TLSVersion.TLSv1
    old.maximum_version = ssl.TLSVersion.TLSv1_1
    with pytest.raises(ssl.SSLError), socket.create_connection(("127.0.0.1", port)) as raw:
        old.wrap_socket(raw, server_hostname="localhost")
    ok = certs.client_context()
    ok.maximum_version = ssl.TLSVersion.TLSv1_2
    with (
        socket.create_connection(("127.0.0.1", port)) as raw,
        ok.wrap_socket(raw, server_hostname="localhost") as s,
    ):
        assert s.version() == "TLSv1.2"


def _mangle(rng: random.Random, review: dict) -> bytes:
    r = copy.deepcopy(review)
    junk = [None, 0, -1, 3.5, True, "", "x" * 300, [], {}, [1, {"a": None}], {"kind": {"kind": 7}}]
    choice = rng.randrange(9)
    paths = [
        ["request"],
        ["request", "object"],
        ["request", "object", "metadata"],
        ["request", "object", "spec"],
        ["request", "object", "spec", "containers"],
        ["request", "kind"],
        ["request", "namespace"],
        ["request", "object", "metadata", "labels"],
        ["request", "object", "metadata", "annotations"],
        ["request", "object", "spec", "affinity"],
        ["request", "object", "spec", "tolerations"],
        ["request", "operation"],
        ["request", "object", "metadata", "ownerReferences"],
    ]
    path = rng.choice(paths)
    parent = r
    for key in path[:-1]:
        parent = parent.get(key) if isinstance(parent, dict) else None
        if parent is None:
            break
    if choice <= 3 and isinstance(parent, dict):
        parent[path[-1]] = rng.choice(junk)
    elif choice == 4 and isinstance(parent, dict):
        parent.pop(path[-1], None)
    elif choice == 5:
        spec = r["request"]["object"]["spec"]
        spec["containers"] = [{"name": rng.choice(["", "mesh-proxy", None, 5]), "ports": rng.choice(junk)}]
        spec["initContainers"] = rng.choice(junk)
    elif choice == 6:
        meta = r["request"]["object"]["metadata"]
        meta["annotations"] = {
            f"mesh-injector.io/{k}": rng.choice(["", "ebpf", "-1", "9" * 40, "1e400", "a,b"])
            for k in (
                "interception",
                "proxy-cpu-request",
                "skip-inbound-ports",
                "proxy-memory-limit",
                "status",
                "native-sidecar",
            )
        }
    elif choice == 7:
        raw = json.dumps(r).encode()
        cut = rng.randrange(len(raw))
        return raw[:cut] + bytes([rng.randrange(256)]) + raw[cut + 1 :]
    else:
        r["request"]["object"]["spec"]["affinity"] = {
            "nodeAffinity": {
                "requiredDuringSchedulingIgnoredDuringExecution": {
                    "nodeSelectorTerms": rng.choice(
                        [
                            *junk,
                            [
                                {
                                    "matchExpressions": [
                                        {
                                            "key": rng.choice(["a", None]),
                                            "operator": rng.choice(["Gt", "In", "?"]),
                                            "values": rng.choice(junk),
                                        }
                                    ]
                                }
                            ],
                        ]
                    )
                }
            }
        }
    if isinstance(r.get("request"), dict) and rng.random() > 0.05:
        r["request"]["uid"] = f"fuzz-{rng.randrange(10**9)}"
    return json.dumps(r).encode()


def test_fuzz_mangled_reviews(live, client):
    state, _ = live
    case = load_case(CASES[0])
    state.cluster, state.policy = StaticClusterView(case.snapshot), case.policy
    rng = random.Random(20261127)
    seeds = [load_case(p).review for p in CASES[:12]]
    statuses: dict[int, int] = {}
    errors_before = state.metrics.admissions.labels("error", "none")._value.get()
    for _ in range(2000):
        body = _mangle(rng, rng.choice(seeds))
        r = client.post("/mutate", content=body, headers=JSON)
        statuses[r.status_code] = statuses.get(r.status_code, 0) + 1
        assert r.status_code in (200, 400), (r.status_code, body[:300])
        if r.status_code == 200:
            resp = r.json()["response"]
            assert resp["allowed"] is True and resp["uid"]
    assert sum(statuses.values()) == 2000 and statuses.get(200, 0) > 500
    errors = state.metrics.admissions.labels("error", "none")._value.get() - errors_before
    assert errors == 0, "mangled pods must be decided, not crash the core"
    assert client.get("/healthz").status_code == 200


# --- the real `mesh-injector serve` process ------------------------------------------------


def _secret_dir(root: Path, version: str, bundle) -> None:
    """Write certs the way the kubelet updates a mounted Secret: a new timestamped directory,
    then an atomic swap of the ``..data`` symlink."""
    target = root / f"..{version}"
    target.mkdir()
    (target / "tls.crt").write_bytes(bundle.cert)
    (target / "tls.key").write_bytes(bundle.key)
    tmp = root / "..data_tmp"
    os.symlink(target.name, tmp)
    os.replace(tmp, root / "..data")
    for name in ("tls.crt", "tls.key"):
        if not (root / name).is_symlink():
            os.symlink(f"..data/{name}", root / name)


def _served_serial(port: int, ctx: ssl.SSLContext) -> int:
    with (
        socket.create_connection(("127.0.0.1", port), timeout=5) as raw,
        ctx.wrap_socket(raw, server_hostname="localhost") as s,
    ):
        return x509.load_der_x509_certificate(s.getpeercert(binary_form=True)).serial_number


def test_certificate_rotation_under_load(tmp_path):
    ca_dir = tmp_path / "ca"
    first = generate(dns=["localhost"], ips=["127.0.0.1"], days=1)
    write_bundle(first, ca_dir)
    second = generate(dns=["localhost"], ips=["127.0.0.1"], days=30, ca=(first.ca_cert, first.ca_key))
    mount = tmp_path / "secret"
    mount.mkdir()
    _secret_dir(mount, "2026_11_27_a", first)
    ctx = ssl.create_default_context(cafile=str(ca_dir / "ca.crt"))
    with serve_process(
        None, "--tls-cert", str(mount / "tls.crt"), "--tls-key", str(mount / "tls.key"), "--cert-poll", "0.3"
    ) as proc:
        port = int(proc.url.rsplit(":", 1)[1])
        old_serial = _served_serial(port, ctx)
        assert old_serial == x509.load_pem_x509_certificate(first.cert).serial_number
        failures: list[str] = []
        done = {"n": 0}
        stop = threading.Event()

        def hammer(keep_alive: bool) -> None:
            client = httpx.Client(verify=ctx, timeout=10) if keep_alive else None
            while not stop.is_set():
                try:
                    if client is not None:
                        r = client.post(proc.url + "/mutate", content=json.dumps(EXAMPLE), headers=JSON)
                    else:
                        r = httpx.post(
                            proc.url + "/mutate", content=json.dumps(EXAMPLE), headers=JSON, verify=ctx
                        )
                    if r.status_code != 200:
                        failures.append(str(r.status_code))
                    done["n"] += 1
                except httpx.HTTPError as exc:
                    failures.append(repr(exc))

        threads = [threading.Thread(target=hammer, args=(ka,)) for ka in (True, False)]
        for t in threads:
            t.start()
        eventually(lambda: done["n"] >= 10, timeout=60)  # requests flowing on both clients
        _secret_dir(mount, "2026_11_27_b", second)
        new_serial = x509.load_pem_x509_certificate(second.cert).serial_number
        eventually(lambda: _served_serial(port, ctx) == new_serial, timeout=60, every=0.2)
        rotated = done["n"]
        eventually(lambda: done["n"] >= rotated + 10, timeout=60)  # and on after the swap
        stop.set()
        for t in threads:
            t.join()
        assert failures == []
        metrics = httpx.get(proc.metrics_url).text
        assert "mesh_injector_certificate_reloads_total 1.0" in metrics
        expiry = x509.load_pem_x509_certificate(second.cert).not_valid_after_utc.timestamp()
        line = next(ln for ln in metrics.splitlines() if ln.startswith("mesh_injector_certificate_expiry"))
        assert abs(float(line.split()[1]) - expiry) < 1
        assert proc.stop() == 0


def _gauge(metrics_url: str, name: str) -> float | None:
    line = next((ln for ln in httpx.get(metrics_url).text.splitlines() if ln.startswith(f"{name} ")), None)
    return None if line is None else float(line.split()[1])


def test_sigterm_finishes_in_flight_and_closes_idle(certs):
    """The grace period (120 s), the keep-alive timeout (120 s) and the 30 s a TLS close
    waits for its peer's close_notify are all beyond the 20 s waited for below: closing the
    idle connections, and exiting, happen because of SIGTERM and the in-flight request's end,
    not because a timer ran out."""
    with serve_process(certs, "--grace", "120", "--keep-alive", "120") as proc:
        port = int(proc.url.rsplit(":", 1)[1])
        body = json.dumps(EXAMPLE).encode()
        # two idle keep-alive connections: one the client reads, one it never reads again
        # (an idle pool nobody looks at), which must not hold up the exit either
        idle, unread = _tls_socket(certs, proc.url), _tls_socket(certs, proc.url)
        for conn in (idle, unread):
            conn.sendall(
                b"POST /mutate HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                + f"Content-Length: {len(body)}\r\n\r\n".encode()
                + body
            )
            assert _read_response(conn)[0] == 200
        busy = _tls_socket(certs, proc.url)
        busy.sendall(
            b"POST /mutate HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            + f"Content-Length: {len(body)}\r\n\r\n".encode()
            + body[:100]
        )
        # in flight once the server has its headers and holds the body it was promised
        name = "mesh_injector_request_body_bytes_in_flight"
        eventually(lambda: _gauge(proc.metrics_url, name) == len(body), timeout=30)
        proc.proc.send_signal(signal.SIGTERM)
        idle.settimeout(20)  # the idle connection is closed while the busy one is still in flight
        assert idle.recv(1024) == b"", "closed at SIGTERM, not left for the API server to reuse"
        with pytest.raises(OSError), socket.create_connection(("127.0.0.1", port), timeout=1) as s:
            s.sendall(b"x")  # no longer accepting
            s.recv(1)
            raise OSError("accepted")
        busy.sendall(body[100:])  # the in-flight request is finished and answered
        status, answer = _read_response(busy)
        assert status == 200 and json.loads(answer)["response"]["uid"] == EXAMPLE["request"]["uid"]
        busy.close()  # as a client does on "Connection: close"
        idle.close()
        assert proc.proc.wait(timeout=20) == 0  # once nothing is in flight, unread pool or not
        unread.close()


def test_serve_on_embedded_defaults_with_curl(tmp_path):
    curl = shutil.which("curl")
    if curl is None:
        unavailable("curl is not installed (apt-get install curl)")
    with serve_process(None) as proc:
        line = next(ln for ln in proc.stdout.read_text().splitlines() if "CA bundle:" in ln)
        ca = line.split("CA bundle:")[1].strip()
        out = subprocess.run(
            [
                curl,
                "-sS",
                "--cacert",
                ca,
                "-H",
                "Content-Type: application/json",
                "--data-binary",
                f"@{REPO / 'examples' / 'review.json'}",
                proc.url + "/mutate",
            ],
            capture_output=True,
            text=True,
            timeout=20,
        )
        assert out.returncode == 0, out.stderr
        resp = json.loads(out.stdout)["response"]
        # embedded defaults: no cluster, so the namespace's opt-in label is unknown and
        # this pod (which relies on it) is left alone
        assert resp == {"uid": EXAMPLE["request"]["uid"], "allowed": True}
        metrics = httpx.get(proc.metrics_url).text
        assert 'mesh_injector_admissions_total{mode="none",outcome="skipped"} 1.0' in metrics
        assert 'mesh_injector_skips_total{reason="not-opted-in"} 1.0' in metrics
        labels = set(re.findall(r'(\w+)="', metrics))
        assert labels <= {
            "outcome",
            "mode",
            "reason",
            "resource",
            "code",
            "le",
            "version",
            "implementation",
            "major",
            "minor",
            "patchlevel",
            "generation",
        }
        # counters are counters, nothing is exported for what is not there
        assert "# TYPE mesh_injector_certificate_reloads_total counter" in metrics
        assert "mesh_injector_certificate_reloads_total 0.0" in metrics
        assert "_created" not in metrics
        for absent in ("cluster_cache_stale_seconds", "usage_age_seconds", "usage_read_failures"):
            assert absent not in metrics, f"{absent} without a watch or a usage source"
        assert proc.stop() == 0
        assert not Path(ca).exists(), "the in-memory CA is removed on exit"
        lines = [json.loads(line) for line in proc.stderr.read_text().splitlines() if line.startswith("{")]
        assert all({"level", "logger", "msg"} <= set(line) for line in lines), lines
        admission = next(line for line in lines if line["msg"] == "admission")
        assert admission["level"] == "info" and admission["outcome"] == "skipped"
        assert lines[-1]["msg"].startswith("stopping after "), "a line at shutdown"


def test_serve_runs_on_uvloop_and_httptools(certs):
    """The fastest stack uvicorn has, where the wheels exist (they are dependencies here)."""
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

    from webhook.serve.run import build_server, event_loop, http_protocol
    from webhook.serve.tls import ReloadingTLS

    assert issubclass(http_protocol(), HttpToolsProtocol)
    assert event_loop() == "uvloop"
    server = build_server(object(), ReloadingTLS(certs.cert, certs.key), host="127.0.0.1", port=0)
    assert issubclass(server.config.http_protocol_class, HttpToolsProtocol)
    assert server.config.loop == "uvloop"
    loop_seen = []

    class Probe:
        async def __call__(self, scope, receive, send):
            import asyncio

            loop_seen.append(type(asyncio.get_running_loop()).__module__)
            await send({"type": "http.response.start", "status": 204, "headers": []})
            await send({"type": "http.response.body", "body": b""})

    from tests.servers import free_port

    port = free_port()
    probe = build_server(Probe(), ReloadingTLS(certs.cert, certs.key), host="127.0.0.1", port=port)
    thread = threading.Thread(target=probe.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not probe.started and time.monotonic() < deadline:
        time.sleep(0.02)
    try:
        r = httpx.get(f"https://127.0.0.1:{port}/", verify=certs.client_context())
        assert r.status_code == 204
        assert loop_seen and loop_seen[0].startswith("uvloop")
    finally:
        probe.should_exit = True
        thread.join(timeout=10)


@pytest.mark.parametrize("taken", ["--port", "--metrics-port"])
def test_serve_with_a_port_taken_says_so_in_one_line(taken):
    from tests.servers import free_port

    port, mport = free_port(), free_port()
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", port if taken == "--port" else mport))
        busy.listen()
        out = subprocess.run(
            [
                *(sys.executable, "-m", "webhook", "serve", "--host", "127.0.0.1", "--port", str(port)),
                *("--metrics-host", "127.0.0.1", "--metrics-port", str(mport)),
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert out.returncode == 2
    busy_port = port if taken == "--port" else mport
    assert out.stderr.strip().splitlines()[-1] == (
        f"mesh-injector: error: {taken} 127.0.0.1:{busy_port}: cannot listen (Address already in use)"
    )
    assert "Traceback" not in out.stderr
