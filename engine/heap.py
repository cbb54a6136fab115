"""The garbage collector of a long-lived process (``nurture worker`` and ``serve``, the step
processes, ``ingest`` and ``rules plan/apply`` and their workers), set once what it keeps for its
life is loaded.

What is loaded by then (modules, compiled rulesets and templates, settings) is frozen out of
every collection: a full collection walked all of it while holding the GIL, 30-60 ms in the
dispatcher's process, and every sender waiting on an answer meanwhile read it that much later.
Young collections wait for more allocations than the default 700: a batch of rows, contexts
and drafts allocates many short-lived containers, and the collector ran every few emails, ~10 %
of a step process's CPU."""

from __future__ import annotations

import gc

YOUNG_COLLECTION = 10_000  # allocations between young collections (Python's default: 700)


def settle() -> None:
    """Freeze what this process holds now and space out its young collections."""
    gc.freeze()
    gc.set_threshold(YOUNG_COLLECTION, 10, 10)
