"""The bottom layer: tables (:mod:`.schema`), connections and migrations (:mod:`.connect`), bulk
writes (:mod:`.bulk`). Imports nothing of ``engine`` above it."""

from engine.db.bulk import append_rows, upsert
from engine.db.connect import (
    alembic_config,
    connect,
    normalise_url,
    reading,
    scratch_schema,
    upgrade,
)

__all__ = [
    "alembic_config",
    "append_rows",
    "connect",
    "normalise_url",
    "reading",
    "scratch_schema",
    "upgrade",
    "upsert",
]
