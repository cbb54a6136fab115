"""Campaigns as a marketer writes them: loading with file:line errors, who enters and leaves a
campaign as each event is scored, and the scheduling decisions (send window, frequency cap)."""

from __future__ import annotations

import itertools
import json
from datetime import UTC, datetime, time, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
import sqlalchemy as sa

from engine.campaigns.compile import CompiledCampaigns
from engine.campaigns.load import parse_campaign
from engine.campaigns.spec import FrequencyCap, SendWindow
from engine.db.schema import ENROLLMENTS
from engine.errors import ProblemsError
from engine.home import load_campaigns
from engine.ingest.batch import ingest
from engine.ingest.parse import parse_jsonl
from engine.schedule.steps import cap_frees_at, lead_zone, next_opening
from tests.campaign_support import CAMPAIGNS, RULESET, T0, campaigns_in
from tests.helpers import campaign_text, compiled, copy_fixtures

WARM = campaign_text("warm-nurture")
pytestmark = pytest.mark.home(campaigns=CAMPAIGNS)
EVENT_IDS = itertools.count()


@pytest.fixture
def ruleset_campaigns(home: Path) -> CompiledCampaigns:
    return campaigns_in(home)


# -- loading ---------------------------------------------------------------------------------
def test_campaign_file_loads_as_written() -> None:
    campaign = parse_campaign(WARM, "campaigns/warm.yaml", compiled(RULESET).ruleset)
    assert campaign.name == "warm-nurture"
    assert [s.template for s in campaign.steps] == ["warm/a", "warm/b", "warm/c"]
    assert [s.wait for s in campaign.steps] == [timedelta(0), timedelta(days=2), timedelta(days=1)]
    assert campaign.send_window == SendWindow(frozenset(range(5)), time(9), time(17))
    assert campaign.frequency_cap == FrequencyCap(2, timedelta(days=7))
    assert (campaign.from_email, campaign.from_name) == ("hello@acme.io", "Acme")


@pytest.mark.parametrize(
    ("edit", "line", "message"),
    [
        (("days: [mon,", "days: [monday,"), 5, "send_window days"),
        (('start: "09:00"', 'start: "18:00"'), 5, "start must be before end"),
        (("max: 2", "max: 0"), 6, "frequency_cap needs"),
        (("wait: 2d", "wait: 2 days"), 9, "bad duration '2 days'"),
        (("{lead.score: {gte: 55}}", "{event.type: page_view}"), 10, "reads event.type"),
        (("hello@acme.io", "hello"), 4, "`from:` needs"),
        (("lead.temperature: warm", "lead.temprature: warm"), 2, "temprature"),
        # Longer than the outbox's columns: the step batch would fail on PostgreSQL.
        (("name: Acme", "name: " + "A" * 201), 4, "at most 200"),
        (("name: Acme", 'name: "Acme\\r\\nBcc: x@y.io"'), 4, "one line"),
        (("warm-nurture", "w" * 201), 1, "at most 200"),
        (("warm/b", "warm/" + "b" * 200), 9, "at most 200"),
    ],
)
def test_campaign_errors_name_the_line(edit: tuple[str, str], line: int, message: str) -> None:
    with pytest.raises(ProblemsError) as caught:
        parse_campaign(WARM.replace(*edit), "campaigns/warm.yaml", compiled(RULESET).ruleset)
    problems = caught.value.problems
    assert any(p.line == line and message in p.message for p in problems), problems
    assert all(p.file == "campaigns/warm.yaml" for p in problems)


def test_folder_checks_templates_names_and_rule_targets(tmp_path: Path) -> None:
    ruleset = compiled(RULESET).ruleset
    folder = copy_fixtures("campaigns", ["warm-nurture", "hot-followup"], tmp_path / "campaigns")
    (folder / "copy.yaml").write_text(campaign_text("hot-followup"))
    with pytest.raises(ProblemsError) as caught:
        load_campaigns(folder, ruleset, templates=["warm/a", "warm/b", "hot/a"])
    text = str(caught.value)
    assert "campaign 'hot-followup' defined twice" in text
    assert "warm-nurture.yaml:10: no template 'warm/c'" in text
    assert "rule 'vip': no campaign 'vip-track'" in text


# -- who enters and leaves -------------------------------------------------------------------
def events(*items: tuple[str, str, datetime]) -> list[Any]:
    """Each item a new event (ids never repeat across calls)."""
    lines = [
        json.dumps(
            {
                "id": f"e{next(EVENT_IDS)}",
                "email": email,
                "type": kind,
                "occurred_at": at.isoformat(),
            }
        )
        for email, kind, at in items
    ]
    return list(parse_jsonl(lines))


def enrollments(db: sa.Engine) -> dict[tuple[str, str], dict[str, Any]]:
    query = sa.text(
        "SELECT l.email, e.campaign, e.status, e.step, e.next_due_at, e.reason "
        "FROM enrollment e JOIN lead l ON l.id = e.lead_id"
    )
    with db.connect() as conn:
        return {(r.email, r.campaign): r._asdict() for r in conn.execute(query)}


