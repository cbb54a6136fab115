"""Hostile and careless input on the way in (issue 13, items 7, 10, 11, 12, 15): look-alike and
markup-bearing addresses, JSON nested without end, CSV cells and rows that break the reader,
times past what date arithmetic holds, and event ids reused for other content. Each bad record
is one rejection naming its line (or item) and the problem; every other record is kept."""

from __future__ import annotations

import io
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.alerts.content import AlertView, slack_payload
from engine.alerts.decide import recipient
from engine.api.app import create_app
from engine.campaigns.load import parse_campaign
from engine.db.schema import EVENTS, LEADS
from engine.errors import InvalidRecord, ProblemsError
from engine.ingest.batch import ingest
from engine.ingest.parse import (
    MAX_FIELDS,
    EventRecord,
    LeadRecord,
    Rejection,
    csv_value,
    parse_jsonl,
    parse_stream,
    record,
)
from engine.settings import Settings, get_settings
from tests.campaign_support import RULESET as CAMPAIGN_RULESET
from tests.helpers import campaign_text, compiled, nurture
from tests.mail_support import PUBLIC, signed

RULESET = """\
ruleset: hostile
components: {engagement: {min: 0, max: 100}}
temperature: {cold: 0, warm: 40, hot: 70}
rules:
  - name: viewed
    when: {event.type: page_view}
    then: {score: {engagement: 5}}
"""
RULES = compiled(RULESET, "hostile.yaml")
TOKEN = "hostile-token-0123456789abcdefghijklmnop"
DEEP = "[" * 100_000 + "]" * 100_000


def view(key: str, email: str = "ana@acme.io", **extra: Any) -> dict[str, Any]:
    return {"id": key, "email": email, "type": "page_view", **extra}


def jsonl(*items: Any) -> str:
    return "".join((i if isinstance(i, str) else json.dumps(i)) + "\n" for i in items)


