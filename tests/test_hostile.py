"""Memory, keys and ciphers under hostile load: bounded caches, the body budget, no private
key on disk, and TLS 1.2 limited to AEAD suites."""

from __future__ import annotations

import copy
import os
import shlex
import signal
import socket
import ssl
import sys
import tracemalloc
from pathlib import Path

import httpx
import orjson
import pytest

from tests.servers import serve_process, thread_server
from tests.support import EXAMPLE, JSON, anchored_policy, eventually, load_case
from webhook.admission import admit
from webhook.cluster.snapshot import Memo, StaticClusterView, build_snapshot, outcome_cost
from webhook.decide.memo import template_key
from webhook.loading import load_policy, load_snapshot
from webhook.outcome import Outcome
from webhook.serve.answers import MAX_KEPT_BODY, Answers
from webhook.serve.app import AppState, BodyBudget

REPO = Path(__file__).resolve().parent.parent


def review_with(seq: str, env: int = 0) -> dict:
    review = copy.deepcopy(EXAMPLE)
    review["request"]["uid"] = f"uid-{seq}"
    pod = review["request"]["object"]
    pod["metadata"]["generateName"] = f"app-{seq}-"
    pod["metadata"]["labels"]["seq"] = seq
    pod["spec"]["containers"][0]["env"] = [{"name": f"V{i:06d}", "value": "x" * 40} for i in range(env)]
    return review


# --- caches bounded in bytes -------------------------------------------------------------


def test_memo_is_bounded_in_count_and_bytes_and_drops_the_oldest_first():
    memo = Memo(limit=4, max_bytes=1000, max_entry=400)
    for i in range(3):
        memo.put(i, f"v{i}", 300)
    assert len(memo) == 3 and memo.bytes == 900
    memo.put(3, "v3", 300)  # 1200 > 1000: the oldest goes
    assert memo.get(0) is None and memo.get(3) == "v3" and memo.bytes == 900
    memo.put("huge", "v", 401)  # over max_entry: never kept, nothing evicted for it
    assert memo.get("huge") is None and len(memo) == 3 and memo.bytes == 900
    for i in range(10, 20):
        memo.put(i, i, 1)
    assert len(memo) == 4 and memo.bytes == 4  # the count limit holds too


def test_outcome_cost_is_not_an_under_estimate():
    """What the memo keeps of a decided pod (the outcome without its detail, under its
    template's key), measured with tracemalloc: never the pod."""
    policy = load_policy()
    snapshot = load_snapshot(policy=policy, now=0, cluster=str(REPO / "examples" / "cluster.yaml"))
    admit(review_with("warm", 3)["request"], snapshot, policy)  # lazy caches filled outside the count
    for env in (0, 40, 400):
        raw = orjson.dumps(review_with(f"m{env}", env))
        admit(review_with(f"n{env}", env)["request"], snapshot, policy)  # its first pod: not kept
        before = (snapshot.outcomes.bytes, snapshot.templates.bytes)
        tracemalloc.start()
        try:
            review = orjson.loads(raw)
            outcome = admit(review["request"], snapshot, policy)
            assert outcome.injected
            del review, outcome
            kept, _ = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert snapshot.outcomes.bytes == before[0]  # no observed usage: kept by template only
        costed = snapshot.templates.bytes - before[1]
        template = template_key(orjson.loads(raw)["request"], snapshot, policy, False)
        assert template is not None and template[3] is not None  # Linkerd: kept by the template's shape
        shape = template[3].key()
        assert shape is not None
        entry = snapshot.templates.get(shape[0])
        assert entry is not None and entry.paths  # Linkerd names the workload: put in per pod
        assert entry.ports is not None  # the proxy's text around its inbound ports is held too
        assert costed == outcome_cost(shape[1], len(orjson.dumps(entry.light.patch))) + entry.ports.size
        assert kept < costed, (env, kept, costed)
        assert kept < len(raw) * 3 + 64 * 1024, (env, kept)  # never the pod's objects


