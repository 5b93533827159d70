"""The outcome memo's key against what the decision really reads.

``webhook.decide.memo.template_key`` lets pods that differ only in names, owners and labels
share one outcome, and says which of those the decision reads. Here every golden case (every
row of the decision table, every flavour, re-injections among them) is decided again over a
recording view of the pod: each label value, name, uid and owner field is a string that notes
which code uses it (compares, measures, formats or slices it), and each one that reaches the
patch. A read the key does not declare fails the test: a decider or renderer that starts
reading one more field would otherwise be served a sibling's outcome.

Reads inside C code that takes a string's characters directly (``re``, ``str.join``) are not
seen; where such a value reaches the patch, the walk of the patch sees it.
"""

from __future__ import annotations

import copy
import dataclasses
import sys
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import pytest

import webhook.workload
from tests.support import CASES, load_case
from webhook import admission
from webhook.dataplane import FLAVOURS, flavour
from webhook.decide.memo import template_key
from webhook.workload import WorkloadKey

Read = tuple[str, str]  # (field, the module that read it)


class Recorded(str):
    """A string of the pod that notes, in ``LOG``, each use of its value."""

    field: str

    def __new__(cls, value: str, field: str) -> Recorded:
        obj = super().__new__(cls, value)
        obj.field = field
        return obj

    def __getnewargs__(self) -> tuple[str, str]:
        # a copy (jsonpatch deep-copies what it adds) records too; a recording value kept in a
        # process-wide cache may reach a later test's patch, where it must copy like a string
        return (str.__str__(self), self.field)


LOG: Counter[Read] = Counter()
_WRAPPERS: set[Any] = set()


def _note(value: Recorded) -> None:
    frame = sys._getframe(2)
    while frame is not None and frame.f_code in _WRAPPERS:
        frame = frame.f_back
    LOG[(value.field, frame.f_globals.get("__name__", "?") if frame else "?")] += 1


def _wrapped(name: str) -> Callable[..., Any]:
    base = getattr(str, name)

    def method(self: Recorded, *args: Any, **kwargs: Any) -> Any:
        if name in ("__eq__", "__ne__") and args and args[0] is self:
            return base(self, *args)  # a value compared with itself tells nothing
        _note(self)
        return base(self, *args, **kwargs)

    _WRAPPERS.add(method.__code__)
    return method


_USES = (
    *("__eq__ __ne__ __lt__ __le__ __gt__ __ge__ __len__ __iter__ __getitem__ __contains__".split()),
    *("__add__ __mod__ __mul__ __format__ __str__ __repr__ encode format join".split()),
    *("startswith endswith find rfind index rindex count split rsplit partition rpartition".split()),
    *("lower upper casefold strip lstrip rstrip removeprefix removesuffix replace splitlines".split()),
    *("isdigit isalnum isalpha isdecimal isnumeric isspace islower isupper isascii".split()),
)
for _name in _USES:
    setattr(Recorded, _name, _wrapped(_name))
Recorded.__hash__ = str.__hash__  # type: ignore[method-assign]  # copying a dict hashes keys


def recorded(obj: dict[str, Any]) -> dict[str, Any]:
    """``obj`` with its identity (names, uid, owners) and its labels' values recording."""
    meta = dict(obj.get("metadata") or {})
    for key in ("name", "generateName", "uid", "creationTimestamp"):
        if isinstance(meta.get(key), str):
            meta[key] = Recorded(meta[key], key)
    if isinstance(meta.get("labels"), dict):
        meta["labels"] = {
            k: Recorded(v, f"labels.{k}") if isinstance(v, str) else v for k, v in meta["labels"].items()
        }
    if isinstance(meta.get("ownerReferences"), list):
        meta["ownerReferences"] = [
            {k: Recorded(v, f"owner.{k}") if isinstance(v, str) else v for k, v in o.items()}
            if isinstance(o, dict)
            else o
            for o in meta["ownerReferences"]
        ]
    return {**obj, "metadata": meta}


def carried(node: object) -> Iterator[str]:
    """The recorded values that reached ``node`` (the patch)."""
    if isinstance(node, Recorded):
        yield node.field
    elif isinstance(node, dict):
        for key, value in node.items():
            yield from carried(key)
            yield from carried(value)
    elif isinstance(node, list):
        for value in node:
            yield from carried(value)


@pytest.fixture
def plain_workload_names(monkeypatch: pytest.MonkeyPatch) -> None:
    """The workload key a decision uses holds plain strings: the key is declared as a whole
    (its kind is in the memo key, its name aliased or in the key), so only reads of the pod's
    fields themselves are judged."""
    real = webhook.workload.workload_key

    def plain(pod: Mapping[str, Any], namespace: str) -> WorkloadKey:
        key = real(pod, namespace)
        return WorkloadKey(str.__str__(key.namespace), str.__str__(key.kind), str.__str__(key.name))

    for module in list(sys.modules.values()):
        if (
            getattr(module, "__name__", "").startswith("webhook.")
            and getattr(module, "workload_key", None) is real
        ):
            monkeypatch.setattr(module, "workload_key", plain)


