"""The edge of the webhook and of `review` says what is wrong in one line: a review without
`kind`, a CREATE without `request.object` (it used to answer "not meshed (not-pod): object
is a Pod"), a request without a Content-Type (it used to say content type 'none'), a flag
whose text is not UTF-8 (a traceback: "str is not valid UTF-8"); and the log line of an
internal error counts the warning it sent (it said 0)."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from pathlib import Path

import httpx
import orjson
import pytest

from tests.servers import thread_server
from tests.support import EXAMPLE, JSON, load_case
from tests.support import run_cli as run
from webhook.cluster.snapshot import StaticClusterView
from webhook.serve.app import AppState

REPO = Path(__file__).resolve().parent.parent
CASE = load_case(sorted((REPO / "tests" / "golden" / "cases").iterdir())[0])


def without(path: list[str]) -> dict:
    review = copy.deepcopy(EXAMPLE)
    parent = review
    for key in path[:-1]:
        parent = parent[key]
    del parent[path[-1]]
    return review


REFUSED = [
    (without(["kind"]), JSON, 400, "kind is missing, expected 'AdmissionReview'"),
    ({**EXAMPLE, "kind": "Pod"}, JSON, 400, "kind is 'Pod', expected 'AdmissionReview'"),
    (
        without(["apiVersion"]),
        JSON,
        400,
        "apiVersion is missing, expected 'admission.k8s.io/v1' or 'admission.k8s.io/v1beta1'",
    ),
    (
        without(["request", "object"]),
        JSON,
        400,
        "request.object is missing: a CREATE review carries the object being created",
    ),
    (EXAMPLE, {}, 415, "a request without a Content-Type header is not application/json"),
    (EXAMPLE, {"Content-Type": "text/plain"}, 415, "content type 'text/plain' is not application/json"),
]


@pytest.fixture(scope="module")
def server(certs):
    state = AppState(cluster=StaticClusterView(CASE.snapshot), policy=CASE.policy)
    with (
        thread_server(state, certs) as url,
        httpx.Client(base_url=url, verify=certs.client_context()) as client,
    ):
        yield state, client


@pytest.mark.parametrize(("review", "headers", "status", "message"), REFUSED, ids=[r[3] for r in REFUSED])
def test_a_bad_request_is_answered_with_what_is_wrong(server, review, headers, status, message):
    _, client = server
    got = client.post("/mutate", content=json.dumps(review), headers=headers)
    assert (got.status_code, got.json()) == (status, {"error": message})
    assert client.post("/mutate", content=json.dumps(EXAMPLE), headers=JSON).status_code == 200


def test_review_of_a_create_without_its_object_says_what_is_missing(tmp_path):
    path = tmp_path / "review.json"
    path.write_text(json.dumps(without(["request", "object"])))
    out = run("review", str(path))
    assert out.returncode == 2 and out.stdout == ""
    assert out.stderr == (
        f"mesh-injector: error: {path}: "
        "request.object is missing: a CREATE review carries the object being created\n"
    )


def test_a_delete_review_has_no_object_and_is_answered(server):
    """Only a CREATE carries the object: a DELETE (sent only if a configuration asks for it)
    is allowed untouched."""
    _, client = server
    review = without(["request", "object"])
    review["request"]["operation"] = "DELETE"
    got = client.post("/mutate", content=json.dumps(review), headers=JSON)
    assert got.status_code == 200
    assert got.json()["response"] == {"uid": EXAMPLE["request"]["uid"], "allowed": True}


def test_the_log_line_of_an_internal_error_counts_the_warning_it_sent(certs):
    lines: list[bytes] = []

    def broken(*args, **kwargs):
        raise RuntimeError("a bug in the core")

    state = AppState(
        cluster=StaticClusterView(CASE.snapshot), policy=CASE.policy, admit_fn=broken, log_line=lines.append
    )
    with (
        thread_server(state, certs) as url,
        httpx.Client(base_url=url, verify=certs.client_context()) as client,
    ):
        got = client.post("/mutate", content=json.dumps(EXAMPLE), headers=JSON)
    response = got.json()["response"]
    assert response["allowed"] is True and "patch" not in response
    assert response["warnings"] == [
        "mesh-injector: internal error, pod admitted without a proxy: RuntimeError"
    ]
    (line,) = [orjson.loads(x) for x in lines]
    assert (line["outcome"], line["level"], line["warnings"]) == ("error", "error", 1)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (
            ["check", "-f", "examples/app.yaml", "-n", "shop\udcff"],
            "--namespace: not UTF-8 text (byte 0xff at offset 4)",
        ),
        (
            ["review", "examples/review.json", "--kernel", "\udcc3("],
            "--kernel: not UTF-8 text (byte 0xc3 at offset 0)",
        ),
    ],
)
def test_a_flag_that_is_not_utf8_text_is_one_line(argv, message):
    """The shell hands Python bytes it keeps as surrogates; they reached orjson ("str is not
    valid UTF-8: surrogates not allowed") in a traceback."""
    out = subprocess.run(
        [os.fsencode(sys.executable), b"-m", b"webhook", *(os.fsencode(a) for a in argv)],
        capture_output=True,
        timeout=60,
        cwd=REPO,
    )
    assert out.returncode == 2
    assert out.stderr.decode() == f"mesh-injector: error: {message}\n"
