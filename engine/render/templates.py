"""Templates → email parts: the render step between a due campaign step and the outbox.

``templates/NAME.j2`` defines the blocks ``subject``, ``html`` and optionally ``text``. Rendering
is sandboxed and strict: Jinja2's SandboxedEnvironment (no access to Python internals), undefined
variables are errors, HTML is autoescaped and cannot be un-escaped (no ``safe`` filter, no
``{% autoescape false %}``), and every render has a time budget (calls, loop iterations and
sequence arithmetic check it) and an output bound. CSS is inlined (css-inline) and a text part is
derived from the HTML (inscriptis) when the template has none. Templates are compiled once and
cached by Jinja2; an edit on disk is picked up on the next render.

A failure of any kind is a :class:`TemplateError` naming the template file and line, so the
caller can hold the email with the reason instead of sending it blank.
"""

from __future__ import annotations

import threading
import time
import traceback
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from html import unescape
from pathlib import Path
from typing import Any

import css_inline
from inscriptis import get_text
from inscriptis.model.config import ParserConfig
from jinja2 import (
    FileSystemLoader,
    StrictUndefined,
    TemplateSyntaxError,
    nodes,
)
from jinja2 import (
    TemplateError as JinjaError,
)
from jinja2.exceptions import SecurityError
from jinja2.sandbox import SandboxedEnvironment

from engine.errors import NurtureError

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
RENDER_SECONDS = 1.0  # a render that takes longer is stopped and the email held
MAX_OUTPUT = 1_000_000  # characters of subject + html + text
MAX_RANGE = 10_000  # the longest range() a template may build
MAX_SEQUENCE = 100_000  # the longest string or list `*` may build


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


# -- the render budget ---------------------------------------------------------------------------
_budget = threading.local()


def _tick() -> None:
    if time.monotonic() > getattr(_budget, "until", float("inf")):
        raise SecurityError(f"rendering took longer than {RENDER_SECONDS:g} s")


def _budgeted(iterable: Iterable[Any]) -> Iterator[Any]:
    """Every template ``for`` loop iterates through this, so a loop cannot outrun the budget."""
    for count, item in enumerate(iterable):
        if not count % 256:
            _tick()
        yield item


class _Environment(SandboxedEnvironment):
    intercepted_binops = frozenset({"*", "**"})

    def call(__self, __context: Any, __obj: Any, *args: Any, **kwargs: Any) -> Any:
        _tick()
        return super().call(__context, __obj, *args, **kwargs)

    def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
        _tick()
        if operator == "**" and isinstance(right, int | float) and abs(right) > 100:
            raise SecurityError("exponent too large")
        if operator == "*" and isinstance(left, int) and isinstance(right, Sequence):
            left, right = right, left
        if (
            operator == "*"
            and isinstance(left, Sequence)
            and isinstance(right, int)
            and len(left) * right > MAX_SEQUENCE
        ):
            raise SecurityError(f"a sequence longer than {MAX_SEQUENCE:,} items")
        return super().call_binop(context, operator, left, right)

    def _parse(self, source: str, name: str | None, filename: str | None) -> nodes.Template:
        tree = super()._parse(source, name, filename)
        for modifier in tree.find_all((nodes.EvalContextModifier,)):
            if any(option.key == "autoescape" for option in modifier.options):
                raise TemplateSyntaxError(
                    "autoescape cannot be changed in an email template", modifier.lineno, name,
                    filename,
                )  # fmt: skip
        for loop in tree.find_all(nodes.For):
            loop.iter = nodes.Call(
                nodes.Name("_budgeted", "load"), [loop.iter], [], None, None, lineno=loop.lineno
            )
        return tree


def _nothing(_context: Any) -> Iterator[str]:
    yield from ()


def _finalize(value: Any) -> Any:
    return "" if value is None else value


def _origin(error: BaseException, folder: Path) -> tuple[str | None, int | None]:
    """The template file and line an error comes from (Jinja2 rewrites tracebacks so template
    frames carry the template's own file name and line)."""
    if isinstance(error, TemplateSyntaxError) and error.filename:
        return error.filename, error.lineno
    frames = [f for f in traceback.extract_tb(error.__traceback__) if f.filename.endswith(SUFFIX)]
    if frames:
        return frames[-1].filename, frames[-1].lineno
    return None, None