def reads(case: Any, alias: bool) -> tuple[Counter[Read], list[str]]:
    """What deciding ``case`` again (with the stand-in workload name, or not) read of the
    pod's identity and labels, and which of those values reached the patch."""
    request = copy.deepcopy(case.review["request"])
    request["object"] = recorded(request["object"])
    LOG.clear()
    out = admission._admit(request, case.snapshot.derive(), case.policy, assume_opt_in=False, alias=alias)
    return Counter(LOG), list(carried(out.patch))


def keyed(case: Any, field: str) -> bool:
    """Whether the memo key tells pods apart that differ in ``field`` (``labels.<name>``,
    ``owner.<key>``) alone: the value changed, the key computed again."""
    request = case.review["request"]
    before = template_key(request, case.snapshot, case.policy, False)
    if before is None:
        return True  # decided on its own: the whole object is the key
    changed = copy.deepcopy(request)
    meta = changed["object"]["metadata"]
    kind, _, name = field.partition(".")
    if kind == "labels":
        meta["labels"][name] = meta["labels"][name] + "-x"
    else:
        for owner in meta["ownerReferences"]:
            if isinstance(owner.get(name), str):
                owner[name] += "-x"
    after = template_key(changed, case.snapshot, case.policy, False)
    return after is None or after[0] != before[0]


def undeclared(case: Any, found: Counter[Read], in_patch: list[str]) -> list[str]:
    out = []
    for field, module in sorted(found):
        if module == "webhook.workload":
            continue  # the workload's key, lifecycle and protocol: each in the memo key
        if field.startswith(("labels.", "owner.")) and keyed(case, field):
            continue
        if (module, field) in {("webhook.admission", "name"), ("webhook.admission", "generateName")}:
            continue  # the explanation's "pod:" line (an explanation is never memoised)
        out.append(f"{module} reads {field}")
    out += [f"the patch carries {field}" for field in in_patch if not keyed(case, field)]
    return out


CASE_IDS = [p.name for p in CASES]


@pytest.mark.usefixtures("plain_workload_names")
@pytest.mark.parametrize("path", CASES, ids=CASE_IDS)
def test_every_read_of_a_pods_identity_and_labels_is_declared(path: Any) -> None:
    case = load_case(path)
    if not isinstance(case.review["request"].get("object"), dict):
        pytest.skip("a review without a pod object: no reads of a pod to record (not an environment)")
    for alias in (False, True):
        found, in_patch = reads(case, alias)
        assert undeclared(case, found, in_patch) == []


@pytest.mark.usefixtures("plain_workload_names")
def test_the_recording_sees_a_renderer_read_an_undeclared_label(monkeypatch: pytest.MonkeyPatch) -> None:
    case = load_case(next(p for p in CASES if p.name.startswith("01-")))
    case.review["request"]["object"]["metadata"]["labels"]["team"] = "payments"
    plane = flavour(case.policy.proxy.flavour)

    def render(build: Any, pod: Mapping[str, Any], policy: Any) -> Any:
        team = pod["metadata"]["labels"].get("team")
        rendered = plane.render(build, pod, policy)
        return dataclasses.replace(rendered, labels={**rendered.labels, "example.com/team": team.upper()})

    monkeypatch.setitem(FLAVOURS, plane.name, dataclasses.replace(plane, render=render))
    found, in_patch = reads(case, False)
    assert ("labels.app", "webhook.workload") in found  # the Service's selector: declared
    assert undeclared(case, found, in_patch) == [f"{__name__} reads labels.team"]
    # and one that carries a label's value to the patch as it is
    monkeypatch.setitem(
        FLAVOURS,
        plane.name,
        dataclasses.replace(
            plane,
            render=lambda b, pod, p: dataclasses.replace(
                plane.render(b, pod, p), labels={"example.com/team": pod["metadata"]["labels"]["team"]}
            ),
        ),
    )
    found, in_patch = reads(case, False)
    assert "the patch carries labels.team" in undeclared(case, found, in_patch)


def test_a_pod_that_carries_a_label_the_flavour_writes_is_not_served_a_siblings_outcome() -> None:
    """The patch is a diff against the pod's own values of the labels an injection writes: a
    pod that already has one (with the value we would write: it stays the pod's own) must not
    be given the outcome of a sibling without it."""
    case = load_case(next(p for p in CASES if p.name.startswith("01-")))
    request = case.review["request"]
    sibling = copy.deepcopy(request)
    sibling["object"]["metadata"]["labels"]["linkerd.io/workload-ns"] = request["namespace"]
    shared = case.snapshot.derive()
    first = admission.admit(request, shared, case.policy)
    served = admission.admit(sibling, shared, case.policy)
    fresh = admission.admit(sibling, case.snapshot.derive(), case.policy)
    assert served.patch == fresh.patch
    assert any(op["path"] == "/metadata/labels/linkerd.io~1workload-ns" for op in first.patch)
    assert not any(op["path"] == "/metadata/labels/linkerd.io~1workload-ns" for op in fresh.patch)
