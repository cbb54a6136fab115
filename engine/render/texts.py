"""The text part of a template without a text block, derived once per page shape, not once
per email.

inscriptis lays a page out as text in Python, ~0.4–0.9 ms an email (several times the rest of
its render). Emails of one page shape (:mod:`engine.render.shapes`) differ only in their
values, so the shape's page is laid out with a *probe* in each value's place, and each email's
text is the laid-out pieces with its values written in. This is only done where that is the
text inscriptis gives the email's own page, and every doubt lays the email's page out itself:

- a shape is laid out twice, with probes of 1 and of :data:`LONG` characters: its text is used
  only when each probe comes out exactly once, whole, and the text around the probes is the
  same both times, so nothing in the layout (a table column's width, a centred line's padding)
  depends on how long a value is, for any value up to :data:`MAX_LENGTH` characters;
- inscriptis unescapes the text it writes once more (``&amp;`` in a value's text becomes
  ``&``), and an entity may start in the text before a value and end in it: a shape with an
  ``&`` in the :data:`ENTITY_REACH` characters before a probe is laid out per email;
- a value is written in only when the layout cannot treat it otherwise than its probe: its
  text (as the parser reads it back) is printable (no control, format, private-use or
  unassigned character, no whitespace but single spaces inside it), not empty, no ``&``, at
  most :data:`MAX_LENGTH` characters;
- a shape's text is checked once against the first email of it that can be written in, laid
  out on its own, character for character.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from itertools import chain

from engine.render.shapes import Shape, jinja_unescaped

FIRST_PROBE = 0xF0000  # probes: characters of a private-use plane, one per value
FILL = "\U0010fffd"  # fills a long probe (private use, never in a value's text)
LONG = 1000  # characters of a long probe
MAX_LENGTH = 400  # characters of a value's text (wide characters count at most twice: < LONG)
# Values of a page whose text is derived per shape: its long sketch is laid out once, and
# with more values it would be long enough to hold a batch up (emails print a handful).
MAX_VALUES = 100
ENTITY_REACH = 40  # an HTML entity is `&`, at most 32 characters and `;`


@dataclass(frozen=True)
class TextShape:
    """A shape's text cut where its values go: ``pieces`` around them, ``order`` the values'
    indexes as they come in the text."""

    pieces: tuple[str, ...]
    order: tuple[int, ...]

    @classmethod
    def of(cls, shape: Shape, derive: Callable[[str], str]) -> TextShape | None:
        """The text shape of ``shape`` (derived by ``derive``, the page → text function), or
        None when its layout depends on its values or a probe did not come through once."""
        count = len(shape.pieces) - 1
        if count > MAX_VALUES:
            return None
        probes = [chr(FIRST_PROBE + i) for i in range(count)]
        try:
            short = cls._cut(derive(_page(shape, probes)), probes, "")
            long = cls._cut(derive(_page(shape, [p + FILL * (LONG - 1) for p in probes])), probes,
                            FILL * (LONG - 1))  # fmt: skip
        except Exception:  # a page inscriptis cannot lay out: each email says so itself
            return None
        if short is None or short != long:
            return None
        if any("&" in piece[-ENTITY_REACH:] for piece in short.pieces[:-1]):
            return None
        return short

    @staticmethod
    def _cut(text: str, probes: Sequence[str], tail: str) -> TextShape | None:
        """``text`` cut at each probe (followed by ``tail``), found exactly once each."""
        found = []
        for i, probe in enumerate(probes):
            at = text.find(probe)
            if at < 0 or text.find(probe, at + 1) >= 0 or text[at + 1 : at + 1 + len(tail)] != tail:
                return None
            found.append((at, i))
        found.sort()
        pieces, start = [], 0
        for at, _i in found:
            pieces.append(text[start:at])
            start = at + 1 + len(tail)
        pieces.append(text[start:])
        if any(FILL in piece for piece in pieces):
            return None
        return TextShape(tuple(pieces), tuple(i for _at, i in found))

    def fill(self, values: Sequence[str]) -> str | None:
        """The email's text for these values (as Jinja2 printed them, escaped), or None when
        one of them cannot be trusted to lay out as its probe did."""
        texts = []
        for value in values:
            text = jinja_unescaped(value)
            if (
                not text
                or len(text) > MAX_LENGTH
                or "&" in text
                or not text.isprintable()
                or text[0] == " "
                or text[-1] == " "
                or "  " in text
            ):
                return None
            texts.append(text)
        written = [texts[i] for i in self.order]
        written.append("")
        return "".join(chain.from_iterable(zip(self.pieces, written, strict=True)))


def _page(shape: Shape, probes: Sequence[str]) -> str:
    """The shape's inlined page with ``probes`` in its values' places."""
    return "".join(chain.from_iterable(zip(shape.pieces, [*probes, ""], strict=True)))


class TextShapes:
    """The text shapes of the page shapes seen so far (one per page shape: bounded as they
    are), and whether each was checked against an email."""

    def __init__(self, derive: Callable[[str], str]) -> None:
        self.derive = derive
        # id of the page shape → (the shape, kept so its id stays its own; its text shape;
        # whether that was checked against an email laid out on its own)
        self.known: dict[int, tuple[Shape, TextShape | None, bool]] = {}

    def text(self, shape: Shape, values: Sequence[str], page: str) -> str:
        """The text of ``page``, the email of ``shape`` with ``values``: from the shape's text
        where it can be, else laid out (raising what ``derive`` raises)."""
        found = self.known.get(id(shape))
        if found is None:
            found = self.known[id(shape)] = (shape, TextShape.of(shape, self.derive), False)
        _shape, text_shape, checked = found
        if text_shape is None:
            return self.derive(page)
        filled = text_shape.fill(values)
        if filled is None:
            return self.derive(page)
        if not checked:
            own = self.derive(page)
            self.known[id(shape)] = (shape, text_shape if filled == own else None, True)
            return own
        return filled
