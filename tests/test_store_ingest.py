"""Ingest on SQLite and PostgreSQL: idempotent re-runs, late and out-of-order events, CSV and
JSON Lines, bad lines, and the `nurture ingest / lead / leads` commands around it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from engine import db as database
from engine.db.schema import EVENTS, LEDGER
from engine.demo.sample import sample_records
from engine.ingest.batch import ingest
from engine.ingest.parse import parse_jsonl
from engine.reports.leads import lead_detail
from engine.settings import get_settings
from tests.helpers import ROOT, compiled, nurture, ruleset_text
from tests.store_support import another_database, lead_state, ledger_sums, tables

pytestmark = pytest.mark.home(rulesets=["ingest-test"])
RULES = compiled(ruleset_text("ingest-test"), "ingest-test.yaml")


def ev(
    id: str | None, email: str, type: str, at: str | None = None, **properties: Any
) -> dict[str, Any]:
    record: dict[str, Any] = {"email": email, "type": type}
    if id is not None:
        record["id"] = id
    if at is not None:
        record["occurred_at"] = at
    if properties:
        record["properties"] = properties
    return record


def jsonl(records: list[Any]) -> str:
    return "".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records)


def lines(*records: dict[str, Any]) -> list[str]:
    return [json.dumps(r) for r in records]


def score(db: sa.Engine, *records: dict[str, Any]) -> None:
    """One ingest run of ``records`` by the ingest-test ruleset."""
    ingest(db, RULES, parse_jsonl(lines(*records)))


# A file with everything a real export has: profiles without ids (their id is derived from
# their content), an event without id or time, duplicates, a late event, a bad line.
MIXED = [
    {
        "email": "Ana@Acme.io",
        "job_title": "VP Marketing",
        "company_size": 250,
        "occurred_at": "2025-12-31T00:00:00Z",
    },
    {"email": "bob@beta.io", "job_title": "Engineer", "occurred_at": "2026-01-02T08:00:00Z"},
    ev("a1", "ana@acme.io", "page_view", "2026-01-05T10:00:00Z", url="/pricing"),
    ev("a2", "ana@acme.io", "page_view", "2026-01-06T10:00:00Z", url="/blog"),
    ev("a1", "ana@acme.io", "page_view", "2026-01-05T10:00:00Z", url="/pricing"),  # duplicate
    ev("b1", "bob@beta.io", "demo_request", "2026-01-04T09:00:00Z"),
    ev(None, "bob@beta.io", "page_view", url="/docs"),  # no id, no time
    '{"email": "bob@beta.io", "type": "page_view", "occurred_at": "last tuesday"}',
    ev("a3", "ana@acme.io", "page_view", "2026-01-01T10:00:00Z", url="/pricing"),  # late
    ev("c1", "cleo@corp.io", "unsubscribe", "2026-01-07T10:00:00Z"),
]


def engine_of(url: str) -> sa.Engine:
    return database.connect(url)


def lead_json(email: str) -> dict[str, Any]:
    result = nurture("lead", email, "--json")
    assert result.exit_code == 0, result.output
    data: dict[str, Any] = json.loads(result.stdout)
    return data


def event_count(engine: sa.Engine) -> int:
    with engine.connect() as conn:
        return int(conn.execute(sa.select(sa.func.count()).select_from(EVENTS)).scalar() or 0)


# -- idempotency ------------------------------------------------------------------------------


def test_the_same_file_twice_leaves_exactly_the_state_of_once(
    cli_home: Path, db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = cli_home / "mixed.jsonl"
    path.write_text(jsonl(MIXED))
    first = nurture("ingest", str(path), "--json")
    assert first.exit_code == 1, first.output  # one bad line
    assert json.loads(first.stdout) == {
        "accepted": 8,
        "duplicates": 1,
        "rejected": [{"line": 8, "error": "occurred_at: not an ISO 8601 time: 'last tuesday'"}],
        "alerts": 0,  # the demo request's alert is months old: stale, nobody is paged
    }
    once = tables(engine_of(db_url))
    assert len(once["event"]) == 8

    # Again, whole, and again in batches of two (a different cut must not matter either).
    second = nurture("ingest", str(path), "--json")
    assert json.loads(second.stdout)["accepted"] == 0
    assert json.loads(second.stdout)["duplicates"] == 9
    monkeypatch.setenv("NURTURE_BATCH_SIZE", "2")
    get_settings.cache_clear()
    third = nurture("ingest", str(path), "--json")
    assert (json.loads(third.stdout)["accepted"], json.loads(third.stdout)["duplicates"]) == (0, 9)
    # Every lead row (version and updated_at included), ledger, stage history, firing, action
    # and event is exactly as after the first run.
    assert tables(engine_of(db_url)) == once


def test_the_same_records_as_csv_after_jsonl_are_duplicates(cli_home: Path, db_url: str) -> None:
    records = [
        ev("x1", "dan@delta.io", "page_view", "2026-02-01T10:00:00Z", url="/pricing"),
        ev("x2", "dan@delta.io", "demo_request", "2026-02-02T10:00:00Z"),
    ]
    (cli_home / "a.jsonl").write_text(jsonl(records))
    (cli_home / "a.csv").write_text(
        "id,email,type,occurred_at,properties.url\n"
        "x1,dan@delta.io,page_view,2026-02-01T10:00:00Z,/pricing\n"
        "x2,DAN@delta.io,demo_request,2026-02-02T10:00:00Z,\n"
    )
    assert nurture("ingest", str(cli_home / "a.jsonl")).exit_code == 0
    state = tables(engine_of(db_url))
    result = nurture("ingest", str(cli_home / "a.csv"), "--json")
    assert json.loads(result.stdout) == {
        "accepted": 0,
        "duplicates": 2,
        "rejected": [],
        "alerts": 0,
    }
    assert tables(engine_of(db_url)) == state


@pytest.mark.slow
def test_batch_size_does_not_change_what_is_scored(db: sa.Engine, tmp_path: Path) -> None:
    """Counts and limits read history across batches exactly as within one."""
    rules = compiled((ROOT / "rulesets" / "b2b-saas.yaml").read_text(), "b2b-saas.yaml")
    text = lines(*sample_records(leads=150, events_per_lead=8, seed=21))
    small = ingest(db, rules, parse_jsonl(text), batch_size=7)
    assert not small.rejected and small.accepted == len(text)
    url = str(db.url.render_as_string(hide_password=False))
    with another_database(url, tmp_path) as other:
        reference = database.connect(other)
        whole = ingest(reference, rules, parse_jsonl(text), batch_size=100_000)
        assert whole.accepted == len(text)
        assert lead_state(db) == lead_state(reference)
    scores, ledger, components = ledger_sums(db, rules.ruleset.claimed)
    assert scores == ledger == components


# -- time: late, out of order, past ---------------------------------------------------------


def test_counts_and_limits_use_occurred_at_not_arrival(db: sa.Engine) -> None:
    def fired(email: str, rule: str) -> list[str]:
        detail = lead_detail(db, email)
        assert detail is not None
        return sorted(r["event_id"] for r in detail["ledger"] if r["rule"] == rule)

    # Out of order in one file: views on Jan 7, Jan 5, Jan 6. Each counts the views in the
    # seven days up to its own time: 1, 1, 2 — busy-week (3 views) never fires.
    score(
        db,
        ev("o7", "ooo@x.io", "page_view", "2026-01-07T10:00:00Z"),
        ev("o5", "ooo@x.io", "page_view", "2026-01-05T10:00:00Z"),
        ev("o6", "ooo@x.io", "page_view", "2026-01-06T10:00:00Z"),
    )
    assert fired("ooo@x.io", "busy-week") == []
    # A later view on Jan 8, in another run, sees the stored three: it fires.
    score(db, ev("o8", "ooo@x.io", "page_view", "2026-01-08T09:00:00Z"))
    assert fired("ooo@x.io", "busy-week") == ["o8"]

    # Events from last year: two views in March 2025, then one now: the new one is alone in
    # its window. Then a late one from March 2025 arrives: with the two stored it makes three.
    score(
        db,
        ev("p1", "past@x.io", "page_view", "2025-03-02T10:00:00Z"),
        ev("p2", "past@x.io", "page_view", "2025-03-03T10:00:00Z"),
    )
    score(db, ev("p3", "past@x.io", "page_view", "2026-01-10T10:00:00Z"))
    assert fired("past@x.io", "busy-week") == []
    score(db, ev("p4", "past@x.io", "page_view", "2025-03-04T10:00:00Z"))
    assert fired("past@x.io", "busy-week") == ["p4"]

    # limit {times: 1, per: 7d} counts firings in the 7 days ending at the event's own time.
    for record in (
        ev("l1", "lim@x.io", "page_view", "2026-01-10T10:00:00Z", url="/pricing"),  # fires
        ev("l2", "lim@x.io", "page_view", "2026-01-02T10:00:00Z", url="/pricing"),  # late: fires
        ev("l3", "lim@x.io", "page_view", "2026-01-11T10:00:00Z", url="/pricing"),  # within l1's
        ev("l4", "lim@x.io", "page_view", "2026-01-17T10:00:01Z", url="/pricing"),  # l1 out
    ):
        score(db, record)
    assert fired("lim@x.io", "pricing-page") == ["l1", "l2", "l4"]
    for email in ("ooo@x.io", "past@x.io", "lim@x.io"):
        detail = lead_detail(db, email)
        assert detail is not None
        assert sum(r["delta"] for r in detail["ledger"]) == detail["score"]


def test_a_late_event_within_one_batch_and_across_batches_scores_alike(
    db: sa.Engine, tmp_path: Path
) -> None:
    records = [
        ev("s1", "sam@x.io", "page_view", "2026-03-10T10:00:00Z"),
        ev("s2", "sam@x.io", "page_view", "2026-03-11T10:00:00Z"),
        ev("s3", "sam@x.io", "page_view", "2026-03-01T10:00:00Z"),  # late, alone in its week
        ev("s4", "sam@x.io", "page_view", "2026-03-12T10:00:00Z"),  # third in its week
        ev("s5", "sam@x.io", "page_view", "2026-03-09T10:00:00Z"),  # late, alone in its week
        ev("s6", "sam@x.io", "page_view", "2026-03-13T10:00:00Z"),  # fifth in its week
    ]
    for record in records:  # one record per run
        score(db, record)
    url = str(db.url.render_as_string(hide_password=False))
    with another_database(url, tmp_path) as other:
        together = database.connect(other)
        score(together, *records)  # one batch
        assert lead_state(db)["ledger"] == lead_state(together)["ledger"]
    detail = lead_detail(db, "sam@x.io")
    assert detail is not None
    assert sorted(r["event_id"] for r in detail["ledger"] if r["rule"] == "busy-week") == [
        "s4",
        "s6",
    ]


# -- formats and bad lines --------------------------------------------------------------------


def test_csv_profiles_and_events(cli_home: Path) -> None:
    csv = (
        "id,email,type,occurred_at,properties.url,job_title,company_size,campaign\n"
        ",eve@epsilon.io,,2026-01-01T00:00:00Z,,Chief Revenue Officer,1200,\n"
        "e1,eve@epsilon.io,page_view,2026-01-05T10:00:00Z,/pricing,,,\n"
        "e2,EVE@epsilon.io,page_view,2026-01-05T11:00:00Z,/features,,,spring\n"
        "e3,eve@epsilon.io,demo_request,2026-01-06T10:00:00Z,,,,\n"
    )
    (cli_home / "mixed.csv").write_text(csv)
    result = nurture("ingest", str(cli_home / "mixed.csv"), "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == {
        "accepted": 4,
        "duplicates": 0,
        "rejected": [],
        "alerts": 0,
    }
    lead = lead_json("eve@epsilon.io")
    # Numbers in cells are numbers: company_size 1200 ≥ 200.
    assert lead["attributes"]["company_size"] == 1200
    assert lead["scores"] == {"fit": 40, "engagement": 40}
    assert (lead["score"], lead["temperature"], lead["stage"], lead["tags"]) == (
        80,
        "hot",
        "mql",
        ["demo"],
    )
    events = {e["id"]: e for e in lead["recent_events"]}
    # An extra column of an event row is one of its properties.
    assert events["e2"]["properties"] == {"url": "/features", "campaign": "spring"}


def test_csv_and_jsonl_with_a_byte_order_mark(cli_home: Path) -> None:
    """Excel's "CSV UTF-8" starts the file with a BOM; the first column is still `email`."""
    (cli_home / "excel.csv").write_bytes(
        "\ufeffemail,job_title,company_size\nfay@phi.io,VP Sales,300\n".encode()
    )
    result = nurture("ingest", str(cli_home / "excel.csv"), "--json")
    assert json.loads(result.stdout) == {
        "accepted": 1,
        "duplicates": 0,
        "rejected": [],
        "alerts": 0,
    }
    assert lead_json("fay@phi.io")["scores"]["fit"] == 40
    (cli_home / "bom.jsonl").write_bytes(
        b"\xef\xbb\xbf" + json.dumps(ev("g1", "gus@x.io", "demo_request")).encode() + b"\n"
    )
    result = nurture("ingest", str(cli_home / "bom.jsonl"), "--json")
    assert json.loads(result.stdout) == {
        "accepted": 1,
        "duplicates": 0,
        "rejected": [],
        "alerts": 0,
    }
    piped = nurture(
        "ingest", "-", "--json", input="\ufeffemail,job_title\nhal@x.io,Chief of Staff\n"
    )
    assert json.loads(piped.stdout) == {"accepted": 1, "duplicates": 0, "rejected": [], "alerts": 0}


