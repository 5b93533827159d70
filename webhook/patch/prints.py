"""Fingerprints of what an injection adds: how the status annotation knows each item again.

A fingerprint is the sha256 of the item's canonical JSON (``orjson``, sorted keys) without
the fields the API server fills in with defaults and without the proxy's resources (a
VerticalPodAutoscaler's admission controller, run after us, may set them), and without the
values of environment variables that name the workload (a template's pods share one
rendering, decided once with a stand-in name). So an item is known again after the API
server stored it, and for every workload of a template.

Every meshed pod needs the fingerprints of everything added to it, and what is added is
mostly the flavour's fixed parts: the same volumes, the same init container, the same
forty-odd variables of the proxy. So the canonical text is built from parts kept by their
own JSON (``orjson`` writes it far faster than Python can walk the item): a part seen
before, in any pod, costs one serialisation and a lookup. The text is the one the walk of
``canonical`` gives, byte for byte (``tests/test_units.py`` compares the two on generated
items).
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from typing import Any

import orjson

from webhook.dataplane import NAMED_ENV

# Fields the API server fills in with defaults when it stores a pod: an item we rendered
# without them is still ours when it comes back with them.
DEFAULTED = frozenset(
    {
        "terminationMessagePath",
        "terminationMessagePolicy",
        "imagePullPolicy",
        "protocol",
        "timeoutSeconds",
        "periodSeconds",
        "successThreshold",
        "failureThreshold",
        "scheme",
        "apiVersion",
        "defaultMode",
        "divisor",
    }
)
# Not in a fingerprint: what the API server defaults, and the resources (a
# VerticalPodAutoscaler's admission controller, run after us, may set the proxy's).
UNPRINTED = DEFAULTED | {"resources"}
# What a label or annotation value that names the workload is recorded as.
WORKLOAD = "\x00workload"


def canonical(node: object) -> object:
    """``node`` without ``UNPRINTED`` fields and without the values of environment
    variables that name the workload."""
    if isinstance(node, dict):
        if node.get("name") in NAMED_ENV and "value" in node:
            return {k: v for k, v in node.items() if k != "value"}
        return {k: canonical(v) for k, v in node.items() if k not in UNPRINTED}
    if isinstance(node, list):
        return [canonical(v) for v in node]
    return node


def canonical_text(node: object) -> bytes:
    """``node``'s canonical JSON, by walking it: what ``fingerprint`` hashes."""
    return orjson.dumps(canonical(node), option=orjson.OPT_SORT_KEYS)


class _Texts:
    """Canonical texts by the JSON of what they were made of, oldest first out, bounded in
    count and bytes; a part larger than ``max_part`` is not kept."""

    def __init__(self, limit: int = 8192, max_bytes: int = 2 << 20, max_part: int = 8 << 10) -> None:
        self.limit, self.max_bytes, self.max_part = limit, max_bytes, max_part
        self.bytes = 0
        self.data: OrderedDict[bytes | str, bytes | str] = OrderedDict()

    def put(self, key: bytes | str, value: bytes | str) -> None:
        size = 2 * len(key) + len(value)
        if size > self.max_part:
            return
        data = self.data
        while data and (len(data) >= self.limit or self.bytes + size > self.max_bytes):
            try:
                old, text = data.popitem(last=False)
            except KeyError:  # emptied meanwhile by another thread
                break
            self.bytes -= 2 * len(old) + len(text)
        if key not in data:
            data[key] = value
            self.bytes += size

    def clear(self) -> None:
        self.data.clear()
        self.bytes = 0


# The canonical texts of the parts of items (a container's variables, mounts, probes,
# security context...) by their JSON, and the fingerprints of whole items and of label and
# annotation values: pure functions of it, so kept for the process (2 MiB at most each; an
# item of more than 16 KiB of JSON is not kept).
_PARTS = _Texts()
_ITEMS = _Texts(limit=1024, max_part=32 << 10)
_VALUES = _Texts()
_SCALARS = frozenset({str, int, float, bool, type(None)})


def digest(text: bytes) -> str:
    """A fingerprint of a canonical text."""
    return hashlib.sha256(text).hexdigest()[:16]