def test_distinct_large_pods_never_pin_memory_in_the_memos():
    policy = load_policy()
    snapshot = load_snapshot(policy=policy, now=0, cluster=str(REPO / "examples" / "cluster.yaml"))
    large = review_with("big", env=2000)  # ~120 KiB of JSON
    assert admit(large["request"], snapshot, policy).injected
    assert len(snapshot.templates) == len(snapshot.outcomes) == 0  # over the entry bound: not kept
    for i in range(400):  # distinct pods of one template: one entry
        admit(review_with(str(i))["request"], snapshot, policy)
    # kept under the template's shape, which the template's own key points at (with what
    # its ports put into the shape's patch: nothing, they are the shape's first template's)
    template = template_key(review_with("0")["request"], snapshot, policy, False)
    assert template is not None and template[3] is not None
    shape = template[3].key()
    assert shape is not None and snapshot.templates.get(template[0]) == (shape[0], [])
    assert len(snapshot.templates) == 2 and len(snapshot.outcomes) == 0
    for i in range(400):  # distinct shapes (a variable's name differs), each with two pods
        for pod in ("a", "b"):
            review = review_with(f"{i}{pod}")
            review["request"]["object"]["spec"]["containers"][0]["env"] = [{"name": f"SEQ{i}", "value": "1"}]
            admit(review["request"], snapshot, policy)
    memo = snapshot.templates
    # the byte bound is what holds here: ~49 KiB per Linkerd pod, so ~170 of the 256 entries
    assert 100 <= len(memo) <= 256 and memo.bytes <= memo.max_bytes <= 8 << 20


def test_kept_answers_are_bounded_and_large_reviews_are_never_kept():
    """The server's answers kept by review bytes (a ReplicaSet's pods) hold at most their
    byte bound whatever the reviews, and a review over ``MAX_KEPT_BODY`` is never kept."""
    answers, snapshot, policy = Answers(), build_snapshot(), load_policy()
    outcome = Outcome(patch=[], injected=False)
    assert answers.get(b"-", snapshot, policy) is None  # now kept for this snapshot and policy
    big = orjson.dumps({"request": {"uid": "u"}, "pad": "x" * MAX_KEPT_BODY})
    assert Answers.key(big, orjson.loads(big)) is None
    for i in range(1000):  # distinct reviews of just under 64 KiB, each answered once
        body = orjson.dumps({"request": {"uid": f"uid-{i}"}, "pad": "y" * 60_000, "i": i})
        key = Answers.key(body, orjson.loads(body))
        assert key is not None and b"uid-" not in key
        response = orjson.dumps({"response": {"uid": f"uid-{i}", "patch": "z" * 8000}})
        assert answers.get(key, snapshot, policy) is None and not answers.again(key, snapshot, policy)
        assert answers.get(key, snapshot, policy) is None and answers.again(key, snapshot, policy)
        answers.put(key, response, f"uid-{i}", outcome, 0)
        assert answers.get(key, snapshot, policy) is not None
    assert 100 <= len(answers) < 1000 and answers.bytes <= answers.max_bytes == 8 << 20
    # what the entries state they cost covers what one holds (its key, the answer's two halves)
    kept = answers.get(key, snapshot, policy)
    assert kept is not None
    held = sum(map(sys.getsizeof, (key, kept.head, kept.tail, kept)))
    assert held <= answers.bytes / len(answers)


def test_pods_sized_from_observed_usage_are_memoised_by_the_whole_object():
    case = load_case(REPO / "tests" / "golden" / "cases" / "50-observed-oom-bump")
    snapshot, request = case.snapshot, case.review["request"]
    first = admit(request, snapshot, case.policy)
    assert first.resources is not None and first.resources.source.value == "observed"
    assert len(snapshot.outcomes) == len(snapshot.templates) == 0  # its first pod: decided, not kept
    again = admit(copy.deepcopy(request), snapshot, case.policy)
    assert len(snapshot.outcomes) == 1 and len(snapshot.templates) == 0
    served = admit(copy.deepcopy(request), snapshot, case.policy)
    for out in (again, served):
        assert out.patch == first.patch and out.explanation == first.explanation
        assert out.pod == first.pod
    assert served.patch is again.patch  # the kept outcome's


def test_a_template_is_kept_from_its_second_pod_on_and_one_offs_push_nothing_out():
    """A template's first pod is decided and not kept: most templates seen once are never
    seen again (a one-off Job's), and keeping each would push out those that come again. Its
    second pod keeps it; the third is served from what was kept; a thousand one-off
    templates later it is still there."""
    policy = load_policy()
    snapshot = load_snapshot(policy=policy, now=0, cluster=str(REPO / "examples" / "cluster.yaml"))
    first = admit(review_with("a")["request"], snapshot, policy)
    assert first.injected and len(snapshot.templates) == 0
    second = admit(review_with("b")["request"], snapshot, policy)
    assert second.injected and len(snapshot.templates) == 1
    other = review_with("c")  # a pod of another Deployment of the same template
    other["request"]["object"]["metadata"]["ownerReferences"][0]["name"] = "web-7d9c8b6f5"
    template = template_key(other["request"], snapshot, policy, False)
    assert template is not None and template[3] is not None
    key = template[3].key()  # Linkerd: kept by the template's shape
    assert key is not None
    entry = snapshot.templates.get(key[0])
    assert entry is not None
    third = admit(other["request"], snapshot, policy)
    assert entry.last is not None and third.patch is entry.last[2]  # served, with its own name put in
    assert third.workload is not None and third.workload.name == "web"
    fresh = admit(other["request"], snapshot.derive(), policy)
    assert third.patch == fresh.patch and third.explanation == fresh.explanation
    for i in range(1000):  # one-off shapes (a variable's name differs), one pod each
        review = review_with(f"once-{i}")
        review["request"]["object"]["spec"]["containers"][0]["env"] = [{"name": f"SEQ{i}", "value": "1"}]
        assert admit(review["request"], snapshot, policy).injected
    assert len(snapshot.templates) == 1 and snapshot.templates.get(key[0]) is entry


