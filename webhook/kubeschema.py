"""A workload manifest checked against the Kubernetes API schema, as ``kubectl`` checks it.

The offline verbs read manifests no API server has decoded, so a typo (``containres:``) or
a wrong type (``containers: "nope"``) would otherwise be injected and reported as meshed.
Each workload document (Pod, Deployment, StatefulSet, DaemonSet, ReplicaSet, Job, CronJob,
ReplicationController) is walked against the schema of its kind:

- a field the schema does not know is a **warning** (``unknown field "spec.containres"``),
  as the API server's field validation warns;
- a value of the wrong type, a ``null`` where none is allowed and a missing required field
  are **errors** naming the path; the document is then left as it is.

``status`` is not checked: the API server drops it from a new object, and admission never
reads it.

The schema is ``webhook/data/workload-schema.json``: the definitions reachable from those
kinds, compacted from the Kubernetes OpenAPI (JSON Schema) definitions of the release it
names. ``python -m webhook.kubeschema DEFINITIONS.json RELEASE`` writes it again from
a ``_definitions.json`` of the ``kubernetes-validate`` package (a test checks it is current).

Manifests of an API version the schema does not have (``extensions/v1beta1``, OpenShift's
``DeploymentConfig``) have their pod template checked, the part admission reads.
"""

from __future__ import annotations

import datetime
import itertools
import json
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Any

from webhook import quantity

# the kinds whose pod template admission reads: (apiVersion, kind) -> definition name
_ROOTS = (
    "io.k8s.api.core.v1.Pod",
    "io.k8s.api.core.v1.ReplicationController",
    "io.k8s.api.apps.v1.Deployment",
    "io.k8s.api.apps.v1.StatefulSet",
    "io.k8s.api.apps.v1.DaemonSet",
    "io.k8s.api.apps.v1.ReplicaSet",
    "io.k8s.api.batch.v1.Job",
    "io.k8s.api.batch.v1.CronJob",
)
TEMPLATE = "io.k8s.api.core.v1.PodTemplateSpec"
QUANTITY = "io.k8s.apimachinery.pkg.api.resource.Quantity"
MAX_FINDINGS = 20  # per document: enough to fix a file, not a screenful per typo

_JSON_TYPES = {
    "string": "a string",
    "integer": "an integer",
    "number": "a number",
    "boolean": "a boolean",
    "object": "an object",
    "array": "an array",
    "null": "null",
}


@dataclass(frozen=True)
class Findings:
    errors: tuple[str, ...] = ()
    warnings: tuple[str, ...] = ()


@cache
def _schema() -> dict[str, Any]:
    text = resources.files("webhook").joinpath("data/workload-schema.json").read_text("utf-8")
    schema: dict[str, Any] = json.loads(text)
    return schema


def schema_release() -> str:
    """The Kubernetes release whose API schema the manifests are checked against."""
    return str(_schema()["release"])


def root_for(api_version: str, kind: str) -> str | None:
    """The definition a document of this apiVersion and kind is checked against, if any."""
    found = _schema()["kinds"].get(f"{api_version} {kind}")
    return str(found) if found is not None else None


def check(value: Any, definition: str, path: str = "") -> Findings:
    """``value`` walked against ``definition``; paths are written from ``path`` down."""
    errors: list[str] = []
    warnings: list[str] = []
    if isinstance(value, dict) and "status" in value:
        # the API server drops a new object's status (it is the controllers' to write), and
        # admission never reads it: a manifest saved from `kubectl get -o yaml` is fine
        value = {k: v for k, v in value.items() if k != "status"}
    _walk(value, {"ref": definition}, path, errors, warnings, _schema()["definitions"])
    return Findings(tuple(errors[:MAX_FINDINGS]), tuple(warnings[:MAX_FINDINGS]))


def _type_of(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str | datetime.date):  # YAML reads an unquoted timestamp as a date
        return "string"
    if isinstance(value, dict):
        return "object"
    if isinstance(value, list):
        return "array"
    return type(value).__name__


def _fits(actual: str, allowed: list[str]) -> bool:
    return actual in allowed or (actual == "integer" and "number" in allowed)


def _expected(allowed: list[str]) -> str:
    names = [_JSON_TYPES.get(t, t) for t in allowed if t != "null"]
    return " or ".join(names) or "null"


