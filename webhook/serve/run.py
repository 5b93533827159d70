"""``mesh-injector serve`` and ``mesh-injector certs``: wiring only.

Everything here runs at start-up: read the policy and the cluster state, set up TLS and
metrics, then hand uvicorn the app. Nothing here is on the admission path.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import gc
import json
import logging
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import uvicorn
from kubernetes import client
from kubernetes.client.rest import ApiException
from prometheus_client import start_http_server
from urllib3.exceptions import HTTPError
from uvicorn.protocols.http.h11_impl import H11Protocol

from webhook.cluster.live import RESOURCES, LiveClusterView, UsageRefreshingView, api_client, server_version
from webhook.cluster.snapshot import ClusterView, StaticClusterView, redirector_selector
from webhook.dataplane import config_maps
from webhook.errors import CertError, ClusterAccessError, ListenError, describe_error
from webhook.fleet.watch import FleetWatch
from webhook.loading import load_policy, load_snapshot
from webhook.memory import Trimmer, tune_allocator
from webhook.policy import Policy
from webhook.serve.app import AppState, BodyBudget, create_app
from webhook.serve.cabundle import CABundleSync, ensure_secrets
from webhook.serve.certs import generate, service_names, write_bundle
from webhook.serve.metrics import Metrics
from webhook.serve.tls import MemoryFiles, ReloadingTLS
from webhook.usage.history import UsageHistory
from webhook.usage.metricsapi import MetricsApiUsage
from webhook.usage.prometheus import PrometheusUsage
from webhook.usage.sources import FileUsage, PollingUsage, UsageSource


class _JsonLines(logging.Formatter):
    """One JSON object per line; admission lines are JSON already."""

    def format(self, record: logging.LogRecord) -> str:
        msg = record.getMessage()
        if record.name == "mesh_injector.admission" and msg.startswith("{") and not record.exc_info:
            return msg
        line = {"level": record.levelname.lower(), "logger": record.name, "msg": msg}
        if record.exc_info:
            line["error"] = self.formatException(record.exc_info).splitlines()[-1]
        return json.dumps(line, separators=(",", ":"))


def admission_log() -> Callable[[bytes], None]:
    """The per-admission JSON line, written to stderr's descriptor in one system call (a
    pipe keeps writes under 4 KiB whole): the logging module's record, lock, formatter and
    flush cost more than deciding a memoised pod. Nothing when the level is above info."""
    if not logging.getLogger("mesh_injector.admission").isEnabledFor(logging.INFO):
        return lambda line: None

    def write(line: bytes) -> None:
        try:
            os.write(2, line + b"\n")
        except OSError:  # stderr closed or full: the admission goes on without its line
            pass

    return write


def setup_logging(level: str) -> None:
    # Skip what the log lines never show: the caller's source line, thread and process
    # (the Logging HOWTO's "Optimization" settings; findCaller alone cost ~7 us a line).
    logging._srcfile = None  # type: ignore[attr-defined]
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_JsonLines())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())


def _self_signed() -> MemoryFiles:
    """A throwaway CA and serving certificate for trying the server out, in memory only."""
    names = ["localhost", *service_names("mesh-injector", "mesh-injector")]
    bundle = generate(dns=names, ips=["127.0.0.1", "::1"], days=30)
    try:
        return MemoryFiles({"ca.crt": bundle.ca_cert, "tls.crt": bundle.cert, "tls.key": bundle.key})
    except OSError as exc:
        raise CertError(f"no in-memory certificate here ({exc})") from None


def _abort_when_idle(base: type[asyncio.Protocol]) -> type[asyncio.Protocol]:
    """``base`` whose shutdown drops an idle keep-alive connection at once.

    uvicorn closes an idle TLS connection by sending close_notify and waiting for the
    peer's; a client that does not read its idle pool would hold shutdown for the whole
    grace period. Nothing is in flight on an idle connection, so aborting it loses nothing.
    """

    class PromptClose(base):  # type: ignore[valid-type,misc]
        def shutdown(self) -> None:
            if self.cycle is None or self.cycle.response_complete:
                self.transport.abort()
            else:
                super().shutdown()

    PromptClose.__name__ = PromptClose.__qualname__ = f"PromptClose{base.__name__}"
    return PromptClose


def http_protocol() -> type[asyncio.Protocol]:
    """httptools (C parser) where its wheel is installed, else h11 (pure Python)."""
    try:
        from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
    except ImportError:
        return _abort_when_idle(H11Protocol)
    return _abort_when_idle(HttpToolsProtocol)


def event_loop() -> str:
    """uvloop where its wheel is installed, else asyncio's own loop."""
    try:
        import uvloop  # noqa: F401
    except ImportError:
        return "asyncio"
    return "uvloop"


