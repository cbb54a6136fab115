"""In-process wake-up: ingest calls :func:`notify` after committing a batch that fired an alert,
and the alerts job's thread, waiting in :func:`wait`, runs at once instead of at its next
second. Other processes' alerts are found by the job's once-a-second poll."""

from __future__ import annotations

import threading

_woken = threading.Event()


def notify() -> None:
    _woken.set()


def wait(timeout: float) -> bool:
    """Block until :func:`notify` or ``timeout`` seconds; True when notified. A notification
    that came while the job was running is not lost: the next wait returns at once."""
    woken = _woken.wait(timeout)
    _woken.clear()
    return woken
