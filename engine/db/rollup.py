"""Stage changes and the pipeline rollups, written together: every writer of ``stage_history``
calls :func:`record_moves`, which appends the rows and brings up to date, for the leads they
touch, each stay's facts (``stage_stay``) and the daily rollups the pipeline report sums
(``stage_entry_day``, ``stage_length_day``, ``stage_move_day``, ``stage_cohort_day``).

A lead's stays are recomputed from those stored (its history so far, a handful of rows) and the
moves added, and compared with those stored: only stays that changed are rewritten, and the
rollups get the difference as additive counters (``n = n + delta`` upserts, keys sorted), so
concurrent writers never lose a count and moves written out of order (a replay's past moves)
land right. Nothing here knows the funnel's
order: stays keep the later stages as bits (``stage_code``), and the report applies the order.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping, Sequence
from datetime import UTC, datetime
from itertools import groupby
from typing import Any

from sqlalchemy import Connection, Table, bindparam, delete, select

from engine.db.bulk import among, append_rows, execute_many, upsert, upsert_rows
from engine.db.schema import (
    COHORT_DAYS,
    ENTRY_DAYS,
    LEADS,
    LENGTH_DAYS,
    MOVE_DAYS,
    STAGE_CODES,
    STAGES,
    STAYS,
)
from engine.errors import NurtureError

DAY = 86_400
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
MAX_CODES = 62  # bits of a signed 64-bit integer, with room to spare
CHUNK = 500  # leads per round of reads and writes
# The stay columns compared to find the stays that changed.
FACTS = ("stage", "entered_at", "later", "prev_entered_at", "stay", "bucket")


# The counters and their keys, in the order every writer updates them.
ROLLUPS = (
    (MOVE_DAYS, ("day", "from_stage", "to_stage", "rule")),
    (ENTRY_DAYS, ("stage", "day", "later", "reentry")),
    (LENGTH_DAYS, ("stage", "day", "bucket")),
    (COHORT_DAYS, ("day", "reached")),
)


class TooManyStages(NurtureError):
    """More distinct stage names than ``stage_stay.later`` has bits for."""


def record_moves(conn: Connection, rows: Sequence[Mapping[str, Any]], locked: bool = False) -> None:
    """Append ``rows`` to ``stage_history`` (each with lead_id, from_stage, to_stage, rule,
    event_id, at; a lead's first stage has from_stage None) and update the rollups, in the
    caller's transaction, which should be the one that writes the leads themselves. A lead's
    rows count in the order given among moves at the same time, after those already written;
    they may predate its other moves (a replay's). ``locked``: the transaction already holds
    the leads' row locks (ingest takes them ``FOR UPDATE`` before reading the leads)."""
    if not rows:
        return
    added: dict[int, list[Mapping[str, Any]]] = {}
    for row in rows:
        added.setdefault(int(row["lead_id"]), []).append(row)
    lead_ids = sorted(added)
    if conn.dialect.name == "postgresql" and not locked:
        # One writer per lead at a time, from before its rows get their ids (SQLite's BEGIN
        # IMMEDIATE already serialises writers).
        for start in range(0, len(lead_ids), CHUNK):
            ids = lead_ids[start : start + CHUNK]
            conn.execute(
                select(LEADS.c.id)
                .where(among(conn, LEADS.c.id, ids))
                .order_by(LEADS.c.id)
                .with_for_update()
            )
    append_rows(conn, STAGES, [dict(row) for row in rows])
    moves = Counter(
        (day(row["at"]), row["from_stage"], row["to_stage"], row["rule"])
        for row in rows
        if row["from_stage"] is not None
    )
    bits = codes(conn, {row["to_stage"] for row in rows})
    deltas = {table.name: Counter[tuple[Any, ...]]() for table, _ in ROLLUPS}
    deltas[MOVE_DAYS.name] = moves
    for start in range(0, len(lead_ids), CHUNK):
        chunk = {lead: added[lead] for lead in lead_ids[start : start + CHUNK]}
        for name, delta in _refresh(conn, chunk, bits).items():
            deltas[name].update(delta)
    # Once per table at the end, keys sorted: concurrent writers lock counters in one order.
    for table, keys in ROLLUPS:
        _add(conn, table, keys, deltas[table.name])


def bucket(stay: int) -> int:
    """A stay's length bucket: whole hours under two days, then whole days (bucket 48 = 2 days),
    so a percentile's exact value is read among few stays. Frozen in migration 0010."""
    return stay // 3600 if stay < 2 * DAY else 46 + stay // DAY


def seconds(at: datetime) -> int:
    """Whole epoch seconds, as the report's SQL truncates them."""
    return math.floor(_aware(at).timestamp())


def day(at: datetime) -> int:
    """The UTC day of ``at``, in days since 1970-01-01: the rollups' key."""
    return seconds(at) // DAY


def codes(conn: Connection, names: Iterable[str] = ()) -> dict[str, int]:
    """Every stage name's bit, ``names`` registered first if new."""
    known = {name: 1 << (id_ - 1) for id_, name in conn.execute(select(STAGE_CODES))}
    missing = sorted(set(names) - set(known))
    if not missing:
        return known
    conn.execute(
        upsert(conn, STAGE_CODES).on_conflict_do_nothing(index_elements=["name"]),
        [{"name": name} for name in missing],
    )
    known = {name: 1 << (id_ - 1) for id_, name in conn.execute(select(STAGE_CODES))}
    if max(known.values()).bit_length() > MAX_CODES:
        raise TooManyStages(f"more than {MAX_CODES} distinct stage names in stage_history")
    return known


def _aware(at: datetime) -> datetime:
    return at if at.tzinfo else at.replace(tzinfo=UTC)


def _refresh(
    conn: Connection, added: dict[int, list[Mapping[str, Any]]], bits: Mapping[str, int]
) -> dict[str, Counter[tuple[Any, ...]]]:
    """Recompute these leads' stays from those stored and the moves added, write the ones that
    changed; the rollups' difference (table → key → delta)."""
    query = select(STAYS).where(among(conn, STAYS.c.lead_id, added))
    stored = {(row.lead_id, row.seq): row for row in conn.execute(query).all()}
    moves: dict[int, list[tuple[datetime, int, int, str]]] = {lead: [] for lead in added}
    for (lead, seq), row in stored.items():
        moves[lead].append((_aware(row.entered_at), 0, seq, row.stage))
    for lead, rows in added.items():
        moves[lead] += [(_aware(row["at"]), 1, i, row["to_stage"]) for i, row in enumerate(rows)]
    fresh = {
        (stay["lead_id"], stay["seq"]): stay
        for lead, ordered in moves.items()
        for stay in _lead_stays(lead, [(at, stage) for at, *_, stage in sorted(ordered)], bits)
    }
    changed = {
        key
        for key, row in stored.items()
        if key not in fresh or _facts(row._mapping) != _facts(fresh[key])
    }
    old = [stored[key] for key in sorted(changed)]
    new = [stay for key, stay in fresh.items() if key not in stored or key in changed]
    if changed:
        execute_many(
            conn,
            delete(STAYS).where(
                STAYS.c.lead_id == bindparam("b_lead"), STAYS.c.seq == bindparam("b_seq")
            ),
            [{"b_lead": lead, "b_seq": seq} for lead, seq in sorted(changed)],
        )
    if new:
        append_rows(conn, STAYS, new)
    deltas = _tallies(new, bits)
    for name, removed in _tallies([row._mapping for row in old], bits).items():
        deltas[name].subtract(removed)
    return deltas


def stays(history: Iterable[Any], bits: Mapping[str, int]) -> Iterator[dict[str, Any]]:
    """The stays of leads' moves (rows with lead_id, to_stage, at; each lead's in order)."""
    for lead, moves in groupby(history, key=lambda move: move.lead_id):
        yield from _lead_stays(lead, [(move.at, move.to_stage) for move in moves], bits)


def _lead_stays(
    lead: int, moves: list[tuple[datetime, str]], bits: Mapping[str, int]
) -> list[dict[str, Any]]:
    """One lead's stays, from its moves (time, stage) in order."""
    later = [0] * len(moves)
    for i in range(len(moves) - 2, -1, -1):
        later[i] = later[i + 1] | bits[moves[i + 1][1]]
    times = [seconds(at) for at, _ in moves]
    entered: dict[str, datetime] = {}
    result = []
    for i, (at, stage) in enumerate(moves):
        stay = times[i + 1] - times[i] if i + 1 < len(moves) else None
        result.append(
            {
                "lead_id": lead,
                "seq": i,
                "stage": stage,
                "entered_at": _aware(at),
                "later": later[i],
                "prev_entered_at": entered.get(stage),
                "stay": stay,
                "bucket": None if stay is None else bucket(stay),
            }
        )
        entered[stage] = _aware(at)
    return result


def _facts(stay: Mapping[Any, Any]) -> tuple[Any, ...]:
    return tuple(
        _aware(stay[key]) if isinstance(stay[key], datetime) else stay[key] for key in FACTS
    )


def _tallies(
    rows: Iterable[Mapping[Any, Any]], bits: Mapping[str, int]
) -> dict[str, Counter[tuple[Any, ...]]]:
    """What these stays add to each rollup."""
    tallies: dict[str, Counter[tuple[Any, ...]]] = {
        ENTRY_DAYS.name: Counter(),
        LENGTH_DAYS.name: Counter(),
        COHORT_DAYS.name: Counter(),
    }
    for stay in rows:
        begun = day(stay["entered_at"])
        reentry = stay["prev_entered_at"] is not None
        tallies[ENTRY_DAYS.name][(stay["stage"], begun, stay["later"], reentry)] += 1
        if stay["stay"] is not None:
            tallies[LENGTH_DAYS.name][(stay["stage"], begun, stay["bucket"])] += 1
        if stay["seq"] == 0:
            tallies[COHORT_DAYS.name][(begun, bits[stay["stage"]] | stay["later"])] += 1
    return tallies


def _add(
    conn: Connection, table: Table, keys: tuple[str, ...], delta: Mapping[tuple[Any, ...], int]
) -> None:
    """Add ``delta`` to the counters ``n`` of ``table``, keyed by ``keys``: sorted, so that two
    writers take row locks in the same order."""
    rows = [dict(zip(keys, key, strict=True), n=n) for key, n in sorted(delta.items()) if n]
    upsert_rows(conn, table, rows, keys, add=["n"])
