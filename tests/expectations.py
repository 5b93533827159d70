"""The hand-written expectations of a golden case (``expect`` in its ``case.yaml``), checked
against what a user of the webhook sees: the mutated pod and the AdmissionResponse warnings.

They are written from the case's intent (its name, its input and the README's rules), not
from the product's output, and they hold the decision and what the control planes read:
the mode (the interception label node agents select on), its reason, the skip and its
reason, the placement, the proxy's resources and their source, the init container's skip
ports, the exclusion annotations Merbridge and the meshes' CNI plugins read, the
RuntimeClass. So rewriting every ``expected.yaml`` (``UPDATE_GOLDEN=1``) cannot change what
is asserted; and the same check runs on the answers of the HTTPS server
(``tests/test_server.py``), where the decision's own codes are not visible, by passing no
outcome.

Names here (containers, annotations, labels) are the products' public interface, written
out rather than imported from the code under test.
"""

from __future__ import annotations

import json
import re
from typing import Any

# what each flavour adds: its proxy, the init container that installs its rules, the
# proxy's uid, and how the init container is told the skipped ports
FLAVOUR = {
    "linkerd": {"proxy": "linkerd-proxy", "init": "linkerd-init", "uid": 2102},
    "istio": {"proxy": "istio-proxy", "init": "istio-init", "uid": 1337},
    "generic": {"proxy": "mesh-proxy", "init": "mesh-init", "uid": 2102},
}
# the ports each flavour's init container sends traffic to, and the uid it exempts
REDIRECT = {
    "linkerd": {"--incoming-proxy-port": "4143", "--outgoing-proxy-port": "4140", "--proxy-uid": "2102"},
    "istio": {"-p": "15001", "-z": "15006", "-u": "1337"},
}
GENERIC_REDIRECT = ("--to-ports 4143", "--to-ports 4140", "--uid-owner 2102")

ANN_STATUS = "mesh-injector.io/status"
ANN_SKIP = "mesh-injector.io/skip-reason"
ANN_SOURCE = "mesh-injector.io/proxy-resources-source"
LABEL_MODE = "mesh-injector.io/interception"
# annotations a control plane reads on the pod to know what bypasses the proxy: Merbridge
# (traffic.sidecar.istio.io/*, sidecar.istio.io/status for its CNI plugin), Istio's and
# Linkerd's CNI plugins and proxies
CONTROL_PLANE_ANNOTATIONS = (
    "traffic.sidecar.istio.io/excludeInboundPorts",
    "traffic.sidecar.istio.io/excludeOutboundPorts",
    "traffic.sidecar.istio.io/excludeOutboundIPRanges",
    "traffic.sidecar.istio.io/includeInboundPorts",
    "traffic.sidecar.istio.io/includeOutboundPorts",
    "traffic.sidecar.istio.io/includeOutboundIPRanges",
    "sidecar.istio.io/status",
    "sidecar.istio.io/interceptionMode",
    "config.linkerd.io/skip-inbound-ports",
    "config.linkerd.io/skip-outbound-ports",
    "config.linkerd.io/skip-subnets",
    "config.linkerd.io/opaque-ports",
)
PRESENT = "(present)"  # an annotation value that is there, whatever it holds

CASE_KEYS = {"description", "now", "cluster", "serverVersion", "kernel", "expect"}
ALWAYS = {"injected", "warnings"}
SKIPPED = {"skip", "skip_annotated"}
SKIPPED_OPTIONAL = {"skip_contains"}  # texts the skip-reason annotation holds
INJECTED = {"mode", "reason", "native", "init", "firewall", "source", "resources", "annotations"}
OPTIONAL = {
    "runtime_class",  # required in microvm mode; elsewhere the pod's own stays as it was
    "init_skip",  # required where the flavour's init container is added
    "init_flags",  # more of the init container's arguments: {flag: value}
    "labels",  # more of the pod's labels: {key: value, or null for absent}
    "unchanged",  # the answer is no patch at all (a second admission)
    "firewall_reason",  # why that backend (the explanation's firewall line)
    "decision_contains",  # texts the decision annotation holds
    "protocol",
    "eligible",
    "init_order",
    "first_container",
    "init_name",
    "managed_fields_untouched",
    "proxies",
    "init_args",  # the init container's whole argument list (of init_name where given)
    "rules_contain",  # lines of the generic mesh-init's iptables ruleset
}
KNOWN = ALWAYS | SKIPPED | SKIPPED_OPTIONAL | INJECTED | OPTIONAL