def build_server(
    app: object, tls: ReloadingTLS, *, host: str, port: int, keep_alive: int = 30, grace: int = 20
) -> uvicorn.Server:
    """uvicorn over ``tls``: SIGTERM stops accepting, finishes in-flight requests and closes
    idle keep-alive connections at once (the API server reuses them), within ``grace``."""
    config = uvicorn.Config(
        app,  # type: ignore[arg-type]
        http=http_protocol(),
        loop=event_loop(),
        host=host,
        port=port,
        ssl_certfile=str(tls.cert),
        ssl_keyfile=str(tls.key),
        log_level="warning",
        access_log=False,
        lifespan="off",
        timeout_keep_alive=keep_alive,
        timeout_graceful_shutdown=grace,
        server_header=False,
        date_header=False,
        proxy_headers=False,  # the API server connects directly; no X-Forwarded-* to trust
    )
    config.load()
    config.ssl = tls.listener  # every handshake gets the current certificate
    return uvicorn.Server(config)


def where(host: str, port: int) -> str:
    """An address the server listens on, as a person reads it: a wildcard address says that
    every interface of the machine is reachable (the quick start binds 127.0.0.1)."""
    shown = f"[{host}]:{port}" if ":" in host else f"{host or '*'}:{port}"
    if host in ("0.0.0.0", "::", ""):
        return f"{shown} (every {'IPv4 ' if host == '0.0.0.0' else ''}address of this machine)"
    return shown


