"""Account scores on SQLite and PostgreSQL: an account rule firing as leads of one company
arrive, free mail left out, the same scores whatever the batch size, `nurture accounts`, the
`account:` key's checks, and the migration filling accounts of existing leads."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from alembic import command

from engine import db as database
from engine.db.schema import LEADS
from engine.errors import ProblemsError
from engine.ingest.batch import ingest
from engine.ingest.parse import parse_jsonl
from engine.reports.accounts import hottest_accounts
from engine.rules.account import account_domain
from engine.rules.load import parse_ruleset
from tests.helpers import compiled, nurture, ruleset_text
from tests.store_support import another_database

RULESET = ruleset_text("accounts-test")


def profile(email: str, **attributes: Any) -> str:
    return json.dumps({"email": email, "job_title": "VP Sales", **attributes})


LINES = [
    profile("ana@acme.io"),  # acme.io: 1 lead, 50
    profile("bob@acme.io"),  # 2 leads, 100
    # A gmail address whose company is acme.io: 3 leads, and 150 once senior-title has fired,
    # which busy-account sees in the next round of the same evaluation.
    profile("cy@gmail.com", domain="www.Acme.io"),
    json.dumps({"id": "v1", "email": "ana@acme.io", "type": "page_view"}),  # 3 leads, 165
    profile("dan@gmail.com"),  # free mail: no account, however many
    profile("eve@gmail.com"),
    profile("fay@gmail.com"),
]
EXPECTED = {
    "ana@acme.io": 65,
    "bob@acme.io": 50,  # not evaluated since the account got busy
    "cy@gmail.com": 60,
    "dan@gmail.com": 50,
    "eve@gmail.com": 50,
    "fay@gmail.com": 50,
}


def scores(engine: sa.Engine) -> dict[str, int]:
    with engine.connect() as conn:
        return dict(conn.execute(sa.select(LEADS.c.email, LEADS.c.score)).all())


def run(url: str, batch_size: int) -> sa.Engine:
    engine = database.connect(url)
    result = ingest(
        engine,
        compiled(RULESET, "accounts-test.yaml"),
        parse_jsonl(io.StringIO("\n".join(LINES))),
        batch_size=batch_size,
    )
    assert not result.rejected
    return engine


def test_account_rule_fires_whatever_the_batch_size(db_url: str, tmp_path: Path) -> None:
    database.upgrade(db_url)
    whole = run(db_url, batch_size=1000)
    assert scores(whole) == EXPECTED
    with another_database(db_url, tmp_path) as other:
        assert scores(run(other, batch_size=1)) == EXPECTED
    with whole.connect() as conn:
        domains = dict(conn.execute(sa.select(LEADS.c.email, LEADS.c.account_domain)).all())
    assert domains["cy@gmail.com"] == "acme.io"
    assert domains["dan@gmail.com"] is None


def test_accounts_listing(db_url: str) -> None:
    database.upgrade(db_url)
    engine = run(db_url, batch_size=1000)
    ruleset = parse_ruleset(RULESET)
    assert hottest_accounts(engine, ruleset) == [
        {
            "domain": "acme.io",
            "score": 175,
            "leads": 3,
            "hottest": {"email": "ana@acme.io", "score": 65},
            "temperatures": {"cold": 0, "warm": 3, "hot": 0},
        }
    ]
    by_max = parse_ruleset(RULESET.replace("aggregate: sum", "aggregate: max"))
    assert hottest_accounts(engine, by_max)[0]["score"] == 65
    by_mean = parse_ruleset(RULESET.replace("aggregate: sum", "aggregate: mean"))
    assert hottest_accounts(engine, by_mean)[0]["score"] == 58.33


def test_mean_and_max_in_rules() -> None:
    from engine.rules.account import Peers
    from engine.rules.evaluate import Event, evaluate, new_lead
    from engine.rules.history import MemoryHistory
    from engine.timeutil import parse_instant

    text = RULESET.replace("aggregate: sum", "aggregate: max").replace(
        "lead.account.score: {gte: 150}", "lead.account.score: {gte: 80}"
    )
    rules = compiled(text, "max.yaml")
    state = new_lead(rules.ruleset, {"job_title": "VP"})
    event = Event("e", "profile_update", parse_instant("2026-01-01"))
    state.account = Peers(leads=2, total=120, top=70)  # best colleague at 70, this lead 50
    assert "busy-account" not in evaluate(rules, state, event, MemoryHistory()).fired
    state.account = Peers(leads=2, total=160, top=80)
    assert "busy-account" in evaluate(rules, state, event, MemoryHistory()).fired
    state.account = None  # no account: account fields are missing, nothing matches
    assert "busy-account" not in evaluate(rules, state, event, MemoryHistory()).fired


def test_account_key() -> None:
    assert account_domain({"domain": " WWW.Acme.IO "}, "x@gmail.com") == "acme.io"
    assert account_domain({"domain": ""}, "x@beta.io") == "beta.io"
    assert account_domain({"domain": 12}, "x@beta.io") == "beta.io"
    assert account_domain({}, "x@hotmail.com") is None
    assert account_domain({"domain": "yahoo.com"}, "x@beta.io") is None


@pytest.mark.parametrize(
    ("account", "line", "message"),
    [
        ("account: {aggregate: median}", 5, "account aggregate 'median': use sum, max, mean"),
        ("account: sum", 5, "`account:` takes {aggregate: sum}"),
    ],
)
def test_account_key_errors(account: str, line: int, message: str) -> None:
    text = RULESET.replace("account: {aggregate: sum}", account)
    with pytest.raises(ProblemsError) as error:
        parse_ruleset(text, "bad.yaml")
    assert error.value.problems[0].line == line
    assert message in error.value.problems[0].message


def test_unknown_account_field() -> None:
    text = RULESET.replace("lead.account.leads", "lead.account.size")
    with pytest.raises(ProblemsError) as error:
        parse_ruleset(text, "bad.yaml")
    assert "lead.account.size" in str(error.value)
    assert "lead.account.score or lead.account.leads" in str(error.value)


@pytest.mark.home(rulesets=["accounts-test"])
def test_cli(cli_home: Path) -> None:
    (cli_home / "leads.jsonl").write_text("\n".join(LINES) + "\n")
    assert nurture("ingest", str(cli_home / "leads.jsonl")).exit_code == 0
    listed = nurture("accounts", "--json")
    assert listed.exit_code == 0, listed.output
    assert [(a["domain"], a["score"], a["leads"]) for a in json.loads(listed.stdout)] == [
        ("acme.io", 175, 3)
    ]
    table = nurture("accounts", "--limit", "5")
    assert table.exit_code == 0, table.output
    assert "acme.io" in table.stdout and "ana@acme.io (65)" in table.stdout
    assert "gmail.com" not in table.stdout


def test_migration_fills_accounts_of_existing_leads(db_url: str) -> None:
    """A database made before accounts existed gets its leads' accounts on upgrade."""
    config = database.alembic_config(db_url)
    engine = database.connect(db_url)
    with engine.begin() as conn:
        config.attributes["connection"] = conn
        command.upgrade(config, "0002")
    leads: dict[str, dict[str, Any]] = {
        "a@acme.io": {},
        "b@gmail.com": {"domain": "Beta.io "},
        "c@gmail.com": {},
        "d@www.delta.io": {"domain": ""},
        "e@echo.io": {"domain": "outlook.com"},
        "f@fox.io": {"domain": 7},
    }
    columns = "email, attributes, score, temperature, stage, stage_entered_at, tags, subscribed"
    with engine.begin() as conn:
        for email, attributes in leads.items():
            conn.execute(
                sa.text(
                    f"INSERT INTO lead ({columns}, version, created_at, updated_at) VALUES "
                    "(:email, :attributes, 0, 'cold', 'subscriber', :at, '[]', true, 1, :at, :at)"
                ),
                {"email": email, "attributes": json.dumps(attributes), "at": "2026-01-01"},
            )
    database.upgrade(db_url)
    with engine.connect() as conn:
        found = dict(conn.execute(sa.select(LEADS.c.email, LEADS.c.account_domain)).all())
    assert found == {
        email: account_domain(attributes, email) for email, attributes in leads.items()
    }
    assert found["b@gmail.com"] == "beta.io" and found["e@echo.io"] is None
