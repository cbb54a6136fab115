"""Templates → email parts: the render step between a due campaign step and the outbox.

``templates/NAME.j2`` defines the blocks ``subject``, ``html`` and optionally ``text``. Rendering
is sandboxed and strict: :mod:`engine.render.sandbox` (no access to Python internals; bounded in
time, macro nesting and the size of every value and text), undefined variables are errors, HTML
is autoescaped and cannot be un-escaped (no ``safe`` filter, no ``{% autoescape false %}``), and
the email has an output bound. CSS is inlined (css-inline), once per page shape where that gives
the same page (:mod:`engine.render.shapes`), and a text part is derived from the HTML
(inscriptis) when the template has none, once per page shape where that gives the same text
(:mod:`engine.render.texts`). Templates are compiled once and cached by Jinja2;
an edit on disk is picked up by the next batch rendered (files are checked once per batch, not
once per email).

A failure of any kind, in one email of a batch, is a :class:`TemplateError` naming the template
file and line, so the caller can hold that email with the reason and send the others.
"""

from __future__ import annotations

import os
import traceback
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from html import unescape
from pathlib import Path
from typing import Any, NamedTuple

import css_inline
from inscriptis import get_text
from inscriptis.model.config import ParserConfig
from jinja2 import Environment, FileSystemLoader, StrictUndefined, Template, TemplateSyntaxError
from jinja2 import TemplateError as JinjaError
from jinja2.exceptions import TemplateNotFound
from jinja2.loaders import split_template_path

from engine.errors import NurtureError
from engine.render.sandbox import MARK, MAX_VALUE, BoundedEnvironment, budget, joined, tracking
from engine.render.shapes import LastPages, Marked, Shaped, Shapes
from engine.render.texts import TextShapes

SUFFIX = ".j2"
# Profile attributes every lead has in a template (None when unknown), so `lead.first_name or
# 'there'` works for a lead without one while a misspelt `lead.frist_name` is still an error.
PROFILE = (
    "first_name",
    "last_name",
    "company",
    "domain",
    "job_title",
    "industry",
    "company_size",
    "country",
    "timezone",
    "owner",
)
MAX_OUTPUT = MAX_VALUE  # characters of subject + html + text
MAX_SUBJECT = 998  # RFC 5322's longest line: a subject longer than that is a template bug
MAX_TEMPLATE_BYTES = 1_000_000  # a template file (or one it includes) larger is refused


class TemplateError(NurtureError):
    """A template that cannot be rendered, with where (file, line) when known."""

    def __init__(self, message: str, file: str | None = None, line: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.file = file
        self.line = line

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}: " if self.file and self.line else ""
        where = where or (f"{self.file}: " if self.file else "")
        return f"{where}{self.message}"


@dataclass(frozen=True)
class Rendered:
    subject: str
    html: str
    text: str


class _Draft(NamedTuple):
    """An email before its CSS is inlined: the page as rendered, or tracked. A tuple: a frozen
    dataclass sets each field through ``object.__setattr__``, for every email."""

    subject: str
    page: str | Marked
    text: str


def _nothing(_context: Any) -> Iterator[str]:
    yield from ()


def _origin(error: BaseException, folder: Path) -> tuple[str | None, int | None]:
    """The template file and line an error comes from (Jinja2 rewrites tracebacks so template
    frames carry the template's own file name and line)."""
    if isinstance(error, TemplateSyntaxError) and error.filename:
        return error.filename, error.lineno
    frames = [f for f in traceback.extract_tb(error.__traceback__) if f.filename.endswith(SUFFIX)]
    if frames:
        return frames[-1].filename, frames[-1].lineno
    return None, None


def _failure(error: BaseException, folder: Path, file: str) -> TemplateError:
    """A template's exception as the error that holds the email."""
    where, line = _origin(error, folder)
    message = getattr(error, "message", None) or str(error) or type(error).__name__
    return TemplateError(message, where or file, line)


