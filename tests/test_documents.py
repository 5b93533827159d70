"""YAML and JSON documents are read as written or refused in one line naming the file and
the line: aliases that would expand an input past a small budget (a 400-byte "billion
laughs" used to run `check` and `inject` past two minutes at 8 GB), a mapping or object that
names a key twice (the last used to win silently), and line endings are kept."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tracemalloc
from pathlib import Path

import pytest
import yaml

from webhook import yamltext
from webhook.loading import parse_documents

REPO = Path(__file__).resolve().parent.parent
CLUSTER = str(REPO / "examples" / "cluster.yaml")


def run(*args: str, stdin: str | bytes | None = None) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [sys.executable, "-m", "webhook", *args],
        input=stdin.encode() if isinstance(stdin, str) else stdin,
        capture_output=True,
        timeout=60,  # a bomb that is expanded runs for minutes: this guards the run, not a figure
        cwd=REPO,
        env=dict(os.environ),
    )


def laughs(levels: int = 9, width: int = 9, indent: str = "  ") -> str:
    """Nested anchors, each a list of ``width`` aliases of the one before: ``width**levels``
    values in a few hundred bytes."""
    out = [f"{indent}a: &a [{', '.join(['lol'] * width)}]"]
    for i in range(1, levels):
        prev, name = chr(ord("a") + i - 1), chr(ord("a") + i)
        out.append(f"{indent}{name}: &{name} [{', '.join([f'*{prev}'] * width)}]")
    return "\n".join(out) + "\n"


POD_HEAD = (
    "apiVersion: v1\nkind: Pod\nmetadata: {name: bomb, namespace: shop}\n"
    "spec:\n  containers: [{name: app, image: x}]\nx:\n"
)
BOMB = POD_HEAD + laughs()  # the nine levels of the report, in a Pod: 9**9 values in 440 bytes
BOMB_LINE = POD_HEAD.count("\n") + 8  # where `h` is anchored: the anchor its aliases repeat most


def review_of(pod_yaml: str) -> str:
    body = "".join(f"    {line}\n" for line in pod_yaml.splitlines())
    return (
        "apiVersion: admission.k8s.io/v1\nkind: AdmissionReview\nrequest:\n  uid: u\n  operation: CREATE\n"
        "  namespace: shop\n  kind: {group: '', version: v1, kind: Pod}\n  object:\n" + body
    )


def expanded(levels: int = 9, width: int = 9) -> int:
    """The values of ``laughs`` once every alias is expanded: the mapping, and per level its
    key and a list of ``width`` copies of the level before (the first: of ``width`` strings)."""
    total, size = 1, 1 + width
    for _ in range(levels):
        total += 1 + size
        size = 1 + width * size
    return total


# the Pod around the bomb: the mapping, 5 keys and v1, Pod, metadata (mapping, 2 keys, 2
# values), spec (mapping, key, list, mapping, 2 keys, 2 values)
POD_VALUES = 1 + 5 + 2 + 5 + 8


def refusal(path: str, line: int) -> str:
    return (
        f"mesh-injector: error: {path}: line {line}: refused: aliases repeat the sequence anchored on "
        "this line 9 times, and expanded this input would hold "
    )


@pytest.mark.parametrize(
    "verb",
    [
        ("check", "-f", "FILE"),
        ("inject", "-f", "FILE"),
        ("check", "-f", "-"),
        ("inject", "-f", "-"),
        ("review", "REVIEW"),
        ("policy", "check", "FILE"),
        ("check", "-f", "examples/app.yaml", "--cluster", "FILE"),
    ],
    ids=lambda v: " ".join(v),
)
def test_an_alias_bomb_is_refused_in_one_line_naming_the_file_in_every_verb(verb, tmp_path):
    bomb = tmp_path / "bomb.yaml"
    bomb.write_text(BOMB)
    review = tmp_path / "review.yaml"
    review.write_text(review_of(BOMB))
    args = [str(bomb) if a == "FILE" else str(review) if a == "REVIEW" else a for a in verb]
    out = run(*args, stdin=BOMB if "-" in verb else None)
    stderr = out.stderr.decode()
    assert out.returncode == 2, stderr
    assert out.stdout == b""
    name, line = (
        (str(review), BOMB_LINE + review_of("").count("\n"))
        if "REVIEW" in verb
        else ("<stdin>" if "-" in verb else str(bomb), BOMB_LINE)
    )
    assert stderr.startswith(refusal(name, line)), stderr
    if "REVIEW" not in verb:
        assert f" would hold {POD_VALUES + expanded():,} values where it spells out " in stderr
    assert stderr.rstrip().endswith("(aliases may add at most 100,000)")
    assert len(stderr.strip().splitlines()) == 1


def test_the_refusal_builds_nothing_of_the_expansion():
    """Refused before any of it is built: the reading's peak allocation stays well under a
    megabyte where the expansion would take gigabytes."""
    text = POD_HEAD + laughs(levels=20, width=2)  # 2**20 values: a "quadratic" kind of bomb
    tracemalloc.start()
    try:
        with pytest.raises(yamltext.AliasError):
            yamltext.load_all(text)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 1 << 20


def test_the_budget_holds_for_all_documents_of_an_input_together():
    """One document may use the budget, not each of a thousand: 9**5 values a document are
    within it once, not twelve times."""
    doc = "---\nkind: ConfigMap\nx:\n" + laughs(levels=5)
    assert len(yamltext.load_all(doc)) == 1
    with pytest.raises(yamltext.AliasError, match=r"aliases may add at most 100,000"):
        yamltext.load_all(doc * 12)


def test_an_alias_of_the_collection_it_is_in_is_refused():
    with pytest.raises(yamltext.AliasError, match=r"an alias refers to the sequence it is in .* never end"):
        yamltext.load_all("kind: Pod\nx: &a [1, *a]\n")


def test_anchors_a_manifest_really_uses_are_read_as_pyyaml_reads_them(tmp_path):
    """An env block and a probe shared by two containers: read, injected, the aliases kept."""
    manifest = (
        "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: web, namespace: shop}\nspec:\n"
        "  selector: {matchLabels: {app: web}}\n  template:\n    metadata: {labels: {app: web}}\n"
        "    spec:\n      containers:\n"
        "      - name: web\n        image: web:1\n        env: &env [{name: MODE, value: prod}]\n"
        "        readinessProbe: &probe {httpGet: {path: /ready, port: 8080}}\n"
        "      - name: sidecar\n        image: side:1\n        env: *env\n        readinessProbe: *probe\n"
    )
    assert parse_documents(manifest, "m.yaml") == list(yaml.safe_load_all(manifest))
    path = tmp_path / "m.yaml"
    path.write_text(manifest)
    out = run("inject", "-f", str(path), "--cluster", CLUSTER)
    assert out.returncode == 0, out.stderr.decode()
    (injected,) = yaml.safe_load_all(out.stdout)
    containers = {c["name"]: c for c in injected["spec"]["template"]["spec"]["containers"]}
    assert containers["sidecar"]["env"] == [{"name": "MODE", "value": "prod"}]
    assert "linkerd-proxy" in containers
    assert "&env" in out.stdout.decode(), "the user's anchors are kept"


# --- keys named twice ---------------------------------------------------------------------

TWICE = """apiVersion: apps/v1
kind: Deployment
metadata: {name: web, namespace: shop}
spec:
  selector: {matchLabels: {app: web}}
  template:
    metadata:
      labels:
        app: web
        mesh-injector.io/inject: disabled
        mesh-injector.io/inject: enabled
    spec:
      containers: [{name: web, image: web:1}]