def check_case_file(meta: dict[str, Any]) -> None:
    """A key nobody reads is an error, and the decision is always written down."""
    unknown = set(meta) - CASE_KEYS
    assert not unknown, f"case.yaml: unknown keys {sorted(unknown)} (known: {sorted(CASE_KEYS)})"
    exp = meta.get("expect") or {}
    unknown = set(exp) - KNOWN
    assert not unknown, f"case.yaml expect: unknown keys {sorted(unknown)} (known: {sorted(KNOWN)})"
    need = ALWAYS | (INJECTED if exp.get("injected") else SKIPPED)
    if exp.get("mode") == "microvm":
        need = need | {"runtime_class"}
    if exp.get("injected") and exp.get("init"):
        need = need | {"init_skip"}
    missing = need - set(exp)
    assert not missing, f"case.yaml expect: missing {sorted(missing)}"
    if exp.get("injected"):
        stray = (SKIPPED | SKIPPED_OPTIONAL) & set(exp)
        assert not stray, f"case.yaml expect: {sorted(stray)} describe a skipped pod"
    else:
        stray = (INJECTED | OPTIONAL) & set(exp)
        assert not stray, f"case.yaml expect: {sorted(stray)} describe an injected pod"


def names(spec: dict[str, Any], key: str) -> list[str]:
    return [c["name"] for c in spec.get(key) or []]


def container(pod: dict[str, Any], name: str) -> dict[str, Any] | None:
    for key in ("initContainers", "containers"):
        for c in pod["spec"].get(key) or []:
            if c["name"] == name:
                return c
    return None


def _after(args: list[str], flag: str) -> str | None:
    return args[args.index(flag) + 1] if flag in args else None


def init_skip(pod: dict[str, Any], flavour: str) -> dict[str, str | None]:
    """The ports (as ``a,b,c-d``) and the IP ranges the flavour's init container lets bypass
    the proxy (None: none)."""
    init = container(pod, FLAVOUR[flavour]["init"])
    assert init is not None
    if flavour == "linkerd":
        args = init["args"]
        for flag, value in REDIRECT["linkerd"].items():
            assert _after(args, flag) == value, (flag, args)
        return {
            "inbound": _after(args, "--inbound-ports-to-ignore"),
            "outbound": _after(args, "--outbound-ports-to-ignore"),
            "subnets": _after(args, "--subnets-to-ignore"),
        }
    if flavour == "istio":
        args = init["args"]
        for flag, value in REDIRECT["istio"].items():
            assert _after(args, flag) == value, (flag, args)
        inbound, outbound = _after(args, "-d"), _after(args, "-o")
        return {
            "inbound": inbound.replace(":", "-") if inbound else None,
            "outbound": outbound.replace(":", "-") if outbound else None,
            "subnets": _after(args, "-x") or None,
        }
    rules = next(e["value"] for e in init["env"] if e["name"] == "MESH_IPTABLES_RULES")
    for needle in GENERIC_REDIRECT:
        assert needle in rules, needle

    def ports(chain: str) -> str | None:
        found = re.findall(rf"^-A {chain} -p tcp --dport (\S+) -j RETURN$", rules, re.M)
        return ",".join(p.replace(":", "-") for p in found) or None

    # skipped subnets are sources of inbound traffic; an outbound range is a destination
    ranges = re.findall(r"^-A MESH_INBOUND -s (\S+) -j RETURN$", rules, re.M)
    ranges += re.findall(r"^-A MESH_OUTBOUND -d (\S+) -j RETURN$", rules, re.M)
    return {
        "inbound": ports("MESH_INBOUND"),
        "outbound": ports("MESH_OUTBOUND"),
        "subnets": ",".join(r for r in ranges if r != "127.0.0.0/8") or None,
    }


def _annotations(obj: dict[str, Any]) -> dict[str, str]:
    return (obj.get("metadata") or {}).get("annotations") or {}


