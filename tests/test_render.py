"""Templates as a marketer writes them and as a lead receives them: strict, escaped, sandboxed,
bounded in time, CSS inlined, a text part always present, errors with file and line."""

from __future__ import annotations

import os
import time
import tracemalloc
from datetime import UTC, datetime
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from engine.render.templates import Renderer, TemplateError, context, lead_context, sample_context

NOW = datetime(2026, 11, 2, 10, 0, tzinfo=UTC)


def write(folder: Path, name: str, text: str) -> None:
    path = folder / f"{name}.j2"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def email(subject: str, html: str, text: str | None = None) -> str:
    body = f"{{% block subject %}}{subject}{{% endblock %}}{{% block html %}}{html}{{% endblock %}}"
    return body + (f"{{% block text %}}{text}{{% endblock %}}" if text is not None else "")


def variables(**attributes: object) -> dict[str, object]:
    lead = lead_context(
        "ana@acme.io",
        attributes,
        score=45,
        scores={"fit": 20, "engagement": 25},
        temperature="warm",
        stage="lead",
        tags=[],
    )
    return context(lead, campaign="warm-nurture", step=1, unsubscribe_url="https://u/x", now=NOW)


def render_one(tmp_path: Path, template: str, **attributes: object) -> object:
    write(tmp_path, "t", template)
    return Renderer(tmp_path).render("t", variables(**attributes))


def test_subject_html_and_a_derived_text_part(tmp_path: Path) -> None:
    out = render_one(
        tmp_path,
        "<style>p { color: #336699 }</style>"
        + email(
            "Hi {{ lead.first_name or 'there' }}",
            '<p>Score {{ lead.score }}: <a href="https://acme.example/x">read it</a></p>',
        ),
        first_name="Ana",
    )
    assert out.subject == "Hi Ana"  # type: ignore[attr-defined]
    assert 'style="color: #336699' in out.html  # type: ignore[attr-defined]
    assert "<style>" not in out.html  # type: ignore[attr-defined]
    assert "Score 45: [read it](https://acme.example/x)" in out.text  # type: ignore[attr-defined]


def test_a_missing_profile_attribute_is_empty_but_a_misspelt_one_is_an_error(
    tmp_path: Path,
) -> None:
    out = render_one(tmp_path, email("Hi {{ lead.company }}!", "<p>x</p>"))
    assert out.subject == "Hi !"  # type: ignore[attr-defined]
    write(tmp_path, "bad", email("Hi", "<p>\n\n{{ lead.frist_name }}</p>"))
    with pytest.raises(TemplateError) as caught:
        Renderer(tmp_path).render("bad", variables())
    assert caught.value.file is not None and caught.value.file.endswith("bad.j2")
    assert caught.value.line == 3
    assert "frist_name" in str(caught.value)


def test_the_subject_and_text_are_plain_text_not_html(tmp_path: Path) -> None:
    out = render_one(
        tmp_path, email("Tips & {{ lead.company }}", "<p>x</p>", "For {{ lead.company }}"),
        company="A&B <Co>",
    )  # fmt: skip
    assert out.subject == "Tips & A&B <Co>"  # type: ignore[attr-defined]
    assert out.text == "For A&B <Co>"  # type: ignore[attr-defined]


def test_values_are_escaped_and_cannot_be_unescaped(tmp_path: Path) -> None:
    out = render_one(
        tmp_path, email("x", "<p>{{ lead.company }}</p>"), company="<script>x</script>"
    )
    assert "<script>" not in out.html and "&lt;script&gt;" in out.html  # type: ignore[attr-defined]
    with pytest.raises(TemplateError, match="safe"):
        render_one(tmp_path, email("x", "{{ lead.company | safe }}"), company="<b>")
    with pytest.raises(TemplateError, match="autoescape"):
        render_one(
            tmp_path,
            email("x", "{% autoescape false %}{{ lead.company }}{% endautoescape %}"),
            company="<b>",
        )


def test_the_sandbox_refuses_python_internals(tmp_path: Path) -> None:
    with pytest.raises(TemplateError, match="unsafe"):
        render_one(tmp_path, email("x", "{{ lead.__class__.__mro__ }}"))
    with pytest.raises(TemplateError):
        render_one(tmp_path, email("x", "{{ ''.__class__.__subclasses__() }}"))


@pytest.mark.parametrize(
    "body",
    [
        "{% for a in range(9999) %}{% for b in range(9999) %}{% endfor %}{% endfor %}",
        "{{ 'x' * 10000000 }}",
        "{{ range(100000000) | list | length }}",
    ],
)
def test_a_runaway_template_is_stopped(tmp_path: Path, body: str) -> None:
    started = datetime.now(UTC)
    with pytest.raises(TemplateError):
        render_one(tmp_path, email("x", body))
    assert (datetime.now(UTC) - started).total_seconds() < 5


