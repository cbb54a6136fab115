"""What a replay changes, summed over leads: the report of ``nurture rules plan`` (and of
``apply``, which prints what it changed). Mergeable, so that worker processes each sum their
slice of leads and the parent adds them up; memory bounded (counters, and the few leads with the
biggest change)."""

from __future__ import annotations

import heapq
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from engine.ingest.rescore import Replayed, top_band
from engine.rules.spec import Ruleset
from engine.timeutil import isoformat

BIGGEST = 10  # leads shown with their ledger before/after
EXAMPLES = 20  # leads named per list (newly hot, left alone)
# Score delta buckets of the distribution: (label, lowest delta included).
BUCKETS = (
    ("≤ -50", None),
    ("-49..-20", -49),
    ("-19..-1", -19),
    ("+1..+19", 1),
    ("+20..+49", 20),
    ("≥ +50", 50),
)


def bucket(delta: int) -> str:
    label = BUCKETS[0][0]
    for name, lowest in BUCKETS[1:]:
        if lowest is not None and delta >= lowest:
            label = name
    return label


@dataclass
class Summary:
    leads: int = 0
    events: int = 0
    changed: int = 0  # leads whose lead score changes
    deltas: Counter[str] = field(default_factory=Counter)
    temperature: Counter[tuple[str, str]] = field(default_factory=Counter)
    bands: Counter[tuple[str, str, str]] = field(default_factory=Counter)  # score, before, after
    stages: Counter[tuple[str, str]] = field(default_factory=Counter)
    held: int = 0  # leads a rescore leaves in their stage (backward, or out of an exit)
    held_examples: list[dict[str, str]] = field(default_factory=list)
    newly_hot: int = 0
    newly_hot_examples: list[str] = field(default_factory=list)
    newly_alerting: int = 0
    enroll: Counter[str] = field(default_factory=Counter)
    exit: Counter[str] = field(default_factory=Counter)
    # (abs delta, lead id, entry): the leads with the biggest change.
    biggest: list[tuple[int, int, dict[str, Any]]] = field(default_factory=list)

    def add(self, ruleset: Ruleset, found: list[Replayed], alerting: set[int]) -> None:
        """Sum a batch of replays. ``alerting``: the leads that already had an alert."""
        hot = top_band(ruleset)
        for item in found:
            stored = item.stored
            self.leads += 1
            self.events += item.events
            delta = item.score - stored.score
            if delta:
                self.changed += 1
                self.deltas[bucket(delta)] += 1
            after = ruleset.band(item.score)
            self.temperature[(stored.temperature, after)] += 1
            if ruleset.scores:
                totals = ruleset.totals(item.lead.state.scores)
                for name, band in ruleset.named_bands(totals).items():
                    self.bands[(name, stored.bands.get(name, "—"), band)] += 1
            if item.moved is not None:
                self.stages[(stored.stage, item.stage)] += 1
            if item.held is not None:
                self.held += 1
                if len(self.held_examples) < EXAMPLES:
                    self.held_examples.append(
                        {"email": stored.email, "stage": stored.stage, "replayed": item.held}
                    )
            if hot is not None and stored.temperature != hot and after == hot:
                self.newly_hot += 1
                if len(self.newly_hot_examples) < EXAMPLES:
                    self.newly_hot_examples.append(stored.email)
            if stored.id not in alerting and any(
                row["kind"] == "alert" for row in item.rows.actions
            ):
                self.newly_alerting += 1
            self.enroll.update(item.enroll)
            self.exit.update(item.exit)
            if delta:
                entry = {
                    "email": stored.email,
                    "before": stored.score,
                    "after": item.score,
                    "delta": delta,
                    "ledger_after": [_ledger_row(row) for row in item.rows.ledger],
                }
                heapq.heappush(self.biggest, (abs(delta), -stored.id, entry))
                if len(self.biggest) > BIGGEST:
                    heapq.heappop(self.biggest)

    def merge(self, other: Summary) -> None:
        for name in ("leads", "events", "changed", "held", "newly_hot", "newly_alerting"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        for name in ("deltas", "temperature", "bands", "stages", "enroll", "exit"):
            getattr(self, name).update(getattr(other, name))
        self.held_examples = (self.held_examples + other.held_examples)[:EXAMPLES]
        self.newly_hot_examples = (self.newly_hot_examples + other.newly_hot_examples)[:EXAMPLES]
        self.biggest = heapq.nlargest(BIGGEST, self.biggest + other.biggest)
        heapq.heapify(self.biggest)

    def top_changes(self) -> list[dict[str, Any]]:
        return [entry for _, _, entry in sorted(self.biggest, reverse=True)]

    def as_json(self) -> dict[str, Any]:
        return {
            "leads": self.leads,
            "events": self.events,
            "score_changed": self.changed,
            "deltas": {label: self.deltas[label] for label, _ in BUCKETS if self.deltas[label]},
            "temperature": _matrix(self.temperature),
            "bands": {
                name: _matrix(
                    Counter({(b, a): n for (s, b, a), n in self.bands.items() if s == name})
                )
                for name in sorted({key[0] for key in self.bands})
            },
            "stage_moves": [
                {"from": before, "to": after, "leads": n}
                for (before, after), n in sorted(self.stages.items())
            ],
            "left_alone": {"leads": self.held, "examples": self.held_examples},
            "newly_hot": {"leads": self.newly_hot, "examples": self.newly_hot_examples},
            "newly_alerting": self.newly_alerting,
            "enrollments": {"start": dict(self.enroll), "end": dict(self.exit)},
            "biggest": self.top_changes(),
        }


def _matrix(counts: Counter[tuple[str, str]]) -> dict[str, dict[str, int]]:
    """before → after → leads."""
    found: dict[str, dict[str, int]] = {}
    for (before, after), n in sorted(counts.items()):
        found.setdefault(before, {})[after] = n
    return found


def _ledger_row(row: dict[str, Any]) -> dict[str, Any]:
    return {
        "rule": row["rule"],
        "component": row["component"],
        "delta": row["delta"],
        "score_after": row["score_after"],
        "event_id": row["event_id"],
        "at": isoformat(row["at"]),
    }
