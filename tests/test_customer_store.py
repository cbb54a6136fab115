"""Customer scoring online, on SQLite and PostgreSQL: named scores stored with their bands and
shown in lead JSON and lists; `nurture tick` evaluating exactly the leads whose time-dependent
inputs changed (a `days_since` threshold, decay of a named score) with a `time` event; the
win-back campaign following a customer who falls to at_risk with no new event; the account
manager's alert naming the rules and the customer's recent purchases."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from email import policy
from email.parser import BytesParser
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient

from engine import db as database
from engine.api.app import create_app
from engine.db.schema import ENROLLMENTS, EVENTS, LEADS, LEDGER, NAMED_SCORES
from engine.reports.leads import band_counts, lead_detail, list_leads
from engine.rules.load import parse_ruleset
from engine.schedule.jobs import Jobs
from engine.settings import AlertTarget, Settings, get_settings
from tests.helpers import ROOT, nurture
from tests.mail_support import Receiver
from tests.store_support import ledger_sums, tables

RULESET = """\
ruleset: shop
components:
  fit:     {min: 0, max: 50}
  value:   {min: 0, max: 50}
  loyalty: {min: 0, max: 50, decay: {points: 5, every: 30d}}
temperature: {cold: 0, warm: 20, hot: 40}
stages: [subscriber, lead, customer]
scores:
  health: {components: [value, loyalty], bands: {at_risk: 0, steady: 30, loyal: 60}}
rules:
  - name: manager
    when: {lead.job_title: {contains: manager}}
    then: {score: {fit: 20}}
    limit: once
  - name: purchase
    when: {event.type: purchase}
    then: {score: {loyalty: 30}, stage: customer}
  - name: big-spender
    when: {event.type: purchase, sum: {type: purchase, property: amount, within: 365d, gte: 500}}
    then: {score: {value: 10}}
    limit: {times: 1, per: 365d}
  - name: lapsing
    when: {lead.stage: customer, days_since: {type: purchase, gte: 90}}
    then: {score: {loyalty: -20}, alert: account-manager}
    limit: {times: 1, per: 90d}
"""
WIN_BACK = """\
campaign: win-back
audience: {lead.stage: customer, lead.bands.health: at_risk}
exit_when: {lead.bands.health: {ne: at_risk}}
from: {email: success@shop.example, name: Shop}
steps:
  - {template: customer/we-miss-you, wait: 0d}
  - {template: customer/win-back-offer, wait: 7d}