def test_an_email_without_a_subject_block_is_an_error_not_a_blank_email(tmp_path: Path) -> None:
    write(tmp_path, "layout", "<html>{% block html %}{% endblock %}</html>")
    with pytest.raises(TemplateError, match="subject"):
        Renderer(tmp_path).render("layout", variables())
    with pytest.raises(TemplateError, match="subject is empty"):
        render_one(tmp_path, email("{{ lead.company }}", "<p>x</p>"))


def test_layouts_wrap_the_html_and_a_text_block_wins(tmp_path: Path) -> None:
    write(
        tmp_path,
        "layout",
        "<div>{% block html %}{% endblock %}<a href='{{ unsubscribe_url }}'>u</a></div>",
    )
    write(
        tmp_path,
        "warm/a",
        '{% extends "layout.j2" %}' + email("S", "<p>Body</p>", "Plain {{ lead.email }}"),
    )
    out = Renderer(tmp_path).render("warm/a", variables())
    assert "<p>Body</p>" in out.html and "https://u/x" in out.html
    assert "S" not in out.html.replace("https", "")  # the subject is not part of the page
    assert out.text == "Plain ana@acme.io"


def test_check_reports_every_broken_template_with_file_and_line(tmp_path: Path) -> None:
    write(tmp_path, "layout", "<div>{% block html %}{% endblock %}</div>")
    write(tmp_path, "good", '{% extends "layout.j2" %}' + email("Hi {{ lead.first_name }}", "x"))
    write(tmp_path, "syntax", email("Hi", "{% if %}"))
    write(tmp_path, "undefined", email("Hi", "\n{{ lead.nope }}"))
    problems = Renderer(tmp_path).check()
    found = {Path(p.file or "").stem: p for p in problems}
    assert set(found) == {"syntax", "undefined"}
    assert found["undefined"].line == 2
    assert found["syntax"].line == 1


def test_sample_context_renders_the_shipped_templates() -> None:
    folder = Path(__file__).resolve().parent.parent / "templates"
    renderer = Renderer(folder)
    assert renderer.check() == []
    for name in renderer.names():
        if name != "layout":
            out = renderer.render(name, sample_context())
            assert out.subject and "unsubscribe?token=" in out.html and out.text


def test_a_recursive_macro_is_held_and_the_rest_of_the_batch_renders(tmp_path: Path) -> None:
    # Recursion that only one lead's data sets off: that lead's email is held with a clear
    # error, the other email of the batch renders.
    write(
        tmp_path,
        "t",
        "{% macro down(n) %}{% if lead.first_name == 'Loop' %}{{ down(n + 1) }}"
        "{% endif %}{{ n }}{% endmacro %}" + email("Hi", "<p>{{ down(0) }}</p>"),
    )
    bad, good = Renderer(tmp_path).render_many(
        [("t", variables(first_name="Loop")), ("t", variables(first_name="Ana"))]
    )
    assert isinstance(bad, TemplateError) and "nested" in str(bad)
    assert not isinstance(good, TemplateError) and "<p>0</p>" in good.html


@pytest.mark.parametrize(
    "body",
    [
        "{% include 't.j2' %}",  # a template that includes itself
        "{{ {}.pop('x') }}",  # any Python error a method raises
        "{{ [].pop() }}",
    ],
)
def test_any_error_a_template_raises_is_a_template_error(tmp_path: Path, body: str) -> None:
    with pytest.raises(TemplateError):
        render_one(tmp_path, email("x", body))


