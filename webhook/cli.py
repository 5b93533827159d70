"""``mesh-injector``: the command-line front end.

Every verb is a thin shell: read files, build a static snapshot, call the same ``admit``
the webhook calls, print. Errors a user can fix exit 2 with one line on stderr that names
the file and the problem.
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

import yaml

from webhook import __version__, flagtypes
from webhook import kubeschema as schema
from webhook.admission import admit
from webhook.cluster.snapshot import ClusterSnapshot, flatten_items
from webhook.dataplane import describe, flavour
from webhook.decide.autoscaler import autoscaler_for
from webhook.decide.sizing import enough_samples, from_observed, human_duration
from webhook.errors import CertError, ClusterAccessError, ListenError
from webhook.fleet.audit import Report, State, audit
from webhook.fleet.rollout import Fleet, budgets_of, plan, run
from webhook.loading import (
    InputError,
    bundle_namespaces,
    has_documents,
    load_policy,
    load_snapshot,
    manifest_sources,
    parse_document,
    parse_documents,
    read_text,
    refuse_duplicate_keys,
    shown,
    with_bundle_namespaces,
)
from webhook.manifests.process import DocResult, process
from webhook.manifests.roundtrip import (
    NOT_JSON,
    is_json,
    json_document,
    parse_chunks,
    rewrite_json,
    rewrite_yaml,
)
from webhook.modes import describe as describe_modes
from webhook.policy import Policy, PolicyError
from webhook.progress import Progress
from webhook.reasons import Skip
from webhook.serve.options import add_commands as add_server_commands
from webhook.serve.review import ReviewError, build_response, parse_review
from webhook.usage.prometheus import PrometheusError, prometheus_summaries
from webhook.usage.samples import SampleColumns, UsageError, UsageSummary, load_samples, summarize_all
from webhook.workload import WorkloadKey


class CliError(Exception):
    pass


class _BlockDumper(getattr(yaml, "CSafeDumper", yaml.SafeDumper)):  # type: ignore[misc]
    """Multi-line strings (the iptables ruleset) as readable literal blocks."""


def _str_presenter(dumper: yaml.BaseDumper, data: str) -> yaml.ScalarNode:
    if "\n" in data:
        return dumper.represent_scalar("tag:yaml.org,2002:str", data, style="|")
    return dumper.represent_scalar("tag:yaml.org,2002:str", data)


_BlockDumper.add_representer(str, _str_presenter)
# Manifests never hold shared objects worth anchoring; skipping the alias scan saves ~15%.
_BlockDumper.ignore_aliases = lambda self, data: True  # type: ignore[method-assign]


def dump_yaml(docs: Sequence[Any]) -> str:
    return yaml.dump_all(docs, Dumper=_BlockDumper, sort_keys=False, default_flow_style=False, width=120)


def _now(raw: str | None) -> float:
    if not raw:
        return time.time()
    try:
        return datetime.fromisoformat(raw.replace("Z", "+00:00")).timestamp()
    except ValueError:
        raise CliError(f"--now: {raw!r} is not an RFC 3339 time such as 2026-11-27T12:00:00Z") from None


def _policy(args: argparse.Namespace) -> Policy:
    return load_policy(args.policy)


def _snapshot(args: argparse.Namespace, policy: Policy, now: float) -> ClusterSnapshot:
    if args.usage and args.prometheus:
        raise CliError("--usage and --prometheus are two usage sources: give one")
    snapshot = load_snapshot(
        policy=policy,
        now=now,
        cluster=args.cluster,
        server_version=args.server_version,
        usage=args.usage,
        kernel=args.kernel,
        kubeconfig=args.kubeconfig,
    )
    if args.prometheus:
        snapshot = snapshot.derive(
            usage=prometheus_summaries(args.prometheus, policy.sizing, now),
            source=f"{snapshot.source}; usage: {args.prometheus}",
        )
    return snapshot


# --- verbs ---------------------------------------------------------------------------


def cmd_review(args: argparse.Namespace) -> int:
    policy = _policy(args)
    snapshot = _snapshot(args, policy, _now(args.now))
    review = parse_document(read_text(args.file), args.file)
    request = review.get("request") if isinstance(review, dict) else None
    if isinstance(request, dict):
        _check_review_object(request, args.file)  # all of the pod, where serve checks what it reads
    try:
        request = parse_review(review)
    except ReviewError as exc:
        raise CliError(f"{shown(args.file)}: {exc}") from None
    outcome = admit(request, snapshot, policy)
    views = {"response": lambda: build_response(review, outcome), "patch": lambda: outcome.patch}
    views["pod"] = lambda: outcome.pod
    if args.show in views:
        value = views[args.show]()
        output = args.output or ("yaml" if args.show == "pod" else "json")
        print(
            json.dumps(value, indent=2) if output == "json" else dump_yaml([value]),
            end="\n" if output == "json" else "",
        )
    else:
        print("\n".join(outcome.explanation))
        if outcome.warnings and not any(line.startswith("warnings:") for line in outcome.explanation):
            print("warnings: " + " | ".join(outcome.warnings))
        if args.usage and outcome.workload is not None:
            try:
                rows = load_samples(args.usage).get(outcome.workload)
            except UsageError:
                rows = None
            note = _outside_window(rows, policy.sizing, _now(args.now)) if rows else None
            if note is not None:
                print(f"usage: {note}")
    return 0


def _check_review_object(request: Mapping[str, Any], source: str) -> None:
    """A review written by hand has not been decoded by an API server: its pod is checked
    against the Pod schema as a manifest is (wrong types are the error, unknown fields a
    warning)."""
    obj = request.get("object")
    root = schema.root_for("v1", "Pod")
    if not isinstance(obj, dict) or root is None:
        return
    findings = schema.check(obj, root, "request.object")
    for warning in findings.warnings:
        print(f"mesh-injector: warning: {shown(source)}: {warning}", file=sys.stderr)
    if findings.errors:
        more = f" (and {len(findings.errors) - 1} more)" if len(findings.errors) > 1 else ""
        raise CliError(f"{shown(source)}: not a valid Pod: {findings.errors[0]}{more}")


def _batch_collections() -> None:
    """Documents are trees without cycles, freed by reference counting. The cyclic
    collector's frequent full passes over what a large manifest allocates were a fifth of
    ``inject``'s time on 1,000 big documents; a batch verb collects far less often."""
    gc.set_threshold(10_000, 10, 10)


