"""`nurture ingest --workers N` on SQLite and PostgreSQL: the file scored by several processes
ends exactly as scored by one (scores, stages, ledger, firings per lead), bad lines are reported
with their line numbers, stdin works, and a re-run finds every record a duplicate."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import sqlalchemy as sa

from engine import db as database
from engine.demo.sample import sample_records
from engine.ingest.parallel import slice_of
from engine.settings import get_settings
from tests.helpers import nurture
from tests.store_support import another_database, lead_state

pytestmark = pytest.mark.home(rulesets=["ingest-test"])
BAD = '{"email": "zed@zeta.io", "type": "page_view", "occurred_at": "someday"}'


def sample_file(folder: Path, leads: int) -> tuple[Path, int]:
    """Profiles and events of ``leads`` leads, one bad line in the middle; (path, its line)."""
    lines = [json.dumps(r, default=str) for r in sample_records(leads=leads, seed=5)]
    middle = len(lines) // 2
    lines.insert(middle, BAD)
    path = folder / "sample.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path, middle + 1


def run(url: str, *args: str, input: str | None = None) -> dict[str, object]:
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("NURTURE_DATABASE_URL", url)
        get_settings.cache_clear()
        result = nurture("ingest", *args, "--json", input=input)
    get_settings.cache_clear()
    assert result.exit_code in (0, 1), result.output
    answer: dict[str, object] = json.loads(result.stdout)
    return answer


@pytest.mark.slow
def test_workers_score_a_file_exactly_as_one_process_does(
    cli_home: Path, db_url: str, tmp_path: Path
) -> None:
    path, bad_line = sample_file(cli_home, leads=120)
    records = path.read_text().count("\n") - 1
    parallel = run(db_url, str(path), "--workers", "3")
    assert parallel == {
        "accepted": records,
        "duplicates": 0,
        "alerts": 0,  # the sample's events are months old: nobody is paged for them
        "rejected": [{"line": bad_line, "error": "occurred_at: not an ISO 8601 time: 'someday'"}],
    }
    with another_database(db_url, tmp_path) as other:
        assert run(other, str(path)) == parallel
        alone = lead_state(database.connect(other))
    together = lead_state(database.connect(db_url))
    assert together == alone
    assert len(together["leads"]) == 120
    # Again: every record is already stored, whichever worker takes it.
    again = run(db_url, str(path), "--workers", "2")
    assert (again["accepted"], again["duplicates"]) == (0, records)


# Lines no worker can read a key off plainly (each is parsed by every worker and kept by its
# lead's), and bad lines with and without a plain key (each reported once, by one worker).
SPELLINGS = [
    lambda r: json.dumps({**r, "email": r["email"].upper()}, default=str),
    lambda r: json.dumps({**r, "email": f" {r['email']} "}, default=str),
    lambda r: json.dumps({**r, "note": "café"} if "type" not in r else r, default=str),
    lambda r: json.dumps(r, default=str).replace('"email"', '"\\u0065mail"', 1),
    lambda r: '{"email": "decoy@x.io", ' + json.dumps(r, default=str)[1:],  # JSON keeps the last
]
BAD_LINES = [
    BAD,
    BAD.replace("zed@zeta.io", "Zed@Zeta.io"),
    '{"type": "page_view", "lead": {"email": "bob@y.io"}}',
    '{"email": "ann@x.io", "email": "bob@',
]


@pytest.mark.slow
def test_workers_split_hostile_lines_as_one_process_reads_them(
    cli_home: Path, db_url: str, tmp_path: Path
) -> None:
    records = list(sample_records(leads=60, seed=5))
    lines = [
        SPELLINGS[n % 10](r) if n % 10 < len(SPELLINGS) else json.dumps(r, default=str)
        for n, r in enumerate(records)
    ]
    for n, bad in enumerate(BAD_LINES):
        lines.insert(len(lines) * (n + 1) // (len(BAD_LINES) + 1), bad)
    path = cli_home / "hostile.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    parallel = run(db_url, str(path), "--workers", "3")
    assert len(parallel["rejected"]) == len(BAD_LINES)  # type: ignore[arg-type]
    with another_database(db_url, tmp_path) as other:
        assert run(other, str(path)) == parallel
        alone = lead_state(database.connect(other))
    assert lead_state(database.connect(db_url)) == alone


@pytest.mark.slow
def test_workers_read_stdin(cli_home: Path, db_url: str) -> None:
    path, _ = sample_file(cli_home, leads=40)
    answer = run(db_url, "-", "--workers", "2", input=path.read_text())
    assert answer["accepted"] == path.read_text().count("\n") - 1
    with database.connect(db_url).connect() as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM lead")).scalar() == 40


def test_a_lead_always_falls_in_the_same_slice() -> None:
    emails = [f"lead{i}@acme{i % 7}.io" for i in range(2000)]
    slices = [slice_of(email, 4) for email in emails]
    assert slices == [slice_of(email, 4) for email in emails]
    assert {s: slices.count(s) for s in range(4)} == pytest.approx(
        {s: 500 for s in range(4)}, abs=80
    )
