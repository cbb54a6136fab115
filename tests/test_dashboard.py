"""The dashboard without a browser: sign-in and its redirects, escaping, and the figures the pages
show (funnel, conversion, campaign opens/clicks/unsubscribes, a lead's emails) on SQLite and
PostgreSQL, against counts taken straight from the tables."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient

from engine import db as database
from engine.active import ruleset_in_force
from engine.api.app import create_app
from engine.api.sessions import COOKIE
from engine.reports import charts, overview
from tests.dashboard_support import (
    CAMPAIGN,
    MAILED,
    MARKUP_EMAIL,
    MARKUP_NAME,
    TOKEN,
    seed,
    stage_counts,
)


@pytest.fixture
def client(tmp_path: Path) -> Iterator[TestClient]:
    settings = seed(tmp_path / "home", f"sqlite:///{tmp_path / 'n.db'}", leads=60)
    with TestClient(create_app(settings)) as client:
        yield client


def sign_in(client: TestClient, **headers: str) -> str:
    """Signs in through the form; the session cookie's value."""
    signed = client.post("/login", data={"token": TOKEN, "next": "/"}, headers=headers,
                         follow_redirects=False)  # fmt: skip
    assert signed.status_code == 303, signed.text
    return str(signed.cookies[COOKIE])


def test_pages_send_a_visitor_without_the_token_to_sign_in_and_back(client: TestClient) -> None:
    for cookies in ({}, {COOKIE: "wrong"}, {"nurture_token": TOKEN}):
        client.cookies.clear()
        client.cookies.update(cookies)
        response = client.get("/leads/m1@camp.example?x=1", follow_redirects=False)
        assert response.status_code == 303
        assert response.headers["location"] == "/login?next=%2Fleads%2Fm1%40camp.example%3Fx%3D1"
    client.cookies.clear()

    page = client.get("/login?next=/leads/m1@camp.example")
    assert 'name="token"' in page.text and 'value="/leads/m1@camp.example"' in page.text
    refused = client.post("/login", data={"token": "nope", "next": "/"}, follow_redirects=False)
    assert refused.status_code == 401 and "That token is not valid." in refused.text
    assert COOKIE not in refused.cookies

    signed = client.post(
        "/login", data={"token": TOKEN, "next": "/leads/m1@camp.example"}, follow_redirects=False
    )
    assert signed.status_code == 303 and signed.headers["location"] == "/leads/m1@camp.example"
    cookie = signed.headers["set-cookie"].lower()
    assert cookie.startswith(f"{COOKIE}=") and TOKEN.lower() not in cookie
    assert "httponly" in cookie and "samesite=strict" in cookie and "path=/" in cookie
    assert "secure" not in cookie  # plain http here; see the https test
    assert "m1@camp.example" in client.get("/leads/m1@camp.example").text

    out = client.post("/logout", follow_redirects=False)
    assert out.headers["location"] == "/login" and f'{COOKIE}=""' in out.headers["set-cookie"]
    client.cookies.clear()
    assert client.get("/", follow_redirects=False).status_code == 303


def sessions(client: TestClient) -> list[dict[str, Any]]:
    with client.app.state.nurture.db.connect() as conn:  # type: ignore[attr-defined]
        rows = conn.execute(sa.text("SELECT * FROM dashboard_session"))
        return [row._asdict() for row in rows]


def test_a_session_is_a_random_id_kept_hashed_and_signing_out_revokes_it(
    client: TestClient,
) -> None:
    first, second = sign_in(client), sign_in(client)
    assert first != second and TOKEN not in (first, second)
    stored = json.dumps(sessions(client), default=str)
    assert first not in stored and second not in stored and TOKEN not in stored
    client.cookies.clear()
    client.cookies.set(COOKIE, first)
    assert client.post("/logout", follow_redirects=False).status_code == 303
    # The revoked id opens nothing, even sent again by a client that kept it; the other lives.
    client.cookies.clear()
    client.cookies.set(COOKIE, first)
    assert client.get("/", follow_redirects=False).status_code == 303
    client.cookies.clear()
    client.cookies.set(COOKIE, second)
    assert client.get("/", follow_redirects=False).status_code == 200
    assert len(sessions(client)) == 1


