"""What a bundle of manifests says about itself counts, and an empty one is an error.

A Namespace in the same input as its workloads decides their opt-in and Pod Security level
as it will on the cluster once both are applied (it used to be ignored: the workloads
showed `not-opted-in`, and in a `baseline` namespace got iptables, which the API server
would refuse). An input with nothing in it (what a failed `kubectl get ... |` leaves) is
exit 2 instead of a header and exit 0."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.support import ANCHORS_POLICY
from tests.support import run_cli as run

REPO = Path(__file__).resolve().parent.parent
CLUSTER = str(REPO / "examples" / "cluster.yaml")  # shop: opted in, no Pod Security label

NAMESPACE = {
    "apiVersion": "v1",
    "kind": "Namespace",
    "metadata": {
        "name": "shop",
        "labels": {"mesh-injector.io/inject": "enabled", "pod-security.kubernetes.io/enforce": "baseline"},
    },
}
DEPLOYMENT = {
    "apiVersion": "apps/v1",
    "kind": "Deployment",
    "metadata": {"name": "web", "namespace": "shop"},
    "spec": {
        "selector": {"matchLabels": {"app": "web"}},
        "template": {
            "metadata": {"labels": {"app": "web"}},
            "spec": {"containers": [{"name": "web", "image": "w"}]},
        },
    },
}


def bundle(tmp_path: Path) -> Path:
    d = tmp_path / "bundle"
    d.mkdir()
    (d / "app.yaml").write_text(yaml.safe_dump(DEPLOYMENT))  # read before the Namespace's file
    (d / "namespace.yaml").write_text(yaml.safe_dump(NAMESPACE))
    return d


def web(out: subprocess.CompletedProcess[str]) -> dict:
    return next(r for r in json.loads(out.stdout) if r["kind"] == "Deployment")


def test_the_bundle_s_namespace_opts_its_workloads_in_and_sets_their_pod_security_level(tmp_path):
    """No cluster file: the kernel is unknown, so iptables, which the bundle's `baseline`
    namespace refuses; the opt-in comes from the bundle's namespace label."""
    d = str(bundle(tmp_path))
    for flags in (["--respect-opt-in"], []):
        out = run("check", "-f", d, "--policy", str(ANCHORS_POLICY), "-o", "json", *flags)
        assert out.returncode == 0, out.stderr
        record = web(out)
        assert record["meshed"] is False
        assert record["skip"]["reason"] == "iptables-in-baseline-namespace", record
    injected = run("inject", "-f", d, "--policy", str(ANCHORS_POLICY), "--respect-opt-in")
    assert "Deployment shop/web: skipped because" in injected.stderr
    assert "(iptables-in-baseline-namespace)" in injected.stderr


def test_the_bundle_s_namespace_counts_over_the_cluster_file_s_with_a_note(tmp_path):
    """The example cluster's `shop` has no Pod Security label; the bundle's says baseline.
    Merbridge backs ebpf there, which adds nothing baseline refuses: meshed, and a note."""
    d = bundle(tmp_path)
    out = run("check", "-f", str(d), "--cluster", CLUSTER, "-o", "json")
    assert out.returncode == 0, out.stderr
    record = web(out)
    assert record["meshed"] is True and record["mode"] == "ebpf"
    assert any("baseline" in line for line in record["explanation"]), record["explanation"]
    assert out.stderr == (
        f"mesh-injector: note: Namespace shop from {d / 'namespace.yaml'} is used over the one in "
        f"{CLUSTER} (their labels or annotations differ)\n"
    )
    # the same Namespace as the cluster's: nothing to note
    items = yaml.safe_load(Path(CLUSTER).read_text())["items"]
    cluster_ns = next(i for i in items if i["kind"] == "Namespace" and i["metadata"]["name"] == "shop")
    (d / "namespace.yaml").write_text(yaml.safe_dump(cluster_ns))
    quiet = run("check", "-f", str(d), "--cluster", CLUSTER)
    assert quiet.returncode == 0 and quiet.stderr == ""


def test_a_namespace_after_its_workloads_in_one_stream_counts_too():
    stream = yaml.safe_dump_all([DEPLOYMENT, NAMESPACE])
    out = run(
        "check", "-f", "-", "--policy", str(ANCHORS_POLICY), "--respect-opt-in", "-o", "json", stdin=stream
    )
    assert out.returncode == 0, out.stderr
    assert web(out)["skip"]["reason"] == "iptables-in-baseline-namespace"


@pytest.mark.parametrize("verb", ["check", "inject"])
@pytest.mark.parametrize("text", ["", "\n\n", "# kubectl printed nothing\n---\n", "---\n...\n"], ids=repr)
def test_empty_input_is_an_error(verb, text):
    out = run(verb, "-f", "-", "--cluster", CLUSTER, stdin=text)
    assert out.returncode == 2
    assert out.stdout == ""
    assert out.stderr == (
        f"mesh-injector: error: <stdin>: empty input, nothing to {verb} "
        "(did the command before the pipe fail?)\n"
    )


def test_an_empty_file_is_an_error_and_an_empty_list_is_an_answer(tmp_path):
    empty = tmp_path / "empty.yaml"
    empty.write_text("")
    out = run("check", "-f", str(empty))
    assert out.returncode == 2 and f"{empty}: empty input, nothing to check" in out.stderr
    # `kubectl get deployments -o yaml` in a namespace without any: a real, empty answer
    nothing = "apiVersion: v1\nitems: []\nkind: List\nmetadata:\n  resourceVersion: ''\n"
    listed = run("check", "-f", "-", "-o", "json", stdin=nothing)
    assert listed.returncode == 0 and json.loads(listed.stdout) == []
