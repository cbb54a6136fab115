"""The alerts job: decide pending alerts (:mod:`.enqueue`), then deliver the due alert emails and
webhook POSTs with a dispatcher of their own. When idle it costs two index lookups on a read
connection (no write lock), so it runs every second; :class:`AlertRunner` runs it in a thread
of ``nurture serve`` / ``nurture worker``, at once when this process's ingest commits an alert.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Engine, select

from engine import metrics
from engine.alerts import wake
from engine.alerts.enqueue import KINDS, any_pending, enqueue
from engine.db import reading
from engine.db.schema import ALERTS, OUTBOX
from engine.errors import NurtureError, one_line
from engine.rules.spec import Ruleset
from engine.send.dispatch import WEBHOOK, Dispatcher, DispatchReport
from engine.send.email import Mailer
from engine.send.webhook import WebhookSender
from engine.settings import SALES, Settings
from engine.timeutil import utcnow

log = logging.getLogger(__name__)

INTERVAL = 1.0  # seconds between polls for alerts other processes committed


@dataclass
class AlertReport:
    created: int = 0
    suppressed: int = 0
    delivery: DispatchReport | None = None

    def as_json(self) -> dict[str, Any]:
        delivery = self.delivery or DispatchReport()
        return {"created": self.created, "suppressed": self.suppressed, **delivery.as_json()}


class AlertJob:
    def __init__(self, db: Engine, settings: Settings, mailer: Mailer) -> None:
        self.db = db
        self.settings = settings
        urls = {SALES: settings.sales_webhook_url} | {
            name: target.webhook_url for name, target in settings.alert_targets.items()
        }
        webhooks = {
            name: WebhookSender(url, settings.send_timeout) for name, url in urls.items() if url
        }
        self.dispatcher = Dispatcher(db, settings, mailer, kinds=KINDS, webhooks=webhooks)

    def run(self, now: datetime, ruleset: Callable[[], Ruleset]) -> AlertReport:
        """``ruleset``: the ruleset in force (its hot band, named scores and purchases), looked
        up only when there is something to decide."""
        report = AlertReport()
        with reading(self.db) as conn:
            pending = any_pending(conn)
            due = conn.execute(select(OUTBOX.c.id).where(self.dispatcher.due(now)).limit(1))
            deliverable = due.first() is not None
        if pending:
            decided = enqueue(self.db, self.settings, ruleset(), now)
            report.created, report.suppressed = decided.created, decided.suppressed
        if pending or deliverable:
            report.delivery = self.dispatcher.run(now)
            self._observe(report.delivery.sent_ids)
        return report

    def _observe(self, sent: list[int]) -> None:
        if not sent:
            return
        query = (
            select(OUTBOX.c.kind, ALERTS.c.received_at)
            .join(ALERTS, ALERTS.c.id == OUTBOX.c.alert_id)
            .where(OUTBOX.c.id.in_(sent))
        )
        with reading(self.db) as conn:
            rows = conn.execute(query).all()
        delivered = utcnow()  # the dispatcher's `now` may be a simulated time (tick --now)
        for kind, received_at in rows:
            channel = "webhook" if kind == WEBHOOK else "email"
            metrics.ALERTS_SENT.labels(channel).inc()
            metrics.ALERT_LATENCY.observe(max(0.0, (delivered - received_at).total_seconds()))


class AlertRunner:
    """Runs ``job`` in a daemon thread every :data:`INTERVAL` seconds, and at once on
    :func:`wake.notify`."""

    def __init__(self, job: Callable[[], object], interval: float = INTERVAL) -> None:
        self.job = job
        self.interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="nurture-alerts", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        wake.notify()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout=10)

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.job()
            except NurtureError as error:  # the operator can act on it: no traceback
                log.error("alerts job failed: %s; it runs again in %s s", one_line(error),
                          self.interval)  # fmt: skip
            except Exception:
                log.exception("alerts job failed; it runs again in %s s", self.interval)
            wake.wait(self.interval)
