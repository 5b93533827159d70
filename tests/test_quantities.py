"""Resource quantities are checked where the schema check runs, as the API server decodes
them: an offline `review`, `check` or `inject` of a pod whose container asks for
`cpu: lots` used to mesh it without a word, and the API server then refused the pod.

The oracle is the real kube-apiserver (tests/apiserver.py): every string tried here is sent
in a server-side dry-run create, and whether it decodes as a quantity must be what
``webhook.quantity.decodes`` says."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests import apiserver
from tests.support import run_cli as run
from webhook import kubeschema as schema
from webhook.quantity import decodes

REPO = Path(__file__).resolve().parent.parent
CLUSTER = str(REPO / "examples" / "cluster.yaml")


def pod(cpu: object) -> dict:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "q", "namespace": "shop"},
        "spec": {"containers": [{"name": "app", "image": "app:1", "resources": {"requests": {"cpu": cpu}}}]},
    }


FINDING = (
    "spec.containers[0].resources.requests.cpu: expected a quantity such as 250m or 1Gi, "
    'got a string ("lots")'
)


def test_review_check_and_inject_refuse_a_pod_asking_for_lots_of_cpu(tmp_path):
    review = json.loads((REPO / "examples" / "review.json").read_text())
    review["request"]["object"]["spec"]["containers"][0]["resources"]["requests"]["cpu"] = "lots"
    path = tmp_path / "review.json"
    path.write_text(json.dumps(review))
    out = run("review", str(path), "--cluster", CLUSTER)
    assert out.returncode == 2 and out.stdout == ""
    assert out.stderr == f"mesh-injector: error: {path}: not a valid Pod: request.object.{FINDING}\n"

    manifest = yaml.safe_dump(pod("lots"))
    checked = run("check", "-f", "-", "--cluster", CLUSTER, "-o", "json", stdin=manifest)
    assert checked.returncode == 1
    (record,) = json.loads(checked.stdout)
    assert record["reason"] == "invalid" and record["errors"] == [FINDING]
    injected = run("inject", "-f", "-", "--cluster", CLUSTER, stdin=manifest)
    assert injected.returncode == 1 and injected.stdout == manifest, "left as it was"
    assert f"Pod shop/q: unchanged, not a valid Pod: {FINDING}" in injected.stderr


def test_a_quantity_is_checked_wherever_the_schema_has_one():
    doc = pod("100m")
    doc["spec"]["overhead"] = {"cpu": "a bit"}
    doc["spec"]["volumes"] = [{"name": "scratch", "emptyDir": {"sizeLimit": "big"}}]
    doc["spec"]["containers"][0]["resources"]["limits"] = {"memory": 1.5, "cpu": True}
    found = schema.check(doc, "io.k8s.api.core.v1.Pod")
    assert set(found.errors) == {
        'spec.overhead.cpu: expected a quantity such as 250m or 1Gi, got a string ("a bit")',
        'spec.volumes[0].emptyDir.sizeLimit: expected a quantity such as 250m or 1Gi, got a string ("big")',
        "spec.containers[0].resources.limits.cpu: expected a string or an integer or a number, "
        "got a boolean (true)",
    }


# --- the real API server as the oracle ---------------------------------------------------

# what the decoder says when it cannot read a quantity (k8s.io/apimachinery resource errors)
DECODE_ERRORS = (
    "quantities must match the regular expression",
    "unable to parse quantity's suffix",
    "unable to parse numeric part of quantity",
)


@pytest.fixture(scope="module")
def api_decodes():
    from kubernetes import client, config

    from webhook.kubeapi import request

    server = apiserver.started("mesh-injector-quantities")
    cfg = client.Configuration()
    config.load_kube_config(config_file=server.kubeconfig, client_configuration=cfg)
    api = client.ApiClient(cfg)

    def decoded(cpu: object) -> bool:
        body = pod(cpu)
        body["metadata"]["namespace"] = "default"
        try:
            request(
                api,
                "POST",
                "/api/v1/namespaces/default/pods",
                query={"dryRun": "All"},
                body=body,
                content_type="application/json",
            )
        except client.ApiException as exc:
            message = json.loads(exc.body).get("message", "") if exc.body else ""
            return not any(e in message for e in DECODE_ERRORS)
        return True

    yield decoded
    apiserver.finish(server)


KNOWN = [
    *("250m", "1Gi", "1.5", ".5", "5.", "+1", "-1", "1e3", "1E3", "1e-3", "1e+3", "1.5e3", "1Ki", "1k"),
    *("1M", "1Mi", "1n", "1u", "1E", "1Ei", "1P", "1.5Gi", "1e400", "99999999999999999999999999999Ei"),
    *("0.000000001n", "1.", "0", "00", "01.50", " 1", "1 ", "1.e3"),
    # refused
    *("lots", "", "1ki", "1KI", "1K", "1_000", "0x10", "1e", "1.2.3", "NaN", "Infinity", "inf", "1m5"),
    *("1mi", "1e3Mi", "--1", "1e1.5", " ", "\t1", "1\n", "e", "Ei", "1 Gi"),
    # no digit: the API server reads these as 0, and so do we
    *(".", "m", "Ki", "+", "-", ".m", "+.", "E", "e3", "e-3", ".e3", "+e3"),
    0.5,
    2,
]


def test_what_decodes_as_a_quantity_is_what_the_api_server_decodes(api_decodes):
    disagree = [(v, decodes(v)) for v in KNOWN if decodes(v) != api_decodes(v)]
    assert disagree == []
    assert not decodes("lots") and decodes("250m")


@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.text(alphabet="0123456789.+-eEinumkKMGTP ", max_size=7))
def test_generated_strings_decode_as_the_api_server_decodes_them(api_decodes, text):
    assert decodes(text) == api_decodes(text), text
