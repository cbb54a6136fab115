"""CSS inlined once per page shape (:mod:`engine.render.shapes`) gives, byte for byte, what
inlining each email's own page gives: on generated leads over the shipped templates, and on
templates built to trip it (values in attributes, styles, tables, comments, captured text,
markup values, marks as values) with hostile values."""

from __future__ import annotations

import itertools
import random
from collections.abc import Callable, Iterable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from jinja2.exceptions import SecurityError

from engine.render import shapes
from engine.render.sandbox import MARK, tracking
from engine.render.shapes import CLOSE, OPEN, Marked, Shape
from engine.render.templates import Rendered, Renderer, TemplateError, context, lead_context

ROOT = Path(__file__).resolve().parent.parent
NOW = datetime(2026, 11, 2, 10, 0, tzinfo=UTC)

HOSTILE: list[Any] = [
    "Ana", "Lead 17", "", " ", "\n", "\t x", "x ", " x", "\nx", "A&B", "&amp;", "&lt;b&gt;",
    "<b>bold</b>", '"q"', "'s", "\xa0", "\xa0x", "x\r\ny", "\r", "é中😀", MARK, OPEN, CLOSE,
    f"a{MARK}b", "\ufeffx", "x\x0cy", "color: red", "} p { color: red }", "--> <!--", "</style>",
    "</textarea>", "</table>", "javascript:alert(1)", "https://a.example/?a=1&b=2#x", "\x01",
    "x" * 3000, None, 0, 12.5, True, ["a", "b"], {"k": "v"},
]  # fmt: skip

# Each template prints `v` (and some `w`) in a place where the parser or the inliner might
# treat a value otherwise than a probe, or where the printed text is not where the value ends.
HAZARDS = {
    "text": "<p>Hi {{ v }}, from {{ w }}</p>",
    "href": '<a href="{{ v }}">x</a>',
    "two-attributes": '<a title="{{ w }}" href="https://x.example/{{ v }}?q={{ w }}">x</a>',
    "single-quoted": "<a href='{{ v }}' title='{{ w }}'>x</a>",
    "unquoted": "<a href={{ v }} title=t>x</a>",
    "img": '<img src="{{ v }}" alt="{{ w }}" title="{{ v }}{{ w }}">',
    "class": '<p class="{{ v }}">x</p><p class="x">y</p>',
    "id": '<p id="{{ v }}">x</p>',
    "style-attribute": '<p style="color: {{ v }}">x</p>',
    "data-attribute": '<p data-x="{{ v }}" data-css-inline="{{ w }}">x</p>',
    "attribute-selector": '<style>a[href^="https"] { color: red }</style><a href="{{ v }}">x</a>',
    "linked": '<link rel="stylesheet" href="{{ w }}"><a href="{{ v }}">x</a>',
    "imported": '<style>@import url("x.css");</style><a href="{{ v }}">x</a>',
    "base": '<base href="{{ v }}"><a href="x">y</a>',
    "input": '<table><input type="{{ v }}"><tr><td>x</td></tr></table>',
    "style-tag": "<style>p { color: {{ v }} }</style><p>x</p>",
    "empty-selector": "<style>td:empty { color: red }</style>"
    "<table><tr><td>{{ v }}</td></tr></table>",
    "table": "<table> {{ v }} <tr><td>x</td></tr></table>",
    "table-cells": "<table><tr>{{ v }}<td>{{ w }}</td> {{ v }} </tr></table>",
    "colgroup": "<table><colgroup>{{ v }}<col></colgroup><tr><td>x</td></tr></table>",
    "select": "<select>{{ v }}<option>{{ w }}</option></select>",
    "pre": "<pre>{{ v }}</pre><textarea>{{ w }}</textarea><listing>{{ v }}</listing>",
    "title": "<html><head><title>{{ v }}</title></head><body><p>x</p></body></html>",
    "head": "<html><head>{{ v }}<style>p { color: red }</style></head><body><p>x</p></body></html>",
    "after-body": "<html><body><p>x</p></body>{{ v }}</html>{{ w }}",
    "edges": "{{ v }}<p>x</p>{{ w }}",
    "formatting": "<p><b>x</p>{{ v }}<p>{{ w }}<i>y</b>z</i></p>",
    "frameset": "<html><head></head>{{ v }}<frameset><frame src=a></frameset></html>",
    "comment": "<!-- {{ v }} --><p>x</p>",
    "script": "<script>var v = '{{ v }}';</script><p>{{ w }}</p>",
    "tag-name": "<p{{ v }}>x</p><x-{{ w }}>y</x-{{ w }}>",
    "svg": '<svg><text>{{ v }}</text><a href="{{ w }}">z</a></svg><math><mi>{{ v }}</mi></math>',
    "conditional": "{% if v %}<table><tr><td>{{ v }}</td></tr></table>{% else %}<p>{{ w }}</p>"
    "{% endif %}",
    "loop": "<ul>{% for c in (v or '')|string|list %}<li>{{ c }}</li>{% endfor %}</ul>",
    "set-block": "{% set x %}<b>{{ v }}</b>{% endset %}<p>{{ x|length }} {{ x }}</p>",
    "macro": "{% macro m(a) %}<b>{{ a }}</b>{% endmacro %}<p>{{ m(v) }} {{ m(w)|length }}</p>",
    "caller": "{% macro m() %}<i>{{ caller() }}</i>{% endmacro %}"
    "{% call m() %}{{ v }}{% endcall %}",
    "filter-block": "{% filter upper %}<p>{{ v }}</p>{% endfilter %}",
    "self-block": "<h1>{{ self.subject() }}{{ self.extra()|length }}</h1>"
    "{% block extra %}<i>{{ w }}</i>{% endblock %}",
    "markup-values": "<p>{{ v|urlize }}</p><p {{ {'title': w}|xmlattr }}>{{ v|e }}</p>"
    "<script>{{ w|tojson }}</script>",
    "constants": "<p>{{ none }}{{ 'lit' }}{{ 1 + 1 }}{{ '<b>' }}</p><p>{{ v }}</p>",
    "include": '{% include "part.j2" %}<p>{{ w }}</p>',
    "import": '{% import "part.j2" as part %}<p>{{ part|string|length }}{{ v }}</p>',
    "big": "<p>{{ v }}{{ w }}</p>{% for i in range(9) %}<i>{{ big }}</i>{% endfor %}",
}


