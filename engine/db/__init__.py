"""The bottom layer: tables (:mod:`.schema`), connections and migrations (:mod:`.connect`), bulk
writes (:mod:`.bulk`). Imports nothing of ``engine`` above it."""

from engine.db.bulk import (
    among,
    among_param,
    append_rows,
    execute_many,
    fetch_rows,
    update_rows,
    upsert,
    upsert_rows,
)
from engine.db.connect import (
    DatabaseUnavailable,
    alembic_config,
    connect,
    failure,
    normalise_url,
    open_database,
    reading,
    scratch_schema,
    upgrade,
    writer_lock,
)

__all__ = [
    "DatabaseUnavailable",
    "alembic_config",
    "among",
    "among_param",
    "append_rows",
    "connect",
    "execute_many",
    "failure",
    "fetch_rows",
    "normalise_url",
    "open_database",
    "reading",
    "scratch_schema",
    "update_rows",
    "upgrade",
    "upsert",
    "upsert_rows",
    "writer_lock",
]