def test_csv_headers_become_the_attributes_the_backtest_names(cli_home: Path) -> None:
    """A CRM export's headers as written: they name the same attributes as in `backtest`."""
    (cli_home / "crm.csv").write_text(
        "Email,Job Title,Company Size,Tags,Type,Occurred At,Properties.Page URL\n"
        "ivy@iota.io,VP Sales,300,Met at a fair,,,\n"
        "ivy@iota.io,,,,page_view,2026-01-05T10:00:00Z,/pricing\n"
    )
    result = nurture("ingest", str(cli_home / "crm.csv"), "--json")
    assert json.loads(result.stdout) == {
        "accepted": 2,
        "duplicates": 0,
        "rejected": [],
        "alerts": 0,
    }
    lead = lead_json("ivy@iota.io")
    assert lead["attributes"] == {
        "domain": "iota.io",
        "job_title": "VP Sales",
        "company_size": 300,
        "tags_column": "Met at a fair",
    }
    # The ruleset reads lead.job_title and lead.company_size: the profile scored.
    assert lead["scores"]["fit"] == 40 and lead["tags"] == []
    assert [e["properties"] for e in lead["recent_events"] if e["type"] == "page_view"] == [
        {"page_url": "/pricing"}
    ]

    (cli_home / "twice.csv").write_text("email,Job Title,job_title\njo@iota.io,VP,CEO\n")
    result = nurture("ingest", str(cli_home / "twice.csv"), "--json")
    assert result.exit_code == 1
    assert json.loads(result.stdout)["rejected"] == [
        {
            "line": 1,
            "error": "the header row: columns 'Job Title' and 'job_title' would both be "
            "attribute 'job_title'; no row was read",
        }
    ]


