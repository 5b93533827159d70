"""The package's layering, read from its imports (those inside functions too): no module
imports one in a layer above its own, and no modules import each other in a cycle."""

from __future__ import annotations

import ast
import graphlib
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent / "webhook"

# Bottom to top. A module belongs to the layer of the longest name here that is it or holds it.
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
        "webhook.memory",
        "webhook.progress",
        "webhook.kubeschema",
        "webhook.policy",
    ),
    # what a decision reads and returns
    (
        "webhook.usage.samples",
        "webhook.usage.history",
        "webhook.cluster.snapshot",
        "webhook.cluster.kubeapi",
        "webhook.patch.diff",
        "webhook.outcome",
    ),
    # the parts of a decision, and the sources that keep the cluster state current
    (
        "webhook.cluster",
        "webhook.usage",
        "webhook.decide",
        "webhook.modes",
        "webhook.dataplane",
        "webhook.podsecurity",
    ),
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


def test_no_modules_import_each_other_in_a_cycle() -> None:
    graph = {m: {t for t in imported(p) if t in MODULES and t != m} for m, p in MODULES.items()}
    graphlib.TopologicalSorter(graph).prepare()  # raises CycleError naming the cycle


def test_the_checks_see_an_upward_import_and_a_cycle() -> None:
    # the reading itself: an import inside a function counts, as does a cycle of two
    assert "webhook.serve.run" in set(imported(ROOT / "cli.py"))
    assert layer("webhook.decide.sizing") > layer("webhook.core")
    with pytest.raises(graphlib.CycleError):
        graphlib.TopologicalSorter({"a": {"b"}, "b": {"a"}}).prepare()
