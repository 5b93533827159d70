"""What the tools say, each in one clear line: where `serve` listens and how long it
served, a reloaded certificate's expiry as a time, a kubeconfig that does not exist, an
unquoted version as it was written, every `--cluster` naming what the README's snapshot
commands collect, and every count flag's default."""

from __future__ import annotations

import json
import logging
import signal
from pathlib import Path

import pytest

from tests.servers import serve_process
from tests.support import run_cli as run
from webhook.cli import build_parser
from webhook.loading import parse_policy
from webhook.policy import PolicyError
from webhook.serve.certs import generate, write_bundle
from webhook.serve.run import where
from webhook.serve.tls import ReloadingTLS

REPO = Path(__file__).resolve().parent.parent


def test_serve_says_where_it_listens_and_how_long_it_served(certs):
    with serve_process(certs, "--cluster", str(REPO / "examples" / "cluster.yaml")) as server:
        assert server.stop(signal.SIGTERM) == 0
        lines = [json.loads(line) for line in server.stderr.read_text().splitlines() if line.startswith("{")]
    port, metrics = server.url.rsplit(":", 1)[1], server.metrics_url.split(":")[2].split("/")[0]
    start = next(line["msg"] for line in lines if line["msg"].startswith("listening on"))
    assert start.startswith(
        f"listening on 127.0.0.1:{port} for the webhook (https: POST /mutate, GET /healthz, /readyz) "
        f"and on 127.0.0.1:{metrics} for GET /metrics (http); cluster: "
    )
    stop = lines[-1]["msg"]
    assert stop.startswith("stopping after serving for ") and stop.endswith(
        "s: requests in flight finished, watches closed"
    )


@pytest.mark.parametrize(
    ("host", "shown"),
    [
        ("0.0.0.0", "0.0.0.0:8443 (every IPv4 address of this machine)"),
        ("::", "[::]:8443 (every address of this machine)"),
        ("", "*:8443 (every address of this machine)"),
        ("127.0.0.1", "127.0.0.1:8443"),
        ("::1", "[::1]:8443"),
    ],
)
def test_a_wildcard_address_says_every_interface_is_reachable(host, shown):
    assert where(host, 8443) == shown


def test_a_reloaded_certificate_logs_its_expiry_as_a_time(tmp_path, caplog):
    write_bundle(generate(dns=["localhost"], days=2), tmp_path)
    tls = ReloadingTLS(tmp_path / "tls.crt", tmp_path / "tls.key", interval=60)
    write_bundle(generate(dns=["localhost"], days=2), tmp_path, force=True)
    with caplog.at_level(logging.INFO, logger="mesh_injector.tls"):
        assert tls.check()
    (message,) = [r.getMessage() for r in caplog.records]
    valid_until = message.rsplit("valid until ", 1)[1]
    assert message.startswith(f"serving certificate reloaded from {tmp_path / 'tls.crt'} (valid until ")
    assert len(valid_until) == len("2026-12-09T17:00:00Z)") and valid_until.endswith("Z)")
    assert valid_until[4] == "-" and valid_until[10] == "T"


@pytest.mark.parametrize("verb", [("check", "-f", "examples/app.yaml"), ("audit",), ("serve",)], ids=str)
def test_a_kubeconfig_that_does_not_exist_says_so(verb, tmp_path):
    out = run(*verb, "--kubeconfig", "/nonexistent/kubeconfig")
    assert out.returncode == 2
    assert out.stderr == (
        "mesh-injector: error: /nonexistent/kubeconfig: cannot load Kubernetes credentials (no such file)\n"
    )


@pytest.mark.parametrize(
    ("written", "message"),
    [
        ("5.4", 'interception.ebpf.minKernel: 5.4 is a YAML number: write the version in quotes, "5.4"'),
        (
            "5.10",
            "interception.ebpf.minKernel: 5.10 is a YAML number, which reads as 5.1: "
            'write the version in quotes, "5.10"',
        ),
    ],
)
def test_an_unquoted_version_is_quoted_as_it_was_written(written, message):
    """5.4 used to be answered with a suggestion of "5.40"."""
    with pytest.raises(PolicyError) as refused:
        parse_policy(f"interception: {{ebpf: {{minKernel: {written}}}}}\n", "p.yaml")
    assert str(refused.value) == f"p.yaml: {message}"


def _options(parser, path=()):
    import argparse

    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, child in action.choices.items():
                yield from _options(child, (*path, name))
        elif action.option_strings:
            yield path, action, parser


def test_every_cluster_flag_names_what_the_snapshot_commands_collect():
    """What README's "Dry-run on a laptop" appends to the cluster file, by name."""
    found = [(path, a) for path, a, _ in _options(build_parser()) if "--cluster" in a.option_strings]
    assert {p for p, _ in found} >= {
        ("review",),
        ("inject",),
        ("check",),
        ("audit",),
        ("rollout",),
        ("serve",),
    }
    for path, action in found:
        if path == ("recommend",):
            continue  # there it is the VerticalPodAutoscalers: a file of its own
        text = action.help
        for needed in (
            "kubectl get nodes,namespaces,services,runtimeclasses -A -o yaml",
            "linkerd-config",
            "linkerd-identity-trust-roots",
            "istio-sidecar-injector",
            "istio in istio-system",
            "Merbridge's pods",
            "-l app=merbridge",
        ):
            assert needed in text, (path, needed)
    kubeconfigs = [a.help for _, a, _ in _options(build_parser()) if "--kubeconfig" in a.option_strings]
    assert any("RuntimeClasses" in h and "Merbridge" in h for h in kubeconfigs)


def test_every_count_and_number_flag_shows_its_default():
    """A default of 1 was taken for True and not shown (`rollout --max-in-flight`)."""
    out = run("rollout", "--help")
    assert "workloads rolling out at once (default: 1)" in " ".join(out.stdout.split())
    for path, action, parser in _options(build_parser()):
        default = action.default
        if isinstance(default, (int, float)) and not isinstance(default, bool):
            said = parser.formatter_class(prog="mesh-injector")._get_help_string(action)
            assert "default" in said, (path, action.option_strings)
