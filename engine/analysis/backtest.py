"""What a ruleset would have done on past leads with known outcomes, without a database: each
row of the CSV is a new lead evaluated as a ``profile_update`` in memory (the path of
``nurture rules test``), and the scores it ends with are compared with the outcomes.

The report (docs/design.md's backtest shape, plus ``stages``, each decile's ``cumulative_gain`` and,
when a component is fed by a model, ``auc_parts``) is computed from the scores alone;
``plot_report`` draws it. Ties in score are ranked in a fixed pseudo-random order, so the order
of the file never decides which decile a lead lands in.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.metrics import precision_score, recall_score, roc_auc_score

from engine.analysis.pastleads import PastLeads
from engine.errors import NurtureError
from engine.rules.compile import CompiledRuleset
from engine.rules.evaluate import ChainError, prime
from engine.rules.spec import Ruleset, band_of
from engine.rules.testing import replay

DECILES = 10
SEED = 0


class BacktestError(NurtureError, ValueError):
    """The past leads cannot be backtested (no outcome of one kind, no rows)."""


@dataclass(frozen=True)
class Scored:
    """Per row: the total score, the part of it fed by models, the band and the final stage."""

    scores: Any  # int array
    predicted: Any  # int array: the model-fed components' sum
    bands: list[str]
    stages: list[str]


@dataclass(frozen=True)
class Ranked:
    """The score a backtest ranks by: the lead score (``name`` None, the temperature bands) or
    a named score with its bands."""

    ruleset: Ruleset
    name: str | None
    bands: tuple[tuple[str, int], ...]

    def total(self, scores: Mapping[str, int]) -> int:
        if self.name is None:
            return self.ruleset.lead_score(scores)
        return self.ruleset.totals(scores)[self.name]

    def band(self, total: int) -> str:
        return band_of(self.bands, total)


def ranked_by(ruleset: Ruleset, score: str | None) -> Ranked:
    """``--score NAME`` (a named score of ``ruleset``), or the lead score when None."""
    if score is None:
        return Ranked(ruleset, None, ruleset.temperature)
    for named in ruleset.scores:
        if named.name == score:
            return Ranked(ruleset, score, named.bands)
    names = ", ".join(s.name for s in ruleset.scores) or "none (the ruleset has no `scores:`)"
    raise BacktestError(f"--score {score!r}: not a named score of the ruleset; it has {names}")


def score_leads(compiled: CompiledRuleset, leads: PastLeads, score: str | None = None) -> Scored:
    ruleset = compiled.ruleset
    ranked = ranked_by(ruleset, score)
    prime(ruleset, leads.attributes)
    fed = [c.name for c in ruleset.components.values() if c.model is not None]
    scores, predicted, bands, stages = [], [], [], []
    for line, attributes in zip(leads.lines, leads.attributes, strict=True):
        try:
            state = replay(compiled, attributes, []).state
        except ChainError as error:
            raise BacktestError(f"{leads.path}:{line}: {error}") from None
        total = ranked.total(state.scores)
        scores.append(total)
        predicted.append(sum(state.scores[name] for name in fed))
        bands.append(ranked.band(total))
        stages.append(state.stage)
    return Scored(np.asarray(scores), np.asarray(predicted), bands, stages)


def _rate(converted: int, leads: int) -> float | None:
    return round(converted / leads, 4) if leads else None


def _auc(outcomes: Any, scores: Any) -> float:
    return round(float(roc_auc_score(outcomes, scores)), 4)


def _group(outcomes: Any, mask: Any) -> dict[str, Any]:
    leads, converted = int(mask.sum()), int(outcomes[mask].sum())
    return {"leads": leads, "converted": converted, "rate": _rate(converted, leads)}


def ranking(scores: Any) -> Any:
    """Row indices from the highest score down, ties in a fixed shuffled order."""
    shuffled = np.random.default_rng(SEED).permutation(len(scores))
    return shuffled[np.argsort(-scores[shuffled], kind="stable")]


def report(
    ruleset: Ruleset,
    scored: Scored,
    outcomes: list[int],
    outcome: str,
    bands: Sequence[tuple[str, int]] | None = None,
) -> dict[str, Any]:
    """The report on ``scored`` against ``outcomes``; ``bands``: those ``scored.bands`` name
    (default the temperature bands), the top one reported as ``hot``."""
    bands = ruleset.temperature if bands is None else bands
    y = np.asarray(outcomes)
    total = int(y.sum())
    if total in (0, len(y)):
        raise BacktestError(f"every outcome of {outcome!r} is {y[0]}: ranking needs both 0s and 1s")
    base = total / len(y)
    stages = np.asarray(scored.stages)
    deciles = []
    captured = 0
    groups = [rows for rows in np.array_split(ranking(scored.scores), DECILES) if len(rows)]
    for number, rows in enumerate(groups, start=1):
        converted = int(y[rows].sum())
        captured += converted
        rate = converted / len(rows)
        deciles.append(
            {
                "decile": number,
                "leads": len(rows),
                "converted": converted,
                "rate": round(rate, 4),
                "lift": round(rate / base, 3),
                "cumulative_gain": round(captured / total, 4),
            }
        )
    hot_band, threshold = max(bands, key=lambda band: band[1])
    labels = np.asarray(scored.bands)
    hot = labels == hot_band
    result: dict[str, Any] = {
        "ruleset": ruleset.name,
        "version": ruleset.version,
        "outcome": outcome,
        "rows": len(y),
        "base_rate": round(base, 4),
        "auc": _auc(y, scored.scores),
        "bands": {band: _group(y, labels == band) for band, _ in bands},
        "stages": {
            stage: _group(y, stages == stage)
            for stage in ruleset.all_stages
            if (stages == stage).any()
        },
        "deciles": deciles,
        "hot": {
            "band": hot_band,
            "threshold": threshold,
            "leads": int(hot.sum()),
            "precision": round(float(precision_score(y, hot, zero_division=0)), 4),
            "recall": round(float(recall_score(y, hot, zero_division=0)), 4),
        },
    }
    if scored.predicted.any():
        result["auc_parts"] = {
            "rules": _auc(y, scored.scores - scored.predicted),
            "model": _auc(y, scored.predicted),
            "mix": result["auc"],
        }
    return result


def backtest(
    compiled: CompiledRuleset, leads: PastLeads, score: str | None = None
) -> dict[str, Any]:
    scored = score_leads(compiled, leads, score)
    bands = ranked_by(compiled.ruleset, score).bands
    found = report(compiled.ruleset, scored, leads.outcomes, leads.outcome, bands)
    return {"score": score or "score", **found}


def plot_report(reports: dict[str, dict[str, Any]], path: Path) -> None:
    """A PNG: the cumulative gains curve by decile and the conversion rate per band, one
    series per ruleset (``reports`` maps a label to a report)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(11, 4.5), layout="constrained")
    FigureCanvasAgg(figure)
    gains, rates = figure.subplots(1, 2)
    gains.plot([0, 1], [0, 1], linestyle="--", color="grey", label="random")
    width = 0.8 / len(reports)
    for index, (label, data) in enumerate(reports.items()):
        share = np.cumsum([0] + [d["leads"] for d in data["deciles"]]) / data["rows"]
        curve = [0.0] + [d["cumulative_gain"] for d in data["deciles"]]
        gains.plot(share, curve, marker="o", label=f"{label} (AUC {data['auc']:.3f})")
        names = list(data["bands"])
        values = [data["bands"][band]["rate"] or 0.0 for band in names]
        spots = [i + (index - (len(reports) - 1) / 2) * width for i in range(len(names))]
        bars = rates.bar(spots, values, width=width, label=label)
        rates.bar_label(bars, labels=[f"{v:.0%}" for v in values])
        rates.set_xticks(range(len(names)), names)
    rates.axhline(
        next(iter(reports.values()))["base_rate"], linestyle="--", color="grey", label="base"
    )
    gains.set(
        title="cumulative gains",
        xlabel="share of leads, highest score first",
        ylabel="share of conversions",
    )
    rates.set(title="conversion rate per band", ylabel="converted")
    # An explicit place: "best" searches the data, slow enough on a loaded machine to warn.
    gains.legend(loc="lower right")
    rates.legend(loc="upper left")
    figure.savefig(path, format="png", dpi=100)
