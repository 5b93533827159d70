"""The package's layering, read from its imports (those inside functions too): no module
imports one in a layer above its own, and no modules import each other in a cycle."""

from __future__ import annotations

import ast
import graphlib
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from webhook.dataplane import FLAVOURS

ROOT = Path(__file__).resolve().parent.parent / "webhook"

# Bottom to top, by package (or top-level module): every module of a package is in its
# package's layer, so an import between packages is allowed one way only.
LAYERS: tuple[tuple[str, ...], ...] = (
    # shared types, constants and parsers: what every layer may use
    (
        "webhook",
        "webhook.core",
        "webhook.reasons",
        "webhook.errors",
        "webhook.versions",
        "webhook.quantity",
        "webhook.workload",
        "webhook.flagtypes",
        "webhook.yamltext",
        "webhook.nested",
        "webhook.memory",
        "webhook.progress",
        "webhook.kubeschema",
        "webhook.policy",
        "webhook.outcome",
    ),
    # what each mesh's data plane is, and what Pod Security allows
    ("webhook.dataplane", "webhook.podsecurity"),
    # talking to the API server
    ("webhook.kubeapi",),
    # observed usage, and the sources that keep it current
    ("webhook.usage",),
    # the cluster as a decision reads it (with its usage), and the caches that keep it current
    ("webhook.cluster",),
    # the parts of a decision: the pod, its nodes, its placement and size
    ("webhook.decide",),
    # the interception modes and the table that picks one
    ("webhook.modes",),
    # the decision: admission orchestrates, patch applies it
    ("webhook.patch", "webhook.admission"),
    # the front ends
    ("webhook.loading", "webhook.manifests", "webhook.fleet", "webhook.serve"),
    ("webhook.cli", "webhook.__main__"),
)


def modules() -> dict[str, Path]:
    found = {}
    for path in ROOT.rglob("*.py"):
        parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join(parts)] = path
    return found


MODULES = modules()


def imported(path: Path) -> Iterator[str]:
    """The modules of ours that ``path`` imports (``from a import b`` is ``a.b`` where that
    is a module)."""
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            if node.module.split(".")[0] != "webhook":
                continue
            for alias in node.names:
                name = f"{node.module}.{alias.name}"
                yield name if name in MODULES else node.module
        elif isinstance(node, ast.Import):
            yield from (a.name for a in node.names if a.name.split(".")[0] == "webhook")


def layer(module: str) -> int:
    matches = [
        (len(name), rank)
        for rank, names in enumerate(LAYERS)
        for name in names
        if module == name or (name != "webhook" and module.startswith(name + "."))
    ]
    assert matches, f"{module} is in no layer: add it to LAYERS"
    return max(matches)[1]


def test_relative_imports_are_not_used() -> None:
    # the checks below read absolute imports only
    relative = [
        str(p.relative_to(ROOT.parent))
        for p in MODULES.values()
        if any(isinstance(n, ast.ImportFrom) and n.level for n in ast.walk(ast.parse(p.read_text())))
    ]
    assert relative == []


@pytest.mark.parametrize("module", sorted(MODULES))
def test_no_module_imports_from_a_layer_above_its_own(module: str) -> None:
    upward = [
        f"{module} (layer {layer(module)}) imports {target} (layer {layer(target)})"
        for target in imported(MODULES[module])
        if layer(target) > layer(module)
    ]
    assert upward == []


def test_a_package_is_one_layer() -> None:
    # no module is given a layer apart from its package's: an import that points up from a
    # package cannot be allowed by listing the module it needs lower down
    named = [name for names in LAYERS for name in names]
    assert [name for name in named if name.count(".") > 1] == []
    assert len(named) == len(set(named))
    packages = {".".join(m.split(".")[:2]) for m in MODULES if m.count(".") >= 2}
    assert packages <= set(named), packages - set(named)


def test_the_layers_order_the_packages_that_used_to_import_each_other() -> None:
    # the decision's parts below the modes that use them; a memo's key below the patch;
    # usage below the cluster state that holds it
    assert layer("webhook.decide.memo") < layer("webhook.modes.choice") < layer("webhook.patch.diff")
    assert layer("webhook.usage.metricsapi") < layer("webhook.cluster.snapshot")
    assert layer("webhook.kubeapi") < layer("webhook.usage.metricsapi")
    assert layer("webhook.outcome") < layer("webhook.decide.memo")


