"""One naming rule for CSV columns: `nurture ingest` and `nurture backtest` give a row the same
attributes, so a ruleset reads live what it was backtested on."""

from __future__ import annotations

import io

import pytest

from engine.analysis.pastleads import PastLeadsError, parse_past_leads
from engine.ingest.columns import attribute_name
from engine.ingest.parse import LeadRecord, Rejection, parse_stream

CRM = (
    "Email,Lead Origin,What is your current occupation,TotalVisits,Tags,Converted,\r\n"
    "ana@acme.io,Landing Page Submission,Working Professional,5,Will revert,1,\r\n"
    "bo@beta.io,API,,0,,0,\r\n"
)


def test_headers_become_snake_case_and_computed_names_get_a_suffix() -> None:
    assert attribute_name("What is your current occupation") == "what_is_your_current_occupation"
    assert attribute_name(" Lead Origin ") == "lead_origin"
    assert attribute_name("Total Time Spent on Website") == "total_time_spent_on_website"
    assert attribute_name("Tags") == "tags_column"
    assert attribute_name("Score") == "score_column"
    # What ingest reads keeps its name.
    for reserved in ("id", "email", "type", "occurred_at", "subscribed"):
        assert attribute_name(reserved) == reserved
    assert attribute_name("Occurred At") == "occurred_at"
    assert attribute_name("properties.url") == "properties.url"
    assert attribute_name("Properties.Page URL") == "properties.page_url"


def test_ingest_and_backtest_give_a_row_the_same_attributes() -> None:
    past = parse_past_leads(CRM, "Converted")
    records = list(parse_stream(io.StringIO(CRM, newline=""), "crm.csv"))
    assert all(isinstance(r, LeadRecord) for r in records), records
    live = [{**r.attributes, "email": r.email} for r in records if isinstance(r, LeadRecord)]
    backtested = past.attributes
    # The outcome column is no attribute in the backtest; live it is one like any other.
    assert [{k: v for k, v in row.items() if k != "converted"} for row in live] == backtested
    assert backtested[0] == {
        "email": "ana@acme.io",
        "lead_origin": "Landing Page Submission",
        "what_is_your_current_occupation": "Working Professional",
        "totalvisits": 5,
        "tags_column": "Will revert",
    }


@pytest.mark.parametrize(
    ("header", "error"),
    [
        (
            "email,Job Title,job_title",
            "columns 'Job Title' and 'job_title' would both be attribute 'job_title'",
        ),
        (
            "email,Tags,tags_column",
            "columns 'Tags' and 'tags_column' would both be attribute 'tags_column'",
        ),
        ("email,%,x", "column '%' has no letters or digits to name it"),
    ],
)
def test_a_name_two_headers_share_is_an_error_in_both(header: str, error: str) -> None:
    text = f"{header},Converted\nana@acme.io,a,b,1\n"
    found = list(parse_stream(io.StringIO(text, newline=""), "crm.csv"))
    assert found == [Rejection(1, f"the header row: {error}; no row was read")]
    with pytest.raises(PastLeadsError, match="^<csv>:1: " + error.replace("(", r"\(")):
        parse_past_leads(text, "Converted")
