"""The text part derived once per page shape (:mod:`engine.render.texts`) is, character for
character, what inscriptis gives each email's own page: on generated leads over the shipped
templates without a text block, and on templates built to trip it (table columns whose width
a value sets, centred and preformatted text, an entity that a value could complete, values in
links and in attributes inscriptis does not show) with hostile values. And it is taken: the
tests fail if no text shape was used, and a weakened check is caught by the same comparison."""

from __future__ import annotations

import itertools
import random
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given

from engine.render import texts
from engine.render.templates import Rendered, Renderer, TemplateError, html_to_text
from tests.test_render_shapes import (
    GENERATED,
    ROOT,
    generated,
    hazard_cases,
    per_email,
    render_alike,
    same,
    variables,
)

# Each prints `v` (and some `w`) where the layout as text might depend on the value.
HAZARDS = {
    "paragraph": "<p>Hi {{ v }}, from {{ w }}.</p><p>{{ v }}{{ w }}</p>",
    "columns": "<table><tr><td>{{ v }}</td><td>x</td></tr><tr><td>abc</td><td>{{ w }}</td></tr>"
    "</table>",
    "last-column": "<table><tr><td>label</td><td>{{ v }}</td></tr></table>",
    "wide-column": "<table><tr><td>" + "w" * 1200 + "</td><td>y</td></tr><tr><td>{{ v }}</td>"
    "<td>z</td></tr></table>",
    "centred": '<p style="text-align: center">{{ v }}</p><p>line</p>'
    '<table><tr><td style="text-align: right">{{ w }}</td><td>x</td></tr>'
    "<tr><td>ab</td><td>c</td></tr></table>",
    "cell-align": '<table><tr><td align="center">{{ v }}</td></tr><tr><td>abcdef</td></tr></table>',
    "nested": "<table><tr><td><table><tr><td>{{ v }}</td><td>{{ w }}</td></tr></table></td>"
    "<td>k</td></tr></table>",
    "entity": "<p>&amp;am{{ v }}</p><p>AT&amp;T{{ w }}</p>",
    "entity-start": "<p>&amp;{{ v }};</p>",
    "entity-far": "<p>Q&amp;A: a few words before the value here {{ v }}</p>",
    "link": '<p><a href="{{ v }}">{{ w }}</a> and <a href="https://x.example/?id={{ w }}">x</a>'
    "</p>",
    "unshown": '<img src="{{ v }}" alt="{{ w }}"><a title="{{ v }}" href="h">t</a>',
    "pre": '<pre>{{ v }}  {{ w }}</pre><p style="white-space: pre">{{ v }} </p>',
    "lists": "<ul><li>{{ v }}</li><li>{{ w }}</li></ul><ol><li>{{ v }}</li></ol>",
    "blocks": "<h1>{{ v }}</h1><blockquote>{{ w }}</blockquote><div>{{ v }}<br>{{ w }}</div>",
    "hidden": '<span style="display: none">{{ v }}</span><p>{{ w }}</p>',
    "edges": "{{ v }}<p>x</p>{{ w }}",
    "adjacent": "<p>{{ v }}{{ w }}{{ v }}</p>",
}

HOSTILE: list[Any] = [
    "Ana", "Lead 17", "", " ", "x ", " x", "a  b", "a\tb", "a\nb", "\xa0", "a\xa0b", "A&B",
    "&amp;", "amp;", "p;", "p;x", ";", "#38;", "lt;", "é中😀", "日本語" * 40, "x" * 399,
    "x" * 400, "y" * 401, "z" * 999, "a\u200bb", "\u0301x", "\u202ertl", "\ufeffx", "x\r",
    "[x](y)", "<b>b</b>", '"q"', "'s", "\U000f0001", "\U0010fffd", "\x85", "a\u3000b", None, 0,
]  # fmt: skip


def write(folder: Path) -> list[str]:
    folder.mkdir(exist_ok=True)
    for name, body in HAZARDS.items():
        (folder / f"{name}.j2").write_text(
            "{% block subject %}S {{ v }}{% endblock %}{% block html %}<style>p { margin: 0 } "
            f"td {{ padding: 2px }}</style>{body}{{% endblock %}}"
        )
    return list(HAZARDS)