def _walk(
    value: Any,
    spec: dict[str, Any],
    path: str,
    errors: list[str],
    warnings: list[str],
    definitions: dict[str, Any],
) -> None:
    if len(errors) >= MAX_FINDINGS and len(warnings) >= MAX_FINDINGS:
        return
    ref = spec.get("ref")
    if ref is not None:
        spec = definitions[ref]
    actual = _type_of(value)
    allowed: list[str] = spec["type"]
    if not _fits(actual, allowed):
        errors.append(f"{path or '.'}: expected {_expected(allowed)}, got {_article(_shown(actual, value))}")
        return
    if spec.get("format") == "quantity" and not quantity.decodes(value):
        got = _article(_shown(actual, value))
        errors.append(f"{path}: expected a quantity such as 250m or 1Gi, got {got}")
        return
    if actual == "object":
        properties = spec.get("properties")
        if properties is not None:
            prefix = f"{path}." if path else ""
            for key, item in value.items():
                where = f"{prefix}{key}"
                if not isinstance(key, str):
                    errors.append(f"{where}: a field name must be a string, got {_type_of(key)}")
                elif key in properties:
                    _walk(item, properties[key], where, errors, warnings, definitions)
                else:
                    warnings.append(f'unknown field "{where}"')
            for key in spec.get("required", ()):
                if key not in value:
                    errors.append(f"{prefix}{key}: required field is missing")
        elif "values" in spec:
            for key, item in value.items():
                if not isinstance(key, str):
                    errors.append(f"{path}.{key}: a key must be a string, got {_type_of(key)}")
                else:
                    _walk(item, spec["values"], f"{path}.{key}", errors, warnings, definitions)
    elif actual == "array" and "items" in spec:
        for i, item in enumerate(value):
            _walk(item, spec["items"], f"{path}[{i}]", errors, warnings, definitions)


# --- a part of the schema, for the paths a reader reads ---------------------------------


def subset(definition: str, paths: Iterable[str]) -> dict[str, Any]:
    """The part of ``definition``'s schema that ``paths`` reach: each a dotted path of
    fields, ``[]`` for an array's items and ``{}`` for a map's values
    (``spec.containers[].ports[].containerPort``, ``metadata.labels{}``). The types are
    the Kubernetes API's; what ``paths`` do not name is not part of it."""
    definitions = _schema()["definitions"]

    def resolved(spec: dict[str, Any]) -> dict[str, Any]:
        return definitions[spec["ref"]] if "ref" in spec else spec

    root: dict[str, Any] = {"type": resolved({"ref": definition})["type"]}
    for path in paths:
        schema, node = resolved({"ref": definition}), root
        for step in _steps(path):
            if step in ("[]", "{}"):
                key = "items" if step == "[]" else "values"
                schema = resolved(schema[key])
                node = node.setdefault(key, {"type": schema["type"]})
            else:
                schema = resolved(schema["properties"][step])
                node = node.setdefault("properties", {}).setdefault(step, {"type": schema["type"]})
    return root


def _steps(path: str) -> list[str]:
    steps: list[str] = []
    for part in path.split("."):
        name = part.replace("[]", "").replace("{}", "")
        if name:
            steps.append(name)
        steps += [part[i : i + 2] for i in range(len(name), len(part), 2)]
    return steps


_PYTHON_TYPES: dict[str, tuple[type, ...]] = {
    "string": (str,),
    "integer": (int,),
    "number": (int, float),
    "boolean": (bool,),
    "object": (dict,),
    "array": (list,),
    "null": (type(None),),
}


# A part of the schema compiled for ``first_wrong_type``: a function of a value that returns
# (the value of a wrong type, where it is below the value, the JSON types allowed there), or
# None. It is written as Python source from the part (one ``if`` per field, one loop per
# list or map, no call per object), since it runs on every review ``serve`` answers: walking
# the part as data cost four times as much.
Checker = Callable[[Any], "tuple[Any, str, tuple[str, ...]] | None"]


def compiled(spec: dict[str, Any]) -> Checker:
    """A checker of ``spec`` (from ``subset``). Types are compared by identity (a JSON value
    decoded by orjson or json is of exactly these types; a bool is not an integer); null
    is read as absent, as the API server decodes it."""
    lines: list[str] = ["def check(v0):"]
    consts: dict[str, Any] = {}
    names = itertools.count(1)

    def types_of(part: dict[str, Any]) -> str:
        n = next(names)
        consts[f"T{n}"] = frozenset({type(None), *(t for name in part["type"] for t in _PYTHON_TYPES[name])})
        consts[f"A{n}"] = tuple(part["type"])
        return str(n)

    def fail(var: str, n: str, where: str) -> str:
        return f"return {var}, f{where!r}, A{n}"

    def emit(var: str, part: dict[str, Any], where: str, pad: str) -> None:
        n = types_of(part)
        lines.append(f"{pad}if type({var}) not in T{n}: {fail(var, n, where)}")
        fields, inner = part.get("properties") or {}, part.get("values") or part.get("items")
        if not fields and inner is None:
            return
        lines.append(f"{pad}if {var} is not None:")
        pad += "    "
        for key, sub in fields.items():
            v = f"v{next(names)}"
            lines.append(f"{pad}{v} = {var}.get({key!r})")
            lines.append(f"{pad}if {v} is not None:")
            emit(v, sub, f"{where}.{key}", pad + "    ")
        if inner is None:
            return
        i, v = f"i{next(names)}", f"v{next(names)}"
        if "properties" not in inner and "values" not in inner and "items" not in inner:
            m = types_of(inner)  # entries are scalars: typed at once, searched only when wrong
            entries = f"{var}.values()" if "values" in part else var
            lines.append(f"{pad}if not set(map(type, {entries})) <= T{m}:")
            pad += "    "
        pairs = f"{var}.items()" if "values" in part else f"enumerate({var})"
        lines.append(f"{pad}for {i}, {v} in {pairs}:")
        emit(v, inner, where + (f".{{{i}}}" if "values" in part else f"[{{{i}}}]"), pad + "    ")

    emit("v0", spec, "", "    ")
    lines.append("    return None")
    namespace: dict[str, Any] = dict(consts)
    exec(compile("\n".join(lines), "<kubeschema checker>", "exec"), namespace)
    checker: Checker = namespace["check"]
    return checker


