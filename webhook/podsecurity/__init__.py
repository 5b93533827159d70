"""Pod Security: which level a namespace enforces (and warns or audits at), and whether
what we add to a pod passes it.

The API server's PodSecurity admission runs after mutating webhooks: a pod we mesh is
checked with everything we added, and a violation of the enforced level means the pod is
refused and the user's workload stops scaling because of us. So what we add is checked
here first, control by control (``controls``), and a pod is never emitted in a form the
enforced level rejects.
"""

from __future__ import annotations

from webhook.podsecurity.controls import Violation, check_added
from webhook.podsecurity.levels import LEVELS, Levels, namespace_levels
from webhook.podsecurity.verdict import refusal

__all__ = ["LEVELS", "Levels", "Violation", "check_added", "namespace_levels", "refusal"]
