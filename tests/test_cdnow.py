"""The customer-health example on real data: CDNOW's purchases, turned into events by the
documented converter, replayed to 1997-10-01 and ranked by the RFM health score against
"purchased again within 270 days". Needs ../shared/data/cdnow (skipped without it)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from typer.testing import CliRunner

from engine.cli import app
from tests.helpers import ROOT, shared_data

CDNOW = shared_data("cdnow/CDNOW_master.txt")
CONVERTER = ROOT / "rulesets" / "examples" / "cdnow-events.sh"
RULESET = ROOT / "rulesets" / "examples" / "customer-health.yaml"


@pytest.mark.slow
@pytest.mark.skipif(not CDNOW.is_file(), reason="the CDNOW data is not in ../shared/data")
def test_the_health_score_ranks_cdnow_customers_who_buy_again(tmp_path: Path) -> None:
    events = tmp_path / "cdnow-events.jsonl"
    with events.open("w") as out:
        subprocess.run(["sh", str(CONVERTER), str(CDNOW)], stdout=out, check=True)
    first = json.loads(events.read_text().splitlines()[0])
    assert first == {
        "id": "cdnow-1",
        "email": "customer-00001@cdnow.example",
        "type": "purchase",
        "occurred_at": "1997-01-01T00:00:00Z",
        "properties": {"amount": 11.77, "cds": 1},
    }
    result = CliRunner().invoke(
        app,
        ["backtest", "--ruleset", str(RULESET), "--events", str(events),
         "--until", "1997-10-01", "--outcome-event", "purchase", "--within", "270d",
         "--score", "health", "--json"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["rows"] == 23570
    assert 0.297 <= report["base_rate"] <= 0.300
    # A logistic regression on log recency, frequency, money and tenure: AUC 0.770 (CV).
    assert report["auc"] >= 0.77
    loyal = report["bands"]["loyal"]
    converted = sum(band["converted"] for band in report["bands"].values())
    assert report["hot"]["band"] == "loyal"
    assert loyal["converted"] > converted / 2  # the top band holds most of those who bought
    assert loyal["rate"] > 2 * report["base_rate"]
    assert report["deciles"][0]["lift"] > 2.5
