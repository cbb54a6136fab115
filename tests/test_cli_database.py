"""A database nurture cannot open (unreachable, missing, of a kind it does not support, or a URL
that is not one) stops every command that needs it with one sentence naming the database,
password hidden, and exit 1: never a traceback, never the password."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.helpers import PG_URL, api_home, run_cli

PASSWORD = "s3cr3t-pw"
COMMANDS = [
    ["leads"],
    ["lead", "ana@acme.io"],
    ["alerts"],
    ["ingest", "events.jsonl"],
    ["pipeline"],
    ["accounts"],
    ["tick"],
    ["demo", "--leads", "5"],
    ["db", "upgrade"],
    ["worker"],
    ["serve"],
]


def run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, url: str, args: list[str]) -> str:
    monkeypatch.chdir(api_home(tmp_path))
    (tmp_path / "events.jsonl").write_text('{"email": "ana@acme.io", "type": "page_view"}\n')
    result, started = run_cli(monkeypatch, tmp_path, args, NURTURE_DATABASE_URL=url)
    assert result.exit_code == 1 and not started, (args, result.output)
    assert "Traceback" not in result.output and PASSWORD not in result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1, (args, result.output)
    return lines[0]


@pytest.mark.parametrize("args", COMMANDS, ids=" ".join)
def test_every_command_says_in_one_line_that_the_database_is_unreachable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, args: list[str]
) -> None:
    url = f"postgresql://nurture:{PASSWORD}@127.0.0.1:1/leads"
    line = run(tmp_path, monkeypatch, url, args)
    assert line.startswith(
        "error: cannot open the database at postgresql://nurture:***@127.0.0.1:1/leads: "
    )
    assert "Connection refused" in line


@pytest.mark.parametrize(
    ("url", "says"),
    [
        (
            f"mysql://nurture:{PASSWORD}@db.example/leads",
            "error: cannot open the database at mysql://nurture:***@db.example/leads: mysql "
            "databases are not supported (use sqlite:///PATH or postgresql://USER@HOST/DB)",
        ),
        (
            f"nonsense://nurture:{PASSWORD}@db.example/leads",
            "error: cannot open the database at nonsense://nurture:***@db.example/leads: nonsense "
            "databases are not supported (use sqlite:///PATH or postgresql://USER@HOST/DB)",
        ),
        (
            f"postgres//nurture:{PASSWORD}@db.example/leads",
            "error: NURTURE_DATABASE_URL is not a database URL (use sqlite:///PATH or "
            "postgresql://USER@HOST/DB)",
        ),
        (
            "sqlite:////no/such/folder/nurture.db",
            "error: cannot open the database at sqlite:////no/such/folder/nurture.db: unable to "
            "open database file",
        ),
    ],
    ids=["mysql", "unknown-scheme", "not-a-url", "sqlite-missing-folder"],
)
def test_an_unsupported_or_garbled_database_url_is_one_sentence(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, url: str, says: str
) -> None:
    assert run(tmp_path, monkeypatch, url, ["leads"]) == says


def test_a_missing_postgresql_database_is_named(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, pg_available: bool
) -> None:
    if not pg_available:
        pytest.skip("no PostgreSQL reachable (set NURTURE_TEST_PG_URL)")
    url = PG_URL.rsplit("/", 1)[0] + "/no_such_database"
    line = run(tmp_path, monkeypatch, url, ["serve"])
    assert line.startswith("error: cannot open the database at ")
    assert line.endswith('database "no_such_database" does not exist')