def listen(host: str, port: int, what: str) -> socket.socket:
    """A bound socket for ``what``, taken before anything else starts, so a port in use is
    one line and exit 2 rather than a traceback after threads and certificates exist."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise ListenError(f"{what} {host}:{port}: cannot listen ({exc.strerror or exc})") from None
    return sock


def _freeze_when_ready(live: LiveClusterView) -> None:
    if live.wait_ready(600):
        gc.collect()
        gc.freeze()


def _usage_source(
    args: argparse.Namespace, policy: Policy, now: float, api: client.ApiClient | None
) -> UsageSource | None:
    if args.usage:
        return FileUsage(args.usage, policy.sizing, now)
    history = UsageHistory(policy.sizing, max_workloads=args.max_workloads)
    if args.prometheus:
        return PrometheusUsage(args.prometheus, history, step=args.usage_interval or 300.0)
    if args.metrics_api and api is not None:
        return MetricsApiUsage(api, history, interval=args.usage_interval or 60.0)
    return None


def _reach(api: client.ApiClient, where: str, attempts: int = 3) -> None:
    """Start only against an API server that answers (a few tries, a few seconds): a wrong
    kubeconfig is one line and exit 2 at start, not a server that never becomes ready.
    Once running, the watches ride out outages."""
    quiet = logging.getLogger("urllib3")
    level = quiet.level
    quiet.setLevel(logging.ERROR)  # its retry warnings would bury the one line that matters
    try:
        for attempt in range(attempts):
            try:
                server_version(api)
                return
            except Exception as exc:  # the API server or the connection failed
                if attempt + 1 == attempts:
                    host = api.configuration.host
                    raise ClusterAccessError(
                        f"{where}: cannot reach the API server {host} ({describe_error(exc)})"
                    ) from None
                time.sleep(1.0 + attempt)
    finally:
        quiet.setLevel(level)


def _check_ports(args: argparse.Namespace) -> None:
    """The webhook and /metrics each need their own port (one would take the other's)."""
    anywhere = ("0.0.0.0", "::", "")
    shared = args.host == args.metrics_host or args.host in anywhere or args.metrics_host in anywhere
    if args.port == args.metrics_port and shared:
        raise ListenError(
            f"--port and --metrics-port are both {args.port}: the webhook and /metrics need a port each"
        )


def cmd_serve(args: argparse.Namespace) -> int:
    _check_ports(args)
    setup_logging(args.log_level)
    tune_allocator()
    log = logging.getLogger("mesh_injector.serve")
    policy = load_policy(args.policy)
    policy_loaded = time.time()
    in_cluster = args.in_cluster or (
        not args.kubeconfig and not args.cluster and bool(os.environ.get("KUBERNETES_SERVICE_HOST"))
    )
    live: LiveClusterView | None = None
    refreshing: UsageRefreshingView | None = None
    sync: CABundleSync | None = None
    view: ClusterView
    if args.webhook_config and not (args.kubeconfig or in_cluster):
        raise ClusterAccessError("--webhook-config needs the cluster: --kubeconfig or --in-cluster")
    given = [
        f
        for f, v in (
            ("--usage", args.usage),
            ("--prometheus", args.prometheus),
            ("--metrics-api", args.metrics_api),
        )
        if v
    ]
    if len(given) > 1:
        raise ClusterAccessError(
            f"{', '.join(given[:-1])} and {given[-1]} are {len(given)} usage sources: give one "
            "(--usage, --prometheus or --metrics-api)"
        )
    if args.metrics_api and not (args.kubeconfig or in_cluster):
        raise ClusterAccessError("--metrics-api needs the cluster: --kubeconfig or --in-cluster")
    api = api_client(args.kubeconfig, in_cluster=in_cluster) if (args.kubeconfig or in_cluster) else None
    if api is not None:
        _reach(api, f"--kubeconfig {args.kubeconfig}" if args.kubeconfig else "in-cluster")
    usage = _usage_source(args, policy, policy_loaded, api)
    if api is not None:
        if args.cluster:
            raise ClusterAccessError(
                "--cluster and a live cluster (--kubeconfig/--in-cluster) exclude each other"
            )
        live = LiveClusterView(
            api, usage=usage, redirector=redirector_selector(policy), config_maps=config_maps(policy)
        )
        view = live
        if args.webhook_config:
            ca_file = (
                Path(args.ca_bundle) if args.ca_bundle else Path(args.tls_cert or ".").with_name("ca.crt")
            )
            if not ca_file.is_file():
                raise CertError(f"{ca_file}: no CA to keep in the caBundle (give --ca-bundle FILE)")
            sync = CABundleSync(api, args.webhook_config, ca_file)
        source = f"live cluster {api.configuration.host}"
    else:
        snapshot = load_snapshot(
            policy=policy,
            now=policy_loaded,
            cluster=args.cluster,
            server_version=args.server_version,
        )
        if usage is None:
            view = StaticClusterView(snapshot)
        else:
            refreshing = UsageRefreshingView(snapshot, usage)
            view = refreshing
        source = snapshot.source
    if usage is not None:
        source += f"; usage: {usage.name}"

    scratch: MemoryFiles | None = None
    if bool(args.tls_cert) != bool(args.tls_key):
        raise CertError("--tls-cert and --tls-key go together")
    if args.tls_cert:
        cert, key = Path(args.tls_cert), Path(args.tls_key)
    else:
        scratch = _self_signed()
        cert, key = scratch.paths["tls.crt"], scratch.paths["tls.key"]
        print(
            "mesh-injector: no --tls-cert given; serving a self-signed certificate held in memory "
            f"(valid while this server runs). CA bundle: {scratch.public['ca.crt']}",
            flush=True,
        )
    try:
        tls = ReloadingTLS(cert, key, interval=args.cert_poll)
    except (OSError, ValueError) as exc:
        raise CertError(f"{cert}: cannot load the certificate and key ({exc})") from None

    metrics = Metrics()
    metrics.track(policy_loaded=policy_loaded, snapshot_built=lambda: view.snapshot().built_at)
    metrics.usage_workloads.set_function(lambda: len(view.snapshot().usage))
    if usage is not None:
        metrics.track_usage(
            usage.age_seconds,
            lambda: getattr(usage, "failures", 0),
            usage.refused.copy if isinstance(usage, PollingUsage) else None,
        )
    metrics.track_certificate(lambda: tls.expiry, lambda: tls.reloads)
    fleet: FleetWatch | None = None
    if live is not None:
        watched = live
        metrics.track_watches({r: (lambda r=r: watched.stale_seconds(r)) for r in RESOURCES})
        if api is not None and args.fleet_interval:
            fleet = FleetWatch(api, live.snapshot, policy, interval=float(args.fleet_interval))
            metrics.registry.register(fleet)
    budget = BodyBudget(args.body_budget_mib * 1024 * 1024)
    metrics.body_bytes.set_function(lambda: budget.used)
    trimmer = Trimmer()
    state = AppState(
        cluster=view,
        policy=policy,
        metrics=metrics,
        read_timeout=args.read_timeout,
        budget=budget,
        trim=trimmer.poke,
        log_line=admission_log(),
        ready=live.ready if live is not None else (refreshing.ready if refreshing else (lambda: True)),
    )
    app = create_app(state)

    https_socket = listen(args.host, args.port, "--port")
    try:
        metrics_server = start_http_server(
            args.metrics_port, addr=args.metrics_host, registry=metrics.registry
        )
    except OSError as exc:
        https_socket.close()
        raise ListenError(
            f"--metrics-port {args.metrics_host}:{args.metrics_port}: cannot listen ({exc.strerror or exc})"
        ) from None
    server = build_server(
        app, tls, host=args.host, port=args.port, keep_alive=args.keep_alive, grace=args.grace
    )
    tls.start()
    trimmer.start()
    if live is not None:
        live.start()  # /readyz answers 503 until nodes, namespaces and Services are listed
    if refreshing is not None:
        refreshing.start()  # /readyz answers 503 until usage was read once
    if sync is not None:
        sync.start()
    if fleet is not None:
        fleet.start()
    log.info(
        f"listening on {where(args.host, args.port)} for the webhook (https: POST /mutate, GET /healthz, "
        f"/readyz) and on {where(args.metrics_host, args.metrics_port)} for GET /metrics (http); "
        f"cluster: {source}"
    )
    # uvicorn handles SIGTERM/SIGINT while serving, then restores the previous handlers and
    # re-raises the signal; with these no-op handlers in place, run() returns and the
    # clean-up below happens, and a graceful shutdown exits 0.
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: None)
    # Everything loaded so far (policy, snapshot, libraries) lives as long as the process:
    # move it out of the collector's way so collections during requests stay short.
    gc.collect()
    gc.freeze()
    if live is not None:
        # and the cluster state of the first sync, once it is in
        threading.Thread(target=_freeze_when_ready, args=(live,), name="gc-freeze", daemon=True).start()
    started = time.monotonic()
    try:
        server.run(sockets=[https_socket])
    finally:
        log.info(
            f"stopping after serving for {time.monotonic() - started:.0f}s: requests in flight finished, "
            "watches closed"
        )
        tls.stop()
        trimmer.stop()
        if live is not None:
            live.stop()
        if refreshing is not None:
            refreshing.stop()
        if sync is not None:
            sync.stop()
        if fleet is not None:
            fleet.stop()
        if isinstance(metrics_server, tuple):
            metrics_server[0].shutdown()
        if scratch is not None:
            scratch.close()
    return 0


