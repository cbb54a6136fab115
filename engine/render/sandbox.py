"""The environment an email template renders in: Jinja2's SandboxedEnvironment (no access to
Python internals) bounded in time, nesting and size, so that one template, or the lead data it
reads, can neither hang the scheduler nor take its memory.

- **Time**: every call, filter, intercepted operator and every 256th loop iteration checks the
  render's budget (:func:`budget`).
- **Nesting**: macro calls nest at most :data:`MAX_NESTING` deep (a macro that calls itself
  without end is an error, not a RecursionError out of the renderer).
- **Size**: no value a template builds may weigh more than :data:`MAX_VALUE` (see
  :func:`weight`: characters of text, items of a list, a list of strings counting both, shared
  items each time they appear). Operations whose result can outgrow their inputs by a factor a
  template chooses (padding and repeating, joining and replacing, format widths, lorem ipsum,
  batch and slice fills, ``~`` and ``+`` in a loop) are checked *before* they run; every other
  call, filter and operator after. The text a template, block, macro or ``{% set %}`` block
  emits is counted as it grows.

Violations raise :class:`jinja2.exceptions.SecurityError`, which the renderer turns into a
held email with the reason.

Inside :func:`tracking`, every value a template prints is collected and replaced in the output
by :data:`MARK`, so the renderer can tell the page's fixed text (its "shape") from what varies
per email (see :mod:`engine.render.shapes`). A value that reaches the page other than directly
(captured by a ``{% set %}`` block, a macro or ``self.block()``), like values larger in all than
the bound, stops the render as doubtful: the renderer then renders it again untracked.
"""

from __future__ import annotations

import functools
import inspect
import re
import threading
import time
from collections import deque
from collections.abc import (
    Callable,
    Iterable,
    Iterator,
    Mapping,
    MutableMapping,
    Sequence,
    Set,
    Sized,
)
from contextlib import contextmanager
from string import Formatter
from typing import Any

from jinja2 import nodes
from jinja2.compiler import CodeGenerator, Frame
from jinja2.exceptions import SecurityError, TemplateSyntaxError
from jinja2.runtime import LoopContext, Macro, markup_join
from jinja2.sandbox import SandboxedEnvironment, SandboxedFormatter
from jinja2.utils import generate_lorem_ipsum
from markupsafe import EscapeFormatter, Markup, escape

RENDER_SECONDS = 1.0  # a render that takes longer is stopped and the email held
MAX_VALUE = 1_000_000  # the weight of the largest value (and text) a template may build
MAX_RANGE = 10_000  # the longest range() a template may build
MAX_NESTING = 50  # macro calls within macro calls
MAX_WIDTH = 10_000  # a width or precision in a format string
MAX_BITS = 4096  # integers stay printable (Python prints at most 4,300 digits)
MAX_PARAGRAPHS, MAX_WORDS = 100, 1000  # lipsum(n, max=…)

MARK = "\ue000"  # a private-use character: where a tracked render printed a value

_MARKED = Markup(MARK)  # what a tracked render prints for a value (markup: not escaped again)

_state = threading.local()


class Tracked:
    """What a tracked render printed: each value as it appears in the page (escaped), in order,
    and whether a value may have reached the page other than where its mark is."""

    __slots__ = ("doubt", "size", "values")

    def __init__(self) -> None:
        self.values: list[str] = []
        self.size = 0  # of the values: the page's own bound only sees their marks
        self.doubt = False

    def doubted(self, why: str) -> SecurityError:
        """Stops the tracked render: the renderer renders the email again, untracked."""
        self.doubt = True
        return SecurityError(f"a tracked render {why}")


class tracking:
    """Within it, this thread's renders print :data:`MARK` for each value and collect it. A
    class rather than a generator context manager, which costs a few µs each email."""

    __slots__ = ()

    def __enter__(self) -> Tracked:
        tracked = _state.track = Tracked()
        return tracked

    def __exit__(self, *_exc: object) -> None:
        _state.track = None


def _tracked() -> Tracked | None:
    return getattr(_state, "track", None)


