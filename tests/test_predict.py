"""Predictive scores: `nurture model train`, and a ruleset component fed by the model, scored
live (ingest, ledger) and in a backtest."""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path
from typing import Any

import joblib
import pytest

from engine.analysis.pastleads import parse_past_leads
from engine.analysis.predict import load_model, save, train
from engine.errors import ProblemsError
from engine.home import model_loader
from engine.rules.load import parse_ruleset
from tests.helpers import ROOT, nurture, ruleset_text, shared_data


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


RULESET = ruleset_text("predicted-test")


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A models/ folder with plans-v1.joblib, trained once for the module."""
    models = tmp_path_factory.mktemp("trained") / "models"
    leads = parse_past_leads(past_leads(), "Converted")
    trained = train(leads.attributes, leads.outcomes, ["plan", "visits"])
    save(trained, models, "plans", {"outcome": "Converted"})
    return models


@pytest.fixture
def model_home(home: Path, trained: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """``home`` with the trained model in models/, as NURTURE_HOME."""
    shutil.copytree(trained, home / "models")
    monkeypatch.setenv("NURTURE_HOME", str(home))
    return home


def run(*args: str) -> tuple[int, str]:
    result = nurture(*args)
    return result.exit_code, result.output


# ------------------------------------------------------------------------------- training


def test_train_reports_cross_validated_auc_and_never_overwrites(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NURTURE_HOME", str(tmp_path))
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


def test_a_component_reads_its_model(model_home: Path) -> None:
    ruleset = parse_ruleset(RULESET, "p.yaml", model_loader(model_home))
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
    model_home: Path, change: tuple[str, str], message: str
) -> None:
    (model_home / "models" / "notes.txt").write_text("not a model")
    joblib.dump({"format": "something else"}, model_home / "models" / "dict.joblib")
    with pytest.raises(ProblemsError) as error:
        parse_ruleset(RULESET.replace(*change), "p.yaml", model_loader(model_home))
    assert message in str(error.value)


@pytest.mark.home(rulesets=["predicted-test"])
@pytest.mark.usefixtures("cli_home")
def test_live_scores_put_the_model_in_the_ledger(model_home: Path) -> None:
    model = load_model(model_home / "models" / "plans-v1.joblib")
    keen = {"plan": "pro", "visits": 11}
    cooled = {"plan": "free", "visits": 0}
    records = [
        {"email": "ana@acme.io", "occurred_at": "2026-01-05T10:00:00Z", **keen},
        {"email": "ana@acme.io", "occurred_at": "2026-01-06T10:00:00Z", **cooled},
    ]
    events = model_home / "leads.jsonl"
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


@pytest.mark.usefixtures("model_home")
def test_a_backtest_compares_rules_model_and_mix(tmp_path: Path) -> None:
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
EXAMPLE = ROOT / "rulesets" / "examples" / "x-education.yaml"


@pytest.mark.slow
@pytest.mark.data("x-education-leads.csv")
def test_the_case_study_model_and_the_mix(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """README's figures: the model's cross-validated AUC, and the example rules plus the model."""
    monkeypatch.setenv("NURTURE_HOME", str(tmp_path))
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
