"""Predictive score: past leads with known outcomes → a scikit-learn model, versioned on disk,
that a ruleset component (``model:``) reads to score each lead from its attributes.

``train`` is pure (rows in, fitted model and cross-validated AUC out); ``save`` and
``load_model`` are the file edges. A model file is a joblib dump of the pipeline and its
metadata; ``NAME-vN.joblib`` is never overwritten, so the ledger's ``model:NAME-vN`` always names
the model that wrote it. Loading a model unpickles it: only load files you trained.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import joblib
import numpy as np
import sklearn
from sklearn.compose import ColumnTransformer
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedKFold, cross_val_score
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import FunctionTransformer, OneHotEncoder, StandardScaler

from engine.errors import NurtureError
from engine.rules.compile import as_number

FORMAT = "nurture-model/1"
Algorithm = Literal["logistic", "boosting"]
ALGORITHMS: tuple[Algorithm, ...] = ("logistic", "boosting")
MISSING = "(missing)"
FOLDS = 5
SEED = 0
# Scores remembered per model: a lead's attributes rarely change between its events.
MEMO_SIZE = 100_000


class ModelError(NurtureError, ValueError):
    pass


def _as_float(matrix: Any) -> Any:
    return np.asarray(matrix, dtype=float)


@dataclass
class Model:
    version: str  # NAME-vN
    meta: dict[str, Any]
    pipeline: Pipeline
    _memo: dict[tuple[Any, ...], int] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        self.numeric: list[str] = list(self.meta["numeric"])
        self.categorical: list[str] = list(self.meta["categorical"])
        self._columns = self.numeric + self.categorical

    def _key(self, attributes: Mapping[str, Any]) -> tuple[Any, ...]:
        return tuple(attributes.get(c) for c in self._columns)

    def probabilities(self, rows: Sequence[Mapping[str, Any]]) -> Any:
        matrix = feature_matrix(rows, self.numeric, self.categorical)
        return self.pipeline.predict_proba(matrix)[:, 1]

    def prime(self, rows: Sequence[Mapping[str, Any]]) -> None:
        if len(self._memo) + len(rows) > MEMO_SIZE:
            self._memo.clear()
        for row, p in zip(rows, self.probabilities(rows), strict=True):
            self._memo[self._key(row)] = round(float(p) * 100)

    def score(self, attributes: Mapping[str, Any]) -> int:
        """The probability of the outcome × 100, rounded."""
        key = self._key(attributes)
        if key not in self._memo:
            self.prime([attributes])
        return self._memo[key]


def feature_matrix(
    rows: Sequence[Mapping[str, Any]], numeric: list[str], categorical: list[str]
) -> Any:
    """Rows → an object array: numeric columns first (floats, NaN when missing or not a
    number), then categorical ones (text, MISSING when absent)."""
    matrix = np.empty((len(rows), len(numeric) + len(categorical)), dtype=object)
    for i, row in enumerate(rows):
        for j, name in enumerate(numeric):
            number = as_number(row.get(name))
            matrix[i, j] = math.nan if number is None else float(number)
        for j, name in enumerate(categorical, start=len(numeric)):
            value = row.get(name)
            matrix[i, j] = MISSING if value is None or value == "" else str(value)
    return matrix


def column_kinds(
    rows: Sequence[Mapping[str, Any]], columns: list[str]
) -> tuple[list[str], list[str]]:
    """(numeric, categorical): a column is numeric when every value it has is a number.
    Columns with no values at all teach nothing and are left out."""
    numeric, categorical = [], []
    for name in columns:
        values = [row[name] for row in rows if row.get(name) is not None]
        if not values:
            continue
        if all(isinstance(v, int | float) and not isinstance(v, bool) for v in values):
            numeric.append(name)
        else:
            categorical.append(name)
    return numeric, categorical


def build_pipeline(numeric: int, categorical: int, algorithm: Algorithm) -> Pipeline:
    prepare = ColumnTransformer(
        [
            (
                "numeric",
                make_pipeline(
                    FunctionTransformer(_as_float),
                    SimpleImputer(strategy="median", add_indicator=True, keep_empty_features=True),
                    StandardScaler(),
                ),
                list(range(numeric)),
            ),
            (
                "categorical",
                # Categories seen fewer than 10 times share one column: too rare to learn from.
                OneHotEncoder(
                    handle_unknown="infrequent_if_exist", min_frequency=10, sparse_output=False
                ),
                list(range(numeric, numeric + categorical)),
            ),
        ]
    )
    classifier: Any = (
        LogisticRegression(max_iter=2000)
        if algorithm == "logistic"
        else HistGradientBoostingClassifier(random_state=SEED)
    )
    return Pipeline([("prepare", prepare), ("classify", classifier)])


@dataclass(frozen=True)
class Trained:
    pipeline: Pipeline
    meta: dict[str, Any]


def train(
    rows: Sequence[Mapping[str, Any]],
    outcomes: Sequence[int],
    columns: list[str],
    algorithm: Algorithm = "logistic",
) -> Trained:
    """Fit on every row after a stratified 5-fold cross-validation (fixed seed) whose mean AUC
    is what the model is expected to do on leads it has not seen."""
    y = np.asarray(outcomes)
    if len(set(outcomes)) < 2:
        raise ModelError("the outcome needs both 0s and 1s to learn from")
    if int(np.bincount(y).min()) < FOLDS:
        raise ModelError(f"each outcome needs at least {FOLDS} rows for {FOLDS}-fold validation")
    numeric, categorical = column_kinds(rows, columns)
    if not numeric and not categorical:
        raise ModelError("no column has any values to learn from")
    matrix = feature_matrix(rows, numeric, categorical)
    pipeline = build_pipeline(len(numeric), len(categorical), algorithm)
    folds = StratifiedKFold(n_splits=FOLDS, shuffle=True, random_state=SEED)
    aucs = cross_val_score(pipeline, matrix, y, cv=folds, scoring="roc_auc")
    pipeline.fit(matrix, y)
    meta = {
        "algorithm": algorithm,
        "numeric": numeric,
        "categorical": categorical,
        "rows": len(y),
        "base_rate": round(float(y.mean()), 4),
        "cv_auc": round(float(aucs.mean()), 4),
        "cv_auc_folds": [round(float(a), 4) for a in aucs],
        "sklearn": sklearn.__version__,
    }
    return Trained(pipeline, meta)


def save(trained: Trained, folder: Path, name: str, extra: Mapping[str, Any]) -> Path:
    """Write ``folder/NAME-vN.joblib`` (N one above the highest there) and its metadata as
    ``NAME-vN.json``; an existing version is never overwritten."""
    folder.mkdir(parents=True, exist_ok=True)
    taken = [_version_number(p.stem, name) for p in folder.glob(f"{name}-v*.joblib")]
    number = max((n for n in taken if n is not None), default=0) + 1
    while True:
        path = folder / f"{name}-v{number}.joblib"
        try:
            handle = path.open("xb")  # exclusive: a concurrent trainer takes the next number
        except FileExistsError:
            number += 1
            continue
        break
    meta = {
        "format": FORMAT,
        "version": f"{name}-v{number}",
        **trained.meta,
        **extra,
        "trained_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    with handle:
        joblib.dump({"format": FORMAT, "meta": meta, "pipeline": trained.pipeline}, handle)
    path.with_suffix(".json").write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    return path


def _version_number(stem: str, name: str) -> int | None:
    suffix = stem.removeprefix(f"{name}-v")
    return int(suffix) if suffix.isdigit() else None


def load_model(path: Path) -> Model:
    """A model written by ``save``; ModelError says what is wrong with any other file."""
    if not path.is_file():
        raise ModelError(f"no model file {path}")
    try:
        content = joblib.load(path)
    except Exception as error:  # pickle raises many kinds on a file that is not a joblib dump
        raise ModelError(f"{path} is not a model file ({type(error).__name__})") from None
    if not isinstance(content, dict) or content.get("format") != FORMAT:
        raise ModelError(f"{path} is not a model trained by `nurture model train`")
    return Model(content["meta"]["version"], content["meta"], content["pipeline"])