def _marked(parts: Iterable[str]) -> None:
    """Doubt when tracked text is captured rather than printed: its marks are then not where
    the values end up."""
    tracked = _tracked()
    if tracked is not None and any(MARK in part for part in parts):
        raise tracked.doubted("captured a printed value")


class budget:
    """The time budget and macro nesting of one render, in this thread. A class rather than a
    generator context manager: it is entered for every email (~4 µs as a generator, ~1.5 µs
    so)."""

    __slots__ = ("seconds",)

    def __init__(self, seconds: float = RENDER_SECONDS) -> None:
        self.seconds = seconds

    def __enter__(self) -> None:
        _state.until, _state.depth = time.monotonic() + self.seconds, 0

    def __exit__(self, *_exc: object) -> None:
        _state.until = float("inf")


def _tick() -> None:
    if time.monotonic() > getattr(_state, "until", float("inf")):
        raise SecurityError(f"rendering took longer than {RENDER_SECONDS:g} s")


def weight(value: Any, limit: int = MAX_VALUE) -> int:
    """Characters of text plus items of containers in ``value``, nested ones included and an
    item shared by several places counted at each: about the length of its text and the work of
    copying it. Stops counting once past ``limit``, so the cost is bounded (also for a list that
    contains itself)."""
    # Most values: what the loop would count. A plain text is told by its type first, which
    # costs a seventh of building the union and checking against it (~0.2 µs) on each call.
    if type(value) is str or isinstance(value, str | bytes | bytearray):
        return len(value)
    total, stack = 0, [value]
    while stack and total <= limit:
        item = stack.pop()
        if isinstance(item, str | bytes | bytearray):
            total += len(item)
        elif isinstance(item, Mapping):
            total += len(item)
            if total <= limit:
                stack.extend(item.keys())
                stack.extend(item.values())
        elif isinstance(item, list | tuple | Set | deque):
            total += len(item)
            if total <= limit:
                stack.extend(item)
        else:
            total += 1
    return total


def _refuse(what: str) -> SecurityError:
    return SecurityError(f"{what} would be larger than {MAX_VALUE:,} characters or items")


def _bounded(value: Any, what: str = "a value") -> Any:
    if weight(value) > MAX_VALUE:
        raise _refuse(what)
    return value


def _settled(value: Any) -> Any:
    """A lazy sequence (a generator, ``map``, ``select``…) given to a call or filter, read into a
    list while its weight allows, so that a check before the call sees what it will get."""
    if not isinstance(value, Iterator) or isinstance(value, LoopContext):
        return value
    items, total = [], 0
    for item in value:
        total += weight(item) + 1
        if total > MAX_VALUE:
            raise _refuse("a sequence")
        items.append(item)
    return items


def _int(value: Any, default: int = 0) -> int:
    return value if isinstance(value, int) else default


def joined(parts: Iterable[str]) -> str:
    """``"".join`` of a template's output, refused as soon as it passes the bound."""
    collected, size = [], 0
    for part in parts:
        size += len(part)
        if size > MAX_VALUE:
            raise _refuse("the text")
        collected.append(part)
    return "".join(collected)


def _concat(parts: Iterable[str]) -> str:
    """:func:`joined`, for text a template captures (``self.block()``, ``super()``)."""
    text = joined(parts)
    _marked((text,))
    return text


class _Text(list[str]):
    """The buffer a macro, call or ``{% set %}`` block writes into: refuses to grow past the
    bound rather than after the text is joined."""

    size = 0

    def _grow(self, parts: Sequence[str]) -> None:
        self.size += sum(len(part) for part in parts)
        if self.size > MAX_VALUE:
            raise _refuse("the text")
        _marked(parts)

    def append(self, part: str) -> None:
        self._grow((part,))
        super().append(part)

    def extend(self, parts: Iterable[str]) -> None:
        parts = list(parts)
        self._grow(parts)
        super().extend(parts)


