"""Ingest, step 0 (pure): a text stream → its lines, and CSV lines → rows, within bounds. What
the readers cannot take (a line over :data:`MAX_LINE` characters, a cell over the csv module's
limit, a bare CR inside a row, a quote never closed) is one :class:`Rejection` naming the line
where the record starts; the lines after it are read again, so nothing else is lost.

A stream's lines end where its first line ends: at LF (so CRLF too), or at a bare CR for files
written with old Mac line ends. Streams must be opened without newline translation
(``newline=""``), else a bare CR inside a row would silently split it in two.
"""

from __future__ import annotations

import csv
import re
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from functools import partial
from itertools import chain
from typing import TextIO

MAX_LINE = 1 << 20  # characters in one line, and in one CSV record spanning lines
CHUNK = 1 << 16
_LINE_END = re.compile(r"\r\n?|\n")


@dataclass(frozen=True)
class Rejection:
    line: int
    error: str


def lines(stream: TextIO, head: str = "") -> Iterator[str | Rejection]:
    """The lines of ``stream`` (after ``head``, text already read from it), with their ends; a
    line over :data:`MAX_LINE` is a Rejection in its place, its text skipped, never held."""
    chunks = iter(partial(stream.read, CHUNK), "")
    first = head
    while (end := _line_end(first)) is None and len(first) <= MAX_LINE:
        chunk = next(chunks, "")
        if not chunk:
            break
        first += chunk
    return _split(chain([first], chunks), end or "\n")


def _line_end(text: str) -> str | None:
    """The line end ``text`` uses first; None until one is seen (a CR last may be a CRLF's)."""
    found = _LINE_END.search(text)
    if found is None or (found.group() == "\r" and found.end() == len(text)):
        return None
    return "\r" if found.group() == "\r" else "\n"


def _split(chunks: Iterable[str], end: str) -> Iterator[str | Rejection]:
    number, part, over = 0, "", False  # over: the current line passed MAX_LINE
    too_long = f"longer than {MAX_LINE} characters"
    for chunk in chunks:
        start = 0
        while (stop := chunk.find(end, start)) >= 0:
            number += 1
            if over or len(part) + stop + 1 - start > MAX_LINE:
                yield Rejection(number, too_long)
            else:
                yield part + chunk[start : stop + 1]
            part, over, start = "", False, stop + 1
        rest = chunk[start:]
        if over or len(part) + len(rest) > MAX_LINE:
            part, over = "", True
        else:
            part += rest
    if part or over:
        yield Rejection(number + 1, too_long) if over else part


class _Broken(Exception):
    """A record the feed stopped: a line already refused, or a record over MAX_LINE."""


class _Feed:
    """The lines ``csv.reader`` reads, numbered, one record at a time. The current record's
    lines are kept (at most MAX_LINE characters) so that after a broken record the lines after
    its first are read again, as rows of their own."""

    def __init__(self, source: Iterable[str | Rejection]) -> None:
        self.source = enumerate(source, start=1)
        self.again: deque[tuple[int, str | Rejection]] = deque()
        self.taken: list[tuple[int, str | Rejection]] = []
        self.size = 0

    def __iter__(self) -> _Feed:
        return self

    def __next__(self) -> str:
        number, line = self.again.popleft() if self.again else next(self.source)
        self.taken.append((number, line))
        if isinstance(line, Rejection):
            raise _Broken(line.error)
        self.size += len(line)
        if self.size > MAX_LINE:
            raise _Broken(f"the row is longer than {MAX_LINE} characters")
        return line

    def next_record(self) -> None:
        self.taken, self.size = [], 0


def csv_rows(source: Iterable[str | Rejection]) -> Iterator[tuple[int, list[str]] | Rejection]:
    """(first line, cells) of each non-blank CSV record, or a Rejection for one that breaks."""
    feed = _Feed(source)
    reader = csv.reader(feed, strict=True)
    while True:
        feed.next_record()
        try:
            row = next(reader)
        except StopIteration:
            return
        except (csv.Error, _Broken) as error:
            (number, line), rest = feed.taken[0], feed.taken[1:]
            if isinstance(line, Rejection):
                yield line
            else:
                yield Rejection(number, _problem(error, number, len(rest)))
            feed.again.extendleft(reversed(rest))
            continue
        if row:
            yield feed.taken[0][0], row


def _problem(error: Exception, line: int, more: int) -> str:
    """What broke a record, as someone fixing the file needs it."""
    text = str(error)
    if isinstance(error, _Broken):
        problem = text
    elif "new-line character seen in unquoted field" in text:
        problem = (
            "a carriage return (CR) or line feed inside the row, outside quotes: rows end "
            "with LF or CRLF, and a cell holding a line break is quoted"
        )
    elif "unexpected end of data" in text:
        problem = "a quoted cell opened on this line is never closed"
    elif "expected after" in text:
        problem = (
            f"a quoted cell opened on this line is closed on line {line + more} but not "
            "followed by a comma (a quote never closed?)"
            if more
            else "text after the closing quote of a cell: quote the whole cell and double the "
            'quotes inside it ("")'
        )
    elif "field larger than field limit" in text:
        problem = f"a cell is longer than {csv.field_size_limit()} characters"
    else:
        problem = f"not valid CSV: {text}"
    if more:
        problem += f"; lines {line + 1}–{line + more} are read again as rows of their own"
    return problem