BAD_JSONL = [
    ev("k1", "kim@x.io", "page_view", "2026-01-05T10:00:00Z", url="/pricing"),  # 1 good
    "{not json",  # 2
    {"type": "page_view", "id": "k2"},  # 3 no email
    ev("k3", "kim@x.io", "page_view", "05/01/2026"),  # 4
    {"email": "kim@x.io", "type": "page_view", "properties": [1, 2]},  # 5
    {"email": "kim@x.io", "type": "page_view", "url": "/pricing"},  # 6 url belongs in properties
    {"email": "kim@x.io", "score": 99},  # 7 computed
    {"email": "kim@", "type": "page_view"},  # 8
    {"email": "kim@x.io", "type": "x" * 65},  # 9
    "",  # 10 blank: skipped, still counted
    ev("k4", "kim@x.io", "demo_request", "2026-01-06T10:00:00Z"),  # 11 good
]


def test_bad_lines_are_reported_with_line_and_field_and_the_rest_kept(cli_home: Path) -> None:
    (cli_home / "bad.jsonl").write_text(jsonl(BAD_JSONL))
    result = nurture("ingest", str(cli_home / "bad.jsonl"), "--json")
    assert result.exit_code == 1
    report = json.loads(result.stdout)
    assert (report["accepted"], report["duplicates"]) == (2, 0)
    rejected = {r["line"]: r["error"] for r in report["rejected"]}
    assert sorted(rejected) == [2, 3, 4, 5, 6, 7, 8, 9]
    assert rejected[2].startswith("not valid JSON")
    fields = {3: "email", 4: "occurred_at", 5: "properties", 6: "url", 7: "score", 8: "email"}
    for line, name in fields.items():
        assert rejected[line].startswith(f"{name}:"), (line, rejected[line])
    assert rejected[9].startswith("type:")
    assert all(set(r) == {"line", "error"} for r in report["rejected"])
    # The good lines were scored.
    assert lead_json("kim@x.io")["score"] == 40

    text = nurture("ingest", str(cli_home / "bad.jsonl"))
    assert text.exit_code == 1
    assert "accepted 0, duplicates 2, rejected 8" in text.stdout
    assert "line 4: occurred_at: not an ISO 8601 time: '05/01/2026'" in text.stderr
    assert "line 7: score: computed by the ruleset, cannot be imported" in text.stderr