# --- the body budget over the network ------------------------------------------------------


def _tls(certs, url: str) -> ssl.SSLSocket:
    port = int(url.rsplit(":", 1)[1])
    raw = socket.create_connection(("127.0.0.1", port), timeout=10)
    return certs.client_context().wrap_socket(raw, server_hostname="localhost")


def _response(sock: ssl.SSLSocket) -> tuple[int, bytes, bytes]:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, "connection closed before a response"
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    length = int(
        next(ln for ln in head.split(b"\r\n") if ln.lower().startswith(b"content-length")).split(b":")[1]
    )
    while len(rest) < length:
        rest += sock.recv(65536)
    return int(head.split(b" ", 2)[1]), head, rest


def test_body_budget_refuses_large_bodies_with_retry_after_and_always_passes_small_ones(certs):
    state = AppState(
        cluster=StaticClusterView(build_snapshot()),
        policy=anchored_policy(),
        budget=BodyBudget(1024 * 1024),
        read_timeout=5,
    )
    big = orjson.dumps(review_with("held", env=12000))  # ~700 KiB
    other = orjson.dumps(review_with("other", env=6000))  # ~350 KiB
    with thread_server(state, certs) as url:
        held = _tls(certs, url)
        held.sendall(
            b"POST /mutate HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            + f"Content-Length: {len(big)}\r\n\r\n".encode()
            + big[:1000]
        )
        eventually(lambda: state.budget.used == len(big), timeout=30, every=0.02)  # the headers are in
        with httpx.Client(base_url=url, verify=certs.client_context(), timeout=10) as client:
            refused = client.post("/mutate", content=other, headers=JSON)
            assert refused.status_code == 503
            assert refused.headers["retry-after"] == "1"
            assert "budget" in refused.json()["error"]

            def streamed():  # no Content-Length: refused once it grows over the budget
                for i in range(0, len(other), 65536):
                    yield other[i : i + 65536]

            assert client.post("/mutate", content=streamed(), headers=JSON).status_code == 503
            small = client.post("/mutate", content=orjson.dumps(EXAMPLE), headers=JSON)
            assert small.status_code == 200 and small.json()["response"]["uid"] == EXAMPLE["request"]["uid"]
            held.sendall(big[1000:])
            status, _, body = _response(held)
            assert status == 200 and orjson.loads(body)["response"]["uid"] == "uid-held"
            held.close()
            # everything given back (the server does it just after the answer is sent)
            eventually(lambda: state.budget.used == 0)
            accepted = client.post("/mutate", content=other, headers=JSON)
            assert accepted.status_code == 200 and accepted.json()["response"]["uid"] == "uid-other"
        eventually(lambda: state.budget.used == 0)
    counted = state.metrics.registry.get_sample_value("mesh_injector_bad_requests_total", {"code": "503"})
    assert counted == 2


# --- TLS suites -------------------------------------------------------------------------

AEAD = {"ECDHE-ECDSA-AES128-GCM-SHA256", "ECDHE-ECDSA-AES256-GCM-SHA384", "ECDHE-ECDSA-CHACHA20-POLY1305"}


def _handshake(certs, port: int, *, ciphers: str | None = None, version: ssl.TLSVersion) -> str | None:
    ctx = certs.client_context()
    ctx.minimum_version = ctx.maximum_version = version
    if ciphers is not None:
        ctx.set_ciphers(ciphers)
    try:
        with (
            socket.create_connection(("127.0.0.1", port), timeout=5) as raw,
            ctx.wrap_socket(raw, server_hostname="localhost") as s,
        ):
            return s.cipher()[0]
    except (ssl.SSLError, ConnectionResetError):
        return None


