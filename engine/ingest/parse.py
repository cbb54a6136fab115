"""JSON Lines and CSV → validated lead and event records, or a rejection naming line and field.

Pure: no database. A bad line never stops the good ones. A parser given a :data:`Slice` yields
only the records of that slice of the leads (``nurture ingest --workers``): a line whose lead
key reads plainly off its text (:func:`plain_email`) is parsed only by the slice that key falls
in, every other line by every slice, each keeping what falls in it.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, TextIO, TypeVar

from engine import jsontext
from engine.address import normalise_email
from engine.errors import InvalidRecord
from engine.ingest import reader
from engine.ingest.columns import COMPUTED as COMPUTED  # JSON records may not set them either
from engine.ingest.columns import PROPERTIES, ColumnError, column_names
from engine.ingest.reader import Rejection as Rejection  # the parser answers with it too
from engine.rules.spec import TIME_EVENT
from engine.timeutil import parse_instant, utcnow

EVENT_KEYS = frozenset({"id", "email", "type", "occurred_at", "properties", "lead"})
MAX_TYPE_LENGTH = 64
MAX_NAME_LENGTH = 200  # of an id, an attribute or a property
MAX_FIELDS = 1000  # attributes or properties in one record
# How far ahead of the clock a time may be: clocks drift, time zones get mislabelled; beyond
# that a time is a mistake, and years like 9999 overflow the date arithmetic of windows and waits.
FUTURE_SLACK = timedelta(days=1)
# Characters no name holds: controls, and the invisible ones that make look-alike names.
_HIDDEN = re.compile(
    r"[\x00-\x1f\x7f-\x9f\xad\u061c\u180e\u200b-\u200f\u2028-\u202e\u2060-\u206f\ufeff]"
)


@dataclass(frozen=True)
class LeadRecord:
    """A profile upsert. It is scored as a ``profile_update`` event with id ``id``."""

    line: int
    email: str
    attributes: dict[str, Any]
    id: str
    occurred_at: datetime | None = None


@dataclass(frozen=True)
class EventRecord:
    line: int
    email: str
    id: str
    type: str
    occurred_at: datetime | None
    properties: dict[str, Any] = field(default_factory=dict)
    attributes: dict[str, Any] = field(default_factory=dict)  # the optional nested `lead`


Record = LeadRecord | EventRecord
Parsed = LeadRecord | EventRecord | Rejection
Slice = Callable[[str | None], bool]
"""Whether a record whose lead key (normal email) is this falls in a slice; None stands for a
line that names no lead (a rejection), which exactly one slice must take."""

# An address that is its own lead key: lower-case ASCII letters, digits and ``._+-``, one @.
# :func:`engine.address.normal_address` returns such text unchanged whenever it accepts it
# (tests/unit/test_ingest_slices.py checks it on generated addresses).
_PLAIN_ADDRESS = r"[a-z0-9._+-]+@[a-z0-9.-]+"
_PLAIN_EMAIL = re.compile(rf'"email"[ \t\n\r]*:[ \t\n\r]*"({_PLAIN_ADDRESS})"')
_PLAIN_CELL = re.compile(_PLAIN_ADDRESS)
_Unit = TypeVar("_Unit")  # what one record is parsed from: a line's text, a CSV row's cells


def _derived_id(kind: str, body: Mapping[str, Any]) -> str:
    """Records without an id get one from their content, so a re-run of a file is idempotent."""
    canonical = json.dumps([kind, body], sort_keys=True, default=str, separators=(",", ":"))
    return f"{kind}:{hashlib.sha256(canonical.encode()).hexdigest()[:32]}"


def _time(value: object) -> datetime | None:
    if value is None or value == "":
        return None
    try:
        moment = parse_instant(value)
    except ValueError as error:
        raise InvalidRecord(f"occurred_at: {error}") from None
    if moment > utcnow() + FUTURE_SLACK:
        raise InvalidRecord("occurred_at: more than a day in the future")
    return moment


def _is_name(text: str, limit: int = MAX_NAME_LENGTH) -> bool:
    return 0 < len(text) <= limit and _HIDDEN.search(text) is None


def _shown(key: str) -> str:
    """A key as an error message may show it: quoted and cut when it is no name (a terminal
    would act on its escape sequences)."""
    return key if _is_name(key) else repr(key[:40])


def _names(raw: Mapping[str, Any], where: str) -> None:
    """An object's keys as names a person can read and rules can address, and not too many."""
    if len(raw) > MAX_FIELDS:
        raise InvalidRecord(f"{where.rstrip('.') or 'the record'}: more than {MAX_FIELDS} fields")
    for key in raw:
        if not _is_name(key):
            raise InvalidRecord(
                f"{where}{_shown(key)}: a field name is 1 to {MAX_NAME_LENGTH} characters, "
                "without control or invisible characters"
            )


