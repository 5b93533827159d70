"""The value types of command-line flags and their ``MESH_INJECTOR_*`` variables.

Each is an ``argparse`` type: a value out of range is refused when the command line is
read, with one line naming the flag (or the environment variable it came from) and what
is allowed, instead of a traceback or a server that starts and misbehaves.
"""

from __future__ import annotations

import argparse
import math
import os
import urllib.parse
from collections.abc import Callable
from typing import Any

# What a cluster file holds: what the README's snapshot commands ("Dry-run on a laptop")
# collect, and what --kubeconfig and serve read from a live cluster.
CLUSTER_HELP = (
    "the cluster as kubectl prints it: kubectl get nodes,namespaces,services,runtimeclasses -A -o yaml, "
    "then appended: the mesh control plane's ConfigMaps (Linkerd: linkerd-config and "
    "linkerd-identity-trust-roots in linkerd; Istio: istio-sidecar-injector and istio in istio-system) "
    "and Merbridge's pods (kubectl get pods -n linkerd|istio-system -l app=merbridge -o yaml)"
)
KUBECONFIG_HELP = (
    "read from this cluster what a --cluster file holds: Nodes, Namespaces, Services, RuntimeClasses, "
    "the mesh control plane's ConfigMaps and Merbridge's pods"
)

TRUE = ("1", "true", "yes", "on")
FALSE = ("0", "false", "no", "off", "")


def port(raw: str) -> int:
    try:
        value = int(raw)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{raw!r} is not a port number (1-65535)") from None
    if not 1 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"{value} is not a port number (1-65535)")
    return value


def _number(kind: Callable[[str], Any], raw: str, what: str) -> Any:
    try:
        value = kind(raw)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{raw!r} is not {what}") from None
    if isinstance(value, float) and not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"{raw!r} is not {what}")
    return value


def seconds(raw: str) -> float:
    """A time longer than zero, in seconds."""
    value = _number(float, raw, "a number of seconds")
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{raw} must be more than 0 seconds")
    return float(value)


def whole_seconds(raw: str) -> int:
    """Zero or more whole seconds."""
    value = _number(int, raw, "a whole number of seconds")
    if value < 0:
        raise argparse.ArgumentTypeError(f"{value} must not be negative")
    return int(value)


def count(raw: str) -> int:
    """One or more."""
    value = _number(int, raw, "a whole number")
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} must be at least 1")
    return int(value)


def percent(raw: str) -> float:
    """A percentage, 0 to 100 (a trailing ``%`` is allowed)."""
    value = _number(float, raw.strip().removesuffix("%"), "a percentage")
    if not 0 <= value <= 100:
        raise argparse.ArgumentTypeError(f"{raw} is not a percentage from 0 to 100")
    return float(value)


def comma_list(allowed: tuple[str, ...]) -> Callable[[str], list[str]]:
    """A comma list of some of ``allowed``."""

    def parse(raw: str) -> list[str]:
        values = [v.strip() for v in raw.split(",") if v.strip()]
        unknown = [v for v in values if v not in allowed]
        if unknown or not values:
            raise argparse.ArgumentTypeError(
                f"{', '.join(unknown) or repr(raw)}: choose from {', '.join(allowed)} (comma separated)"
            )
        return values

    return parse


def http_url(raw: str) -> str:
    """An http(s) URL with a host: ``localhost:9090`` would otherwise read as scheme
    ``localhost`` and fail on every request."""
    parsed = urllib.parse.urlsplit(raw)
    if parsed.scheme not in ("http", "https") or not parsed.netloc:
        hint = f"; write http://{raw}" if "://" not in raw else ""
        raise argparse.ArgumentTypeError(f"{raw!r} is not an http:// or https:// URL{hint}")
    return raw


def boolean(raw: str) -> bool:
    if raw.strip().lower() in TRUE:
        return True
    if raw.strip().lower() in FALSE:
        return False
    raise argparse.ArgumentTypeError(f"{raw!r} is not true or false")


def env_name(action: argparse.Action) -> str:
    return "MESH_INJECTOR_" + action.dest.upper()


def defaults_from_environment(parser: argparse.ArgumentParser) -> None:
    """Every option of ``parser`` takes its default from ``MESH_INJECTOR_<OPTION>`` when
    that is set (``--metrics-port``: ``MESH_INJECTOR_METRICS_PORT``). The value is checked
    like the flag's, when this command runs, and an error names the variable; a flag on the
    command line wins."""
    for action in parser._actions:
        if not action.option_strings or action.dest == "help":
            continue
        name = env_name(action)
        raw = os.environ.get(name)
        if raw is None:
            continue
        if isinstance(action, argparse._StoreTrueAction):
            action.default = _FromEnvironment(name, raw, boolean)
        else:
            action.default = _FromEnvironment(name, raw, action.type or str, action.choices)


class _FromEnvironment:
    """A default read from the environment, converted (and refused) only when the command
    that owns it runs, so a bad value for ``serve`` does not break ``version``."""

    def __init__(self, name: str, raw: str, kind: Callable[[str], Any], choices: Any = None) -> None:
        self.name, self.raw, self.kind, self.choices = name, raw, kind, choices

    def value(self) -> Any:
        try:
            value = self.kind(self.raw)
        except (argparse.ArgumentTypeError, ValueError) as exc:
            raise EnvironmentValueError(f"{self.name}: {exc}") from None
        if self.choices is not None and value not in self.choices:
            allowed = ", ".join(map(str, self.choices))
            raise EnvironmentValueError(f"{self.name}: {self.raw!r} is not one of {allowed}")
        return value

    def __repr__(self) -> str:  # --help shows the value it would use
        return f"{self.raw} (from {self.name})"


class EnvironmentValueError(ValueError):
    """A ``MESH_INJECTOR_*`` variable holds a value its flag does not take."""


def resolve_environment(args: argparse.Namespace) -> None:
    """Replace every default taken from the environment by its value (raises
    ``EnvironmentValueError`` naming the variable)."""
    for key, value in vars(args).items():
        if isinstance(value, _FromEnvironment):
            setattr(args, key, value.value())


class TextValueError(ValueError):
    """A flag's text is not UTF-8 (the shell passed bytes Python could only keep as
    surrogates): it would break every JSON written of it further on."""


def refuse_undecodable(args: argparse.Namespace, paths: frozenset[str]) -> None:
    """``TextValueError`` naming the first flag (not one of the file ``paths``, which the
    file system takes as bytes) whose text is not UTF-8."""
    for dest, value in vars(args).items():
        if dest in paths:
            continue
        for text in value if isinstance(value, list) else [value]:
            if isinstance(text, str):
                try:
                    text.encode("utf-8")
                except UnicodeEncodeError as exc:
                    bad = ord(text[exc.start])
                    byte = f"byte 0x{bad - 0xDC00:02x}" if 0xDC80 <= bad <= 0xDCFF else f"U+{bad:04X}"
                    raise TextValueError(
                        f"--{dest.replace('_', '-')}: not UTF-8 text ({byte} at offset {exc.start})"
                    ) from None
