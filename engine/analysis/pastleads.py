"""A CSV of past leads with known outcomes → lead attributes and 0/1 outcomes: the input of
``nurture backtest`` and ``nurture model train``. Pure but for reading the file.

Column headers become attribute names by the rule ``nurture ingest`` applies to CSV
(:mod:`engine.ingest.columns`: snake_case, "Lead Origin" → ``lead_origin``, "Tags" →
``tags_column``), so a ruleset reads the same ``lead.<attribute>`` here and live. Cells that
read back as the same number become numbers, as in ``nurture ingest``; empty cells are missing
attributes. The outcome column is not an attribute: rules and models must not see the answer.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from engine.errors import NurtureError
from engine.ingest.columns import ColumnError, attribute_name, column_names
from engine.ingest.parse import csv_value


class PastLeadsError(NurtureError, ValueError):
    """The file cannot be used; the message names the file and the line or column at fault."""


@dataclass(frozen=True)
class PastLeads:
    path: str
    columns: dict[str, str]  # attribute name → the column header it came from
    outcome: str  # the outcome column's header
    lines: list[int]  # each row's line in the file
    attributes: list[dict[str, Any]]
    outcomes: list[int]

    def __len__(self) -> int:
        return len(self.outcomes)


def resolve_column(columns: dict[str, str], name: str, path: str) -> str:
    """The attribute name of column ``name``, given as its header or as its attribute name."""
    for attribute, header in columns.items():
        if name in (header, attribute):
            return attribute
    if attribute_name(name) in columns:
        return attribute_name(name)
    listed = ", ".join(repr(h) for h in columns.values())
    raise PastLeadsError(f"{path}: no column {name!r}; the columns are {listed}")


def read_past_leads(path: Path, outcome: str) -> PastLeads:
    try:
        data = path.read_bytes()
    except OSError as error:
        raise PastLeadsError(f"{path}: cannot read: {error.strerror or error}") from None
    try:
        text = data.decode("utf-8-sig")  # Excel's "CSV UTF-8" starts with a byte order mark
    except UnicodeDecodeError as error:
        line = data[: error.start].count(b"\n") + 1
        raise PastLeadsError(f"{path}:{line}: not valid UTF-8 text") from None
    return parse_past_leads(text, outcome, str(path))


def parse_past_leads(text: str, outcome: str, path: str = "<csv>") -> PastLeads:
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        header = next(reader, None)
        if header is None or not any(cell.strip() for cell in header):
            raise PastLeadsError(f"{path}: empty file; the first line must name the columns")
        columns = _columns(header, path)
        outcome_attribute = resolve_column(
            {a: header[i] for a, i in columns.items()}, outcome, path
        )
        outcome_index = columns.pop(outcome_attribute)
        lines: list[int] = []
        attributes: list[dict[str, Any]] = []
        outcomes: list[int] = []
        start = reader.line_num
        for row in reader:
            line, start = start + 1, reader.line_num  # a quoted cell may span several lines
            if not any(cell.strip() for cell in row):
                continue
            if len(row) != len(header):
                raise PastLeadsError(
                    f"{path}:{line}: {len(row)} cells, the header has {len(header)} columns"
                )
            for index, cell in enumerate(row):
                if cell.strip() and not header[index].strip():
                    raise PastLeadsError(
                        f"{path}:{line}: a value in column {index + 1}, which has no name"
                    )
            outcomes.append(_outcome(row[outcome_index], header[outcome_index], path, line))
            cells = ((name, csv_value(row[index])) for name, index in columns.items())
            attributes.append({name: value for name, value in cells if value is not None})
            lines.append(line)
    except csv.Error as error:
        raise PastLeadsError(f"{path}:{reader.line_num}: not valid CSV: {error}") from None
    if not outcomes:
        raise PastLeadsError(f"{path}: no rows under the header")
    return PastLeads(
        path=path,
        columns={name: header[index] for name, index in columns.items()},
        outcome=header[outcome_index],
        lines=lines,
        attributes=attributes,
        outcomes=outcomes,
    )


def _columns(header: list[str], path: str) -> dict[str, int]:
    """Attribute name → index, for every named column. Unnamed ones (a trailing comma) are
    skipped; two headers with one attribute name are an error."""
    try:
        names = column_names(header)
    except ColumnError as error:
        raise PastLeadsError(f"{path}:1: {error}") from None
    return {name: index for index, name in enumerate(names) if name is not None}


def _outcome(cell: str, column: str, path: str, line: int) -> int:
    value = csv_value(cell)
    if value in (0, 1) and not isinstance(value, bool):
        return int(value)
    raise PastLeadsError(
        f"{path}:{line}: column {column!r} is {cell.strip()!r}; outcomes are 0 or 1"
    )
