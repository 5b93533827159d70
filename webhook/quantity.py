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


# --- what the API server decodes as a quantity -------------------------------------------

_DIGITS = frozenset("0123456789")
_SUFFIX_CHARS = frozenset("eEinumkKMGTP")
_DECIMAL = {"": 0, "n": -9, "u": -6, "m": -3, "k": 3, "M": 6, "G": 9, "T": 12, "P": 15, "E": 18}
_BINARY = {"Ki": 10, "Mi": 20, "Gi": 30, "Ti": 40, "Pi": 50, "Ei": 60}
# characters a JSON encoder writes as escapes: the API server's trimming never sees them as space
_ESCAPED = frozenset("\t\n\r\x0b\x0c\u2028\u2029")


def decodes(value: object) -> bool:
    """Whether the API server decodes ``value`` (a manifest's JSON value) as a resource
    quantity: a finite number, or a string its parser takes (``250m``, ``1Gi``, ``1e3``,
    ``1.``; also, as it does, a string with no digits before a decimal suffix, ``m``, read as
    0), written from k8s.io/apimachinery's ParseQuantity: the string's JSON text is trimmed
    of spaces, scanned as sign, digits, fraction and suffix, and the suffix interpreted; a
    value too long for its fast path must have a digit."""
    if isinstance(value, bool):
        return False
    if isinstance(value, int):
        return True
    if isinstance(value, float):
        return value == value and value not in (float("inf"), float("-inf"))
    if not isinstance(value, str):
        return False
    text = value
    while text and text[0].isspace() and text[0] not in _ESCAPED:
        text = text[1:]
    while text and text[-1].isspace() and text[-1] not in _ESCAPED:
        text = text[:-1]
    return _parses(text)


def _parses(text: str) -> bool:
    if not text:
        return False
    end = len(text)
    pos = 1 if text[0] in "+-" else 0
    while pos < end and text[pos] == "0":
        pos += 1
    if pos >= end:
        return True  # zeros (or a sign) only: 0
    start = pos
    while pos < end and text[pos] in _DIGITS:
        pos += 1
    num, denom, suffix = text[start:pos] or "0", "", ""
    if pos < end and text[pos] == ".":
        pos += 1
        start = pos
        while pos < end and text[pos] in _DIGITS:
            pos += 1
        denom = text[start:pos]
    value = text[:pos]
    if pos < end:
        start = pos
        while pos < end and text[pos] in _SUFFIX_CHARS:
            pos += 1
        if pos < end and text[pos] in "+-":
            pos += 1
        while pos < end and text[pos] in _DIGITS:
            pos += 1
        if pos < end:
            return False  # something after the suffix's digits
        suffix = text[start:]
    if suffix in _DECIMAL:
        binary, exponent = False, _DECIMAL[suffix]
    elif suffix in _BINARY:
        binary, exponent = True, _BINARY[suffix]
    elif len(suffix) > 1 and suffix[0] in "eE" and _is_int(suffix[1:]):
        binary, exponent = False, int(suffix[1:])
    else:
        return False  # not a suffix
    # the fast path (an int64 with a scale) takes digits it has room for; beyond it the
    # number is parsed as a decimal, which needs a digit
    if binary:
        fits = not denom and 15 - len(num) - int(exponent * 3 / 10) - 1 >= 0 and int(num) << exponent < 2**63
    else:
        fits = 18 - len(num) - len(denom) >= 0 and exponent - len(denom) >= -9
    return fits or any(c in _DIGITS for c in value)


def _is_int(text: str) -> bool:
    digits = text[1:] if text[:1] in "+-" else text
    return bool(digits) and all(c in _DIGITS for c in digits) and -(2**63) <= int(text) < 2**63
