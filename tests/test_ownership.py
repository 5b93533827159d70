"""What a pod's author owns and we never take: a status annotation the pod was created with
(on a CREATE it is user input), names the data plane would add, invalid pods, values past
the API server's limits; and the core answers every pod the API server can send."""

from __future__ import annotations

import copy
import json
import random

import jsonpatch
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.corpus import pod as corpus_pod
from tests.support import GOLDEN, anchored_policy, validate_k8s
from webhook.admission import admit
from webhook.core import ANN_SKIP, ANN_STATUS, PREFIX
from webhook.dataplane import FLAVOURS
from webhook.dataplane.base import LABEL_VALUE_MAX, label_value
from webhook.dataplane.iptables import PortListError, parse_ports
from webhook.decide.podfacts import invalid
from webhook.loading import load_snapshot
from webhook.patch.inject import fingerprint, read_status
from webhook.patch.ours import OURS
from webhook.reasons import Mode

POLICIES = {
    "linkerd": anchored_policy(),
    "istio": anchored_policy("proxy: {flavour: istio}"),
    "generic": anchored_policy("proxy: {flavour: generic, image: reg/proxy:1, initImage: reg/init:1}"),
}
SNAPSHOTS = {
    name: load_snapshot(policy=policy, now=1795780800.0, cluster=str(GOLDEN / "clusters" / "mixed.yaml"))
    for name, policy in POLICIES.items()
}
NS = "shop"  # opted in by its label


def review(obj: object, namespace: str = NS) -> dict:
    return {"uid": "u", "operation": "CREATE", "kind": {"kind": "Pod"}, "namespace": namespace, "object": obj}


def mutated(obj: dict, flavour: str) -> tuple[object, dict]:
    out = admit(review(copy.deepcopy(obj)), SNAPSHOTS[flavour].derive(), POLICIES[flavour])
    return out, jsonpatch.apply_patch(copy.deepcopy(obj), out.patch) if out.patch else obj


def named(items: object) -> dict[str, object]:
    return {c["name"]: c for c in items or () if isinstance(c, dict) and isinstance(c.get("name"), str)}


# --- a forged status annotation -------------------------------------------------------------

OUR_NAMES = sorted(OURS.containers | OURS.volumes)
MARKS = sorted(OURS.marks)


@st.composite
def forgeries(draw, pod: dict) -> dict:
    """A status annotation as a user (or a webhook before ours) could write it: listing the
    pod's own items and ours, with fingerprints that are random or are the pod's own items'
    (a status copied from another pod, or computed), probes to put back, values to restore."""
    spec, meta = pod["spec"], pod["metadata"]
    own = {key: list(named(spec.get(key))) for key in ("containers", "initContainers", "volumes")}
    own["labels"] = list(meta.get("labels") or {})
    own["annotations"] = list(meta.get("annotations") or {})
    status: dict = {"version": draw(st.sampled_from(["0.1.0", "0.0.9", "9.9.9"]))}
    status["flavour"] = draw(st.sampled_from([*FLAVOURS, "other"]))
    sums: dict = {}
    for key, pool in (
        ("containers", own["containers"] + own["initContainers"] + OUR_NAMES),
        ("initContainers", own["initContainers"] + own["containers"] + OUR_NAMES),
        ("volumes", own["volumes"] + OUR_NAMES),
        ("labels", own["labels"] + MARKS),
        ("annotations", own["annotations"] + MARKS),
    ):
        listed = draw(st.lists(st.sampled_from(pool), max_size=4, unique=True)) if pool else []
        if listed:
            status[key] = listed
        values = meta.get(key) if key in ("labels", "annotations") else named(spec.get(key))
        prints = {}
        for name in listed:
            item = (values or {}).get(name)
            honest = item is not None and name not in OUR_NAMES and name not in MARKS
            # the pod's own item's fingerprint, where it is the user's (of a name that is not
            # ours: a status naming a user's item of our names with its exact fingerprint is
            # indistinguishable from our own injection), else a random one
            if honest and draw(st.booleans()):
                prints[name] = fingerprint(item)
            else:
                prints[name] = draw(st.text(alphabet="0123456789abcdef", min_size=16, max_size=16))
        if prints:
            sums[key] = prints
    containers = own["containers"] + own["initContainers"]
    if containers and draw(st.booleans()):
        target = draw(st.sampled_from(containers))
        status["probes"] = {
            target: {
                "image": "evil/image:1",
                "readinessProbe": {"exec": {"command": ["true"]}},
                "command": ["sh", "-c", "evil"],
            }
        }
        item = {**named(spec.get("containers")), **named(spec.get("initContainers"))}[target]
        if "readinessProbe" in item and draw(st.booleans()):
            sums["probes"] = {target: {"readinessProbe": fingerprint(item["readinessProbe"])}}
    if own["labels"] and draw(st.booleans()):
        status["replaced"] = {"labels": {name: "evil" for name in own["labels"]}}
    if spec.get("runtimeClassName") and draw(st.booleans()):
        status["runtimeClassName"] = spec["runtimeClassName"]
        sums["runtimeClassName"] = fingerprint(spec["runtimeClassName"])
    if sums and draw(st.booleans()):
        status["sums"] = sums
    return status