def test_a_session_expires_and_ends_when_the_token_changes(tmp_path: Path, db_url: str) -> None:
    settings = seed(tmp_path / "home", db_url, leads=5)
    with TestClient(create_app(settings)) as client:
        session = sign_in(client)
        assert client.get("/", follow_redirects=False).status_code == 200
        db = client.app.state.nurture.db  # type: ignore[attr-defined]
        with db.begin() as conn:
            conn.execute(
                sa.text("UPDATE dashboard_session SET expires_at = :past"),
                {"past": datetime.now(UTC) - timedelta(seconds=1)},
            )
        assert client.get("/", follow_redirects=False).status_code == 303
        fresh = sign_in(client)
    rotated = settings.model_copy(update={"api_token": "a-new-token-0123456789abcdef012345"})
    with TestClient(create_app(rotated)) as client:
        for cookie in (session, fresh):
            client.cookies.set(COOKIE, cookie)
            assert client.get("/", follow_redirects=False).status_code == 303


def test_the_session_cookie_is_no_api_credential(client: TestClient) -> None:
    sign_in(client)
    assert client.get("/", follow_redirects=False).status_code == 200
    assert client.get("/api/leads").status_code == 401
    event = {"email": "csrf@victim.example", "type": "demo_request"}
    for content_type in ("application/json", "text/plain"):
        forged = client.post(
            "/api/events", content=json.dumps(event), headers={"Content-Type": content_type}
        )
        assert forged.status_code == 401
    assert client.get("/leads/csrf@victim.example").status_code == 404


def test_form_posts_from_another_site_are_refused(client: TestClient) -> None:
    for origin in ("https://evil.example", "null", "http://[::1", "http://testserver.evil"):
        forged = client.post("/login", data={"token": TOKEN, "next": "/"},
                             headers={"Origin": origin}, follow_redirects=False)  # fmt: skip
        assert forged.status_code == 403 and COOKIE not in forged.cookies
    forged = client.post("/login", data={"token": TOKEN}, follow_redirects=False,
                         headers={"Referer": "https://evil.example/page"})  # fmt: skip
    assert forged.status_code == 403
    sign_in(client, Origin="http://testserver")
    out = client.post("/logout", headers={"Origin": "https://evil.example"}, follow_redirects=False)
    assert out.status_code == 403
    assert client.get("/", follow_redirects=False).status_code == 200  # still signed in
    assert client.post("/logout", headers={"Origin": "http://testserver"},
                       follow_redirects=False).status_code == 303  # fmt: skip


def test_behind_https_the_cookie_is_secure_and_the_public_origin_is_ours(tmp_path: Path) -> None:
    settings = seed(tmp_path / "home", f"sqlite:///{tmp_path / 'n.db'}", leads=5)
    public = settings.model_copy(update={"public_url": "https://nurture.acme.io/"})
    with TestClient(create_app(public)) as client:
        signed = client.post("/login", data={"token": TOKEN},
                             headers={"Origin": "https://nurture.acme.io"},
                             follow_redirects=False)  # fmt: skip
        assert signed.status_code == 303
        assert "secure" in signed.headers["set-cookie"].lower()


def test_sign_in_only_returns_to_a_page_of_this_site(client: TestClient) -> None:
    for target in ("https://evil.example/", "//evil.example/x", "/\\evil.example"):
        response = client.post(
            "/login", data={"token": TOKEN, "next": target}, follow_redirects=False
        )
        assert response.headers["location"] == "/"


def test_the_bearer_token_opens_the_pages_too(client: TestClient) -> None:
    response = client.get("/", headers={"Authorization": f"Bearer {TOKEN}"})
    assert response.status_code == 200 and "Funnel" in response.text


def test_markup_in_lead_data_and_addresses_is_shown_as_text(client: TestClient) -> None:
    sign_in(client)
    page = client.get(f"/leads/{MARKUP_EMAIL}")
    assert page.status_code == 200
    assert MARKUP_NAME not in page.text and "<b>Evil</b>" not in page.text
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page.text
    assert "&lt;b&gt;Evil&lt;/b&gt;" in page.text

    missing = client.get("/leads/%3Cimg%20src%3Dx%3E@example.com")
    assert missing.status_code == 404
    assert "<img" not in missing.text and "&lt;img src=x&gt;@example.com" in missing.text


