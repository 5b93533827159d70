"""A mutation sample: how many one-line bugs the tests that need no server catch.

Each mutant is a bug a reviewer would call a bug (a comparison turned, a rule dropped, a
constant changed), written by hand over the decision's packages (``webhook/decide``,
``modes``, ``dataplane``, ``patch``, ``usage``) and found by the text it changes, not by its
line number, so the list survives edits around it: a mutant whose text is gone is reported
``stale`` (and not counted) rather than applied somewhere else. Each is applied alone to a
copy of the tree (the worktree is never changed) and the tests that need no server (no API
server, no uvicorn, no Prometheus, no Merbridge, gVisor or network namespace) are run
against it, the ones most likely to catch it first, stopping at the first failure. A mutant
is *caught* when a test fails, *survived* when every one passes; a survivor that no test can
catch (the same behaviour by another road) says why in ``equivalent`` and is listed apart.

    python -m tests.mutants                 # all of them (about 25 minutes on 2 cores)
    python -m tests.mutants -j 2            # two at a time, each in its own copy (12-28 min)
    python -m tests.mutants -k sizing       # those whose file or text matches
    python -m tests.mutants --list          # what they are, and whether each still applies

It is a sample, not a proof: it says where the tests are thin. It is not part of CI.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Mutant:
    path: str  # under webhook/
    old: str  # exact text, found exactly once
    new: str
    what: str  # the bug, in words
    equivalent: str = ""  # why no test can tell it apart, where that is so

    @property
    def package(self) -> str:
        return self.path.split("/")[0]


M = Mutant
MUTANTS: tuple[Mutant, ...] = (
    # --- decide/: which nodes, whether to mesh, placement, sizing --------------------------
    M(
        "decide/scheduling.py",
        "return value is None or value not in self.values",
        "return value is not None and value not in self.values",
        "NotIn no longer matches a node without the key",
    ),
    M(
        "decide/scheduling.py",
        "return value is not None and value in self.values",
        "return value is None or value in self.values",
        "In matches a node without the key",
    ),
    M(
        "decide/scheduling.py",
        'return have > want if op == "Gt" else have < want',
        'return have >= want if op == "Gt" else have < want',
        "Gt matches equal values",
    ),
    M(
        "decide/scheduling.py",
        'return have > want if op == "Gt" else have < want',
        'return have > want if op == "Gt" else have <= want',
        "Lt matches equal values",
    ),
    M(
        "decide/scheduling.py",
        'if op == "DoesNotExist":\n            return value is None',
        'if op == "DoesNotExist":\n            return value is not None',
        "DoesNotExist inverted",
    ),
    M(
        "decide/scheduling.py",
        "if self.effect and self.effect != taint.effect:",
        "if self.effect and self.effect == taint.effect:",
        "a toleration's effect compared the wrong way",
    ),
    M(
        "decide/scheduling.py",
        "if self.key and self.key != taint.key:",
        "if self.key != taint.key:",
        "an empty-key Exists toleration no longer tolerates everything",
    ),
    M(
        "decide/scheduling.py",
        'return self.operator == "Equal" and self.value == taint.value',
        'return self.operator == "Equal"',
        "Equal ignores the taint's value",
    ),
    M(
        "decide/scheduling.py",
        '_HARD_EFFECTS = frozenset({"NoSchedule", "NoExecute"})',
        '_HARD_EFFECTS = frozenset({"NoSchedule"})',
        "NoExecute taints no longer filter",
    ),
    M(
        "decide/scheduling.py",
        '_HARD_EFFECTS = frozenset({"NoSchedule", "NoExecute"})',
        '_HARD_EFFECTS = frozenset({"NoSchedule", "NoExecute", "PreferNoSchedule"})',
        "PreferNoSchedule filters like NoSchedule",
    ),
    M(
        "decide/scheduling.py",
        "if group.unschedulable and not cordons_tolerated:",
        "if False:",
        "cordoned nodes count",
    ),
    M(
        "decide/scheduling.py",
        "continue  # an empty or malformed term matches no node",
        "pass",
        "an empty affinity term matches every node",
    ),
    M(
        "decide/scheduling.py",
        "if terms is None or any(t.matches_labels(group.labels) for t in group_terms):",
        "if terms is None or all(t.matches_labels(group.labels) for t in group_terms):",
        "affinity terms ANDed instead of ORed",
    ),
    M(
        "decide/scheduling.py",
        "for r in self.labels:  # a plain loop: this runs once per node group per pod\n"
        "            if not r.matches(labels):\n                return False",
        "for r in self.labels:  # a plain loop: this runs once per node group per pod\n"
        "            if r.matches(labels):\n                return True",
        "a term's expressions ORed instead of ANDed",
    ),
    M(
        "decide/scheduling.py",
        "return self.matches_labels(node.labels) and all(r.matches(named) for r in self.names)",
        "return self.matches_labels(node.labels)",
        "matchFields on metadata.name ignored",
    ),
    M(
        "decide/scheduling.py",
        "if node is None:\n            return _summarize([], total",
        "if node is None:\n            return _summarize([(snapshot.groups[0], snapshot.groups[0].nodes)],"
        " total",
        "a nodeName not in the snapshot counts as the first group",
    ),
    M(
        "decide/podfacts.py",
        'if value == "disabled":\n            return False, Skip.POD_DISABLED, where',
        'if value == "disabled":\n            return True, None, where',
        "the pod's disabled is ignored",
    ),
    M(
        "decide/podfacts.py",
        'if ns_value == "enabled":',
        'if ns_value != "disabled":',
        "a namespace that says nothing counts as enabled",
    ),
    M(
        "decide/podfacts.py",
        "if policy.inject_by_default:",
        "if not policy.inject_by_default:",
        "injectByDefault inverted",
    ),
    M(
        "decide/podfacts.py",
        "if namespace in SYSTEM_NAMESPACES:",
        'if namespace == "kube-public":',
        "kube-system is meshed",
    ),
    M(
        "decide/podfacts.py",
        "if namespace == policy.injector_namespace:",
        'if namespace == "":',
        "the injector's own namespace is meshed",
    ),
    M(
        "decide/podfacts.py",
        "if policy.other_meshes.respect_opt_outs:",
        "if not policy.other_meshes.respect_opt_outs:",
        "other meshes' opt-outs honoured only when the policy says not to",
    ),
    M(
        "decide/podfacts.py",
        'if name in names:\n            return f"two {what} are named {name}"',
        'if False:\n            return f"two {what} are named {name}"',
        "two containers of one name are let through",
    ),
    M(
        "decide/podfacts.py",
        'return "tcp", "no Service or port name says otherwise"',
        'return "http", "no Service or port name says otherwise"',
        "the default protocol is http",
    ),
    M(
        "decide/gates.py",
        'if spec.get("hostNetwork") is True:',
        'if spec.get("hostNetwork") is False:',
        "hostNetwork pods are meshed",
    ),
    M(
        "decide/gates.py",
        "same = mesh.lower() == plane.name",
        "same = True",
        "every other mesh is called our own",
    ),
    M(
        "decide/gates.py",
        "used = proxy_port_used(spec, plane.ports)",
        "used = None",
        "a port the proxy needs may be taken by the app",
    ),
    M(
        "decide/traits.py",
        "high = summary.cpu_p >= policy.interception.high_throughput_cpu",
        "high = summary.cpu_p > policy.interception.high_throughput_cpu * 2",
        "high throughput only at twice the threshold",
    ),
    M(
        "decide/traits.py",
        'lifecycle = "batch" if is_batch(pod) else "service"',
        'lifecycle = "service"',
        "Jobs are never batch",
    ),
    M(
        "decide/placement.py",
        'if server < floor:\n        return False, f"the cluster is {server}, below {floor}"',
        'if server < floor and False:\n        return False, f"the cluster is {server}, below {floor}"',
        "native sidecars on clusters older than 1.29",
    ),
    M(
        "decide/placement.py",
        "if lowest < floor:",
        "if lowest < floor and False:",
        "native sidecars beside an old kubelet",
    ),
    M(
        "decide/placement.py",
        'if option == "false":\n        return False, "legacy placement requested by annotation"',
        'if option == "false":\n        return True, "legacy placement requested by annotation"',
        'native-sidecar: "false" ignored',
    ),
    M(
        "decide/placement.py",
        "if not native and batch:",
        "if native and batch:",
        "the batch warning on the wrong pods",
    ),
    M(
        "decide/sizing.py",
        "cpu_req = summary.cpu_p * (1 + s.margin)",
        "cpu_req = summary.cpu_p",
        "no margin on the CPU request",
    ),
    M(
        "decide/sizing.py",
        "mem_req = summary.memory_p * (1 + s.margin)",
        "mem_req = summary.memory_max * (1 + s.margin)",
        "memory request from the maximum",
    ),
    M(
        "decide/sizing.py",
        "mem_lim = s.limit_factor * summary.memory_max",
        "mem_lim = s.limit_factor * summary.memory_p",
        "memory limit from the percentile instead of the observed max",
    ),
    M(
        "decide/sizing.py",
        "mem_lim = max(mem_lim * s.oom_factor, mem_lim + s.oom_min_increase)",
        "mem_lim = mem_lim * s.oom_factor",
        "the OOM bump forgets +100Mi",
    ),
    M(
        "decide/sizing.py",
        "mem_lim = max(mem_lim * s.oom_factor, mem_lim + s.oom_min_increase)",
        "mem_lim = mem_lim + s.oom_min_increase",
        "the OOM bump forgets x1.2",
    ),
    M(
        "decide/sizing.py",
        "cpu_lim = s.limit_factor * summary.cpu_max if s.cpu_limits else None",
        "cpu_lim = s.limit_factor * summary.cpu_max",
        "CPU limits although the policy says none",
    ),
    M(
        "decide/sizing.py",
        "mem_lim = max(_clamp(mem_lim, s.floor.memory, s.cap.memory), mem_req)",
        "mem_lim = _clamp(mem_lim, s.floor.memory, s.cap.memory)",
        "a memory limit below its request",
    ),
    M(
        "decide/sizing.py",
        "cpu_req = _clamp(cpu_req, s.floor.cpu, s.cap.cpu)",
        "cpu_req = cpu_req",
        "the CPU request is not clamped",
    ),
    M(
        "decide/sizing.py",
        "return math.ceil(round(cores * 1000, 6)) / 1000",
        "return round(cores * 1000) / 1000",
        "CPU rounded to the nearest 1m, not up",
    ),
    M(
        "decide/sizing.py",
        "return math.ceil(round(nbytes / MI, 6)) * MI",
        "return round(nbytes / MI) * MI",
        "memory rounded to the nearest 1Mi, not up",
    ),
    M(
        "decide/sizing.py",
        "return summary is not None and summary.count >= s.min_samples and summary.span >= s.min_span",
        "return summary is not None and summary.count >= s.min_samples",
        "the minimum span is not asked",
    ),
    M(
        "decide/sizing.py",
        "return (limit, limit) if only_limit_set else (request, request)",
        "return (request, request)",
        "a limit annotation below the profile's request is raised",
    ),
    M(
        "decide/resources.py",
        "if not sized or (asked and policy.sizing.vertical_pod_autoscaler.annotations_win):",
        "if not sized:",
        "annotationsWin ignored",
    ),
    M(
        "decide/autoscaler.py",
        "if native:\n        return False",
        "if False:\n        return False",
        "VPA assumed to size a native sidecar",
    ),
    M(
        "decide/autoscaler.py",
        'if vpa.update_mode == "Off":',
        'if vpa.update_mode == "Initial":',
        "updateMode Off treated as sizing",
    ),
    # --- modes/: the decision table and what each mode needs ------------------------------
    M(
        "decide/nodefacts.py",
        "k >= rules.ebpf.min_kernel or any(",
        "k > rules.ebpf.min_kernel or any(",
        "the minimum kernel itself is too old",
    ),
    M("decide/nodefacts.py", "if elig.count == 0:", "if elig.count < 0:", "no eligible node is not unknown"),
    M(
        "decide/nodefacts.py",
        "if kernel is None:\n            why",
        "if kernel is None and False:\n            why",
        "an unreadable kernel is ignored",
    ),
    M(
        "modes/base.py",
        "if not any(fnmatchcase(c, p) for c in candidates for p in rules.sandbox_handlers):",
        "if not any(fnmatchcase(c, p) for c in [name] for p in rules.sandbox_handlers):",
        "the RuntimeClass's handler is not looked at",
    ),
    M(
        "modes/ebpf.py",
        "elif rules.require_cni_mode and not state.cni_mode:",
        "elif False:",
        "Merbridge without --cni-mode accepted",
    ),
    M(
        "modes/ebpf.py",
        "elif state.mode != want:",
        "elif False:",
        "Merbridge in the other mesh's mode accepted",
    ),
    M("modes/ebpf.py", "if not state.ready:", "if False:", "a Merbridge pod that is not Ready accepted"),
    M(
        "modes/ebpf.py",
        "if _width(every_out) > MAX_ITEMS:",
        "if _width(every_out) > 10 * MAX_ITEMS:",
        "more outbound exclusions than Merbridge holds",
    ),
    M(
        "modes/ebpf.py",
        "too_many = len(inbound) > room_in",
        "too_many = len(inbound) > MAX_ITEMS",
        "inbound exclusions counted as if Merbridge's own ports took no room",
    ),
    M("modes/ebpf.py", "if v6:\n", "if False:\n", "an IPv6 exclusion given to Merbridge"),
    M(
        "modes/ebpf.py",
        'if str(setting.annotations.get(CNI_SKIP, "")).strip().lower() == "false":\n        return Gap(',
        'if str(setting.annotations.get(CNI_SKIP, "")).strip().lower() == "no":\n        return Gap(',
        'sidecar.istio.io/inject: "false" not seen as Merbridge does',
    ),
    M(
        "modes/ebpf.py",
        "if setting.sandbox is not None:\n        return Gap(",
        "if False:\n        return Gap(",
        "ebpf for a sandboxed pod",
        equivalent="choose_mode sends every sandboxed pod to _sandboxed, which asks microvm only; no entry"
        " point asks ebpf about a sandboxed pod (the guard keeps ebpf.missing right on its own)",
    ),
    M(
        "modes/ebpf.py",
        "if plane.redirect is None:\n        return Gap(",
        "if False:\n        return Gap(",
        "ebpf for a proxy Merbridge does not know",
    ),
    M(
        "modes/ebpf.py",
        'if not isinstance(c, dict) or c.get("restartPolicy") == "Always":',
        "if not isinstance(c, dict):",
        "a native sidecar of the pod's own rules ebpf out",
    ),
    M(
        "modes/ebpf.py",
        "if (uid if uid is not None else pod_uid) != proxy_uid:",
        "if uid != proxy_uid:",
        "the pod's runAsUser not inherited by its init containers",
    ),
    M(
        "modes/ebpf.py",
        'if isinstance(p, dict) and p.get("containerPort") == REDIRECTOR_PORT:',
        "if False:",
        "a container on Merbridge's port 39807 accepted",
    ),
    M(
        "modes/ebpf.py",
        "if not rules.ebpf.enabled:\n        return Gap(",
        "if False:\n        return Gap(",
        "ebpf.enabled: false ignored",
    ),
    M(
        "modes/choice.py",
        "microvm.missing(setting) is None and microvm.blocked(setting) is None:",
        "microvm.missing(setting) is None:",
        "microvm in a namespace that refuses it",
    ),
    M(
        "modes/choice.py",
        'high_throughput_grpc=traits.protocol == "grpc" and traits.throughput == "high",',
        'high_throughput_grpc=traits.throughput == "high",',
        "high-throughput http gets microvm",
    ),
    M(
        "modes/choice.py",
        "if not traits.iptables_fallback:\n            return _skip(Skip.FALLBACK_FORBIDDEN",
        "if False:\n            return _skip(Skip.FALLBACK_FORBIDDEN",
        'iptables-fallback: "false" ignored in auto',
    ),
    M(
        "modes/choice.py",
        "if traits.batch and traits.native_possible and blocked is None and traits.iptables_fallback:",
        "if traits.batch and blocked is None and traits.iptables_fallback:",
        "batch pods get iptables where no native sidecar is possible",
    ),
    M(
        "modes/choice.py",
        'warning = None if gap.reason in _QUIET_GAPS else f"mesh-injector: ebpf is not possible: {text}"',
        "warning = None",
        "no warning when Merbridge is missing",
    ),
    M(
        "modes/choice.py",
        "if requested is not Mode.IPTABLES and not traits.iptables_fallback:",
        "if requested is Mode.IPTABLES and not traits.iptables_fallback:",
        "a fallback to iptables that was forbidden",
    ),
    M(
        "modes/choice.py",
        "if mode is requested:",
        "if True:",
        "a fallback reported as the annotation honoured",
    ),
    M(
        "decide/scheduling.py",
        "if key in own and own[key] != value:",
        "if key in own and own[key] == value:",
        "a node selector contradicting the RuntimeClass's accepted",
    ),
    M(
        "modes/microvm.py",
        "if setting.sandbox.gvisor and not plane.rules_in_gvisor:",
        "if False:",
        "proxy-init's rules in gVisor",
    ),
    M(
        "modes/microvm.py",
        "if rc is None:\n        return Gap(",
        "if False:\n        return Gap(",
        "microvm without its RuntimeClass",
    ),
    # --- dataplane/: what each flavour renders --------------------------------------------
    M(
        "dataplane/linkerd.py",
        '"--inbound-ports-to-ignore",',
        '"--inbound-ports-to-skip",',
        "proxy-init's inbound flag misspelt",
    ),
    M(
        "dataplane/linkerd.py",
        'args += ["--inbound-ports-to-ignore", join(f"{CONTROL},{ADMIN}", inbound)]',
        'args += ["--inbound-ports-to-ignore", inbound]',
        "proxy-init's control and admin ports redirected",
    ),
    M(
        "dataplane/linkerd.py",
        '("skip-inbound-ports", "" if cni else c.ignore_inbound, build.skip_inbound),',
        '("skip-inbound-ports", "", build.skip_inbound),',
        "Linkerd's ignoreInboundPorts dropped",
    ),
    M(
        "dataplane/linkerd.py",
        '"capabilities": {"add": ["NET_ADMIN", "NET_RAW"], "drop": ["ALL"]}}',
        '"capabilities": {"add": ["NET_ADMIN"], "drop": ["ALL"]}}',
        "proxy-init without NET_RAW",
    ),
    M(
        "dataplane/linkerd.py",
        'return [{"name": "LINKERD2_PROXY_CORES", "value": n}] + (',
        'return [{"name": "LINKERD2_PROXY_CORES", "value": n + "0"}] + (',
        "ten times the threads",
    ),
    M(
        "dataplane/linkerd.py",
        "shutdown = c.shutdown_endpoint or (build.batch and not build.native)",
        "shutdown = c.shutdown_endpoint",
        "a legacy Job's proxy cannot be shut down",
    ),
    M(
        "dataplane/linkerd.py",
        'container["restartPolicy"] = "Always"',
        'container["restartPolicy"] = "OnFailure"',
        "a native sidecar that is not restartPolicy Always",
    ),
    M(
        "dataplane/linkerd.py",
        'annotations[CONFIG + "skip-outbound-ports"] = outbound',
        "pass",
        "Linkerd's CNI plugin not told the skipped outbound ports",
    ),
    M(
        "dataplane/linkerd.py",
        'if c.gid >= 0:\n        security["runAsGroup"] = c.gid',
        "if False:\n        pass",
        "linkerd-proxy not run in the control plane's proxy group",
    ),
    M(
        "dataplane/linkerd.py",
        'args += ["--proxy-gid", str(c.gid)]',
        "pass",
        "proxy-init not told the proxy's group",
    ),
    M(
        "dataplane/linkerd.py",
        "if key.startswith(CONFIG) and name in newer:\n        return name in release.annotations",
        "if key.startswith(CONFIG) and name in newer:\n        return True",
        "an annotation only a newer injector reads applied for an older control plane",
    ),
    M(
        "dataplane/linkerdcontrol.py",
        "if edge <= last:",
        "if edge < last:",
        "the last edge release of a line read as the next line",
    ),
    M(
        "dataplane/linkerdcontrol.py",
        "if _line(r) <= version.line and (version.edge is None or r.first_edge <= version.edge)",
        "if _line(r) <= version.line",
        "an edge release from before its line's injector rendered as that line",
    ),
    M(
        "dataplane/istio.py",
        'args += ["-d", _join(str(PROM_PORT), str(HEALTH_PORT), t.inbound(style))]',
        'args += ["-d", _join(str(PROM_PORT), str(HEALTH_PORT))]',
        "istio-iptables not given the pod's inbound skips",
    ),
    M(
        "dataplane/istio.py",
        'args += ["-o", t.outbound(style)]',
        "pass",
        "istio-iptables not given the pod's outbound skips",
    ),
    M("dataplane/istio.py", '"runAsGroup": UID,', '"runAsGroup": 0,', "istio-proxy in group 0"),
    M(
        "dataplane/istio.py",
        'container["restartPolicy"] = "Always"',
        "pass",
        "Istio's native sidecar not kept running",
    ),
    M(
        "dataplane/istio.py",
        'config["concurrency"] = threads[0]',
        'config["concurrency"] = 0',
        "Envoy starts a worker per node core",
    ),
    M("dataplane/istio.py", '"-u", str(UID)', '"-u", "0"', "istio-iptables exempts root, not the proxy"),
    M(
        "dataplane/generic.py",
        '"runAsNonRoot": True,',
        '"runAsNonRoot": False,',
        "mesh-proxy may run as root",
    ),
    M(
        "dataplane/generic.py",
        '"capabilities": {"drop": ["ALL"], "add": ["NET_ADMIN", "NET_RAW"]},',
        '"capabilities": {"add": ["NET_ADMIN", "NET_RAW"]},',
        "mesh-init keeps the default capabilities",
    ),
    M(
        "dataplane/iptables.py",
        "if out and lo <= out[-1][1] + 1:",
        "if out and lo <= out[-1][1]:",
        "adjacent port ranges not joined",
    ),
    M(
        "dataplane/iptables.py",
        "if not 1 <= lo <= hi <= 65535:",
        "if not 0 <= lo <= hi <= 65535:",
        "port 0 accepted",
    ),
    M(
        "dataplane/iptables.py",
        'f"-A MESH_OUTBOUND -m owner --uid-owner {PROXY_UID} -j RETURN",',
        'f"-A MESH_OUTBOUND -m owner --uid-owner 0 -j RETURN",',
        "the proxy's own traffic redirected",
    ),
    M(
        "dataplane/iptables.py",
        'return f"--dport {lo}" if lo == hi else f"--dport {lo}:{hi}"',
        'return f"--dport {lo}"',
        "a skipped range becomes its first port",
    ),
    M(
        "dataplane/iptables.py",
        'for cidr in skip_cidrs if ":" not in cidr]',
        "for cidr in skip_cidrs]",
        "an IPv6 range in an IPv4 ruleset",
    ),
    M(
        "dataplane/others.py",
        'if str(source.get(key, "")).strip().lower() == value:',
        'if str(source.get(key, "")).strip() == value:',
        'an opt-out spelt "False" missed',
    ),
    # --- patch/: the JSON Patch, placing and stripping -------------------------------------
    M(
        "patch/diff.py",
        'return key.replace("~", "~0").replace("/", "~1")',
        'return key.replace("/", "~1")',
        "~ not escaped",
    ),
    M(
        "patch/diff.py",
        'return key.replace("~", "~0").replace("/", "~1")',
        'return key.replace("/", "~1").replace("~", "~0")',
        "escaped in the wrong order",
    ),
    M(
        "patch/diff.py",
        "if old != new or type(old) is not type(new):",
        "if old != new:",
        "1 and true and 1.0 taken for the same value",
        equivalent="every caller reaches _diff only with values that already differ (dict keys and list"
        " items are compared with != first), so the type check never decides; 1 -> true is missed before"
        " it (reported)",
    ),
    M(
        "patch/diff.py",
        'return name is not None and name == b.get("name")',
        "return False",
        "a changed container replaced whole",
    ),
    M(
        "patch/diff.py",
        'out.append({"op": "remove", "path": f"{path}/{start + common}"})',
        'out.append({"op": "remove", "path": f"{path}/{start}"})',
        "surplus items removed at the wrong index",
    ),
    M(
        "patch/diff.py",
        'if key not in new:\n                out.append({"op": "remove"',
        'if False:\n                out.append({"op": "remove"',
        "removed keys left in place",
    ),
    M(
        "patch/inject.py",
        "return name in listed and name in known and sums.get(name) == fingerprint(c)",
        "return name in listed and name in known",
        "a forged status strips the user's container",
    ),
    M(
        "patch/prints.py",
        "return hashlib.sha256(text).hexdigest()[:16]",
        "return hashlib.sha256(text).hexdigest()[:1]",
        "fingerprints of one hex digit",
    ),
    M(
        "patch/inject.py",
        'runtime_class = plan.runtime_class if not spec.get("runtimeClassName") else None',
        "runtime_class = plan.runtime_class",
        "the pod's own RuntimeClass overwritten",
    ),
    M(
        "patch/inject.py",
        'if c["name"] in have:\n            return f"container {c[\'name\']}"',
        "if False:\n            return f\"container {c['name']}\"",
        "a user's container of our name duplicated",
    ),
    M("patch/inject.py", 'if v["name"] in volumes:', "if False:", "a user's volume of our name duplicated"),
    M(
        "patch/inject.py",
        "return all(key in DEFAULTED for key in got if key not in want)",
        "return True",
        "any field the API server did not default counts as ours",
    ),
    # --- usage/: the samples file and the bounded history ---------------------------------
    M(
        "usage/samples.py",
        "kept = [s for s in samples if now - sizing.window <= s.timestamp <= now]",
        "kept = [s for s in samples if s.timestamp <= now]",
        "samples older than the window count",
    ),
    M(
        "usage/samples.py",
        "weights = [0.5 ** ((now - s.timestamp) / sizing.half_life) for s in kept]",
        "weights = [1.0 for s in kept]",
        "no decay",
    ),
    M(
        "usage/samples.py",
        "weights = [0.5 ** ((now - s.timestamp) / sizing.half_life) for s in kept]",
        "weights = [0.5 ** ((now - s.timestamp) / (2 * sizing.half_life)) for s in kept]",
        "twice the half-life",
    ),
    M(
        "usage/samples.py",
        "if acc >= target - 1e-12 * total:",
        "if acc > target + 1e-12 * total:",
        "a percentile one sample too high on a tie",
    ),
    M(
        "usage/samples.py",
        "oom_recent=any(s.oom and now - s.timestamp <= sizing.oom_lookback for s in kept),",
        "oom_recent=any(s.oom for s in kept),",
        "an old OOM kill counts as recent",
    ),
    M(
        "usage/samples.py",
        "cpu_max=max(s.cpu for s in kept),",
        "cpu_max=min(s.cpu for s in kept),",
        "the CPU maximum is the minimum",
    ),
    M("usage/samples.py", "if value < 0:", "if value < -1:", "a negative quantity read"),
    M(
        "usage/history.py",
        "return floor * RATIO**index",
        "return floor * RATIO ** (index + 1)",
        "a percentile reported a bucket too high",
    ),
    M(
        "usage/history.py",
        "return min(upper_edge(base + i, floor), cap)",
        "return upper_edge(base + i, floor)",
        "a percentile above the largest reading",
    ),
    M(
        "usage/history.py",
        "self.slot_seconds = float(sizing.window) / (SLOTS - 1)",
        "self.slot_seconds = float(sizing.window) / SLOTS",
        "the window cut into too many slots",
    ),
    M(
        "usage/history.py",
        "if index < oldest or index > current:",
        "if index > current:",
        "slots older than the window count",
    ),
    M(
        "usage/history.py",
        "weight = 2.0 ** ((t - end) / half_life)",
        "weight = 1.0",
        "no decay inside a slot",
    ),
    M(
        "usage/history.py",
        "rows.append((row, 2.0 ** ((index - current) * self.slot_seconds / self.half_life)))",
        "rows.append((row, 1.0))",
        "no decay between slots",
    ),
    M(
        "usage/history.py",
        "recent = 0 <= now - cached.oom_last <= lookback",
        "recent = cached.oom_last > 0",
        "an old OOM kill counts as recent",
    ),
    M(
        "usage/history.py",
        "if cpu > cpu_max:\n                            cpu_max = cpu",
        "if False:\n                            cpu_max = cpu",
        "the CPU maximum never recorded",
    ),
    M("usage/history.py", "span=last - first,", "span=last - first + 3600,", "the span an hour longer"),
    M(
        "usage/history.py",
        "target = total * pct / 100.0 - 1e-9 * total",
        "target = total * pct / 110.0",
        "the percentile's target too low",
    ),
    M(
        "usage/prometheus.py",
        'if kind == "ReplicaSet":\n            deployment = rs_owner.get((ns, name))',
        'if kind == "ReplicaSetX":\n            deployment = rs_owner.get((ns, name))',
        "a ReplicaSet's pods not joined to their Deployment",
    ),
    M(
        "usage/prometheus.py",
        'return WorkloadKey(ns, "CronJob", m.group("stem"))',
        "return WorkloadKey(ns, kind, name)",
        "a CronJob's Jobs counted apart",
    ),
    M(
        "usage/prometheus.py",
        'if not kind or kind == "<none>" or not name or name == "<none>":',
        "if not kind or not name:",
        "a bare pod's owner <none> taken for a workload",
    ),
)

# The tests that need no server, by how soon they catch a bug in each package (then the rest).
NO_SERVER = (
    "tests/test_units.py",
    "tests/test_golden.py",
    "tests/test_history.py",
    "tests/test_ownership.py",
    "tests/test_flavours.py",
    "tests/test_control_plane.py",
    "tests/test_upstream_linkerd.py",
    "tests/test_upstream_istio.py",
    "tests/test_linkerd_versions.py",
    "tests/test_istio_versions.py",
    "tests/test_memo_reads.py",
    "tests/test_roundtrip.py",
    "tests/test_fleet.py",
    "tests/test_mechanisms.py",
    "tests/test_properties.py",
)
FIRST = {
    "decide": ("tests/test_units.py", "tests/test_golden.py"),
    "modes": ("tests/test_golden.py", "tests/test_mechanisms.py"),
    "dataplane": (
        "tests/test_golden.py",
        "tests/test_flavours.py",
        "tests/test_linkerd_versions.py",
        "tests/test_upstream_linkerd.py",
    ),
    "patch": ("tests/test_units.py", "tests/test_golden.py", "tests/test_ownership.py"),
    "usage": ("tests/test_units.py", "tests/test_history.py"),
}
IGNORE = shutil.ignore_patterns(
    ".venv", ".git", "__pycache__", ".hypothesis", ".pytest_cache", ".ruff_cache", "*.egg-info"
)


@dataclass
class Result:
    mutant: Mutant
    verdict: str  # caught, survived, equivalent, stale, broken
    detail: str = ""
    seconds: float = 0.0


class Tree:
    """A copy of the repository the mutants are applied to, one at a time."""

    def __init__(self, root: Path) -> None:
        self.root = root / "tree"
        shutil.copytree(REPO, self.root, ignore=IGNORE)
        self._clock = int(time.time()) + 10

    def _write(self, path: Path, text: str) -> None:
        path.write_text(text)
        # a new mtime every time, so a cached bytecode of the same size is never reused
        self._clock += 2
        os.utime(path, (self._clock, self._clock))

    def pytest(self, files: tuple[str, ...]) -> tuple[bool, str]:
        """True when every test passes; else the first failure's id."""
        shutil.rmtree(self.root / ".hypothesis", ignore_errors=True)  # no replayed examples
        env = {**os.environ, "PYTHONPATH": str(self.root), "PYTHONHASHSEED": "0"}
        env.pop("UPDATE_GOLDEN", None)
        cmd = [
            sys.executable,
            "-m",
            "pytest",
            "-x",
            "-q",
            "-p",
            "no:cacheprovider",
            "--hypothesis-seed=0",
            "-o",
            "addopts=",
            "-rf",
            *files,
        ]
        try:
            out = subprocess.run(cmd, cwd=self.root, env=env, capture_output=True, text=True, timeout=1800)
        except subprocess.TimeoutExpired:
            return False, "timed out"
        if out.returncode == 0:
            return True, ""
        failed = re.search(r"^(?:FAILED|ERROR) (.+?)(?: - |$)", out.stdout, re.M)
        return False, failed.group(1) if failed else (out.stdout + out.stderr).strip().splitlines()[-1]

    def run(self, mutant: Mutant) -> Result:
        path = self.root / "webhook" / mutant.path
        text = path.read_text()
        found = text.count(mutant.old)
        if found != 1:
            return Result(mutant, "stale" if found == 0 else "broken", f"its text is found {found} times")
        mutated = text.replace(mutant.old, mutant.new)
        try:
            compile(mutated, str(path), "exec")
        except SyntaxError as exc:
            return Result(mutant, "broken", f"not Python: {exc}")
        start = time.monotonic()
        self._write(path, mutated)
        try:
            first = FIRST[mutant.package]
            passed, detail = self.pytest(first)
            if passed:
                passed, detail = self.pytest(tuple(f for f in NO_SERVER if f not in first))
        finally:
            self._write(path, text)
        verdict = "caught" if not passed else "equivalent" if mutant.equivalent else "survived"
        return Result(mutant, verdict, detail or mutant.equivalent, time.monotonic() - start)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.mutants", description=__doc__.split("\n\n")[0])
    parser.add_argument("-k", dest="pattern", help="only mutants whose file or text matches this regex")
    parser.add_argument("-j", "--jobs", type=int, default=1, help="mutants run at once, each in its own copy")
    parser.add_argument("--list", action="store_true", help="list the mutants and whether each applies")
    args = parser.parse_args(argv)
    chosen = [m for m in MUTANTS if not args.pattern or re.search(args.pattern, f"{m.path} {m.what} {m.old}")]
    if args.list:
        for m in chosen:
            count = (REPO / "webhook" / m.path).read_text().count(m.old)
            state = "applies" if count == 1 else "stale" if count == 0 else f"ambiguous ({count})"
            print(f"{m.path:24} {state:10} {m.what}")
        return 0
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="mutants-") as tmp:
        trees = [Tree(Path(tmp) / str(i)) for i in range(max(1, args.jobs))]
        baseline_ok, detail = trees[0].pytest(NO_SERVER)
        if not baseline_ok:
            print(f"the unmutated tree fails: {detail}", file=sys.stderr)
            return 2
        free = list(trees)
        results: list[Result] = []

        def one(m: Mutant) -> Result:
            tree = free.pop()
            try:
                return tree.run(m)
            finally:
                free.append(tree)

        with ThreadPoolExecutor(max_workers=len(trees)) as pool:
            for r in pool.map(one, chosen):
                results.append(r)
                print(
                    f"{r.verdict:10} {r.seconds:6.1f}s  {r.mutant.path}: {r.mutant.what}  [{r.detail}]",
                    flush=True,
                )
    report(results, time.monotonic() - started)
    return 0 if all(r.verdict in ("caught", "equivalent", "stale") for r in results) else 1