"""


@pytest.mark.parametrize("verb", ["check", "inject"])
def test_a_key_named_twice_refuses_the_manifest_naming_the_key_and_both_lines(verb, tmp_path):
    """The last used to win: the workload said disabled and was meshed."""
    path = tmp_path / "web.yaml"
    path.write_text(TWICE)
    out = run(verb, "-f", str(path), "--cluster", CLUSTER)
    assert out.returncode == 2
    assert out.stdout == b""
    assert out.stderr.decode() == (
        f"mesh-injector: error: {path}: line 11: key 'mesh-injector.io/inject' appears twice "
        "(line 10 and line 11); the second would silently replace the first\n"
    )


def test_a_key_named_twice_in_json_is_refused_too(tmp_path):
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "p", "namespace": "shop"},
        "spec": {"containers": [{"name": "a", "image": "x"}]},
    }
    text = json.dumps(pod, indent=2).replace('"image": "x"', '"image": "x",\n        "image": "y"')
    path = tmp_path / "pod.json"
    path.write_text(text)
    first = text.splitlines().index('        "image": "x",') + 1
    message = (
        f"line {first + 1}: key 'image' appears twice (line {first} and line {first + 1}); "
        "the second would silently replace the first"
    )
    for verb in ("check", "inject"):
        out = run(verb, "-f", str(path), "--cluster", CLUSTER)
        assert out.returncode == 2 and out.stderr.decode() == f"mesh-injector: error: {path}: {message}\n"
    review = json.loads((REPO / "examples" / "review.json").read_text())
    review["request"]["object"] = pod
    text = json.dumps(review, indent=2).replace('"image": "x"', '"image": "x",\n            "image": "y"')
    out = run("review", "-", "--cluster", CLUSTER, stdin=text)
    assert out.returncode == 2
    assert out.stderr.decode().startswith("mesh-injector: error: <stdin>: line ")
    assert "key 'image' appears twice" in out.stderr.decode()


def test_a_key_named_twice_in_a_review_is_refused(tmp_path):
    path = tmp_path / "review.yaml"
    path.write_text(review_of(TWICE.replace("Deployment", "Pod")))
    out = run("review", str(path), "--cluster", CLUSTER)
    assert out.returncode == 2
    assert "key 'mesh-injector.io/inject' appears twice (line 18 and line 19)" in out.stderr.decode()


# --- line endings -------------------------------------------------------------------------


def test_crlf_manifests_keep_their_line_endings_byte_for_byte(tmp_path):
    """Every `\\r` used to be dropped, even in untouched documents, so a CI diff always failed."""
    untouched = (
        "apiVersion: v1\r\nkind: ConfigMap\r\nmetadata:\r\n  name: settings  # kept\r\ndata: {a: b}\r\n"
    )
    app = (REPO / "examples" / "app.yaml").read_text().replace("\n", "\r\n")
    text = untouched + "---\r\n" + app
    path = tmp_path / "app.yaml"
    path.write_bytes(text.encode())
    out = run("inject", "-f", str(path), "--cluster", CLUSTER)
    assert out.returncode == 0, out.stderr.decode()
    written = out.stdout.decode()
    assert written.startswith(untouched + "---\r\n"), "an untouched document byte for byte"
    assert "\n" not in written.replace("\r\n", ""), "every line ends as the input's do"
    assert "linkerd-proxy" in written
    path.write_bytes(out.stdout)
    again = run("inject", "-f", str(path), "--cluster", CLUSTER)
    assert again.stdout == out.stdout, "inject on its own output changes nothing"


def test_a_crlf_json_manifest_is_written_with_crlf(tmp_path):
    pod = json.loads((REPO / "examples" / "review.json").read_text())["request"]["object"]
    path = tmp_path / "pod.json"
    path.write_bytes(json.dumps(pod, indent=2).replace("\n", "\r\n").encode())
    out = run("inject", "-f", str(path), "--cluster", CLUSTER)
    assert out.returncode == 0, out.stderr.decode()
    assert out.stdout.count(b"\r\n") == out.stdout.count(b"\n") > 20
    spec = json.loads(out.stdout)["spec"]
    assert "linkerd-proxy" in [c["name"] for c in spec["containers"] + spec.get("initContainers", [])]
