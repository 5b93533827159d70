"""The fast YAML reader and writer mean exactly what PyYAML means: the reader builds what
PyYAML's safe loader builds, the writer writes what PyYAML's dumper writes (without
anchors), and a splice that lands in the wrong place is caught before it is used."""

from __future__ import annotations

import math
from typing import Any

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from webhook import yamltext
from webhook.manifests import roundtrip

# scalars YAML 1.1 reads as something else, or that need quoting, escaping or several lines
TRICKY = [
    "", " ", "ON", "off", "Yes", "n", "NULL", "~", "true", "0x1F", "0o17", "017", "1_000",
    "1:30", "1e3", ".inf", "-.NaN", "2024-01-01", "2001-12-14t21:59:43.10-05:00", "- a",
    "a: b", "#x", "x #y", "'q'", '"d"', "multi\nline", "trail\n", "two\n\n", "\ttab",
    "  lead", "trail ", "k" * 130, "é", "💡", "a\u2028b", "\x85", "*ref", "&anchor",
    "!tag", "%dir", "@at", "`b", "|", ">", "{}", "[]", ",", "?", "-", "---", "...", "=",
    "<<", "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n",
]  # fmt: skip

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(allow_nan=False),
    st.text(max_size=30),
    st.sampled_from(TRICKY),
)
keys = st.one_of(st.text(max_size=20), st.sampled_from(TRICKY))
values = st.recursive(
    scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(keys, inner, max_size=4)),
    max_leaves=30,
)
collections = st.one_of(st.lists(values, max_size=4), st.dictionaries(keys, values, max_size=5))


def _same(a: Any, b: Any) -> bool:
    """Equal, with -0.0 and 0.0 told apart as YAML writes them."""
    if isinstance(a, float) and isinstance(b, float):
        return a == b and math.copysign(1, a) == math.copysign(1, b)
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    return type(a) is type(b) and a == b


@settings(max_examples=400, deadline=None)
@given(value=collections, indent=st.sampled_from([0, 2, 6]))
def test_the_writer_writes_what_pyyaml_writes(value, indent):
    written = yamltext.dump(value, indent)
    pad = " " * indent
    expected = "".join(
        pad + line if line.strip() else line for line in yamltext.pyyaml_dump(value).splitlines(keepends=True)
    )
    assert written == expected
    assert _same(yaml.safe_load(yamltext.dump(value)), value)


def test_a_value_used_twice_is_written_twice_without_anchors():
    probe = {"httpGet": {"path": "/ready", "port": 4191}}
    text = yamltext.dump({"readinessProbe": probe, "startupProbe": probe})
    assert "&" not in text and "*" not in text
    assert yaml.safe_load(text) == {"readinessProbe": probe, "startupProbe": probe}


DOCUMENTS = [
    "a: 1\nb: [x, 'y', \"z\"]\nc: {d: null, e: ~, f: yes, g: Off}\n",
    "base: &b {x: 1, y: 2}\nderived:\n  <<: *b\n  y: 3\n",  # a merge key
    "when: 2024-01-01\nratio: 1.5\nhex: 0x1F\noctal: 017\nsexa: 1:30\nbig: 1_000\n",
    "1: int key\ntrue: bool key\n",
    "? [complex, key]\n: value\n",  # refused by both: a list is not a dict key
    "tagged: !!str 123\nbinary: !!binary aGVsbG8=\nset: !!set {a, b}\n",
    "list: &l [1, 2]\nagain: *l\n",
    "- plain\n- 'quoted: yes'\n- |\n  literal\n  block\n- >\n  folded\n  text\n",
    "",
    "--- 1\n--- [a]\n---\n",
]


@pytest.mark.parametrize("text", DOCUMENTS)
def test_the_reader_builds_what_pyyaml_builds(text):
    def outcome(read: Any) -> Any:
        try:
            return read()
        except yaml.YAMLError as exc:  # the same refusal, e.g. an unhashable key
            return type(exc)

    ours = outcome(lambda: yamltext.load_all(text))
    assert ours == outcome(lambda: list(yaml.load_all(text, Loader=yaml.SafeLoader)))


@settings(max_examples=300, deadline=None)
@given(value=values, flow=st.sampled_from([False, None, True]))
def test_the_reader_reads_generated_documents_as_pyyaml_does(value, flow):
    text = yaml.safe_dump(value, default_flow_style=flow)
    assert _same(yamltext.load(text), yaml.safe_load(text))