@pytest.mark.usefixtures("cli_home")
def test_bad_csv_rows_are_reported_with_their_line() -> None:
    csv = (
        "id,email,type,occurred_at,properties.url\n"
        "m1,mia@x.io,page_view,2026-01-05T10:00:00Z,/pricing\n"
        "m2,mia@x.io,page_view,not-a-time,/pricing\n"
        "m3,,page_view,2026-01-05T10:00:00Z,/pricing\n"
        "m4,mia@x.io,page_view,2026-01-05T10:00:00Z,/pricing,extra\n"
        "m5,mia@x.io,demo_request,2026-01-06T10:00:00Z,\n"
    )
    result = nurture("ingest", "-", "--json", input=csv)
    assert result.exit_code == 1
    report = json.loads(result.stdout)
    assert report["accepted"] == 2
    assert [r["line"] for r in report["rejected"]] == [3, 4, 5]
    assert report["rejected"][0]["error"].startswith("occurred_at:")
    assert report["rejected"][1]["error"] == "email: missing"
    assert lead_json("mia@x.io")["score"] == 40


# -- the command line -------------------------------------------------------------------------


def test_ingest_prints_its_summary_and_exits_0_when_all_lines_pass(cli_home: Path) -> None:
    (cli_home / "ok.jsonl").write_text(jsonl([r for r in MIXED if isinstance(r, dict)]))
    result = nurture("ingest", str(cli_home / "ok.jsonl"))
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == "accepted 8, duplicates 1, rejected 0, alerts 0"
    again = nurture("ingest", str(cli_home / "ok.jsonl"), "--json")
    assert again.exit_code == 0
    assert json.loads(again.stdout) == {"accepted": 0, "duplicates": 9, "rejected": [], "alerts": 0}
    missing = nurture("ingest", str(cli_home / "nope.jsonl"))
    assert missing.exit_code == 1 and "no such file" in missing.stderr


