"""Istio's injector configuration, as istiod reads it: the ConfigMap ``istio-sidecar-injector``
(``istio-sidecar-injector-<revision>`` for a revision) in istiod's namespace.

Key ``values`` holds the Helm values istiod's chart picked for its templates (JSON as the
chart writes it; YAML is taken too): ``global`` (hub, tag, proxy, proxy_init, logging, mesh
and cluster names, ``nativeNftables``, ...), ``sidecarInjectorWebhook``, ``revision`` and the
pilot's ``cni`` and ``env``. Key ``config`` holds the injection policy: the templates by
name, ``defaultTemplates``, ``neverInjectSelector``/``alwaysInjectSelector`` and
``injectedAnnotations``. Both are parsed once per distinct text; what is malformed is named
in a warning and left out, never an error.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

import orjson
import yaml

from webhook import yamltext
from webhook.nested import dotted

VALUES_KEY = "values"
CONFIG_KEY = "config"
NAME = "istio-sidecar-injector"


def injector_map_name(revision: str) -> str:
    return NAME if revision in ("", "default") else f"{NAME}-{revision}"


@dataclass(frozen=True, slots=True)
class InjectorConfig:
    """The ``config`` key: the injection templates istiod knows (by name; their text is not
    read: each known template is rendered as that version's chart writes it), the default
    ones, the selectors of Istio's own injection policy and the annotations it adds."""

    templates: frozenset[str] | None = None  # None: no config read
    default_templates: tuple[str, ...] = ("sidecar",)
    policy: str = "enabled"
    never_inject: tuple[Mapping[str, Any], ...] = ()
    always_inject: tuple[Mapping[str, Any], ...] = ()
    injected_annotations: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Injector:
    """What the ConfigMap holds, parsed: the values (a nested mapping; empty where the key is
    missing or malformed), the config, and warnings naming what was not taken."""

    values: Mapping[str, Any]
    config: InjectorConfig
    warnings: tuple[str, ...] = ()
    has_values: bool = False


def _document(text: str, where: str, warnings: list[str]) -> Mapping[str, Any] | None:
    """A JSON object (as the chart writes it) or a YAML mapping, or None with a warning."""
    try:
        doc = orjson.loads(text)
    except orjson.JSONDecodeError as json_error:
        try:
            doc = yamltext.load(text)  # refuses an alias bomb and a key named twice
        except yaml.YAMLError as exc:
            if text.lstrip().startswith(("{", "[")):  # JSON, as the chart writes it: its error
                problem = str(json_error)
            else:
                mark = getattr(exc, "problem_mark", None)
                at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
                problem = f"{getattr(exc, 'problem', None) or 'not YAML'}{at}"
            warnings.append(f"{where} is not applied: neither JSON nor YAML ({problem})")
            return None
    if doc is None:
        return {}
    if not isinstance(doc, Mapping):
        warnings.append(f"{where} is not applied: expected an object, got {type(doc).__name__}")
        return None
    return doc


def _selectors(raw: object, where: str, warnings: list[str]) -> tuple[Mapping[str, Any], ...]:
    if raw is None:
        return ()
    if not isinstance(raw, list) or not all(isinstance(s, Mapping) for s in raw):
        warnings.append(f"{where} is not applied: expected a list of label selectors")
        return ()
    return tuple(raw)


def _config(doc: Mapping[str, Any], where: str, warnings: list[str]) -> InjectorConfig:
    templates = doc.get("templates")
    names: frozenset[str] | None = None
    if isinstance(templates, Mapping):
        names = frozenset(str(k) for k in templates)
    elif templates is not None:
        warnings.append(f"{where} templates is not applied: expected a map of template names")
    defaults = doc.get("defaultTemplates")
    chosen: tuple[str, ...] = ("sidecar",)
    if isinstance(defaults, list) and defaults and all(isinstance(t, str) for t in defaults):
        chosen = tuple(defaults)
    elif defaults not in (None, []):
        warnings.append(f"{where} defaultTemplates is not applied: expected a list of template names")
    injected = doc.get("injectedAnnotations")
    annotations: dict[str, str] = {}
    if isinstance(injected, Mapping):
        annotations = {str(k): str(v) for k, v in injected.items() if v is not None}
    elif injected is not None:
        warnings.append(f"{where} injectedAnnotations is not applied: expected a map of annotations")
    policy = doc.get("policy")
    return InjectorConfig(
        templates=names,
        default_templates=chosen,
        policy=str(policy) if policy is not None else "enabled",
        never_inject=_selectors(doc.get("neverInjectSelector"), f"{where} neverInjectSelector", warnings),
        always_inject=_selectors(doc.get("alwaysInjectSelector"), f"{where} alwaysInjectSelector", warnings),
        injected_annotations=annotations,
    )


@lru_cache(maxsize=32)
def parse_injector(values: str | None, config: str | None, where: str) -> Injector:
    """The two keys of an ``istio-sidecar-injector`` ConfigMap (None: the key is missing),
    parsed once per distinct text."""
    warnings: list[str] = []
    doc = _document(values, f"{where} key {VALUES_KEY}", warnings) if values is not None else None
    parsed = _document(config, f"{where} key {CONFIG_KEY}", warnings) if config is not None else None
    conf = _config(parsed, f"{where} key {CONFIG_KEY}", warnings) if parsed is not None else InjectorConfig()
    return Injector(doc or {}, conf, tuple(warnings), has_values=doc is not None)


class Values:
    """Typed reads of the values, each checked: a value of the wrong type is named in a
    warning and the default taken."""

    def __init__(self, values: Mapping[str, Any], where: str) -> None:
        self._values = values
        self._where = where
        self.warnings: list[str] = []

    def raw(self, path: str) -> Any:
        return dotted(self._values, path)

    def _wrong(self, path: str, found: object, want: str) -> None:
        text = f"{self._where} {path} {found!r} is not applied: expected {want}"
        if text not in self.warnings:  # a value read twice is named once
            self.warnings.append(text)

    def text(self, path: str, default: str) -> str:
        """A string; numbers are taken as written (a chart's ``tag: 1.28`` is a YAML number)."""
        found = self.raw(path)
        if found is None or found == "":
            return default
        if isinstance(found, bool) or not isinstance(found, str | int | float):
            self._wrong(path, found, "a string")
            return default
        return str(found)

    def flag(self, path: str, default: bool = False) -> bool:
        found = self.raw(path)
        if found is None or found == "":
            return default
        if isinstance(found, bool):
            return found
        if isinstance(found, str) and found.lower() in ("true", "false"):
            return found.lower() == "true"
        self._wrong(path, found, "true or false")
        return default

    def number(self, path: str, default: int) -> int:
        found = self.raw(path)
        if found is None or found == "":
            return default
        if isinstance(found, bool):
            self._wrong(path, found, "a number")
            return default
        if isinstance(found, int):
            return found
        if isinstance(found, float) and found.is_integer():
            return int(found)
        if isinstance(found, str) and re.fullmatch(r"\d+", found.strip()):
            return int(found)
        self._wrong(path, found, "a number")
        return default

    def mapping(self, path: str) -> Mapping[str, Any] | None:
        found = self.raw(path)
        if found is None:
            return None
        if not isinstance(found, Mapping):
            self._wrong(path, found, "an object")
            return None
        return found
