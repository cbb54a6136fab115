"""The HTTP API through FastAPI's TestClient, on SQLite and PostgreSQL: what a client of
``/api/...`` sees (per-item ingest outcomes, upserts, lead detail, limits, auth), and that
everything it stores goes through the same ingest path as ``nurture ingest``."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
import uvicorn
from fastapi.testclient import TestClient

from engine import db as database
from engine.api.app import create_app
from engine.settings import Settings
from tests.helpers import API_TOKEN, api_home, nurture, ruleset_text, run_cli

TOKEN = API_TOKEN
AUTH = {"Authorization": f"Bearer {TOKEN}"}
RULESET = ruleset_text("api-test")
pytestmark = pytest.mark.home(rulesets=["api-test"])


@pytest.fixture
def api(home: Path, db_url: str) -> Iterator[TestClient]:
    settings = Settings(home=home, database_url=db_url, api_token=TOKEN)
    with TestClient(create_app(settings), headers=AUTH) as client:
        yield client


def limited(home: Path, **limits: Any) -> TestClient:
    settings = Settings(
        home=home,
        database_url=f"sqlite:///{home / 'limits.db'}",
        api_token=TOKEN,
        **limits,
    )
    return TestClient(create_app(settings), headers=AUTH)


def view(email: str = "ana@acme.io", key: str | None = "v1", url: str = "/pricing") -> Any:
    event: dict[str, Any] = {"email": email, "type": "page_view", "properties": {"url": url}}
    if key is not None:
        event["id"] = key
    return event


def test_events_answer_for_each_item_and_score_once(api: TestClient) -> None:
    batch = [view(key="v1"), view(key="v1"), view("not-an-email", key="v3"), view(key="v2")]
    response = api.post("/api/events", json=batch)
    assert response.status_code == 200, response.text
    body = response.json()
    assert (body["accepted"], body["duplicates"]) == (2, 1)
    assert body["rejected"] == [{"index": 2, "error": "email: not an email address"}]
    assert [(i["index"], i["status"], i["id"]) for i in body["items"]] == [
        (0, "accepted", "v1"),
        (1, "duplicate", "v1"),
        (2, "rejected", None),
        (3, "accepted", "v2"),
    ]
    again = api.post("/api/events", json=view(key="v2")).json()
    assert again["items"] == [{"index": 0, "status": "duplicate", "id": "v2", "error": None}]
    lead = api.get("/api/leads/ana@acme.io").json()
    assert lead["scores"] == {"fit": 0, "engagement": 20}
    assert [(r["rule"], r["delta"], r["event_id"]) for r in lead["ledger"]] == [
        ("pricing-page", 10, "v1"),
        ("pricing-page", 10, "v2"),
    ]


def test_concurrent_requests_score_each_event_once(api: TestClient) -> None:
    """Eight clients at once, each request holding an event the next request repeats."""

    def send(i: int) -> Any:
        batch = [
            view(f"l{i % 4}@acme.io", key=f"c{i}"),
            view(f"l{(i + 1) % 4}@acme.io", f"c{(i + 1) % 16}"),
        ]
        return api.post("/api/events", json=batch).json()

    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(send, range(16)))
    assert sum(a["accepted"] for a in answers) == 16
    assert sum(a["duplicates"] for a in answers) == 16
    for n in range(4):
        lead = api.get(f"/api/leads/l{n}@acme.io").json()
        assert lead["score"] == 40 == sum(row["delta"] for row in lead["ledger"])


def test_an_event_without_id_gets_a_derived_one_and_stays_idempotent(api: TestClient) -> None:
    first = api.post("/api/events", json=view(key=None)).json()["items"][0]
    second = api.post("/api/events", json=view(key=None)).json()["items"][0]
    assert first["status"] == "accepted" and second["status"] == "duplicate"
    assert first["id"] == second["id"] and first["id"].startswith("event:")


def test_rejections_name_the_field(api: TestClient) -> None:
    batch = [
        {"email": "ana@acme.io"},
        {"email": "ana@acme.io", "type": "page_view", "occurred_at": "yesterday"},
        {"email": "ana@acme.io", "type": "page_view", "url": "/x"},
        "page_view",
    ]
    body = api.post("/api/events", json=batch).json()
    errors = [r["error"] for r in body["rejected"]]
    assert errors[0].startswith("type: missing") and "/api/leads" in errors[0]
    assert errors[1].startswith("occurred_at:")
    assert errors[2].startswith("url: unknown field")
    assert errors[3] == "a record must be a JSON object"
    assert body["accepted"] == 0
    assert api.get("/api/leads").json() == []


def test_what_the_database_could_not_store_is_rejected_not_a_500(api: TestClient) -> None:
    body = (
        '[{"email": "a\\u0000b@c.io", "type": "page_view"},'
        ' {"email": "a@c.io", "type": "page_view", "properties": {"n": NaN}},'
        ' {"email": "a@c.io", "type": "page_view", "lead": {"company": "\\ud800"}},'
        ' {"email": "a@c.io", "type": "page_view", "lead": {"size": 1e400}}]'
    )
    answer = api.post("/api/events", content=body).json()
    assert [r["error"] for r in answer["rejected"]] == [
        "text must not contain NUL characters",
        "numbers must be finite (no NaN or Infinity)",
        "text must be valid Unicode (a lone surrogate escape)",
        "numbers must be finite (no NaN or Infinity)",
    ]
    assert api.get("/api/leads").json() == []


def test_a_nul_in_a_query_or_path_parameter_is_a_422_naming_it(api: TestClient) -> None:
    listed = api.get("/api/leads?stage=%00")
    assert listed.status_code == 422
    assert listed.json()["detail"][0]["loc"] == ["query", "stage"]
    assert api.get("/api/leads/a%00b@c.io").json()["detail"][0]["loc"] == ["path", "email"]


def test_a_bad_body_is_refused_with_a_reason(api: TestClient) -> None:
    broken = api.post("/api/events", content=b'{"email": ', headers={"Content-Type": "text/json"})
    assert broken.status_code == 400
    assert "not valid JSON" in broken.json()["detail"]
    assert api.post("/api/events", json=42).status_code == 422
    assert api.post("/api/events", content=b"\xff\xfe").status_code == 400


@pytest.mark.parametrize("path", ["/api/events", "/api/leads"])
def test_json_nested_too_deep_is_a_400_not_a_500(api: TestClient, path: str) -> None:
    response = api.post(path, content="[" * 100_000 + "]" * 100_000)
    assert response.status_code == 400
    assert response.json()["detail"] == "the body is not valid JSON: nested deeper than 64 levels"


def test_api_needs_the_token_but_health_and_metrics_do_not(api: TestClient) -> None:
    calls = [
        ("post", "/api/events"),
        ("post", "/api/leads"),
        ("get", "/api/leads"),
        ("get", "/api/leads/ana@acme.io"),
        ("get", "/api/pipeline"),
        ("post", "/api/rulesets/validate"),
    ]
    for method, path in calls:
        for headers in ({"Authorization": ""}, {"Authorization": "Bearer wrong"}):
            response = api.request(method, path, headers=headers, json={})
            assert response.status_code == 401, (method, path)
            assert response.headers["WWW-Authenticate"] == "Bearer"
    assert api.get("/healthz", headers={"Authorization": ""}).status_code == 200
    assert api.get("/metrics", headers={"Authorization": ""}).status_code == 200
    # The token in a cookie (as the dashboard once kept it) is no credential: bearer only.
    api.cookies.set("nurture_token", TOKEN)
    assert api.get("/api/leads", headers={"Authorization": ""}).status_code == 401


def test_oversized_requests_are_refused_whole_naming_the_limit(home: Path) -> None:
    with limited(home, max_body_bytes=1000, max_events_per_request=3) as client:
        big = [view(key=f"big-{i}", url="/pricing" + "x" * 100) for i in range(12)]
        response = client.post("/api/events", json=big)
        assert response.status_code == 413
        assert response.json()["detail"] == (
            "the body is larger than 1000 bytes (NURTURE_MAX_BODY_BYTES)"
        )
        # A body sent without a length (chunked) is cut off while streaming, too.
        chunked = client.post("/api/events", content=iter([b"[" + b" " * 600] * 3))
        assert chunked.status_code == 413
        many = client.post("/api/events", json=[view(key=f"k{i}") for i in range(4)])
        assert many.status_code == 413
        assert "at most 3 (NURTURE_MAX_EVENTS_PER_REQUEST)" in many.json()["detail"]
        assert client.get("/api/leads").json() == []
        assert (
            client.post("/api/events", json=[view(key=f"k{i}") for i in range(3)]).json()[
                "accepted"
            ]
            == 3
        )


def test_lead_upsert_by_email_scores_as_a_profile_update(api: TestClient) -> None:
    created = api.post(
        "/api/leads",
        json={"email": " Ana@Acme.IO ", "job_title": "VP Marketing", "company": "Acme"},
    )
    assert created.status_code == 200, created.text
    lead = created.json()
    assert lead["email"] == "ana@acme.io"
    assert lead["scores"] == {"fit": 20, "engagement": 0}
    assert lead["attributes"]["company"] == "Acme"
    assert lead["stage_history"] == [
        {"from": None, "to": "subscriber", "rule": "new-lead", "at": lead["stage_entered_at"]}
    ]
    api.post("/api/leads", json={"email": "ana@acme.io", "company": "Acme Corp"})
    # Re-sending an earlier profile is an update too, not a duplicate of the first one.
    again = api.post("/api/leads", json={"email": "ana@acme.io", "company": "Acme"}).json()
    expected = {"job_title": "VP Marketing", "company": "Acme", "domain": "acme.io"}
    assert again["attributes"] == expected
    assert [row["rule"] for row in again["ledger"]] == ["senior-title"]  # `limit: once` held
    # With a client id a retried request is idempotent.
    for _ in range(2):
        api.post("/api/leads", json={"email": "ana@acme.io", "id": "crm-7", "company": "X"})
    assert api.get("/api/leads/ana@acme.io").json()["attributes"]["company"] == "X"


@pytest.mark.parametrize(
    ("body", "error"),
    [
        ({"company": "Acme"}, "email: missing"),
        ({"email": "ana@acme.io", "type": "page_view"}, "type: a lead profile has no type"),
        ({"email": "ana@acme.io", "score": 99}, "score: computed by the ruleset"),
        ([{"email": "ana@acme.io"}], "the body must be a JSON object"),
    ],
)
def test_a_bad_profile_is_refused(home: Path, body: Any, error: str) -> None:
    with limited(home) as client:
        response = client.post("/api/leads", json=body)
        assert response.status_code == 422
        assert response.json()["detail"].startswith(error)


def test_lead_list_filters_and_pages(api: TestClient) -> None:
    api.post("/api/leads", json={"email": "vp@a.io", "job_title": "VP Sales"})
    events = [{"email": "hot@b.io", "type": "demo_request", "id": "d1"}]
    events += [view("warm@c.io", key=f"w{i}") for i in range(4)]
    api.post("/api/events", json=events)
    every = api.get("/api/leads").json()
    assert [(r["email"], r["score"], r["temperature"]) for r in every] == [
        ("hot@b.io", 50, "warm"),
        ("warm@c.io", 40, "warm"),
        ("vp@a.io", 20, "cold"),
    ]
    assert [r["email"] for r in api.get("/api/leads?temperature=cold").json()] == ["vp@a.io"]
    assert [r["email"] for r in api.get("/api/leads?stage=lead").json()] == ["hot@b.io"]
    assert [r["email"] for r in api.get("/api/leads?limit=1&offset=1").json()] == ["warm@c.io"]
    assert api.get("/api/leads?limit=0").status_code == 422


def test_lead_detail_and_its_errors(api: TestClient) -> None:
    api.post("/api/events", json={"email": "ana@acme.io", "type": "demo_request", "id": "d1"})
    lead = api.get("/api/leads/ANA@acme.io").json()
    assert (lead["score"], lead["stage"]) == (50, "lead")
    assert lead["stage_history"][-1] == {
        "from": "subscriber",
        "to": "lead",
        "rule": "demo",
        "at": lead["ledger"][0]["at"],
    }
    assert lead["reasons"] == [{"rule": "demo", "points": 50, "times": 1}]
    assert lead["recent_events"][0]["id"] == "d1"
    missing = api.get("/api/leads/nobody@acme.io")
    assert missing.status_code == 404 and "nobody" not in missing.text
    assert api.get("/api/leads/not-an-email").status_code == 422


def test_pipeline_counts_leads_per_stage(api: TestClient) -> None:
    api.post("/api/events", json=[view("a@x.io"), {"email": "b@x.io", "type": "demo_request"}])
    stages = {s["stage"]: s["leads"] for s in api.get("/api/pipeline").json()["stages"]}
    assert stages["subscriber"] == 1 and stages["lead"] == 1 and stages["customer"] == 0
    assert list(stages)[-2:] == ["disqualified", "unsubscribed"]


def test_pipeline_takes_the_report_options_and_names_a_bad_one(api: TestClient) -> None:
    api.post("/api/events", json=[{"email": "b@x.io", "type": "demo_request"}])
    report = api.get("/api/pipeline", params={"since": "2000-01-01", "cohort": "true",
                                              "stuck_days": ["lead=7"]}).json()  # fmt: skip
    assert report["period"]["since"].startswith("2000-01-01")
    assert report["stuck_days"]["lead"] == 7 and report["cohorts"] is not None
    bad = api.get("/api/pipeline", params={"since": "last tuesday"})
    assert bad.status_code == 422 and "since" in bad.json()["detail"]
    assert api.get("/api/pipeline", params={"stuck_days": "nope=3"}).status_code == 422
    ages = api.get("/api/pipeline", params={"stuck_days": "739943"})  # back past year 1
    assert ages.status_code == 422 and "at most 100000 days" in ages.json()["detail"]


def test_validate_reports_lines_and_changes_nothing(api: TestClient, db_url: str) -> None:
    good = api.post(
        "/api/rulesets/validate",
        content=RULESET.replace("    limit: once\n", ""),
        headers={"Content-Type": "application/yaml"},
    ).json()
    assert good["valid"] and good["ruleset"] == "api-test" and good["rules"] == 3
    assert [w["line"] for w in good["warnings"]] == [7]
    assert "limit: once" in good["warnings"][0]["message"]
    broken = RULESET.replace("ruleset: api-test", "ruleset: other").replace(
        "then: {score: {engagement: 50}, stage: lead}", "then: {score: {engagment: 50}}"
    )
    bad = api.post("/api/rulesets/validate", content=broken).json()
    assert not bad["valid"]
    assert [p["line"] for p in bad["problems"]] == [16]
    assert "engagment" in bad["problems"][0]["message"]
    syntax = api.post("/api/rulesets/validate", content="rules: [\n  - a: {\n").json()
    assert syntax["problems"][0]["message"].startswith("YAML syntax")
    # The ruleset in force is the file's; nothing validated was recorded or applied.
    api.post("/api/events", json={"email": "ana@acme.io", "type": "demo_request", "id": "d1"})
    assert api.get("/api/leads/ana@acme.io").json()["stage"] == "lead"
    with database.connect(db_url).connect() as conn:
        names = set(conn.execute(sa.text("SELECT name FROM ruleset_apply")).scalars())
    assert names == {"api-test"}


def metric(text: str, name: str) -> float:
    found = re.search(rf"^{re.escape(name)} (\S+)$", text, re.MULTILINE)
    return float(found.group(1)) if found else 0.0


def test_health_and_metrics(api: TestClient) -> None:
    assert api.get("/healthz").json() == {"status": "ok", "reason": None}
    accepted = 'nurture_events_ingested_total{outcome="accepted"}'
    fired = 'nurture_rules_fired_total{rule="pricing-page"}'
    before = api.get("/metrics").text
    api.post("/api/events", json=[view(key="m1"), view(key="m1"), view(key="m2")])
    after = api.get("/metrics")
    assert after.headers["content-type"].startswith("text/plain")
    assert metric(after.text, accepted) - metric(before, accepted) == 2
    assert metric(after.text, fired) - metric(before, fired) == 2
    for name in (
        "nurture_emails_total",
        "nurture_alerts_sent_total",
        "nurture_alert_latency_seconds",
    ):
        assert f"# TYPE {name} " in after.text
    assert "ana@acme.io" not in after.text


def test_health_is_503_with_the_reason_when_the_database_is_gone(
    home: Path, tmp_path: Path
) -> None:
    settings = Settings(home=home, api_token=TOKEN)
    gone = database.connect(f"sqlite:///{tmp_path / 'missing' / 'nurture.db'}")
    with TestClient(create_app(settings, gone)) as client:
        response = client.get("/healthz")
    assert response.status_code == 503
    assert response.json() == {
        "status": "unavailable",
        "reason": "database: unable to open database file",
    }


def test_openapi_documents_auth_and_errors(api: TestClient) -> None:
    spec = api.get("/openapi.json").json()
    events = spec["paths"]["/api/events"]["post"]
    assert {"200", "400", "401", "413", "422"} <= set(events["responses"])
    assert events["security"] == [{"HTTPBearer": []}]
    assert "404" in spec["paths"]["/api/leads/{email}"]["get"]["responses"]
    assert "security" not in spec["paths"]["/healthz"]["get"]


def test_serve_warns_when_the_sendgrid_webhook_takes_unsigned_calls(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    quiet, _ = run_cli(monkeypatch, api_home(tmp_path), ["serve"])
    assert "warning" not in quiet.output
    insecure = {"NURTURE_SENDGRID_WEBHOOK_INSECURE": "1"}
    result, _ = run_cli(monkeypatch, api_home(tmp_path), ["serve", "--port", "8123"], **insecure)
    assert result.exit_code == 0, result.output
    assert "warning: NURTURE_SENDGRID_WEBHOOK_INSECURE=1" in " ".join(result.output.split())


def test_serve_says_where_the_token_is_never_the_token(
    home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    started: list[tuple[Any, dict[str, Any]]] = []
    monkeypatch.setattr(uvicorn, "run", lambda app, **options: started.append((app, options)))
    monkeypatch.setenv("NURTURE_HOME", str(home))
    monkeypatch.setenv("NURTURE_DATABASE_URL", f"sqlite:///{tmp_path / 'serve.db'}")
    result = nurture("serve", "--port", "8123")
    assert result.exit_code == 0, result.output
    token = (home / ".nurture-token").read_text().strip()
    assert f"the API token is in {home / '.nurture-token'}" in result.output
    assert token not in result.output
    app, options = started[0]
    assert (options["host"], options["port"]) == ("127.0.0.1", 8123)
    assert options["log_config"] is None  # uvicorn logs through nurture's logging set-up
    client = TestClient(app)
    assert client.get("/api/leads").status_code == 401
    assert client.get("/api/leads", headers={"Authorization": f"Bearer {token}"}).json() == []


@pytest.mark.parametrize("page", ["/docs", "/redoc"])
def test_the_api_reference_needs_nothing_from_the_internet(api: TestClient, page: str) -> None:
    html = api.get(page, headers={"Authorization": ""}).text
    assert re.findall(r"\w+://\S+", html) == []  # no CDN, no web fonts
    assets = re.findall(r"""(?:src|href)=["']([^"']+)["']""", html)
    assert len(assets) >= 2 and all(url.startswith("/") for url in assets), assets
    for url in assets:
        served = api.get(url, headers={"Authorization": ""})
        assert served.status_code == 200 and len(served.content) > 1000, url
    assert api.get("/openapi.json").json()["info"]["title"] == "nurture"


def test_an_applied_ruleset_scores_api_events_within_seconds(
    api: TestClient, home: Path, db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    def score_after(key: str) -> int:
        assert api.post("/api/events", json=view(key=key)).json()["accepted"] == 1
        return int(api.get("/api/leads/ana@acme.io").json()["score"])

    assert score_after("p1") == 10
    rules = home / "rulesets" / "api-test.yaml"
    rules.write_text(rules.read_text().replace("engagement: 10}", "engagement: 25}"))
    time.sleep(1.1)  # the configuration in force is looked up at most once a second
    assert score_after("p2") == 20  # an edited file changes nothing live
    monkeypatch.setenv("NURTURE_HOME", str(home))
    monkeypatch.setenv("NURTURE_DATABASE_URL", db_url)
    applied = nurture("rules", "apply", "-m", "more for a view")
    assert applied.exit_code == 0, applied.output
    time.sleep(3.5)  # each process re-reads the version in force every RECHECK (2 s) seconds
    # The two earlier views rescored under the applied version, then a third scored under it.
    assert score_after("p3") == 75
