"""``nurture demo``: the whole flow on sample data. Generates leads and events from a fixed seed,
ingests them through the same path as ``nurture ingest`` (enrolling leads in campaigns), then
runs the scheduler's jobs twice a simulated day for two weeks from the sample's end: decay, time
evaluations, due campaign steps rendered into the outbox, and dispatch through the mail backend.
Shows the funnel, the customers' health, the hot leads with their reasons, the emails and where
they went."""

from __future__ import annotations

import json
from collections import Counter
from datetime import timedelta

from rich.console import Console
from rich.table import Table
from sqlalchemy import Engine

from engine.campaigns.compile import CompiledCampaigns
from engine.demo.sample import DEFAULT_END, sample_records
from engine.ingest.batch import ingest
from engine.ingest.parse import parse_jsonl
from engine.reports import leads as report
from engine.rules.compile import CompiledRuleset
from engine.schedule.jobs import Jobs, TickReport
from engine.settings import Settings
from engine.timeutil import isoformat

DAYS = 14
# The simulated scheduler wakes at these hours (UTC) each day: office hours in Europe, then in
# the Americas, so steps with a send window in either go out.
WAKE_HOURS = (10, 18)


def run_demo(
    db: Engine,
    settings: Settings,
    compiled: CompiledRuleset,
    campaigns: CompiledCampaigns | None,
    console: Console,
    leads: int = 400,
    seed: int = 7,
) -> None:
    ruleset = compiled.ruleset
    console.print(
        f"[bold]nurture demo[/bold]: ruleset {ruleset.name} (v{ruleset.version}, "
        f"{len(ruleset.rules)} rules) on {leads} sample leads, seed {seed}"
    )
    lines = (json.dumps(record) for record in sample_records(leads=leads, seed=seed))
    result = ingest(db, compiled, parse_jsonl(lines), campaigns=campaigns)
    console.print(
        f"ingested: accepted {result.accepted}, duplicates {result.duplicates} "
        f"(a re-run finds them all stored), rejected {len(result.rejected)}"
    )
    jobs = Jobs(db, settings)
    start = DEFAULT_END.replace(hour=WAKE_HOURS[0])
    totals = TickReport(start)
    wakes = [
        timedelta(days=day, hours=h - WAKE_HOURS[0]) for day in range(DAYS) for h in WAKE_HOURS
    ]
    for wake in wakes:
        tick = jobs.tick(start + wake)
        totals.decayed += tick.decayed
        totals.time.evaluated += tick.time.evaluated
        totals.steps.add(tick.steps)
        for name, value in tick.dispatch.as_json().items():
            setattr(totals.dispatch, name, getattr(totals.dispatch, name) + value)
    steps, sent = totals.steps, totals.dispatch
    console.print(
        f"scheduler, daily at {' and '.join(f'{h}:00' for h in WAKE_HOURS)} UTC for {DAYS} days "
        f"from {isoformat(start)}: "
        f"decay {totals.decayed} ledger rows; {totals.time.evaluated} time evaluations "
        f"(leads whose time-dependent inputs changed); "
        f"{steps.queued} emails rendered, {steps.held} held, "
        f"{steps.skipped} steps skipped, {steps.exited} leads left a campaign; "
        f"sent {sent.sent} via {settings.mail_backend}, suppressed {sent.suppressed}"
    )
    for problem in steps.errors[:5]:
        console.print(f"  [red]held[/red] {problem}", highlight=False)

    summary = report.funnel(db, ruleset)
    table = Table("stage", "leads", title="funnel")
    for row in summary["stages"]:
        table.add_row(row["stage"], str(row["leads"]))
    console.print(table)
    bands = "  ".join(f"{band} {n}" for band, n in summary["temperatures"].items())
    console.print(f"temperature: {bands}")
    for name, counts in report.band_counts(db, ruleset).items():
        customers = report.list_leads(db, stage=ruleset.stages[-1], limit=1000)
        held = Counter(lead["bands"].get(name) for lead in customers)
        shown = "  ".join(f"{band} {held[band]}" for band in counts)
        console.print(f"{name} of the {len(customers)} {ruleset.stages[-1]}s: {shown}")

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
    emails = Table("campaign", "template", "sent", title="emails")
    for campaign, template, count in report.emails_by_template(db):
        emails.add_row(campaign, template, str(count))
    console.print(emails)
    if settings.mail_backend == "file":
        console.print(f"the emails are .eml files in {settings.outbox_dir.resolve()}/")
    example = hot[0]["email"] if hot else "EMAIL"
    console.print(
        "where to look next:\n"
        f"  nurture lead {example}        why this lead scores what it does (the ledger)\n"
        "  nurture leads --temperature hot --stage sql   who sales should call\n"
        + "".join(
            f"  nurture leads --band {s.name}={s.bands[0][0]}   the lowest {s.name}\n"
            for s in ruleset.scores
        )
        + f"  {ruleset.path}   the rules; after an edit: nurture rules check, rules test, "
        "rules plan (what it would change), rules apply"
    )