def check(
    meta: dict[str, Any],
    flavour: str,
    original: Any,
    pod: Any,
    warnings: list[str],
    outcome: Any = None,
) -> None:
    """``pod`` and ``warnings`` are what the webhook answered for ``original``; ``outcome``
    (the core's return value) adds the decision's own codes where it is at hand."""
    check_case_file(meta)
    exp = meta["expect"]
    assert len(warnings) == len(exp["warnings"]), warnings
    for said, needles in zip(warnings, exp["warnings"], strict=True):
        for needle in [needles] if isinstance(needles, str) else needles:
            assert needle in said, (needle, said)
    if outcome is not None:
        assert outcome.injected is exp["injected"], outcome.explanation
    if not exp["injected"]:
        _check_skipped(exp, original, pod, warnings, outcome)
    else:
        _check_injected(exp, flavour, original, pod, outcome)


def _check_skipped(exp: dict[str, Any], original: Any, pod: Any, warnings: list[str], outcome: Any) -> None:
    if outcome is not None:
        assert outcome.skip is not None and outcome.skip.value == exp["skip"], outcome.explanation
    if not exp["skip_annotated"]:
        assert pod == original, "a skipped pod nobody asked to mesh is returned untouched"
        return
    # asked for but not meshed: the reason on the pod and a warning, nothing else changed
    annotations = dict(_annotations(pod))
    reason = annotations.pop(ANN_SKIP)
    for text in exp.get("skip_contains") or ():
        assert text in reason, (text, reason)
    assert any("not meshed" in w for w in warnings), warnings
    bare = json.loads(json.dumps(pod))
    if annotations or _annotations(original):
        bare["metadata"]["annotations"] = annotations
    else:
        del bare["metadata"]["annotations"]
    assert bare == original, "nothing but the skip reason is written on a skipped pod"


