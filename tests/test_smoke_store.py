"""A first end-to-end check of the store on both databases (the fuller suites live beside it)."""

from __future__ import annotations

import json

import sqlalchemy as sa

from engine.ingest.parse import parse_jsonl
from engine.report import lead_detail
from engine.rules.compile import compile_ruleset
from engine.rules.load import parse_ruleset
from engine.store.scoring import ingest

RULESET = """
ruleset: smoke
components:
  fit: {min: 0, max: 60}
  engagement: {min: 0, max: 100}
rules:
  - name: senior-title
    when: {lead.job_title: {matches: '(?i)\\bvp\\b'}}
    then: {score: {fit: 15}}
    limit: once
  - name: pricing-page
    when: {event.type: page_view, event.properties.url: {contains: /pricing}}
    then: {score: {engagement: 30}}
  - name: any-page
    when: {event.type: page_view}
    then: {score: {engagement: 1}}
  - name: engaged
    when: {lead.stage: subscriber, lead.score: {gte: 40}}
    then: {stage: lead}
"""


def test_ingest_scores_and_is_idempotent(db: sa.Engine) -> None:
    compiled = compile_ruleset(parse_ruleset(RULESET, "smoke.yaml"))
    lines = [
        json.dumps({"email": "Ana@Acme.io", "job_title": "VP Marketing"}),
        json.dumps(
            {
                "id": "e1",
                "email": "ana@acme.io",
                "type": "page_view",
                "occurred_at": "2026-01-05T10:00:00Z",
                "properties": {"url": "/pricing"},
            }
        ),
        "{not json",
    ]
    first = ingest(db, compiled, parse_jsonl(lines))
    again = ingest(db, compiled, parse_jsonl(lines))
    assert (first.accepted, first.duplicates, len(first.rejected)) == (2, 0, 1)
    assert (again.accepted, again.duplicates) == (0, 2)
    lead = lead_detail(db, "ana@acme.io")
    assert lead is not None
    # Two rules matched the same event (pricing-page and any-page), and the stage rule saw the
    # score after both: 15 + 30 + 1 = 46 ≥ 40.
    assert lead["scores"] == {"fit": 15, "engagement": 31}
    assert lead["stage"] == "lead"
    assert sum(row["delta"] for row in lead["ledger"]) == lead["score"] == 46
    assert [(h["from"], h["to"]) for h in lead["stage_history"]] == [
        (None, "subscriber"),
        ("subscriber", "lead"),
    ]