def begun(head: bytes) -> Any:
    """A fingerprint's hash with the start of its text, ``head``, taken in (``ended``)."""
    return hashlib.sha256(head)


def ended(begun: Any, *rest: bytes) -> str:
    """The fingerprint of ``begun``'s head followed by ``rest`` (``begun`` is left as it is)."""
    h = begun.copy()
    for part in rest:
        h.update(part)
    return h.hexdigest()[:16]


def _part(node: object) -> bytes:
    """The canonical text of a field's value: a scalar's JSON; a list's, from its items'; a
    mapping's, kept by its JSON."""
    kind = type(node)
    if kind is dict:
        return _kept(node)
    if kind in _SCALARS:
        return orjson.dumps(node)
    if kind is not list:
        return canonical_text(node)
    try:
        keys = list(map(orjson.dumps, node))
    except TypeError:
        return _list_part(node)
    # each item's text by its JSON (a mapping's is kept; a scalar's is its JSON), looked up
    # in one pass: what changed from pod to pod is a few items of many
    found: list[bytes | str | None] = list(map(_PARTS.data.get, keys))
    if None in found:
        for i in [i for i, text in enumerate(found) if text is None]:
            item = node[i]
            if type(item) in _SCALARS:
                found[i] = keys[i]
            elif type(item) is dict:
                found[i] = text = canonical_text(item)
                _PARTS.put(keys[i], text)
            else:
                found[i] = canonical_text(item)
    return b"[" + b",".join(found) + b"]"  # type: ignore[arg-type]


def _list_part(node: list[object]) -> bytes:
    """A list's canonical text item by item (one of them is not JSON as it is)."""
    kept = _PARTS.data.get
    texts = []
    for item in node:  # inline: a container's forty-odd variables are the common case
        if type(item) is dict:
            try:
                key = orjson.dumps(item)
            except TypeError:
                texts.append(canonical_text(item))
                continue
            text = kept(key)
            if text is None:
                text = canonical_text(item)
                _PARTS.put(key, text)
            texts.append(text)
        elif type(item) in _SCALARS:
            texts.append(orjson.dumps(item))
        else:
            texts.append(canonical_text(item))
    return b"[" + b",".join(texts) + b"]"  # type: ignore[arg-type]


def _kept(node: dict[str, object]) -> bytes:
    try:
        key = orjson.dumps(node)
    except TypeError:
        return canonical_text(node)
    text = _PARTS.data.get(key)
    if text is None:
        text = canonical_text(node)
        _PARTS.put(key, text)
    return text  # type: ignore[return-value]


def fingerprint(item: object) -> str:
    """What the status records of an added item, to know it again: the same after the API
    server has filled in its defaults, and for every workload of a template.

    The canonical text of a mapping is put together from its fields' (each mapping in them
    found by its JSON: a part seen before, in any pod, is a lookup), byte for byte the text
    of ``canonical_text``."""
    if type(item) is str:
        found = _VALUES.data.get(item)
        if found is None:
            found = digest(orjson.dumps(item))
            _VALUES.put(item, found)
        return found  # type: ignore[return-value]
    if type(item) is not dict or (item.get("name") in NAMED_ENV and "value" in item):
        return digest(canonical_text(item))
    try:
        key = orjson.dumps(item)
    except TypeError:
        return digest(canonical_text(item))  # what orjson refuses, refused the same way
    found = _ITEMS.data.get(key)
    if found is None:
        fields = [orjson.dumps(k) + b":" + _part(item[k]) for k in sorted(item) if k not in UNPRINTED]
        found = digest(b"{" + b",".join(fields) + b"}")
        _ITEMS.put(key, found)
    return found  # type: ignore[return-value]


def value_sum(value: str, named: bool) -> str:
    """The fingerprint of a label or annotation value we wrote; one that is the workload's
    name (``named``) is recorded as naming the workload (a template's pods share it)."""
    return fingerprint(WORKLOAD if named else value)


def forget() -> None:
    """Drop what is kept (for a measurement of the cost without it)."""
    _PARTS.clear()
    _ITEMS.clear()
    _VALUES.clear()