def write(folder: Path) -> list[str]:
    folder.mkdir(exist_ok=True)
    (folder / "part.j2").write_text("<div class='p'>{{ v }}</div>")
    for name, body in HAZARDS.items():
        (folder / f"{name}.j2").write_text(
            "{% block subject %}S {{ v }}{% endblock %}{% block html %}<style>p { margin: 0 } "
            f".p {{ color: red }}</style>{body}{{% endblock %}}"
        )
    return list(HAZARDS)


def variables(v: Any, w: Any, big: str = "") -> dict[str, Any]:
    return {"v": v, "w": w, "big": big, "unsubscribe_url": "u", "now": NOW, "lead": {}}


def per_email(folder: Path) -> Renderer:
    """The straightforward path: every email's page inlined on its own."""
    renderer = Renderer(folder)
    renderer.shapes.tracks = lambda template: False  # type: ignore[method-assign]
    return renderer


def same(got: Sequence[Rendered | TemplateError], want: Sequence[Rendered | TemplateError]) -> None:
    assert len(got) == len(want)
    for one, other in zip(got, want, strict=True):
        assert type(one) is type(other)
        if isinstance(one, TemplateError):
            assert (one.message, one.file, one.line) == (other.message, other.file, other.line)  # type: ignore[union-attr]
        else:
            assert one == other


def filled(renderer: Renderer) -> int:
    """How many shapes the renderer could use."""
    return sum(shape is not None for shape in renderer.shapes.known.values())