def _attributes(raw: Mapping[str, Any], where: str) -> dict[str, Any]:
    _names(raw, where)
    attributes: dict[str, Any] = {}
    for key, value in raw.items():
        if key in COMPUTED:
            raise InvalidRecord(f"{where}{key}: computed by the ruleset, cannot be imported")
        if isinstance(value, dict | list):
            raise InvalidRecord(f"{where}{key}: must be text, a number or true/false")
        attributes[str(key)] = value
    if "subscribed" in attributes and not isinstance(attributes["subscribed"], bool):
        raise InvalidRecord(f"{where}subscribed: must be true or false")
    return attributes


def _storable(raw: Mapping[str, Any], deep: bool = True) -> None:
    """Refuse what would pass here and fail in the database or in what reads it: nesting deeper
    than :data:`jsontext.MAX_DEPTH`; JSON's escapes can spell lone surrogates (not UTF-8) and NUL
    (PostgreSQL stores no NUL in text), and Python's JSON reads NaN and Infinity, which standard
    JSON columns refuse."""
    for key, value in raw.items() if deep else ():
        if isinstance(value, dict | list) and jsontext.too_deep(value, jsontext.MAX_DEPTH - 1):
            raise InvalidRecord(f"{key}: nested deeper than {jsontext.MAX_DEPTH} levels")
    try:
        text = json.dumps(raw, allow_nan=False, ensure_ascii=False, default=str)
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidRecord("text must be valid Unicode (a lone surrogate escape)") from None
    except ValueError:
        raise InvalidRecord("numbers must be finite (no NaN or Infinity)") from None
    if "\\u0000" in text:
        raise InvalidRecord("text must not contain NUL characters")


def _client_id(value: object) -> str | None:
    """A record's own id as text, or None when it has none (one is derived instead)."""
    if value is None or value == "":
        return None
    if not isinstance(value, str | int) or isinstance(value, bool) or not _is_name(str(value)):
        raise InvalidRecord(
            f"id: must be text or a number, at most {MAX_NAME_LENGTH} characters, without "
            "control or invisible characters"
        )
    return str(value)


def record(line: int, raw: object, openings: int | None = None) -> Record:
    """One decoded object → a record, or InvalidRecord naming the field. ``openings``: how many
    ``{`` and ``[`` the JSON text it was decoded from holds, when there is one."""
    if not isinstance(raw, dict):
        raise InvalidRecord("a record must be a JSON object")
    # Nothing nests deeper than the text opens objects and lists: few openings, no walk.
    _storable(raw, deep=openings is None or openings > jsontext.MAX_DEPTH)
    email = normalise_email(raw.get("email"))
    if raw.get("type") in (None, ""):
        body = {k: v for k, v in raw.items() if k not in ("id", "email", "occurred_at")}
        attributes = _attributes(body, "")
        occurred_at = _time(raw.get("occurred_at"))
        key = _client_id(raw.get("id")) or _derived_id("profile", {"email": email, **raw})
        return LeadRecord(line, email, attributes, key, occurred_at)
    kind = raw["type"]
    if not isinstance(kind, str) or not _is_name(kind.strip(), MAX_TYPE_LENGTH):
        raise InvalidRecord(
            f"type: must be a name of at most {MAX_TYPE_LENGTH} characters, without control or "
            "invisible characters"
        )
    if kind.strip() == TIME_EVENT:
        raise InvalidRecord(
            f"type: {TIME_EVENT!r} is the scheduler's time evaluation, not an event"
        )
    unknown = set(raw) - EVENT_KEYS
    if unknown:
        raise InvalidRecord(
            f"{_shown(sorted(unknown)[0])}: unknown field; event properties go under `properties`"
        )
    properties = raw.get("properties") or {}
    if not isinstance(properties, dict):
        raise InvalidRecord("properties: must be an object")
    _names(properties, "properties.")
    lead = raw.get("lead") or {}
    if not isinstance(lead, dict):
        raise InvalidRecord("lead: must be an object of profile attributes")
    occurred_at = _time(raw.get("occurred_at"))
    return EventRecord(
        line,
        email,
        _client_id(raw.get("id")) or _derived_id("event", raw),
        kind.strip(),
        occurred_at,
        properties,
        _attributes(lead, "lead."),
    )