class _Loader(FileSystemLoader):
    """The templates folder, where a file over :data:`MAX_TEMPLATE_BYTES` is refused unread.

    Jinja2 asks whether a cached template is up to date (a ``stat`` of its file, and of its
    layout's) on every render; here a template's file is checked once per ``epoch``, which the
    renderer moves on at each batch, so an edit is still seen by the next batch."""

    def __init__(self, folder: Path) -> None:
        super().__init__(folder)
        self.epoch = 0

    def get_source(
        self, environment: Environment, template: str
    ) -> tuple[str, str, Callable[[], bool]]:
        pieces = split_template_path(template)
        for folder in self.searchpath:
            path = os.path.join(folder, *pieces)
            if os.path.isfile(path):
                if os.path.getsize(path) > MAX_TEMPLATE_BYTES:
                    raise JinjaError(f"{template} is larger than {MAX_TEMPLATE_BYTES:,} bytes")
                source, filename, uptodate = super().get_source(environment, template)
                return source, filename, self._once_per_epoch(uptodate)
        raise TemplateNotFound(template)

    def _once_per_epoch(self, uptodate: Callable[[], bool]) -> Callable[[], bool]:
        checked = self.epoch

        def fresh() -> bool:
            nonlocal checked
            if checked == self.epoch:
                return True
            checked = self.epoch
            return uptodate()

        return fresh