def used(renderer: Renderer) -> int:
    """How many text shapes were checked against an email and kept."""
    return sum(shape is not None and checked for _, shape, checked in renderer.texts.known.values())


def hostile_jobs(
    names: list[str], first: tuple[str, str] = ("Ana", "Bo")
) -> list[tuple[str, dict[str, Any]]]:
    # A plain value first, so that each shape (and its text) is learnt and then used for the
    # hostile ones; then every pair of hostile values, in an order of their own.
    jobs = [(name, variables(*first)) for name in names]
    pairs = list(itertools.product(HOSTILE, ["Bo", "", "A&B", "p;", "x" * 300, "a  b"]))
    random.Random(5).shuffle(pairs)
    return jobs + [(name, variables(v, w)) for name in names for v, w in pairs]


def test_hazard_templates_with_hostile_values_give_each_email_its_own_text(
    tmp_path: Path,
) -> None:
    names = write(tmp_path / "t")
    jobs = hostile_jobs(names)
    renderer = Renderer(tmp_path / "t")
    got: list[Rendered | TemplateError] = []
    sizes = itertools.cycle([1, 9, 60, 500])
    while len(got) < len(jobs):
        got += renderer.render_many(jobs[len(got) : len(got) + next(sizes)])
    same(got, per_email(tmp_path / "t").render_many(jobs))
    for result in got:  # and the reference is inscriptis on the email's own page
        if isinstance(result, Rendered):
            assert result.text == html_to_text(result.html)
    assert used(renderer) >= 8  # the shortcut was taken, not only its fallback
    kept = {name for name in names if _kept(tmp_path / "t", name)}
    # Where a value's length moves the layout (a column's width), or an entity could run on
    # into a value, the text is laid out per email.
    assert not kept & {"columns", "centred", "entity", "entity-start", "entity-far", "wide-column"}
    assert {"paragraph", "link", "lists", "blocks", "last-column"} <= kept


def _kept(folder: Path, name: str) -> bool:
    """Whether emails of template ``name`` with plain values take their text from a shape."""
    renderer = Renderer(folder)
    renderer.render_many([(name, variables(v, w)) for v, w in (("Ana", "Bo"), ("Cy", "Di"))])
    return used(renderer) > 0


@pytest.mark.parametrize("weaken", ["one probe length", "a short entity reach"])
def test_a_weakened_check_is_caught_by_the_comparison(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, weaken: str
) -> None:
    """The comparison above has teeth: without the long probe (a column's width then follows
    the value) or the look for an `&` before a value, some emails' texts differ. (The first
    email of each shape, one-letter values, lays out as the probes do, so the check against
    it lets the weakened text shape in.)"""
    if weaken == "one probe length":
        monkeypatch.setattr(texts, "LONG", 1)
    else:
        monkeypatch.setattr(texts, "ENTITY_REACH", 1)
    names = write(tmp_path / "t")
    jobs = hostile_jobs(names, first=("A", "B"))
    got = Renderer(tmp_path / "t").render_many(jobs)
    want = per_email(tmp_path / "t").render_many(jobs)
    assert any(
        isinstance(one, Rendered) and isinstance(other, Rendered) and one.text != other.text
        for one, other in zip(got, want, strict=True)
    )


@GENERATED
@given(hazard_cases(HAZARDS, 14))
def test_generated_values_in_hazard_templates(
    tmp_path: Path, cases: list[tuple[str, str, str]]
) -> None:
    render_alike(tmp_path / "t", write, cases)


def test_generated_jobs_over_the_shipped_templates_without_a_text_block() -> None:
    names = Renderer(ROOT / "templates").names()
    textless = [
        n for n in names
        if n != "layout" and "text" not in Renderer(ROOT / "templates").env.get_template(
            n + ".j2").blocks
    ]  # fmt: skip
    assert len(textless) >= 5
    jobs = [job for job in generated(4000, 23) if job[0] in textless]
    renderer = Renderer(ROOT / "templates")
    got = [result for i in range(0, len(jobs), 250) for result in
           renderer.render_many(jobs[i : i + 250])]  # fmt: skip
    same(got, per_email(ROOT / "templates").render_many(jobs))
    assert used(renderer) >= len(textless)  # each has a text shape in use
