"""The regular expressions of ``matches`` tests: checked when a ruleset is read, bounded when a
lead is matched.

A pattern is written in Python's dialect (it must parse with ``re``) and is matched with the
``regex`` package, whose matching takes a timeout: a pattern like ``(a|aa)+$`` takes exponential
time on some texts, and Python's ``re`` would hold the interpreter until it finished. Matching
looks at the first :data:`MAX_TEXT` characters of a value (the first :data:`MAX_ITEMS` items of
a list) and gives up after :data:`TIMEOUT` seconds; a match given up counts as no match, is
counted (``nurture_regex_timeouts_total``) and logged once per pattern, without the value.

``nurture rules check`` warns about the shapes that take exponential time (:func:`caution`).
"""

from __future__ import annotations

import importlib
import logging
import re
import threading
import warnings
from collections.abc import Callable
from typing import Any

import regex

from engine import metrics

log = logging.getLogger(__name__)

# Characters of a pattern.
MAX_PATTERN = 500
# Counted repetitions (`a{1000}`) are unrolled when the pattern is compiled: compiling
# `(?:a{1000}){1000}` takes seconds, `a{4294967294}` never ends. Bound the unrolled size.
MAX_UNROLLED = 10_000
# Characters of a value that a pattern is matched against, and items of a list value.
MAX_TEXT = 1_000
MAX_ITEMS = 100
# Seconds one match may take (the `regex` package checks now and then: ~3x in practice).
TIMEOUT = 0.02

# Python's own parser of its regex dialect: the same syntax tree `re.compile` builds (private
# but stable since 3.11; the project runs on 3.11 and 3.12).
_sre: Any = importlib.import_module("re._parser")
_REPEATS = ("MAX_REPEAT", "MIN_REPEAT", "POSSESSIVE_REPEAT")
# A `{` that Python reads as itself but the `regex` package as fuzzy matching (`(?:ab){e<=1}`):
# skip escapes and classes, find a `{` that does not start a repetition.
_LOOSE_BRACE = re.compile(r"\\.|\[\^?\]?(?:\\.|[^\]\\])*\]|(\{)(?!\d*(?:,\d*)?\})", re.DOTALL)
_UNBOUNDED = int(_sre.MAXREPEAT)


def problem(pattern: str) -> str | None:
    """Why ``pattern`` cannot be a ``matches`` test, or None."""
    if len(pattern) > MAX_PATTERN:
        return f"a pattern has at most {MAX_PATTERN} characters, got {len(pattern):,}"
    try:
        tree = _parse(pattern)
    except (re.error, FutureWarning) as error:
        return f"invalid regex {pattern!r}: {error}"
    if any(brace for brace in _LOOSE_BRACE.findall(pattern)):
        return (
            f"invalid regex {pattern!r}: write \\{{ for a {{ that is not a repetition "
            "like {2} or {1,3}"
        )
    if _unrolled(tree) > MAX_UNROLLED:
        return (
            f"the pattern {pattern!r} repeats too much: counted repetitions like "
            f"{{1000}} multiply; keep their product under {MAX_UNROLLED:,}"
        )
    return None


