"""What the rendering made of a pod's ports, put into a shared patch for each pod of a shape.

A template's shape (``webhook.decide.memo``) leaves out the numbers of its ports the decision
does not compare; a flavour's rendering makes of them one value (``Flavour.ports_text``:
Linkerd's ``LINKERD2_PROXY_INBOUND_PORTS``). A shape's patch holds its first pod's; each
pod gets its own put in, and the proxy's fingerprint in the status annotation made again
from the proxy's canonical text around that value (the same bytes ``fingerprint`` hashes).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import orjson

from webhook.decide.memo import Edit, holding
from webhook.outcome import Outcome
from webhook.patch.prints import begun, canonical_text, ended, fingerprint

_Path = tuple[str | int, ...]


@dataclass(frozen=True, slots=True)
class PortsIn:
    """``text``: what the first pod's ports made (``of`` makes it of a pod); ``value``: the
    path to the variable's value holding it (None where the text is empty: the variable is
    left out); ``status``: the path to the status annotation, which holds the proxy's
    fingerprint ``sum``, made of the proxy's canonical text: ``head`` has hashed what comes
    before the value, ``tail`` is what comes after it."""

    text: str
    of: Callable[[Mapping[str, Any]], str]
    value: _Path | None = None
    status: _Path = ()
    sum: str = ""
    head: Any = None  # the hash with the text before the value taken in
    tail: bytes = b""  # the text after it

    @property
    def size(self) -> int:
        """What it holds besides the patch, in bytes."""
        return len(self.tail) + 256

    def edits(self, obj: Mapping[str, Any]) -> list[Edit] | None:
        text = self.of(obj)
        if text == self.text:
            return []
        if self.value is None or not text:
            return None  # the variable would be added or left out: not an edit of a value
        new = ended(self.head, orjson.dumps(text), self.tail)
        return [(self.value, self.text, text), (self.status, self.sum, new)]


def ports_in(outcome: Outcome, obj: Mapping[str, Any], variable: str, text: bytes) -> PortsIn | bool:
    """Where ``outcome`` (decided for ``obj``; ``text``: its patch's JSON) holds what its pod's
    ports made: True where nothing rendered holds them, False where they cannot be found
    once and only once (the shape is not shared)."""
    made = outcome.ports_text
    if made is None:
        return True
    first = made(obj)
    if not first:
        return PortsIn(first, made)
    needle = orjson.dumps(first)
    if text.count(needle) != 1:
        return False
    found = _variable(outcome.patch, variable, first)
    if found is None:
        return False
    value, container = found
    total = fingerprint(container)
    status = holding(outcome.patch, total)
    canonical = canonical_text(container)
    if text.count(total.encode()) != 1 or len(status) != 1 or canonical.count(needle) != 1:
        return False
    before, after = canonical.split(needle)
    head = begun(before)
    if ended(head, needle, after) != total:
        return False  # not the text the status's fingerprint was made of
    return PortsIn(first, made, value, status[0], total, head, after)


def _variable(patch: list[dict[str, Any]], variable: str, value: str) -> tuple[_Path, dict[str, Any]] | None:
    """(the path to ``variable``'s value, the container it is in) in the containers the
    patch adds whole."""
    for i, op in enumerate(patch):
        added = op.get("value")
        items = [added] if isinstance(added, dict) else added if isinstance(added, list) else []
        for j, c in enumerate(items):
            env = c.get("env") if isinstance(c, dict) else None
            for k, e in enumerate(env if isinstance(env, list) else ()):
                if isinstance(e, dict) and e.get("name") == variable and e.get("value") == value:
                    inside: _Path = ("env", k, "value")
                    return ((i, "value", *inside) if c is added else (i, "value", j, *inside)), c
    return None