def _certs_in_cluster(args: argparse.Namespace) -> int:
    namespace, _, name = args.secret.rpartition("/")
    if not namespace or not name:
        raise CertError(f"--secret: {args.secret!r} must be NAMESPACE/NAME")
    api = api_client(args.kubeconfig, in_cluster=args.in_cluster or not args.kubeconfig)
    doing = f"Secret {namespace}/{name}"
    try:
        bundle, written = ensure_secrets(
            api,
            namespace=namespace,
            name=name,
            service=args.service,
            dns=args.dns,
            days=args.days,
            force=args.force,
        )
        said = "written" if written else "exists, left as it is (--force renews)"
        print(f"{doing}: {said}", file=sys.stderr)
        if args.webhook_config:
            doing = f"MutatingWebhookConfiguration {args.webhook_config}"
            patched = CABundleSync(api, args.webhook_config, bundle.ca_cert).ensure()
            print(f"{doing}: caBundle {'updated' if patched else 'already holds the CA'}", file=sys.stderr)
    except (ApiException, OSError, HTTPError) as exc:  # refused (RBAC, absent) or unreachable
        raise ClusterAccessError(f"{doing}: {describe_error(exc)}") from None
    return 0


def _names_in(cert_file: Path) -> tuple[list[str], list[str]]:
    """The DNS names and IP addresses a PEM certificate file is valid for (none if unreadable)."""
    from cryptography import x509

    try:
        cert = x509.load_pem_x509_certificate(cert_file.read_bytes())
        sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except (OSError, ValueError, x509.ExtensionNotFound):
        return [], []
    return sans.get_values_for_type(x509.DNSName), [str(i) for i in sans.get_values_for_type(x509.IPAddress)]


