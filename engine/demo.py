"""``nurture demo``: the whole flow on sample data. Generates leads and events from a fixed seed,
ingests them through the same path as ``nurture ingest``, runs decay at the sample's end, and
shows the funnel, the hot leads with their reasons, and where to look next."""

from __future__ import annotations

import json

from rich.console import Console
from rich.table import Table
from sqlalchemy import Engine

from engine import report
from engine.decay import decay
from engine.ingest.parse import parse_jsonl
from engine.rules.compile import CompiledRuleset
from engine.sample import DEFAULT_END, sample_records
from engine.store.scoring import ingest
from engine.timeutil import isoformat


def run_demo(
    db: Engine, compiled: CompiledRuleset, console: Console, leads: int = 400, seed: int = 7
) -> None:
    ruleset = compiled.ruleset
    console.print(
        f"[bold]nurture demo[/bold]: ruleset {ruleset.name} (v{ruleset.version}, "
        f"{len(ruleset.rules)} rules) on {leads} sample leads, seed {seed}"
    )
    lines = (json.dumps(record) for record in sample_records(leads=leads, seed=seed))
    result = ingest(db, compiled, parse_jsonl(lines))
    console.print(
        f"ingested: accepted {result.accepted}, duplicates {result.duplicates} "
        f"(a re-run finds them all stored), rejected {len(result.rejected)}"
    )
    decayed = decay(db, ruleset, DEFAULT_END)
    console.print(f"decay at {isoformat(DEFAULT_END)}: {decayed} ledger rows")

    summary = report.funnel(db, ruleset)
    table = Table("stage", "leads", title="funnel")
    for row in summary["stages"]:
        table.add_row(row["stage"], str(row["leads"]))
    console.print(table)
    bands = "  ".join(f"{band} {n}" for band, n in summary["temperatures"].items())
    console.print(f"temperature: {bands}")

    # Exits (disqualified, unsubscribed) keep their score but are nobody's to call.
    hot = report.list_leads(
        db, temperature=ruleset.temperature[-1][0], limit=10, exclude_stages=ruleset.exits
    )
    reasons = report.reasons_for(db, [lead["email"] for lead in hot])
    console.print(f"[bold]hot leads[/bold] (top {len(hot)} by score, with the rules behind it):")
    for lead in hot:
        why = ", ".join(f"{r['rule']} +{r['points']}" for r in reasons[lead["email"]])
        company = lead["attributes"].get("company", "")
        console.print(
            f"  {lead['score']:>4}  {lead['stage']:<12} {lead['email']} ({company}): {why}",
            highlight=False,
        )
    example = hot[0]["email"] if hot else "EMAIL"
    console.print(
        "where to look next:\n"
        f"  nurture lead {example}        why this lead scores what it does (the ledger)\n"
        "  nurture leads --temperature hot --stage sql   who sales should call\n"
        f"  {ruleset.path}   the rules; nurture rules check / nurture rules test after an edit"
    )