def first_wrong_type(value: Any, checker: Checker, path: str) -> str | None:
    """Where ``value`` has a type the part ``checker`` was compiled from does not allow,
    as a finding (``request.object.spec.containers[0].ports: expected an array, got a string
    ("80")``); None when it has none."""
    wrong = checker(value)
    if wrong is None:
        return None
    found, where, allowed = wrong
    got = _article(_shown(_type_of(found), found))
    return f"{path}{where}: expected {_expected(list(allowed))}, got {got}"


def _shown(actual: str, value: Any) -> str:
    shown = (
        f"{actual} ({json.dumps(value, default=str)})"
        if actual in ("string", "integer", "number", "boolean")
        else actual
    )
    return shown[:77] + "...)" if len(shown) > 80 else shown


def _article(shown: str) -> str:
    return ("an " if shown[0] in "aeio" else "a ") + shown if shown != "null" else shown


# --- building the compact schema from the Kubernetes definitions ------------------------


def _types(raw: Any) -> list[str]:
    return [raw] if isinstance(raw, str) else list(raw or [])


def _compact(prop: dict[str, Any], defs: dict[str, Any], todo: list[str]) -> dict[str, Any]:
    if "$ref" in prop:
        name = prop["$ref"].rsplit("/", 1)[-1]
        target = defs[name]
        if "properties" in target:
            todo.append(name)
            return {"ref": name}
        leaf = _compact(target, defs, todo)  # Time, FieldsV1, Quantity, IntOrString: a leaf
        if name == QUANTITY:
            leaf["format"] = "quantity"  # its text is checked too: the JSON schema does not
        return leaf
    if "oneOf" in prop:
        # a value fits exactly one choice: null, allowed by both of IntOrString's, fits none
        choices = [_types(choice.get("type")) for choice in prop["oneOf"]]
        allowed = [t for t in _JSON_TYPES if sum(1 for c in choices if _fits(t, c)) == 1]
        return {"type": allowed}
    out: dict[str, Any] = {"type": _types(prop.get("type"))}
    if "items" in prop:
        out["items"] = _compact(prop["items"], defs, todo)
    if isinstance(prop.get("additionalProperties"), dict) and "properties" not in prop:
        out["values"] = _compact(prop["additionalProperties"], defs, todo)
    return out


def build(definitions: dict[str, Any], release: str) -> dict[str, Any]:
    """The compact schema for the workload kinds, from a Kubernetes ``_definitions.json``."""
    defs = definitions["$defs"] if "$defs" in definitions else definitions["definitions"]
    kinds: dict[str, str] = {}
    compact: dict[str, Any] = {}
    todo = [*_ROOTS, TEMPLATE]
    for root in _ROOTS:
        for gvk in defs[root].get("x-kubernetes-group-version-kind", ()):
            api = f"{gvk['group']}/{gvk['version']}" if gvk["group"] else gvk["version"]
            kinds[f"{api} {gvk['kind']}"] = root
    while todo:
        name = todo.pop()
        if name in compact:
            continue
        raw = defs[name]
        entry: dict[str, Any] = {"type": _types(raw.get("type")) or ["object"], "properties": {}}
        compact[name] = entry
        for key, prop in sorted((raw.get("properties") or {}).items()):
            entry["properties"][key] = _compact(prop, defs, todo)
        if raw.get("required"):
            entry["required"] = sorted(raw["required"])
    return {
        "release": release,
        "kinds": dict(sorted(kinds.items())),
        "definitions": dict(sorted(compact.items())),
    }


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print("usage: python -m webhook.kubeschema DEFINITIONS.json RELEASE", file=sys.stderr)
        return 2
    with open(argv[0], encoding="utf-8") as f:
        definitions = json.load(f)
    print(json.dumps(build(definitions, argv[1]), indent=1, sort_keys=False))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