"""
T0 = datetime(2026, 1, 5, 10, 0, tzinfo=UTC)
DAY = timedelta(days=1)


@pytest.fixture
def home(tmp_path: Path, db_url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    (tmp_path / "rulesets").mkdir()
    (tmp_path / "rulesets" / "shop.yaml").write_text(RULESET)
    (tmp_path / "campaigns").mkdir()
    (tmp_path / "campaigns" / "win-back.yaml").write_text(WIN_BACK)
    shutil.copytree(ROOT / "templates", tmp_path / "templates")
    monkeypatch.setenv("NURTURE_HOME", str(tmp_path))
    monkeypatch.setenv("NURTURE_DATABASE_URL", db_url)
    monkeypatch.delenv("NURTURE_RULESET", raising=False)
    get_settings.cache_clear()
    yield tmp_path
    get_settings.cache_clear()


def ingest(*records: dict[str, Any]) -> None:
    result = nurture("ingest", "-", "--json", input="\n".join(json.dumps(r) for r in records))
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["rejected"] == []


def purchase(email: str, at: datetime, amount: float) -> dict[str, Any]:
    return {
        "id": f"{email}:{at.isoformat()}",
        "email": email,
        "type": "purchase",
        "occurred_at": at.isoformat(),
        "properties": {"amount": amount, "items": 2},
    }


def lead(db: sa.Engine, email: str) -> dict[str, Any]:
    found = lead_detail(db, email, parse_ruleset(RULESET).claimed)
    assert found is not None
    return found


def test_a_customer_who_stops_buying_is_won_back_without_a_new_event(
    home: Path, db_url: str, receiver: Receiver
) -> None:
    _customer_flow(home, db_url, receiver)


def _customer_flow(home: Path, db_url: str, receiver: Receiver) -> None:
    db = database.connect(db_url)
    claimed = parse_ruleset(RULESET).claimed
    ingest(
        {"email": "ann@shop.example", "job_title": "Office Manager", "occurred_at": T0.isoformat()},
        purchase("ann@shop.example", T0, 300),
        purchase("ann@shop.example", T0 + 10 * DAY, 250.5),
        purchase("bob@shop.example", T0 + 60 * DAY, 40),
        {"email": "cy@shop.example", "job_title": "Manager"},
    )
    ann = lead(db, "ann@shop.example")
    # The lead score leaves the health components out; health has its own total and band.
    assert (ann["score"], ann["temperature"], ann["stage"]) == (20, "warm", "customer")
    assert ann["scores"] == {"fit": 20, "value": 10, "loyalty": 50}
    assert (ann["totals"], ann["bands"]) == ({"health": 60}, {"health": "loyal"})
    assert [r["score_after"] for r in ann["ledger"] if r["component"] != "fit"] == [30, 50, 60]
    assert ann["reasons"] == [{"rule": "manager", "points": 20, "times": 1}]
    assert lead(db, "cy@shop.example")["bands"] == {"health": "at_risk"}
    loyal = json.loads(nurture("leads", "--band", "health=loyal", "--json").stdout)
    assert [row["email"] for row in loyal] == ["ann@shop.example"]
    bad = nurture("leads", "--band", "health")
    assert bad.exit_code == 1 and "write SCORE=BAND, e.g. health=at_risk" in bad.output
    assert band_counts(db, parse_ruleset(RULESET)) == {
        "health": {"at_risk": 1, "steady": 1, "loyal": 1}
    }

    settings = Settings(
        home=home,
        database_url=db_url,
        outbox_dir=home / "outbox",
        public_url="https://nurture.example",
        alert_targets={
            "account-manager": AlertTarget(roster=["am@shop.example"], webhook_url=receiver.url)
        },
    )
    jobs = Jobs(db, settings)
    # 40 days on: decay took 5 of ann's loyalty (a named score: her lead score stays 20), and
    # that decay made her due; bob's first 30 days have not passed.
    first = jobs.tick(T0 + 40 * DAY)
    assert (first.decayed, first.time.evaluated) == (1, 1)
    ann = lead(db, "ann@shop.example")
    assert (ann["score"], ann["totals"], ann["scores"]["loyalty"]) == (20, {"health": 55}, 45)
    decayed = [r for r in ann["ledger"] if r["rule"] == "decay"]
    assert [(r["component"], r["delta"], r["score_after"]) for r in decayed] == [
        ("loyalty", -5, 55)
    ]

    # 100 days after ann's last purchase: lapsing fires on a `time` event, health falls to
    # at_risk, and she enters the win-back campaign; bob's loyalty decayed him to at_risk too;
    # cy (no purchase) is never evaluated.
    moment = T0 + 110 * DAY
    report = jobs.tick(moment)
    assert (report.decayed, report.time.evaluated) == (2, 2)  # ann; bob, whose loyalty decayed
    ann = lead(db, "ann@shop.example")
    time_event = f"time:{_id(db, 'ann@shop.example')}:{moment.isoformat().replace('+00:00', 'Z')}"
    lapse = [r for r in ann["ledger"] if r["rule"] == "lapsing"]
    assert [(r["delta"], r["event_id"]) for r in lapse] == [(-20, time_event)]
    assert ann["bands"] == {"health": "at_risk"}
    with db.connect() as conn:
        enrolled = conn.execute(
            sa.select(ENROLLMENTS.c.campaign, ENROLLMENTS.c.status, ENROLLMENTS.c.step).where(
                ENROLLMENTS.c.lead_id == _id(db, "ann@shop.example")
            )
        ).all()
        evaluated = conn.execute(
            sa.select(LEADS.c.email)
            .join(EVENTS, EVENTS.c.lead_id == LEADS.c.id)
            .where(EVENTS.c.type == "time")
        ).scalars()
        assert sorted(evaluated) == ["ann@shop.example"] * 2 + ["bob@shop.example"]
    assert enrolled == [("win-back", "active", 1)]  # the first email queued, the next due
    assert report.steps.queued == 2  # the check-in emails, at once

    # The account manager hears of it: who, health, the rules behind it, the recent purchases.
    (alert,) = ann["alerts"]
    assert (alert["rule"], alert["target"], alert["status"]) == (
        "lapsing",
        "account-manager",
        "sent",
    )
    assert alert["email"]["to"] == "am@shop.example"
    (mail,) = [
        BytesParser(policy=policy.default).parsebytes(path.read_bytes())
        for path in (home / "outbox").glob("*.eml")
        if "Account manager alert" in path.read_text()
    ]
    plain = mail.get_body(preferencelist=("plain",))
    assert plain is not None
    body = plain.get_content()
    subject = " ".join(mail["Subject"].split())  # a long subject is folded
    assert subject.startswith("Account manager alert: ann@shop.example, health 25 (at_risk)")
    assert "lapsing -20 loyalty" in body
    assert "purchase: amount 250.5, items 2" in body and "purchase: amount 300, items 2" in body
    (post,) = receiver.posts
    assert post["blocks"][0]["text"]["text"] == "Account manager alert"
    assert "Recent purchases" in json.dumps(post)
    owner = lead(db, "ann@shop.example")["attributes"]["account_manager"]
    assert owner == "am@shop.example"  # the roster's rep is written back to her

    # A tick at the same time again does nothing more; the ledger still sums to each score.
    state = tables(db)
    again = jobs.tick(moment)
    assert (again.decayed, again.time.evaluated, again.time.skipped) == (0, 0, 0)
    assert tables(db) == state
    scores, ledger, components = ledger_sums(db, claimed)
    assert scores == ledger == components
    with db.connect() as conn:
        stored = dict(
            conn.execute(
                sa.select(LEADS.c.email, NAMED_SCORES.c.total).join(
                    NAMED_SCORES, NAMED_SCORES.c.lead_id == LEADS.c.id
                )
            ).all()
        )
        assert stored["ann@shop.example"] == 25
        assert conn.execute(sa.select(sa.func.count()).select_from(LEDGER)).scalar()

    # She buys again: back above at_risk, she leaves the win-back campaign on that event.
    ingest(purchase("ann@shop.example", moment + DAY, 80))
    ann = lead(db, "ann@shop.example")
    assert ann["bands"] == {"health": "steady"}
    with db.connect() as conn:
        status = conn.execute(
            sa.select(ENROLLMENTS.c.status, ENROLLMENTS.c.reason).where(
                ENROLLMENTS.c.lead_id == _id(db, "ann@shop.example")
            )
        ).one()
    assert tuple(status) == ("exited", "exit_when")
    at_risk = list_leads(db, band=("health", "at_risk"))
    assert [row["email"] for row in at_risk] == ["cy@shop.example", "bob@shop.example"]


def _id(db: sa.Engine, email: str) -> int:
    with db.connect() as conn:
        return int(conn.execute(sa.select(LEADS.c.id).where(LEADS.c.email == email)).scalar_one())


def test_events_of_type_time_are_the_schedulers(home: Path) -> None:
    result = nurture(
        "ingest",
        "-",
        "--json",
        input=json.dumps({"email": "a@shop.example", "type": "time"}),
    )
    assert result.exit_code == 1
    (rejected,) = json.loads(result.stdout)["rejected"]
    assert rejected == {"line": 1, "error": "type: 'time' is the scheduler's time evaluation, "
                        "not an event"}  # fmt: skip


def test_the_api_lists_a_band_and_shows_named_scores(home: Path, db_url: str) -> None:
    ingest(purchase("ann@shop.example", T0, 600), {"email": "cy@shop.example"})
    settings = Settings(home=home, database_url=db_url, api_token="t" * 40)
    with TestClient(create_app(settings), headers={"Authorization": "Bearer " + "t" * 40}) as api:
        listed = api.get("/api/leads", params={"band": "health=steady"})
        assert listed.status_code == 200
        assert [(row["email"], row["totals"], row["bands"]) for row in listed.json()] == [
            ("ann@shop.example", {"health": 40}, {"health": "steady"})
        ]
        bad = api.get("/api/leads", params={"band": "health"})
        assert bad.status_code == 422 and "write SCORE=BAND" in bad.text
        ann = api.get("/api/leads/ann@shop.example").json()
        assert (ann["score"], ann["totals"], ann["bands"]) == (
            0,
            {"health": 40},
            {"health": "steady"},
        )
        assert ann["reasons"] == []  # the lead score's: the purchase's points are health's
