"""YAML read and written fast, with PyYAML's meaning.

``inject`` reads every document of a manifest and writes every field it adds as YAML
lines (webhook/manifests/roundtrip.py). PyYAML's C parser is quick, but resolving each plain scalar's
type and building the Python objects run in Python, and so does its representer when
dumping: for 1,000 documents that was most of the time. So:

- **Reading**: the loader remembers the type each plain scalar resolves to (it depends on
  the text alone), and documents of strings, maps, sequences, decimal integers, booleans
  and nulls are built from the composed nodes directly. Anything else (floats, dates,
  merge keys, binary, sets, non-string keys) is built by PyYAML's own constructor.
- **Writing**: the layout (block mappings, sequences not indented under their key,
  ``{}``/``[]`` for empty ones) is written directly, and the style of each distinct scalar
  is still PyYAML's: it is dumped once as a mapping value and the result is remembered. A
  scalar PyYAML writes over several lines, and a key PyYAML would not write as a simple
  key, are dumped by PyYAML in place. No anchors are written: a value used twice is written
  twice.

``tests/test_roundtrip.py`` checks both against PyYAML on generated values.
"""

from __future__ import annotations

import re
from typing import Any

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode


class _Dumper(getattr(yaml, "CSafeDumper", yaml.SafeDumper)):  # type: ignore[misc]
    """PyYAML's safe dumper without anchors: a value used twice is written twice (a
    manifest in git should not gain ``&id001``/``*id001``)."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


_WIDTH = 1 << 16  # never fold a long line
_MEMO_LIMIT = 1 << 16

_BaseLoader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
_STR = "tag:yaml.org,2002:str"
_MAP = "tag:yaml.org,2002:map"
_SEQ = "tag:yaml.org,2002:seq"
_INT = "tag:yaml.org,2002:int"
_BOOL = "tag:yaml.org,2002:bool"
_NULL = "tag:yaml.org,2002:null"
_DECIMAL = re.compile(r"[-+]?(?:0|[1-9][0-9]*)\Z")
_BOOLS = {"yes": True, "no": False, "true": True, "false": False, "on": True, "off": False}
_tags: dict[str, str] = {}  # plain scalar -> its resolved tag


class Loader(_BaseLoader):  # type: ignore[misc,valid-type]
    """PyYAML's safe loader (the C parser where built) with plain scalars' resolved tags
    remembered: resolution depends only on the scalar's text."""

    def resolve(self, kind: type[Node], value: Any, implicit: tuple[bool, bool]) -> str:
        if kind is ScalarNode:
            if not implicit[0]:
                return _STR  # quoted: always a string
            try:
                return _tags[value]
            except KeyError:
                tag: str = _BaseLoader.resolve(self, kind, value, implicit)
                if len(_tags) < _MEMO_LIMIT:
                    _tags[value] = tag
                return tag
        resolved: str = _BaseLoader.resolve(self, kind, value, implicit)
        return resolved


class _Elsewhere(Exception):
    """A node PyYAML's constructor must build."""


def _build(node: Node) -> Any:
    tag = node.tag
    if tag == _STR:
        return node.value
    if tag == _MAP and isinstance(node, MappingNode):
        out = {}
        for key, value in node.value:
            if key.tag != _STR:
                raise _Elsewhere  # a merge key, or a key that is not a string
            if key.value in out:
                _refuse_duplicates(node)
            out[key.value] = _build(value)
        return out
    if tag == _SEQ and isinstance(node, SequenceNode):
        return [_build(item) for item in node.value]
    if tag == _INT and _DECIMAL.match(node.value):
        return int(node.value)
    if tag == _BOOL:
        value = _BOOLS.get(node.value.lower())
        if value is None:
            raise _Elsewhere  # "!!bool maybe": PyYAML's constructor says what is wrong
        return value
    if tag == _NULL:
        return None
    raise _Elsewhere


