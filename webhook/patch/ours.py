"""What any injection of ours may write on a pod, from every registered flavour and mode.

Re-injection takes off only such items (``webhook.patch.inject.strip``).
"""

from __future__ import annotations

from dataclasses import dataclass

from webhook.dataplane import FLAVOURS
from webhook.modes import MARKS


@dataclass(frozen=True, slots=True)
class Ours:
    """What any of our injections may add: only such items, listed in the status and still
    as the status's fingerprint says we wrote them, are taken off again. On a CREATE the
    status annotation is user input; a forged or stale one never removes or changes the
    user's own containers, volumes, labels, annotations or probes."""

    containers: frozenset[str]
    volumes: frozenset[str]
    marks: frozenset[str]
    mark_prefixes: tuple[str, ...]
    # what may be added to the pod's own containers' lists: (list, item name)
    appends: frozenset[tuple[str, str]] = frozenset()

    def mark(self, name: str) -> bool:
        return name in self.marks or name.startswith(self.mark_prefixes)


# what any injection of ours may have added: re-injection takes off only that
OURS = Ours(
    containers=frozenset(name for f in FLAVOURS.values() for name in f.containers),
    volumes=frozenset(v["name"] for f in FLAVOURS.values() for v in f.volumes),
    marks=frozenset(mark for f in FLAVOURS.values() for mark in f.marks) | MARKS,
    mark_prefixes=tuple(prefix for f in FLAVOURS.values() for prefix in f.mark_prefixes),
    appends=frozenset(item for f in FLAVOURS.values() for item in f.appends),
)