class Renderer:
    """The templates of one folder, compiled on first use and cached."""

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)
        self.loader = _Loader(self.folder)
        self.env = BoundedEnvironment(
            loader=self.loader, undefined=StrictUndefined, cache_size=1000
        )
        self.inliner = css_inline.CSSInliner(load_remote_stylesheets=False)
        self.shapes = Shapes(self._inline)
        self.texts = TextShapes(html_to_text)
        self.counted = LastPages[int]()  # the marks in each template's last tracked page

    def names(self) -> list[str]:
        """Every template in the folder as campaigns name it (``warm/case-study``)."""
        if not self.folder.is_dir():
            return []
        return sorted(
            str(path.relative_to(self.folder).with_suffix("")).replace("\\", "/")
            for path in self.folder.rglob(f"*{SUFFIX}")
        )

    def render(self, name: str, variables: Mapping[str, Any]) -> Rendered:
        """The email ``name`` for ``variables``; TemplateError (file, line, what) on any failure."""
        [result] = self.render_many([(name, variables)])
        if isinstance(result, TemplateError):
            raise result
        return result

    def render_many(
        self, jobs: Sequence[tuple[str, Mapping[str, Any]]]
    ) -> list[Rendered | TemplateError]:
        """Each (template, variables) rendered, or the error that stops it: one bad email never
        stops the others. The CSS of the whole batch is inlined in one call, which css-inline
        spreads over the cores. Each template is looked up (its file checked for edits) once per
        call, not once per email."""
        self.loader.epoch += 1
        with self.env.batch():
            return self._render_many(jobs)

    def _render_many(
        self, jobs: Sequence[tuple[str, Mapping[str, Any]]]
    ) -> list[Rendered | TemplateError]:
        templates: dict[str, tuple[str, Template | TemplateError]] = {}
        drafts: list[_Draft | TemplateError] = []
        for name, variables in jobs:
            found = templates.get(name)
            if found is None:
                found = templates[name] = self._template(name)
            file, template = found
            if isinstance(template, TemplateError):
                drafts.append(template)
            else:
                drafts.append(self._draft(file, template, variables, self.shapes.tracks(file)))
        good = [(i, draft) for i, draft in enumerate(drafts) if isinstance(draft, _Draft)]
        pages = self.shapes.inline_shaped(
            [(templates[jobs[i][0]][0], draft.page) for i, draft in good]
        )
        finished = {
            i: self._finish(templates[jobs[i][0]][0], draft, page, shaped)
            for (i, draft), (page, shaped) in zip(good, pages, strict=True)
        }
        return [
            draft if isinstance(draft, TemplateError) else finished[i]
            for i, draft in enumerate(drafts)
        ]

    def _inline(self, pages: list[str]) -> list[str | Exception]:
        """The pages with their CSS inlined; where css-inline refuses a page (an unparsable
        ``style`` attribute fails the whole call), each page on its own."""
        try:
            return list(self.inliner.inline_many(pages))
        except ValueError:
            pass
        inlined: list[str | Exception] = []
        for page in pages:
            try:
                inlined.append(self.inliner.inline(page))
            except ValueError as error:
                inlined.append(error)
        return inlined

    def _finish(
        self, file: str, draft: _Draft, page: str | Exception, shaped: Shaped | None = None
    ) -> Rendered | TemplateError:
        """The email from its draft and inlined page (``shaped``: the shape and values it is
        made of, if it is), or why it cannot go."""
        if isinstance(page, Exception):
            return TemplateError(f"the CSS cannot be inlined: {page}", file)
        try:
            if draft.text:
                text = draft.text
            elif shaped is not None:
                text = self.texts.text(shaped.shape, shaped.values, page)
            else:
                text = html_to_text(page)
        except Exception as error:  # the text part is derived: its failure is this email's
            return TemplateError(f"no text part can be derived from the HTML: {error}", file)
        if len(draft.subject) + len(page) + len(text) > MAX_OUTPUT:
            return TemplateError(f"the email is longer than {MAX_OUTPUT:,} characters", file)
        # A page filled from its shape has a NUL only where the shape has (~2 % of a batch
        # went to scanning each page).
        nul = "\x00" in page if shaped is None else shaped.shape.nul
        if nul or "\x00" in draft.subject or "\x00" in text:
            # PostgreSQL stores no NUL in text: the batch's transaction would fail.
            return TemplateError("the email contains a NUL character", file)
        return Rendered(draft.subject, page, text)

    def _template(self, name: str) -> tuple[str, Template | TemplateError]:
        """The template file's name, and the compiled email template or why there is none."""
        file = str(self.folder / (name + SUFFIX))
        try:
            with budget():
                template = self.env.get_template(name + SUFFIX)
        except RecursionError:
            return file, TemplateError(
                "templates nested too deeply (does a template include itself?)", file
            )
        except Exception as error:
            return file, _failure(error, self.folder, file)
        if "subject" not in template.blocks or "html" not in template.blocks:
            return file, TemplateError(
                "an email template needs {% block subject %} and {% block html %}", file
            )
        return file, template

    def _draft(
        self, file: str, template: Template, variables: Mapping[str, Any], track: bool = False
    ) -> _Draft | TemplateError:
        """Subject, page (CSS not yet inlined) and the text block if any, within the budget.
        Tracked (``track``), the page is :class:`Marked`; a tracked render that fails, or that
        a value may have reached other than where it printed, is done again untracked, so
        what fails and how is the untracked render's."""
        try:
            with budget():
                try:
                    # One context for the blocks and the page: rendering a block changes nothing
                    # in its context (only the page's top level sets variables), and the page is
                    # rendered last, with the blocks already taken out of it.
                    # Jinja2 copies the variables into the context: a dict needs no copy.
                    given = variables if type(variables) is dict else dict(variables)
                    scope = template.new_context(given)
                    parts = {
                        block: joined(template.blocks[block](scope))
                        for block in ("subject", "text")
                        if block in template.blocks
                    }
                    # The HTML is the whole page (a layout around the html block), without the
                    # subject and text blocks where a stand-alone template has them in its body.
                    for block in parts:
                        scope.blocks[block] = [_nothing]
                    if track:
                        with tracking() as tracked:
                            html = joined(template.root_render_func(scope))
                    else:
                        html = joined(template.root_render_func(scope)).strip()
                except Exception:
                    # Re-raised with the traceback pointing at template lines, as
                    # Template.render does.
                    self.env.handle_exception()
        except RecursionError:
            if track:
                self.shapes.missed(file)
                return self._draft(file, template, variables)
            return TemplateError(
                "templates nested too deeply (does a template include itself?)", file
            )
        except Exception as error:  # whatever a template raises holds this email, not the batch
            if track:
                self.shapes.missed(file)
                return self._draft(file, template, variables)
            return _failure(error, self.folder, file)
        page: str | Marked = html
        if track:
            page = Marked(html.strip(), tracked.values)
            # The untracked page would be longer by the values (and has refused to grow past
            # the bound); a value at either end could be blank where the page is stripped.
            size = len(html) - len(tracked.values) + sum(map(len, tracked.values))
            if (
                tracked.doubt
                or size > MAX_VALUE
                or self._marks(file, html) != len(tracked.values)
                or page.page[:1] == MARK
                or page.page[-1:] == MARK
            ):
                self.shapes.missed(file)
                return self._draft(file, template, variables)
        # Autoescaping is for the HTML: the subject and text parts are plain text, so what it
        # escaped there is turned back (a company called "A&B" stays "A&B").
        subject = " ".join(unescape(parts["subject"]).split())  # one line, whatever it was
        if not subject:
            return TemplateError("the subject is empty", file)
        if len(subject) > MAX_SUBJECT:
            return TemplateError(f"the subject is longer than {MAX_SUBJECT} characters", file)
        return _Draft(subject, page, unescape(parts.get("text", "")).strip())

    def _marks(self, file: str, html: str) -> int:
        """``html.count(MARK)``, remembered for the template's last page."""
        return self.counted.find(file, html, lambda html: html.count(MARK), lambda _: True)

    def check(self) -> list[TemplateError]:
        """Every template compiles, and every email template (one with a subject block)
        renders for a sample lead. Layouts and partials are only compiled."""
        problems: list[TemplateError] = []
        for name in self.names():
            try:
                template = self.env.get_template(name + SUFFIX)
            except Exception as error:  # a template too deep to compile is a problem too
                problems.append(_failure(error, self.folder, str(self.folder / name)))
                continue
            if "subject" not in template.blocks:
                continue
            try:
                self.render(name, sample_context())
            except TemplateError as error:
                problems.append(error)
        return problems