def construct(loader: Loader, node: Node, budget: Budget | None = None) -> Any:
    """The document ``loader`` composed into ``node``, as PyYAML's safe constructor builds
    it (an alias becomes a copy of its anchor's value rather than the same object).

    Refused (``Refused``, naming the line): a mapping that names a key twice, and aliases
    that would make the input (all of whose documents share ``budget``) hold more values
    than it spells out by over ``budget.limit``, or that refer to a collection they are in."""
    if budget is None:
        budget = Budget()
    if budget.anchors:
        vet(node, budget)  # before anything is built: a few hundred bytes can mean billions
    try:
        return _build(node)
    except (_Elsewhere, RecursionError):
        pass
    _refuse_duplicates(node)
    try:
        return loader.construct_document(node)
    except (KeyError, ValueError, TypeError, AttributeError):
        # PyYAML's constructor fails on a scalar its explicit tag does not fit ("!!int x")
        # with a bare Python error: say which scalar, and where
        bad = _unreadable(loader, node)
        if bad is None:
            raise
        raise yaml.constructor.ConstructorError(
            None, None, f"{bad.value!r} is not a valid {bad.tag.rsplit(':', 1)[-1]}", bad.start_mark
        ) from None


def _unreadable(loader: Loader, node: Node) -> ScalarNode | None:
    """The first scalar under ``node`` that PyYAML's constructor cannot build."""
    todo = [node]
    seen: set[int] = set()
    while todo:
        current = todo.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        if isinstance(current, ScalarNode):
            loader.constructed_objects, loader.recursive_objects = {}, {}  # after the failure
            try:
                loader.construct_object(current, deep=True)
            except (KeyError, ValueError, TypeError, AttributeError):
                return current
        elif isinstance(current, MappingNode):
            todo.extend(n for pair in reversed(current.value) for n in reversed(pair))
        elif isinstance(current, SequenceNode):
            todo.extend(reversed(current.value))
    return None


def load_all(text: str) -> list[Any]:
    """Every document in ``text`` (an empty one is None); see ``construct`` for what is
    refused."""
    loader = Loader(text)
    budget = Budget(text)
    try:
        docs = []
        while loader.check_node():
            node = loader.get_node()
            docs.append(construct(loader, node, budget) if node is not None else None)
        return docs
    finally:
        loader.dispose()


def load(text: str) -> Any:
    """The single document in ``text``; see ``construct`` for what is refused."""
    loader = Loader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        return construct(loader, node, Budget(text))
    finally:
        loader.dispose()


# What aliases may add to the values of one input (all its documents together), beyond what
# it spells out: a manifest's anchors repeat a few blocks (environment, probes, labels), a
# few hundred values; a few hundred bytes of nested aliases can mean billions, built in
# minutes and gigabytes. Kubernetes' own YAML decoder (go-yaml) refuses excessive aliasing
# alike; this budget keeps a refused input under a second and a few MB.
ALIAS_BUDGET = 100_000


class Budget:
    """The alias budget of one input: ``left`` values aliases may still add."""

    def __init__(self, text: str = "&", limit: int = ALIAS_BUDGET) -> None:
        self.limit = self.left = limit
        self.anchors = "&" in text  # without an anchor there is no alias to expand


class Refused(yaml.MarkedYAMLError):
    """Well-formed YAML refused for what it would mean: its problem says what, its mark where."""


def refusal(exc: yaml.YAMLError, source: str, first_line: int = 0) -> str | None:
    """The one-line message of a ``Refused`` document of ``source`` (whose text starts at
    line ``first_line + 1`` of the file), or None for any other YAML error."""
    if not isinstance(exc, Refused):
        return None
    mark = exc.problem_mark
    return (
        f"{source}: line {first_line + mark.line + 1}: {exc.problem}" if mark else f"{source}: {exc.problem}"
    )


