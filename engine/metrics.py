"""Prometheus metrics (served at ``/metrics``). Names are part of the public contract."""

from __future__ import annotations

from prometheus_client import Counter, Histogram

ALERTS_SENT = Counter(
    "nurture_alerts_sent_total", "Sales alerts delivered, by channel (email, webhook).", ["channel"]
)
ALERT_LATENCY = Histogram(
    "nurture_alert_latency_seconds",
    "From the receipt of the event that made a lead hot to the alert's delivery, by channel.",
    ["channel"],
    buckets=(0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 3600.0),
)
