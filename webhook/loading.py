"""Reading what users hand the tools: reviews, manifests, cluster files, usage, versions.

Everything here turns a bad file into ``InputError`` with a one-line message that names the
file and, where it can, the line: the CLI prints it and exits 2; the server refuses to start.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import orjson
import yaml

from webhook import policy as policy_file
from webhook import yamltext
from webhook.cluster.snapshot import (
    ClusterSnapshot,
    SnapshotError,
    build_snapshot,
    flatten_items,
    namespace_from_object,
    redirector_selector,
    snapshot_from_objects,
    with_kernel,
)
from webhook.dataplane import POLICY_SECTIONS, config_maps
from webhook.errors import ClusterAccessError
from webhook.policy import Policy
from webhook.usage.samples import UsageError, load_samples, summarize_all
from webhook.versions import KubeVersion, parse_kernel, parse_kube_version

# libyaml's C loader when PyYAML was built with it: ~10x faster on big manifests.
MANIFEST_SUFFIXES = (".yaml", ".yml", ".json")


def load_policy(path: str | Path | None = None) -> Policy:
    """The default policy, or the file at ``path`` (``-``: standard input) over it, with
    the sections of every registered data-plane flavour (``PolicyError`` where it is bad)."""
    return policy_file.load_policy(path, POLICY_SECTIONS)


def parse_policy(text: str, source: str = "policy") -> Policy:
    """A policy's text over the defaults (see ``load_policy``)."""
    return policy_file.parse_policy(text, source, POLICY_SECTIONS)


class InputError(ValueError):
    """A file the user gave cannot be used; the message says which and why."""


def shown(source: str) -> str:
    """How an input is named in messages: standard input as ``<stdin>``."""
    return "<stdin>" if source == "-" else source


def read_text(source: str) -> str:
    if source == "-":
        raw = sys.stdin.buffer.read()
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise InputError(
                f"<stdin>: not UTF-8 text (byte 0x{raw[exc.start]:02x} at offset {exc.start})"
            ) from None
    path = Path(source)
    try:
        # as bytes, then decoded: reading as text would turn every CRLF into LF, and inject
        # writes unchanged documents back byte for byte
        return path.read_bytes().decode("utf-8")
    except IsADirectoryError:
        raise InputError(f"{source}: is a directory") from None
    except OSError as exc:
        raise InputError(f"{source}: cannot read ({exc.strerror})") from None
    except UnicodeDecodeError:
        raise InputError(f"{source}: not a UTF-8 text file") from None


def _yaml_error(source: str, exc: yaml.YAMLError) -> InputError:
    refused = yamltext.refusal(exc, shown(source))
    if refused is not None:
        return InputError(refused)
    mark = getattr(exc, "problem_mark", None)
    problem = getattr(exc, "problem", None) or "syntax error"
    where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
    return InputError(f"{shown(source)}: not valid JSON or YAML{where}: {problem}")


class _Twice(Exception):
    def __init__(self, key: str) -> None:
        self.key = key


def _once_each(pairs: list[tuple[str, Any]]) -> None:
    if len(pairs) > 1:
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise _Twice(key)
            seen.add(key)


def refuse_duplicate_keys(text: str, source: str) -> None:
    """``InputError`` naming the key and its lines where a JSON object in ``text`` names a
    key twice (orjson, like every JSON parser, silently keeps the last; the API server's
    strict field validation refuses it). The check costs about one more parse."""
    try:
        json.loads(text, object_pairs_hook=_once_each)
    except _Twice as twice:
        try:  # JSON is YAML: its composer knows where each key was written
            yamltext.load(text)
        except yamltext.DuplicateKeyError as exc:
            raise InputError(yamltext.refusal(exc, shown(source))) from None
        except yaml.YAMLError:
            pass
        raise InputError(
            f"{shown(source)}: key {twice.key!r} appears twice in one object; "
            "the second would silently replace the first"
        ) from None
    except (ValueError, RecursionError):
        pass  # what orjson read is the reading; this only looks for keys named twice


def parse_document(text: str, source: str) -> Any:
    """One JSON or YAML document."""
    stripped = text.lstrip()
    if not stripped:
        raise InputError(f"{shown(source)}: empty input")
    if stripped[0] in "{[":
        try:
            document = orjson.loads(text)
        except orjson.JSONDecodeError as exc:
            if stripped[0] == "{" and source.endswith(".json"):
                raise InputError(f"{shown(source)}: not valid JSON: {exc}") from None
        else:
            refuse_duplicate_keys(text, source)
            return document
    try:
        docs = [d for d in yamltext.load_all(text) if d is not None]
    except yaml.YAMLError as exc:
        raise _yaml_error(source, exc) from None
    if len(docs) != 1:
        raise InputError(f"{shown(source)}: expected one document, found {len(docs)}")
    return docs[0]


def parse_documents(text: str, source: str) -> list[Any]:
    """All documents of a (multi-document) YAML or JSON stream, empty ones dropped."""
    try:
        return [d for d in yamltext.load_all(text) if d is not None]
    except yaml.YAMLError as exc:
        raise _yaml_error(source, exc) from None


def manifest_sources(source: str) -> Iterator[str]:
    """``-``, a file, or every manifest file under a directory (sorted, recursive)."""
    if source == "-":
        yield source
        return
    path = Path(source)
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix in MANIFEST_SUFFIXES)
        if not files:
            raise InputError(f"{source}: no .yaml, .yml or .json files in this directory")
        for f in files:
            yield str(f)
    else:
        yield source