def cmd_certs(args: argparse.Namespace) -> int:
    if args.new_ca and not args.force:
        raise CertError("--new-ca replaces the CA of existing files, so it needs --force as well")
    if args.secret:
        return _certs_in_cluster(args)
    dns = [*service_names(args.service, args.namespace), *args.dns]
    ips = list(args.ip)
    out = Path(args.out)
    ca = None
    if args.force and not args.new_ca and (out / "ca.crt").exists() and (out / "ca.key").exists():
        ca = ((out / "ca.crt").read_bytes(), (out / "ca.key").read_bytes())  # renew under the same CA
        print(f"renewing the serving certificate under the existing CA in {out}", file=sys.stderr)
        # a renewal keeps the names the certificate had (the API server calls the webhook by them)
        old_dns, old_ips = _names_in(out / "tls.crt")
        kept = [n for n in old_dns if n not in dns] + [i for i in old_ips if i not in ips]
        dns += [n for n in old_dns if n not in dns]
        ips += [i for i in old_ips if i not in ips]
        if kept:
            print(f"kept from the previous certificate: {', '.join(kept)}", file=sys.stderr)
    bundle = generate(dns=dns, ips=ips, days=args.days, common_name=args.service, ca=ca)
    paths = write_bundle(bundle, Path(args.out), force=args.force)
    for p in paths:
        kept_ca = ca is not None and p.name in ("ca.crt", "ca.key")
        print(
            f"{'kept' if kept_ca else 'wrote'} {p}" + (" (the existing CA)" if kept_ca else ""),
            file=sys.stderr,
        )
    print(f"SANs: {', '.join(dns + ips)}", file=sys.stderr)
    # The caBundle value for the MutatingWebhookConfiguration, on stdout for scripts.
    print(base64.b64encode(bundle.ca_cert).decode("ascii"))
    return 0