@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data(), seed=st.integers(0, 2**32 - 1), flavour=st.sampled_from(sorted(POLICIES)))
def test_a_forged_status_never_removes_or_changes_what_the_user_wrote(data, seed, flavour):
    """Admitted with any forged status, a pod comes out as it would without one: every one of
    its containers, init containers, volumes, labels and annotations (but our own,
    ``mesh-injector.io/...``) as admission without the status leaves it; nothing is lost."""
    clean = corpus_pod(random.Random(seed), NS)
    (clean["metadata"].get("annotations") or {}).pop(ANN_STATUS, None)  # the corpus forges some itself
    status = data.draw(forgeries(clean))
    forged = copy.deepcopy(clean)
    forged["metadata"].setdefault("annotations", {})[ANN_STATUS] = json.dumps(status)
    out_clean, want = mutated(clean, flavour)
    out_forged, got = mutated(forged, flavour)
    assert out_forged.injected is out_clean.injected, out_forged.explanation
    assert out_forged.mode == out_clean.mode
    for key in ("containers", "initContainers", "volumes"):
        mine, theirs = named(clean["spec"].get(key)), named(got["spec"].get(key))
        expected = named(want["spec"].get(key))
        for name in mine:
            assert theirs.get(name) == expected.get(name), (key, name, status)
    for key in ("labels", "annotations"):
        users = {k for k in clean["metadata"].get(key) or {} if not k.startswith(PREFIX)}
        for name in users:
            assert (got["metadata"].get(key) or {}).get(name) == (want["metadata"].get(key) or {}).get(
                name
            ), (
                key,
                name,
                status,
            )
    assert got["spec"].get("runtimeClassName") == want["spec"].get("runtimeClassName")


def test_the_examples_of_forged_statuses_change_nothing_of_the_users():
    """The forgeries a user could write by hand: strip the app, swap its image, drop a label
    or a mounted volume."""
    app = {
        "name": "app",
        "image": "registry.example.com/app:1",
        "volumeMounts": [{"name": "data", "mountPath": "/d"}],
    }
    base = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "web", "labels": {"team": "web"}, "annotations": {"team": "web"}},
        "spec": {"containers": [app], "volumes": [{"name": "data", "emptyDir": {}}]},
    }
    for forged in (
        {"containers": ["app"]},
        {"probes": {"app": {"image": "evil/image:1"}}},
        {"labels": ["team"], "annotations": ["team"]},
        {"volumes": ["data"]},
        {"containers": ["app"], "volumes": ["data"], "sums": {"containers": {"app": fingerprint(app)}}},
    ):
        pod = copy.deepcopy(base)
        pod["metadata"]["annotations"][ANN_STATUS] = json.dumps(forged)
        for flavour in POLICIES:
            out, got = mutated(pod, flavour)
            assert out.injected, out.explanation
            assert named(got["spec"]["containers"])["app"] == app
            assert named(got["spec"]["volumes"])["data"] == {"name": "data", "emptyDir": {}}
            assert got["metadata"]["labels"]["team"] == "web"
            assert got["metadata"]["annotations"]["team"] == "web"
            assert json.loads(got["metadata"]["annotations"][ANN_STATUS]) != forged


