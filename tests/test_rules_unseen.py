"""`nurture rules check` (and the validate endpoint) against the stored data: a rule reading a
lead attribute no stored lead has (often a CSV header spelled otherwise) or an event type the
event log never saw is a warning, with file, line and rule; never an error."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from engine import db as database
from engine.api.app import create_app
from tests.campaign_support import settings_for
from tests.helpers import API_TOKEN, nurture, ruleset_text

pytestmark = pytest.mark.home(rulesets=["unseen-test"])

CSV = (
    "Email,Job Title,What is your current occupation,Type,Properties.URL\n"
    "ana@acme.io,VP Marketing,Working Professional,,\n"
    "ana@acme.io,,,page_view,/pricing\n"
)


def check() -> dict[str, list[dict[str, object]]]:
    result = nurture("rules", "check", "--json")
    assert result.exit_code == 0, result.output
    found: dict[str, list[dict[str, object]]] = json.loads(result.stdout)
    return found


def test_rules_reading_what_no_lead_has_are_warned_about(cli_home: Path) -> None:
    # An empty database says nothing about the data: no such warning yet.
    assert check()["warnings"] == []
    assert nurture("ingest", "-", input=CSV).exit_code == 0
    # A lead who never had the attribute of the occupation rule: the key is still seen.
    assert nurture("ingest", "-", input="email,job_title\nbo@beta.io,CEO\n").exit_code == 0
    file = str(cli_home / "rulesets" / "unseen-test.yaml")
    assert check()["warnings"] == [
        {
            "file": file,
            "line": 23,
            "warning": "rule 'webinar' reads event type 'webinar_attended', which the event "
            "log has never seen",
        },
        {
            "file": file,
            "line": 26,
            "warning": "rule 'busy' reads event type 'purchase', which the event log has "
            "never seen",
        },
    ]

    # The attribute the backtest calls job_title, misspelt as it was written in the CSV.
    ruleset = cli_home / "rulesets" / "unseen-test.yaml"
    ruleset.write_text(ruleset.read_text().replace("lead.job_title", "lead.jobtitle"))
    text = nurture("rules", "check")
    assert text.exit_code == 0, text.output
    assert (
        f"warning {file}:8: rule 'senior' reads lead.jobtitle, which no stored lead has"
        in " ".join(text.output.split())
    )
    assert "error" not in text.output


def test_the_validate_endpoint_warns_too(cli_home: Path, db_url: str) -> None:
    assert nurture("ingest", "-", input=CSV).exit_code == 0
    text = ruleset_text("unseen-test").replace("lead.what_is_your_current_occupation", "lead.occ")
    settings = settings_for(cli_home, db_url, api_token=API_TOKEN)
    with TestClient(create_app(settings, database.connect(db_url))) as api:
        answer = api.post(
            "/api/rulesets/validate",
            content=text,
            headers={"Authorization": f"Bearer {API_TOKEN}"},
        ).json()
    assert answer["valid"]
    assert [(w["line"], w["message"].split(",")[0]) for w in answer["warnings"]] == [
        (12, "rule 'occupation' reads lead.occ"),
        (23, "rule 'webinar' reads event type 'webinar_attended'"),
        (26, "rule 'busy' reads event type 'purchase'"),
    ]
