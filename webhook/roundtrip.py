"""Manifests rewritten where they change and nowhere else: what ``inject`` writes.

People keep injected manifests in git, so the output of ``inject`` must diff as the
injection and nothing more. The input is split into its documents at the ``---`` lines, so
every document that does not change is written back byte for byte (comments, separators,
quoting, indentation, empty documents). A document whose pod template changes is edited in
place with a round-trip YAML library (``ruamel.yaml``, YAML 1.2: ``ON`` stays a string):
the JSON Patch of the change is applied to the parsed document, so the document's own
comments, key order and quoting stay, and only the fields we add appear. JSON input is
written back as JSON. The decision itself reads the fast C parser's result; only changed
documents pay for the round trip.
"""

from __future__ import annotations

import io
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import jsonpatch
import orjson
import yaml
from ruamel.yaml import YAML
from ruamel.yaml.error import YAMLError

from webhook.loading import InputError
from webhook.patch import diff

_Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)

# a document separator: '---' at the start of a line, alone or followed by a space
_SEPARATOR = re.compile(r"^---(?=[ \t]|\r?$)", re.M)
# "key:" followed by a sequence indented under it ("key:\n  - a") rather than flush ("key:\n- a")
_INDENTED_SEQUENCE = re.compile(r"^( *)[^\s#][^\n]*:[ \t]*\r?\n\1  +- ", re.M)
_FLUSH_SEQUENCE = re.compile(r"^( *)[^\s#][^\n]*:[ \t]*\r?\n\1- ", re.M)

Change = Callable[[Any], Any]  # a parsed document -> the document to write (the same object: unchanged)


@dataclass(frozen=True)
class Chunk:
    head: str  # the separator line (with its newline), or "" for text before the first one
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
        chunks.append(Chunk(text[start:split], text[split:end]))
    return chunks


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


_Dumper = getattr(yaml, "CSafeDumper", yaml.SafeDumper)


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


def _dumped(value: Any, indent: int) -> str:
    text = yaml.dump(value, Dumper=_Dumper, default_flow_style=False, sort_keys=False, width=1 << 16)
    pad = " " * indent
    return "".join(pad + line if line.strip() else line for line in text.splitlines(keepends=True))


def _spliced(text: str, root: yaml.Node, patch: list[dict[str, Any]]) -> str:
    """``text`` (whose composed root is ``root``) with ``patch`` (additions only) written in
    as new lines: every line of the original stays as it is. Additions to one mapping or at
    one place of a sequence are dumped together. Raises _Unsplicable for anything else."""
    if any(op.get("op") != "add" for op in patch) or re.search(r"(^|[\s:])[&*][A-Za-z0-9_-]|<<:", text):
        raise _Unsplicable("not only additions, or anchors")
    lines = text.splitlines(keepends=True)
    starts = [0]
    for line in lines:
        starts.append(starts[-1] + len(line))
    if not text.endswith("\n"):
        text += "\n"
        starts[-1] += 1
    # (offset, parent path) -> [indent, mapping or list of what is added there]
    groups: dict[tuple[int, str], list[Any]] = {}
    for op in patch:
        parts = op["path"].split("/")[1:]
        tokens = [t.replace("~1", "/").replace("~0", "~") for t in parts]
        parent = _resolve(root, tokens[:-1])
        where = "/".join(parts[:-1])
        if getattr(parent, "flow_style", False) or not getattr(parent, "value", None):
            raise _Unsplicable("flow style or empty")
        if isinstance(parent, yaml.MappingNode):
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
    by_offset: dict[int, list[tuple[int, str]]] = {}
    for (at, where), (indent, value) in groups.items():
        by_offset.setdefault(at, []).append((-where.count("/"), _dumped(value, indent)))
    out = text
    for at in sorted(by_offset, reverse=True):
        out = out[:at] + "".join(t for _, t in sorted(by_offset[at], key=lambda g: g[0])) + out[at:]
    return out


def _edited(chunk: Chunk, root: yaml.Node, patch: list[dict[str, Any]], new: Any) -> str:
    """The document with ``patch`` applied: additions are written in as new lines (fast,
    and every original line kept); anything else goes through a round-trip parse, which
    keeps comments, key order and quoting."""
    text = chunk.head + chunk.body
    try:
        spliced = _spliced(text, root, patch)
        if yaml.load(spliced, Loader=_Loader) == new:  # it reads back as the change meant
            return spliced
    except (_Unsplicable, yaml.YAMLError):
        pass
    body = chunk.body
    rt = _yaml_for(body)
    doc = rt.load(body)
    jsonpatch.apply_patch(doc, patch, in_place=True)
    out = io.StringIO()
    rt.dump(doc, out)
    edited = out.getvalue()
    if not body.endswith("\n") and body:
        edited = edited.rstrip("\n")
    return chunk.head + edited


Parsed = tuple[Chunk, Any, "yaml.Node | None"]


def parse_chunks(text: str, source: str) -> list[Parsed]:
    """Each document as written, as the fast C parser reads it (None: nothing in it), and
    its composed node tree (where each node was written)."""
    out: list[Parsed] = []
    line = 0
    for chunk in split_documents(text):
        doc = node = None
        if _has_content(chunk.body):
            loader = _Loader(chunk.head + chunk.body)
            try:
                node = loader.get_single_node()
                doc = loader.construct_document(node) if node is not None else None
            except yaml.YAMLError as exc:
                mark = getattr(exc, "problem_mark", None)
                where = f" at line {line + mark.line + 1}, column {mark.column + 1}" if mark else ""
                problem = getattr(exc, "problem", None) or "syntax error"
                raise InputError(f"{source}: not valid JSON or YAML{where}: {problem}") from None
            finally:
                loader.dispose()
        out.append((chunk, doc, node))
        line += (chunk.head + chunk.body).count("\n")
    return out


def rewrite_yaml(chunks: list[Parsed], change: Change) -> Iterator[str]:
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
            yield _edited(chunk, node, patch, new)
        except (YAMLError, jsonpatch.JsonPatchException, jsonpatch.JsonPointerException):
            # what the fast parser read, ruamel could not edit: fall back to a fresh dump
            # (never silently drop the injection)
            rt = _yaml_for(chunk.body)
            out = io.StringIO()
            rt.dump(new, out)
            yield chunk.head + out.getvalue()


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
    return orjson.dumps(new, option=orjson.OPT_INDENT_2).decode() + "\n"


def is_json(text: str) -> bool:
    stripped = text.lstrip()
    return stripped[:1] in ("{", "[")
