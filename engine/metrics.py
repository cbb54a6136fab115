"""Prometheus metrics for every stage of the flow, defined in one place and incremented where the
work is done: ingest (events by outcome, rules fired), the step runner (emails queued or held),
the dispatcher (emails sent, retried, failed, suppressed) and the alerts (sent, latency); and
gauges of the outbox (backlog, held, failed, the oldest wait) that ``GET /metrics`` reads from
the database when it is scraped. It serves them in Prometheus' text format.

Counts are added only after the transaction that did the work commits, so a batch retried
after a lost race is counted once. Metrics live in the process's default registry: each
``nurture serve`` / ``nurture worker`` reports its own share and Prometheus sums them. The
outbox gauges are the database's figures, the same from every process: take their max, not
their sum."""

from __future__ import annotations

from collections import Counter as Tally
from collections.abc import Iterable, Mapping

from prometheus_client import Counter, Gauge, Histogram, disable_created_metrics

# `*_created` timestamps double the series and no dashboard reads them.
disable_created_metrics()  # type: ignore[no-untyped-call]

EVENTS = Counter(
    "nurture_events_ingested",
    "Records (events and lead profiles) offered to ingest, by outcome.",
    ["outcome"],
)
RULES_FIRED = Counter("nurture_rules_fired", "Rule firings committed, by rule.", ["rule"])
# Counted when it happens (a timed-out match is no match, whatever the transaction does).
REGEX_TIMEOUTS = Counter(
    "nurture_regex_timeouts",
    "`matches` tests given up after their time bound (each counts as no match).",
)
INGEST_BATCH = Histogram(
    "nurture_ingest_batch_seconds",
    "Time to score and commit one ingest batch (retries included).",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
EMAILS = Counter(
    "nurture_emails",
    "Campaign emails by outcome: queued or held by the step runner; sent, retried, failed or "
    "suppressed by the dispatcher.",
    ["outcome"],
)
ALERTS_SENT = Counter("nurture_alerts_sent", "Hot-lead alerts delivered, by channel.", ["channel"])
ALERT_LATENCY = Histogram(
    "nurture_alert_latency_seconds",
    "From the event that made a lead hot being received to its alert being delivered.",
    buckets=(0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 900),
)

OUTBOX = Gauge(
    "nurture_outbox_messages",
    "Outbox messages by status, when scraped: queued (the backlog), held (a template error "
    "waiting for a fix: nurture outbox --release) and failed (nurture outbox --retry).",
    ["status"],
)
OUTBOX_WAIT = Gauge(
    "nurture_outbox_oldest_queued_seconds",
    "How long the longest-waiting queued message has been due, when scraped (0: none is late).",
)

EMAIL_OUTCOMES = ("queued", "held", "sent", "retried", "failed", "suppressed")
# The dispatcher's settled outbox status → the outcome counted.
_SETTLED = {"sent": "sent", "queued": "retried", "failed": "failed", "suppressed": "suppressed"}

# Every outcome is exported from the start (at 0), so a rate over it is defined before the first
# one happens.
for _outcome in ("accepted", "duplicate", "rejected"):
    EVENTS.labels(_outcome)
for _outcome in EMAIL_OUTCOMES:
    EMAILS.labels(_outcome)
for _channel in ("email", "webhook"):
    ALERTS_SENT.labels(_channel)


def events_ingested(accepted: int, duplicates: int, rejected: int) -> None:
    # Twice a batch (its unparsed records, then the rest), mostly with noughts: a label's
    # lookup and lock are skipped where the count would not move.
    for outcome, count in (
        ("accepted", accepted),
        ("duplicate", duplicates),
        ("rejected", rejected),
    ):
        if count:
            EVENTS.labels(outcome).inc(count)


def rules_fired(rules: Iterable[str]) -> None:
    for rule, times in Tally(rules).items():
        RULES_FIRED.labels(rule).inc(times)


def emails_settled(statuses: Iterable[str]) -> None:
    """Outbox statuses the dispatcher committed (``queued`` again means a retry)."""
    for status, times in Tally(statuses).items():
        EMAILS.labels(_SETTLED.get(status, status)).inc(times)


def emails_prepared(queued: int, held: int) -> None:
    EMAILS.labels("queued").inc(queued)
    EMAILS.labels("held").inc(held)


def outbox_state(counts: Mapping[str, float], oldest_seconds: float) -> None:
    """The outbox gauges, from the database at scrape time (NaN when it could not be read)."""
    for status, count in counts.items():
        OUTBOX.labels(status).set(count)
    OUTBOX_WAIT.set(oldest_seconds)