def test_hazard_templates_with_hostile_values_inline_as_each_email_alone(tmp_path: Path) -> None:
    names = write(tmp_path / "t")
    # A plain value first, so that each shape is learnt and then used for the hostile ones;
    # then every pair of hostile values, in an order of their own, in batches of every size.
    jobs = [(name, variables("Ana", "Bo")) for name in names]
    pairs = list(itertools.product(HOSTILE, ["Bo", "", " ", "A&B", MARK, "x\r"]))
    random.Random(3).shuffle(pairs)
    jobs += [(name, variables(v, w)) for name in names for v, w in pairs]
    jobs += [(name, variables("a" * 600_000, "b" * 450_000)) for name in ("text", "href")]
    renderer, reference = Renderer(tmp_path / "t"), per_email(tmp_path / "t")
    got: list[Rendered | TemplateError] = []
    sizes = itertools.cycle([1, 7, 50, 500])
    while len(got) < len(jobs):
        got += renderer.render_many(jobs[len(got) : len(got) + next(sizes)])
    same(got, reference.render_many(jobs))
    assert filled(renderer) >= 10  # the shortcut was taken, not only its fallback
    assert any(isinstance(result, TemplateError) for result in got)


def test_a_hostile_first_email_of_a_shape_gives_the_same_emails(tmp_path: Path) -> None:
    names = write(tmp_path / "t")
    for first in HOSTILE[:24]:
        jobs = [(name, variables(v, w)) for name in names for v, w in ((first, first),
                ("Ana", "Bo"), ("Zoë", "C&D"), (" ", ""))]  # fmt: skip
        same(
            Renderer(tmp_path / "t").render_many(jobs), per_email(tmp_path / "t").render_many(jobs)
        )


def hazard_cases(names: Iterable[str], size: int) -> st.SearchStrategy[list[tuple[str, str, str]]]:
    """Up to 12 (template, value, value) cases over the named hazard templates."""
    text = st.text(max_size=size)
    return st.lists(st.tuples(st.sampled_from(sorted(names)), text, text), min_size=1, max_size=12)


def render_alike(
    folder: Path, write: Callable[[Path], object], cases: list[tuple[str, str, str]]
) -> None:
    """Each case's template rendered with a plain first email, then with the case's values,
    gives the same emails in one batch as each email rendered alone (templates written once)."""
    if not folder.exists():
        write(folder)
    jobs = [(name, variables("Ana", "Bo")) for name, _, _ in cases]
    jobs += [(name, variables(v, w)) for name, v, w in cases]
    same(Renderer(folder).render_many(jobs), per_email(folder).render_many(jobs))


GENERATED = settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


@GENERATED
@given(hazard_cases(HAZARDS, 12))
def test_generated_values_in_hazard_templates(
    tmp_path: Path, cases: list[tuple[str, str, str]]
) -> None:
    render_alike(tmp_path / "t", write, cases)


def generated(count: int, seed: int) -> list[tuple[str, dict[str, Any]]]:
    draw = random.Random(seed)
    names = [n for n in Renderer(ROOT / "templates").names() if n != "layout"]
    pieces = [p for p in HOSTILE if isinstance(p, str) and len(p) < 100] + ["Ana", "Acme", "Ltd"]

    def text() -> str | None:
        if draw.random() < 0.1:
            return None
        if draw.random() < 0.7:
            return f"{draw.choice(['Ana', 'Bo', 'Zoë', 'Li'])} {draw.randrange(10_000)}"
        return "".join(draw.choice(pieces) for _ in range(draw.randrange(4)))

    jobs = []
    for i in range(count):
        lead = lead_context(
            f"lead{i}@example.com",
            {"first_name": text(), "company": text(), "job_title": text(),
             "company_size": draw.choice([None, 12, 250])},
            score=draw.randrange(100),
            scores={"fit": 1},
            temperature="warm",
            stage="lead",
            tags=[],
        )  # fmt: skip
        url = f"https://nurture.example/unsubscribe?token={draw.randbytes(8).hex()}"
        if draw.random() < 0.1:
            url += f"&x={text()}"
        jobs.append((draw.choice(names), context(lead, campaign="c", step=1, unsubscribe_url=url,
                                                 now=NOW)))  # fmt: skip
    return jobs