def test_a_lead_page_shows_its_emails_and_what_the_lead_did_with_them(client: TestClient) -> None:
    sign_in(client)
    page = client.get("/leads/m1@camp.example").text
    assert "Spring is here" in page and CAMPAIGN in page
    assert '<span class="chip">opened</span>' in page
    assert client.get("/leads", params={"email": " M1@camp.example "}).url.path == (
        "/leads/M1@camp.example"
    )
    assert client.get("/leads/nobody@example.com").status_code == 404


def test_named_scores_on_the_overview_and_a_line_each_on_the_lead_page(
    client: TestClient, tmp_path: Path
) -> None:
    client.cookies.set(COOKIE, sign_in(client))
    db = database.connect(f"sqlite:///{tmp_path / 'n.db'}")
    with db.connect() as conn:
        counts: dict[str, int] = dict(
            conn.execute(
                sa.text("SELECT band, COUNT(*) FROM lead_named_score WHERE name = 'health' "
                        "GROUP BY band")
            ).all()
        )  # fmt: skip
        customer, changes = conn.execute(
            sa.text(
                "SELECT l.email, COUNT(s.id) FROM lead l JOIN score_ledger s ON s.lead_id = l.id "
                "WHERE l.stage = 'customer' AND s.component IN ('value', 'loyalty') "
                "GROUP BY l.email ORDER BY l.email LIMIT 1"
            )
        ).one()
    assert sum(counts.values()) == int(
        db.connect().execute(sa.text("SELECT COUNT(*) FROM lead")).scalar_one()
    )
    page = client.get("/").text
    tiles = dict(
        re.findall(r'data-band="(at_risk|steady|loyal)">\s*<div class="n">([\d,]+)</div>', page)
    )
    assert {band: int(n.replace(",", "")) for band, n in tiles.items()} == {
        band: counts.get(band, 0) for band in ("at_risk", "steady", "loyal")
    }
    lead = client.get(f"/leads/{customer}").text
    health = lead.split('id="score-chart-health"')[1].split("</section>")[0]
    assert health.count('class="score-point"') == changes
    assert 'class="named-total" data-score="health"' in lead


def cells(page: str, row_class: str, cell: str) -> dict[str, str]:
    """Per row of a table (its data-* key): the text of the cell with class ``cell``."""
    found = re.findall(
        rf'<tr class="{row_class}" data-{row_class}="([^"]+)">.*?<td class="num {cell}">(.*?)</td>',
        page,
        flags=re.S,
    )
    return {key: re.sub(r"<[^>]+>", "", value).strip() for key, value in found}


def test_the_pipeline_page_shows_the_report_and_its_bottleneck(client: TestClient) -> None:
    sign_in(client)
    page = client.get("/pipeline").text
    db = database.connect(str(client.app.state.nurture.db.url))  # type: ignore[attr-defined]
    now = {stage: int(n.replace(",", "")) for stage, n in cells(page, "stage", "leads").items()}
    assert {stage: n for stage, n in now.items() if n} == stage_counts(db)
    entered = cells(page, "stage", "entered")
    assert entered["subscriber"] == f"{sum(stage_counts(db).values()):,}"  # all start there
    stuck = {s: int(v.split()[0]) for s, v in cells(page, "stage", "stuck").items() if v != "–"}
    worst = max(stuck, key=lambda stage: stuck[stage])
    assert stuck[worst] > 0
    assert re.search(
        rf'data-stage="{worst}">\s*<td>{worst} <span class="chip neg bottleneck"', page
    )
    assert page.count("bottleneck</span>") == 1
    assert 'id="cohorts"' not in page

    with_cohorts = client.get("/pipeline", params={"cohort": "true", "stuck_days": "1000"}).text
    months = re.findall(r'<tr class="cohort" data-cohort="(\d{4}-\d{2})"><td>[^<]*</td>'
                        r'<td class="num">([\d,]+)</td>', with_cohorts)  # fmt: skip
    assert months and sum(int(n.replace(",", "")) for _, n in months) == sum(now.values())
    assert "bottleneck" not in with_cohorts  # nobody has been stuck for 1,000 days

    future = client.get("/pipeline", params={"since": "2100-01-01"}).text
    assert set(cells(future, "stage", "entered").values()) == {"0"}


def test_the_pipeline_page_names_a_bad_option(client: TestClient) -> None:
    sign_in(client)
    bad = client.get("/pipeline", params={"since": "last tuesday"})
    assert bad.status_code == 400
    assert "since: not an ISO 8601 time: &#39;last tuesday&#39;" in bad.text
    assert "stuck_days:" in client.get("/pipeline", params={"stuck_days": "-3"}).text


