"""The states stored in status columns, one enumeration per table. They are ``StrEnum``s: the
database keeps the plain text, and comparisons with text still hold."""

from __future__ import annotations

from enum import StrEnum


class ActionStatus(StrEnum):
    """A rule's pending action (``lead_action``): an alert waits for the alerts job. ``past``:
    an alert for the past (an import, a backfill, a rescore), kept for the record and never
    sent."""

    PENDING = "pending"
    APPLIED = "applied"
    SUPPRESSED = "suppressed"
    PAST = "past"


class EnrollmentStatus(StrEnum):
    ACTIVE = "active"
    EXITED = "exited"
    COMPLETED = "completed"


class OutboxStatus(StrEnum):
    """queued → sending (claimed under a lease) → sent | failed; or held (render error) /
    suppressed (opted out, bounced, spam report) instead."""

    QUEUED = "queued"
    SENDING = "sending"
    SENT = "sent"
    FAILED = "failed"
    HELD = "held"
    SUPPRESSED = "suppressed"