def _check_injected(exp: dict[str, Any], flavour: str, original: Any, pod: Any, outcome: Any) -> None:
    names_of = FLAVOUR[flavour]
    spec, meta = pod["spec"], pod["metadata"]
    annotations = meta.get("annotations") or {}
    status = json.loads(annotations[ANN_STATUS])
    assert status["flavour"] == flavour
    # the mode: on the pod for node agents, in our status, and the decision's reason
    assert meta["labels"][LABEL_MODE] == exp["mode"] and status["mode"] == exp["mode"]
    if outcome is not None:
        assert outcome.mode is not None and outcome.mode.value == exp["mode"], outcome.explanation
        assert outcome.mode_reason is not None and outcome.mode_reason.value == exp["reason"], (
            outcome.explanation
        )
    # placement
    proxy = container(pod, names_of["proxy"])
    assert proxy is not None
    native = names_of["proxy"] in names(spec, "initContainers")
    assert native is exp["native"] and status["nativeSidecar"] is native
    assert native is (proxy.get("restartPolicy") == "Always")
    if flavour != "istio":  # Istio's proxy has a startup probe in both placements
        assert native is ("startupProbe" in proxy)
    # one proxy: never a second one, nor an earlier injection's left behind
    everything = names(spec, "containers") + names(spec, "initContainers")
    assert sum(everything.count(f["proxy"]) for f in FLAVOUR.values()) == exp.get("proxies", 1), everything
    # the proxy runs as its own user, unprivileged, in every mode
    sc = proxy["securityContext"]
    assert sc["runAsUser"] == names_of["uid"] and sc["runAsNonRoot"] and sc["readOnlyRootFilesystem"]
    assert sc["capabilities"] == {"drop": ["ALL"]} and not sc["allowPrivilegeEscalation"]
    # the rules: the flavour's init container, where it goes and what it lets bypass
    has_init = names_of["init"] in names(spec, "initContainers")
    assert has_init is exp["init"]
    if exp["mode"] == "ebpf":  # Merbridge redirects: no rules of the mesh's own, no native sidecar
        assert not has_init and not native
    if exp["mode"] == "microvm":  # the rules are installed inside the sandbox
        assert has_init
    if has_init:
        assert init_skip(pod, flavour) == exp["init_skip"]
    # the backend the rules are installed with (None: nothing of ours installs rules): in our
    # status, on the outcome, and in the iptables-restore mesh-init runs
    assert status.get("firewall") == exp["firewall"], status.get("firewall")
    if outcome is not None:
        assert outcome.firewall == exp["firewall"], outcome.explanation
        if "firewall_reason" in exp:
            line = f"firewall: {exp['firewall']} ({exp['firewall_reason']}):"
            assert any(e.startswith(line) for e in outcome.explanation), outcome.explanation
    if exp["firewall"] is None:
        assert not has_init
    elif flavour == "generic":
        init = container(pod, names_of["init"])
        assert init is not None and f"| iptables-{exp['firewall']}-restore --noflush" in init["command"][-1]
    elif flavour == "linkerd":  # proxy-init runs iptables-legacy unless told another binary
        told = _after(container(pod, names_of["init"])["args"], "--firewall-bin-path")
        assert told in (
            (None, "iptables-legacy") if exp["firewall"] == "legacy" else (f"iptables-{exp['firewall']}",)
        )
    for text in exp.get("decision_contains") or ():
        assert text in annotations["mesh-injector.io/decision"], text
    for flag, value in (exp.get("init_flags") or {}).items():
        args = container(pod, names_of["init"])["args"]
        assert _after(args, flag) == value, (flag, args)
    if "runtime_class" in exp:
        assert spec.get("runtimeClassName") == exp["runtime_class"]
    else:
        assert spec.get("runtimeClassName") == (original.get("spec") or {}).get("runtimeClassName")
    # what the control planes read of the pod's exclusions: every one of those annotations
    # that the answer sets or changes is written in the case (with any other it names)
    before = _annotations(original)
    changed = {k for k in CONTROL_PLANE_ANNOTATIONS if annotations.get(k) != before.get(k)}
    assert changed <= set(exp["annotations"]), f"control-plane annotations not in expect: {changed}"
    for key, want in exp["annotations"].items():
        if want == PRESENT:
            assert key in annotations, key
        else:
            assert annotations.get(key) == want, (key, annotations.get(key))
    for key, want in (exp.get("labels") or {}).items():
        assert (meta.get("labels") or {}).get(key) == want, (key, meta.get("labels"))
    if exp.get("unchanged"):
        assert pod == original, "admitted again, the pod is answered with no patch"
    # resources and where they came from
    assert annotations[ANN_SOURCE] == exp["source"]
    assert proxy.get("resources", {}) == exp["resources"]
    if outcome is not None:
        if "protocol" in exp:
            assert any(
                line.startswith(f"workload: protocol {exp['protocol']} ") for line in outcome.explanation
            )
        if "eligible" in exp:
            assert any(
                line.startswith(f"eligible nodes: {exp['eligible']} of") for line in outcome.explanation
            )
    if "protocol" in exp and flavour == "generic":
        env = {e["name"]: e.get("value") for e in proxy["env"]}
        assert env["MESH_PROXY_PROTOCOL_HINT"] == exp["protocol"]
    if "init_order" in exp:
        inits = names(spec, "initContainers")
        assert inits[-len(exp["init_order"]) :] == exp["init_order"] or inits == exp["init_order"]
        ours = [n for n in inits if n != names_of["proxy"]]
        assert ours == [n for n in exp["init_order"] if n != names_of["proxy"]]
    if "first_container" in exp:
        assert names(spec, "containers")[0] == exp["first_container"]
    if "init_name" in exp:
        assert exp["init_name"] in names(spec, "initContainers")
    if "init_args" in exp:
        init = container(pod, exp.get("init_name", names_of["init"]))
        assert init is not None and init["args"] == exp["init_args"], init
    if "rules_contain" in exp:
        init = container(pod, FLAVOUR["generic"]["init"])
        assert init is not None
        rules = next(e["value"] for e in init["env"] if e["name"] == "MESH_IPTABLES_RULES").splitlines()
        for line in exp["rules_contain"]:
            assert line in rules, (line, rules)
    if exp.get("managed_fields_untouched"):
        assert meta["managedFields"] == original["metadata"]["managedFields"]
    # the user's containers are untouched, but for the items the status lists as added to
    # them (Istio's proxyless gRPC appends to the app's env and mounts)
    ours = set(status["containers"] + status["initContainers"])
    appended = status.get("appended", {})
    mine = {
        c["name"]: c
        for c in (original["spec"].get("containers") or []) + (original["spec"].get("initContainers") or [])
    }
    for c in (spec.get("containers") or []) + (spec.get("initContainers") or []):
        if c["name"] in mine and c["name"] not in ours:
            added = appended.get(c["name"], {})
            kept = {k: [x for x in c[k] if x["name"] not in added[k]] or None for k in added}
            before = mine[c["name"]]
            assert {**c, **kept} == {**before, **{k: before.get(k) for k in added}}, c["name"]
