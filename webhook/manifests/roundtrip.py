"""Manifests rewritten where they change and nowhere else: what ``inject`` writes.

People keep injected manifests in git, so the output of ``inject`` must diff as the
injection and nothing more. The input is split into its documents at the ``---`` lines, so
every document that does not change is written back byte for byte (comments, separators,
quoting, indentation, empty documents). In a document whose pod template changes, the
fields added are written in as new lines where the composed nodes say their parents end
(every original line stays as it is), or, inside a flow-style collection, as JSON before
its closing bracket (every original character stays); the result is read back with each
added value as a placeholder before it is used. Where that cannot be done (an anchor, a
change that is not only additions), the JSON Patch is applied with a round-trip
YAML library (``ruamel.yaml``), which keeps the document's comments, key order and
quoting. JSON input is written back as JSON.
"""

from __future__ import annotations

import io
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import jsonpatch
import orjson
import yaml
from ruamel.yaml import YAML
from ruamel.yaml.error import YAMLError
from ruamel.yaml.scalarstring import DoubleQuotedScalarString, ScalarString, SingleQuotedScalarString

from webhook import yamltext
from webhook.loading import InputError, shown
from webhook.patch.diff import diff

# a document separator: '---' at the start of a line, alone or followed by a space
_SEPARATOR = re.compile(r"^---(?=[ \t]|\r?$)", re.M)
# "key:" followed by a sequence indented under it ("key:\n  - a") rather than flush ("key:\n- a")
_INDENTED_SEQUENCE = re.compile(r"^( *)[^\s#][^\n]*:[ \t]*\r?\n\1  +- ", re.M)
_FLUSH_SEQUENCE = re.compile(r"^( *)[^\s#][^\n]*:[ \t]*\r?\n\1- ", re.M)

# an anchor, an alias or a merge key: the node marks would not say where things are
_ANCHORS = re.compile(r"(^|[\s:])[&*][A-Za-z0-9_-]|<<:", re.M)

Change = Callable[[Any], Any]  # a parsed document -> the document to write (the same object: unchanged)


@dataclass(frozen=True)
class Chunk:
    head: str  # the separator line (with its newline; only "--- " where the document starts
    # on that line), or "" for text before the first one
    body: str


def split_documents(text: str) -> list[Chunk]:
    """The documents of a YAML stream as written: ``"".join(head + body) == text``."""
    starts = [m.start() for m in _SEPARATOR.finditer(text)]
    chunks: list[Chunk] = []
    if not starts or starts[0] > 0:
        chunks.append(Chunk("", text[: starts[0]] if starts else text))
    for i, start in enumerate(starts):
        end = starts[i + 1] if i + 1 < len(starts) else len(text)
        line_end = text.find("\n", start, end)
        split = end if line_end < 0 else line_end + 1
        rest = text[start + 3 : split]
        if rest.strip() and not rest.strip().startswith("#"):
            # "--- {kind: Pod, ...}": the document starts on the separator's line
            split = start + 3 + (len(rest) - len(rest.lstrip(" \t")))
        chunks.append(Chunk(text[start:split], text[split:end]))
    return chunks


def line_ending(text: str) -> str:
    """The line ending ``text`` is written with (its first one): what added lines use."""
    first = text.find("\n")
    return "\r\n" if first > 0 and text[first - 1] == "\r" else "\n"


def ended(text: str, ending: str) -> str:
    """``text`` (written with ``\\n``) with ``ending`` for every line end."""
    return text if ending == "\n" else text.replace("\r\n", "\n").replace("\n", ending)


def _yaml_for(body: str) -> YAML:
    rt = YAML(typ="rt")
    rt.preserve_quotes = True
    rt.width = 1 << 16  # never re-wrap a long line
    indented = len(_INDENTED_SEQUENCE.findall(body)) >= len(_FLUSH_SEQUENCE.findall(body))
    if indented and _INDENTED_SEQUENCE.search(body):
        rt.indent(mapping=2, sequence=4, offset=2)
    else:
        rt.indent(mapping=2, sequence=2, offset=0)
    return rt


class _Unsplicable(Exception):
    """The change is not a set of additions to block collections: use the round-trip editor."""


