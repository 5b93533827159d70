"""The CLI through its real entry points, as a user runs it (subprocesses)."""

from __future__ import annotations

import base64
import json
import shutil
import subprocess
import sys
from pathlib import Path

import jsonpatch
import pytest
import yaml

from tests.support import ANCHORS_POLICY, GOLDEN, MANIFEST_CASES, compare_golden, validate_k8s
from tests.support import run_cli as run

REPO = Path(__file__).resolve().parent.parent
EXAMPLES = REPO / "examples"
MIXED = str(GOLDEN / "clusters" / "mixed.yaml")
NOW = "2026-11-27T12:00:00Z"


def test_console_script_is_installed():
    exe = Path(sys.executable).parent / "mesh-injector"
    script = str(exe) if exe.exists() else shutil.which("mesh-injector")
    assert script, "the mesh-injector console script is not installed"
    out = subprocess.run([script, "version"], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0 and out.stdout.strip()


def test_review_response_echoes_uid_and_patch_applies():
    review = json.loads((EXAMPLES / "review.json").read_text())
    out = run(
        "review",
        str(EXAMPLES / "review.json"),
        "--cluster",
        str(EXAMPLES / "cluster.yaml"),
        "--server-version",
        "1.32",
    )
    assert out.returncode == 0, out.stderr
    body = json.loads(out.stdout)
    resp = body["response"]
    assert body["kind"] == "AdmissionReview" and body["apiVersion"] == "admission.k8s.io/v1"
    assert resp["uid"] == review["request"]["uid"] and resp["allowed"] is True
    assert resp["patchType"] == "JSONPatch"
    pod = jsonpatch.apply_patch(review["request"]["object"], json.loads(base64.b64decode(resp["patch"])))
    assert pod["metadata"]["labels"]["mesh-injector.io/interception"] == "ebpf"
    validate_k8s(pod)


def test_review_show_patch_pod_why_agree():
    args = [
        "review",
        str(EXAMPLES / "review.json"),
        "--cluster",
        str(EXAMPLES / "cluster.yaml"),
        "--now",
        NOW,
    ]
    patch = json.loads(run(*args, "--show", "patch").stdout)
    pod = yaml.safe_load(run(*args, "--show", "pod").stdout)
    why = run(*args, "--show", "why").stdout
    review = json.loads((EXAMPLES / "review.json").read_text())
    assert jsonpatch.apply_patch(review["request"]["object"], patch) == pod
    assert "eligible nodes: 2 of 4" in why and "mode: ebpf" in why and "resources: profile" in why
    assert "6.1.112-124.190.amzn2023.x86_64" in why


def test_review_from_stdin_yaml():
    review = json.loads((EXAMPLES / "review.json").read_text())
    out = run(
        "review",
        "-",
        "--show",
        "why",
        "--cluster",
        str(EXAMPLES / "cluster.yaml"),
        stdin=yaml.safe_dump(review),
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("decision: meshed, linkerd proxy, mode ebpf")


def test_no_cluster_uses_safe_defaults_and_says_so():
    review = json.loads((EXAMPLES / "review.json").read_text())
    review["request"]["object"]["metadata"]["labels"]["mesh-injector.io/inject"] = "enabled"
    # the default flavour is Linkerd: without a cluster there are no trust anchors to read
    out = run("review", "-", "--show", "why", stdin=json.dumps(review))
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("decision: not meshed (no-trust-anchors): no Linkerd trust anchors")
    assert "ConfigMap linkerd/linkerd-identity-trust-roots" in out.stdout
    out = run("review", "-", "--show", "why", "--policy", str(ANCHORS_POLICY), stdin=json.dumps(review))
    assert out.returncode == 0, out.stderr
    assert "mode: iptables (kernel-unknown)" in out.stdout
    assert "embedded defaults" in out.stdout and "no eligible node is known" in out.stdout
    out = run(
        "review",
        "-",
        "--show",
        "why",
        "--kernel",
        "6.1.0",
        "--server-version",
        "1.32",
        "--policy",
        str(ANCHORS_POLICY),
        stdin=json.dumps(review),
    )
    # modern kernels assumed, but no Merbridge pod is known: iptables, and a native sidecar
    assert "mode: iptables (no-redirector)" in out.stdout and "native sidecar" in out.stdout


@pytest.mark.parametrize("path", MANIFEST_CASES, ids=lambda p: p.name)
def test_inject_manifests(path):
    meta = yaml.safe_load((path / "case.yaml").read_text())
    args = ["inject", "-f", str(path / "input.yaml"), "--now", meta["now"]]
    if meta.get("cluster"):
        args += ["--cluster", str(GOLDEN / "clusters" / f"{meta['cluster']}.yaml")]
    else:
        args += ["--policy", str(ANCHORS_POLICY)]
    out = run(*args)
    assert out.returncode == 0, out.stderr
    docs = list(yaml.safe_load_all(out.stdout))
    inputs = list(yaml.safe_load_all((path / "input.yaml").read_text()))
    assert [d["kind"] for d in docs] == [d["kind"] for d in inputs], "document order and kinds are kept"
    for before, after in zip(inputs, docs, strict=True):
        if before["kind"] in ("Service", "ConfigMap"):
            assert before == after
    assert out.stderr.splitlines() == meta["expect_reports"]
    for doc in docs:
        for obj in doc.get("items", [doc]):
            if obj["kind"] == "DeploymentConfig" or obj["apiVersion"] == "batch/v1beta1":
                # no schema of the current release: the injected template is checked as a Pod
                keys = (
                    ("spec", "jobTemplate", "spec", "template")
                    if obj["kind"] == "CronJob"
                    else ("spec", "template")
                )
                template = obj
                for key in keys:
                    template = template[key]
                obj = {
                    "apiVersion": "v1",
                    "kind": "Pod",
                    "metadata": template.get("metadata", {}),
                    **template,
                }
                obj["spec"] = template["spec"]
            validate_k8s(obj)
    compare_golden(path / "expected.yaml", docs)
    # inject is idempotent: its own output goes through unchanged
    again = run("inject", "-f", "-", *args[3:], stdin=out.stdout)
    assert again.returncode == 0, again.stderr
    assert list(yaml.safe_load_all(again.stdout)) == docs


def test_inject_directory_and_cronjob_template_path(tmp_path):
    (tmp_path / "b.yaml").write_text((GOLDEN / "manifests" / "all-kinds" / "input.yaml").read_text())
    (tmp_path / "a.yml").write_text("apiVersion: v1\nkind: Namespace\nmetadata: {name: x}\n")
    (tmp_path / "notes.txt").write_text("not a manifest")
    out = run("inject", "-f", str(tmp_path), "--cluster", MIXED, "--now", NOW)
    assert out.returncode == 0, out.stderr
    docs = list(yaml.safe_load_all(out.stdout))
    assert docs[0]["kind"] == "Namespace"
    cron = next(d for d in docs if d["kind"] == "CronJob")
    spec = cron["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    assert [c["name"] for c in spec["initContainers"]] == ["linkerd-init", "linkerd-proxy"]


def test_check_table():
    out = run(
        "check",
        "-f",
        str(GOLDEN / "manifests" / "all-kinds" / "input.yaml"),
        "--cluster",
        MIXED,
        "--now",
        NOW,
    )
    assert out.returncode == 0, out.stderr
    rows = [line.split() for line in out.stdout.splitlines()]
    assert rows[0] == ["WORKLOAD", "MESHED", "MODE", "FIREWALL", "RESOURCES", "REASON"]
    table = {f"{r[0]} {r[1]}": r[2:] for r in rows[1:]}
    # check applies the real opt-in rules: shop and payments opted in by namespace label; the
    # firewall backend is that of the init container's rules (none of ours in ebpf mode)
    assert table["Deployment shop/checkout"][:5] == ["yes", "ebpf", "-", "profile", "ebpf-capable"]
    assert table["StatefulSet payments/ledger"][:5] == ["yes", "ebpf", "-", "profile", "ebpf-capable"]
    # (no linkerd-config in the file: the policy's Linkerd 2.20, whose setting is nft)
    assert table["Job shop/migrate"][:5] == ["yes", "iptables", "nft", "profile", "batch-native-sidecar"]
    assert table["ReplicaSet shop/legacy-rs"][:4] == ["no", "-", "-", "-"]
    assert table["ReplicaSet shop/legacy-rs"][4].startswith("host-network")
    assert table["Deployment shop/web"][4].startswith("pod-disabled")
    assert table["Service shop/checkout"][:4] == ["-", "-", "-", "-"]


def test_check_names_the_vpa_that_sizes_a_proxy():
    manifest = """
apiVersion: apps/v1
kind: Deployment
metadata: {name: checkout, namespace: shop}
spec:
  selector: {matchLabels: {app: checkout}}
  template:
    metadata: {labels: {app: checkout}}
    spec: {containers: [{name: app, image: registry.example.com/app:1}]}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: web, namespace: shop}
spec:
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec: {containers: [{name: app, image: registry.example.com/app:1}]}
"""
    out = run("check", "-f", "-", "--cluster", str(GOLDEN / "clusters" / "vpa.yaml"), stdin=manifest)
    assert out.returncode == 0, out.stderr
    rows = {" ".join(r.split()[:2]): r.split()[2:] for r in out.stdout.splitlines()[1:]}
    assert rows["Deployment shop/checkout"][:4] == ["yes", "ebpf", "-", "vpa/checkout"]
    # its VPA leaves the proxy alone
    assert rows["Deployment shop/web"][:4] == ["yes", "ebpf", "-", "profile"]


def test_recommend(tmp_path):
    rows = ["namespace,workload,timestamp,cpu,memory,oom"]
    rows += [f"shop,Deployment/web,2026-11-27T{h:02d}:00:00Z,100m,100Mi,false" for h in range(0, 12)]
    rows += [f"shop,Deployment/web,2026-11-26T{h:02d}:00:00Z,100m,100Mi,false" for h in range(0, 12)]
    rows += ["shop,StatefulSet/db,2026-11-27T10:00:00Z,1,1Gi,false"]
    (tmp_path / "u.csv").write_text("\n".join(rows) + "\n")
    out = run("recommend", "--usage", str(tmp_path / "u.csv"), "--now", NOW)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0].startswith("# window 7d")
    web = next(line.split() for line in lines if "Deployment/web" in line)
    assert web[1:8] == ["24", "35h", "115m", "115Mi", "-", "150Mi", "observed"]
    db = next(line for line in lines if "StatefulSet/db" in line)
    assert "profile (too few samples)" in db
    # with the cluster's VPAs: web's VPA leaves the proxy alone; checkout's sizes it
    rows.append("shop,Deployment/checkout,2026-11-27T10:00:00Z,1,1Gi,false")
    (tmp_path / "u.csv").write_text("\n".join(rows) + "\n")
    vpas = str(GOLDEN / "clusters" / "vpa.yaml")
    out = run("recommend", "--usage", str(tmp_path / "u.csv"), "--now", NOW, "--cluster", vpas)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert next(line.split() for line in lines if "Deployment/web" in line)[7] == "observed"
    checkout = next(line.split() for line in lines if "Deployment/checkout" in line)
    assert checkout[3:8] == ["-", "-", "-", "-", "vpa/checkout"]


def test_policy_check_ok_and_bad(tmp_path):
    out = run("policy", "check", str(REPO / "policies" / "default.yaml"))
    assert out.returncode == 0 and "valid" in out.stdout
    bad = tmp_path / "bad.yaml"
    bad.write_text("interception:\n  ebpf:\n    minKernal: '5.10'\n")
    out = run("policy", "check", str(bad))
    assert out.returncode == 2
    assert out.stderr.count("\n") == 1
    assert "interception.ebpf.minKernal: unknown field" in out.stderr and "minKernel" in out.stderr
    bad.write_text("profiles:\n- name: x\n  match: {protocol: quic}\n  requests: {cpu: 1, memory: 1Gi}\n")
    out = run("policy", "check", str(bad))
    assert out.returncode == 2 and "profiles[0].match.protocol: 'quic' is not allowed" in out.stderr
    assert "'grpc', 'http', 'tcp'" in out.stderr
    bad.write_text("injectByDefault: true\n---\nproxy: {flavour: istio}\n")
    out = run("policy", "check", str(bad))
    assert out.returncode == 2 and out.stderr.count("\n") == 1
    assert "a policy is one YAML document, this file has 2" in out.stderr
    bad.write_text("sizing:\n  minSamples: !!int twelve\n")
    out = run("policy", "check", str(bad))
    assert out.returncode == 2 and out.stderr.count("\n") == 1
    assert "not valid YAML at line 2, column 15: 'twelve' is not a valid int" in out.stderr


def test_policy_check_says_what_ebpf_refuses_and_how_to_turn_it_off(tmp_path):
    """The ebpf mode's rules as ``policy check`` describes them, the two switches read and
    checked like every other field."""
    out = run("policy", "check", str(REPO / "policies" / "default.yaml"))
    (ebpf,) = [line for line in out.stdout.splitlines() if line.startswith("  ebpf: ")]
    assert "no init container of the pod's own but native sidecars and those running as uid 2102" in ebpf
    assert "no container port or probe on 39807" in ebpf
    assert "Merbridge does not re-register the linkerd-proxy pods that started before it" in ebpf
    policy = tmp_path / "policy.yaml"
    policy.write_text("interception:\n  ebpf:\n    allowInitContainers: true\n")
    out = run("policy", "check", str(policy))
    assert out.returncode == 0 and "the pod's own init containers allowed" in out.stdout
    policy.write_text("proxy: {flavour: istio}\ninterception:\n  ebpf:\n    enabled: false\n")
    out = run("policy", "check", str(policy))
    assert out.returncode == 0 and "  ebpf: off (interception.ebpf.enabled: false)" in out.stdout
    policy.write_text("interception:\n  ebpf:\n    enabled: 'no'\n")
    out = run("policy", "check", str(policy))
    assert out.returncode == 2 and out.stderr.count("\n") == 1
    assert "interception.ebpf.enabled: expected true or false, got 'no'" in out.stderr
    policy.write_text("interception:\n  ebpf:\n    allowInitContainer: true\n")
    out = run("policy", "check", str(policy))
    assert out.returncode == 2 and "interception.ebpf.allowInitContainer: unknown field" in out.stderr
    assert "allowInitContainers" in out.stderr


@pytest.mark.parametrize(
    ("stdin", "args", "needle"),
    [
        (
            '{"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": {',
            ["review", "-"],
            "not valid JSON or YAML",
        ),
        ("a: [1, 2\nb: c\n", ["review", "-"], "not valid JSON or YAML at line"),
        (
            '{"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", '
            '"request": {"operation": "CREATE"}}',
            ["review", "-"],
            "request.uid is missing",
        ),
        ('{"kind": "Pod"}', ["review", "-"], "expected 'AdmissionReview'"),
        ("", ["review", "-"], "empty input"),
        ("kind: Pod\nmetadata: {name: [unclosed\n", ["inject", "-f", "-"], "not valid JSON or YAML"),
        ("- just\n- a list\n", ["inject", "-f", "-"], "not a Kubernetes object"),
        # a scalar that does not fit its explicit tag: PyYAML's constructor raised a bare
        # Python error (a traceback) for these
        (
            "kind: Pod\nspec: {x: !!int eight}\n",
            ["inject", "-f", "-"],
            "line 2, column 11: 'eight' is not a valid int",
        ),
        (
            "kind: Pod\nok: !!bool maybe\n",
            ["check", "-f", "-"],
            "line 2, column 5: 'maybe' is not a valid bool",
        ),
        ("a: !!timestamp soon\n", ["review", "-"], "line 1, column 4: 'soon' is not a valid timestamp"),
    ],
)
def test_bad_input_exits_2_with_one_line(stdin, args, needle):
    out = run(*args, stdin=stdin)
    assert out.returncode == 2, (out.stdout, out.stderr)
    assert out.stderr.startswith("mesh-injector: error: ") and out.stderr.count("\n") == 1
    assert needle in out.stderr, out.stderr
    assert out.stdout == ""


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["review", "/nonexistent/review.json"], "/nonexistent/review.json: cannot read"),
        (
            ["review", str(EXAMPLES / "review.json"), "--policy", "/nonexistent.yaml"],
            "cannot read policy file",
        ),
        (
            ["review", str(EXAMPLES / "review.json"), "--cluster", "/nonexistent.yaml"],
            "/nonexistent.yaml: cannot read",
        ),
        (
            ["review", str(EXAMPLES / "review.json"), "--server-version", "banana"],
            "--server-version: 'banana'",
        ),
        (["review", str(EXAMPLES / "review.json"), "--kernel", "xyz"], "--kernel: 'xyz'"),
        (
            ["review", str(EXAMPLES / "review.json"), "--cluster", str(EXAMPLES / "review.json")],
            "no Node or Namespace",
        ),
        (["inject", "-f", str(EXAMPLES), "--cluster", str(EXAMPLES / "cluster.yaml")], None),
        (["recommend", "--usage", str(EXAMPLES / "cluster.yaml")], "header lacks"),
    ],
)
def test_bad_files_exit_2(args, needle):
    out = run(*args)
    if needle is None:  # a directory of mixed files is fine
        assert out.returncode == 0, out.stderr
        return
    assert out.returncode == 2, (out.stdout, out.stderr)
    assert out.stderr.count("\n") == 1 and needle in out.stderr, out.stderr