def report(results: list[Result], seconds: float) -> None:
    by_package: dict[str, Counter[str]] = {}
    for r in results:
        by_package.setdefault(r.mutant.package, Counter())[r.verdict] += 1
    print(
        f"\n{'package':12} {'caught':>7} {'survived':>9} {'equivalent':>11} {'stale':>6}  caught of counted"
    )
    total = Counter()
    for package, c in sorted(by_package.items()):
        total += c
        counted = c["caught"] + c["survived"]
        share = f"{100 * c['caught'] / counted:.0f}%" if counted else "-"
        print(f"{package:12} {c['caught']:7} {c['survived']:9} {c['equivalent']:11} {c['stale']:6}  {share}")
    counted = total["caught"] + total["survived"]
    share = f"{100 * total['caught'] / counted:.1f}%" if counted else "-"
    c = total
    print(f"{'all':12} {c['caught']:7} {c['survived']:9} {c['equivalent']:11} {c['stale']:6}  {share}")
    for verdict in ("survived", "equivalent", "broken", "stale"):
        for r in results:
            if r.verdict == verdict:
                print(f"{verdict}: {r.mutant.path}: {r.mutant.what} ({r.detail})")
    print(f"{len(results)} mutants in {seconds / 60:.1f} min")


if __name__ == "__main__":
    sys.exit(main())