def _resolve(node: yaml.Node, tokens: list[str]) -> yaml.Node:
    for token in tokens:
        if isinstance(node, yaml.MappingNode):
            for key, value in node.value:
                if isinstance(key, yaml.ScalarNode) and key.value == token:
                    node = value
                    break
            else:
                raise _Unsplicable(token)
        elif isinstance(node, yaml.SequenceNode) and token.isdigit() and int(token) < len(node.value):
            node = node.value[int(token)]
        else:
            raise _Unsplicable(token)
    return node


def _after(node: yaml.Node, lines: list[str], starts: list[int]) -> int:
    """Where a line can be added after ``node``: past the line it ends on (its trailing
    comment included). A block collection's end is where the next token starts, so when
    only indentation precedes that mark, the new line goes before that line."""
    mark = node.end_mark
    if mark.line >= len(lines):
        return starts[-1]
    if mark.line > node.start_mark.line and not lines[mark.line][: mark.column].strip():
        return starts[mark.line]
    return starts[mark.line + 1]


def _spliced(text: str, root: yaml.Node, patch: list[dict[str, Any]]) -> tuple[str, str]:
    """``text`` (whose composed root is ``root``) with ``patch`` (additions only) written in
    as new lines: every line of the original stays as it is. Additions to one mapping or at
    one place of a sequence are written together. Raises _Unsplicable for anything else.

    Also returns the same text with every added value written as ``0``: it reads back as
    the document with the patch's values replaced by 0 when every addition landed where it
    belongs (the values' own text is PyYAML's, see webhook/yamltext.py)."""
    if any(op.get("op") != "add" for op in patch) or (
        ("&" in text or "*" in text or "<<" in text) and _ANCHORS.search(text)
    ):
        raise _Unsplicable("not only additions, or anchors")
    lines = text.splitlines(keepends=True)
    starts = [0]
    for line in lines:
        starts.append(starts[-1] + len(line))
    ending = line_ending(text)
    if not text.endswith("\n"):
        text += ending
        starts[-1] += len(ending)
    # (offset, parent path) -> [indent, mapping or list of what is added there]
    groups: dict[tuple[int, str], list[Any]] = {}
    # additions inside flow collections, in patch order: (offset, text, text with 0 values)
    flows: list[tuple[int, str, str]] = []
    flow_at: dict[str, int] = {}  # a flow sequence's insertion point, for consecutive adds
    for op in patch:
        parts = op["path"].split("/")[1:]
        tokens = [t.replace("~1", "/").replace("~0", "~") for t in parts]
        parent = _resolve(root, tokens[:-1])
        where = "/".join(parts[:-1])
        if getattr(parent, "flow_style", False):
            flows.append(_in_flow(text, parent, tokens[-1], op["value"], flow_at, where))
            continue
        if not getattr(parent, "value", None):
            raise _Unsplicable("empty block collection")
        if isinstance(parent, yaml.MappingNode):
            if any(isinstance(k, yaml.ScalarNode) and k.value == tokens[-1] for k, _ in parent.value):
                raise _Unsplicable("the key is there already")
            at = _after(parent.value[-1][1], lines, starts)
            group = groups.setdefault((at, where), [parent.value[0][0].start_mark.column, {}])
            group[1][tokens[-1]] = op["value"]
        elif isinstance(parent, yaml.SequenceNode):
            items = parent.value
            dash = items[0].start_mark.column - 2
            if dash < 0:
                raise _Unsplicable("sequence layout")
            known = [k for k in groups if k[1] == where]
            if known:  # consecutive adds: all before the same original item
                groups[known[0]][1].append(op["value"])
                continue
            index = len(items) if tokens[-1] == "-" else int(tokens[-1])
            at = (
                starts[items[index].start_mark.line]
                if index < len(items)
                else _after(items[-1], lines, starts)
            )
            groups[(at, where)] = [dash, [op["value"]]]
        else:
            raise _Unsplicable("scalar parent")
    # at one offset, the deeper collection's additions come first: they end it before the
    # enclosing one goes on (labels added at the end of labels, then a new annotations key)
    by_offset: dict[int, list[tuple[int, str, str]]] = {}
    for (at, where), (indent, value) in groups.items():
        zeros = dict.fromkeys(value, 0) if isinstance(value, dict) else [0] * len(value)
        by_offset.setdefault(at, []).append(
            (
                -where.count("/"),
                ended(yamltext.dump(value, indent), ending),
                ended(yamltext.dump(zeros, indent), ending),
            )
        )
    for at, added_text, zeros_text in flows:
        by_offset.setdefault(at, []).append((0, added_text, zeros_text))
    out, placeholders = [], []
    done = 0
    for at in sorted(by_offset):
        added = sorted(by_offset[at], key=lambda g: g[0])
        out += [text[done:at], *(g[1] for g in added)]
        placeholders += [text[done:at], *(g[2] for g in added)]
        done = at
    out.append(text[done:])
    placeholders.append(text[done:])
    return "".join(out), "".join(placeholders)