def test_bad_usage_line_is_named(tmp_path):
    f = tmp_path / "u.csv"
    f.write_text(
        "namespace,workload,timestamp,cpu,memory\nshop,Deployment/web,2026-11-27T10:00:00Z,1,1Gi\n"
        "shop,Deployment/web,2026-11-27T11:00:00Z,fast,1Gi\n"
    )
    out = run("recommend", "--usage", str(f))
    assert out.returncode == 2 and "line 3: cpu 'fast' is not a quantity" in out.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("serve", "--metrics-api"), "--metrics-api needs the cluster: --kubeconfig or --in-cluster"),
        (
            ("serve", "--usage", "u.csv", "--prometheus", "http://127.0.0.1:9"),
            "--usage and --prometheus are 2 usage sources: give one (--usage, --prometheus or --metrics-api)",
        ),
        (
            ("serve", "--usage", "u.csv", "--prometheus", "http://127.0.0.1:9", "--metrics-api"),
            "--usage, --prometheus and --metrics-api are 3 usage sources: give one",
        ),
        (("recommend",), "recommend needs one usage source: --usage FILE or --prometheus URL"),
        (
            ("review", "examples/review.json", "--prometheus", "http://127.0.0.1:9"),
            "http://127.0.0.1:9/api/v1/query: [Errno 111] Connection refused",
        ),
        (("policy", "check", "POLICY"), "sizing.halfLife: must be at least 1/300 of sizing.window"),
    ],
)
def test_usage_source_errors_are_one_line(args, message, tmp_path):
    policy = tmp_path / "policy.yaml"  # a half-life the bounded history cannot represent
    policy.write_text("sizing: {window: 7d, halfLife: 1m}\n")
    out = run(*(str(policy) if a == "POLICY" else a for a in args))
    assert out.returncode == 2
    assert message in out.stderr and "Traceback" not in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("flag", [None, "--assume-opt-in", "--respect-opt-in"])