def test_a_proxy_under_a_status_without_fingerprints_is_left_as_it_is():
    """A pod of an earlier injection that cannot be shown to be ours (its proxy changed since,
    or a status without fingerprints): not meshed a second time, not patched, and said why."""
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "web"},
        "spec": {"containers": [{"name": "app", "image": "a"}]},
    }
    _, meshed = mutated(pod, "linkerd")
    proxy = named(meshed["spec"]["containers"])["linkerd-proxy"]
    edited = copy.deepcopy(meshed)
    named(edited["spec"]["containers"])["linkerd-proxy"]["image"] = "mirror.example.com/proxy:1"
    unprinted = copy.deepcopy(meshed)
    status = read_status(unprinted)
    del status["sums"]
    unprinted["metadata"]["annotations"][ANN_STATUS] = json.dumps(status)
    for obj in (edited, unprinted):
        out, got = mutated(obj, "linkerd")
        assert not out.injected and out.skip.value == "proxy-already-present"
        assert out.patch == []
        assert any("does not show it to be ours" in w for w in out.warnings), out.warnings
    # the unchanged one is ours: stripped and redone, to no change
    out, got = mutated(meshed, "linkerd")
    assert out.injected and out.patch == [] and named(got["spec"]["containers"])["linkerd-proxy"] == proxy


@pytest.mark.parametrize("flavour", sorted(POLICIES))
def test_a_runtime_class_is_taken_back_only_where_the_decision_sets_it_again(flavour):
    """runtimeClassName's value is what a user writes for the same sandbox, so a forged claim
    on the user's own class is easy: it is kept, and the pod decided as the user wrote it. Our
    own, from an earlier microvm decision, is taken back and set again: no patch."""
    user = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "web"},
        "spec": {"runtimeClassName": "kata-qemu", "containers": [{"name": "app", "image": "a"}]},
    }
    clean, want = mutated(user, flavour)
    forged = copy.deepcopy(user)
    claim = {"runtimeClassName": "kata-qemu", "sums": {"runtimeClassName": fingerprint("kata-qemu")}}
    forged["metadata"]["annotations"] = {ANN_STATUS: json.dumps(claim)}
    out, got = mutated(forged, flavour)
    assert out.mode == clean.mode == Mode.MICROVM and out.reason == clean.reason == "sandboxed-pod"
    assert got["spec"]["runtimeClassName"] == "kata-qemu"
    assert got["spec"]["containers"] == want["spec"]["containers"]
    ours = copy.deepcopy(user)
    del ours["spec"]["runtimeClassName"]
    ours["metadata"]["annotations"] = {"mesh-injector.io/interception": "microvm"}
    first, stored = mutated(ours, flavour)
    assert first.mode == Mode.MICROVM and stored["spec"]["runtimeClassName"] == "kata-qemu"
    assert read_status(stored)["runtimeClassName"] == "kata-qemu"
    again, _ = mutated(stored, flavour)
    assert again.injected and again.patch == [], again.patch


def test_a_vpa_change_to_the_proxy_resources_keeps_it_ours():
    """The proxy's resources are not in its fingerprint: a VerticalPodAutoscaler may set them."""
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "web"},
        "spec": {"containers": [{"name": "app", "image": "a"}]},
    }
    _, meshed = mutated(pod, "istio")
    resized = copy.deepcopy(meshed)
    proxy = named(resized["spec"]["containers"])["istio-proxy"]
    proxy["resources"] = {"requests": {"cpu": "37m", "memory": "51Mi"}}
    assert fingerprint(proxy) == read_status(meshed)["sums"]["containers"]["istio-proxy"]
    out, _ = mutated(resized, "istio")
    assert out.injected, out.explanation