def warm_up(db: sa.Engine, campaigns: CompiledCampaigns, email: str) -> None:
    """Two page views: a score of 40, warm."""
    ingest(
        db,
        compiled(RULESET),
        events((email, "page_view", T0), (email, "page_view", T0)),
        campaigns=campaigns,
    )


def test_warm_lead_enrolls_and_turning_hot_exits_at_once(
    db: sa.Engine, ruleset_campaigns: CompiledCampaigns
) -> None:
    rules = compiled(RULESET)
    a = "ada@example.com"
    warm_up(db, ruleset_campaigns, a)
    found = enrollments(db)
    assert found[(a, "warm-nurture")]["status"] == "active"
    assert found[(a, "warm-nurture")]["reason"] == "audience"
    assert (a, "hot-followup") not in found
    later = T0 + timedelta(hours=1)
    ingest(db, rules, events((a, "demo_request", later)), campaigns=ruleset_campaigns)
    found = enrollments(db)
    assert found[(a, "warm-nurture")]["status"] == "exited"
    assert found[(a, "warm-nurture")]["reason"] == "exit_when"
    assert found[(a, "hot-followup")]["status"] == "active"


def test_a_lead_is_enrolled_once_even_if_it_cools_and_warms_again(
    db: sa.Engine, ruleset_campaigns: CompiledCampaigns
) -> None:
    rules = compiled(RULESET)
    a = "bo@example.com"
    warm_up(db, ruleset_campaigns, a)
    ingest(db, rules, events((a, "page_view", T0)), campaigns=ruleset_campaigns)
    with db.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(ENROLLMENTS)).scalar() == 1


def test_unsubscribe_exits_every_campaign_and_blocks_new_ones(
    db: sa.Engine, ruleset_campaigns: CompiledCampaigns
) -> None:
    rules = compiled(RULESET)
    a = "cy@example.com"
    warm_up(db, ruleset_campaigns, a)
    ingest(db, rules, events((a, "unsubscribe", T0)), campaigns=ruleset_campaigns)
    ingest(db, rules, events((a, "demo_request", T0)), campaigns=ruleset_campaigns)
    found = enrollments(db)
    assert found[(a, "warm-nurture")]["status"] == "exited"
    assert found[(a, "warm-nurture")]["reason"] == "unsubscribed"
    assert (a, "hot-followup") not in found


def test_rule_enroll_action_enrolls_outside_the_audience(
    db: sa.Engine, ruleset_campaigns: CompiledCampaigns
) -> None:
    ingest(
        db,
        compiled(RULESET),
        events(("di@example.com", "vip", T0)),
        campaigns=ruleset_campaigns,
    )
    found = enrollments(db)[("di@example.com", "vip-track")]
    assert found["reason"] == "rule vip"
    due = datetime.fromisoformat(str(found["next_due_at"]))
    assert due.replace(tzinfo=UTC) == T0 + timedelta(hours=1)


# -- scheduling decisions --------------------------------------------------------------------
WEEKDAYS = SendWindow(frozenset(range(5)), time(9), time(17))


@pytest.mark.parametrize(
    ("now", "zone", "expected"),
    [
        # Monday 10:00 UTC is inside the window in UTC.
        (T0, "UTC", T0),
        # ... but 05:00 in New York: wait for 09:00 there (14:00 UTC).
        (T0, "America/New_York", datetime(2026, 11, 2, 14, 0, tzinfo=UTC)),
        # Friday 18:00 in Tokyo → Monday 09:00 Tokyo (Monday 00:00 UTC).
        (
            datetime(2026, 11, 6, 9, 0, tzinfo=UTC),
            "Asia/Tokyo",
            datetime(2026, 11, 9, 0, 0, tzinfo=UTC),
        ),
        # Saturday → Monday 09:00.
        (datetime(2026, 11, 7, 12, tzinfo=UTC), "UTC", datetime(2026, 11, 9, 9, tzinfo=UTC)),
        # 17:00 sharp is closed: the window is [start, end).
        (datetime(2026, 11, 2, 17, tzinfo=UTC), "UTC", datetime(2026, 11, 3, 9, tzinfo=UTC)),
    ],
)
def test_send_window_in_the_leads_timezone(now: datetime, zone: str, expected: datetime) -> None:
    assert next_opening(WEEKDAYS, now, ZoneInfo(zone)) == expected


def test_unknown_timezone_falls_back_to_the_default() -> None:
    assert lead_zone({"timezone": "Mars/Olympus"}, "Europe/Paris") == ZoneInfo("Europe/Paris")
    assert lead_zone({"timezone": "Asia/Tokyo"}, "UTC") == ZoneInfo("Asia/Tokyo")
    assert lead_zone({}, "UTC") == ZoneInfo("UTC")


def test_frequency_cap_waits_for_the_oldest_email_to_age_out() -> None:
    cap = FrequencyCap(2, timedelta(days=7))
    one = [T0 - timedelta(days=3)]
    assert cap_frees_at(cap, one, T0) is None
    two = [T0 - timedelta(days=8), T0 - timedelta(days=3), T0 - timedelta(days=1)]
    assert cap_frees_at(cap, two, T0) == T0 + timedelta(days=4)