def test_figures_on_both_databases(tmp_path: Path, db_url: str) -> None:
    settings = seed(tmp_path / "home", db_url, leads=80)
    db = database.connect(db_url)
    ruleset = ruleset_in_force(db, settings).compiled.ruleset

    funnel = overview.funnel(db, ruleset)
    counts = stage_counts(db)
    assert {row["stage"]: row["leads"] for row in funnel["stages"] if row["leads"]} == counts
    assert funnel["total"] == sum(counts.values())
    reached = sa.text(
        "SELECT COUNT(DISTINCT lead_id) FROM stage_history WHERE to_stage IN :stages"
    ).bindparams(sa.bindparam("stages", expanding=True))
    with db.connect() as conn:

        def ever_reached(stages: tuple[str, ...]) -> int:
            return int(conn.execute(reached, {"stages": list(stages)}).scalar_one())

        for i, row in enumerate(funnel["stages"][: len(ruleset.stages) - 1]):
            later = ruleset.stages[i:]
            assert row["reached"] == ever_reached(later)
            expected = ever_reached(later[1:]) / ever_reached(later) if row["reached"] else None
            assert row["conversion"] == expected
    assert funnel["stages"][0]["reached"] == funnel["total"]  # every lead starts in the funnel

    figures = {row["campaign"]: row for row in overview.campaigns(db)}
    spring = figures[CAMPAIGN]
    assert (spring["sent"], spring["recipients"]) == (len(MAILED), len(MAILED))
    assert (spring["opened"], spring["clicked"], spring["unsubscribed"]) == (2, 1, 1)
    assert spring["opened_rate"] == 0.5

    hot = overview.hot_leads(db, ruleset, limit=5)
    assert hot and all(lead["temperature"] == "hot" for lead in hot)
    assert [lead["score"] for lead in hot] == sorted((lead["score"] for lead in hot), reverse=True)
    for lead in hot:
        assert lead["reasons"] and 1 <= len(lead["events"]) <= 3
        times = [event["occurred_at"] for event in lead["events"]]
        assert times == sorted(times, reverse=True)

    page = overview.lead_page(db, "m3@camp.example")
    assert page is not None
    assert [(e["campaign"], e["reactions"]) for e in page["emails"]] == [
        (CAMPAIGN, ["unsubscribed"])
    ]


def test_the_score_chart_steps_through_each_change_and_marks_the_bands() -> None:
    t0 = datetime(2026, 10, 1, tzinfo=UTC)
    series = [(t0, 20), (t0 + timedelta(days=5), 50), (t0 + timedelta(days=10), 45)]
    chart = charts.score_chart(
        series, t0 + timedelta(days=20), [("cold", 0), ("warm", 40), ("hot", 70)]
    )
    assert [p.value for p in chart.points] == [20, 50, 45]
    xs = [p.x for p in chart.points]
    assert xs[0] == chart.left and xs == sorted(xs)
    assert xs[1] - xs[0] == pytest.approx(xs[2] - xs[1], abs=0.2)  # time is to scale
    ys = [p.y for p in chart.points]
    assert ys[1] < ys[2] < ys[0]  # higher score, higher on the page
    assert chart.path.startswith(f"M{chart.left},{chart.bottom}")  # from 0 before any change
    assert chart.path.endswith(f"H{chart.right}")  # level until the end
    assert [b.label for b in chart.bands] == ["warm ≥ 40", "hot ≥ 70"]
    assert chart.top <= min(b.at for b in chart.bands)  # the hot line is inside the plot
    assert [t.label for t in chart.x_ticks] == ["2026-10-01", "2026-10-21"]


def test_funnel_bars_are_to_scale_and_an_empty_stage_has_none() -> None:
    chart = charts.bar_chart([("subscriber", 200), ("lead", 50), ("mql", 1), ("sql", 0)])
    widths = [bar.width for bar in chart.bars]
    assert widths[0] == chart.plot and widths[1] == chart.plot / 4
    assert widths[2] >= 2 and widths[3] == 0  # one lead is still visible; none is nothing
    assert [bar.y for bar in chart.bars] == [0, chart.row, 2 * chart.row, 3 * chart.row]
