"""Predictive scores: `nurture model train`, and a ruleset component fed by the model, scored
live (ingest, ledger) and in a backtest."""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import joblib
import pytest
from typer.testing import CliRunner

from engine.analysis.pastleads import parse_past_leads
from engine.analysis.predict import load_model, save, train
from engine.cli import app
from engine.errors import ProblemsError
from engine.home import model_loader
from engine.rules.load import parse_ruleset
from engine.settings import get_settings
from tests.helpers import shared_data

runner = CliRunner()


def past_leads(rows: int = 120, seed: int = 3) -> str:
    """Pro-plan leads with many visits mostly convert; free-plan leads with few mostly do not."""
    rng = random.Random(seed)
    lines = ["Lead ID,Plan,Visits,Converted"]
    for i in range(rows):
        plan = rng.choice(["pro", "free"])
        visits = rng.randint(0, 12)
        likely = (plan == "pro") + (visits >= 6)
        converted = int(rng.random() < (0.1, 0.5, 0.9)[likely])
        lines.append(f"L{i},{plan},{visits},{converted}")
    return "\r\n".join(lines) + "\r\n"


RULESET = """\
ruleset: predicted-test
components:
  fit: {min: 0, max: 50}
  predicted: {min: 0, max: 100, model: models/plans-v1.joblib}
temperature: {cold: 0, warm: 40, hot: 70}
rules:
  - name: model-likes-it
    when: {lead.scores.predicted: {gte: 50}}
    then: {score: {fit: 10}}
    limit: once
"""