def _is_utf8(text: str) -> bool:
    """Files are read with surrogateescape so one bad byte rejects its line, not the file."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def plain_email(text: str) -> str | None:
    """The lead key of the record on a JSON line, read off the text without parsing it, or None
    when the text does not spell it plainly. If the line holds a valid record, this is its
    email: with no backslash (so no escape) in the line, the one ``"email"`` of the text is a
    string token and the record's only ``email`` key, and a plain address is its own normal
    form. A bad line may answer any address; it is then rejected in that address's slice."""
    start = text.find('"email"')
    if start < 0 or "\\" in text or text.find('"email"', start + 1) >= 0:
        return None
    found = _PLAIN_EMAIL.match(text, start)
    return None if found is None else found.group(1)


def _plain_cell(row: Mapping[str | None, Any]) -> str | None:
    """A CSV row's lead key when its ``email`` cell is a plain address (as
    :func:`plain_email`: the cell becomes the record's ``email`` as it is)."""
    email = row.get("email")
    return email if isinstance(email, str) and _PLAIN_CELL.fullmatch(email) else None


def _sliced(
    units: Iterable[tuple[int, _Unit] | Rejection],
    parse: Callable[[int, _Unit], Parsed],
    plain_key: Callable[[_Unit], str | None],
    mine: Slice | None,
) -> Iterator[Parsed]:
    """``parse`` of each (line, unit), rejections as they come; with ``mine``, only what falls
    in the slice, a unit whose ``plain_key`` is known parsed only in that key's slice."""
    for unit in units:
        if isinstance(unit, Rejection):
            if mine is None or mine(None):
                yield unit
            continue
        number, body = unit
        if mine is None:
            yield parse(number, body)
            continue
        key = plain_key(body)
        if key is None:
            item = parse(number, body)
            if mine(None if isinstance(item, Rejection) else item.email):
                yield item
        elif mine(key):
            yield parse(number, body)


def _json_line(number: int, text: str) -> Parsed:
    if not _is_utf8(text):
        return Rejection(number, "not valid UTF-8 text")
    try:
        return record(number, jsontext.loads(text), text.count("{") + text.count("["))
    except jsontext.JsonError as error:
        return Rejection(number, f"not valid JSON: {error}")
    except InvalidRecord as error:
        return Rejection(number, str(error))


def _numbered(lines: Iterable[str | Rejection]) -> Iterator[tuple[int, str] | Rejection]:
    """Non-blank lines with their numbers; a line the reader already refused (too long) stays
    refused."""
    for number, text in enumerate(lines, start=1):
        if isinstance(text, Rejection):
            yield text
        elif text.strip():
            yield number, text


def parse_jsonl(lines: Iterable[str | Rejection], mine: Slice | None = None) -> Iterator[Parsed]:
    """One record per line; with ``mine``, only the slice's records (see the module's doc)."""
    return _sliced(_numbered(lines), _json_line, plain_email, mine)