def test_generated_jobs_over_the_shipped_templates(tmp_path: Path) -> None:
    jobs = generated(3000, 11)
    renderer = Renderer(ROOT / "templates")
    got = [result for i in range(0, len(jobs), 250) for result in
           renderer.render_many(jobs[i : i + 250])]  # fmt: skip
    same(got, per_email(ROOT / "templates").render_many(jobs))
    assert filled(renderer) >= 13  # every shipped template has a usable shape


def test_a_template_that_keeps_changing_shape_stops_being_tracked(tmp_path: Path) -> None:
    (tmp_path / "many.j2").write_text(
        "{% block subject %}S{% endblock %}{% block html %}<p>{{ v }}</p>"
        "{% for i in range(n) %}<i>{{ i }}</i>{% endfor %}{% endblock %}"
    )
    renderer = Renderer(tmp_path)
    jobs = [("many", {"v": f"v{n}", "n": n}) for n in range(shapes.MAX_MISSES + 30)]
    same(renderer.render_many(jobs), per_email(tmp_path).render_many(jobs))
    assert not renderer.shapes.tracks(str(tmp_path / "many.j2"))
    assert len(renderer.shapes.known) <= shapes.MAX_MISSES


def test_shapes_kept_stay_within_the_bound(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(shapes, "MAX_CHARS", 3_000)
    (tmp_path / "grow.j2").write_text(
        "{% block subject %}S{% endblock %}{% block html %}<p>{{ v }}</p>"
        "{% for i in range(n) %}x{% endfor %}{% endblock %}"
    )
    renderer = Renderer(tmp_path)
    jobs = [("grow", {"v": "a", "n": 100 * n}) for n in range(30)] * 2
    same(renderer.render_many(jobs), per_email(tmp_path).render_many(jobs))
    assert 0 < renderer.shapes.chars <= 3_000


def test_a_tracked_render_marks_printed_values_and_doubts_captured_ones(tmp_path: Path) -> None:
    renderer = Renderer(tmp_path)
    printed = renderer.env.from_string("<p>{{ a }}</p>{{ b }}")
    captured = renderer.env.from_string("{% set x %}{{ a }}{% endset %}{{ x|length }}")
    with tracking() as tracked:
        page = "".join(printed.root_render_func(printed.new_context({"a": "<A>", "b": 2})))
    assert (page, tracked.values, tracked.doubt) == (
        f"<p>{MARK}</p>{MARK}",
        ["&lt;A&gt;", "2"],
        False,
    )
    assert Marked(page, tracked.values).plain() == "<p>&lt;A&gt;</p>2"
    with tracking() as tracked, pytest.raises(SecurityError, match="captured"):
        "".join(captured.root_render_func(captured.new_context({"a": "A"})))
    assert tracked.doubt
    # Untracked, nothing is marked; a template compiled inside a tracked render keeps no mark.
    with tracking():
        constant = renderer.env.from_string("{{ 'c' }}{{ none }}")
    assert "".join(constant.root_render_func(constant.new_context({}))) == "cNone"


def test_a_shape_refuses_what_it_cannot_be_sure_of() -> None:
    page = Marked(f'<p class="{MARK}">{MARK}</p>', ["a", "b"])
    inliner = Renderer(ROOT / "templates").inliner
    assert Shape.of(page, inliner.inline(page.sketch())) is None  # a class attribute
    page = Marked(f'<p title="{MARK}">{MARK}</p>', ["a", "b"])
    shape = Shape.of(page, inliner.inline(page.sketch()))
    assert shape is not None and shape.attributes == (True, False)
    assert shape.fill(["", "b"]) is not None  # an empty attribute is fine
    for text in ("", " b", "\nb", "b\r", f"b{MARK}", "<b>", "&copy;", "\ud800"):
        assert shape.fill(["a", text]) is None, text
    assert shape.fill(["&#34;&amp;", "&lt;\xa0&#39;"]) == (
        '<html><head></head><body><p title="&quot;&amp;">&lt;&nbsp;\'</p></body></html>'
    )
