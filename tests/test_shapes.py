"""Pods of one template *shape* share one decision (``webhook.decide.memo``).

A changed Deployment's new template differs from its predecessor in an image tag, a
variable's value, a build annotation, a port: for a flavour whose rendering declares it
(``Flavour.shapes``) those pods share one memo entry, and each gets what the rendering makes
of its own ports put in. Here every golden case is decided again with those values changed,
once served from the shape's entry and once from scratch, and the two must agree in every
field of the outcome; the values the shape leaves out are also made to record their readers,
and a read of one fails the test.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import random
from collections import Counter
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import orjson
import pytest
import yaml

from tests.support import CASES, EXAMPLE, dry_run_args, load_case
from tests.test_memo_reads import LOG, Recorded, carried
from webhook import admission
from webhook.admission import admit
from webhook.dataplane import FLAVOURS, flavour
from webhook.dataplane.base import REDIRECTOR_PORT
from webhook.decide.memo import Entry, Unshared, shapeable, template_key, unread_annotation
from webhook.loading import load_policy, load_snapshot
from webhook.patch.reprint import PortsIn


def _shaped(path: Path) -> tuple[bool, bool]:
    """(a pod's creation decided with a flavour whose pods share shapes; a first injection)."""
    review = json.loads((path / "review.json").read_text())["request"]
    obj = review.get("object")
    if not isinstance(obj, dict) or review.get("operation") != "CREATE":
        return False, False
    policy = load_policy(dry_run_args(path, yaml.safe_load((path / "case.yaml").read_text()))["policy"])
    shapes = flavour(policy.proxy.flavour).shapes
    return shapes, shapes and shapeable(obj.get("metadata") or {})


_FOUND = {p: _shaped(p) for p in CASES}
SHAPED = [p for p in CASES if _FOUND[p][0]]
SHAPED_IDS = [p.name for p in SHAPED]
FIRST = [p for p in CASES if _FOUND[p][1]]  # re-injections are keyed by their whole template
FIRST_IDS = [p.name for p in FIRST]


def shaped_case(path: Any) -> Any:
    case = load_case(path)
    request = case.review["request"]
    # a build annotation of the user's own, as CI pipelines write
    meta = request["object"].setdefault("metadata", {})
    if isinstance(meta, dict) and isinstance(meta.setdefault("annotations", {}), dict):
        meta["annotations"]["example.com/build"] = "1"
        meta["annotations"].setdefault("prometheus.io/scrape", "true")
    return case


def varied(request: Mapping[str, Any], salt: str, ports: dict[int, int]) -> dict[str, Any]:
    """``request`` with every value a shape leaves out changed: images, variables' values,
    unread annotations' values; and each container port in ``ports`` renumbered."""
    out = copy.deepcopy(dict(request))
    obj = out["object"]
    annotations = (obj.get("metadata") or {}).get("annotations")
    if isinstance(annotations, dict):
        for k, v in annotations.items():
            if isinstance(v, str) and unread_annotation(k):
                annotations[k] = v + salt
    for key in ("containers", "initContainers"):
        for c in (obj.get("spec") or {}).get(key) or []:
            if not isinstance(c, dict):
                continue
            if isinstance(c.get("image"), str):
                c["image"] = c["image"] + salt
            for e in c.get("env") or []:
                if isinstance(e, dict) and isinstance(e.get("value"), str):
                    e["value"] = e["value"] + salt
            for p in c.get("ports") or []:
                if isinstance(p, dict) and type(p.get("containerPort")) is int:
                    p["containerPort"] = ports.get(p["containerPort"], p["containerPort"])
    return out


def container_ports(request: Mapping[str, Any]) -> list[int]:
    spec = request["object"].get("spec") or {}
    return [
        p["containerPort"]
        for key in ("containers", "initContainers")
        for c in spec.get(key) or []
        if isinstance(c, dict)
        for p in c.get("ports") or []
        if isinstance(p, dict) and type(p.get("containerPort")) is int
    ]


def proxy_of(patch: list[dict[str, Any]]) -> dict[str, Any]:
    """The Linkerd proxy a patch adds (a container, or one of the init containers it adds)."""
    for op in patch:
        value = op.get("value")
        for c in value if isinstance(value, list) else [value]:
            if isinstance(c, dict) and c.get("name") == "linkerd-proxy":
                return c
    raise AssertionError("no linkerd-proxy in the patch")


def same(served: Any, fresh: Any) -> None:
    assert orjson.dumps(served.patch) == orjson.dumps(fresh.patch)
    for name in ("injected", "mode", "mode_reason", "firewall", "skip", "resources", "workload", "warnings"):
        assert getattr(served, name) == getattr(fresh, name), name
    assert served.explanation == fresh.explanation


@pytest.mark.parametrize("path", SHAPED, ids=SHAPED_IDS)
def test_a_pod_of_a_shape_gets_what_a_fresh_decision_gives(path: Any) -> None:
    case = shaped_case(path)
    request = case.review["request"]
    plane = flavour(case.policy.proxy.flavour)
    shared = case.snapshot.derive()
    for _ in range(2):  # the first pod of a shape is only decided; the second keeps it
        admit(copy.deepcopy(request), shared, case.policy)
    key = template_key(request, shared, case.policy, False)
    shape = key[3].key() if key is not None and key[3] is not None else None
    kept = shared.templates.get(shape[0]) if shape is not None else None
    rng = random.Random(path.name)
    own = container_ports(request)
    # ordinary numbers, and those the decision compares: the proxy's own, Merbridge's
    # listener, and each other's (two ports made one)
    special = [*plane.ports, REDIRECTOR_PORT, *own]
    for round_ in range(6):
        numbers = (
            {p: rng.randrange(1, 65536) for p in own}
            if round_ % 2 == 0
            else {p: rng.choice(special) for p in own}
        )
        variant = varied(request, f"-v{round_}", numbers)
        served = admit(copy.deepcopy(variant), shared, case.policy)
        fresh = admit(copy.deepcopy(variant), case.snapshot.derive(), case.policy)
        same(served, fresh)
        ordinary = not set(own) & set(special[: len(plane.ports) + 1])
        if round_ == 0 and ordinary and isinstance(kept, Entry) and shape is not None:
            # ordinary numbers: the same shape, served from its entry
            again = template_key(variant, shared, case.policy, False)
            assert again is not None and again[3] is not None and again[3].key() == shape


def test_the_bench_templates_share_one_shape_and_each_gets_its_own_ports() -> None:
    """The default Linkerd flavour, a new template per pod: one entry, each patch with its
    own inbound ports and the proxy's fingerprint made again, equal to a fresh decision."""
    policy = load_policy()
    snapshot = load_snapshot(policy=policy, now=0, cluster="examples/cluster.yaml")
    reviews = []
    for i in range(6):
        request = copy.deepcopy(EXAMPLE["request"])
        app = request["object"]["spec"]["containers"][0]
        app["image"] = f"{app['image']}-{i}"
        app["ports"][0]["containerPort"] = 10000 + i
        request["object"]["metadata"].setdefault("annotations", {})["example.com/build"] = str(i)
        reviews.append(request)
    outs = [admit(r, snapshot, policy) for r in reviews]
    assert len(snapshot.templates) == 1
    template = template_key(reviews[-1], snapshot, policy, False)
    shape = template[3].key() if template is not None and template[3] is not None else None
    entry = snapshot.templates.get(shape[0]) if shape is not None else None
    assert isinstance(entry, Entry) and isinstance(entry.ports, PortsIn)
    for r, out in zip(reviews, outs, strict=True):
        fresh = admit(r, snapshot.derive(), policy)
        same(out, fresh)
        env = proxy_of(out.patch)["env"]
        ports = next(e["value"] for e in env if e["name"] == "LINKERD2_PROXY_INBOUND_PORTS")
        assert str(r["object"]["spec"]["containers"][0]["ports"][0]["containerPort"]) in ports.split(",")
    assert len({orjson.dumps(o.patch) for o in outs}) == len(outs)


STRINGS = ("image", "env", "annotation")


def recording(request: Mapping[str, Any]) -> dict[str, Any]:
    """``request`` with each value a shape leaves out (but port numbers) recording its uses."""
    out = copy.deepcopy(dict(request))
    obj = out["object"]
    meta = obj.get("metadata") or {}
    if isinstance(meta.get("annotations"), dict):
        meta["annotations"] = {
            k: Recorded(v, f"annotation {k}") if isinstance(v, str) and unread_annotation(k) else v
            for k, v in meta["annotations"].items()
        }
    for key in ("containers", "initContainers"):
        for c in (obj.get("spec") or {}).get(key) or []:
            if not isinstance(c, dict):
                continue
            if isinstance(c.get("image"), str):
                c["image"] = Recorded(c["image"], f"image of {c.get('name')}")
            for e in c.get("env") or []:
                if isinstance(e, dict) and isinstance(e.get("value"), str):
                    e["value"] = Recorded(e["value"], f"env {e.get('name')} of {c.get('name')}")
    return out


@pytest.mark.parametrize("path", FIRST, ids=FIRST_IDS)
def test_no_part_of_a_decision_reads_what_a_shape_leaves_out(path: Any) -> None:
    case = shaped_case(path)
    request = recording(case.review["request"])
    LOG.clear()
    out = admission._admit(request, case.snapshot.derive(), case.policy, assume_opt_in=False, alias=True)
    reads = Counter(LOG)
    assert [f"{module} reads {field}" for field, module in sorted(reads)] == []
    assert list(carried(out.patch)) == []


def test_the_recording_sees_a_renderer_read_an_image(monkeypatch: pytest.MonkeyPatch) -> None:
    case = shaped_case(next(p for p in CASES if p.name.startswith("01-")))
    plane = flavour(case.policy.proxy.flavour)

    def render(build: Any, pod: Mapping[str, Any], policy: Any) -> Any:
        image = pod["spec"]["containers"][0]["image"]
        rendered = plane.render(build, pod, policy)
        arm = str(image.endswith("-arm"))
        return dataclasses.replace(rendered, labels={**rendered.labels, "example.com/arm": arm})

    monkeypatch.setitem(FLAVOURS, plane.name, dataclasses.replace(plane, render=render))
    LOG.clear()
    request = recording(case.review["request"])
    admission._admit(request, case.snapshot.derive(), case.policy, assume_opt_in=False, alias=True)
    assert any(field.startswith("image of ") and module == __name__ for field, module in LOG)


def test_a_shape_whose_rendering_copies_a_left_out_value_is_not_shared(monkeypatch) -> None:
    """A rendering that copies the app's image into the pod (which ``shapes`` says it never
    does) makes the token reach the patch: the shape is marked unshared and each template is
    keyed on its own, so every pod still gets its own answer."""
    policy = load_policy()
    snapshot = load_snapshot(policy=policy, now=0, cluster="examples/cluster.yaml")
    plane = flavour(policy.proxy.flavour)

    def render(build: Any, pod: Mapping[str, Any], p: Any) -> Any:
        rendered = plane.render(build, pod, p)
        env = [*rendered.proxy["env"], {"name": "APP_IMAGE", "value": pod["spec"]["containers"][0]["image"]}]
        return dataclasses.replace(rendered, proxy={**rendered.proxy, "env": env})

    monkeypatch.setitem(FLAVOURS, plane.name, dataclasses.replace(plane, render=render))
    reviews = []
    for tag in ("a", "b", "c", "c"):
        request = copy.deepcopy(EXAMPLE["request"])
        request["object"]["spec"]["containers"][0]["image"] += f"-{tag}"
        reviews.append(request)
    outs = [admit(r, snapshot, policy) for r in reviews]
    template = template_key(reviews[0], snapshot, policy, False)
    shape = template[3].key() if template is not None and template[3] is not None else None
    assert shape is not None and isinstance(snapshot.templates.get(shape[0]), Unshared)
    for r, out in zip(reviews, outs, strict=True):
        image = r["object"]["spec"]["containers"][0]["image"]
        assert {"name": "APP_IMAGE", "value": image} in proxy_of(out.patch)["env"]
        same(out, admit(r, snapshot.derive(), policy))
    whole = template_key(reviews[3], snapshot, policy, False)
    assert whole is not None and isinstance(snapshot.templates.get(whole[0]), Entry)  # "c" came twice


def test_a_flavour_without_shapes_keys_pods_by_their_whole_template() -> None:
    case = load_case(next(p for p in CASES if flavour(load_case(p).policy.proxy.flavour).name == "istio"))
    request = case.review["request"]
    other = varied(request, "-x", {})
    one = template_key(request, case.snapshot, case.policy, False)
    two = template_key(other, case.snapshot, case.policy, False)
    assert one is not None and two is not None and one[3] is None and one[0] != two[0]


def test_a_template_seen_again_finds_its_shape_with_what_its_ports_put_in() -> None:
    """A template's second pod keeps, under the template's own key, its shape's key and what
    its ports put into the shape's patch; its later pods (another workload's too) are served
    from that without the shape's key or the ports' text being made again."""
    policy = load_policy()
    snapshot = load_snapshot(policy=policy, now=0, cluster="examples/cluster.yaml")

    def pod(port: int, name: str) -> dict[str, Any]:
        request = copy.deepcopy(EXAMPLE["request"])
        request["object"]["spec"]["containers"][0]["ports"][0]["containerPort"] = port
        request["object"]["metadata"]["ownerReferences"][0]["name"] = f"{name}-7d9c8b6f5"
        return request

    for _ in range(2):
        admit(pod(10001, "checkout"), snapshot, policy)  # the shape, kept with 10001
    for _ in range(2):
        admit(pod(10002, "checkout"), snapshot, policy)  # another template of it, seen twice
    template = template_key(pod(10002, "checkout"), snapshot, policy, False)
    assert template is not None and template[3] is not None
    shape = template[3].key()
    kept = snapshot.templates.get(template[0])
    assert shape is not None and type(kept) is tuple and kept[0] == shape[0]
    assert kept[1][0][1:] == ("10001", "10002")  # the variable's value, first of the edits
    for name in ("checkout", "payments"):
        served = admit(pod(10002, name), snapshot, policy)
        same(served, admit(pod(10002, name), snapshot.derive(), policy))
        env = proxy_of(served.patch)["env"]
        ports = next(e["value"] for e in env if e["name"] == "LINKERD2_PROXY_INBOUND_PORTS").split(",")
        assert "10002" in ports and "10001" not in ports