def test_check_and_inject_agree_on_opt_in(tmp_path, flag):
    """Both verbs take the same opt-in flags with the same default (assume, like
    istioctl kube-inject), so the table never contradicts the manifests."""
    manifest = tmp_path / "pod.yaml"
    manifest.write_text(
        "apiVersion: v1\nkind: Pod\nmetadata: {name: tool, namespace: default}\n"
        "spec: {containers: [{name: app, image: registry.example.com/tool:1}]}\n"
    )
    extra = [flag] if flag else []
    common = ["-f", str(manifest), "--cluster", MIXED, "--now", NOW, *extra]
    injected = run("inject", *common)
    table = run("check", *common)
    assert injected.returncode == table.returncode == 0, injected.stderr + table.stderr
    meshed = "linkerd-proxy" in injected.stdout
    assert meshed is (flag != "--respect-opt-in")  # namespace default has no opt-in label
    row = next(line for line in table.stdout.splitlines() if line.startswith("Pod default/tool"))
    assert row.split()[2] == ("yes" if meshed else "no")
    assert ("injected with mode" in injected.stderr) is meshed


def test_check_and_inject_refuse_both_opt_in_flags():
    out = run("check", "-f", str(EXAMPLES / "app.yaml"), "--assume-opt-in", "--respect-opt-in")
    assert out.returncode == 2 and "not allowed with argument" in out.stderr