# --- names, limits and invalid pods ---------------------------------------------------------


@pytest.mark.parametrize("flavour", sorted(POLICIES))
def test_a_name_the_data_plane_adds_is_never_taken_from_the_pod(flavour):
    """Every container and volume name a flavour adds, already in the pod: skipped with the
    reason and the name, the user's item unchanged, no second item of that name."""
    plane = FLAVOURS[flavour]
    for name in sorted({*plane.containers, *(v["name"] for v in plane.volumes)}):
        pod = {
            "apiVersion": "v1",
            "kind": "Pod",
            # iptables: the mode whose data plane adds the most
            "metadata": {"name": "web", "annotations": {"mesh-injector.io/interception": "iptables"}},
            "spec": {"containers": [{"name": "app", "image": "a"}]},
        }
        if name == "istio-xds":  # Istio's proxyless gRPC template's
            pod["metadata"]["annotations"]["inject.istio.io/templates"] = "grpc-agent"
        if name in plane.containers:
            pod["spec"]["initContainers"] = [{"name": name, "image": "user/own:1"}]
        else:
            pod["spec"]["volumes"] = [{"name": name, "csi": {"driver": "csi.spiffe.io"}}]
        out, got = mutated(pod, flavour)
        assert not out.injected and name in out.explanation[0], (name, out.explanation)
        # a container of a mesh's own name is that mesh's evidence, or a proxy: those skips
        # come first; any other name is a collision
        expected = {"owned-by-another-mesh", "proxy-already-present", "name-collision"}
        assert out.skip.value in (expected if name in plane.containers else {"name-collision"})
        assert got["spec"] == pod["spec"]
        assert (ANN_SKIP in got["metadata"]["annotations"]) is (out.skip.value != "proxy-already-present")


@pytest.mark.parametrize(
    ("spec", "problem"),
    [
        ({"containers": []}, "spec.containers is empty"),
        ({}, "spec.containers is missing"),
        ({"containers": [{"image": "a"}]}, "spec.containers[0] has no name"),
        ({"containers": [{"name": "", "image": "a"}]}, "spec.containers[0] has no name"),
        (
            {"containers": [{"name": "a", "image": "a"}, {"name": "a", "image": "b"}]},
            "two containers are named a",
        ),
        (
            {"containers": [{"name": "a", "image": "a"}], "initContainers": [{"name": "a", "image": "b"}]},
            "two containers are named a",
        ),
        ({"containers": [{"name": "a"}], "volumes": [{"emptyDir": {}}]}, "spec.volumes[0] has no name"),
        (
            {"containers": [{"name": "a"}], "volumes": [{"name": "v"}, {"name": "v"}]},
            "two volumes are named v",
        ),
    ],
)
def test_a_pod_the_api_server_will_refuse_is_named_and_never_patched(spec, problem):
    assert invalid(spec) == problem
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "web"}, "spec": spec}
    for flavour in POLICIES:
        out, _ = mutated(pod, flavour)
        assert out.skip.value == "invalid-pod" and problem in out.explanation[0]
        assert out.patch == []


@pytest.mark.parametrize("spec", [None, "x", 3, []])
def test_a_pod_without_a_spec_is_skipped_without_a_patch(spec):
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "web"}}
    if spec != []:
        pod["spec"] = spec
    out, _ = mutated(pod, "linkerd")
    assert out.skip.value == "invalid-pod" and out.patch == []


@pytest.mark.parametrize(
    ("name", "want"),
    [
        ("a" * 63, "a" * 63),
        ("a" * 64, "a" * 63),
        ("a" * 62 + "-b", "a" * 62),  # never ends on a dash
        ("a" * 61 + "-.x", "a" * 61),
        ("a" * 253, "a" * 63),
        ("short", "short"),
    ],
)
def test_label_values_are_cut_to_what_the_api_server_accepts(name, want):
    assert label_value(name) == want and len(want) <= LABEL_VALUE_MAX