@pytest.fixture
def home(tmp_path: Path, db_url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    (tmp_path / "rulesets").mkdir()
    (tmp_path / "rulesets" / "hostile.yaml").write_text(RULESET)
    monkeypatch.setenv("NURTURE_HOME", str(tmp_path))
    monkeypatch.setenv("NURTURE_DATABASE_URL", db_url)
    for name in ("NURTURE_RULESET", "NURTURE_BATCH_SIZE", "NURTURE_SALES_EMAIL"):
        monkeypatch.delenv(name, raising=False)
    get_settings.cache_clear()
    yield tmp_path
    get_settings.cache_clear()


def ingested(*args: str, input: str | None = None) -> tuple[int, dict[str, Any]]:
    result = nurture("ingest", *args, "--json", input=input)
    assert result.stdout.strip(), result.output  # a report, not a traceback
    return result.exit_code, json.loads(result.stdout)


def rejected(report: dict[str, Any]) -> dict[int, str]:
    return {r["line"]: r["error"] for r in report["rejected"]}


def stored_ids(db_url: str) -> list[str]:
    from engine import db as database

    with database.connect(db_url).connect() as conn:
        return sorted(conn.execute(sa.select(EVENTS.c.event_id)).scalars())


# -- 7: addresses ------------------------------------------------------------------------------

HOSTILE_ADDRESSES = [
    "a>b@x.io",
    "a@evil.io>click<https://evil.example|here",  # passed the old pattern: no @ or space
    "<b>x</b>@x.io",
    "\uff41na@acme.io",  # fullwidth a
    "ana@acme.\uff49\uff4f",  # fullwidth io, which IDNA would quietly map to io
    "ana@\u2170cme.io",  # small roman numeral one, a look-alike of i
    "an\u200ba@acme.io",  # zero-width space
    "ana@ac\u200dme.io",  # zero-width joiner
    "ana@acme.io\u200b",
    "a\u202eoi.emca@na",  # right-to-left override
    "an\x07a@acme.io",
    '"ana smith"@acme.io',
    "Ana <ana@acme.io>",
    "ana@[127.0.0.1]",
]


@pytest.mark.parametrize("address", HOSTILE_ADDRESSES)
def test_an_address_with_markup_look_alikes_or_hidden_characters_is_refused(address: str) -> None:
    with pytest.raises(InvalidRecord, match=r"^email: "):
        record(1, view("k", address))


@pytest.mark.parametrize(
    ("written", "stored"),
    [
        ("  Ana.Silva+news@Acme.IO ", "ana.silva+news@acme.io"),
        ("o'brien@acme.io", "o'brien@acme.io"),
        ("ana@b\u00fccher.de", "ana@xn--bcher-kva.de"),  # one mailbox, one key
        ("ana@xn--bcher-kva.de", "ana@xn--bcher-kva.de"),
    ],
)
def test_real_addresses_are_kept_in_one_normal_form(written: str, stored: str) -> None:
    assert record(1, view("k", written)).email == stored


def test_every_place_an_address_is_accepted_uses_the_strict_syntax(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    ruleset = compiled(CAMPAIGN_RULESET).ruleset
    warm = campaign_text("warm-nurture")
    with pytest.raises(ProblemsError, match="`from:` needs"):
        parse_campaign(warm.replace("hello@acme.io", "hello>x@acme.io"), "c.yaml", ruleset)
    with pytest.raises(ProblemsError, match="`from:` needs"):
        parse_campaign(warm.replace("hello@acme.io", "hello@acme.\uff49\uff4f"), "c.yaml", ruleset)
    for name, value in [
        ("NURTURE_SALES_EMAIL", "sales@acme.io>x"),
        ("NURTURE_ALERT_FROM", "alerts@acme.io|x"),
        ("NURTURE_SALES_ROSTER", "ana@acme.io, bo\u200b@acme.io"),
    ]:
        monkeypatch.setenv(name, value)
        with pytest.raises(ValueError, match=name):
            Settings()
        monkeypatch.delenv(name)
    assert Settings(sales_roster=" Ana@Acme.io , bo@acme.io").roster == [
        "ana@acme.io",
        "bo@acme.io",
    ]
    # An owner attribute that is no address goes to the roster's rep or the sales address.
    assert recipient("rep@acme.io>x", [], 0, "sales@acme.io") == ("sales@acme.io", "sales_email")
    assert recipient(" Rep@Acme.io ", [], 0, "sales@acme.io") == ("rep@acme.io", "owner")


def test_the_api_refuses_a_hostile_address_with_a_422(api: TestClient) -> None:
    lead = api.post("/api/leads", json={"email": "ana@acme.io>x", "company": "Acme"})
    assert lead.status_code == 422
    assert lead.json()["detail"].startswith("email: ")
    events = api.post("/api/events", json=[view("e1", "an\u200ba@acme.io"), view("e2")])
    assert [i["status"] for i in events.json()["items"]] == ["rejected", "accepted"]


SLACK_LINK = re.compile(r"<([^<>]*)>")


def hostile_view(**changes: Any) -> AlertView:
    fields: dict[str, Any] = {
        "email": "x|y&z@acme.io",  # | and & are allowed in an address's local part
        "name": "Ana <https://evil.example|Reset your password>",
        "company": "<!channel> & <@U123>",
        "job_title": "<https://evil.example|VP> | CEO > CTO",
        "score": 80,
        "temperature": "hot",
        "stage": "lead",
        "rule": "hot-lead",
        "reasons": [{"rule": "demo", "points": 50, "times": 1}],
        "events": [{"type": "page_view", "at": "2026-11-02T10:00:00Z", "detail": "<!here>"}],
        "url": "https://nurture.example/leads/x%7Cy%26z@acme.io",
        "owner": "<mailto:boss@evil.example|boss>",
    }
    return AlertView(**{**fields, **changes})


def mrkdwn_texts(payload: dict[str, Any]) -> list[str]:
    texts = [payload["text"]]
    for block in payload["blocks"]:
        if block.get("text", {}).get("type") == "mrkdwn":
            texts.append(block["text"]["text"])
        texts += [f["text"] for f in block.get("fields", [])]
    return texts


def links_in(payload: dict[str, Any]) -> list[str]:
    return [link for text in mrkdwn_texts(payload) for link in SLACK_LINK.findall(text)]


def test_the_slack_alert_escapes_every_value_and_builds_only_its_own_links() -> None:
    payload = slack_payload(hostile_view())
    # The only links are the ones the alert builds, each with one | between target and label:
    # the lead's page, and a mailto unless the address holds a | (no label can show it).
    links = links_in(payload)
    assert [link.split("|")[0] for link in links] == [
        "https://nurture.example/leads/x%7Cy%26z@acme.io"
    ]
    assert all(link.count("|") == 1 for link in links), links
    whole = json.dumps(mrkdwn_texts(payload))
    for planted in ("<!channel>", "<@U123>", "<!here>", "<https://evil", "<mailto:boss"):
        assert planted not in whole
    assert "&lt;!channel&gt; &amp; &lt;@U123&gt;" in whole
    assert "x|y&amp;z@acme.io" in whole  # shown escaped, as the address reads
    plain = slack_payload(hostile_view(email="x&y@acme.io"))
    assert "mailto:x%26y@acme.io|x&amp;y@acme.io" in links_in(plain)


def test_an_address_is_not_turned_into_a_link_by_a_hostile_public_url() -> None:
    payload = slack_payload(hostile_view(url="https://nurture.example/a|b>c"))
    for text in mrkdwn_texts(payload):
        for link in SLACK_LINK.findall(text):
            assert link.count("|") == 1 and ">" not in link


# -- 10, 11: what breaks the readers -----------------------------------------------------------


def test_json_nested_without_end_is_one_rejected_line(home: Path, db_url: str) -> None:
    (home / "deep.jsonl").write_text(jsonl(view("d1"), DEEP, view("d2")))
    code, report = ingested(str(home / "deep.jsonl"))
    assert code == 1
    assert report["accepted"] == 2
    assert list(rejected(report)) == [2]
    assert "nested" in rejected(report)[2]
    assert stored_ids(db_url) == ["d1", "d2"]


def test_nesting_within_what_json_reads_but_beyond_a_record_is_refused() -> None:
    nested: Any = "x"
    for _ in range(40):
        nested = {"a": nested}
    (found,) = parse_jsonl([json.dumps(view("n1", properties={"n": nested}))])
    assert isinstance(found, Rejection)
    assert "nested deeper than" in found.error


def test_a_csv_cell_over_the_reader_limit_is_one_rejected_line(home: Path, db_url: str) -> None:
    text = (
        "id,email,type,properties.note\n"
        "c1,ana@acme.io,page_view,short\n"
        f"c2,ana@acme.io,page_view,{'x' * 140_000}\n"
        "c3,ana@acme.io,page_view,short\n"
    )
    (home / "big.csv").write_text(text)
    code, report = ingested(str(home / "big.csv"))
    assert (code, report["accepted"], list(rejected(report))) == (1, 2, [3])
    assert "longer than 131072 characters" in rejected(report)[3]
    assert stored_ids(db_url) == ["c1", "c3"]


def test_a_bare_carriage_return_in_a_csv_row_on_stdin_is_one_rejected_line(
    home: Path, db_url: str
) -> None:
    text = "id,email,type\nr1,ana@acme.io,page_view\nr2,ana@acme.io,page\rview\n"
    text += "r3,ana@acme.io,page_view\n"
    code, report = ingested("-", input=text)
    assert (code, report["accepted"], list(rejected(report))) == (1, 2, [3])
    assert "carriage return" in rejected(report)[3]
    assert stored_ids(db_url) == ["r1", "r3"]


def test_old_mac_line_ends_still_read(home: Path, db_url: str) -> None:
    code, report = ingested("-", input="id,email,type\rm1,ana@acme.io,page_view\r")
    assert (code, report["accepted"], report["rejected"]) == (0, 1, [])


def test_an_unclosed_quote_is_reported_and_the_lines_after_it_are_read_again(
    home: Path, db_url: str
) -> None:
    text = (
        "id,email,type\n"
        "q1,ana@acme.io,page_view\n"
        '"q2,ana@acme.io,page_view\n'
        "q3,ana@acme.io,page_view\n"
        "q4,bo@acme.io,page_view\n"
    )
    (home / "quote.csv").write_text(text)
    code, report = ingested(str(home / "quote.csv"))
    assert code == 1
    assert list(rejected(report)) == [3]
    assert "never closed" in rejected(report)[3]
    assert stored_ids(db_url) == ["q1", "q3", "q4"]
    # A quote closed further down but not followed by a comma: the same, reported where it opened.
    later = text.replace("q4,bo", 'q4,"bo"x')
    code, report = ingested("-", input=later.replace("q", "p"))
    assert list(rejected(report)) == [3, 5]
    assert stored_ids(db_url) == ["p1", "p3", "q1", "q3", "q4"]


def test_a_multi_line_quoted_cell_is_one_record_reported_at_its_first_line(home: Path) -> None:
    text = 'id,email,type,properties.note\nm1,,page_view,"two\nlines"\nm2,ana@acme.io,page_view,x\n'
    code, report = ingested("-", input=text)
    assert (code, report["accepted"]) == (1, 1)
    assert rejected(report) == {2: "email: missing"}


# -- 10: over HTTP -----------------------------------------------------------------------------


@pytest.fixture
def api(tmp_path: Path, db_url: str) -> Iterator[TestClient]:
    (tmp_path / "rulesets").mkdir()
    (tmp_path / "rulesets" / "hostile.yaml").write_text(RULESET)
    settings = Settings(
        home=tmp_path, database_url=db_url, api_token=TOKEN, sendgrid_webhook_public_key=PUBLIC
    )
    with TestClient(create_app(settings), headers={"Authorization": f"Bearer {TOKEN}"}) as client:
        yield client


def feedback(api: TestClient, body: bytes) -> Any:
    """A signed SendGrid webhook call."""
    return api.post("/webhooks/sendgrid", content=body, headers=signed(body))


def test_deep_json_over_http_is_a_400_naming_it_not_a_500(api: TestClient) -> None:
    for path in ("/api/events", "/api/leads"):
        response = api.post(path, content=DEEP, headers={"Content-Type": "application/json"})
        assert response.status_code == 400, (path, response.text)
        assert "nested" in response.json()["detail"]
    response = feedback(api, DEEP.encode())
    assert response.status_code == 400, response.text
    assert "nested" in response.json()["detail"]


def test_one_deep_item_of_a_request_is_rejected_and_the_others_kept(api: TestClient) -> None:
    nested: Any = 1
    for _ in range(40):
        nested = [nested]
    body = [view("h1"), view("h2", properties={"n": nested}), view("h3")]
    answer = api.post("/api/events", json=body).json()
    assert [i["status"] for i in answer["items"]] == ["accepted", "rejected", "accepted"]
    assert "nested deeper than" in answer["items"][1]["error"]


def test_numbers_json_reads_but_nothing_else_can_are_refused_not_a_500(api: TestClient) -> None:
    huge = json.dumps(view("n1", properties={"n": 0})).replace("0}", "9" * 5000 + "}")
    body = f"[{huge}]"
    response = api.post("/api/events", content=body)
    assert response.status_code == 400
    assert "digits" in response.json()["detail"]
    events = feedback(
        api,
        b'[{"event": "open", "email": "ana@acme.io", "timestamp": 1e400, "sg_event_id": "s1"},'
        b' {"event": "processed", "outbox_id": 1e400}]',
    )
    assert events.status_code == 200, events.text
    assert events.json()["rejected"] == [
        {"index": 0, "error": "timestamp: not a Unix time in seconds"}
    ]


# -- 12: times ---------------------------------------------------------------------------------


def test_a_time_far_in_the_future_is_rejected_naming_the_field(home: Path, db_url: str) -> None:
    items = [
        view("t1", occurred_at="9999-12-31T23:59:59Z"),
        view("t2", occurred_at="2126-01-01T00:00:00Z"),
        {"email": "ana@acme.io", "company": "Acme", "occurred_at": "9999-01-01"},
        view("t3", occurred_at="2026-01-01T00:00:00Z"),
    ]
    code, report = ingested("-", input=jsonl(*items))
    assert (code, report["accepted"]) == (1, 1)
    assert rejected(report) == {n: "occurred_at: more than a day in the future" for n in (1, 2, 3)}
    assert stored_ids(db_url) == ["t3"]


def test_tick_refuses_a_time_that_date_arithmetic_cannot_hold(home: Path) -> None:
    for moment in ("9999-12-31T00:00:00Z", "1969-12-31T23:59:59Z"):
        result = nurture("tick", "--now", moment)
        assert result.exit_code == 1
        assert result.exception is None or isinstance(result.exception, SystemExit)
        assert "--now: " in result.stderr and "between" in result.stderr


# -- 15: an event id reused ---------------------------------------------------------------------


def test_an_event_id_reused_for_other_content_is_reported_not_dropped(
    home: Path, db_url: str
) -> None:
    first = [view("u1", occurred_at="2026-11-01T10:00:00Z", properties={"url": "/a"}), view("u2")]
    code, report = ingested("-", input=jsonl(*first))
    assert (code, report["accepted"]) == (0, 2)
    again = [
        view("u1", occurred_at="2026-11-01T10:00:00Z", properties={"url": "/a"}),  # the same
        view("u2"),  # no time: the same event sent again
        view("u1", occurred_at="2026-11-01T10:00:00Z", properties={"url": "/b"}),
        view("u1", "bo@acme.io", occurred_at="2026-11-01T10:00:00Z", properties={"url": "/a"}),
        {**view("u1", occurred_at="2026-11-01T10:00:00Z"), "type": "demo_request"},
        view("u1", occurred_at="2026-11-01T10:00:01Z", properties={"url": "/a"}),
        view("u3", properties={"n": 1}),
        view("u3", properties={"n": 2}),  # reused within the same file
    ]
    code, report = ingested("-", input=jsonl(*again))
    assert code == 1
    assert (report["accepted"], report["duplicates"]) == (1, 2)
    reason = "id: event id reused with different content; the stored event is kept"
    assert rejected(report) == {3: reason, 4: reason, 5: reason, 6: reason, 8: reason}
    assert stored_ids(db_url) == ["u1", "u2", "u3"]


def test_a_reused_id_is_a_rejected_item_over_http(api: TestClient) -> None:
    api.post("/api/events", json=view("w1", properties={"url": "/a"}))
    answer = api.post("/api/events", json=[view("w1", properties={"url": "/b"})]).json()
    assert answer["items"][0]["status"] == "rejected"
    assert "reused with different content" in answer["items"][0]["error"]


def test_conflicts_are_found_in_one_query_per_batch(db_url: str, home: Path) -> None:
    from engine import db as database

    database.upgrade(db_url)
    db = database.connect(db_url)
    ingest(
        db, RULES, parse_jsonl([json.dumps(view(f"s{i}", properties={"i": i})) for i in range(50)])
    )
    statements: list[str] = []
    sa.event.listen(db, "before_cursor_execute", lambda *a: statements.append(a[2]))
    again = [json.dumps(view(f"s{i}", properties={"i": -i})) for i in range(1, 50)]
    result = ingest(db, RULES, parse_jsonl(again))
    assert (result.accepted, len(result.rejected)) == (0, 49)
    event_reads = [s for s in statements if s.lstrip().startswith("SELECT") and "event" in s]
    assert len(event_reads) == 1, event_reads


# -- whatever a file holds ---------------------------------------------------------------------

FUZZ = settings(max_examples=300, deadline=None, derandomize=True)
pieces = st.sampled_from(
    ['"', '""', ",", "\r", "\n", "\r\n", "x", " ", "{", "[", "]", "}", ":", "\x00", "\ufeff",
     "id", "email", "type", "ana@acme.io", "page_view", "\\", "'", "\u2028", "\ud800", "9" * 30]
)  # fmt: skip
garbage = st.lists(pieces, max_size=40).map("".join)


def parsed_from(text: str, name: str) -> list[Any]:
    return list(parse_stream(io.StringIO(text, newline=""), name))


@FUZZ
@given(garbage, st.sampled_from(["x.csv", "x.jsonl", "-"]))
def test_any_text_is_records_or_rejections_never_a_traceback(text: str, name: str) -> None:
    lines = len(re.split(r"\r\n|\r|\n", text))
    for item in parsed_from(text, name):
        assert isinstance(item, LeadRecord | EventRecord | Rejection)
        assert 1 <= item.line <= lines, (item, lines)
        if isinstance(item, Rejection):
            assert item.error


@FUZZ
@given(st.integers(0, 6), garbage.filter(lambda t: "\n" not in t), st.sampled_from(["\n", "\r\n"]))
def test_one_broken_csv_line_loses_no_other_row(where: int, bad: str, end: str) -> None:
    rows = [f"v{i},ana@acme.io,page_view" for i in range(6)]
    rows.insert(where, bad.replace("\r\n", "\r"))
    found = parsed_from(end.join(["id,email,type", *rows]) + end, "x.csv")
    kept = {item.id for item in found if isinstance(item, EventRecord)}
    assert {f"v{i}" for i in range(6)} <= kept, found


def test_a_batch_size_that_would_drop_every_record_is_refused() -> None:
    for size in (0, -1):
        with pytest.raises(ValueError, match="batch_size"):
            Settings(batch_size=size)


def test_a_lead_gathers_at_most_so_many_attributes(db_url: str) -> None:
    from engine import db as database

    database.upgrade(db_url)
    db = database.connect(db_url)
    profiles = [
        {"id": f"p{n}", "email": "ana@acme.io", **{f"a{n}_{i}": i for i in range(400)}}
        for n in range(3)
    ]
    result = ingest(db, RULES, parse_jsonl([json.dumps(p) for p in profiles]))
    assert result.accepted == 2
    assert [(r.line, r.error) for r in result.rejected] == [
        (3, f"a2_0: the lead would have more than {MAX_FIELDS} attributes")
    ]
    with db.connect() as conn:
        stored = conn.execute(sa.select(LEADS.c.attributes)).scalar_one()
    assert len(stored if isinstance(stored, dict) else json.loads(stored)) < MAX_FIELDS


@pytest.mark.parametrize(
    ("changes", "error"),
    [
        ({"type": "page\nview"}, "type: must be a name"),
        ({"type": "page\u200bview"}, "type: must be a name"),
        ({"id": "e\x1b[31m1"}, "id: must be text"),
        ({"id": "e" * 201}, "id: must be text"),
        ({"properties": {"\x1b[2Jred": 1}}, "properties.'\\x1b[2Jred': a field name is"),
        ({"properties": {"k" * 201: 1}}, f"properties.'{'k' * 40}': a field name is 1 to 200"),
        ({"properties": {"": 1}}, "properties.'': a field name"),
        ({"properties": {f"k{i}": i for i in range(1001)}}, "properties: more than 1000 fields"),
        ({"lead": {"job\u2028title": "VP"}}, "lead.'job\\u2028title': a field name"),
        ({"lead": {f"k{i}": i for i in range(1001)}}, "lead: more than 1000 fields"),
        ({"\x1b]0;owned\x07": 1}, "'\\x1b]0;owned\\x07': unknown field"),  # no terminal codes
    ],
)
def test_names_are_bounded_and_visible(changes: dict[str, Any], error: str) -> None:
    with pytest.raises(InvalidRecord) as caught:
        record(1, {**view("e1"), **changes})
    assert str(caught.value).startswith(error)


def test_a_profile_with_too_many_attributes_is_refused_and_words_stay_words() -> None:
    with pytest.raises(InvalidRecord, match=r"^the record: more than 1000 fields"):
        record(1, {"email": "ana@acme.io", **{f"k{i}": i for i in range(1001)}})
    assert [csv_value(cell) for cell in ("nan", "inf", "-inf", "1e400", "12", "1.5")] == [
        "nan", "inf", "-inf", "1e400", 12, 1.5
    ]  # fmt: skip