def test_serve_with_an_unreachable_api_server_says_so_in_one_line(tmp_path):
    from tests.servers import free_port

    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(
        "apiVersion: v1\nkind: Config\ncurrent-context: c\n"
        f"clusters: [{{name: c, cluster: {{server: 'https://127.0.0.1:{free_port()}'}}}}]\n"
        "contexts: [{name: c, context: {cluster: c, user: u}}]\nusers: [{name: u, user: {token: x}}]\n"
    )
    before = set(Path("/tmp").iterdir())
    out = run(
        "serve",
        "--kubeconfig",
        str(kubeconfig),
        "--port",
        str(free_port()),
        "--metrics-port",
        str(free_port()),
    )
    assert out.returncode == 2
    assert out.stderr.count("\n") == 1 and "cannot reach the API server https://127.0.0.1:" in out.stderr
    assert "Traceback" not in out.stderr
    assert not [p for p in set(Path("/tmp").iterdir()) - before if p.suffix in (".key", ".crt")]


def test_samples_outside_the_window_are_pointed_out():
    usage = str(GOLDEN / "cases" / "50-observed-oom-bump" / "usage.csv")
    later = "2026-12-30T00:00:00Z"  # a month after the samples: all older than the 7d window
    out = run("recommend", "--usage", usage, "--now", later)
    assert out.returncode == 0, out.stderr
    assert "profile (too few samples)" in out.stdout
    note = "# shop/Deployment/web: 48 of 48 samples are outside (48 older than the 7d window); --now "
    assert note in out.stdout and "would count them" in out.stdout
    review = str(GOLDEN / "cases" / "50-observed-oom-bump" / "review.json")
    why = run("review", review, "--usage", usage, "--cluster", MIXED, "--now", later, "--show", "why")
    assert "usage: 48 of 48 samples are outside" in why.stdout
    inside = run("recommend", "--usage", usage, "--now", NOW)
    assert "outside" not in inside.stdout and "observed" in inside.stdout