class Renderer:
    """The templates of one folder, compiled on first use and cached."""

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)
        self.env = _Environment(
            loader=FileSystemLoader(self.folder),
            undefined=StrictUndefined,
            autoescape=True,
            finalize=_finalize,
            cache_size=1000,
        )
        self.env.filters.pop("safe", None)
        self.env.globals["_budgeted"] = _budgeted
        self.env.globals["range"] = _range
        self.inliner = css_inline.CSSInliner(load_remote_stylesheets=False)

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
        """Each (template, variables) rendered, or the error that stops it. The CSS of the whole
        batch is inlined in one call, which css-inline spreads over the cores."""
        drafts = [self._draft(name, variables) for name, variables in jobs]
        good = [i for i, draft in enumerate(drafts) if isinstance(draft, Rendered)]
        pages = self.inliner.inline_many([drafts[i].html for i in good])  # type: ignore[union-attr]
        results: list[Rendered | TemplateError] = list(drafts)
        for i, html in zip(good, pages, strict=True):
            draft = drafts[i]
            assert isinstance(draft, Rendered)
            text = draft.text or html_to_text(html)
            if len(draft.subject) + len(html) + len(text) > MAX_OUTPUT:
                file = str(self.folder / (jobs[i][0] + SUFFIX))
                results[i] = TemplateError(
                    f"the email is longer than {MAX_OUTPUT:,} characters", file
                )
            else:
                results[i] = Rendered(draft.subject, html, text)
        return results

    def _draft(self, name: str, variables: Mapping[str, Any]) -> Rendered | TemplateError:
        """Subject, page (CSS not yet inlined) and the text block if any, within the budget."""
        file = str(self.folder / (name + SUFFIX))
        _budget.until = time.monotonic() + RENDER_SECONDS
        try:
            template = self.env.get_template(name + SUFFIX)
            if "subject" not in template.blocks or "html" not in template.blocks:
                return TemplateError(
                    "an email template needs {% block subject %} and {% block html %}", file
                )
            try:
                blocks = template.new_context(dict(variables))
                parts = {
                    block: "".join(template.blocks[block](blocks))
                    for block in ("subject", "text")
                    if block in template.blocks
                }
                # The HTML is the whole page (a layout around the html block), without the
                # subject and text blocks where a stand-alone template has them in its body.
                page = template.new_context(dict(variables))
                for block in parts:
                    page.blocks[block] = [_nothing]
                html = "".join(template.root_render_func(page)).strip()
            except Exception:
                # Re-raised with the traceback pointing at template lines, as Template.render does.
                self.env.handle_exception()
        except (JinjaError, SecurityError, ArithmeticError, TypeError, ValueError) as error:
            where, line = _origin(error, self.folder)
            message = getattr(error, "message", None) or str(error) or type(error).__name__
            return TemplateError(message, where or file, line)
        finally:
            _budget.until = float("inf")
        # Autoescaping is for the HTML: the subject and text parts are plain text, so what it
        # escaped there is turned back (a company called "A&B" stays "A&B").
        subject = " ".join(unescape(parts["subject"]).split())  # one line, whatever it was
        if not subject:
            return TemplateError("the subject is empty", file)
        return Rendered(subject, html, unescape(parts.get("text", "")).strip())

    def check(self) -> list[TemplateError]:
        """Every template compiles, and every email template (one with a subject block)
        renders for a sample lead. Layouts and partials are only compiled."""
        problems: list[TemplateError] = []
        for name in self.names():
            try:
                template = self.env.get_template(name + SUFFIX)
            except JinjaError as error:
                file, line = _origin(error, self.folder)
                problems.append(TemplateError(str(error.message), file, line))
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


def _range(*args: int) -> range:
    span = range(*args)
    if len(span) > MAX_RANGE:
        raise SecurityError(f"range() longer than {MAX_RANGE:,} items")
    return span


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
        **dict.fromkeys(PROFILE),
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