class _CodeGenerator(CodeGenerator):
    """Jinja2's compiler with three changes: output buffers are :class:`_Text`, ``a ~ b``
    goes through :meth:`_Environment.tilde`, which checks the size before joining, and a
    printed value through :func:`_printed`."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.printing: list[bool] = []  # per output being written: through environment.printed

    def _output_child_pre(self, node: nodes.Expr, frame: Frame, finalize: Any) -> None:
        # `{{ x }}` as `environment.printed(x)`, not `escape(environment.finalize(x))`, where
        # autoescaping is fixed on (everywhere: templates cannot change it).
        printing = frame.eval_ctx.autoescape and not frame.eval_ctx.volatile
        self.printing.append(printing)
        if printing:
            self.write("environment.printed(")
        else:
            super()._output_child_pre(node, frame, finalize)

    def _output_child_post(self, node: nodes.Expr, frame: Frame, finalize: Any) -> None:
        if self.printing.pop():
            self.write(")")
        else:
            super()._output_child_post(node, frame, finalize)

    def buffer(self, frame: Frame) -> None:
        frame.buffer = self.temporary_identifier()
        self.writeline(f"{frame.buffer} = environment.text_buffer()")

    def visit_Concat(self, node: nodes.Concat, frame: Frame) -> None:
        self.write("environment.tilde((")
        for part in node.nodes:
            self.visit(part, frame)
            self.write(", ")
        self.write("))")


# -- what an operation would build, estimated before it runs -----------------------------------
_PRINTF = re.compile(r"%%|%(?:\([^)]*\))?[-#0 +]*(\*|\d+)?(?:\.(\*|\d+))?")
_DIGITS = re.compile(r"\d+")


def _width(digits: str) -> int:
    if len(digits) > len(str(MAX_WIDTH)) or int(digits) > MAX_WIDTH:
        raise SecurityError(f"a width or precision over {MAX_WIDTH:,} in a format string")
    return int(digits)


def _printf(text: Any, values: Any) -> int:
    """``text % values``: the format, the values, and every width and precision in it."""
    fmt = str(text)
    size = len(fmt) + weight(values)
    for directive in _PRINTF.finditer(fmt):
        for number in directive.groups():
            if number == "*":
                raise SecurityError("a `*` width in a format string")
            if number:
                size += _width(number)
    return size


def _replaced(text: Any, old: Any, new: Any, count: Any = None) -> int:
    if not isinstance(text, str | bytes) or not isinstance(new, str | bytes):
        return 0
    source: Any = text
    times: int = source.count(old) if isinstance(old, type(text)) and old else len(text) + 1
    if isinstance(count, int) and count >= 0:
        times = min(times, count)
    return len(text) + times * len(new)


def _padded(text: Any, width: Any, *_fill: Any) -> int:
    return max(weight(text), _int(width))


def _tabs(text: Any, tabsize: Any = 8) -> int:
    tabs: int = text.count("\t" if isinstance(text, str) else b"\t")
    return len(text) + tabs * max(_int(tabsize, 8), 1)


def _translated(text: Any, table: Any) -> int:
    longest = (
        max((weight(v) for v in table.values()), default=1) if isinstance(table, Mapping) else 1
    )
    return len(text) * max(longest, 1)


def _joined_with(separator: Any, parts: Any) -> int:
    count = len(parts) if isinstance(parts, Sized) else 1
    return weight(parts) + weight(separator) * count


# str and bytes methods whose result a template can make much larger than its inputs:
# name → (the string, the call's arguments) → the result's size.
_METHODS: dict[str, Callable[..., int]] = {
    "ljust": _padded,
    "rjust": _padded,
    "center": _padded,
    "zfill": _padded,
    "expandtabs": _tabs,
    "replace": _replaced,
    "translate": _translated,
    "join": _joined_with,
}


# Filters of the same kind: name → (the filter's arguments by name) → the result's size.
_FILTERS: dict[str, Callable[[dict[str, Any]], int]] = {
    "center": lambda a: _padded(a["value"], a["width"]),
    "indent": lambda a: len(str(a["s"])) + (str(a["s"]).count("\n") + 1) * _padded("", a["width"]),
    "format": lambda a: _printf(a["value"], a["args"] or a["kwargs"]),
    "join": lambda a: _joined_with(a["d"], a["value"]),
    "replace": lambda a: _replaced(a["s"], a["old"], a["new"], a["count"]),
    # Every two lines hold more than `width` characters (else the second's first word would
    # have fitted on the first), so there are at most 2 * len / width + 1 lines.
    "wordwrap": lambda a: (
        len(str(a["s"]))
        + (2 * len(str(a["s"])) // max(_int(a["width"], 1), 1) + 1)
        * weight(a["wrapstring"] or "\n")
    ),
    "batch": lambda a: weight(a["value"]) + _int(a["linecount"]),
    "slice": lambda a: weight(a["value"]) + _int(a["slices"]),
}


def _guarded_filter(name: str, function: Callable[..., Any]) -> Callable[..., Any]:
    """``function`` with its inputs and result bounded, and the size it would build checked
    first when it is one of :data:`_FILTERS`."""
    estimate = _FILTERS.get(name)
    signature = inspect.signature(function) if estimate else None
    # A filter Jinja2 made async-capable is handed the eval context first though the function
    # it wraps (whose signature this is) does not take it.
    passed = getattr(function, "jinja_pass_arg", None)
    skip = int(
        passed is not None and getattr(inspect.unwrap(function), "jinja_pass_arg", None) is None
    )

    @functools.wraps(function)
    def guarded(*args: Any, **kwargs: Any) -> Any:
        _tick()
        args = tuple(_bounded(_settled(a), f"the input of `{name}`") for a in args)
        kwargs = {k: _bounded(_settled(v), f"the input of `{name}`") for k, v in kwargs.items()}
        if estimate is not None and signature is not None:
            arguments = signature.bind(*args[skip:], **kwargs)
            arguments.apply_defaults()
            if estimate(dict(arguments.arguments)) > MAX_VALUE:
                raise _refuse(f"the result of `{name}`")
        return _bounded(function(*args, **kwargs), f"the result of `{name}`")

    return guarded


def _check_binop(operator: str, left: Any, right: Any) -> None:
    """Refuses an intercepted operator whose result would outgrow the bounds, before it runs."""
    if operator == "**" and isinstance(right, int | float):
        bits = left.bit_length() if isinstance(left, int) else 1
        if abs(right) > 100 or bits * abs(right) > MAX_BITS:
            raise SecurityError("exponent too large")
    elif operator == "*" and isinstance(left, int) and isinstance(right, int):
        if left.bit_length() + right.bit_length() > MAX_BITS:
            raise SecurityError(f"a number larger than {MAX_BITS} bits")
    elif operator == "*":
        sequence, times = (right, left) if isinstance(left, int) else (left, right)
        if isinstance(times, int) and weight(sequence) * max(times, 0) > MAX_VALUE:
            raise _refuse("`*`")
    elif operator == "%" and isinstance(left, str) and _printf(left, right) > MAX_VALUE:
        raise _refuse("`%`")
    elif operator == "+" and weight(left) + weight(right) > MAX_VALUE:
        raise _refuse("`+`")


class _Formatter(SandboxedFormatter):
    """``str.format`` in the sandbox, with widths and the total length bounded."""

    size = 0

    def format_field(self, value: Any, format_spec: str) -> Any:
        for number in _DIGITS.findall(format_spec):
            _width(number)
        text = super().format_field(value, format_spec)
        self.size += len(text)
        if self.size > MAX_VALUE:
            raise _refuse("the formatted text")
        return text


class _EscapeFormatter(_Formatter, EscapeFormatter):
    pass


def lipsum(n: int = 5, html: bool = True, min: int = 20, max: int = 100) -> str:
    """Jinja2's ``lipsum`` with at most :data:`MAX_PARAGRAPHS` paragraphs of at most
    :data:`MAX_WORDS` words."""
    if _int(n) > MAX_PARAGRAPHS or _int(max) > MAX_WORDS:
        raise SecurityError(
            f"lipsum() makes at most {MAX_PARAGRAPHS} paragraphs of {MAX_WORDS} words"
        )
    return generate_lorem_ipsum(n, html, min, max)


def _range(*args: int) -> range:
    span = range(*args)
    if len(span) > MAX_RANGE:
        raise SecurityError(f"range() longer than {MAX_RANGE:,} items")
    return span


def _budgeted(iterable: Iterable[Any]) -> Iterator[Any]:
    """Every template ``for`` loop iterates through this, so a loop cannot outrun the budget."""
    for count, item in enumerate(iterable):
        if not count % 256:
            _tick()
        yield item


def _escaped(text: str) -> str:
    """``str(markupsafe.escape(text))`` for a plain ``str``: markupsafe's own replacements, in
    its order (``&`` first)."""
    return (
        text.replace("&", "&amp;")
        .replace(">", "&gt;")
        .replace("<", "&lt;")
        .replace("'", "&#39;")
        .replace('"', "&#34;")
    )


def _finalize(value: Any) -> Any:
    """A printed value (Jinja2 escapes what this returns); in a tracked render, its mark."""
    value = "" if value is None else _bounded(value, "an output")
    tracked = _tracked()
    if tracked is None:
        return value
    return _mark(tracked, value)


def _printed(value: Any) -> Markup:
    """``escape(_finalize(value))``, what a template prints for a value, in one call: the
    code of ``{{ … }}`` (see :class:`_CodeGenerator`). A tracked render's mark is markup
    already, which escaping would only copy (~1.5 µs a printed value: a Python call, an
    ``__html__`` lookup and a new Markup)."""
    value = "" if value is None else _bounded(value, "an output")
    tracked = _tracked()
    if tracked is None:
        return escape(value)
    return _mark(tracked, value)


def _mark(tracked: Tracked, value: Any) -> Markup:
    """The mark printed for ``value`` in a tracked render, the value collected as printed."""
    # A plain text as markupsafe escapes it, without building Markup on the way (its
    # constructor's `__html__` check raises and catches an AttributeError for every text).
    printed = _escaped(value) if type(value) is str else str(escape(value))
    if MARK in printed:
        raise tracked.doubted("printed a mark")
    tracked.size += len(printed)
    if tracked.size > MAX_VALUE:
        raise tracked.doubted("printed more than the bound")
    tracked.values.append(printed)
    return _MARKED


_DICT_ATTRIBUTES = frozenset(dir(dict))


class BoundedEnvironment(SandboxedEnvironment):
    """The sandbox with the bounds of this module; templates cannot turn autoescaping off."""

    code_generator_class = _CodeGenerator
    intercepted_binops = frozenset({"*", "**", "%", "+"})
    concat = staticmethod(_concat)
    printed = staticmethod(_printed)

    def __init__(self, **options: Any) -> None:
        super().__init__(finalize=_finalize, autoescape=True, **options)
        # Within a batch (see :meth:`batch`), each template as first looked up in it.
        self.batch_templates: dict[str, Any] | None = None
        self.filters = {name: _guarded_filter(name, f) for name, f in self.filters.items()}
        self.filters.pop("safe", None)
        self.globals.update(_budgeted=_budgeted, range=_range, lipsum=lipsum)

    def make_globals(self, d: MutableMapping[str, Any] | None) -> MutableMapping[str, Any]:
        """A template's globals as one plain dict, not Jinja2's ChainMap over the environment's:
        every render copies them (ChainMap's iteration was 5 % of a render), and nothing
        changes the environment's globals once templates are loaded."""
        return {**self.globals, **(d or {})}

    @contextmanager
    def batch(self) -> Iterator[None]:
        """Within it, a template is looked up once (its cache entry found, its file checked
        for edits) and then given as found: a layout is looked up by every email that extends
        it (~3 % of a render), and the loader checks a file once per batch anyway."""
        self.batch_templates = {}
        try:
            yield
        finally:
            self.batch_templates = None

    def _load_template(self, name: str, globals: MutableMapping[str, Any] | None) -> Any:
        found = self.batch_templates
        if found is None or globals:
            return super()._load_template(name, globals)
        template = found.get(name)
        if template is None:
            template = found[name] = super()._load_template(name, globals)
        return template

    def compile(self, *args: Any, **kwargs: Any) -> Any:
        """Jinja2's, never tracked: the compiler evaluates constant output (``{{ "x" }}``)
        through :func:`_finalize`, and a template first loaded inside a tracked render (an
        include) must not keep a mark in its code."""
        tracked, _state.track = _tracked(), None
        try:
            return super().compile(*args, **kwargs)
        finally:
            _state.track = tracked

    @staticmethod
    def text_buffer() -> list[str]:
        return _Text()

    def getattr(self, obj: Any, attribute: str) -> Any:
        """``lead.first_name``: on a plain dict, a name that is no dict attribute is read as its
        key, as the sandbox's lookup ends up doing after the attribute raised (an exception per
        variable of every email, a third of the lookup's cost). Anything else takes the
        sandbox's way."""
        if type(obj) is dict and attribute not in _DICT_ATTRIBUTES:
            try:
                return obj[attribute]
            except KeyError:
                return self.undefined(obj=obj, name=attribute)
        return super().getattr(obj, attribute)

    @staticmethod
    def tilde(parts: tuple[Any, ...]) -> str:
        """``a ~ b ~ …``, as Jinja2 joins it (escaping when a part is markup)."""
        if sum(weight(part) for part in parts) > MAX_VALUE:
            raise _refuse("`~`")
        return markup_join(parts)

    def call(__self, __context: Any, __obj: Any, *args: Any, **kwargs: Any) -> Any:
        _tick()
        # The variables of the loop or block a call is made in, which Jinja2 hands to the call.
        scope = {k: kwargs.pop(k) for k in ("_loop_vars", "_block_vars") if k in kwargs}
        args = tuple(_bounded(_settled(a), "an argument") for a in args)
        kwargs = {k: _bounded(_settled(v), "an argument") for k, v in kwargs.items()}
        owner = getattr(__obj, "__self__", None)
        grows = _METHODS.get(getattr(__obj, "__name__", ""))
        if isinstance(owner, str | bytes) and grows is not None:
            try:
                size = grows(owner, *args, **kwargs)
            except TypeError:  # wrong arguments: the call itself says so
                size = 0
            if size > MAX_VALUE:
                raise _refuse(f"the result of `{__obj.__name__}`")
        if not isinstance(__obj, Macro):
            result = super().call(__context, __obj, *args, **kwargs, **scope)
        else:
            _state.depth = getattr(_state, "depth", 0) + 1
            try:
                if _state.depth > MAX_NESTING:
                    raise SecurityError(
                        f"macro calls nested more than {MAX_NESTING} deep (does a macro call "
                        "itself without end?)"
                    )
                result = super().call(__context, __obj, *args, **kwargs, **scope)
            finally:
                _state.depth -= 1
        if isinstance(owner, list | dict | Set | deque | bytearray):  # it may have grown
            _bounded(owner, "a list or mapping")
        return _bounded(result, "the result of a call")

    def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
        _tick()
        _check_binop(operator, left, right)
        return _bounded(super().call_binop(context, operator, left, right), f"`{operator}`")

    def wrap_str_format(self, value: Any) -> Callable[..., str] | None:
        """Jinja2's own, with :class:`_Formatter` (which bounds widths and length) in place of
        its formatter; ``str.format`` and ``format_map`` are wrapped when looked up."""
        if not (inspect.ismethod(value) or inspect.isbuiltin(value)) or value.__name__ not in (
            "format",
            "format_map",
        ):
            return None
        text = value.__self__
        if not isinstance(text, str):
            return None
        is_format_map = value.__name__ == "format_map"

        def wrapper(*args: Any, **kwargs: Any) -> str:
            if is_format_map:
                if kwargs or len(args) != 1:
                    raise TypeError("format_map() takes exactly one mapping")
                mapping = args[0]
                args, kwargs = (), dict(mapping)
            formatter: Formatter = (
                _EscapeFormatter(self, escape=text.escape)
                if isinstance(text, Markup)
                else _Formatter(self)
            )
            return type(text)(formatter.vformat(text, args, kwargs))

        return functools.update_wrapper(wrapper, value)

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