@pytest.mark.filterwarnings("ignore:ssl.TLSVersion.TLSv1_1 is deprecated:DeprecationWarning")
def test_tls12_offers_only_aead_suites_and_tls13_is_unchanged(certs):
    state = AppState(cluster=StaticClusterView(build_snapshot()), policy=anchored_policy())
    with thread_server(state, certs) as url:
        port = int(url.rsplit(":", 1)[1])
        probe = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        probe.set_ciphers("ALL:@SECLEVEL=0")
        tls12 = {c["name"] for c in probe.get_ciphers() if c["protocol"] == "TLSv1.2"}
        # every suite this OpenSSL knows for TLS 1.2 and an EC key, tried one at a time
        candidates = {
            c for c in tls12 if "ECDSA" in c or not any(k in c for k in ("RSA", "DSS", "PSK", "SRP"))
        }
        assert {"ECDHE-ECDSA-AES128-SHA256", "ECDHE-ECDSA-AES256-SHA384"} <= candidates
        accepted = {
            c
            for c in sorted(candidates)
            if _handshake(certs, port, ciphers=c, version=ssl.TLSVersion.TLSv1_2)
        }
        assert accepted == AEAD
        assert _handshake(certs, port, version=ssl.TLSVersion.TLSv1_3) in {
            "TLS_AES_256_GCM_SHA384",
            "TLS_AES_128_GCM_SHA256",
            "TLS_CHACHA20_POLY1305_SHA256",
        }
        assert _handshake(certs, port, version=ssl.TLSVersion.TLSv1_1) is None


# --- the embedded default certificate never on disk -------------------------------------


def _private_tmp(directory: Path) -> tuple[dict[str, str], tuple[str, ...], list[str]]:
    """The server's temporary directory is ``directory``: through ``TMPDIR`` (what Python's
    ``tempfile`` and most libraries honour) and, as root, with ``/tmp`` itself bound to it in
    a mount namespace of the server's own (a hard-coded ``/tmp`` path lands there too). What
    other test runs write to the machine's ``/tmp`` meanwhile is never looked at. What the
    server runs from (this checkout, its virtualenv) stays where it is: where it lives under
    ``/tmp`` (a CI clone), its top folder is bound back in at the same path; those folders'
    names are returned with the rest, as the only entries ``directory`` may show."""
    env = {"TMPDIR": str(directory)}
    if os.geteuid() != 0:
        return env, (), []
    tmp = Path("/tmp")
    kept = sorted(
        {
            path.relative_to(tmp).parts[0]
            for path in (Path(sys.prefix).resolve(), REPO, Path.cwd().resolve())
            if path.is_relative_to(tmp) and path != tmp
        }
    )
    steps = ["mount --make-rprivate /"]
    for name in kept:
        inside = shlex.quote(name)
        steps += [f'mkdir -p "$0"/{inside}', f'mount --bind /tmp/{inside} "$0"/{inside}']
    steps += ['mount --rbind "$0" /tmp', 'exec "$@"']
    return env, ("unshare", "-m", "sh", "-c", " && ".join(steps), str(directory)), kept


def _holding_a_key(directory: Path) -> list[Path]:
    return [p for p in directory.rglob("*") if p.is_file() and b"PRIVATE KEY" in p.read_bytes()]


def test_embedded_certificate_keeps_no_private_key_on_disk_and_leaves_nothing_after_a_kill(tmp_path):
    private = tmp_path / "tmp"
    private.mkdir()
    env, wrap, kept = _private_tmp(private)
    with serve_process(None, env=env, wrap=wrap) as proc:
        line = next(ln for ln in proc.stdout.read_text().splitlines() if "CA bundle:" in ln)
        ca = Path(line.split("CA bundle:")[1].strip())
        assert str(ca).startswith(f"/proc/{proc.proc.pid}/fd/")
        assert b"BEGIN CERTIFICATE" in ca.read_bytes()
        r = httpx.post(proc.url + "/mutate", json=EXAMPLE, verify=ssl.create_default_context(cafile=str(ca)))
        assert r.status_code == 200
        fds = Path(f"/proc/{proc.proc.pid}/fd")
        targets = {}
        for fd in fds.iterdir():
            try:
                targets[fd.name] = os.readlink(fd)
            except FileNotFoundError:  # closed between the listing and the read (a connection)
                continue
        key_fds = [t for t in targets.values() if t.startswith("/memfd:mesh-injector-tls.key")]
        assert len(key_fds) == 1, targets
        for target in targets.values():  # no file on a file system holds a private key
            if target.startswith("/") and not target.startswith(("/memfd:", "/dev/")):
                path = Path(target)
                if path.is_file() and path.stat().st_size < 1 << 20:
                    assert b"PRIVATE KEY" not in path.read_bytes(), target
        assert sorted(p.name for p in private.iterdir()) == kept, "nothing in the server's tmp"
        proc.proc.send_signal(signal.SIGKILL)
        proc.proc.wait(timeout=10)
        assert not ca.exists()  # the path dies with the process
    assert sorted(p.name for p in private.iterdir()) == kept and _holding_a_key(private) == []
