"""Kubernetes quantities (``100m``, ``128Mi``), parsed by the Kubernetes client's own
``parse_quantity``.

Importing anything from the ``kubernetes`` package runs its ``__init__``, which loads the
whole generated API client (about a third of a second). The dry-run verbs parse
quantities but never talk to an API server, so the client's quantity module (it needs
only ``decimal``) is loaded from its file on its own. Once the client is imported anyway
(``serve``), its own function is used.
"""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path
from types import ModuleType


def _standalone() -> ModuleType:
    package = importlib.util.find_spec("kubernetes")  # locates the package, does not run it
    if package is None or not package.submodule_search_locations:
        raise ImportError("the kubernetes client is not installed")
    path = Path(next(iter(package.submodule_search_locations))) / "utils" / "quantity.py"
    spec = importlib.util.spec_from_file_location("mesh_injector_k8s_quantity", path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load {path}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _load() -> Callable[[object], Decimal]:
    loaded = sys.modules.get("kubernetes.utils.quantity")
    return loaded.parse_quantity if loaded is not None else _standalone().parse_quantity


parse_quantity: Callable[[object], Decimal] = _load()
