"""`inject` as a GitOps repository needs it: only the injected fields change; everything
else (comments, separators, quoting, indentation, YAML 1.2 scalars) is written back byte
for byte, JSON stays JSON, and a second run changes nothing."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import yaml

from tests.support import GOLDEN

REPO = Path(__file__).parent.parent
CLUSTER = str(REPO / "examples" / "cluster.yaml")
MANIFEST = """\
# Our shop's manifests: kept in git, reviewed as diffs
---
apiVersion: v1
kind: ConfigMap
metadata:
  name: web-config   # keep this comment
  namespace: shop
data:
  switch: ON          # YAML 1.1 would read a boolean; it stays the string ON
  quoted: 'single'
  "double": "x"
---
---
apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
  namespace: shop
spec:
  selector:
    matchLabels: {app: web}
  template:
    metadata:
      labels:
        app: web   # the app label
    spec:
      containers:
        - name: web          # the main container
          image: "registry.example.com/web:1"
          ports:
            - containerPort: 8080
              name: http
---
"""


def inject(path: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "webhook", "inject", "-f", str(path), "--cluster", CLUSTER, *extra],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
    )


def test_only_the_injected_fields_change_and_a_second_run_is_identical(tmp_path):
    src = tmp_path / "app.yaml"
    src.write_text(MANIFEST)
    # iptables mode (kernels below 5.10): the Linkerd proxy is a native sidecar, whose
    # readiness and startup probes share one object
    first = inject(src, "--kernel", "5.4.0")
    assert first.returncode == 0, first.stderr
    # every original line is still there, in order; what is new was only added
    written = iter(first.stdout.splitlines())
    added = []
    for line in MANIFEST.splitlines():
        for candidate in written:
            if candidate == line:
                break
            added.append(candidate)
        else:
            raise AssertionError(f"original line lost or altered: {line!r}")
    assert added and all(line.startswith(" " * 6) or not line.strip() for line in added)  # under the template
    assert first.stdout.startswith("# Our shop's manifests") and first.stdout.endswith("---\n")
    assert "---\n---\n" in first.stdout  # the empty document is kept
    assert "startupProbe" in first.stdout and "&id" not in first.stdout  # a shared probe, no anchors
    docs = [d for d in yaml.safe_load_all(first.stdout.replace("switch: ON", "switch: 'ON'")) if d]
    deployment = docs[1]
    assert [c["name"] for c in deployment["spec"]["template"]["spec"]["initContainers"]] == [
        "linkerd-init",
        "linkerd-proxy",
    ]
    assert deployment["spec"]["template"]["metadata"]["labels"]["app"] == "web"
    out = tmp_path / "out.yaml"
    out.write_text(first.stdout)
    second = inject(out, "--kernel", "5.4.0")
    assert second.returncode == 0 and second.stdout == first.stdout


def test_json_in_json_out(tmp_path):
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "tool", "namespace": "shop"},
        "spec": {"containers": [{"name": "app", "image": "registry.example.com/tool:1"}]},
    }
    src = tmp_path / "pod.json"
    src.write_text(json.dumps(pod))
    first = inject(src)
    assert first.returncode == 0, first.stderr
    meshed = json.loads(first.stdout)
    # ebpf mode (Merbridge runs on the example cluster): the proxy is the first container
    # and Linkerd's network validator checks the redirect before the app starts
    assert [c["name"] for c in meshed["spec"]["containers"]] == ["linkerd-proxy", "app"]
    assert [c["name"] for c in meshed["spec"]["initContainers"]] == ["linkerd-network-validator"]
    again = tmp_path / "again.json"
    again.write_text(first.stdout)
    second = inject(again)
    assert second.stdout == first.stdout


FLOW = (
    "# flow style throughout, as kubectl's JSON-ish output or a generator writes it\n"
    "{apiVersion: apps/v1, kind: Deployment, metadata: {name: web, namespace: shop}, spec: {selector: "
    "{matchLabels: {app: web}}, template: {metadata: {labels: {app: web}}, spec: {containers: "
    '[{name: app, image: "registry.example.com/web:1", ports: [{containerPort: 8080}]}]}}}}\n'
    "---\n"
    "apiVersion: batch/v1\nkind: Job\nmetadata: {name: migrate, namespace: shop}\n"
    "spec:\n  template:\n    metadata: {annotations: {}}   # empty, flow\n"
    "    spec: {restartPolicy: Never, containers: [{name: m, image: 'registry.example.com/m:1'}],\n"
    "      volumes: []}\n"
)


def _block(text: str) -> str:
    """The same documents in block style (PyYAML's dump)."""
    return yaml.safe_dump_all([d for d in yaml.safe_load_all(text) if d], sort_keys=False)


def test_flow_style_collections_get_their_additions_in_flow_style(tmp_path, monkeypatch, capsys):
    """Additions inside flow collections are written in as JSON (which flow style reads):
    every character of the original stays, and the documents read as the block-style
    manifest injected. No round-trip parse is needed (it was 25x slower, and GBs of memory
    on a large document)."""
    from webhook.cli import main
    from webhook.manifests import roundtrip

    def refuse(body: str):
        raise AssertionError("the round-trip editor was used")

    monkeypatch.setattr(roundtrip, "_yaml_for", refuse)
    src, block = tmp_path / "flow.yaml", tmp_path / "block.yaml"
    src.write_text(FLOW)
    block.write_text(_block(FLOW))
    results = []
    for path in (src, block):
        assert main(["inject", "-f", str(path), "--cluster", CLUSTER, "--now", "2026-11-27T12:00:00Z"]) == 0
        results.append(capsys.readouterr().out)
    flow_out, block_out = results
    assert list(yaml.safe_load_all(flow_out)) == [d for d in yaml.safe_load_all(block_out)]
    rest = iter(flow_out)  # the original's characters, in order, with only insertions between
    assert all(any(c == ch for c in rest) for ch in FLOW), "an original character was lost"
    assert "# empty, flow" in flow_out and flow_out.startswith("# flow style throughout")
    again = tmp_path / "again.yaml"
    again.write_text(flow_out)
    assert main(["inject", "-f", str(again), "--cluster", CLUSTER, "--now", "2026-11-27T12:00:00Z"]) == 0
    assert capsys.readouterr().out == flow_out


def test_flow_style_parents_keep_the_layout(tmp_path):
    """A flow-style mapping among block ones: comments and the rest of the layout stay."""
    src = tmp_path / "flow.yaml"
    src.write_text(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: tool   # a tool pod\n  namespace: shop\n"
        "  labels: {app: tool}\nspec:\n  containers:\n  - name: app  # main\n"
        "    image: registry.example.com/tool:1\n"
    )
    first = inject(src)
    assert first.returncode == 0, first.stderr
    assert "name: tool   # a tool pod" in first.stdout and "- name: app  # main" in first.stdout
    pod = yaml.safe_load(first.stdout)
    assert pod["metadata"]["labels"]["app"] == "tool"
    assert pod["metadata"]["labels"]["linkerd.io/workload-ns"] == "shop"
    again = tmp_path / "again.yaml"
    again.write_text(first.stdout)
    assert inject(again).stdout == first.stdout


def test_a_bad_file_in_a_directory_is_reported_and_the_rest_injected(tmp_path):
    (tmp_path / "a.yaml").write_text((GOLDEN / "manifests" / "all-kinds" / "input.yaml").read_text())
    (tmp_path / "b.yaml").write_text("kind: Pod\nmetadata: {name: [unclosed\n")
    (tmp_path / "c.yaml").write_text(MANIFEST)
    out = inject(tmp_path)
    assert out.returncode == 1
    errors = [line for line in out.stderr.splitlines() if line.startswith("mesh-injector: error:")]
    assert len(errors) == 1 and "b.yaml: not valid JSON or YAML at line 3" in errors[0]
    assert out.stderr.splitlines()[-1] == "mesh-injector: 1 file(s) could not be injected (see above)"
    assert out.stdout.count("linkerd-proxy") >= 7  # a.yaml's and c.yaml's workloads
    assert "# Our shop's manifests" in out.stdout


def test_a_document_that_starts_on_its_separator_line_is_injected(tmp_path):
    """`--- {kind: Deployment, ...}` (PyYAML's dump_all in flow style writes this): the
    document is on the separator's line, and is injected like any other."""
    docs = [yaml.safe_load(FLOW.split("---\n")[0]) for _ in range(3)]
    for i, doc in enumerate(docs):
        doc["metadata"]["name"] = f"web-{i}"
    src = tmp_path / "stream.yaml"
    src.write_text(yaml.safe_dump_all(docs, default_flow_style=True, width=1 << 16))
    assert src.read_text().count("--- {") == 2
    out = inject(src)
    assert out.returncode == 0, out.stderr
    assert out.stderr.count("injected with mode") == 3, out.stderr
    written = list(yaml.safe_load_all(out.stdout))
    assert [len(d["spec"]["template"]["spec"]["containers"]) for d in written] == [2, 2, 2]