@pytest.fixture(scope="module")
def model_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A NURTURE_HOME with models/plans-v1.joblib, trained once for the module."""
    home = tmp_path_factory.mktemp("home")
    leads = parse_past_leads(past_leads(), "Converted")
    trained = train(leads.attributes, leads.outcomes, ["plan", "visits"])
    save(trained, home / "models", "plans", {"outcome": "Converted"})
    return home


@pytest.fixture
def home(model_home: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[Path]:
    monkeypatch.setenv("NURTURE_HOME", str(model_home))
    monkeypatch.setenv("NURTURE_DATABASE_URL", f"sqlite:///{tmp_path / 'unused.db'}")
    get_settings.cache_clear()
    yield model_home
    get_settings.cache_clear()


def run(*args: str) -> tuple[int, str]:
    result = runner.invoke(app, list(args))
    return result.exit_code, result.output


# ------------------------------------------------------------------------------- training


def test_train_reports_cross_validated_auc_and_never_overwrites(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NURTURE_HOME", str(tmp_path))
    get_settings.cache_clear()
    csv = tmp_path / "plans.csv"
    csv.write_text(past_leads(), encoding="utf-8")
    args = ["model", "train", "--leads", str(csv), "--outcome", "Converted"]
    code, output = run(*args, "--exclude", "Lead ID", "--json")
    assert code == 0, output
    meta = json.loads(output)
    assert meta["version"] == "plans-v1"
    assert 0.7 < meta["cv_auc"] <= 1.0 and len(meta["cv_auc_folds"]) == 5
    assert (meta["numeric"], meta["categorical"]) == (["visits"], ["plan"])
    first = tmp_path / "models" / "plans-v1.joblib"
    saved = json.loads(first.with_suffix(".json").read_text())
    assert saved["outcome"] == "Converted" and saved["excluded"] == ["lead_id"]
    assert saved["cv_auc"] == meta["cv_auc"] and saved["trained_at"]
    before = first.read_bytes()

    code, output = run(*args, "--exclude", "lead_id", "--algorithm", "boosting")
    assert code == 0, output
    assert "plans-v2.joblib" in output and "cross-validated AUC" in output
    assert first.read_bytes() == before
    assert load_model(tmp_path / "models" / "plans-v2.joblib").meta["algorithm"] == "boosting"
    get_settings.cache_clear()


def test_the_same_seed_gives_the_same_cv_auc() -> None:
    leads = parse_past_leads(past_leads(), "Converted")
    first = train(leads.attributes, leads.outcomes, ["plan", "visits"]).meta["cv_auc"]
    assert train(leads.attributes, leads.outcomes, ["plan", "visits"]).meta["cv_auc"] == first


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--exclude", "Nope"], "no column 'Nope'"),
        (["--algorithm", "forest"], "use logistic or boosting"),
        (["--name", "../up"], "--name"),
    ],
)
def test_train_errors(tmp_path: Path, extra: list[str], message: str) -> None:
    csv = tmp_path / "plans.csv"
    csv.write_text(past_leads(), encoding="utf-8")
    code, output = run(
        "model", "train", "--leads", str(csv), "--outcome", "Converted", "--out", str(tmp_path)
    )
    assert code == 0, output
    code, output = run("model", "train", "--leads", str(csv), "--outcome", "Converted", *extra)
    assert code == 1
    assert message in output


# ------------------------------------------------------------------- the ruleset component


def test_a_component_reads_its_model(home: Path) -> None:
    ruleset = parse_ruleset(RULESET, "p.yaml", model_loader(home))
    model = ruleset.components["predicted"].model
    assert model is not None and model.version == "plans-v1"
    likely = model.score({"plan": "pro", "visits": 11})
    unlikely = model.score({"plan": "free", "visits": 0})
    assert 0 <= unlikely < 50 <= likely <= 100


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (("plans-v1", "plans-v9"), "p.yaml:4: component 'predicted': no model file"),
        (("plans-v1.joblib", "notes.txt"), "p.yaml:4: component 'predicted': "),
        (("plans-v1.joblib", "dict.joblib"), "not a model trained by `nurture model train`"),
        (("model: models/plans-v1.joblib", "model: 3"), "model is the path of a model file"),
        (("max: 100, model", "max: 100, decay: {half_life: 7d}, model"), "cannot decay"),
        (("{fit: 10}", "{predicted: 10}"), "p.yaml:9: rule 'model-likes-it': component"),
    ],
)
def test_model_problems_name_file_and_line(
    home: Path, change: tuple[str, str], message: str
) -> None:
    (home / "models" / "notes.txt").write_text("not a model")
    joblib.dump({"format": "something else"}, home / "models" / "dict.joblib")
    with pytest.raises(ProblemsError) as error:
        parse_ruleset(RULESET.replace(*change), "p.yaml", model_loader(home))
    assert message in str(error.value)


def test_live_scores_put_the_model_in_the_ledger(
    home: Path, db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NURTURE_DATABASE_URL", db_url)
    (home / "rulesets").mkdir(exist_ok=True)
    (home / "rulesets" / "predicted-test.yaml").write_text(RULESET)
    get_settings.cache_clear()
    model = load_model(home / "models" / "plans-v1.joblib")
    keen = {"plan": "pro", "visits": 11}
    cooled = {"plan": "free", "visits": 0}
    records = [
        {"email": "ana@acme.io", "occurred_at": "2026-01-05T10:00:00Z", **keen},
        {"email": "ana@acme.io", "occurred_at": "2026-01-06T10:00:00Z", **cooled},
    ]
    events = home / "leads.jsonl"
    events.write_text("".join(json.dumps(r) + "\n" for r in records))
    code, output = run("ingest", str(events))
    assert code == 0, output
    code, output = run("lead", "ana@acme.io", "--json")
    assert code == 0, output
    lead: dict[str, Any] = json.loads(output)
    rows = [(r["rule"], r["component"], r["delta"]) for r in lead["ledger"]]
    high, low = model.score(keen), model.score(cooled)
    assert rows == [
        ("model:plans-v1", "predicted", high),
        ("model-likes-it", "fit", 10),  # the rule saw the model's score of this evaluation
        ("model:plans-v1", "predicted", low - high),
    ]
    assert lead["scores"] == {"fit": 10, "predicted": low}
    assert sum(r["delta"] for r in lead["ledger"]) == lead["score"] == 10 + low
    assert lead["ledger"][-1]["score_after"] == lead["score"]


def test_a_backtest_compares_rules_model_and_mix(home: Path, tmp_path: Path) -> None:
    ruleset = tmp_path / "p.yaml"
    ruleset.write_text(RULESET)
    leads = tmp_path / "leads.csv"
    leads.write_text(past_leads(rows=200, seed=11))
    code, output = run(
        "backtest",
        "--ruleset",
        str(ruleset),
        "--leads",
        str(leads),
        "--outcome",
        "Converted",
        "--json",
    )
    assert code == 0, output
    report = json.loads(output)
    parts = report["auc_parts"]
    assert set(parts) == {"rules", "model", "mix"}
    assert parts["mix"] == report["auc"]
    assert parts["model"] > 0.7
    assert parts["rules"] < parts["model"]  # one coarse rule ranks worse than the model


XEDU = shared_data("x-education-leads.csv")
EXAMPLE = Path(__file__).resolve().parents[1] / "rulesets" / "examples" / "x-education.yaml"


@pytest.mark.slow
@pytest.mark.skipif(not XEDU.is_file(), reason="the x-education CSV is not in ../shared/data")
def test_the_case_study_model_and_the_mix(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """README's figures: the model's cross-validated AUC, and the example rules plus the model."""
    monkeypatch.setenv("NURTURE_HOME", str(tmp_path))
    get_settings.cache_clear()
    leaks = ["Prospect ID", "Lead Number", "Tags", "Lead Quality", "Last Notable Activity"]
    exclude = [arg for column in leaks for arg in ("--exclude", column)]
    code, output = run(
        "model", "train", "--leads", str(XEDU), "--outcome", "Converted", "--name",
        "x-education", *exclude, "--json",
    )  # fmt: skip
    assert code == 0, output
    assert json.loads(output)["cv_auc"] >= 0.88
    mixed = (
        EXAMPLE.read_text()
        .replace(
            "  engagement: {min: -40, max: 60}\n",
            "  engagement: {min: -40, max: 60}\n"
            "  predicted:  {min: 0, max: 100, model: models/x-education-v1.joblib}\n",
        )
        .replace("{cold: -80, warm: 20, hot: 40}", "{cold: -80, warm: 70, hot: 100}")
    )
    ruleset = tmp_path / "mixed.yaml"
    ruleset.write_text(mixed)
    code, output = run(
        "backtest", "--ruleset", str(ruleset), "--leads", str(XEDU), "--outcome", "Converted",
        "--json",
    )  # fmt: skip
    assert code == 0, output
    report = json.loads(output)
    assert report["auc_parts"]["rules"] >= 0.87
    assert report["auc_parts"]["mix"] > report["auc_parts"]["rules"]
    assert report["hot"]["precision"] >= 0.8
    get_settings.cache_clear()
