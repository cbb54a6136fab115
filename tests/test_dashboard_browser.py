"""The dashboard in a real browser: Debian's headless Chromium, driven by Playwright, against the
app served by uvicorn on 127.0.0.1 over a seeded SQLite database. Checks what a person would:
a wrong token is refused and the right one lets them in, the funnel chart's counts, a hot lead
with its reasons leading to its page and score chart, the campaign figures, the pipeline page
with a period and cohorts. Screenshots land in ``test-artifacts/``.

Without Chromium (or Playwright) these tests skip, unless ``NURTURE_REQUIRE_BROWSER=1`` (as CI
sets it), in which case they fail."""

from __future__ import annotations

import os
import shutil
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
import sqlalchemy as sa
import uvicorn

from engine import db as database
from engine.api.app import create_app
from tests.dashboard_support import CAMPAIGN, TOKEN, seed, stage_counts
from tests.helpers import ROOT

CHROMIUM = os.environ.get("NURTURE_CHROMIUM", "/usr/bin/chromium")
# Headless on a machine with no network of its own: no GPU, no sandbox (root), no phoning home.
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
ARTIFACTS = ROOT / "test-artifacts"


def _browser_missing() -> str | None:
    if shutil.which(CHROMIUM) is None:
        return f"no Chromium at {CHROMIUM} (apt-get install chromium)"
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "Playwright for Python is not installed (pip install -e '.[dev]')"
    return None


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, sa.Engine]]:
    """The app on a free local port, in a thread, over a freshly seeded database."""
    folder = tmp_path_factory.mktemp("dashboard")
    url = f"sqlite:///{folder / 'nurture.db'}"
    settings = seed(folder / "home", url, leads=300)
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    config = uvicorn.Config(create_app(settings), log_level="warning")
    running = uvicorn.Server(config)
    thread = threading.Thread(target=running.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not running.started:
        assert time.monotonic() < deadline and thread.is_alive(), "uvicorn did not start"
        time.sleep(0.05)
    yield f"http://127.0.0.1:{sock.getsockname()[1]}", database.connect(url)
    running.should_exit = True
    thread.join(10)
    sock.close()


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    problem = _browser_missing()
    if problem is not None:
        if os.environ.get("NURTURE_REQUIRE_BROWSER") == "1":
            pytest.fail(f"browser tests required (NURTURE_REQUIRE_BROWSER=1): {problem}")
        pytest.skip(problem)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser: Any, server: tuple[str, sa.Engine]) -> Iterator[Any]:
    context = browser.new_context(base_url=server[0], viewport={"width": 1280, "height": 900})
    context.set_default_timeout(15_000)
    yield context.new_page()
    context.close()


def sign_in(page: Any, token: str) -> None:
    page.goto("/")
    page.fill("#token", token)
    page.click("button:has-text('Sign in')")
    page.wait_for_load_state()


def test_a_wrong_token_is_refused_and_the_right_one_signs_in(page: Any) -> None:
    page.goto("/leads/m1@camp.example")
    assert page.url.endswith("/login?next=%2Fleads%2Fm1%40camp.example")
    page.fill("#token", "not-the-token")
    page.click("button:has-text('Sign in')")
    assert page.locator("[role=alert]").inner_text() == "That token is not valid."
    assert page.context.cookies() == []

    page.fill("#token", TOKEN)
    page.click("button:has-text('Sign in')")
    page.wait_for_url("**/leads/m1@camp.example")
    assert page.locator("h1").inner_text().startswith("m1@camp.example")
    [cookie] = page.context.cookies()
    assert (cookie["name"], cookie["httpOnly"], cookie["sameSite"]) == (
        "nurture_session",
        True,
        "Strict",
    )
    assert page.evaluate("document.cookie") == ""  # out of reach of scripts

    page.click("button:has-text('Sign out')")
    page.wait_for_url("**/login")
    page.goto("/")
    assert "/login" in page.url


def test_the_funnel_chart_shows_the_leads_in_each_stage(
    page: Any, server: tuple[str, sa.Engine]
) -> None:
    sign_in(page, TOKEN)
    counts = stage_counts(server[1])
    bars = page.locator("svg.funnel g.stage")
    shown = {
        bars.nth(i).get_attribute("data-stage"): int(
            bars.nth(i).locator("text.count").text_content().replace(",", "")
        )
        for i in range(bars.count())
    }
    assert {stage: n for stage, n in shown.items() if n} == counts
    assert list(shown)[:4] == ["subscriber", "lead", "mql", "sql"]  # the ruleset's order
    first = page.locator("svg.funnel g[data-stage=subscriber] text.conversion").text_content()
    assert first.startswith("→ ") and first.endswith("% on to lead")
    widths = [float(bars.nth(i).locator("rect").get_attribute("width")) for i in range(4)]
    counts_in_order = [shown[s] for s in ("subscriber", "lead", "mql", "sql")]
    for width, n in zip(widths, counts_in_order, strict=True):  # bar length ∝ leads
        assert width / max(widths) == pytest.approx(n / max(counts_in_order), abs=0.01)
    with server[1].connect() as conn:
        query = sa.text("SELECT temperature, COUNT(*) FROM lead GROUP BY temperature")
        bands: dict[str, int] = dict(conn.execute(query).all())
    for band, n in bands.items():
        tile = page.locator(f".tile[data-band={band}] .n").inner_text()
        assert int(tile.replace(",", "")) == n
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "dashboard.png"), full_page=True)