@pytest.mark.parametrize(
    ("text", "where", "problem"),
    [
        ("a: !!bool maybe\n", (0, 3), "'maybe' is not a valid bool"),
        ("a: 1\nb: [x, !!int seven]\n", (1, 7), "'seven' is not a valid int"),
        ("a: {b: !!float half}\n", (0, 7), "'half' is not a valid float"),
        ("a: !!timestamp soon\n", (0, 3), "'soon' is not a valid timestamp"),
    ],
)
def test_a_scalar_that_does_not_fit_its_tag_is_a_yaml_error_saying_where(text, where, problem):
    with pytest.raises(yaml.YAMLError) as caught:
        yamltext.load(text)
    assert caught.value.problem == problem
    assert (caught.value.problem_mark.line, caught.value.problem_mark.column) == where
    with pytest.raises(Exception) as theirs:  # PyYAML alone fails with a bare Python error
        yaml.load(text, Loader=yaml.SafeLoader)
    assert not isinstance(theirs.value, yaml.YAMLError)


def test_where_pyyaml_reads_on_silently_the_reader_refuses_and_says_where():
    """PyYAML keeps the last of a key named twice and builds a list that holds itself;
    Kubernetes' decoder refuses both (strict field validation, go-yaml's alias checks)."""
    assert yaml.safe_load("dup: 1\ndup: 2\n") == {"dup": 2}
    with pytest.raises(yamltext.DuplicateKeyError) as twice:
        yamltext.load_all("dup: 1\ndup: 2\n")
    assert (
        twice.value.problem
        == "key 'dup' appears twice (line 1 and line 2); the second would silently replace the first"
    )
    loaded = yaml.safe_load("a: &x [1, *x]\n")
    assert loaded["a"][1] is loaded["a"]
    with pytest.raises(yamltext.AliasError) as recursive:
        yamltext.load("a: &x [1, *x]\n")
    assert (
        recursive.value.problem
        == "an alias refers to the sequence it is in (anchored at line 1): it would never end"
    )


DEPLOYMENT = """\
apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
spec:
  template:
    metadata:
      labels:
        app: web
    spec:
      containers:
      - name: web
        image: web:1
"""


def _rewrite(text: str, change: Any) -> str:
    return "".join(roundtrip.rewrite_yaml(roundtrip.parse_chunks(text, "test"), change))


def _add_sidecar(doc: dict[str, Any]) -> dict[str, Any]:
    new = yaml.safe_load(yaml.safe_dump(doc))
    template = new["spec"]["template"]
    template["metadata"]["labels"]["mesh"] = "on"
    template["spec"]["containers"].append({"name": "proxy", "image": "proxy:1", "args": ["a: b", "ON"]})
    return new


def test_additions_are_written_as_new_lines():
    out = _rewrite(DEPLOYMENT, _add_sidecar)
    assert out.startswith(
        DEPLOYMENT.split("      - name: web")[0].replace("app: web\n", "app: web\n        mesh: 'on'\n")
    )
    assert out.endswith(
        "      - name: proxy\n        image: proxy:1\n        args:\n        - 'a: b'\n        - 'ON'\n"
    )
    assert yaml.safe_load(out) == _add_sidecar(yaml.safe_load(DEPLOYMENT))


def test_a_splice_that_lands_wrong_is_caught_and_the_round_trip_editor_used(monkeypatch):
    """With the place to insert at deliberately off by one line, the additions would land
    inside the wrong mapping; the placeholder read-back must notice, and the document is
    then edited by ruamel.yaml and still comes out right."""
    right = roundtrip._after

    def one_line_early(node, lines, starts):
        at = right(node, lines, starts)
        return starts[max(0, starts.index(at) - 1)] if at in starts else at

    monkeypatch.setattr(roundtrip, "_after", one_line_early)
    editor_used = []
    real_editor = roundtrip._yaml_for
    monkeypatch.setattr(roundtrip, "_yaml_for", lambda body: editor_used.append(1) or real_editor(body))

    spliced, _ = roundtrip._spliced(
        DEPLOYMENT, yaml.compose(DEPLOYMENT), [{"op": "add", "path": "/spec/paused", "value": True}]
    )
    meant = yaml.safe_load(DEPLOYMENT)
    meant["spec"]["paused"] = True
    try:
        landed = yaml.safe_load(spliced)
    except yaml.YAMLError:
        landed = None
    assert landed != meant  # the broken placement really is wrong

    out = _rewrite(DEPLOYMENT, _add_sidecar)
    assert editor_used
    assert yaml.safe_load(out) == _add_sidecar(yaml.safe_load(DEPLOYMENT))