def _processed(
    doc: Any, source: str, snapshot: ClusterSnapshot, policy: Policy, args: argparse.Namespace
) -> tuple[Any, list[DocResult]]:
    """One manifest document through admission, as ``inject`` and ``check`` see it."""
    if not isinstance(doc, dict):
        raise CliError(f"{shown(source)}: a document is a {type(doc).__name__}, not a Kubernetes object")
    return process(
        doc, snapshot, policy, default_namespace=args.namespace, assume_opt_in=not args.respect_opt_in
    )


def _skip_file(exc: InputError | CliError, sources: list[str]) -> None:
    """Of several files, one that cannot be read or parsed is reported and the others go on;
    a single input that cannot be used is the command's error (one line, exit 2)."""
    if len(sources) == 1:
        raise exc
    print(f"mesh-injector: error: {exc}", file=sys.stderr)


class _Inputs:
    """The manifests given (``-f``, repeatable; directories walked), each read when asked:
    standard input once, then from memory (it is read twice, for its Namespaces first)."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.sources = [source for given in args.filename for source in manifest_sources(given)]
        self._stdin: str | InputError | None = None

    def text(self, source: str) -> str:
        if source != "-":
            return read_text(source)
        if self._stdin is None:
            try:
                self._stdin = read_text("-")
            except InputError as exc:
                self._stdin = exc  # standard input is gone once read: so is what was wrong with it
        if isinstance(self._stdin, InputError):
            raise self._stdin
        return self._stdin

    def readable(self) -> Iterator[tuple[str, str]]:
        for source in self.sources:
            try:
                yield source, self.text(source)
            except InputError:
                continue  # reported when it is processed

    def named(self) -> str:
        return shown(self.sources[0]) if len(self.sources) == 1 else f"the {len(self.sources)} files given"


def _bundle_snapshot(args: argparse.Namespace, inputs: _Inputs, verb: str) -> tuple[Policy, ClusterSnapshot]:
    """The policy, and the snapshot with the Namespaces the manifests define over the
    cluster's. Refuses an input with nothing in it: an empty pipe is what a failed
    ``kubectl get ... |`` leaves, and it must not look like a clean result."""
    texts = list(inputs.readable())
    if len(texts) == len(inputs.sources) and not any(has_documents(text) for _, text in texts):
        raise CliError(
            f"{inputs.named()}: empty input, nothing to {verb} (did the command before the pipe fail?)"
        )
    policy = _policy(args)
    snapshot, notes = with_bundle_namespaces(
        _snapshot(args, policy, _now(args.now)), bundle_namespaces(texts)
    )
    for note in notes:
        print(f"mesh-injector: note: {note}", file=sys.stderr)
    return policy, snapshot


def _manifest_results(args: argparse.Namespace) -> tuple[list[DocResult], int]:
    """Every workload's result, and how many files could not be read (each reported on
    stderr; as with ``inject``, a single input that cannot be used is an error of its own)."""
    _batch_collections()
    inputs = _Inputs(args)
    policy, snapshot = _bundle_snapshot(args, inputs, "check")
    results: list[DocResult] = []
    failed = 0
    sources = inputs.sources
    progress = Progress(len(sources))
    for source in sources:
        progress.next_file()
        found: list[DocResult] = []
        try:
            for doc in parse_documents(inputs.text(source), source):
                res = _processed(doc, source, snapshot, policy, args)[1]
                progress.document(sum(1 for r in res if r.outcome is not None or r.errors))
                found.extend(res)
        except (InputError, CliError) as exc:
            progress.clear()
            _skip_file(exc, sources)
            failed += 1
            continue
        results.extend(found)
    progress.clear()
    return results, failed


def cmd_inject(args: argparse.Namespace) -> int:
    """Each file rewritten where its pod templates change and byte for byte elsewhere
    (webhook/manifests/roundtrip.py). Of several files, one that cannot be read or parsed
    is reported and skipped, the others are still written, and the exit status is 1; a
    single input that cannot be used is one line and exit 2, like every other input error."""
    _batch_collections()
    inputs = _Inputs(args)
    policy, snapshot = _bundle_snapshot(args, inputs, "inject")
    failed = 0
    blind = 0  # workloads a cluster's state would have meshed
    invalid = 0  # workloads the API server would refuse: left as they are
    written = ""  # the last output that had content
    sources = inputs.sources
    progress = Progress(len(sources))
    for source in sources:
        results: list[DocResult] = []
        progress.next_file()

        def change(doc: Any, source: str = source, results: list[DocResult] = results) -> Any:
            new, res = _processed(doc, source, snapshot, policy, args)
            results.extend(res)
            progress.document(sum(1 for r in res if r.outcome is not None or r.errors))
            return new

        try:
            text = inputs.text(source)
            document = json_document(text)
            if document is not NOT_JSON:
                refuse_duplicate_keys(text, source)
                out = rewrite_json(text, document, change)
            else:
                out = "".join(rewrite_yaml(parse_chunks(text, source), change))
        except (InputError, CliError) as exc:
            progress.clear()
            _skip_file(exc, sources)
            failed += 1
            continue
        progress.clear()
        # the files' documents stay apart: `---` between them, and before a JSON file's
        # when several files go out (kubectl reads a stream that starts with `{` as JSON
        # throughout, and a JSON document after YAML without `---` as broken YAML)
        apart = bool(written) or (len(sources) > 1 and is_json(out))
        if apart and out.strip() and not out.lstrip().startswith("---"):
            if written and not written.endswith("\n"):
                sys.stdout.write("\n")
            sys.stdout.write("---\n")
        sys.stdout.write(out)
        written = out if out.strip() else written
        blind += sum(1 for r in results if r.outcome and r.outcome.skip is Skip.NO_TRUST_ANCHORS)
        invalid += sum(1 for r in results if r.errors)
        for r in results:
            print(r.report(), file=sys.stderr)
            for error in r.errors[1:]:
                print(f"  error: {error}", file=sys.stderr)
            for note in (*r.notes, *(r.outcome.warnings if r.outcome else ())):
                print(f"  warning: {note.removeprefix('mesh-injector: ')}", file=sys.stderr)
    if blind:
        print(
            f"mesh-injector: error: {blind} workload(s) were left unmeshed because this dry run does "
            f"not know {flavour(policy.proxy.flavour).dry_run_needs}",
            file=sys.stderr,
        )
    if invalid:
        print(
            f"mesh-injector: error: {invalid} workload(s) are not valid Kubernetes objects and were left "
            "unchanged (see above)",
            file=sys.stderr,
        )
    if failed:
        print(f"mesh-injector: {failed} file(s) could not be injected (see above)", file=sys.stderr)
    return 1 if failed or blind or invalid else 0


def _table(rows: list[Sequence[str]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows)


def _emit(records: list[dict[str, Any]], output: str) -> None:
    """``-o json`` / ``-o yaml``: the rows as records, for scripts."""
    if output == "json":
        print(json.dumps(records, indent=2))
    else:
        print(dump_yaml([records]), end="")


def _check_record(r: DocResult) -> dict[str, Any]:
    o = r.outcome
    record: dict[str, Any] = {"kind": r.kind, "namespace": r.namespace or None, "name": r.name}
    if r.errors:
        return {
            **record,
            "meshed": None,
            "reason": "invalid",
            "errors": list(r.errors),
            "warnings": list(r.notes),
        }
    if o is None:
        return {**record, "meshed": None, "reason": "no pod template"}
    record |= {
        "meshed": o.injected,
        "mode": o.mode.value if o.mode else None,
        "firewall": o.firewall,
        "reason": o.reason,
    }
    if o.skip is not None:
        record["skip"] = {"reason": o.skip.value, "text": o.skip.text}
    if o.injected and o.resources is not None:
        record["resources"] = {"source": o.resources.source.value, **o.resources.as_k8s()}
    record["warnings"] = [*r.notes, *o.warnings]
    record["explanation"] = list(o.explanation)
    return record


def _check_failures(results: list[DocResult], failed: int) -> int:
    """The exit status of ``check``: 1 when a file could not be read or a workload is not a
    valid Kubernetes object (each said on stderr), else 0."""
    invalid = sum(1 for r in results if r.errors)
    if invalid:
        print(
            f"mesh-injector: error: {invalid} workload(s) are not valid Kubernetes objects", file=sys.stderr
        )
    if failed:
        print(f"mesh-injector: {failed} file(s) could not be checked (see above)", file=sys.stderr)
    return 1 if failed or invalid else 0


def cmd_check(args: argparse.Namespace) -> int:
    results, failed = _manifest_results(args)
    if args.output != "table":
        _emit([_check_record(r) for r in results], args.output)
        return _check_failures(results, failed)
    rows: list[Sequence[str]] = [("WORKLOAD", "MESHED", "MODE", "FIREWALL", "RESOURCES", "REASON")]
    for r in results:
        o = r.outcome
        if r.errors:
            more = f" (+{len(r.errors) - 1} more)" if len(r.errors) > 1 else ""
            rows.append((r.ref, "error", "-", "-", "-", f"invalid: {r.errors[0]}{more}"))
        elif o is None:
            rows.append((r.ref, "-", "-", "-", "-", "no pod template"))
        elif o.injected:
            assert o.mode is not None and o.resources is not None
            rows.append(
                (
                    r.ref,
                    "yes",
                    o.mode.value,
                    o.firewall or "-",
                    o.resources.label,
                    o.reason + (f" ({len(o.warnings)} warning(s))" if o.warnings else ""),
                )
            )
        else:
            assert o.skip is not None
            rows.append((r.ref, "no", "-", "-", "-", f"{o.skip.value}: {o.skip.text}"))
    print(_table(rows))
    for r in results:
        for error in r.errors:
            print(f"error: {r.ref}: {error}", file=sys.stderr)
        for note in r.notes:
            print(f"warning: {r.ref}: {note}", file=sys.stderr)
    if args.explain:
        for r in results:
            if r.outcome is not None:
                print(f"\n# {r.ref}")
                print("\n".join(r.outcome.explanation))
    return _check_failures(results, failed)


def _outside_window(rows: object, sizing: Any, now: float) -> str | None:
    """What the window left out of a workload's samples, and the ``--now`` that would count
    them (the newest one's time), or None when every sample is inside."""
    stamps = list(rows.timestamp) if isinstance(rows, SampleColumns) else []
    older = sum(1 for t in stamps if t < now - sizing.window)
    later = sum(1 for t in stamps if t > now)
    if not older and not later:
        return None
    newest = datetime.fromtimestamp(max(stamps), UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    parts = [f"{older} older than the {human_duration(sizing.window)} window"] if older else []
    parts += [f"{later} after --now"] if later else []
    return (
        f"{older + later} of {len(stamps)} samples are outside ({', '.join(parts)}); "
        f"--now {newest} would count them"
    )


def cmd_recommend(args: argparse.Namespace) -> int:
    policy = _policy(args)
    now = _now(args.now)
    if bool(args.usage) == bool(args.prometheus):
        raise CliError("recommend needs one usage source: --usage FILE or --prometheus URL")
    summaries: Mapping[WorkloadKey, UsageSummary]
    if args.prometheus:
        summaries = prometheus_summaries(args.prometheus, policy.sizing, now)
        samples: Mapping[WorkloadKey, object] = summaries
    else:
        try:
            samples = load_samples(args.usage)
        except UsageError as exc:
            raise CliError(str(exc)) from None
        summaries = summarize_all(samples, policy.sizing, now)  # type: ignore[arg-type]
    rows: list[Sequence[str]] = [
        ("WORKLOAD", "SAMPLES", "SPAN", "CPU REQ", "MEM REQ", "CPU LIM", "MEM LIM", "SOURCE")
    ]
    window = human_duration(policy.sizing.window)
    cluster = _autoscalers(args.cluster, policy, now) if args.cluster else None
    proxy = flavour(policy.proxy.flavour).proxy_name
    for key in sorted(samples):
        summary = summaries.get(key)
        vpa = autoscaler_for(cluster, key) if cluster is not None else None
        if vpa is not None and vpa.update_mode != "Off" and vpa.mode_for(proxy) != "Off":
            count = summary.count if summary else 0
            span = human_duration(summary.span) if summary else "-"
            # VPA sizes a proxy it sees: a regular container (a native sidecar is ours)
            rows.append((str(key), str(count), span, "-", "-", "-", "-", f"vpa/{vpa.name}"))
        elif enough_samples(summary, policy):
            assert summary is not None
            res = from_observed(summary, policy).as_k8s()
            lim = res.get("limits", {})
            rows.append(
                (
                    str(key),
                    str(summary.count),
                    human_duration(summary.span),
                    res["requests"]["cpu"],
                    res["requests"]["memory"],
                    lim.get("cpu", "-"),
                    lim.get("memory", "-"),
                    "observed",
                )
            )
        else:
            count = summary.count if summary else 0
            span = human_duration(summary.span) if summary else "-"
            rows.append((str(key), str(count), span, "-", "-", "-", "-", "profile (too few samples)"))
    if args.output != "table":
        names = (
            "workload",
            "samples",
            "span",
            "cpuRequest",
            "memoryRequest",
            "cpuLimit",
            "memoryLimit",
            "source",
        )
        records = [
            {
                k: (None if v == "-" else int(v) if k == "samples" else v)
                for k, v in zip(names, row, strict=True)
            }
            for row in rows[1:]
        ]
        _emit(records, args.output)
        return 0
    print(
        f"# window {window}, half-life {human_duration(policy.sizing.half_life)}, "
        f"at least {policy.sizing.min_samples} samples over {human_duration(policy.sizing.min_span)}"
    )
    print(_table(rows))
    if not args.prometheus:  # Prometheus is asked for the window only
        for key in sorted(samples):
            note = _outside_window(samples[key], policy.sizing, now)
            if note is not None:
                print(f"# {key}: {note}")
    return 0


def _autoscalers(path: str, policy: Policy, now: float) -> ClusterSnapshot:
    return load_snapshot(policy=policy, now=now, cluster=path)


def cmd_policy_check(args: argparse.Namespace) -> int:
    policy = load_policy(args.file)
    print(
        f"{'<stdin>' if args.file == '-' else args.file}: valid ({len(policy.profiles)} profiles, "
        f"injectByDefault={str(policy.inject_by_default).lower()})"
    )
    for line in [*describe(policy), *describe_modes(policy)]:
        print(line)
    return 0


def _fleet_pods(args: argparse.Namespace) -> list[dict[str, Any]]:
    """The pods to audit: from the cluster file, or listed from the cluster."""
    if args.kubeconfig:
        from webhook.cluster.live import api_client
        from webhook.fleet.kube import pods

        found = list(pods(api_client(args.kubeconfig), args.namespace))
    else:
        docs = parse_documents(read_text(args.cluster), args.cluster)
        found = [o for o in flatten_items(docs) if o.get("kind") == "Pod"]
        if args.namespace:
            found = [o for o in found if (o.get("metadata") or {}).get("namespace") == args.namespace]
    return found


def _fleet_report(args: argparse.Namespace) -> Report:
    if not args.cluster and not args.kubeconfig:
        raise CliError(
            f"{args.command}: give the cluster: --kubeconfig FILE, or --cluster FILE holding its pods"
        )
    policy = _policy(args)
    snapshot = _snapshot(args, policy, _now(args.now))
    return audit(_fleet_pods(args), snapshot, policy, tolerance=args.tolerance / 100)


def _totals_line(report: Report) -> str:
    totals = report.totals()
    shown_states = ", ".join(f"{n} {s.value}" for s, n in totals.items() if n)
    return f"{sum(totals.values())} pod(s) in {len(report.workloads)} workload(s): {shown_states or 'none'}"


def cmd_audit(args: argparse.Namespace) -> int:
    report = _fleet_report(args)
    rows = [w for w in report.workloads if args.all or w.state is not State.OUT_OF_SCOPE]
    if args.output != "table":
        _emit([w.record() for w in rows], args.output)
    else:
        table: list[Sequence[str]] = [("NAMESPACE", "KIND", "NAME", "STATE", "PODS", "WHY")]
        for w in rows:
            pods = " ".join(f"{n} {s.value}" for s in State if (n := w.count(s)))
            worst = next(p for p in w.pods if p.state is w.state)
            table.append(
                (w.workload.namespace, w.workload.kind, w.workload.name, w.state.value, pods, worst.detail)
            )
        print(_table(table) if len(table) > 1 else "no pods in scope")
        print(_totals_line(report))
    failing = {State(s) for s in args.fail_on}
    return 1 if any(p.state in failing for p in report.pods()) else 0


def _api_fleet(kubeconfig: str) -> Fleet:
    """The cluster's workloads and budgets, read and restarted through the API server."""
    from webhook.cluster.live import api_client  # the Kubernetes client loads only when needed
    from webhook.fleet.kube import ApiFleet

    return ApiFleet(api_client(kubeconfig))


def cmd_rollout(args: argparse.Namespace) -> int:
    if args.yes and not args.kubeconfig:
        raise CliError("rollout --yes: restarting needs the cluster itself: give --kubeconfig")
    report = _fleet_report(args)
    steps = plan(report.needing_restart())
    print(_totals_line(report))
    if not steps:
        print("nothing to restart: every meshed workload is current")
        return 0
    fleet = _api_fleet(args.kubeconfig) if args.kubeconfig else None
    if fleet is None or not args.yes:
        table: list[Sequence[str]] = [("NAMESPACE", "KIND", "NAME", "ACTION", "WHY")]
        for step in steps:
            action = "leave alone" if step.left_alone else "restart"
            why = step.left_alone or step.why
            if fleet is not None and not step.left_alone:
                obj = fleet.workload(step.workload)
                budgets = budgets_of(obj, fleet.budgets(step.workload.namespace)) if obj else []
                if budgets:
                    why += "; within " + ", ".join(str(b["metadata"]["name"]) for b in budgets)
            w = step.workload
            table.append((w.namespace, w.kind, w.name, action, why))
        print(_table(table))
        print(
            f"dry run: nothing was restarted; run again with --yes to restart, {args.max_in_flight} at a time"
        )
        return 0
    result = run(
        fleet,
        steps,
        max_in_flight=args.max_in_flight,
        timeout=args.timeout,
        poll=args.poll,
        say=lambda line: print(line, flush=True),
    )
    print(
        f"restarted {len(result.restarted)}, waited on {len(result.waited)}, "
        f"left alone {len(result.left_alone)}, failed {len(result.failed)}"
    )
    return 0 if result.ok else 1


def cmd_serve(args: argparse.Namespace) -> int:
    from webhook.serve import run  # the web server and its clients load only for this verb

    return run.cmd_serve(args)


def cmd_certs(args: argparse.Namespace) -> int:
    from webhook.serve import run

    return run.cmd_certs(args)


def cmd_version(args: argparse.Namespace) -> int:
    print(__version__)
    return 0


# --- parser --------------------------------------------------------------------------


def _dry_run_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("cluster state for the dry run")
    g.add_argument("--cluster", metavar="FILE", help=flagtypes.CLUSTER_HELP)
    g.add_argument("--kubeconfig", metavar="FILE", help=f"{flagtypes.KUBECONFIG_HELP}, once")
    g.add_argument("--server-version", metavar="VERSION", help="the API server's version, e.g. 1.32")
    g.add_argument("--usage", metavar="FILE", help="observed proxy usage samples (CSV or JSON lines)")
    g.add_argument(
        "--prometheus",
        type=flagtypes.http_url,
        metavar="URL",
        help="read observed proxy usage from this Prometheus, once",
    )
    g.add_argument("--policy", metavar="FILE", help="policy file (default: the bundled policy)")
    g.add_argument("--kernel", metavar="VERSION", help="assume every node runs this kernel, e.g. 6.1.0")
    g.add_argument("--now", metavar="TIME", help="evaluation time, RFC 3339 (default: now)")


def _output_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "-o",
        "--output",
        choices=("table", "json", "yaml"),
        default="table",
        help="table for people; json or yaml: one record per row, with every field, for scripts",
    )


# What the options without a help text of their own mean (their defaults are added).
_HELP = {
    "--host": "address the HTTPS webhook listens on",
    "--port": "port of the HTTPS webhook (POST /mutate, GET /healthz, GET /readyz)",
    "--metrics-host": "address of the plain-HTTP /metrics endpoint",
    "--metrics-port": "port of the plain-HTTP /metrics endpoint",
    "--policy": "policy file layered over the bundled default (see: mesh-injector policy check)",
    "--server-version": "the API server's version, e.g. 1.32 (default: from the cluster)",
    "--webhook-config": "the MutatingWebhookConfiguration whose caBundle is kept",
    "--log-level": "log level of the JSON log lines on stderr",
    "--show": "response: the AdmissionReview response; patch: the decoded JSON Patch; "
    "pod: the mutated pod; why: the explanation",
    "--filename": "manifest file, directory (recursive) or - for stdin",
    "--namespace": "namespace of objects that name none",
    "--now": "evaluation time for usage decay, RFC 3339 (default: now)",
    "--service": "the webhook Service's name (its DNS names go into the certificate)",
    "--out": "directory to write ca.crt, ca.key, tls.crt and tls.key to",
    "--secret": "write the serving certificate into this Secret instead of files",
}


class _Formatter(argparse.HelpFormatter):
    """Help with each option's default where it has a meaningful one."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        if (
            "%(default)" not in text
            and "default" not in text
            and action.option_strings
            and default is not None
            and not isinstance(default, bool)  # a switch; and 1 == True must not hide a count's 1
            and default is not argparse.SUPPRESS
            and default != []
        ):
            text += " (default: %(default)s)"
        return text


def _describe(parser: argparse.ArgumentParser) -> None:
    """Give every option a help text and every parser the formatter that shows defaults."""
    parser.formatter_class = _Formatter
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for child in action.choices.values():
                _describe(child)
        elif action.help is None and action.option_strings:
            long = max(action.option_strings, key=len)
            action.help = _HELP.get(long)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mesh-injector",
        description="Mesh pods with the interception mode their nodes can run; webhook and offline dry-run.",
    )
    parser.add_argument("--version", action="version", version=f"mesh-injector {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("review", help="AdmissionReview in, the webhook's AdmissionReview response out")
    p.add_argument("file", metavar="FILE|-", help="AdmissionReview as JSON or YAML, or - for stdin")
    p.add_argument("--show", choices=("response", "patch", "pod", "why"), default="response")
    p.add_argument(
        "-o",
        "--output",
        choices=("json", "yaml"),
        help="format of --show response, patch and pod (default: json, yaml for the pod)",
    )
    _dry_run_flags(p)
    p.set_defaults(func=cmd_review)

    for name, helptext, func in (
        ("inject", "inject the proxy into every pod template of the manifests", cmd_inject),
        ("check", "table of whether each workload would be meshed, in which mode, and why", cmd_check),
    ):
        p = sub.add_parser(name, help=helptext)
        p.add_argument("-f", "--filename", action="append", required=True, metavar="FILE|DIR|-")
        p.add_argument("-n", "--namespace", default="default", help="namespace for objects that name none")
        _dry_run_flags(p)
        p.set_defaults(func=func)
        opt = p.add_mutually_exclusive_group()
        opt.add_argument(
            "--respect-opt-in",
            action="store_true",
            help="apply namespace labels and injectByDefault as the webhook would",
        )
        opt.add_argument(
            "--assume-opt-in",
            action="store_false",
            dest="respect_opt_in",
            help="treat every workload not marked disabled as opted in, like istioctl kube-inject "
            "(the default, for inject and check alike)",
        )
        if name == "check":
            p.add_argument("--explain", action="store_true", help="print each workload's full explanation")
            _output_flag(p)

    p = sub.add_parser("recommend", help="the proxy resources each workload would get from observed usage")
    p.add_argument("--usage", metavar="FILE", help="observed proxy usage samples (CSV or JSON lines)")
    p.add_argument(
        "--prometheus",
        type=flagtypes.http_url,
        metavar="URL",
        help="read observed proxy usage from this Prometheus",
    )
    p.add_argument(
        "--cluster",
        metavar="FILE",
        help="the cluster's VerticalPodAutoscalers (kubectl get verticalpodautoscalers -A -o yaml): "
        "workloads whose VPA sizes the proxy are shown as such",
    )
    p.add_argument("--policy", metavar="FILE")
    p.add_argument("--now", metavar="TIME")
    _output_flag(p)
    p.set_defaults(func=cmd_recommend)

    for name, helptext, func in (
        ("audit", "classify running pods: current, missed, stale (and which fields), other mesh", cmd_audit),
        ("rollout", "restart the workloads audit finds missed or stale, at a safe pace", cmd_rollout),
    ):
        p = sub.add_parser(name, help=helptext)
        p.add_argument("-n", "--namespace", help="only this namespace (default: every namespace)")
        p.add_argument(
            "--tolerance",
            type=flagtypes.percent,
            default=20,
            metavar="PCT",
            help="proxy requests and limits within this percentage of what admission would set are current",
        )
        _dry_run_flags(p)
        p.set_defaults(func=func)
        if name == "audit":
            p.add_argument("--all", action="store_true", help="also list workloads out of scope")
            p.add_argument(
                "--fail-on",
                type=flagtypes.comma_list(tuple(s.value for s in State)),
                default=[],
                metavar="STATES",
                help="exit 1 when a pod is in one of these states (comma list, e.g. missed,stale)",
            )
            _output_flag(p)
        else:
            p.add_argument(
                "--yes", action="store_true", help="restart (without it: print the plan, change nothing)"
            )
            p.add_argument(
                "--dry-run", action="store_false", dest="yes", help="print the plan only (the default)"
            )
            p.add_argument(
                "--max-in-flight",
                type=flagtypes.count,
                default=1,
                metavar="N",
                help="workloads rolling out at once",
            )
            p.add_argument(
                "--timeout",
                type=flagtypes.seconds,
                default=600.0,
                metavar="SECONDS",
                help="how long a workload may take to be available again before the run stops",
            )
            p.add_argument(
                "--poll", type=flagtypes.seconds, default=2.0, metavar="SECONDS", help="status poll interval"
            )

    p = sub.add_parser("policy", help="policy file tools")
    psub = p.add_subparsers(dest="policy_command", required=True, metavar="ACTION")
    pc = psub.add_parser("check", help="validate a policy file")
    pc.add_argument("file", metavar="FILE|-", help="policy file, or - for standard input")
    pc.set_defaults(func=cmd_policy_check)

    p = sub.add_parser("version", help="print the version")
    p.set_defaults(func=cmd_version)

    add_server_commands(sub, serve=cmd_serve, certs=cmd_certs)

    _describe(parser)
    return parser


# flags that name files: the file system takes any bytes, so they are not text to check
_PATH_FLAGS = frozenset(
    {"file", "filename", "cluster", "usage", "policy", "kubeconfig"}
    | {"tls_cert", "tls_key", "ca_bundle", "out"}
)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        flagtypes.resolve_environment(args)
        flagtypes.refuse_undecodable(args, _PATH_FLAGS)
        return int(args.func(args))
    except (
        CliError,
        InputError,
        PolicyError,
        UsageError,
        ReviewError,
        CertError,
        ClusterAccessError,
        PrometheusError,
        ListenError,
        flagtypes.EnvironmentValueError,
        flagtypes.TextValueError,
    ) as exc:
        print(f"mesh-injector: error: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:
        return 0
    except KeyboardInterrupt:
        return 130
