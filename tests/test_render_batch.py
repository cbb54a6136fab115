"""Rendering a batch takes shortcuts (each template looked up once per batch, the blocks and the
page rendered in one context, CSS inlined once per page shape): on generated leads and templates
of every shape, a batch gives exactly what each email rendered on its own, the plain way, gives."""

from __future__ import annotations

import random
import shutil
from collections.abc import Iterator
from datetime import UTC, datetime
from html import unescape
from pathlib import Path
from typing import Any

from jinja2.runtime import Context

from engine.render.templates import Rendered, Renderer, TemplateError, context, lead_context

ROOT = Path(__file__).resolve().parent.parent
NOW = datetime(2026, 11, 2, 10, 0, tzinfo=UTC)
SHAPES = {
    # A stand-alone template: its subject and text blocks sit in its body.
    "solo": "<style>p { color: red } .x { font-weight: bold }</style>{% block subject %}Hi "
    '{{ lead.first_name }}{% endblock %}{% block html %}<p class="x">{{ lead.company }}</p>'
    '<a href="{{ unsubscribe_url }}" title="{{ lead.job_title }}">{{ lead.first_name }}</a>'
    "{% endblock %}{% block text %}T {{ lead.first_name }}{% endblock %}",
    # Top-level set, super(), self.subject() in the page, a loop, a macro in the text block.
    "layered": '{% extends "base.j2" %}{% set greeting = "Hello" %}'
    "{% macro up(v) %}{{ v | upper }}{% endmacro %}"
    "{% block subject %}{{ super() }} {{ lead.company or 'you' }}{% endblock %}"
    "{% block html %}<h1>{{ self.subject() }}</h1>{% for t in lead.tags %}<i>{{ t }}</i>"
    "{% endfor %}{% if lead.score > 50 %}<table><tr><td>{{ lead.score }}</td></tr></table>"
    "{% else %}<pre>\n{{ lead.first_name }}</pre>{% endif %}{{ super() }}{% endblock %}"
    "{% block text %}{{ up(lead.first_name or 'x') }}{% endblock %}",
    "base": "<!doctype html><html><head><style>h1 { color: #123 } td { padding: 2px } "
    "a[href] { color: blue } i:empty { display: none }</style></head><body>{% block html %}"
    '<p>base</p>{% endblock %}<a href="{{ unsubscribe_url }}">stop</a> &copy; 2026 &amp; '
    "more</body></html>{% block subject %}Base{% endblock %}",
    "broken": "{% block subject %}x{% endblock %}{% block html %}{{ lead.frist_name }}"
    "{% endblock %}",
    "nosubject": "{% block html %}<p>hi</p>{% endblock %}",
    "syntax": "{% block subject %}x{% endblock %}{% block html %}{% if %}{% endblock %}",
    "badcss": '{% block subject %}x{% endblock %}{% block html %}<p style="{{ lead.company }}">'
    "x</p>{% endblock %}",
}
PIECES = ["Ana", "Zoë", "<b>", "a & b", "&amp;", '"q"', "'s", "\xa0", "\u00e9t\u00e9", " ", "",
          "\ue000", "1", "Acme, Inc.", "x" * 40, "<!--", "]]>", "&copy=", "\t",
          "{{ x }}"]  # fmt: skip


def text(draw: random.Random) -> str | None:
    if draw.random() < 0.15:
        return None
    return "".join(draw.choice(PIECES) for _ in range(draw.randrange(4)))


def leads(seed: int, count: int) -> Iterator[dict[str, Any]]:
    draw = random.Random(seed)
    for i in range(count):
        lead = lead_context(
            f"lead{i}@example.com",
            {"first_name": text(draw), "company": text(draw), "job_title": text(draw)},
            score=draw.randrange(100),
            scores={"fit": 1},
            temperature="warm",
            stage="lead",
            tags=[t for t in (text(draw), text(draw)) if t is not None],
        )
        url = f"https://nurture.example/unsubscribe?token={draw.randbytes(8).hex()}&x={text(draw)}"
        yield context(lead, campaign="c", step=1, unsubscribe_url=url, now=NOW)


def folder(tmp_path: Path) -> Path:
    shutil.copytree(ROOT / "templates", tmp_path / "t")
    for name, body in SHAPES.items():
        (tmp_path / "t" / f"{name}.j2").write_text(body)
    return tmp_path / "t"


def test_a_batch_renders_what_each_email_alone_renders(tmp_path: Path) -> None:
    templates = folder(tmp_path)
    names = [n for n in Renderer(templates).names() if n != "layout"]
    draw = random.Random(7)
    jobs = [(draw.choice(names), v) for v in leads(15, 600)]
    batch = Renderer(templates).render_many(jobs)
    kinds = set()
    for (name, variables), got in zip(jobs, batch, strict=True):
        [alone] = Renderer(templates).render_many([(name, variables)])
        assert type(got) is type(alone), name
        if isinstance(got, TemplateError):
            assert str(got) == str(alone)
        else:
            assert got == alone, name
        kinds.add(type(got))
    assert kinds == {Rendered, TemplateError}


def _nothing(_scope: Context) -> Iterator[str]:
    yield from ()


def test_the_blocks_and_the_page_render_as_in_contexts_of_their_own(tmp_path: Path) -> None:
    templates = folder(tmp_path)
    renderer = Renderer(templates)
    for name in ("solo", "layered", "base", "warm/case-study", "customer/win-back-offer"):
        template = renderer.env.get_template(f"{name}.j2")
        for variables in leads(16, 40):
            draft = renderer._draft(f"{name}.j2", template, variables)
            try:
                blocks = template.new_context(dict(variables))
                parts = {b: "".join(template.blocks[b](blocks)) for b in ("subject", "text")
                         if b in template.blocks}  # fmt: skip
                page = template.new_context(dict(variables))
                for block in parts:
                    page.blocks[block] = [_nothing]
                html = "".join(template.root_render_func(page)).strip()
            except Exception as error:
                assert isinstance(draft, TemplateError) and draft.message == str(error)
                continue
            assert not isinstance(draft, TemplateError), draft
            assert draft.page == html
            assert draft.subject == " ".join(unescape(parts["subject"]).split())
            assert draft.text == unescape(parts.get("text", "")).strip()