@pytest.mark.parametrize("length", [63, 64, 67, 200])
@pytest.mark.parametrize("flavour", [name for name, f in FLAVOURS.items() if f.reads_workload])
def test_a_long_workload_name_gives_a_valid_pod(flavour, length):
    """A Deployment name of any legal length: the labels that carry it are valid values, and
    re-admission (the pod as stored) changes nothing."""
    stem = ("w" * (length - 9) + "-deploy-x")[:length]
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "generateName": f"{stem}-5d8f7c9b6-",
            "labels": {"pod-template-hash": "5d8f7c9b6"},
            "ownerReferences": [
                {
                    "apiVersion": "apps/v1",
                    "kind": "ReplicaSet",
                    "name": f"{stem}-5d8f7c9b6",
                    "uid": "u",
                    "controller": True,
                }
            ],
        },
        "spec": {"containers": [{"name": "app", "image": "a"}]},
    }
    out, got = mutated(pod, flavour)
    assert out.injected, out.explanation
    for value in got["metadata"]["labels"].values():
        assert len(value) <= LABEL_VALUE_MAX and (not value or value[-1].isalnum())
    label = "linkerd.io/proxy-deployment" if flavour == "linkerd" else "service.istio.io/canonical-name"
    assert got["metadata"]["labels"][label] == label_value(stem)
    validate_k8s(got)
    again, _ = mutated(got, flavour)
    assert again.patch == []


def test_istio_skip_port_ranges_stay_ranges():
    """1-65535 is one iptables range, not 65,535 ports in an argument over Linux's limit."""
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": "web",
            "annotations": {
                "mesh-injector.io/interception": "iptables",
                "mesh-injector.io/skip-outbound-ports": "1-65535",
                "mesh-injector.io/skip-inbound-ports": "25,8000-8100",
            },
        },
        "spec": {"containers": [{"name": "app", "image": "a"}]},
    }
    out, got = mutated(pod, "istio")
    init = named(got["spec"]["initContainers"])["istio-init"]
    args = dict(zip(init["args"][1::2], init["args"][2::2], strict=False))
    assert args["-o"] == "1:65535"
    assert args["-d"] == "15090,15021,25,8000:8100,15020"  # the status port last, as Istio writes it
    assert max(len(a) for a in init["args"]) < 200
    assert len(json.dumps(out.patch)) < 64 * 1024


@pytest.mark.parametrize(
    ("raw", "want"),
    [
        ("1,2,3", ((1, 3),)),
        ("8000-8100,8050-8200,8201", ((8000, 8201),)),
        ("25, 3306,25", ((25, 25), (3306, 3306))),
        (",".join(str(p) for p in range(1, 65536)), ((1, 65535),)),
    ],
)
def test_port_lists_are_joined_into_the_fewest_ranges(raw, want):
    assert parse_ports(raw) == want


@pytest.mark.parametrize("flavour", sorted(POLICIES))
def test_too_many_separate_ports_are_refused_with_a_reason_and_every_argument_stays_small(flavour):
    """Every other port (32,768 items, a 190 KB annotation the API server accepts): refused
    with a warning naming the annotation; the pod is meshed without those skips and no
    argument or environment value of ours comes near Linux's 128 KiB per argument."""
    every_other = ",".join(str(p) for p in range(1, 65536, 2))
    with pytest.raises(PortListError, match="more than"):
        parse_ports(every_other)
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": "web",
            "annotations": {
                "mesh-injector.io/interception": "iptables",
                "mesh-injector.io/skip-outbound-ports": every_other,
            },
        },
        "spec": {"containers": [{"name": "app", "image": "a"}]},
    }
    out, got = mutated(pod, flavour)
    assert out.injected
    assert any("mesh-injector.io/skip-outbound-ports" in w and "more than" in w for w in out.warnings)
    for c in got["spec"].get("initContainers", []) + got["spec"]["containers"]:
        if c["name"] == "app":
            continue
        strings = [*c.get("args", []), *c.get("command", []), *(e.get("value", "") for e in c.get("env", []))]
        assert max(map(len, strings), default=0) < 16 * 1024, c["name"]


