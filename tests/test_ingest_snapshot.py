"""SQLite ingest reads and evaluates a batch in a snapshot, outside the write lock, and writes it
only if its leads did not change meanwhile. A lead another writer changes, or creates, between
the batch's read and its write is scored again on top of what that writer stored: the end state
is the one of the two runs one after the other, nothing lost or counted twice."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from engine import db as database
from engine.db.schema import EVENTS
from engine.ingest import batch as ingest_batch
from engine.ingest.batch import ingest
from engine.ingest.parse import Record, parse_jsonl
from tests.helpers import compiled, ruleset_text
from tests.store_support import another_database, lead_state

RULES = compiled(ruleset_text("ingest-test"), "ingest-test.yaml")


def ev(email: str, kind: str, at: str, **properties: Any) -> dict[str, Any]:
    return {"email": email, "type": kind, "occurred_at": at, "properties": properties}


FIRST = [{"email": "ana@acme.io", "job_title": "VP Sales", "occurred_at": "2026-03-01T00:00:00Z"}]
BATCH = [
    *[ev("ana@acme.io", "page_view", f"2026-03-03T0{n}:00:00Z", url="/docs") for n in range(3)],
    ev("ana@acme.io", "demo_request", "2026-03-03T05:00:00Z"),
    ev("bob@beta.io", "page_view", "2026-03-03T06:00:00Z", url="/pricing"),
    {"email": "cy@gamma.io", "company_size": 500, "occurred_at": "2026-03-03T07:00:00Z"},
]
# What another writer stores between the batch's read and its write: a stored lead changed, a
# lead the batch would create created, or both.
OTHERS = {
    "stored lead changed": [ev("ana@acme.io", "page_view", "2026-03-02T00:00:00Z", url="/pricing")],
    "new lead created": [ev("bob@beta.io", "demo_request", "2026-03-02T00:00:00Z")],
    "both": [
        ev("ana@acme.io", "page_view", "2026-03-02T00:00:00Z", url="/pricing"),
        ev("bob@beta.io", "demo_request", "2026-03-02T00:00:00Z"),
    ],
}


def run(db: sa.Engine, records: list[dict[str, Any]]) -> ingest_batch.IngestResult:
    return ingest(db, RULES, parse_jsonl([json.dumps(r) for r in records]))


@pytest.mark.parametrize("others", list(OTHERS))
def test_a_lead_changed_between_the_read_and_the_write_is_scored_again(
    sqlite_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, others: str
) -> None:
    database.upgrade(sqlite_url)
    db = database.connect(sqlite_url)
    run(db, FIRST)
    prepared = ingest_batch._Batch.prepare
    reads: list[bool] = []

    def prepare_then_interfere(batch: ingest_batch._Batch, records: list[Record]) -> bool:
        ready = prepared(batch, records)
        reads.append(ready)
        if len(reads) == 1:
            run(db, OTHERS[others])  # another writer, after this batch's read
        return ready

    monkeypatch.setattr(ingest_batch._Batch, "prepare", prepare_then_interfere)
    result = run(db, BATCH)
    monkeypatch.undo()
    # The batch's read, the other writer's, and the batch read again after its write refused.
    assert reads == [True, True, True]
    assert (result.accepted, result.duplicates, result.rejected) == (len(BATCH), 0, [])
    with another_database(sqlite_url, tmp_path) as other:
        one_after_the_other = database.connect(other)
        for records in (FIRST, OTHERS[others], BATCH):
            run(one_after_the_other, records)
        assert lead_state(db) == lead_state(one_after_the_other)
    with db.connect() as conn:
        stored = conn.execute(sa.select(sa.func.count()).select_from(EVENTS)).scalar()
    assert stored == len(FIRST) + len(OTHERS[others]) + len(BATCH)


def test_a_batch_that_meets_no_change_is_written_as_read(sqlite_url: str) -> None:
    database.upgrade(sqlite_url)
    db = database.connect(sqlite_url)
    run(db, FIRST)
    result = run(db, BATCH)
    assert result.accepted == len(BATCH)
    with db.connect() as conn:
        leads = conn.execute(sa.text("SELECT email, version FROM lead ORDER BY email")).all()
    assert leads == [("ana@acme.io", 2), ("bob@beta.io", 1), ("cy@gamma.io", 1)]
    # Read again: all duplicates, found in the snapshot without taking the write lock.
    again = run(db, BATCH)
    assert (again.accepted, again.duplicates) == (0, len(BATCH))


def test_the_write_takes_the_write_lock_on_the_connection_that_read(sqlite_url: str) -> None:
    """The batch reads in a deferred transaction (no write lock) and writes, on the same
    connection, in one that takes the write lock first (BEGIN IMMEDIATE): a write begun as a
    deferred read (the connection left read-only) would let another writer in between its
    reads and its first write."""
    database.upgrade(sqlite_url)
    db = database.connect(sqlite_url)
    run(db, FIRST)
    seen: list[tuple[int, str]] = []

    def statement(conn: sa.Connection, _cursor: Any, text: str, *_args: Any) -> None:
        seen.append((id(conn.connection.dbapi_connection), " ".join(text.split())))

    sa.event.listen(db, "before_cursor_execute", statement)
    try:
        run(db, BATCH)
    finally:
        sa.event.remove(db, "before_cursor_execute", statement)
    begins = [text for _, text in seen if text.startswith("BEGIN")]
    assert begins == ["BEGIN", "BEGIN IMMEDIATE"], seen
    writes = [n for n, (_, text) in enumerate(seen) if text.startswith(("INSERT", "UPDATE"))]
    immediate = next(n for n, (_, text) in enumerate(seen) if text == "BEGIN IMMEDIATE")
    assert writes and min(writes) > immediate