# Links keep their address in the text part: it is how a plain-text reader follows them (and
# the unsubscribe link must be there).
_TEXT = ParserConfig(display_links=True)


def html_to_text(html: str) -> str:
    """The text part of an email from its HTML: layout kept, links as ``[text](url)``."""
    lines = (line.rstrip() for line in get_text(html, _TEXT).splitlines())
    text = "\n".join(lines)
    while "\n\n\n" in text:
        text = text.replace("\n\n\n", "\n\n")
    return text.strip()


_PROFILE = dict.fromkeys(PROFILE)


def lead_context(
    email: str,
    attributes: Mapping[str, Any],
    *,
    score: int,
    scores: Mapping[str, int],
    temperature: str,
    stage: str,
    tags: Sequence[str],
) -> dict[str, Any]:
    """What a template sees as ``lead``: the profile (standard attributes always present),
    custom attributes, and the lead's score, temperature and stage."""
    return {
        **_PROFILE,
        **attributes,
        "email": email,
        "score": score,
        "scores": dict(scores),
        "temperature": temperature,
        "stage": stage,
        "tags": list(tags),
    }


def context(
    lead: Mapping[str, Any], *, campaign: str, step: int, unsubscribe_url: str, now: datetime
) -> dict[str, Any]:
    """The variables of a template: ``lead``, ``campaign`` (its name), ``step`` (1 for the first
    step), ``unsubscribe_url`` and ``now``."""
    return {
        "lead": lead,
        "campaign": campaign,
        "step": step,
        "unsubscribe_url": unsubscribe_url,
        "now": now,
    }


def sample_context() -> dict[str, Any]:
    """A plausible lead for ``nurture rules check`` and benchmarks."""
    lead = lead_context(
        "ana.silva@example.com",
        {
            "first_name": "Ana",
            "last_name": "Silva",
            "company": "Acme Analytics",
            "domain": "example.com",
            "job_title": "VP Marketing",
            "industry": "saas",
            "company_size": 250,
            "country": "PT",
            "timezone": "Europe/Lisbon",
        },
        score=55,
        scores={"fit": 25, "engagement": 30},
        temperature="warm",
        stage="mql",
        tags=["pricing-interest"],
    )
    return context(
        lead,
        campaign="sample",
        step=1,
        unsubscribe_url="https://nurture.example/unsubscribe?token=sample",
        now=datetime(2026, 11, 2, 10, 0, tzinfo=UTC),
    )
