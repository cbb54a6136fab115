"""Group commit (engine.ingest.group): concurrent callers' records written in shared
transactions get the answers, and leave the leads, that one ingest per caller gives."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from engine import db as database
from engine.ingest.batch import REUSED_ID, IngestResult, ingest
from engine.ingest.group import GroupCommit
from engine.ingest.parse import EventRecord, Parsed
from engine.ingest.reader import Rejection
from tests.helpers import compiled, ruleset_text

RULES = compiled(ruleset_text("ingest-test"), "ingest-test.yaml")
PAGES = ("/pricing", "/blog", "/features")


def view(line: int, lead: int, key: str, page: str = "/pricing") -> EventRecord:
    return EventRecord(line, f"lead{lead}@acme.io", key, "page_view", None, {"url": page})


def jobs() -> list[list[Parsed]]:
    """Requests of one to four items, each about leads of its own, with every kind of answer:
    accepted, a duplicate within the request, a duplicate of an event stored before, an id
    reused with other content, and an item the parser refused."""
    found: list[list[Parsed]] = []
    for n in range(24):
        items: list[Parsed] = [view(0, n, f"e{n}-0", PAGES[n % 3])]
        if n % 2:
            items.append(view(1, n, f"e{n}-1", "/blog"))
        if n % 3 == 0:
            items.append(view(len(items), n, f"e{n}-0", PAGES[n % 3]))  # repeated in the request
        if n % 4 == 1:
            items.append(Rejection(len(items), "type: missing"))
        if n % 5 == 2:
            items.append(view(len(items), 100, "stored-before"))  # stored before: duplicate
            items.append(view(len(items), 100, "stored-before", "/blog"))  # reused id
        found.append(items)
    return found


def answers(result: IngestResult) -> dict[str, Any]:
    return {
        "accepted": result.accepted,
        "duplicates": sorted(result.duplicate_lines),
        "rejected": sorted((r.line, r.error) for r in result.rejected),
    }


def scores(db: sa.Engine) -> dict[str, int]:
    with db.connect() as conn:
        return {e: s for e, s in conn.execute(sa.text("SELECT email, score FROM lead"))}


def on_threads(writer: GroupCommit, work: list[list[Parsed]]) -> list[Any]:
    """Each job's answer (or error) from its own thread, all started together."""
    got: list[Any] = [None] * len(work)
    start = threading.Barrier(len(work))

    def call(i: int) -> None:
        start.wait()
        try:
            got[i] = answers(writer.ingest(RULES, work[i]))
        except Exception as error:
            got[i] = error

    threads = [threading.Thread(target=call, args=(i,)) for i in range(len(work))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    return got


def on_the_loop(writer: GroupCommit, work: list[list[Parsed]]) -> list[Any]:
    """Each job's answer (or error) from its own task on one event loop (as the API calls)."""

    async def call(items: list[Parsed]) -> Any:
        try:
            return answers(await writer.submit(RULES, items))
        except Exception as error:
            return error

    async def everyone() -> list[Any]:
        return list(await asyncio.gather(*(call(items) for items in work)))

    return asyncio.run(everyone())


@pytest.mark.parametrize("callers", [on_threads, on_the_loop])
def test_concurrent_callers_get_the_answers_one_ingest_each_gives(
    db: sa.Engine, tmp_path: Path, callers: Callable[[GroupCommit, list[list[Parsed]]], list[Any]]
) -> None:
    reference_url = f"sqlite:///{tmp_path / 'reference.db'}"
    database.upgrade(reference_url)
    reference = database.connect(reference_url)
    for target in (db, reference):
        ingest(target, RULES, [view(0, 100, "stored-before")])
    expected = [answers(ingest(reference, RULES, items)) for items in jobs()]

    writer = GroupCommit(db, limit=2000)
    bad: list[Parsed] = [view(0, 200, "fine"), view(1, 201, "broken", "/x")]
    # A value the database cannot store: this caller's transaction fails, nobody else's.
    bad[1] = EventRecord(1, "lead201@acme.io", "broken", "page_view", None, {"x": object()})
    work = [*jobs(), bad]
    got = callers(writer, work)

    assert got[:-1] == expected
    assert isinstance(got[-1], Exception), "the caller with the bad record hears of it"
    assert writer.groups < len(work), "concurrent callers should share transactions"
    # Nothing of the others was lost; nothing of the failed caller was half-written.
    assert scores(db) == scores(reference)
    assert any((line, REUSED_ID) in a["rejected"] for a in expected for line in range(6))


def test_one_writer_answers_a_lone_caller_at_once(db: sa.Engine) -> None:
    writer = GroupCommit(db, limit=10)
    first = writer.ingest(RULES, [view(0, 1, "a"), view(1, 1, "a")])
    assert (first.accepted, first.duplicate_lines) == (1, [1])
    again = writer.ingest(RULES, [view(0, 1, "a")])
    assert (again.accepted, again.duplicates) == (0, 1)
    assert writer.groups == 2


def test_groups_never_exceed_their_limit_and_keep_every_record(db: sa.Engine) -> None:
    writer = GroupCommit(db, limit=3)  # two callers' two records each would be four
    work = [[view(0, n, f"k{n}"), view(1, n, f"l{n}")] for n in range(12)]
    results: list[IngestResult] = []
    threads = [
        threading.Thread(target=lambda w=w: results.append(writer.ingest(RULES, w))) for w in work
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert sorted(r.accepted for r in results) == [2] * 12
    assert writer.groups == 12
    with db.connect() as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM event")).scalar() == 24


def test_a_caller_that_goes_away_leaves_the_writer_working(db: sa.Engine) -> None:
    """A request cancelled while it waits (its client hung up) is still written; the callers
    after it are answered as usual."""
    writer = GroupCommit(db, limit=10)

    async def scenario() -> IngestResult:
        gone = asyncio.ensure_future(writer.submit(RULES, [view(0, 1, "gone")]))
        await asyncio.sleep(0)  # queued
        gone.cancel()
        return await writer.submit(RULES, [view(0, 2, "after")])

    assert asyncio.run(scenario()).accepted == 1
    assert writer.ingest(RULES, [view(0, 1, "gone")]).duplicates == 1


def test_a_group_wakes_its_loop_once_and_its_threads_each(db: sa.Engine) -> None:
    """Callers on the event loop and on threads share groups; every one is answered, and the
    loop is woken from the writer once per group, not once per caller."""
    writer = GroupCommit(db, limit=2000)
    wakes: list[int] = []

    async def scenario() -> list[int]:
        loop = asyncio.get_running_loop()
        plain = loop.call_soon_threadsafe

        def counted(*args: Any, **kwargs: Any) -> Any:
            wakes.append(1)
            return plain(*args, **kwargs)

        loop.call_soon_threadsafe = counted  # type: ignore[method-assign,assignment]
        threaded = asyncio.gather(
            *(asyncio.to_thread(writer.ingest, RULES, [view(0, 50 + n, f"t{n}")]) for n in range(4))
        )
        on_loop = asyncio.gather(*(writer.submit(RULES, [view(0, n, f"k{n}")]) for n in range(16)))
        results = [*await on_loop, *await threaded]
        del loop.call_soon_threadsafe  # uncounted: asyncio.run's own wake-ups as it ends
        return [r.accepted for r in results]

    assert asyncio.run(scenario()) == [1] * 20
    assert writer.records == 20
    # asyncio.to_thread wakes the loop once per thread as it finishes; the writer once a group.
    assert len(wakes) <= writer.groups + 4
    assert writer.groups < 16, "the loop's callers should share groups"