# Each builds a value far larger than an email from a few characters of template: refused
# before the memory is taken, not after.
BOMBS = {
    "lipsum-paragraphs": "{{ lipsum(30000) }}",
    "lipsum-words": "{{ lipsum(1, max=30000000) }}",
    "ljust": "{{ 'x'.ljust(50000000) }}",
    "center-method": "{{ 'x'.center(50000000) }}",
    "center-filter": "{{ 'x'|center(50000000) }}",
    "zfill": "{{ '7'.zfill(50000000) }}",
    "expandtabs": "{{ 'a\tb'.expandtabs(50000000) }}",
    "format-filter-width": "{{ '%050000000d'|format(7) }}",
    "percent-width": "{{ '%050000000d' % 7 }}",
    "percent-precision": "{{ '%.50000000f' % 1.5 }}",
    "str-format-width": "{{ '{:>50000000}'.format(7) }}",
    "str-format-nested-width": "{{ '{:{w}}'.format(7, w=50000000) }}",
    "replace-filter": "{{ ('x' * 9000)|replace('', 'y' * 9000) }}",
    "replace-method": "{{ ('x' * 9000).replace('', 'y' * 9000) }}",
    "join-shared": "{{ (['x' * 9000] * 9000)|join }}",
    "join-method": "{{ ('y' * 9000).join(['x'] * 9000) }}",
    "map-shared": "{{ (['x' * 9000] * 9000)|map('upper')|join }}",
    "wordwrap": "{{ ('a b ' * 5000)|wordwrap(1, wrapstring='y' * 9000) }}",
    "indent": "{{ ('a\n' * 9000)|indent(9000) }}",
    "batch-fill": "{{ [1]|batch(50000000, 0)|list|length }}",
    "slice": "{{ [1]|slice(50000000)|list|length }}",
    "string-of-shared": "{{ (['x' * 9000] * 9000)|string|length }}",
    "print-shared": "{{ ['x' * 9000] * 9000 }}",
    "big-integers": "{{ (10 ** 100) ** 100 * (10 ** 100) ** 100 }}",
    "concat-doubling": "{% set ns = namespace(s='x') %}"
    "{% for i in range(27) %}{% set ns.s = ns.s ~ ns.s %}{% endfor %}{{ ns.s|length }}",
    "plus-doubling": "{% set ns = namespace(s='x') %}"
    "{% for i in range(27) %}{% set ns.s = ns.s + ns.s %}{% endfor %}{{ ns.s|length }}",
    "extend-doubling": "{% set items = ['x'] %}"
    "{% for i in range(24) %}{{ items.extend(items) or '' }}{% endfor %}{{ items|length }}",
    "macro-output": "{% macro big() %}{% for i in range(1000) %}{{ 'x' * 90000 }}{% endfor %}"
    "{% endmacro %}{{ big()|length }}",
    "set-block-output": "{% set page %}{% for i in range(1000) %}{{ 'x' * 90000 }}{% endfor %}"
    "{% endset %}{{ page|length }}",
}


@pytest.mark.parametrize("body", list(BOMBS.values()), ids=list(BOMBS))
def test_a_template_cannot_build_a_huge_value(tmp_path: Path, body: str) -> None:
    tracemalloc.start()
    try:
        started = time.monotonic()
        with pytest.raises(TemplateError):
            render_one(tmp_path, email("x", body))
        elapsed = time.monotonic() - started
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 30_000_000, f"{peak:,} bytes taken"
    assert elapsed < 5


@pytest.mark.parametrize(
    ("body", "shown"),
    [
        ("{{ '%05.1f'|format(lead.score) }}", "045.0"),
        ("{{ '{:>6}'.format(lead.score) }}", "    45"),
        ("{{ 'a' ~ lead.score ~ 'b' }}", "a45b"),
        ("{{ ['a', 'b']|join(', ') }}", "a, b"),
        ("{{ now.strftime('%d %B %Y') }}", "02 November 2026"),
        ("{{ '{:%Y-%m-%d}'.format(now) }}", "2026-11-02"),
        ("{{ lipsum(1, html=False, min=3, max=4)|wordcount }}", "3"),
        ("{{ (lead.tags + ['x'])|join }}", "x"),
        ("{{ 2 ** 10 * 3 }}", "3072"),
    ],
)
def test_ordinary_formatting_still_works(tmp_path: Path, body: str, shown: str) -> None:
    out = render_one(tmp_path, email("x", f"<p>{body}</p>"))
    assert f"<p>{shown}</p>" in out.html  # type: ignore[attr-defined]


def test_check_reports_a_template_too_deep_to_compile(tmp_path: Path) -> None:
    write(tmp_path, "deep", email("x", "{{ " + "(" * 5000 + "1" + ")" * 5000 + " }}"))
    write(tmp_path, "good", email("Hi", "<p>x</p>"))
    problems = Renderer(tmp_path).check()
    assert [Path(p.file or "").stem for p in problems] == ["deep"]
    with pytest.raises(TemplateError):
        Renderer(tmp_path).render("deep", variables())


def test_an_edit_of_a_template_or_its_layout_reaches_the_next_batch(tmp_path: Path) -> None:
    write(tmp_path, "layout", "<html><body>{% block html %}{% endblock %} v1</body></html>")
    child = '{% extends "layout.j2" %}{% block subject %}Hello {{ lead.first_name }}{% endblock %}'
    write(tmp_path, "a", child + "{% block html %}<p>one</p>{% endblock %}")
    renderer = Renderer(tmp_path)
    first = renderer.render_many([("a", variables(first_name="Ana"))] * 3)
    assert {r.html for r in first if not isinstance(r, TemplateError)} == {
        "<html><head></head><body><p>one</p> v1</body></html>"
    }
    write(tmp_path, "layout", "<html><body>{% block html %}{% endblock %} v2</body></html>")
    write(tmp_path, "a", child.replace("Hello", "Hi") + "{% block html %}<p>two</p>{% endblock %}")
    for path in tmp_path.glob("*.j2"):  # a later mtime, however coarse the file system's clock
        stamp = path.stat().st_mtime + 5
        os.utime(path, (stamp, stamp))
    [second] = renderer.render_many([("a", variables(first_name="Ana"))])
    assert not isinstance(second, TemplateError)
    assert second.subject == "Hi Ana"
    assert second.html == "<html><head></head><body><p>two</p> v2</body></html>"