@pytest.mark.usefixtures("cli_home")
def test_ingest_from_stdin(db_url: str) -> None:
    result = nurture("ingest", "-", "--json", input=jsonl(MIXED))
    assert result.exit_code == 1
    report = json.loads(result.stdout)
    assert (report["accepted"], report["duplicates"]) == (8, 1)
    assert [r["line"] for r in report["rejected"]] == [8]
    assert event_count(engine_of(db_url)) == 8
    assert nurture("ingest", "-", input="").exit_code == 0  # empty input: nothing to do


@pytest.mark.usefixtures("cli_home")
def test_lead_json_has_the_design_shape_and_its_ledger_sums_to_its_score() -> None:
    nurture("ingest", "-", input=jsonl(MIXED))
    lead = lead_json("ANA@acme.io ")
    required = {"email", "score", "scores", "temperature", "stage", "tags", "attributes"}
    assert required | {"ledger", "stage_history"} <= set(lead)
    assert lead["email"] == "ana@acme.io"
    assert isinstance(lead["tags"], list) and isinstance(lead["attributes"], dict)
    assert all(
        set(row)
        == {"rule", "component", "delta", "score_after", "event_id", "at", "ruleset_version"}
        for row in lead["ledger"]
    )
    assert all(set(row) == {"from", "to", "rule", "at", "rescore"} for row in lead["stage_history"])
    # fit: title 30 + size 10; engagement: pricing (Jan 5) 10, late pricing (Jan 1) 10.
    assert lead["scores"] == {"fit": 40, "engagement": 20}
    assert lead["score"] == sum(lead["scores"].values()) == 60
    assert sum(row["delta"] for row in lead["ledger"]) == lead["score"]
    assert (lead["temperature"], lead["stage"]) == ("warm", "mql")
    assert [(h["from"], h["to"]) for h in lead["stage_history"]] == [
        (None, "subscriber"),
        ("subscriber", "lead"),
        ("lead", "mql"),
    ]
    # The late Jan 1 event is in the ledger at its own time.
    assert [r["event_id"] for r in lead["ledger"] if r["rule"] == "pricing-page"] == ["a3", "a1"]
    assert nurture("lead", "nobody@acme.io", "--json").exit_code == 1


