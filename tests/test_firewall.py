"""The iptables backend of the init container's rules: which nodes lack which, the choice
where the mode is chosen, and where a user sees it (check, review --show why, policy check).

Expectations are written from the rule (README "Which iptables backend"), not computed by
the code under test; the golden cases 150-155 hold whole pods.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import yaml

from tests.support import GOLDEN
from tests.support import run_cli as run
from webhook.admission import admit
from webhook.cluster.snapshot import Node, RuntimeClass, build_snapshot, node_from_object
from webhook.dataplane import FLAVOURS
from webhook.loading import parse_policy
from webhook.policy import NodesWithout, PolicyError
from webhook.versions import parse_kernel, parse_kube_version

REPO = Path(__file__).resolve().parent.parent
FIREWALLS = str(GOLDEN / "clusters" / "firewalls.yaml")
GENERIC = (
    "proxy: {flavour: generic, image: 'mesh-proxy:1.4.0', initImage: 'mesh-init:1',\n"
    "        generic: {firewall: %s}}\n"
)

AL2023_133 = ("Amazon Linux 2023.8.20250808", "v1.33.3-eks-3a5e3c8", "6.12.37-61.105.amzn2023.x86_64")
AL2023_132 = ("Amazon Linux 2023.7.20250623", "v1.32.5-eks-5d632ec", "6.1.141-155.222.amzn2023.x86_64")
BOTTLEROCKET_133 = ("Bottlerocket OS 1.44.0 (aws-k8s-1.33)", "v1.33.1-eks-b9364f6", "6.12.37")
BOTTLEROCKET_132 = ("Bottlerocket OS 1.39.1 (aws-k8s-1.32)", "v1.32.3-eks-473151a", "6.1.134")
UBUNTU = ("Ubuntu 24.04.2 LTS", "v1.33.1", "6.8.0-1029-aws")


def nodes(prefix: str, platform: tuple[str, str, str], count: int = 2, **labels: str) -> list[Node]:
    image, kubelet, kernel = platform
    return [
        Node(
            name=f"{prefix}-{i}",
            labels={"kubernetes.io/hostname": f"{prefix}-{i}", **labels},
            kernel=kernel,
            kubelet=kubelet,
            os_image=image,
        )
        for i in range(count)
    ]


def cluster(*pools: list[Node], classes: tuple[RuntimeClass, ...] = ()):
    return build_snapshot(
        nodes=[n for pool in pools for n in pool],
        namespaces={"shop": {"mesh-injector.io/inject": "enabled"}},
        runtime_classes=classes,
    )


def request(annotations: dict[str, str] | None = None, **spec: object) -> dict:
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": "web",
            "namespace": "shop",
            "annotations": {"mesh-injector.io/interception": "iptables", **(annotations or {})},
        },
        "spec": {"containers": [{"name": "app", "image": "app:1"}], **spec},
    }
    return {"uid": "u", "operation": "CREATE", "kind": {"kind": "Pod"}, "namespace": "shop", "object": pod}


def mesh_init_command(out) -> str:
    assert out.pod is not None
    (init,) = [c for c in out.pod["spec"]["initContainers"] if c["name"] == "mesh-init"]
    return init["command"][-1]


# --- which nodes lack which backend ------------------------------------------------------


def test_a_rule_matches_only_nodes_that_report_what_it_names():
    at_133 = parse_kube_version("1.33")
    rule = NodesWithout(backend="legacy", os_image="Amazon Linux 2023*", min_kubelet=at_133)
    assert rule.matches(*AL2023_133)
    assert not rule.matches(*AL2023_132)  # kubelet 1.32
    assert not rule.matches(*BOTTLEROCKET_133)  # another OS
    assert not rule.matches(AL2023_133[0], None, AL2023_133[2])  # no kubelet reported: not known
    assert not rule.matches(None, *AL2023_133[1:])  # no osImage reported
    by_kernel = NodesWithout(backend="legacy", min_kernel=parse_kernel("6.17"))  # any OS image
    assert by_kernel.matches("Some Linux", "v1.30.0", "6.18.2-1")
    assert not by_kernel.matches("Some Linux", "v1.30.0", "6.12.37")
    assert not by_kernel.matches("Some Linux", "v1.30.0", None)
    assert by_kernel.matches(None, None, "6.17.0")  # "*" matches a node without an osImage


def test_the_default_policy_knows_amazon_linux_2023_and_bottlerocket_from_1_33():
    rules = parse_policy("").interception.iptables.nodes_without
    lacking = {platform: [r.backend for r in rules if r.matches(*platform)] for platform in (
        AL2023_133, AL2023_132, BOTTLEROCKET_133, BOTTLEROCKET_132, UBUNTU)}  # fmt: skip
    assert lacking == {
        AL2023_133: ["legacy"],
        AL2023_132: [],
        BOTTLEROCKET_133: ["legacy"],
        BOTTLEROCKET_132: [],
        UBUNTU: [],
    }


def test_nodes_keep_what_they_report_when_read_from_the_api():
    obj = yaml.safe_load(
        "metadata: {name: n1}\nstatus: {nodeInfo: {osImage: Bottlerocket OS 1.44.0 (aws-k8s-1.33), "
        "kubeletVersion: v1.33.1-eks-b9364f6, kernelVersion: 6.12.37}}"
    )
    node = node_from_object(obj)  # what the live view's informer keeps of a Node
    assert (node.os_image, node.kubelet, node.kernel) == BOTTLEROCKET_133
    assert node_from_object({"metadata": {"name": "n2"}}).os_image is None


# --- the choice --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("asked", "pools", "wants", "reason"),
    [
        ("legacy", [("u", UBUNTU)], "legacy", "control-plane"),
        ("legacy", [("a", AL2023_133)], "nft", "nodes-lack-it"),
        ("legacy", [("b", BOTTLEROCKET_133)], "nft", "nodes-lack-it"),
        ("legacy", [("a", AL2023_133), ("o", AL2023_132)], "nft", "nodes-lack-it"),
        ("nft", [("a", AL2023_133)], "nft", "control-plane"),
        ("nft", [("u", UBUNTU), ("o", AL2023_132)], "nft", "control-plane"),
    ],
)
def test_the_backend_is_the_meshs_unless_an_eligible_node_lacks_it(asked, pools, wants, reason):
    snapshot = cluster(*(nodes(prefix, platform) for prefix, platform in pools))
    out = admit(request(), snapshot, parse_policy(GENERIC % asked))
    assert out.injected and out.firewall == wants, out.explanation
    assert f"| iptables-{wants}-restore --noflush" in mesh_init_command(out)
    assert any(line.startswith(f"firewall: {wants} ({reason}):") for line in out.explanation)


def test_nodes_the_pod_cannot_land_on_do_not_count():
    snapshot = cluster(nodes("a", AL2023_133, pool="new"), nodes("o", AL2023_132, pool="old"))
    policy = parse_policy(GENERIC % "legacy")
    pinned = admit(request(nodeSelector={"pool": "old"}), snapshot, policy)
    assert pinned.firewall == "legacy"
    anywhere = admit(request(), snapshot, policy)
    assert anywhere.firewall == "nft"
    named = admit(request(nodeName="a-1"), snapshot, policy)
    assert named.firewall == "nft"


def test_the_other_backend_where_the_mesh_asks_for_nft_and_a_node_lacks_it():
    policy = parse_policy(
        GENERIC % "nft"
        + "interception: {iptables: {nodesWithout: [{backend: nft, osImage: 'Ubuntu 24.04*'}]}}\n"
    )
    out = admit(request(), cluster(nodes("u", UBUNTU), nodes("o", AL2023_132)), policy)
    assert out.firewall == "legacy" and "iptables-legacy-restore" in mesh_init_command(out)
    line = next(e for e in out.explanation if e.startswith("firewall:"))
    assert "the mesh's setting is nft, which is missing on u-0, u-1 (osImage Ubuntu 24.04.2 LTS" in line


def test_no_common_backend_is_a_skip_naming_the_nodes():
    policy = parse_policy(
        GENERIC
        % "legacy"
        + "interception: {iptables: {nodesWithout: [{backend: legacy, osImage: 'Amazon Linux 2023*'}, "
        "{backend: nft, osImage: 'Ubuntu*'}]}}\n"
    )
    out = admit(request(), cluster(nodes("a", AL2023_133, 1), nodes("u", UBUNTU, 1)), policy)
    assert not out.injected and out.skip is not None and out.skip.value == "no-common-firewall"
    assert out.pod is not None
    reason = out.pod["metadata"]["annotations"]["mesh-injector.io/skip-reason"]
    assert "legacy is missing on a-0 (osImage Amazon Linux 2023.8.20250808" in reason
    assert "and nft on u-0 (osImage Ubuntu 24.04.2 LTS" in reason
    assert len(out.warnings) == 1 and "pod not meshed" in out.warnings[0]


def with_control_plane(monkeypatch, name: str, **changes: object) -> None:
    """The flavour ``name`` as a control plane that says ``changes`` would render it (another
    version's init container)."""
    plane = FLAVOURS[name]

    def control_plane(maps, policy):
        return dataclasses.replace(plane.control_plane(maps, policy), **changes)

    monkeypatch.setitem(FLAVOURS, name, dataclasses.replace(plane, control_plane=control_plane))


def test_an_init_container_that_can_only_use_legacy_is_not_sent_to_nodes_without_it(monkeypatch):
    with_control_plane(monkeypatch, "generic", firewall="legacy", firewalls=("legacy",), version="0.9")
    policy = parse_policy(GENERIC % "legacy")
    out = admit(request(), cluster(nodes("a", AL2023_133, 1), nodes("o", AL2023_132, 1)), policy)
    assert out.skip is not None and out.skip.value == "no-common-firewall", out.explanation
    reason = out.pod["metadata"]["annotations"]["mesh-injector.io/skip-reason"]
    assert "legacy is missing on a-0" in reason
    assert "the mesh's init container (version 0.9) can only use legacy" in reason
    # where every node has legacy, the same init container is fine
    assert admit(request(), cluster(nodes("o", AL2023_132)), policy).firewall == "legacy"


def test_gvisor_takes_legacy_and_an_init_container_without_it_is_skipped(monkeypatch):
    gvisor = RuntimeClass(name="gvisor", handler="runsc")
    sandboxed = request(runtimeClassName="gvisor")
    snapshot = cluster(nodes("a", AL2023_133), classes=(gvisor,))
    out = admit(sandboxed, snapshot, parse_policy(GENERIC % "nft"))
    # the rules are loaded by gVisor's netstack, not the node's kernel
    assert out.mode is not None and out.mode.value == "microvm" and out.firewall == "legacy"
    assert any(e.startswith("firewall: legacy (gvisor):") for e in out.explanation)
    with_control_plane(monkeypatch, "generic", firewall="nft", firewalls=("nft",))
    out = admit(sandboxed, snapshot.derive(), parse_policy(GENERIC % "nft"))
    assert out.skip is not None and out.skip.value == "sandbox-unsupported", out.explanation


def test_a_vm_sandbox_keeps_the_meshs_backend_whatever_the_nodes_os():
    kata = RuntimeClass(name="kata-qemu", handler="kata-qemu")
    out = admit(
        request({"mesh-injector.io/interception": "microvm"}),
        cluster(nodes("a", AL2023_133), classes=(kata,)),
        parse_policy(GENERIC % "legacy"),
    )
    assert out.mode is not None and out.mode.value == "microvm" and out.firewall == "legacy"
    assert any(e.startswith("firewall: legacy (guest-kernel):") for e in out.explanation)


def test_no_eligible_node_known_keeps_the_meshs_backend():
    out = admit(request(), cluster(), parse_policy(GENERIC % "legacy"))
    assert out.firewall == "legacy"
    line = "firewall: legacy (control-plane): the mesh's setting (no eligible node is known)"
    assert line in out.explanation


def test_no_backend_of_ours_where_nothing_of_ours_installs_rules():
    policy = parse_policy(GENERIC % "legacy" + "interception: {iptables: {cniInstallsRules: true}}\n")
    out = admit(request(), cluster(nodes("a", AL2023_133)), policy)
    assert out.injected and out.firewall is None
    status = json.loads(out.pod["metadata"]["annotations"]["mesh-injector.io/status"])
    assert "firewall" not in status
    assert any("the mesh's CNI plugin installs the rules" in e for e in out.explanation)


def test_which_nodes_lack_a_backend_is_derived_once_per_platform_not_per_pod(monkeypatch):
    calls: list[tuple] = []
    matches = NodesWithout.matches

    def counted(self, *platform):
        calls.append(platform)
        return matches(self, *platform)

    monkeypatch.setattr(NodesWithout, "matches", counted)
    snapshot = cluster(nodes("a", AL2023_133, 40), nodes("o", AL2023_132, 40), nodes("u", UBUNTU, 40))
    policy = parse_policy(GENERIC % "legacy")
    rules = len(policy.interception.iptables.nodes_without)
    for i in range(25):  # distinct workloads, each decided in full (no template shared)
        snapshot.templates.clear()
        req = request()
        req["object"]["metadata"]["name"] = f"web-{i}"
        assert admit(req, snapshot, policy).firewall == "nft"
    assert len(calls) == 3 * rules  # three platforms, each rule once: for 120 nodes and 25 pods


# --- where a user sees it ----------------------------------------------------------------

MANIFEST = """
apiVersion: apps/v1
kind: Deployment
metadata: {name: on-al2023, namespace: shop}
spec:
  selector: {matchLabels: {app: a}}
  template:
    metadata: {labels: {app: a}, annotations: {mesh-injector.io/interception: iptables}}
    spec: {nodeSelector: {pool: al2023-133}, containers: [{name: app, image: app:1}]}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: on-ubuntu, namespace: shop}
spec:
  selector: {matchLabels: {app: u}}
  template:
    metadata: {labels: {app: u}, annotations: {mesh-injector.io/interception: iptables}}
    spec: {nodeSelector: {pool: ubuntu}, containers: [{name: app, image: app:1}]}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: at-the-edge, namespace: shop}
spec:
  selector: {matchLabels: {app: e}}
  template:
    metadata: {labels: {app: e}, annotations: {mesh-injector.io/interception: iptables}}
    spec:
      nodeSelector: {tier: edge}
      tolerations: [{key: pool, operator: Exists}]
      containers: [{name: app, image: app:1}]
"""


@pytest.fixture
def edge_policy(tmp_path) -> str:
    path = tmp_path / "policy.yaml"
    path.write_text((GOLDEN / "cases" / "153-firewall-nothing-common-skip" / "policy.yaml").read_text())
    return str(path)


def test_check_shows_the_backend_of_each_workload(edge_policy):
    out = run("check", "-f", "-", "--cluster", FIREWALLS, "--policy", edge_policy, stdin=MANIFEST)
    assert out.returncode == 0, out.stderr
    rows = [line.split() for line in out.stdout.splitlines()]
    assert rows[0] == ["WORKLOAD", "MESHED", "MODE", "FIREWALL", "RESOURCES", "REASON"]
    table = {r[1]: r[2:] for r in rows[1:]}
    assert table["shop/on-al2023"][:3] == ["yes", "iptables", "nft"]
    assert table["shop/on-ubuntu"][:3] == ["yes", "iptables", "legacy"]
    assert table["shop/at-the-edge"][:4] == ["no", "-", "-", "-"]
    assert table["shop/at-the-edge"][4] == "no-common-firewall:"
    args = ("check", "-f", "-", "--cluster", FIREWALLS, "--policy", edge_policy, "-o", "json")
    records = json.loads(run(*args, stdin=MANIFEST).stdout)
    assert [(r["name"], r["firewall"]) for r in records] == [
        ("on-al2023", "nft"),
        ("on-ubuntu", "legacy"),
        ("at-the-edge", None),
    ]


def test_review_show_why_says_which_backend_and_why():
    case = GOLDEN / "cases" / "152-firewall-mixed-pool-nft"
    out = run(
        "review", str(case / "review.json"), "--cluster", FIREWALLS, "--policy", str(case / "policy.yaml"),
        "--server-version", "1.33", "--show", "why",
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0].startswith("decision: meshed, generic proxy, mode iptables")
    (line,) = [line for line in lines if line.startswith("firewall:")]
    assert line.startswith(
        "firewall: nft (nodes-lack-it): the mesh's setting is legacy, which is missing on al2023-133-b "
        "(osImage Amazon Linux 2023.8.20250808, kubelet v1.33.3-eks-3a5e3c8"
    ), line
    assert line.endswith("; every eligible node has nft")


def test_policy_check_reads_the_nodes_without_a_backend(tmp_path):
    ok = tmp_path / "ok.yaml"
    ok.write_text(
        "interception:\n  iptables:\n    nodesWithout:\n"
        "      - {backend: legacy, osImage: 'Talos (v1.11*', minKernel: '6.17'}\n"
    )
    out = run("policy", "check", str(ok))
    assert out.returncode == 0, out.stderr
    assert "(no legacy on osImage Talos (v1.11* and kernel >= 6.17.0)" in out.stdout
    default = run("policy", "check", str(REPO / "policies" / "default.yaml"))
    assert "no legacy on osImage Amazon Linux 2023* and kubelet >= 1.33" in default.stdout
    assert "no legacy on osImage Bottlerocket OS* and kubelet >= 1.33" in default.stdout
    for body, needle in (
        ("- {backend: legacy, osImage: 'Amazon Linux 2023*', minKubelet: 1.33}",
         "interception.iptables.nodesWithout[0].minKubelet: 1.33 is a YAML number"),
        ("- {backend: iptables, osImage: 'x'}",
         "nodesWithout[0].backend: 'iptables' is not allowed; expected one of 'legacy', 'nft'"),
        ("- {backend: nft, osimage: 'x'}",
         "nodesWithout[0].osimage: unknown field; allowed fields here are backend, minKernel"),
        ("- {osImage: 'x'}", "interception.iptables.nodesWithout[0].backend: required field is missing"),
        ("- {backend: nft, minKernel: 'six'}",
         "interception.iptables.nodesWithout[0].minKernel: 'six' is not a kernel version"),
    ):  # fmt: skip
        bad = tmp_path / "bad.yaml"
        bad.write_text("interception:\n  iptables:\n    nodesWithout:\n      " + body + "\n")
        out = run("policy", "check", str(bad))
        assert out.returncode == 2 and out.stderr.count("\n") == 1, out.stderr
        assert needle in out.stderr, out.stderr


def test_a_bad_backend_for_the_generic_flavour_is_refused():
    with pytest.raises(PolicyError, match=r"proxy.generic.firewall: 'iptables' is not allowed"):
        parse_policy(GENERIC % "iptables")
