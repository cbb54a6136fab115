"""The pipeline report: how leads move through the funnel, computed in SQL from ``stage_history``.

In the flow: every stage change the rules make is a ``stage_history`` row (a new lead's first
stage included, rule ``new-lead``); this module reads them back set-based, in a handful of
queries whatever the number of leads, for ``nurture pipeline`` and ``GET /api/pipeline``. The
answers are the same on SQLite and PostgreSQL: times are whole seconds on both, and percentiles
are interpolated here from the two values SQL ranks around them.

Over a period [since, until) (either end open):

- ``leads``: leads in the stage now.
- ``entered``: distinct leads that entered the stage in the period.
- ``converted_to_next``: of those, how many afterwards (up to now) entered a later funnel stage,
  the next one or beyond; ``conversion_rate`` is their share of ``entered``.
- ``median_days``, ``p90_days``: time in the stage, over the stays that began in the period and
  have ended (the lead moved on; open stays show up as ``stuck``), interpolated between ranks
  like PostgreSQL's ``percentile_cont``.
- ``stuck``: leads in the stage now that entered it more than its ``stuck_days`` ago.
- ``backward`` / ``exits``: moves in the period to an earlier funnel stage / to an exit, per
  from, to and the rule that made them.
- ``cohorts`` (on request): leads by the month (UTC) they entered the funnel, if in the period,
  with how many reached each funnel stage (or went past it) and each exit.

The last funnel stage and the exits convert to nothing and are never stuck: those are null.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import (
    BigInteger,
    ColumnElement,
    Engine,
    Select,
    and_,
    case,
    cast,
    distinct,
    extract,
    func,
    literal,
    null,
    or_,
    select,
    union_all,
)

from engine.db import reading
from engine.db.schema import LEADS, STAGES
from engine.errors import NurtureError
from engine.rules import spec
from engine.timeutil import isoformat, parse_instant, utcnow

DEFAULT_STUCK_DAYS = 30
MAX_STUCK_DAYS = 100_000  # ~270 years: far longer would reach back before year 1, no date
# (numerator, denominator) of the percentiles reported: the median and p90.
PERCENTILES = {"median_days": (1, 2), "p90_days": (9, 10)}
DAY = 86_400


def pipeline(
    db: Engine,
    ruleset: spec.Ruleset,
    *,
    since: datetime | None = None,
    until: datetime | None = None,
    stuck_days: int | Mapping[str, int] = DEFAULT_STUCK_DAYS,
    cohorts: bool = False,
    now: datetime | None = None,
) -> dict[str, Any]:
    """The report as docs/design.md's pipeline JSON, plus ``period``, ``stuck_days``, ``backward``,
    ``exits`` and ``cohorts`` (None unless asked for). ``stuck_days``: one threshold for every
    stage, or per stage (others keep DEFAULT_STUCK_DAYS)."""
    now = now or utcnow()
    funnel = ruleset.stages
    open_stages = funnel[:-1]  # a lead can be stuck only where there is a next stage
    thresholds = {
        stage: stuck_days
        if isinstance(stuck_days, int)
        else stuck_days.get(stage, DEFAULT_STUCK_DAYS)
        for stage in open_stages
    }
    ranks = {stage: index for index, stage in enumerate(funnel)}
    with reading(db) as conn:
        dialect = conn.dialect.name
        if dialect == "postgresql":
            # The window functions sort every stage change of the period; in memory, not on disk.
            conn.exec_driver_sql("SET LOCAL work_mem = '128MB'")
        now_rows = conn.execute(_now_query(thresholds, now)).all()
        flow_rows = conn.execute(_flow_query(ranks, since, until, dialect)).all()
        move_rows = conn.execute(_moves_query(ranks, ruleset.exits, since, until)).all()
        cohort_rows = (
            conn.execute(_cohort_query(ranks, ruleset.exits, since, until, dialect)).all()
            if cohorts
            else None
        )

    leads = {stage: int(n) for stage, n, _ in now_rows}
    stuck = {stage: int(n or 0) for stage, _, n in now_rows}
    entered: dict[str, int] = {}
    converted: dict[str, int] = {}
    ranked: dict[str, dict[int, int]] = {}  # stage → rank → stay (seconds)
    stays: dict[str, int] = {}  # stage → how many ended stays
    for kind, stage, a, b, stay in flow_rows:
        if kind == "flow":
            entered[stage], converted[stage] = int(a), int(b)
        else:
            ranked.setdefault(stage, {})[int(a)] = int(stay)
            stays[stage] = int(b)
    known = set(ruleset.all_stages)
    extra = sorted((set(leads) | set(entered)) - known)
    stages = []
    for stage in (*ruleset.all_stages, *extra):
        has_next = stage in open_stages
        came = entered.get(stage, 0)
        row: dict[str, Any] = {
            "stage": stage,
            "leads": leads.get(stage, 0),
            "entered": came,
            "converted_to_next": converted.get(stage, 0) if has_next else None,
            "conversion_rate": round(converted.get(stage, 0) / came, 4)
            if has_next and came
            else None,
        }
        for key, (num, den) in PERCENTILES.items():
            seconds = _percentile(ranked.get(stage, {}), stays.get(stage, 0), num, den)
            row[key] = None if seconds is None else round(seconds / DAY, 2)
        row["stuck"] = stuck.get(stage, 0) if has_next else None
        stages.append(row)

    exits = set(ruleset.exits)
    moves = [
        {"from": frm, "to": to, "rule": rule, "moves": int(n)} for frm, to, rule, n in move_rows
    ]
    return {
        "stages": stages,
        "period": {"since": _iso(since), "until": _iso(until)},
        "now": isoformat(now),
        "stuck_days": thresholds,
        "backward": [m for m in moves if m["to"] not in exits],
        "exits": [m for m in moves if m["to"] in exits],
        "cohorts": None
        if cohort_rows is None
        else [_cohort(row, funnel, ruleset.exits) for row in cohort_rows],
    }


def stuck_thresholds(values: list[str], ruleset: spec.Ruleset) -> int | dict[str, int]:
    """``["45"]`` (every stage) or ``["lead=7", "sql=14"]`` (per stage), as the command line and
    the API take them; a bare number then stage overrides combine. ValueError says what is wrong."""
    every: int | None = None
    per_stage: dict[str, int] = {}
    for value in values:
        stage, _, days = value.rpartition("=")
        if not days.strip().isdigit():
            raise ValueError(f"{value!r}: write days as a whole number, e.g. 30 or mql=14")
        if int(days) > MAX_STUCK_DAYS:
            raise ValueError(f"{value!r}: at most {MAX_STUCK_DAYS} days")
        if stage and stage not in ruleset.stages[:-1]:
            raise ValueError(f"{value!r}: no stage {stage!r} that leads can be stuck in")
        if stage:
            per_stage[stage] = int(days)
        else:
            every = int(days)
    if not per_stage:
        return DEFAULT_STUCK_DAYS if every is None else every
    base = DEFAULT_STUCK_DAYS if every is None else every
    return {stage: per_stage.get(stage, base) for stage in ruleset.stages[:-1]}


class OptionError(NurtureError, ValueError):
    """A report option that does not parse: ``option`` names it as ``pipeline`` takes it."""

    def __init__(self, option: str, problem: str) -> None:
        super().__init__(f"{option}: {problem}")
        self.option, self.problem = option, problem


def report_options(
    ruleset: spec.Ruleset,
    since: str | None = None,
    until: str | None = None,
    stuck_days: list[str] | None = None,
    cohorts: bool = False,
) -> dict[str, Any]:
    """The keyword arguments of ``pipeline`` from their text forms (the API's query and the
    dashboard's form, the command line); an OptionError names the option at fault."""
    options: dict[str, Any] = {"cohorts": cohorts}
    parsers: dict[str, Any] = {
        "since": lambda: parse_instant(since) if since else None,
        "until": lambda: parse_instant(until) if until else None,
        "stuck_days": lambda: stuck_thresholds(stuck_days or [str(DEFAULT_STUCK_DAYS)], ruleset),
    }
    for name, parse in parsers.items():
        try:
            options[name] = parse()
        except ValueError as error:
            raise OptionError(name, str(error)) from None
    return options


def _iso(at: datetime | None) -> str | None:
    return None if at is None else isoformat(at)


def _percentile(values: Mapping[int, int], n: int, num: int, den: int) -> float | None:
    """The num/den percentile of n sorted values, of which ``values`` holds ranks (1-based)
    lo and lo + 1 around it, interpolated as percentile_cont does."""
    if not n:
        return None
    lo, rest = divmod(num * (n - 1), den)
    low = values[lo + 1]
    return low if not rest else low + (values[lo + 2] - low) * rest / den


def _seconds(at: ColumnElement[datetime], dialect: str) -> ColumnElement[int]:
    """Whole epoch seconds (both databases truncate alike, so stays compare equal)."""
    if dialect == "postgresql":
        return cast(func.floor(extract("epoch", at)), BigInteger)
    return func.unixepoch(at)


def _month(at: ColumnElement[datetime], dialect: str) -> ColumnElement[str]:
    if dialect == "postgresql":
        return func.to_char(func.timezone("UTC", at), "YYYY-MM")
    return func.strftime("%Y-%m", at)


def _rank(column: ColumnElement[str], ranks: Mapping[str, int]) -> ColumnElement[int]:
    """A stage's position in the funnel; null for exits and unknown stages."""
    return case(dict(ranks), value=column)


def _period(
    at: ColumnElement[datetime], since: datetime | None, until: datetime | None
) -> list[ColumnElement[bool]]:
    return ([at >= since] if since else []) + ([at < until] if until else [])


def _now_query(thresholds: Mapping[str, int], now: datetime) -> Select[Any]:
    """Leads per stage now, and how many of them entered it before its stuck threshold."""
    late = [
        (
            and_(LEADS.c.stage == stage, LEADS.c.stage_entered_at < now - timedelta(days=days)),
            1,
        )
        for stage, days in thresholds.items()
    ]
    stuck = func.sum(case(*late, else_=0)) if late else literal(0)
    return select(LEADS.c.stage, func.count(), stuck).group_by(LEADS.c.stage)


def _flow_query(
    ranks: Mapping[str, int], since: datetime | None, until: datetime | None, dialect: str
) -> Any:
    """Per stage entered in the period: ('flow', stage, entered, converted, null), and the
    ended stays ranked around each percentile: ('stay', stage, rank, stays, seconds)."""
    history = STAGES
    seconds = _seconds(history.c.at, dialect)
    rank = _rank(history.c.to_stage, ranks)
    lead, order = history.c.lead_id, (history.c.at, history.c.id)
    # Window functions look only forward, so rows before the period can be left out first.
    moves = (
        select(
            history.c.lead_id,
            history.c.to_stage,
            history.c.at,
            rank.label("r"),
            (func.lead(seconds).over(partition_by=lead, order_by=order) - seconds).label("stay"),
            func.max(rank).over(partition_by=lead, order_by=order, rows=(1, None)).label("later"),
        )
        .where(*_period(history.c.at, since, None))
        .subquery("moves")
    )
    entries = select(moves).where(*_period(moves.c.at, None, until)).cte("entries")
    flow = select(
        literal("flow"),
        entries.c.to_stage,
        func.count(distinct(entries.c.lead_id)),
        func.count(distinct(case((entries.c.later > entries.c.r, entries.c.lead_id)))),
        cast(null(), BigInteger),
    ).group_by(entries.c.to_stage)
    ended = (
        select(
            entries.c.to_stage,
            entries.c.stay,
            func.row_number()
            .over(partition_by=entries.c.to_stage, order_by=entries.c.stay)
            .label("n"),
            func.count().over(partition_by=entries.c.to_stage).label("stays"),
        )
        .where(entries.c.stay.is_not(None))
        .subquery("ended")
    )
    around = [
        ended.c.n.between(
            (num * (ended.c.stays - 1)) // den + 1, (num * (ended.c.stays - 1)) // den + 2
        )
        for num, den in PERCENTILES.values()
    ]
    ranked = select(
        literal("stay"), ended.c.to_stage, ended.c.n, ended.c.stays, ended.c.stay
    ).where(or_(*around))
    return union_all(flow, ranked)


def _moves_query(
    ranks: Mapping[str, int], exits: tuple[str, ...], since: datetime | None, until: datetime | None
) -> Select[Any]:
    """Backward moves and exits in the period, per from, to and rule, most frequent first."""
    history = STAGES
    backward = _rank(history.c.to_stage, ranks) < _rank(history.c.from_stage, ranks)
    count = func.count()
    return (
        select(history.c.from_stage, history.c.to_stage, history.c.rule, count)
        .where(
            history.c.from_stage.is_not(None),
            or_(history.c.to_stage.in_(exits), backward),
            *_period(history.c.at, since, until),
        )
        .group_by(history.c.from_stage, history.c.to_stage, history.c.rule)
        .order_by(count.desc(), history.c.from_stage, history.c.to_stage, history.c.rule)
    )


def _cohort_query(
    ranks: Mapping[str, int],
    exits: tuple[str, ...],
    since: datetime | None,
    until: datetime | None,
    dialect: str,
) -> Any:
    """Per month of a lead's first stage: leads, how many reached each funnel stage or beyond,
    how many entered each exit."""
    history = STAGES
    per_lead = (
        select(
            func.min(history.c.at).label("first"),
            func.max(_rank(history.c.to_stage, ranks)).label("top"),
            *(
                func.max(case((history.c.to_stage == name, 1), else_=0)).label(f"x{i}")
                for i, name in enumerate(exits)
            ),
        )
        .group_by(history.c.lead_id)
        .subquery("per_lead")
    )
    month = _month(per_lead.c.first, dialect)
    return (
        select(
            month,
            func.count(),
            *(func.sum(case((per_lead.c.top >= rank, 1), else_=0)) for rank in ranks.values()),
            *(func.sum(per_lead.c[f"x{i}"]) for i in range(len(exits))),
        )
        .where(*_period(per_lead.c.first, since, until))
        .group_by(month)
        .order_by(month)
    )


def _cohort(row: Any, funnel: tuple[str, ...], exits: tuple[str, ...]) -> dict[str, Any]:
    month, leads, *counts = row
    return {
        "cohort": month,
        "leads": int(leads),
        "reached": {stage: int(n) for stage, n in zip(funnel, counts, strict=False)},
        "exits": {name: int(n) for name, n in zip(exits, counts[len(funnel) :], strict=True)},
    }