class DuplicateKeyError(Refused):
    """A mapping names one key twice: which, and both lines."""

    def __init__(self, key: str, first: yaml.Mark, again: yaml.Mark) -> None:
        super().__init__(
            problem=f"key {key!r} appears twice (line {first.line + 1} and line {again.line + 1}); "
            "the second would silently replace the first",
            problem_mark=again,
        )
        self.key = key


class AliasError(Refused):
    """Aliases that expand past the budget, or refer to a collection they are in."""


def _children(node: Node) -> list[Node]:
    if isinstance(node, MappingNode):
        return [n for pair in node.value for n in pair]
    if isinstance(node, SequenceNode):
        return list(node.value)
    return []


def vet(node: Node, budget: Budget) -> None:
    """Count the values ``node`` holds once every alias is expanded, without expanding any
    (each distinct node is sized once), and take what aliases add from ``budget``; refuse a
    mapping that names a key twice and an alias inside the collection it names."""
    sizes: dict[int, int] = {}
    uses: dict[int, int] = {}
    nodes: dict[int, Node] = {}
    open_: set[int] = set()  # collections whose values are being sized: the path from the root
    todo: list[tuple[Node, bool]] = [(node, False)]
    while todo:
        current, done = todo.pop()
        key = id(current)
        if done:
            open_.discard(key)
            size = 1
            for child in _children(current):
                size += sizes[id(child)]
                uses[id(child)] = uses.get(id(child), 0) + 1
            sizes[key] = size
            continue
        if key in sizes:
            continue
        if key in open_:
            raise AliasError(
                problem=f"an alias refers to the {current.id} it is in (anchored at line "
                f"{current.start_mark.line + 1}): it would never end",
                problem_mark=current.start_mark,
            )
        nodes[key] = current
        if isinstance(current, MappingNode):
            _unique_keys(current)
        children = _children(current)
        if not children:
            sizes[key] = 1
            continue
        open_.add(key)
        todo.append((current, True))
        todo.extend((child, False) for child in reversed(children) if id(child) not in sizes)
    added = sizes[id(node)] - len(sizes)
    if added > budget.left:
        worst = max((k for k, n in uses.items() if n > 1), key=lambda k: (uses[k] - 1) * sizes[k])
        at = nodes[worst].start_mark
        raise AliasError(
            problem=f"refused: aliases repeat the {nodes[worst].id} anchored on this line "
            f"{uses[worst] - 1:,} times, and expanded this input would hold {sizes[id(node)]:,} values "
            f"where it spells out {len(sizes):,} (aliases may add at most {budget.limit:,})",
            problem_mark=at,
        )
    budget.left -= added


def _unique_keys(node: MappingNode) -> None:
    keys: dict[tuple[str, str], yaml.Mark] = {}
    for key, _ in node.value:
        if isinstance(key, ScalarNode):
            first = keys.setdefault((key.tag, key.value), key.start_mark)
            if first is not key.start_mark:
                raise DuplicateKeyError(key.value, first, key.start_mark)


def _refuse_duplicates(node: Node) -> None:
    todo = [node]
    seen: set[int] = set()
    while todo:
        current = todo.pop()
        if id(current) in seen:  # an alias shares its anchor's node
            continue
        seen.add(id(current))
        if isinstance(current, MappingNode):
            _unique_keys(current)
            todo.extend(value for _, value in current.value)
        elif isinstance(current, SequenceNode):
            todo.extend(current.value)


def pyyaml_dump(value: Any) -> str:
    """PyYAML's own block dump: what ``dump`` must equal."""
    return yaml.dump(value, Dumper=_Dumper, default_flow_style=False, sort_keys=False, width=_WIDTH)


class _Complex(Exception):
    """A key PyYAML writes as an explicit (``? key``) key: dump the whole value with PyYAML."""


# (type, scalar) -> its text as a mapping value on one line, or None: PyYAML writes it on
# several lines, where the layout depends on the indentation
_values: dict[tuple[type, Any], str | None] = {}
_keys: dict[tuple[type, Any], str] = {}