def parse_server_version(raw: str) -> KubeVersion:
    version = parse_kube_version(raw)
    if version is None:
        raise InputError(f"--server-version: {raw!r} is not a Kubernetes version such as 1.32 or v1.29.3")
    return version


def load_snapshot(
    *,
    policy: Policy,
    now: float,
    cluster: str | None = None,
    server_version: str | None = None,
    usage: str | None = None,
    kernel: str | None = None,
    kubeconfig: str | None = None,
) -> ClusterSnapshot:
    """The static snapshot the dry-run tools (and ``serve --cluster``) decide against:
    from a cluster file, from a live cluster read once (``kubeconfig``), or from nothing."""
    server = parse_server_version(server_version) if server_version else None
    try:
        summaries = summarize_all(load_samples(usage), policy.sizing, now) if usage else {}
    except UsageError as exc:
        raise InputError(str(exc)) from None
    if cluster and kubeconfig:
        raise InputError("--cluster and --kubeconfig are two sources of the same state: give one")
    if kubeconfig:
        from webhook.cluster.live import api_client, read_once  # the Kubernetes client: only here

        try:
            docs, live_version = read_once(
                api_client(kubeconfig), redirector_selector(policy), config_maps(policy)
            )
        except ClusterAccessError as exc:
            raise InputError(str(exc)) from None
        snapshot = snapshot_from_objects(
            docs,
            server_version=server or live_version,
            usage=summaries,
            redirector=redirector_selector(policy),
            source=f"--kubeconfig {kubeconfig}",
            built_at=now,
        )
    elif cluster:
        docs = parse_documents(read_text(cluster), cluster)
        try:
            snapshot = snapshot_from_objects(
                docs,
                server_version=server,
                usage=summaries,
                redirector=redirector_selector(policy),
                source=cluster,
                built_at=now,
            )
        except SnapshotError as exc:
            raise InputError(f"{cluster}: {exc}") from None
        if not snapshot.nodes and not snapshot.namespaces:
            raise InputError(
                f"{cluster}: no Node or Namespace objects "
                "(use kubectl get nodes,namespaces,services -A -o yaml)"
            )
        if server is None:
            snapshot = _infer_server_version(snapshot)
    else:
        snapshot = build_snapshot(
            server_version=server,
            usage=summaries,
            source="embedded defaults: no --cluster, kernels unknown",
            built_at=now,
        )
    if kernel:
        if parse_kernel(kernel) is None:
            raise InputError(f"--kernel: {kernel!r} is not a kernel version such as 6.1.0")
        snapshot = with_kernel(snapshot, kernel)
    return snapshot


def _infer_server_version(snapshot: ClusterSnapshot) -> ClusterSnapshot:
    """Kubelets are never newer than their API server, so the newest one is a safe lower bound."""
    versions = [v for v in (parse_kube_version(n.kubelet) for n in snapshot.nodes.values()) if v is not None]
    if not versions:
        return snapshot
    newest = max(versions)
    return snapshot.derive(
        server_version=newest,
        source=f"{snapshot.source}; server version {newest} inferred from the newest kubelet",
    )


def bundle_namespaces(
    texts: Iterable[tuple[str, str]],
) -> dict[str, tuple[str, dict[str, str], dict[str, str]]]:
    """The Namespaces manifests define themselves, as (source, text) pairs: name -> (where,
    labels, annotations). A file that cannot be read here is left to the caller's own
    reading, which reports it; a text without the word is not parsed at all."""
    found: dict[str, tuple[str, dict[str, str], dict[str, str]]] = {}
    for source, text in texts:
        if "Namespace" not in text:
            continue
        try:
            objects = flatten_items(parse_documents(text, source))
        except (InputError, SnapshotError):
            continue
        for obj in objects:
            if obj.get("kind") == "Namespace" and obj.get("apiVersion") == "v1":
                name, (labels, annotations) = namespace_from_object(obj)
                if name:
                    found[name] = (shown(source), labels, annotations)
    return found


def with_bundle_namespaces(
    snapshot: ClusterSnapshot, found: dict[str, tuple[str, dict[str, str], dict[str, str]]]
) -> tuple[ClusterSnapshot, list[str]]:
    """``snapshot`` with the Namespaces of the manifests over its own, as they will be on the
    cluster once applied together; a note for each that says otherwise than the cluster's."""
    if not found:
        return snapshot, []
    notes = []
    for name, (where, labels, notes_on_it) in sorted(found.items()):
        known = snapshot.namespaces.get(name)
        if known is not None and (
            dict(known) != labels or dict(snapshot.namespace_annotations.get(name, {})) != notes_on_it
        ):
            notes.append(
                f"Namespace {name} from {where} is used over the one in {snapshot.source.split(';')[0]} "
                "(their labels or annotations differ)"
            )
    labelled = {**snapshot.namespaces, **{n: labels for n, (_, labels, _) in found.items()}}
    annotated = {n: a for n, a in snapshot.namespace_annotations.items() if n not in found}
    annotated |= {n: a for n, (_, _, a) in found.items() if a}
    return snapshot.derive(namespaces=labelled, namespace_annotations=annotated), notes


def has_documents(text: str) -> bool:
    """Whether ``text`` holds anything but blank lines, comments and document markers."""
    for line in text.splitlines():
        stripped = line.strip()
        if stripped and not stripped.startswith("#") and stripped not in ("---", "..."):
            return True
    return False