def test_istio_gives_back_the_pods_own_scraping_exactly():
    """The metrics merge overwrites the pod's prometheus.io/port and takes off another
    spelling of the path; both are the user's, so a change of flavour gives them back as
    they were, and nothing of ours is left."""
    own = {"prometheus.io/scrape": "true", "prometheus.io/port": "9102", "prometheus_io_path": "/m"}
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "web", "annotations": dict(own)},
        "spec": {"containers": [{"name": "app", "image": "a"}]},
    }
    _, got = mutated(pod, "istio")
    annotations = got["metadata"]["annotations"]
    assert annotations["prometheus.io/port"] == "15020" and "prometheus_io_path" not in annotations
    _, back = mutated(got, "linkerd")
    again = back["metadata"]["annotations"]
    assert {k: v for k, v in again.items() if k.startswith("prometheus")} == own


def test_a_probe_port_that_is_a_digit_only_to_unicode_is_not_a_port():
    """``"²"`` is a digit to str.isdigit and no number to int(): a named port that is absent."""
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "web"},
        "spec": {
            "containers": [
                {"name": "app", "image": "a", "readinessProbe": {"httpGet": {"path": "/", "port": "²"}}}
            ]
        },
    }
    out, got = mutated(pod, "istio")
    assert out.injected
    assert named(got["spec"]["containers"])["app"]["readinessProbe"] == {
        "httpGet": {"path": "/", "port": "²"}
    }


# --- the core is total over typed pods ------------------------------------------------------