def _parse(pattern: str) -> Any:
    """The syntax tree of ``pattern``; raises re.error, or FutureWarning where Python warns
    about `[[:alpha:]]` or `[a--b]`, which the `regex` package reads otherwise (a class, a
    difference of sets): a pattern must mean one thing."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)
        return _sre.parse(pattern)


def _unrolled(items: Any) -> int:
    """How many elements compiling ``items`` makes once counted repetitions are unrolled."""
    total = 0
    for op, av in items:
        name = str(op)
        if name in _REPEATS:
            low, high, body = av
            times = low if high == _UNBOUNDED else high
            total += max(times, 1) * _unrolled(body)
        else:
            total += max(1, sum(_unrolled(part) for part in _children(name, av)))
        if total > MAX_UNROLLED:
            return total
    return total


def _children(name: str, av: Any) -> list[Any]:
    """The sub-patterns of one element of the syntax tree."""
    if name == "SUBPATTERN":
        return [av[3]]
    if name == "BRANCH":
        return list(av[1])
    if name in ("ASSERT", "ASSERT_NOT"):
        return [av[1]]
    if name == "ATOMIC_GROUP":
        return [av]
    if name in _REPEATS:
        return [av[2]]
    return []


def caution(pattern: str) -> str | None:
    """Why ``pattern`` may take exponential time, or None: a repeated group whose content can
    match the same text in more than one way (``(a+)+``, ``(\\w+\\s?)+``, ``(a|aa)*``)."""
    try:
        return _nested(_parse(pattern))
    except (re.error, FutureWarning):
        return None


def _nested(items: Any) -> str | None:
    for op, av in items:
        name = str(op)
        if name in ("MAX_REPEAT", "MIN_REPEAT") and av[1] > 1:
            body = _unwrap(av[2])
            if _only_repeats(body):
                return "a repeated group of repetitions, like (a+)+"
            if _overlapping_branch(body):
                return "a repeated choice whose options can match the same text, like (a|aa)*"
        if name == "ATOMIC_GROUP" or name == "POSSESSIVE_REPEAT":
            continue  # they never backtrack
        for part in _children(name, av):
            found = _nested(part)
            if found:
                return found
    return None


def _unwrap(items: Any) -> Any:
    """The content of a group: ``(?:x)`` and ``(x)`` → x."""
    while len(items) == 1 and str(items[0][0]) == "SUBPATTERN":
        items = items[0][1][3]
    return items


def _only_repeats(items: Any) -> bool:
    """Every element repeats or may be absent, and one repeats without end: the text can be
    split between the repetitions in exponentially many ways."""
    unbounded = False
    for op, av in items:
        name = str(op)
        if name in ("MAX_REPEAT", "MIN_REPEAT"):
            unbounded = unbounded or av[1] == _UNBOUNDED
            if av[0] > 0 and av[1] <= 1:
                return False
        elif name != "AT":  # anchors such as \b match no text
            return False
    return unbounded


def _overlapping_branch(items: Any) -> bool:
    """A choice among ``items`` two of whose options can match the same start of a text
    (Python's parser factors common starts out: ``a|aa`` becomes ``a(?:|a)``, whose empty
    option overlaps any other)."""
    for op, av in items:
        if str(op) == "BRANCH":
            options = av[1]
            for index, option in enumerate(options):
                if any(_overlap(option, other) for other in options[index + 1 :]):
                    return True
    return False


def _overlap(one: Any, other: Any) -> bool:
    words = [_literal(one), _literal(other)]
    if words[0] is not None and words[1] is not None:  # plain words: bar|baz no, a|ab yes
        return words[0].startswith(words[1]) or words[1].startswith(words[0])
    firsts = [_first(one), _first(other)]
    return firsts[0] is None or firsts[1] is None or bool(firsts[0] & firsts[1])


def _literal(items: Any) -> str | None:
    """The text ``items`` match when they are plain characters only."""
    if not all(str(op) == "LITERAL" for op, _ in items):
        return None
    return "".join(chr(av) for _, av in items)


def _first(items: Any) -> set[int] | None:
    """The characters a match of ``items`` can start with; None: any (or not worked out)."""
    for op, av in items:
        name = str(op)
        if name == "AT":
            continue
        if name == "LITERAL":
            return {av, ord(chr(av).casefold()[0])}
        if name == "SUBPATTERN":
            return _first(av[3])
        if name in ("MAX_REPEAT", "MIN_REPEAT") and av[0] > 0:
            return _first(av[2])
        return None
    return None  # an option that can match nothing overlaps every other


# Searches that timed out in this process: a result found under a timeout is not remembered.
timeouts = 0


class _Search:
    """``pattern`` searched in a value's first MAX_TEXT characters, within TIMEOUT."""

    def __init__(self, pattern: str, where: str) -> None:
        self.pattern = pattern
        self.compiled = regex.compile(pattern)
        self.where = where
        self.warned = False
        self.lock = threading.Lock()

    def __call__(self, text: str) -> bool:
        try:
            return self.compiled.search(text[:MAX_TEXT], timeout=TIMEOUT) is not None
        except TimeoutError:
            self.timed_out()
            return False

    def timed_out(self) -> None:
        global timeouts
        metrics.REGEX_TIMEOUTS.inc()
        with self.lock:
            timeouts += 1
            first, self.warned = not self.warned, True
        if first:
            log.warning(
                "%s: the pattern %r timed out (over %d ms on one value) and counts as no match; "
                "`nurture rules check` says why: rewrite it",
                self.where,
                self.pattern,
                TIMEOUT * 1000,
            )


def search(pattern: str, where: str) -> Callable[[str], bool]:
    """A bounded search for ``pattern`` (checked by :func:`problem`); ``where`` (file:line)
    names it in the log."""
    return _Search(pattern, where)
