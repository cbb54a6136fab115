"""The renderer's per-email shortcuts give what the straightforward path gives, on generated
data: a printed value in one call (``_printed``) is ``escape(_finalize(value))``, tracked or
not, and templates compiled to print through it render as with Jinja2's own output code; a
template's last page, compared rather than hashed (``Shapes._known``), finds what a lookup
finds; the marks of a page remembered for the last one (``Renderer._marks``) are its count; and
a shape's NUL flag says whether an email it fills has a NUL."""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from jinja2.compiler import CodeGenerator
from markupsafe import Markup, escape

from engine.render import sandbox, shapes
from engine.render.sandbox import MARK, _finalize, _printed, tracking
from engine.render.shapes import _NEW, Shape, Shapes
from engine.render.templates import Renderer
from tests.test_render_shapes import HOSTILE, same, variables, write

VALUES = st.one_of(
    st.none(),
    st.text(),
    st.sampled_from([v for v in HOSTILE if v is not None]),
    st.integers(),
    st.floats(allow_nan=False),
    st.booleans(),
    st.builds(Markup, st.text()),
    st.lists(st.text(max_size=5), max_size=3),
    st.dictionaries(st.text(max_size=3), st.text(max_size=3), max_size=2),
)


def outcome(call: Any) -> tuple[Any, ...]:
    """What a call returns (with its type) or raises, and what a tracked render collected."""
    with tracking() as tracked:
        try:
            result: Any = call()
            answer: tuple[Any, ...] = (type(result), str(result))
        except Exception as error:
            answer = (type(error), str(error))
    return (*answer, list(tracked.values), tracked.size, tracked.doubt)


@given(VALUES)
def test_a_printed_value_is_the_escaped_finalized_value(value: Any) -> None:
    assert type(_printed(value)) is type(escape(_finalize(value)))
    assert _printed(value) == escape(_finalize(value))
    assert outcome(lambda: _printed(value)) == outcome(lambda: escape(_finalize(value)))


class _JinjaOutput(sandbox._CodeGenerator):
    """The sandbox's compiler with Jinja2's own code for printed values."""

    _output_child_pre = CodeGenerator._output_child_pre
    _output_child_post = CodeGenerator._output_child_post


def test_templates_print_as_with_jinja2s_output_code(tmp_path: Path) -> None:
    names = write(tmp_path / "t")
    jobs = [(name, variables(v, w)) for name in names for v, w in itertools.pairwise(HOSTILE)]
    renderer = Renderer(tmp_path / "t")
    plain = Renderer(tmp_path / "t")
    plain.env.code_generator_class = _JinjaOutput
    same(renderer.render_many(jobs), plain.render_many(jobs))
    untracked = Renderer(tmp_path / "t")
    untracked.shapes.tracks = lambda template: False  # type: ignore[method-assign]
    same(untracked.render_many(jobs), plain.render_many(jobs))


# Pages and pieces of a few characters, so that equal pages (as different strings) come often.
SMALL = st.text(alphabet=["a", "b", MARK, "\x00"], max_size=4)


TEMPLATES = st.sampled_from(["t1", "t2", "t3"])
# The bounds on what is remembered, as shipped and small enough to be reached.
BOUNDS = st.sampled_from([(shapes.MAX_LAST_CHARS, shapes.MAX_LAST), (2, 2), (0, 1)])


@given(st.lists(st.tuples(st.booleans(), TEMPLATES, SMALL, st.booleans()), max_size=40), BOUNDS)
def test_a_templates_last_page_finds_what_a_lookup_finds(
    steps: list[tuple[bool, str, str, bool]], bounds: tuple[int, int]
) -> None:
    found = Shapes(lambda pages: list(pages))
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(shapes, "MAX_LAST_CHARS", bounds[0])
        patch.setattr(shapes, "MAX_LAST", bounds[1])
        for learn, template, text, usable in steps:
            page = "".join(list(text))  # a string of its own, as each email's page is
            if learn:
                if page not in found.known:
                    found._learn(page, Shape((page,), ()) if usable else None)
            else:
                assert found._known(template, page) is found.known.get(page, _NEW)
            assert len(found.last.last) <= bounds[1]


@given(st.lists(st.tuples(TEMPLATES, SMALL), max_size=40), BOUNDS)
def test_the_marks_remembered_for_the_last_page_are_counted(
    pages: list[tuple[str, str]], bounds: tuple[int, int]
) -> None:
    renderer = Renderer(Path("templates"))
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(shapes, "MAX_LAST_CHARS", bounds[0])
        patch.setattr(shapes, "MAX_LAST", bounds[1])
        for file, text in pages:
            html = "".join(list(text))
            assert renderer._marks(file, html) == html.count(MARK)
            assert len(renderer.counted.last) <= bounds[1]


@given(
    st.lists(SMALL, min_size=1, max_size=4).flatmap(
        lambda pieces: st.tuples(
            st.just(pieces),
            st.lists(st.booleans(), min_size=len(pieces) - 1, max_size=len(pieces) - 1),
            st.lists(
                st.one_of(SMALL, st.sampled_from(["Ana", "x\x00", "\x00"])),
                min_size=len(pieces) - 1,
                max_size=len(pieces) - 1,
            ),
        )
    )
)
def test_a_shapes_nul_flag_says_whether_its_emails_have_one(
    case: tuple[list[str], list[bool], list[str]],
) -> None:
    pieces, attributes, values = case
    shape = Shape(tuple(pieces), tuple(attributes))
    filled = shape.fill(values)
    if filled is not None:
        assert ("\x00" in filled) == shape.nul
