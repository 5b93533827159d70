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
import json
import sys
from collections.abc import Iterable
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


# A part of the schema compiled for ``first_wrong_type`` (a tuple: it is read on every
# review ``serve`` answers): the Python types a value may have (``None`` always: null is
# read as absent), its JSON types, the parts of an object's fields (or None), the part of a
# map's values or of an array's items (or None), and whether those entries are scalars
# (then checked by their types at once).
Part = tuple[frozenset[type], tuple[str, ...], "dict[str, Part] | None", "Part | None", bool, bool]


def compiled(spec: dict[str, Any]) -> Part:
    """``spec`` (from ``subset``) as ``first_wrong_type`` walks it: types checked by
    identity (a JSON value decoded by orjson or json is of exactly these types; a bool is
    not taken for an integer), paths written only for a finding."""
    types = frozenset({type(None), *(t for name in spec["type"] for t in _PYTHON_TYPES[name])})
    fields = {k: compiled(v) for k, v in spec["properties"].items()} if "properties" in spec else None
    entries = spec.get("values") or spec.get("items")
    inner = compiled(entries) if entries is not None else None
    leaf = inner is not None and inner[2] is None and inner[3] is None
    return types, tuple(spec["type"]), fields, inner, "values" in spec, leaf


def first_wrong_type(value: Any, part: Part, path: str) -> str | None:
    """Where ``value`` has a type ``part`` (``compiled(subset(...))``) does not allow, as
    a finding (``request.object.spec.containers[0].ports: expected an array, got a string
    ("80")``); None when it has none. ``null`` is taken as absent, as the API server
    decodes it."""
    wrong = _wrong(value, part)
    if wrong is None:
        return None
    found, where, allowed = wrong
    got = _article(_shown(_type_of(found), found))
    return f"{path}{''.join(reversed(where))}: expected {_expected(list(allowed))}, got {got}"


def _wrong(value: Any, part: Part) -> tuple[Any, list[str], tuple[str, ...]] | None:
    """(the value of the wrong type, where it is from ``value`` down, in reverse, and the
    types allowed there), or None. Only the fields a value has are visited, scalars are
    checked in their parent's loop, and the entries of a map or array of scalars are typed
    at once."""
    types, allowed, fields, inner, is_map, leaf = part
    if type(value) not in types:
        return value, [], allowed
    if value is None:
        return None
    if fields is not None:
        for key, found in value.items():
            sub = fields.get(key)
            if sub is None:
                continue
            if sub[2] is None and sub[3] is None:  # a scalar
                if type(found) in sub[0]:
                    continue
                wrong: tuple[Any, list[str], tuple[str, ...]] | None = (found, [], sub[1])
            else:
                wrong = _wrong(found, sub)
                if wrong is None:
                    continue
            wrong[1].append(f".{key}")
            return wrong
        return None
    if inner is None:
        return None
    if leaf and set(map(type, value.values() if is_map else value)) <= inner[0]:
        return None
    for at, found in value.items() if is_map else enumerate(value):
        wrong = _wrong(found, inner)
        if wrong is not None:
            wrong[1].append(f".{at}" if is_map else f"[{at}]")
            return wrong
    return None


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