@pytest.mark.usefixtures("cli_home")
def test_leads_filters_by_temperature_and_stage() -> None:
    records = [
        {"email": "hot@x.io", "job_title": "Chief Executive", "company_size": 500},
        ev("h1", "hot@x.io", "demo_request", "2026-01-05T10:00:00Z"),  # 30 + 10 + 30 = 70
        {"email": "warm@x.io", "job_title": "VP Finance", "company_size": 300},  # 40
        {"email": "cold@x.io", "job_title": "Engineer"},  # 0
        {"email": "cold2@x.io", "company_size": 900},  # 10
    ]
    nurture("ingest", "-", input=jsonl(records))
    by_band: dict[str, list[str]] = {}
    for band in ("hot", "warm", "cold"):
        result = nurture("leads", "--temperature", band, "--json")
        assert result.exit_code == 0, result.output
        rows = json.loads(result.stdout)
        assert all(row["temperature"] == band for row in rows)
        by_band[band] = [row["email"] for row in rows]
    assert by_band == {
        "hot": ["hot@x.io"],
        "warm": ["warm@x.io"],
        "cold": ["cold2@x.io", "cold@x.io"],  # highest score first
    }
    mql = json.loads(nurture("leads", "--stage", "mql", "--json").stdout)
    assert [row["email"] for row in mql] == ["hot@x.io"]
    both = json.loads(nurture("leads", "--temperature", "warm", "--stage", "mql", "--json").stdout)
    assert both == []
    assert json.loads(nurture("leads", "--temperature", "tepid", "--json").stdout) == []


@pytest.mark.usefixtures("cli_home")
def test_unsubscribe_and_spam_report_withdraw_consent() -> None:
    records = [
        {"email": "una@x.io", "job_title": "VP Ops"},
        {"email": "sol@x.io", "job_title": "VP Ops"},
        {"email": "ray@x.io", "job_title": "VP Ops"},
        ev("u1", "una@x.io", "unsubscribe", "2026-01-05T10:00:00Z"),
        ev("s1", "sol@x.io", "spam_report", "2026-01-05T10:00:00Z"),
        ev("r1", "ray@x.io", "page_view", "2026-01-05T10:00:00Z"),
    ]
    nurture("ingest", "-", input=jsonl(records))
    assert lead_json("una@x.io")["subscribed"] is False
    assert lead_json("sol@x.io")["subscribed"] is False
    assert lead_json("ray@x.io")["subscribed"] is True
    # The score stays (it is still a known lead); only consent changes.
    assert lead_json("una@x.io")["score"] == 30
    # A later profile record may opt back in explicitly.
    nurture("ingest", "-", input=jsonl([{"email": "una@x.io", "subscribed": True}]))
    assert lead_json("una@x.io")["subscribed"] is True


def test_events_of_unknown_leads_create_them_in_the_first_stage(db: sa.Engine) -> None:
    score(db, ev("n1", "new@x.io", "email_open", "2026-01-05"))
    detail = lead_detail(db, "new@x.io")
    assert detail is not None
    assert (detail["stage"], detail["score"], detail["subscribed"]) == ("subscriber", 0, True)
    assert detail["stage_history"] == [
        {"from": None, "to": "subscriber", "rule": "new-lead", "at": "2026-01-05T00:00:00Z",
         "rescore": False}
    ]  # fmt: skip
    assert detail["attributes"] == {"domain": "x.io"}
    with db.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(LEDGER)).scalar() == 0
