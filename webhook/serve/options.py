"""The options of ``mesh-injector serve`` and ``mesh-injector certs``.

Kept apart from the wiring (webhook/serve/run.py) so that ``--help`` and the dry-run verbs do
not load the web server, the Kubernetes client or the crypto library: the command line
imports the wiring only when one of these two verbs runs.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

from webhook import flagtypes

MAX_IN_FLIGHT = 24 * 1024 * 1024  # request bytes held at once (--body-budget-mib)


Command = Callable[[argparse.Namespace], int]


def add_commands(sub: argparse._SubParsersAction, *, serve: Command, certs: Command) -> None:
    """Add the two verbs; ``serve`` and ``certs`` run them (the caller imports the wiring
    only when one of them runs)."""
    p = sub.add_parser(
        "serve",
        help="run the HTTPS webhook (POST /mutate, GET /healthz, /readyz) and /metrics",
        description="Every flag also comes from its MESH_INJECTOR_* environment variable "
        "(--metrics-port: MESH_INJECTOR_METRICS_PORT; true/false for switches); a flag given wins.",
    )
    p.add_argument("--host", default="0.0.0.0")
    p.add_argument("--port", type=flagtypes.port, default=8443)
    p.add_argument("--metrics-host", default="0.0.0.0")
    p.add_argument("--metrics-port", type=flagtypes.port, default=9090)
    p.add_argument("--tls-cert", metavar="FILE", help="serving certificate (PEM)")
    p.add_argument("--tls-key", metavar="FILE", help="its private key (PEM)")
    p.add_argument(
        "--cert-poll",
        type=flagtypes.seconds,
        default=2.0,
        metavar="SECONDS",
        help="how often to look for a new cert",
    )
    p.add_argument("--policy", metavar="FILE")
    p.add_argument("--cluster", metavar="FILE", help=f"static cluster state: {flagtypes.CLUSTER_HELP}")
    p.add_argument("--usage", metavar="FILE", help="observed proxy usage samples")
    p.add_argument(
        "--prometheus",
        type=flagtypes.http_url,
        metavar="URL",
        help="read observed proxy usage from this Prometheus (cAdvisor + kube-state-metrics)",
    )
    p.add_argument(
        "--metrics-api",
        action="store_true",
        help="poll observed proxy usage from the metrics.k8s.io API (metrics-server)",
    )
    p.add_argument(
        "--fleet-interval",
        type=flagtypes.whole_seconds,
        default=300,
        metavar="SECONDS",
        help="with a live cluster: how often every watched pod is audited for the "
        "mesh_injector_fleet_pods gauges (0: no pod watch, no gauges)",
    )
    p.add_argument(
        "--usage-interval",
        type=flagtypes.seconds,
        default=None,
        metavar="SECONDS",
        help="how often usage is read: metrics API poll (default 60), Prometheus step (default 300)",
    )
    p.add_argument(
        "--max-workloads",
        type=flagtypes.count,
        default=50_000,
        metavar="N",
        help="workloads whose usage history is kept at most (live usage sources)",
    )
    p.add_argument("--server-version", metavar="VERSION")
    p.add_argument(
        "--kubeconfig",
        metavar="FILE",
        help=flagtypes.KUBECONFIG_HELP.replace("read from", "watch in"),
    )
    p.add_argument(
        "--in-cluster",
        action="store_true",
        help="watch the cluster this pod runs in (the default inside a pod when no --cluster is given)",
    )
    p.add_argument(
        "--webhook-config",
        metavar="NAME",
        help="keep this MutatingWebhookConfiguration's caBundle holding our CA (self-managed certificates)",
    )
    p.add_argument(
        "--ca-bundle", metavar="FILE", help="the CA for --webhook-config (default: ca.crt by the cert)"
    )
    p.add_argument(
        "--read-timeout",
        type=flagtypes.seconds,
        default=10.0,
        metavar="SECONDS",
        help="longest time a client may take to send its request body",
    )
    p.add_argument(
        "--body-budget-mib",
        type=flagtypes.count,
        default=MAX_IN_FLIGHT // (1024 * 1024),
        metavar="MIB",
        help="request bodies held at once over all connections; a large review over it gets 503 "
        "with Retry-After (bodies up to 64 KiB always pass) (default: %(default)s)",
    )
    p.add_argument(
        "--keep-alive",
        type=flagtypes.whole_seconds,
        default=30,
        metavar="SECONDS",
        help="idle keep-alive timeout",
    )
    p.add_argument(
        "--grace",
        type=flagtypes.whole_seconds,
        default=20,
        metavar="SECONDS",
        help="graceful shutdown limit on SIGTERM",
    )
    p.add_argument("--log-level", default="info", choices=("debug", "info", "warning", "error"))
    p.set_defaults(func=serve)
    flagtypes.defaults_from_environment(p)

    p = sub.add_parser("certs", help="write a CA and serving certificate for the webhook Service")
    p.add_argument("--service", default="mesh-injector")
    p.add_argument("--namespace", default="mesh-injector")
    p.add_argument("--out", default="certs", metavar="DIR")
    p.add_argument("--dns", action="append", default=[], metavar="NAME", help="extra DNS SAN (repeatable)")
    p.add_argument("--ip", action="append", default=[], metavar="ADDRESS", help="IP SAN (repeatable)")
    p.add_argument("--days", type=flagtypes.count, default=365, help="validity of the serving certificate")
    p.add_argument(
        "--force", action="store_true", help="replace existing files (the CA is kept unless --new-ca)"
    )
    p.add_argument(
        "--new-ca", action="store_true", help="with --force, replace the CA too (update caBundle!)"
    )
    p.add_argument("--secret", metavar="NAMESPACE/NAME", help="write Secrets in the cluster instead of files")
    p.add_argument("--kubeconfig", metavar="FILE", help="with --secret: the cluster (default: in-cluster)")
    p.add_argument("--in-cluster", action="store_true", help="with --secret: the cluster this pod runs in")
    p.add_argument("--webhook-config", metavar="NAME", help="with --secret: also put the CA in its caBundle")
    p.set_defaults(func=certs)
