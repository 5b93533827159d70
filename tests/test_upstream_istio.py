"""Field by field against Istio's own injector (``istioctl kube-inject``): the facts
recorded from its goldens (``tests/upstream/facts-istio.yaml``) compared with what we inject
for the same input (``tests/upstream/compare.py``). What remains must be exactly the
differences listed below, each with its reason (also in the README); a new one fails.
"""

from __future__ import annotations

import json

import pytest

from tests.upstream.compare import differences, facts

FACTS = facts("istio")
ISTIO = tuple(FACTS)
ISTIO_LEGACY = tuple(c for c in ISTIO if not FACTS[c]["native"])

# (case, field) -> why ours differs. Fields: "env NAME", "proxy.FIELD", "init.args",
# "annotation NAME", "label NAME", "volumes".
KNOWN: dict[tuple[str, str], str] = {
    **{
        (
            case,
            "env PROXY_CONFIG",
        ): "concurrency follows the CPU we size (and hold on legacy placement, below)"
        for case in ISTIO
    },
    **{
        (
            case,
            "proxy.lifecycle",
        ): "legacy placement holds the app until the proxy is ready (pilot-agent wait)"
        for case in ISTIO_LEGACY
    },
    **{
        (case, "proxy.securityContext"): "every container we add runs with RuntimeDefault seccomp"
        for case in ISTIO
    },
}


@pytest.mark.parametrize("case", sorted(FACTS))
def test_every_field_is_as_istio_s_own_injector_writes_it(case: str) -> None:
    found = differences(case, FACTS[case])
    expected = {field for (c, field) in KNOWN if c == case}
    unexplained = {k: v for k, v in found.items() if k not in expected}
    assert not unexplained, json.dumps(unexplained, indent=1, default=str)[:3000]
    gone = expected - set(found)
    assert not gone, f"listed as different but now the same (take them off KNOWN and the README): {gone}"


def test_the_facts_are_istio_s_goldens_of_features_we_support() -> None:
    """Each case names where its facts come from, and the proxy and init containers there."""
    for case, f in FACTS.items():
        assert f["source"].startswith("istio/istio 1.23.2:"), case
        assert f["proxy"]["env"], case
        assert f["init"] is None or f["init"]["args"], case
