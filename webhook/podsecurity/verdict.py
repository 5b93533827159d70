"""The verdict on a meshed pod: refused where what we added violates the namespace's
enforced level, warned about where it violates its warn or audit level."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from webhook.core import Notes
from webhook.podsecurity.controls import check_added
from webhook.podsecurity.levels import Levels
from webhook.reasons import Skip


def refusal(
    pod: Mapping[str, Any], added: Iterable[str], volumes: Iterable[str], levels: Levels, ctx: Notes
) -> str | None:
    """Why the pod with what we ``added`` (container names) and its added ``volumes`` cannot
    be emitted, or None; violations of the warn and audit levels become warnings."""
    parts = (list(added), list(volumes))
    violations = check_added(pod, *parts, levels.enforce)
    if violations:
        return f"{Skip.POD_SECURITY.text} ({levels.enforce}, {levels.source}): " + "; ".join(
            map(str, violations[:3])
        )
    for label, level in (("warn", levels.warn), ("audit", levels.audit)):
        flagged = check_added(pod, *parts, level) if level else []
        if flagged:
            ctx.warn(
                f"what is injected would violate the namespace's {label} level {level}: "
                + "; ".join(map(str, flagged[:3]))
            )
    return None