def test_no_modules_import_each_other_in_a_cycle() -> None:
    graph = {m: {t for t in imported(p) if t in MODULES and t != m} for m, p in MODULES.items()}
    assert sum(map(len, graph.values())) > len(graph), "the imports were read"
    try:
        order = list(graphlib.TopologicalSorter(graph).static_order())
    except graphlib.CycleError as exc:
        pytest.fail(f"modules import each other in a cycle: {' -> '.join(exc.args[1])}")
    # an order in which every module comes after everything it imports exists
    position = {m: i for i, m in enumerate(order)}
    assert set(position) == set(MODULES)
    assert all(position[t] < position[m] for m, targets in graph.items() for t in targets)


def test_the_checks_see_an_upward_import_and_a_cycle() -> None:
    # the reading itself: an import inside a function counts, as does a cycle of two
    assert "webhook.serve.run" in set(imported(ROOT / "cli.py"))
    assert layer("webhook.decide.sizing") > layer("webhook.core")
    with pytest.raises(graphlib.CycleError):
        graphlib.TopologicalSorter({"a": {"b"}, "b": {"a"}}).prepare()


# --- flavours are named only in webhook/dataplane/ ------------------------------------

FLAVOUR_NAMES = frozenset(FLAVOURS)
# a literal that is a flavour's name but means something else
NOT_A_FLAVOUR = {("cluster/snapshot.py", "istio"): "Merbridge's own default for its --mode flag"}
_WORD = re.compile(r"[A-Z]?[a-z]+|[A-Z]+(?![a-z])|\d+")


def _docstrings(tree: ast.AST) -> set[int]:
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            first = node.body[0] if node.body else None
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                found.add(id(first.value))
    return found


def _identifiers(node: ast.AST) -> list[str]:
    if isinstance(node, ast.Name):
        return [node.id]
    if isinstance(node, ast.Attribute):
        return [node.attr]
    if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
        return [node.name]
    if isinstance(node, ast.arg):
        return [node.arg]
    if isinstance(node, ast.keyword) and node.arg:
        return [node.arg]
    if isinstance(node, ast.alias):
        return [node.name.rsplit(".", 1)[-1], *([node.asname] if node.asname else [])]
    return []


def flavour_mentions(source: str, where: str = "") -> list[str]:
    """Code (not comments or docstrings) that names a flavour: a string that is a flavour's
    name, or an identifier with a flavour's name as one of its words."""
    tree = ast.parse(source)
    docs = _docstrings(tree)
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docs:
            name = node.value.strip().lower()
            if name in FLAVOUR_NAMES and (where, name) not in NOT_A_FLAVOUR:
                out.append(f"{where}:{node.lineno}: the string {node.value!r}")
        for ident in _identifiers(node):
            named = {w.lower() for part in ident.split("_") for w in _WORD.findall(part)} & FLAVOUR_NAMES
            if named:
                out.append(f"{where}:{getattr(node, 'lineno', '?')}: the name {ident}")
    return out


def test_no_flavour_is_named_outside_the_data_plane_package() -> None:
    # a flavour is one module in webhook/dataplane/ and its entry in FLAVOURS: what it
    # renders, reads of its control plane, leaves on a pod and keeps in the policy file.
    # Everything else asks the registry, so a new flavour touches nothing outside.
    found = [
        mention
        for path in sorted(ROOT.rglob("*.py"))
        if "dataplane" not in path.relative_to(ROOT).parts
        for mention in flavour_mentions(path.read_text(), str(path.relative_to(ROOT)))
    ]
    assert found == []


def test_the_flavour_check_sees_a_name_in_code_and_not_in_text() -> None:
    code = (
        '"""Linkerd and Istio are described here."""\n'
        "# istio in a comment\n"
        'if plane.name == "istio":\n'
        "    s = policy.proxy.linkerd\n"
        "    LinkerdSettings = 1\n"
        'text = "sidecar.istio.io/status"\n'
    )
    found = flavour_mentions(code)
    assert found == [":3: the string 'istio'", ":4: the name linkerd", ":5: the name LinkerdSettings"], found