def _in_flow(
    text: str, parent: yaml.Node, last: str, value: Any, flow_at: dict[str, int], where: str
) -> tuple[int, str, str]:
    """An addition inside a flow collection (``{a: 1}``, ``[x, y]``), written as JSON (which
    YAML's flow style reads): before the closing bracket, or before the item it goes in
    front of. Consecutive additions to one sequence go to the same place, in order."""
    written = orjson.dumps(value).decode()
    end = parent.end_mark.index - 1
    if not 0 <= end < len(text) or text[end] not in "}]":
        raise _Unsplicable("flow collection without its closing bracket where the marks say")
    items = parent.value
    if isinstance(parent, yaml.MappingNode):
        if any(isinstance(k, yaml.ScalarNode) and k.value == last for k, _ in items):
            raise _Unsplicable("the key is there already")
        key = orjson.dumps(last).decode()
        sep = ", " if items or flow_at.get(where + "#n") else ""
        flow_at[where + "#n"] = 1
        return end, f"{sep}{key}: {written}", f"{sep}{key}: 0"
    if not isinstance(parent, yaml.SequenceNode):
        raise _Unsplicable("scalar parent")
    if where in flow_at:  # a later addition to this sequence: right after the earlier ones
        at = flow_at[where]
    else:
        index = len(items) if last == "-" else int(last)
        at = items[index].start_mark.index if index < len(items) else end
        flow_at[where] = at
    if at == end:
        sep = ", " if items or flow_at.get(where + "#n") else ""
        flow_at[where + "#n"] = 1
        return at, f"{sep}{written}", f"{sep}0"
    return at, f"{written}, ", "0, "


def _with_zeros(doc: Any, patch: list[dict[str, Any]]) -> Any:
    """A copy of ``doc`` with the additions of ``patch`` applied with 0 for every value."""
    root = _copied(doc)
    for op in patch:
        tokens = [t.replace("~1", "/").replace("~0", "~") for t in op["path"].split("/")[1:]]
        parent = root
        for token in tokens[:-1]:
            parent = parent[int(token)] if isinstance(parent, list) else parent[token]
        last = tokens[-1]
        if isinstance(parent, list):
            parent.insert(len(parent) if last == "-" else int(last), 0)
        else:
            parent[last] = 0
    return root