def test_a_hot_lead_shows_its_reasons_and_opens_its_page_with_a_score_chart(
    page: Any, server: tuple[str, sa.Engine]
) -> None:
    sign_in(page, TOKEN)
    row = page.locator("#hot-leads tr.hot-lead").first
    email = row.get_attribute("data-email")
    with server[1].connect() as conn:
        top = conn.execute(
            sa.text(
                "SELECT email, score FROM lead WHERE temperature = 'hot' "
                "AND stage NOT IN ('disqualified', 'unsubscribed') ORDER BY score DESC, id LIMIT 1"
            )
        ).one()
        net: dict[str, int] = dict(
            conn.execute(
                sa.text(
                    "SELECT rule, SUM(delta) FROM score_ledger WHERE lead_id = "
                    "(SELECT id FROM lead WHERE email = :e) GROUP BY rule"
                ),
                {"e": email},
            ).all()
        )
        changes = conn.execute(
            sa.text(
                "SELECT COUNT(*) FROM score_ledger WHERE lead_id = "
                "(SELECT id FROM lead WHERE email = :e)"
            ),
            {"e": email},
        ).scalar_one()
    assert (email, int(row.locator("td").first.inner_text())) == tuple(top)
    shown = [text.rsplit(" +", 1) for text in row.locator(".reason").all_inner_texts()]
    assert len(shown) == 3
    assert all(net[rule] == int(points) for rule, points in shown)  # the ledger's own sums
    assert int(shown[0][1]) == max(net.values())
    assert [int(p) for _, p in shown] == sorted((int(p) for _, p in shown), reverse=True)

    row.locator(f"a:has-text('{email}')").click()
    page.wait_for_url(f"**/leads/{email}")
    assert page.locator("h1").inner_text().startswith(email)
    assert page.locator("#profile .score").inner_text() == str(top[1])
    chart = page.locator("#score-chart svg.score-chart")
    assert chart.is_visible()
    # One line per score: the lead score's points are its components' changes (a prospect
    # has no changes of its health, whose chart is a flat line at 0).
    health = page.locator("#score-chart-health svg.score-chart")
    assert health.is_visible() and health.locator("circle.score-point").count() == 0
    assert chart.locator("circle.score-point").count() == changes
    assert chart.locator("path.score-line").get_attribute("d").startswith("M")
    assert page.locator("#ledger tbody tr").count() == min(changes, 200)
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "lead.png"), full_page=True)


def test_campaign_figures(page: Any) -> None:
    sign_in(page, TOKEN)
    row = page.locator(f"#campaigns tr[data-campaign='{CAMPAIGN}']")
    figures = {
        name: row.locator(f"td.{name}").inner_text()
        for name in ("sent", "opened", "clicked", "unsubscribed")
    }
    assert figures == {"sent": "4", "opened": "2 50%", "clicked": "1 25%", "unsubscribed": "1 25%"}


def test_the_pipeline_page_from_the_header_with_a_period_and_cohorts(
    page: Any, server: tuple[str, sa.Engine]
) -> None:
    sign_in(page, TOKEN)
    page.click("header a:has-text('Pipeline')")
    page.wait_for_url("**/pipeline")
    leads = page.locator("#stages tr.stage td.leads").all_inner_texts()
    assert sum(int(n.replace(",", "")) for n in leads) == sum(stage_counts(server[1]).values())
    assert page.locator(".bottleneck").count() == 1

    page.fill("input[name=since]", "2100-01-01")  # a date input, filled as a person picks it
    page.click("button:has-text('Show')")
    page.wait_for_url("**/pipeline?since=2100-01-01*")
    assert set(page.locator("#stages td.entered").all_inner_texts()) == {"0"}

    page.fill("input[name=since]", "")
    page.check("input[name=cohort]")
    page.click("button:has-text('Show')")
    page.wait_for_url("**cohort=true*")
    assert page.locator("#cohorts tr.cohort").count() >= 1
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "pipeline.png"), full_page=True)
