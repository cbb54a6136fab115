"""The sqlite3 adapters :func:`engine.db.connect.plain_sqlite_parameters` registers (so that
pysqlite binds None and statuses without raising and catching an AttributeError each) store
what pysqlite stores without them: NULL for None, a status's text, on generated values."""

from __future__ import annotations

import sqlite3
from enum import StrEnum
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from engine import status
from engine.db.connect import plain_sqlite_parameters

STATUSES = [
    value
    for value in vars(status).values()
    if isinstance(value, type) and issubclass(value, StrEnum) and value is not StrEnum
]
MEMBERS = [member for enum in STATUSES for member in enum]


def stored(values: list[Any], adapted: bool = True) -> list[tuple[Any, Any]]:
    """Each value as stored by an executemany and read back, with its SQLite type; without
    our adapters (``adapted`` false) as pysqlite stores it on its own."""
    ours = {key: sqlite3.adapters[key] for key in list(sqlite3.adapters)
            if key[0] is type(None) or key[0] in STATUSES}  # fmt: skip
    if not adapted:
        for key in ours:
            del sqlite3.adapters[key]
    try:
        db = sqlite3.connect(":memory:")
        db.execute("CREATE TABLE t (i INTEGER, v)")
        db.executemany("INSERT INTO t VALUES (?, ?)", list(enumerate(values)))
        return db.execute("SELECT typeof(v), v FROM t ORDER BY i").fetchall()
    finally:
        sqlite3.adapters.update(ours)


def test_the_adapters_are_registered_on_import() -> None:
    plain_sqlite_parameters()  # already run when engine.db was imported: the same again
    registered = {kind for kind, _protocol in sqlite3.adapters}
    assert type(None) in registered
    assert set(STATUSES) <= registered and len(STATUSES) >= 3


@given(st.lists(st.one_of(st.none(), st.sampled_from(MEMBERS), st.text(), st.integers(-9, 9))))
def test_values_are_stored_as_pysqlite_stores_them_on_its_own(values: list[Any]) -> None:
    got = stored(values)
    assert got == stored(values, adapted=False)
    plain = [value.value if isinstance(value, StrEnum) else value for value in values]
    assert got == stored(plain, adapted=False)
    assert [kind for kind, _ in got] == [
        "null" if value is None else "text" if isinstance(value, str) else "integer"
        for value in values
    ]