def _for_editor(value: Any) -> Any:
    """``value`` for ruamel.yaml to write: no object twice (no anchors), and every string a
    YAML 1.1 reader would take for something else (``on``, ``yes``, ``0777``) marked for the
    quotes PyYAML gives it. ruamel.yaml writes YAML 1.2, where those are plain strings, but
    kubectl reads YAML 1.1."""
    if isinstance(value, dict):
        return {k: _for_editor(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_for_editor(v) for v in value]
    if isinstance(value, str) and not isinstance(value, ScalarString):
        quote = yamltext.quote(value)
        if quote == "'":
            return SingleQuotedScalarString(value)
        if quote == '"':
            return DoubleQuotedScalarString(value)
    return value


def _copied(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _copied(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_copied(v) for v in value]
    return value


def _edited(chunk: Chunk, root: yaml.Node, doc: Any, patch: list[dict[str, Any]]) -> str:
    """The document with ``patch`` applied: additions are written in as new lines (fast,
    and every original line kept); anything else goes through a round-trip parse, which
    keeps comments, key order and quoting."""
    text = chunk.head + chunk.body
    try:
        spliced, placeholders = _spliced(text, root, patch)
        if yamltext.load(placeholders) == _with_zeros(doc, patch):  # landed right
            return spliced
    except (_Unsplicable, yaml.YAMLError, LookupError, ValueError, TypeError):
        pass
    body = chunk.body
    rt = _yaml_for(body)
    edited_doc = rt.load(body)
    jsonpatch.apply_patch(edited_doc, _for_editor(patch), in_place=True)
    out = io.StringIO()
    rt.dump(edited_doc, out)
    edited = ended(out.getvalue(), line_ending(body))
    if not body.endswith("\n") and body:
        edited = edited.rstrip("\n")
    return chunk.head + edited


Parsed = tuple[Chunk, Any, "yaml.Node | None"]


def parse_chunks(text: str, source: str) -> Iterator[Parsed]:
    """Each document as written, as the fast C parser reads it (None: nothing in it), and
    its composed node tree (where each node was written). One at a time: a document's
    objects are gone before the next one is read, so a large manifest never holds them all
    (and the garbage collector never walks them all again and again)."""
    line = 0
    budget = yamltext.Budget(text)  # what aliases may add, over all of the input's documents
    for chunk in split_documents(text):
        doc = node = None
        if _has_content(chunk.body):
            loader = yamltext.Loader(chunk.head + chunk.body)
            try:
                node = loader.get_single_node()
                doc = yamltext.construct(loader, node, budget) if node is not None else None
            except yaml.YAMLError as exc:
                refused = yamltext.refusal(exc, shown(source), line)
                if refused is not None:
                    raise InputError(refused) from None
                mark = getattr(exc, "problem_mark", None)
                where = f" at line {line + mark.line + 1}, column {mark.column + 1}" if mark else ""
                problem = getattr(exc, "problem", None) or "syntax error"
                raise InputError(f"{shown(source)}: not valid JSON or YAML{where}: {problem}") from None
            finally:
                loader.dispose()
        yield chunk, doc, node
        line += (chunk.head + chunk.body).count("\n")


def rewrite_yaml(chunks: Iterable[Parsed], change: Change) -> Iterator[str]:
    """The documents with ``change`` applied to each: unchanged documents are yielded as
    they were written."""
    for chunk, doc, node in chunks:
        if doc is None or node is None:
            yield chunk.head + chunk.body
            continue
        new = change(doc)
        if new is doc:
            yield chunk.head + chunk.body
            continue
        patch = diff(doc, new) if isinstance(doc, dict) and isinstance(new, dict) else None
        if not patch:
            yield chunk.head + chunk.body
            continue
        try:
            yield _edited(chunk, node, doc, patch)
        except (YAMLError, jsonpatch.JsonPatchException, jsonpatch.JsonPointerException):
            # what the fast parser read, ruamel could not edit: fall back to a fresh dump
            # (never silently drop the injection)
            rt = _yaml_for(chunk.body)
            out = io.StringIO()
            rt.dump(_for_editor(new), out)
            yield chunk.head + ended(out.getvalue(), line_ending(chunk.body))


def _has_content(body: str) -> bool:
    for line in body.splitlines():
        stripped = line.strip()
        if stripped and not stripped.startswith("#") and stripped != "...":
            return True
    return False


def rewrite_json(text: str, document: Any, change: Change) -> str:
    """JSON in, JSON out: unchanged input is written back as it was; a changed document is
    written with two-space indentation (so ``inject`` on its own output changes nothing)."""
    new = change(document)
    if new is document or (isinstance(document, dict) and not diff(document, new)):
        return text
    return ended(orjson.dumps(new, option=orjson.OPT_INDENT_2).decode() + "\n", line_ending(text))


def is_json(text: str) -> bool:
    """Whether ``text`` starts as JSON does (it may still be flow-style YAML)."""
    stripped = text.lstrip()
    return stripped[:1] in ("{", "[")


NOT_JSON = object()


def json_document(text: str) -> Any:
    """The JSON document ``text`` is, or ``NOT_JSON`` (YAML, flow style included: a stream
    of ``{...}`` documents apart by ``---`` starts like JSON but is not)."""
    if not is_json(text):
        return NOT_JSON
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError:
        return NOT_JSON