def test_templates_looked_up_once_per_batch_render_as_looked_up_each_time(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Within a batch a template (a layout, an include, an import) is looked up once and then
    given as found: the emails are those of a renderer that looks every one up each time, and
    outside a batch nothing is kept."""
    from contextlib import nullcontext

    from jinja2.sandbox import SandboxedEnvironment

    write(
        tmp_path,
        "layout",
        "<html><body>{% block html %}{% endblock %} {{ now.year }}</body></html>",
    )
    write(tmp_path, "part", "<i>{{ lead.first_name }}</i>")
    write(tmp_path, "macros", "{% macro b(x) %}<b>{{ x }}</b>{% endmacro %}")
    child = '{% extends "layout.j2" %}{% import "macros.j2" as m %}'
    write(tmp_path, "a", child + email("Hi {{ lead.first_name }}",
          '{% include "part.j2" %}{{ m.b(lead.company) }}'))  # fmt: skip
    write(tmp_path, "b", email("Yo", '{% include "part.j2" %}{% include "part.j2" %}'))
    jobs = [(name, variables(first_name=f"N{i}", company=f"C{i}")) for i in range(20)
            for name in ("a", "b")]  # fmt: skip
    loads: list[str] = []
    original = SandboxedEnvironment._load_template

    def counted(self: SandboxedEnvironment, name: str, globals: object) -> object:
        loads.append(name)
        return original(self, name, globals)  # type: ignore[arg-type]

    monkeypatch.setattr(SandboxedEnvironment, "_load_template", counted)
    each_time = Renderer(tmp_path)
    each_time.env.batch = nullcontext  # type: ignore[method-assign, assignment]
    want = each_time.render_many(jobs)
    looked_up_each_time, loads[:] = len(loads), []
    renderer = Renderer(tmp_path)
    assert renderer.render_many(jobs) == want
    assert renderer.render_many(jobs[:3]) == want[:3]
    assert len(loads) < looked_up_each_time / 10  # the shortcut was taken
    assert renderer.env.batch_templates is None  # nothing kept between batches


def test_attribute_lookups_on_dicts_take_a_shortcut_that_answers_as_the_sandbox_does() -> None:
    """`lead.x` on a plain dict is read as its key when dict has no attribute ``x``: for keys
    that shadow dict methods, dunders, missing keys, dict subclasses and other objects, the
    answer (or the undefined it gives) is the sandbox's own."""
    from collections import OrderedDict, defaultdict

    from jinja2 import StrictUndefined, Undefined
    from jinja2.sandbox import SandboxedEnvironment

    from engine.render.sandbox import BoundedEnvironment

    names = ["first_name", "items", "get", "keys", "__class__", "__init__", "mro", "missing",
             "copy", "fromkeys", "", "0", "__dict__", "__getitem__"]  # fmt: skip
    base = {name: f"value of {name}" for name in names[::2]}
    objects: list[object] = [base, {}, OrderedDict(base), defaultdict(str, base),
                             type("Row", (dict,), {})(base), "text", 3, [1, 2], None]  # fmt: skip
    for undefined in (StrictUndefined, Undefined):
        ours = BoundedEnvironment(undefined=undefined)
        theirs = SandboxedEnvironment(undefined=undefined, finalize=None, autoescape=True)
        for obj in objects:
            for name in names:
                got, want = ours.getattr(obj, name), theirs.getattr(obj, name)
                assert type(got) is type(want), (obj, name)
                if isinstance(want, Undefined):
                    assert (got._undefined_obj, got._undefined_name) == (
                        want._undefined_obj,
                        want._undefined_name,
                    )
                    assert got._undefined_hint == want._undefined_hint, (obj, name)
                else:
                    assert got == want, (obj, name)


@given(st.text())
def test_a_printed_text_is_escaped_as_markupsafe_escapes_it(text: str) -> None:
    """A tracked render escapes a plain text itself, without markupsafe's Markup."""
    from markupsafe import escape

    from engine.render.sandbox import _escaped

    assert _escaped(text) == str(escape(text))
    assert _escaped(text + "&<>'\"") == str(escape(text + "&<>'\""))