def csv_value(text: str) -> Any:
    """CSV cells are text; a cell that reads back as the same number becomes that number."""
    text = text.strip()
    if text == "":
        return None
    for cast in (int, float):
        try:
            number = cast(text)
        except ValueError:
            continue
        if str(number) == text and math.isfinite(number):  # "nan" and "inf" are words
            return number
    if text.lower() in ("true", "false"):
        return text.lower() == "true"
    return text


def parse_csv(lines: Iterable[str | Rejection], mine: Slice | None = None) -> Iterator[Parsed]:
    """One record per row, its cells named by the header as :mod:`engine.ingest.columns` says
    (the backtest's rule); rows the reader could not read are rejected with the line they start
    on (see :mod:`engine.ingest.reader`). With ``mine``, only the slice's records."""
    return _sliced(_named_rows(lines), _csv_record, _plain_cell, mine)


def _named_rows(
    lines: Iterable[str | Rejection],
) -> Iterator[tuple[int, dict[str | None, Any]] | Rejection]:
    """The rows after the header, by column name, with the line each starts on; a header that
    cannot be read is one Rejection and no row."""
    rows = reader.csv_rows(lines)
    header = next(rows, None)
    if isinstance(header, Rejection):
        yield Rejection(header.line, f"the header row: {header.error}; no row was read")
        return
    try:
        fieldnames = column_names(header[1]) if header else []
    except ColumnError as error:
        assert header is not None
        yield Rejection(header[0], f"the header row: {error}; no row was read")
        return
    for item in rows:
        yield item if isinstance(item, Rejection) else (item[0], _by_name(fieldnames, item[1]))


def _csv_record(number: int, row: dict[str | None, Any]) -> Parsed:
    if not all(_is_utf8(cell) for cell in row.values() if isinstance(cell, str)):
        return Rejection(number, "not valid UTF-8 text")
    if None in row:
        return Rejection(number, "more cells than the header has columns")
    cells = {k: csv_value(v or "") for k, v in row.items() if k}
    raw: dict[str, Any] = {}
    properties: dict[str, Any] = {}
    is_event = cells.get("type") not in (None, "")
    for key, value in cells.items():
        if value is None:
            continue
        if key.startswith(PROPERTIES):
            properties[key.removeprefix(PROPERTIES)] = value
        elif is_event and key not in EVENT_KEYS:
            properties[key] = value
        else:
            raw[key] = value
    if "id" in raw:
        raw["id"] = str(raw["id"])
    if "occurred_at" in raw:
        raw["occurred_at"] = str(raw["occurred_at"])
    if is_event and properties:
        raw["properties"] = properties
    try:
        return record(number, raw)
    except InvalidRecord as error:
        return Rejection(number, str(error))


def _by_name(fieldnames: list[str | None], cells: list[str]) -> dict[str | None, Any]:
    """A row as ``csv.DictReader`` gives it: cells past the header under None, missing ones
    None; cells of columns without a header are dropped."""
    row: dict[str | None, Any] = {
        name: cell for name, cell in zip(fieldnames, cells, strict=False) if name is not None
    }
    if len(cells) > len(fieldnames):
        row[None] = cells[len(fieldnames) :]
    for name in fieldnames[len(cells) :]:
        if name is not None:
            row[name] = None
    return row


def sniff_format(name: str, head: str) -> str:
    if name.endswith(".csv"):
        return "csv"
    if name.endswith((".jsonl", ".ndjson", ".json")):
        return "jsonl"
    return "jsonl" if head.lstrip().startswith("{") else "csv"


def parse_stream(stream: TextIO, name: str = "-", mine: Slice | None = None) -> Iterator[Parsed]:
    """Records from an open text stream, its format told by name or by its first character;
    with ``mine``, only the slice's records (see the module's doc)."""
    head = stream.read(1)
    if head == "\ufeff":  # a byte order mark (Excel's "CSV UTF-8" writes one): not data
        head = stream.read(1)
    body = reader.lines(stream, head)
    parse = parse_csv if sniff_format(name, head) == "csv" else parse_jsonl
    return parse(body, mine)
