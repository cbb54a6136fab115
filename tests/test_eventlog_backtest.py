"""`nurture backtest --events`: a ruleset against an event log replayed to a past time, with
the clock, for the lead score or a named score; small logs whose answers are worked out by hand,
and the mistakes a user can make, each named."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from engine.cli import app

runner = CliRunner()

RULESET = """\
ruleset: shop
components:
  visits:  {min: 0, max: 100}
  recency: {min: 0, max: 30}
temperature: {cold: 0, warm: 5, hot: 10}
scores:
  health: {components: [recency], bands: {lapsed: 0, active: 20}}
rules:
  - name: visit
    when: {event.type: visit}
    then: {score: {visits: 5}}
  - name: bought
    when: {event.type: purchase}
    then: {score: {recency: 30}}
  - name: quiet
    when: {days_since: {type: purchase, gte: 30}}
    then: {score: {recency: -15}}
    limit: {times: 1, per: 30d}
"""
# health at 2026-03-01: ann bought on 02-20 (30, active); bob on 01-15 (45 days: 30 - 15 = 15,
# lapsed); cy on 12-01 (90 days: 3 times -15 → 0); dee only visited (0). Ann and bob buy again
# within 60 days, cy after 90 days, dee never. Dee's visits make her lead score the highest.
EVENTS = [
    ("ann", "purchase", "2026-02-20"),
    ("bob", "purchase", "2026-01-15"),
    ("cy", "purchase", "2025-12-01"),
    ("dee", "visit", "2026-02-01"),
    ("dee", "visit", "2026-02-02"),
    ("dee", "visit", "2026-02-03"),
    ("ann", "purchase", "2026-03-10"),
    ("bob", "purchase", "2026-04-01"),
    ("cy", "purchase", "2026-06-15"),
    ("eve", "purchase", "2026-03-05"),  # not known on 03-01: left out
]


@pytest.fixture
def files(tmp_path: Path) -> tuple[Path, Path]:
    ruleset = tmp_path / "shop.yaml"
    ruleset.write_text(RULESET)
    log = tmp_path / "events.jsonl"
    records = [
        {"email": f"{who}@x.io", "type": kind, "occurred_at": f"{day}T12:00:00Z"}
        for who, kind, day in EVENTS
    ]
    log.write_text("\n".join(json.dumps(r) for r in records))
    return ruleset, log


def backtest(ruleset: Path, log: Path, *extra: str) -> Any:
    args = ["backtest", "--ruleset", str(ruleset), "--events", str(log), "--until", "2026-03-01",
            "--outcome-event", "purchase", "--within", "60d", *extra]  # fmt: skip
    return runner.invoke(app, args)


def test_a_named_score_ranks_the_customers_who_buy_again(files: tuple[Path, Path]) -> None:
    result = backtest(*files, "--score", "health", "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert (report["score"], report["until"], report["outcome"]) == (
        "health",
        "2026-03-01T00:00:00Z",
        "purchase within 60d",
    )
    assert (report["rows"], report["base_rate"]) == (4, 0.5)
    assert report["auc"] == 1.0  # ann 30, bob 15 bought again; cy and dee 0 did not
    assert report["bands"] == {
        "lapsed": {"leads": 3, "converted": 1, "rate": 0.3333},
        "active": {"leads": 1, "converted": 1, "rate": 1.0},
    }
    assert report["hot"] == {
        "band": "active", "threshold": 20, "leads": 1, "precision": 1.0, "recall": 0.5
    }  # fmt: skip
    assert [d["leads"] for d in report["deciles"]] == [1, 1, 1, 1]
    assert report["deciles"][0]["lift"] == 2.0


def test_the_lead_score_by_default_and_another_ruleset_side_by_side(
    files: tuple[Path, Path], tmp_path: Path
) -> None:
    ruleset, log = files
    other = tmp_path / "other.yaml"
    other.write_text(
        RULESET.replace("ruleset: shop", "ruleset: other").replace("visits: 5", "visits: 1")
    )
    result = backtest(
        ruleset, log, "--against", str(other), "--json", "--plot", str(tmp_path / "g.png")
    )
    assert result.exit_code == 0, result.output
    reports = json.loads(result.stdout)
    assert set(reports) == {"ruleset", "against"}
    # The lead score is the visits alone: dee (15) first, who never bought: AUC below 0.5.
    assert reports["ruleset"]["score"] == "score" and reports["ruleset"]["auc"] < 0.5
    assert list(reports["ruleset"]["bands"]) == ["cold", "warm", "hot"]
    assert (tmp_path / "g.png").read_bytes().startswith(b"\x89PNG")
    table = backtest(ruleset, log, "--score", "health")
    assert "4 leads, 50.0% converted (purchase within 60d); ranked by health" in table.stdout
    assert "active precision" in table.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["--score", "wealth"],
            "--score 'wealth': not a named score of the ruleset; it has health",
        ),
        (["--within", "soon"], "bad duration 'soon'"),
        (["--until", "yesterday"], "not an ISO 8601 time: 'yesterday'"),
    ],
)
def test_mistakes_are_named(files: tuple[Path, Path], args: list[str], message: str) -> None:
    result = backtest(*files, *args)
    assert result.exit_code == 1 and message in result.output, result.output


def test_the_options_go_together(files: tuple[Path, Path], tmp_path: Path) -> None:
    ruleset, log = files
    alone = runner.invoke(app, ["backtest", "--ruleset", str(ruleset), "--events", str(log)])
    assert alone.exit_code == 1
    assert "--events needs --until, --outcome-event, --within" in alone.output
    both = runner.invoke(
        app, ["backtest", "--ruleset", str(ruleset), "--events", str(log), "--leads", str(log)]
    )
    assert both.exit_code == 1 and "give --leads" in both.output
    undated = tmp_path / "undated.jsonl"
    undated.write_text('{"email": "a@x.io", "type": "purchase"}\n')
    result = backtest(ruleset, undated)
    assert result.exit_code == 1
    assert f"{undated}:1: occurred_at: a backtest needs every time" in result.output
    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"email": "a@x.io", "type": "purchase", "occurred_at": "2026-01-01"}\n{')
    result = backtest(ruleset, broken)
    assert result.exit_code == 1 and f"{broken}:2: not valid JSON" in result.output