def _value(v: Any) -> str | None:
    key = (type(v), repr(v) if type(v) is float else v)  # 0.0 == -0.0, written differently
    try:
        return _values[key]
    except KeyError:
        pass
    text = pyyaml_dump({"k": v})
    body = text[3:-1]  # "k: " ... "\n"
    out = None if "\n" in body else body
    if len(_values) < _MEMO_LIMIT:
        _values[key] = out
    return out


def quote(s: str) -> str:
    """The quote PyYAML writes ``s`` with (``'`` or ``"``), or ``""`` for plain: YAML 1.1
    readers (PyYAML, and the YAML libraries kubectl and most of Kubernetes' tools use) read
    plain ``on``, ``yes`` or ``0777`` as something other than a string."""
    text = _value(s)
    if text is None:
        text = pyyaml_dump({"k": s})[3:]
    return text[0] if text[:1] in ("'", '"') else ""


def _key(k: Any) -> str:
    memo = (type(k), repr(k) if type(k) is float else k)
    try:
        return _keys[memo]
    except KeyError:
        pass
    text = pyyaml_dump({k: 0})
    if text.startswith("? ") or not text.endswith(": 0\n") or text.count("\n") != 1:
        raise _Complex(k)
    out = text[: -len(": 0\n")]
    if len(_keys) < _MEMO_LIMIT:
        _keys[memo] = out
    return out


def _pad(text: str, pad: str) -> str:
    return "".join(pad + line if line.strip() else line for line in text.splitlines(keepends=True))


def _mapping(d: dict[Any, Any], indent: int, out: list[str], first: str | None) -> None:
    """The entries of ``d`` at column ``indent``; the first one after ``first`` (``"- "``
    on the line of a sequence item) when given."""
    pad = " " * indent
    lead = first if first is not None else pad
    for k, v in d.items():
        key = _key(k)
        if isinstance(v, dict):
            if v:
                out.append(f"{lead}{key}:\n")
                _mapping(v, indent + 2, out, None)
            else:
                out.append(f"{lead}{key}: {{}}\n")
        elif isinstance(v, list):
            if v:
                out.append(f"{lead}{key}:\n")
                _sequence(v, indent, out, None)
            else:
                out.append(f"{lead}{key}: []\n")
        else:
            text = _value(v)
            if text is not None:
                out.append(f"{lead}{key}: {text}\n")
            else:  # over several lines: PyYAML's own text for this entry, moved to the column
                block = pyyaml_dump({k: v})
                out.append(lead + _pad(block, pad)[indent:])
        lead = pad


def _sequence(items: list[Any], indent: int, out: list[str], first: str | None) -> None:
    pad = " " * indent
    lead = (first if first is not None else pad) + "- "
    for item in items:
        if isinstance(item, dict):
            if item:
                _mapping(item, indent + 2, out, lead)
            else:
                out.append(f"{lead}{{}}\n")
        elif isinstance(item, list):
            if item:
                _sequence(item, indent + 2, out, lead)
            else:
                out.append(f"{lead}[]\n")
        else:
            text = _value(item)
            if text is not None:
                out.append(f"{lead}{text}\n")
            else:
                block = pyyaml_dump([item])
                out.append(lead + _pad(block, pad)[indent + 2 :])
        lead = pad + "- "


def dump(value: dict[Any, Any] | list[Any], indent: int = 0) -> str:
    """``value`` as PyYAML writes it in block style, every line moved ``indent`` columns
    to the right."""
    out: list[str] = []
    try:
        if isinstance(value, dict) and value:
            _mapping(value, indent, out, None)
        elif isinstance(value, list) and value:
            _sequence(value, indent, out, None)
        else:
            return _pad(pyyaml_dump(value), " " * indent)
    except _Complex:
        return _pad(pyyaml_dump(value), " " * indent)
    return "".join(out)