def test_every_option_says_what_it_does():
    import argparse

    from webhook.cli import build_parser

    missing = []

    def walk(parser, path):
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, child in action.choices.items():
                    walk(child, [*path, name])
            elif action.option_strings and not action.help:
                missing.append(f"{' '.join(path)} {action.option_strings[-1]}")

    walk(build_parser(), [])
    assert not missing, missing
    out = run("serve", "--help")
    assert "--port PORT" in out.stdout and "(default: 8443)" in out.stdout


def test_certs_renewal_keeps_the_names_and_says_it_kept_the_ca(tmp_path):
    from cryptography import x509

    first = run("certs", "--out", str(tmp_path), "--dns", "webhook.example", "--ip", "127.0.0.1")
    assert first.returncode == 0, first.stderr
    ca = (tmp_path / "ca.crt").read_bytes()
    again = run("certs", "--out", str(tmp_path), "--force")
    assert again.returncode == 0, again.stderr
    assert "kept from the previous certificate: webhook.example, 127.0.0.1" in again.stderr
    assert f"kept {tmp_path / 'ca.crt'} (the existing CA)" in again.stderr
    assert f"wrote {tmp_path / 'tls.crt'}" in again.stderr
    assert (tmp_path / "ca.crt").read_bytes() == ca
    cert = x509.load_pem_x509_certificate((tmp_path / "tls.crt").read_bytes())
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "webhook.example" in sans.get_values_for_type(x509.DNSName)
    assert [str(i) for i in sans.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]
