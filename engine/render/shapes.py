"""CSS inlining once per page shape, not once per email.

Emails of one template mostly differ only in the values they print (a first name, a link): the
page with a mark where each value was printed (:func:`engine.render.sandbox.tracking`) is the
same for all of them. That page, its *shape*, is inlined once, as a *sketch* with a probe value
between two markers at each mark; the inlined sketch is cut at the markers, and each email of
the shape is its pieces with its values filled in, as the inliner's serializer writes them.

This is only done where the result is the one per-email inlining gives, and every doubt falls
back to inlining the email's own page:

- a shape is used only when every probe came through whole, in its place among the others
  (each is numbered), and written as text or as
  a double-quoted attribute value (not in a ``<style>``, a comment, a tag or attribute name, an
  unquoted value); an attribute only when it is one whose value no CSS or parser rule reads
  (:data:`ATTRIBUTES`, outside :data:`ELEMENTS`), in a page with no attribute selector and no
  linked or imported stylesheet;
- a shape is checked once against the first email of it, inlined on its own, byte for byte;
- a value is filled in only when the parser treats it as it treated the probe: text that starts
  with a visible character (an empty or blank value can be dropped, kept or moved by the
  parser where a probe is not), no markers, NUL, CR, byte-order mark or lone surrogate, and
  markup only as the five escapes Jinja2 writes;
- at most :data:`MAX_CHARS` characters of shapes are kept, and a template that keeps making new
  or unusable shapes (a value changing the page's structure) or doubtful renders stops being
  tracked after :data:`MAX_MISSES` of them.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from itertools import chain
from typing import Generic, NamedTuple, TypeVar

from markupsafe import escape

from engine.render.sandbox import MARK

OPEN, CLOSE = "\ue001", "\ue002"  # around each probe in a sketch
PROBE = "p &<>\"'\xa0"  # everything the serializer escapes, a space and a quote
MAX_CHARS = 4_000_000  # characters of shapes (pages and pieces) kept
MAX_MISSES = 64  # new or unusable shapes of a template before it is no longer tracked
# A template's last page is remembered (see Shapes.last) up to this many characters, for at
# most this many templates at a time: a few emails' worth of memory, not a batch's.
MAX_LAST_CHARS, MAX_LAST = 100_000, 64
# Attributes whose value no CSS selector without `[…]` and no tree-building rule reads.
ATTRIBUTES = frozenset({"href", "src", "alt", "title"})
# Elements whose attributes load or change something.
ELEMENTS = frozenset({"link", "base", "meta", "script", "style", "iframe", "frame", "embed",
                      "object", "input", "form", "annotation-xml"})  # fmt: skip

# What css-inline's serializer writes for text and for an attribute value.
_TEXT_ESCAPES = (("&", "&amp;"), ("\xa0", "&nbsp;"), ("<", "&lt;"), (">", "&gt;"))
_ATTRIBUTE_ESCAPES = (("&", "&amp;"), ("\xa0", "&nbsp;"), ('"', "&quot;"))
# Jinja2's escapes, `&amp;` last when undoing them.
_JINJA_ESCAPES = (("&lt;", "<"), ("&gt;", ">"), ("&#34;", '"'), ("&#39;", "'"), ("&amp;", "&"))

# A value with none of these is written as it is printed.
_SPECIAL = re.compile("[&<>\"'\xa0\x00\r\ufeff\ud800-\udfff" + MARK + OPEN + CLOSE + "]")
# A value with one of these is not filled in.
_REFUSED = re.compile("[<\"'\x00\r\ufeff\ud800-\udfff" + MARK + OPEN + CLOSE + "]")
_FOREIGN_ENTITY = re.compile(r"&(?!amp;|lt;|gt;|#34;|#39;)")
_BLANK = " \t\n\f"
_STYLE = re.compile(r"<style\b[^>]*>(.*?)</style", re.IGNORECASE | re.DOTALL)
_TAG_START = re.compile(r"<([^\s<>\"'/=]+)$")
_NAME = re.compile(r"\s([^\s\"'<>/=]+)=$")


def _replaced(text: str, pairs: tuple[tuple[str, str], ...]) -> str:
    for old, new in pairs:
        text = text.replace(old, new)
    return text


_TEXT_PROBE = _replaced(PROBE, _TEXT_ESCAPES)
_ATTRIBUTE_PROBE = _replaced(PROBE, _ATTRIBUTE_ESCAPES)


@dataclass(frozen=True)
class Marked:
    """A tracked page: :data:`MARK` where each of ``values`` (as printed, escaped) went."""

    page: str
    values: Sequence[str]

    def plain(self) -> str:
        """The page as an untracked render prints it."""
        pieces = self.page.split(MARK)
        return "".join(chain.from_iterable(zip(pieces, [*self.values, ""], strict=True)))

    def sketch(self) -> str:
        """The page with the probe between markers at each mark, numbered: the parser may
        move text (out of a table), and a value must go where its own probe went."""
        pieces = self.page.split(MARK)
        probe = str(escape(PROBE)) + CLOSE
        return pieces[0] + "".join(f"{OPEN}{i}{probe}{piece}" for i, piece in enumerate(pieces[1:]))


def jinja_unescaped(value: str) -> str:
    """``value`` as Jinja2 printed it (escaped), with Jinja2's escapes undone: the text the
    parser reads back from a value that :func:`_as_written` writes."""
    return _replaced(value, _JINJA_ESCAPES)


def _as_written(value: str, attribute: bool) -> str | None:
    """``value`` (as Jinja2 printed it) as the inliner writes it back, or None when the parser
    might not treat it as it treated the probe."""
    if not attribute and (not value or value[0] in _BLANK):
        return None
    if _SPECIAL.search(value) is None:
        return value
    if _REFUSED.search(value) is not None or _FOREIGN_ENTITY.search(value) is not None:
        return None
    text = _replaced(value, _JINJA_ESCAPES)
    return _replaced(text, _ATTRIBUTE_ESCAPES if attribute else _TEXT_ESCAPES)


def _attribute(before: str) -> tuple[str, str] | None:
    """(element, attribute) whose double-quoted value ``before`` ends in, as the serializer
    writes tags (every value quoted, no ``"`` inside one), or None."""
    quote = before.rfind('"')
    name = _NAME.search(before, 0, quote) if quote > 0 else None
    if name is None:
        return None
    attribute, rest = name.group(1), before[: name.start()]
    while rest.endswith('"'):  # the attributes before it, back to the tag's name
        opening = rest.rfind('"', 0, len(rest) - 1)
        previous = _NAME.search(rest, 0, opening) if opening > 0 else None
        if previous is None:
            return None
        rest = rest[: previous.start()]
    tag = _TAG_START.search(rest)
    return (tag.group(1).lower(), attribute.lower()) if tag else None


@dataclass(frozen=True)
class Shape:
    """An inlined page cut where its values go, and whether each goes in an attribute."""

    pieces: tuple[str, ...]
    attributes: tuple[bool, ...]

    @classmethod
    def of(cls, marked: Marked, inlined: str) -> Shape | None:
        """The shape of ``marked`` from its sketch as inlined, or None when it cannot be one."""
        parts = inlined.split(OPEN)
        if len(parts) != len(marked.values) + 1 or MARK in inlined or CLOSE in parts[0]:
            return None
        pieces, attributes, before = [parts[0]], [], parts[0]
        for i, part in enumerate(parts[1:]):
            probe, found, after = part.partition(CLOSE)
            if not found or CLOSE in after:
                return None
            if probe == f"{i}{_TEXT_PROBE}":
                attributes.append(False)
            elif probe == f"{i}{_ATTRIBUTE_PROBE}" and cls._fixed(marked.page, _attribute(before)):
                attributes.append(True)
            else:
                return None
            pieces.append(after)
            before += after  # the text around the values: what says where the next goes
        return cls(tuple(pieces), tuple(attributes))

    @staticmethod
    def _fixed(page: str, where: tuple[str, str] | None) -> bool:
        """Whether inlining ``page`` reads nothing of the attribute ``where`` but that it is
        there: no attribute selector, no stylesheet the inliner might load."""
        if where is None or where[0] in ELEMENTS or where[1] not in ATTRIBUTES:
            return False
        lowered = page.lower()
        return "<link" not in lowered and not any(
            "[" in css or "@import" in css for css in _STYLE.findall(lowered)
        )

    def fill(self, values: Sequence[str]) -> str | None:
        """The inlined email for these values, or None when one of them cannot be trusted to
        inline as the probe did."""
        written = []
        for value, attribute in zip(values, self.attributes, strict=True):
            text = _as_written(value, attribute)
            if text is None:
                return None
            written.append(text)
        written.append("")
        return "".join(chain.from_iterable(zip(self.pieces, written, strict=True)))

    def size(self) -> int:
        return sum(map(len, self.pieces))

    @functools.cached_property
    def nul(self) -> bool:
        """Whether an email :meth:`fill` makes has a NUL: only from the pieces (a value with
        one is not filled in)."""
        return any("\x00" in piece for piece in self.pieces)


class Shaped(NamedTuple):
    """An email's page as its shape filled with its values (as Jinja2 printed them)."""

    shape: Shape
    values: Sequence[str]


_NEW = object()
T = TypeVar("T")


class LastPages(Generic[T]):
    """What was found for each template's last page, found again only for another page: most
    emails of a template are of one page (tracked, its values marked), a new string each email,
    which comparing with the last one tells (a memcmp) for a fraction of hashing or scanning it.
    Pages up to :data:`MAX_LAST_CHARS` are kept, for at most :data:`MAX_LAST` templates."""

    def __init__(self) -> None:
        self.last: dict[str, tuple[str, T]] = {}

    def find(
        self, template: str, page: str, find: Callable[[str], T], keep: Callable[[T], bool]
    ) -> T:
        """``find(page)``, remembered for ``template`` when ``keep`` says it may be."""
        last = self.last.get(template)
        if last is not None and last[0] == page:
            return last[1]
        found = find(page)
        if keep(found) and len(page) <= MAX_LAST_CHARS:
            if len(self.last) >= MAX_LAST and template not in self.last:
                self.last.clear()
            self.last[template] = (page, found)
        return found


class Shapes:
    """The shapes seen so far (bounded), and how often each template missed."""

    def __init__(self, inline_many: Callable[[list[str]], list[str | Exception]]) -> None:
        self.inline_many = inline_many
        self.known: dict[str, Shape | None] = {}
        # A lookup in `known` hashed each page whole (~2 % of a batch). `known` only grows, its
        # entries unchanged, so a page found there stays what a lookup finds.
        self.last = LastPages[Shape | object | None]()
        self.chars = 0
        self.misses: dict[str, int] = {}

    def tracks(self, template: str) -> bool:
        """Whether renders of ``template`` are worth tracking."""
        return self.misses.get(template, 0) < MAX_MISSES

    def inline(self, pages: Sequence[tuple[str, str | Marked]]) -> list[str | Exception]:
        """Each (template, page) inlined: a tracked page from its shape where it can be, any
        other (and the first of each new shape) by the inliner."""
        return [page for page, _shaped in self.inline_shaped(pages)]

    def inline_shaped(
        self, pages: Sequence[tuple[str, str | Marked]]
    ) -> list[tuple[str | Exception, Shaped | None]]:
        """:meth:`inline`, each page with the shape and values it is (None when it is none:
        inlined on its own, and not the first of a shape that checked out)."""
        done: list[str | Exception | None] = [None] * len(pages)
        shaped: list[Shaped | None] = [None] * len(pages)
        alone: dict[int, str] = {}  # inlined per email
        new: dict[str, int] = {}  # a new shape's page → its first email
        waiting: list[int] = []  # emails of a new shape after its first
        for i, (template, page) in enumerate(pages):
            if isinstance(page, str):
                alone[i] = page
                continue
            shape = self._known(template, page.page)
            if shape is _NEW:
                if page.page in new:
                    waiting.append(i)
                    continue
                if self.tracks(template):  # a new shape is a miss: it costs a second inlining
                    self.missed(template)
                    new[page.page] = i
                alone[i] = page.plain()
                continue
            done[i] = self._filled(template, shape, page)  # type: ignore[arg-type]
            if done[i] is None:
                alone[i] = page.plain()
            else:
                shaped[i] = Shaped(shape, page.values)  # type: ignore[arg-type]
        sketches = [pages[i][1].sketch() for i in new.values()]  # type: ignore[union-attr]
        inlined = self.inline_many([*alone.values(), *sketches])
        for i, result in zip(alone, inlined[: len(alone)], strict=True):
            done[i] = result
        learnt: dict[str, Shape | None] = {}
        for (key, first), sketch in zip(new.items(), inlined[len(alone) :], strict=True):
            template, page = pages[first]
            assert isinstance(page, Marked)
            shape = Shape.of(page, sketch) if isinstance(sketch, str) else None
            filled = shape.fill(page.values) if shape is not None else None
            if shape is not None and filled is None:
                # The first email cannot check the shape: a later one of it will.
                learnt[key] = None
                continue
            learnt[key] = shape if filled == done[first] else None
            self._learn(key, learnt[key])
            if shape is not None and learnt[key] is shape:
                shaped[first] = Shaped(shape, page.values)
        later: dict[int, str] = {}
        for i in waiting:
            page = pages[i][1]
            assert isinstance(page, Marked)
            shape = learnt[page.page]  # counted against the template once, above
            done[i] = shape.fill(page.values) if shape is not None else None
            if done[i] is None:
                later[i] = page.plain()
            else:
                shaped[i] = Shaped(shape, page.values)  # type: ignore[arg-type]
        for i, result in zip(later, self.inline_many(list(later.values())), strict=True):
            done[i] = result
        return list(zip(done, shaped, strict=True))  # type: ignore[arg-type]

    def _known(self, template: str, page: str) -> Shape | object | None:
        """``known.get(page, _NEW)``, the template's last page first."""
        return self.last.find(
            template, page, lambda page: self.known.get(page, _NEW), lambda shape: shape is not _NEW
        )

    def missed(self, template: str) -> None:
        """A render of ``template`` that could not be tracked."""
        self.misses[template] = self.misses.get(template, 0) + 1

    def _filled(self, template: str, shape: Shape | None, page: Marked) -> str | None:
        """The email from its shape; None (inlined on its own) for a page without a usable
        shape, which counts against its template, or for a value that cannot be filled in
        (an empty name), which does not: the next email may fill."""
        if shape is None:
            self.missed(template)
            return None
        return shape.fill(page.values)

    def _learn(self, key: str, shape: Shape | None) -> None:
        """Keeps a new shape (or that the page has none) while the bound allows."""
        size = len(key) + (shape.size() if shape is not None else 0)
        if self.chars + size <= MAX_CHARS:
            self.known[key] = shape
            self.chars += size