text = st.text(max_size=12) | st.sampled_from(
    ["²", "8080", "http", "a" * 70, "-", "app", "linkerd-proxy", "istio-proxy"]
)
int_or_string = st.integers(-(2**31), 2**31 - 1) | text
quantity = st.sampled_from(["100m", "1", "0.5", "1Gi", "junk", "", "-1", "1e3", "9" * 30]) | text
probe = st.fixed_dictionaries(
    {},
    optional={
        "httpGet": st.fixed_dictionaries({"port": int_or_string}, optional={"path": text, "scheme": text}),
        "tcpSocket": st.fixed_dictionaries({"port": int_or_string}),
        "grpc": st.fixed_dictionaries({"port": st.integers(-(2**31), 2**31 - 1)}),
        "exec": st.fixed_dictionaries({"command": st.lists(text, max_size=2)}),
        "periodSeconds": st.integers(-(2**31), 2**31 - 1),
    },
)
typed_container = st.fixed_dictionaries(
    {},
    optional={
        "name": text,
        "image": text,
        "ports": st.lists(
            st.fixed_dictionaries(
                {"containerPort": st.integers(-(2**31), 2**31 - 1)}, optional={"name": text, "protocol": text}
            ),
            max_size=3,
        ),
        "readinessProbe": probe,
        "livenessProbe": probe,
        "startupProbe": probe,
        "resources": st.fixed_dictionaries(
            {},
            optional={
                "requests": st.dictionaries(st.sampled_from(["cpu", "memory"]) | text, quantity, max_size=2),
                "limits": st.dictionaries(st.sampled_from(["cpu", "memory"]) | text, quantity, max_size=2),
            },
        ),
        "restartPolicy": text,
        "env": st.lists(st.fixed_dictionaries({"name": text}, optional={"value": text}), max_size=2),
        "securityContext": st.fixed_dictionaries(
            {},
            optional={
                "runAsUser": st.integers(-(2**40), 2**40),
                "privileged": st.booleans(),
                "runAsNonRoot": st.booleans(),
            },
        ),
    },
)
typed_volume = st.fixed_dictionaries(
    {},
    optional={"name": text, "emptyDir": st.just({}), "csi": st.fixed_dictionaries({"driver": text})},
)
annotation_keys = (
    st.sampled_from(
        [
            "mesh-injector.io/interception",
            "mesh-injector.io/native-sidecar",
            "mesh-injector.io/skip-inbound-ports",
            "mesh-injector.io/skip-outbound-ports",
            "mesh-injector.io/proxy-cpu-request",
            "mesh-injector.io/proxy-memory-limit",
            "mesh-injector.io/workload-protocol",
            "mesh-injector.io/throughput",
            "mesh-injector.io/iptables-fallback",
            ANN_STATUS,
            "traffic.sidecar.istio.io/excludeOutboundIPRanges",
            "traffic.sidecar.istio.io/excludeOutboundPorts",
            "config.linkerd.io/skip-outbound-ports",
            "sidecar.istio.io/status",
            "sidecar.istio.io/rewriteAppHTTPProbers",
            "linkerd.io/inject",
            "prometheus.io/port",
        ]
    )
    | text
)
annotation_values = (
    st.sampled_from(
        [
            "auto",
            "ebpf",
            "iptables",
            "microvm",
            "true",
            "false",
            "1-65535",
            "0",
            "{}",
            "[]",
            "null",
            '{"containers":["app"]}',
        ]
    )
    | text
)
typed_meta = st.fixed_dictionaries(
    {},
    optional={
        "name": text,
        "generateName": text,
        "namespace": text,
        "labels": st.dictionaries(
            st.sampled_from(["app", "mesh-injector.io/inject", "pod-template-hash"]) | text, text, max_size=3
        ),
        "annotations": st.dictionaries(annotation_keys, annotation_values, max_size=4),
        "ownerReferences": st.lists(
            st.fixed_dictionaries(
                {},
                optional={
                    "kind": st.sampled_from(["ReplicaSet", "Job", "StatefulSet"]) | text,
                    "name": text,
                    "controller": st.booleans(),
                    "apiVersion": text,
                    "uid": text,
                },
            ),
            max_size=2,
        ),
    },
)
typed_spec = st.fixed_dictionaries(
    {},
    optional={
        "containers": st.lists(typed_container, max_size=3),
        "initContainers": st.lists(typed_container, max_size=2),
        "volumes": st.lists(typed_volume, max_size=3),
        "hostNetwork": st.booleans(),
        "runtimeClassName": st.sampled_from(["kata-qemu", "gvisor", ""]) | text,
        "nodeName": st.sampled_from(["gen-a1", "legacy-1"]) | text,
        "nodeSelector": st.dictionaries(
            st.sampled_from(["pool"]) | text, st.sampled_from(["general", "gpu"]) | text, max_size=2
        ),
        "tolerations": st.lists(
            st.fixed_dictionaries(
                {}, optional={"key": text, "operator": text, "effect": text, "value": text}
            ),
            max_size=2,
        ),
        "restartPolicy": text,
        "serviceAccountName": text,
        "securityContext": st.fixed_dictionaries({}, optional={"runAsUser": st.integers(-(2**40), 2**40)}),
    },
)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    meta=typed_meta,
    spec=typed_spec | st.none(),
    flavour=st.sampled_from(sorted(POLICIES)),
    namespace=st.sampled_from([NS, "payments", "guarded", "sandbox", "default", ""]),
)
def test_admission_answers_every_pod_the_api_server_can_send(meta, spec, flavour, namespace):
    """Fields of the types the Pod schema gives them, any values: admission decides (no
    exception), a skip patches at most its reason annotation, and a patch applies."""
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": meta}
    if spec is not None:
        pod["spec"] = spec
    original = copy.deepcopy(pod)
    out = admit(review(pod, namespace), SNAPSHOTS[flavour].derive(), POLICIES[flavour])
    assert pod == original
    patched = jsonpatch.apply_patch(copy.deepcopy(original), out.patch)
    if not out.injected:
        assert all(op["path"].startswith("/metadata/annotations") for op in out.patch), out.patch
        changed = {
            k
            for k in (patched["metadata"].get("annotations") or {})
            if (original["metadata"].get("annotations") or {}).get(k) != patched["metadata"]["annotations"][k]
        }
        assert changed <= {ANN_SKIP}
