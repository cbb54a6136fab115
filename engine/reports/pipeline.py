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

from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import (
    BigInteger,
    ColumnElement,
    Connection,
    Engine,
    Select,
    Subquery,
    case,
    cast,
    distinct,
    extract,
    func,
    literal,
    literal_column,
    null,
    or_,
    select,
    union_all,
)

from engine.db import reading, rollup
from engine.db.schema import (
    COHORT_DAYS,
    ENTRY_DAYS,
    LEADS,
    LENGTH_DAYS,
    MOVE_DAYS,
    STAGES,
    STAYS,
)
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
    stage, or per stage (others keep DEFAULT_STUCK_DAYS). Read from the rollups that
    ``engine.db.rollup.record_moves`` keeps: whole UTC days of the period from the daily rollups,
    its partial first and last days from ``stage_stay`` and ``stage_history``."""
    return _report(db, ruleset, _from_rollups, since, until, stuck_days, cohorts, now)


def pipeline_reference(
    db: Engine,
    ruleset: spec.Ruleset,
    *,
    since: datetime | None = None,
    until: datetime | None = None,
    stuck_days: int | Mapping[str, int] = DEFAULT_STUCK_DAYS,
    cohorts: bool = False,
    now: datetime | None = None,
) -> dict[str, Any]:
    """``pipeline`` computed the straightforward way, with window functions over every stage
    change of the period: seconds at a million leads, kept as what the rollups must equal
    (the rollup tests and bench/pipeline.py compare the two)."""
    return _report(db, ruleset, _from_history, since, until, stuck_days, cohorts, now)


@dataclass
class _Figures:
    """What a report reads from the stage changes, however it reads them."""

    entered: dict[str, int] = field(default_factory=dict)
    converted: dict[str, int] = field(default_factory=dict)
    ranked: dict[str, dict[int, int]] = field(default_factory=dict)  # stage → rank → seconds
    stays: dict[str, int] = field(default_factory=dict)  # stage → how many ended stays
    moves: list[Any] = field(default_factory=list)  # (from, to, rule, moves), most first
    cohorts: list[Any] | None = None  # (month, leads, reached per funnel stage..., per exit...)


_Reader = Callable[
    [Connection, spec.Ruleset, dict[str, int], datetime | None, datetime | None, bool], _Figures
]


def _report(
    db: Engine,
    ruleset: spec.Ruleset,
    read: _Reader,
    since: datetime | None,
    until: datetime | None,
    stuck_days: int | Mapping[str, int],
    cohorts: bool,
    now: datetime | None,
) -> dict[str, Any]:
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
        if conn.dialect.name == "postgresql":
            # Every query below sees the same moment (SQLite's read transaction already does).
            conn.exec_driver_sql("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
        now_rows = conn.execute(_now_query(thresholds, now)).all()
        figures = read(conn, ruleset, ranks, since, until, cohorts)

    leads = {stage: int(n) for kind, stage, n in now_rows if kind == "leads"}
    stuck = {stage: int(n) for kind, stage, n in now_rows if kind == "stuck"}
    known = set(ruleset.all_stages)
    extra = sorted((set(leads) | set(figures.entered)) - known)
    stages = []
    for stage in (*ruleset.all_stages, *extra):
        has_next = stage in open_stages
        came = figures.entered.get(stage, 0)
        converted = figures.converted.get(stage, 0)
        row: dict[str, Any] = {
            "stage": stage,
            "leads": leads.get(stage, 0),
            "entered": came,
            "converted_to_next": converted if has_next else None,
            "conversion_rate": round(converted / came, 4) if has_next and came else None,
        }
        for key, (num, den) in PERCENTILES.items():
            ranked, n = figures.ranked.get(stage, {}), figures.stays.get(stage, 0)
            seconds = _percentile(ranked, n, num, den)
            row[key] = None if seconds is None else round(seconds / DAY, 2)
        row["stuck"] = stuck.get(stage, 0) if has_next else None
        stages.append(row)

    exits = set(ruleset.exits)
    moves = [
        {"from": frm, "to": to, "rule": rule, "moves": int(n)} for frm, to, rule, n in figures.moves
    ]
    return {
        "stages": stages,
        "period": {"since": _iso(since), "until": _iso(until)},
        "now": isoformat(now),
        "stuck_days": thresholds,
        "backward": [m for m in moves if m["to"] not in exits],
        "exits": [m for m in moves if m["to"] in exits],
        "cohorts": None
        if figures.cohorts is None
        else [_cohort(row, funnel, ruleset.exits) for row in figures.cohorts],
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


def _from_history(
    conn: Connection,
    ruleset: spec.Ruleset,
    ranks: dict[str, int],
    since: datetime | None,
    until: datetime | None,
    cohorts: bool,
) -> _Figures:
    dialect = conn.dialect.name
    if dialect == "postgresql":
        # The window functions sort every stage change of the period; in memory, not on disk.
        conn.exec_driver_sql("SET LOCAL work_mem = '128MB'")
    figures = _Figures()
    for kind, stage, a, b, stay in conn.execute(_flow_query(ranks, since, until, dialect)):
        if kind == "flow":
            figures.entered[stage], figures.converted[stage] = int(a), int(b)
        else:
            figures.ranked.setdefault(stage, {})[int(a)] = int(stay)
            figures.stays[stage] = int(b)
    history = STAGES.c
    changes = select(history.from_stage, history.to_stage, history.rule, literal(1).label("n"))
    source = changes.where(*_period(history.at, since, until)).subquery("changes")
    figures.moves = list(conn.execute(_moves_query(ranks, ruleset.exits, source)))
    if cohorts:
        query = _cohort_query(ranks, ruleset.exits, since, until, dialect)
        figures.cohorts = list(conn.execute(query))
    return figures


def _from_rollups(
    conn: Connection,
    ruleset: spec.Ruleset,
    ranks: dict[str, int],
    since: datetime | None,
    until: datetime | None,
    cohorts: bool,
) -> _Figures:
    bits = rollup.codes(conn)
    days, edges = _split(since, until)
    figures = _Figures()
    _read_entries(conn, figures, bits, ranks, since, until, days, edges)
    _read_lengths(conn, figures, since, until, days, edges)
    history, moved = STAGES.c, MOVE_DAYS.c
    parts = (
        []
        if days is None
        else [select(moved.from_stage, moved.to_stage, moved.rule, moved.n).where(*days(moved.day))]
    )
    parts += [
        select(history.from_stage, history.to_stage, history.rule, literal(1).label("n")).where(
            *_period(history.at, start, end)
        )
        for start, end in edges
    ]
    if parts:
        source = union_all(*parts).subquery("changes")
        figures.moves = list(conn.execute(_moves_query(ranks, ruleset.exits, source)))
    if cohorts:
        figures.cohorts = _read_cohorts(conn, bits, ranks, ruleset.exits, days, edges)
    return figures


# Conditions on a rollup's day column for the period's whole days (None: it has none).
_Days = Callable[[ColumnElement[int]], list[ColumnElement[bool]]] | None
# The partial days of the period, read from the stays and changes themselves.
_Edges = list[tuple[datetime | None, datetime | None]]


def _split(since: datetime | None, until: datetime | None) -> tuple[_Days, _Edges]:
    """The period as whole UTC days [first, end) and the parts of days at either end."""
    first = end = None
    edges: _Edges = []
    if since is not None:
        first = rollup.day(since)
        if since > _midnight(first):
            first += 1
            edges.append((since, _midnight(first)))
    if until is not None:
        end = rollup.day(until)
        if until > _midnight(end):
            edges.append((_midnight(end), until))
    if first is not None and end is not None and first >= end:
        return None, [(since, until)]

    def days(column: ColumnElement[int]) -> list[ColumnElement[bool]]:
        return ([column >= first] if first is not None else []) + (
            [column < end] if end is not None else []
        )

    return days, edges


def _narrow(conn: Connection, conditions: list[ColumnElement[bool]]) -> list[ColumnElement[bool]]:
    """Conditions that select few stays (a partial day, re-entries), said so to SQLite's
    planner, which otherwise skip-scans another index of stage_stay."""
    if conn.dialect.name != "sqlite":
        return conditions
    return [func.likelihood(condition, literal_column("0.001")) for condition in conditions]


def _midnight(day: int) -> datetime:
    return rollup.EPOCH + timedelta(days=day)


def _read_entries(
    conn: Connection,
    figures: _Figures,
    bits: Mapping[str, int],
    ranks: Mapping[str, int],
    since: datetime | None,
    until: datetime | None,
    days: _Days,
    edges: _Edges,
) -> None:
    """``entered`` and ``converted``: stays begun in the period, a lead's re-entries counted once
    (those whose previous entry into the stage is in the period too are taken off)."""
    entry, stay = ENTRY_DAYS.c, STAYS.c
    queries = (
        []
        if days is None
        else [
            select(entry.stage, entry.later, entry.reentry, func.sum(entry.n))
            .where(*days(entry.day))
            .group_by(entry.stage, entry.later, entry.reentry)
        ]
    )
    reentry = stay.prev_entered_at.is_not(None)
    queries += [
        select(stay.stage, stay.later, reentry, func.count())
        .where(*_narrow(conn, _period(stay.entered_at, start, end)))
        .group_by(stay.stage, stay.later, reentry)
        for start, end in edges
    ]
    once: Counter[tuple[str, int]] = Counter()
    for query in queries:
        for stage, later, again, n in conn.execute(query):
            if since is not None or not again:
                once[stage, int(later)] += int(n)
    if since is not None:
        repeated = (
            select(stay.stage, stay.later, func.count())
            .where(
                *_narrow(conn, [stay.prev_entered_at >= since]),
                *_period(stay.entered_at, None, until),
            )
            .group_by(stay.stage, stay.later)
        )
        for stage, later, n in conn.execute(repeated):
            once[stage, int(later)] -= int(n)
    higher = {
        stage: sum(bits.get(other, 0) for other, above in ranks.items() if above > rank)
        for stage, rank in ranks.items()
    }
    for (stage, later), n in once.items():
        if n:
            figures.entered[stage] = figures.entered.get(stage, 0) + n
            if later & higher.get(stage, 0):
                figures.converted[stage] = figures.converted.get(stage, 0) + n


def _read_lengths(
    conn: Connection,
    figures: _Figures,
    since: datetime | None,
    until: datetime | None,
    days: _Days,
    edges: _Edges,
) -> None:
    """Ended stays per stage and the lengths ranked around each percentile: the counts per
    length bucket say which bucket holds a rank, and only that bucket's stays are read."""
    length, stay = LENGTH_DAYS.c, STAYS.c
    queries = (
        []
        if days is None
        else [
            select(length.stage, length.bucket, func.sum(length.n))
            .where(*days(length.day))
            .group_by(length.stage, length.bucket)
        ]
    )
    queries += [
        select(stay.stage, stay.bucket, func.count())
        .where(stay.bucket.is_not(None), *_narrow(conn, _period(stay.entered_at, start, end)))
        .group_by(stay.stage, stay.bucket)
        for start, end in edges
    ]
    buckets: dict[str, Counter[int]] = {}
    for query in queries:
        for stage, bucket, n in conn.execute(query):
            buckets.setdefault(stage, Counter())[int(bucket)] += int(n)
    for stage, counts in buckets.items():
        total = sum(counts.values())
        if not total:
            continue
        wanted = set()
        for num, den in PERCENTILES.values():
            lo, rest = divmod(num * (total - 1), den)
            wanted |= {lo + 1, lo + 2} if rest else {lo + 1}
        ranked: dict[int, int] = {}
        before = 0
        for bucket in sorted(counts):
            inside = sorted(k - before for k in wanted if before < k <= before + counts[bucket])
            if inside:
                lengths = conn.execute(
                    select(stay.stay)
                    .where(
                        stay.stage == stage,
                        stay.bucket == bucket,
                        *_period(stay.entered_at, since, until),
                    )
                    .order_by(stay.stay)
                    .offset(inside[0] - 1)
                    .limit(inside[-1] - inside[0] + 1)
                ).scalars()
                values = dict(enumerate(lengths, start=before + inside[0]))
                ranked |= {k + before: int(values[k + before]) for k in inside}
            before += counts[bucket]
        figures.ranked[stage], figures.stays[stage] = ranked, total


def _read_cohorts(
    conn: Connection,
    bits: Mapping[str, int],
    ranks: Mapping[str, int],
    exits: tuple[str, ...],
    days: _Days,
    edges: _Edges,
) -> list[Any]:
    """Leads per month of their first move, from the stages each reached (as bits)."""
    cohort, stay = COHORT_DAYS.c, STAYS.c
    groups: Counter[tuple[str, int]] = Counter()  # (month, reached) → leads
    if days is not None:
        query = (
            select(cohort.day, cohort.reached, func.sum(cohort.n))
            .where(*days(cohort.day))
            .group_by(cohort.day, cohort.reached)
        )
        for day, reached, n in conn.execute(query):
            groups[_midnight(int(day)).strftime("%Y-%m"), int(reached)] += int(n)
    for start, end in edges:
        firsts = select(stay.entered_at, stay.stage, stay.later).where(
            stay.seq == 0, *_narrow(conn, _period(stay.entered_at, start, end))
        )
        for at, stage, later in conn.execute(firsts):
            groups[at.strftime("%Y-%m"), bits.get(stage, 0) | int(later)] += 1
    months: dict[str, list[int]] = {}
    for (month, reached), n in groups.items():
        counts = months.setdefault(month, [0] * (1 + len(ranks) + len(exits)))
        counts[0] += n
        top = max(
            (rank for stage, rank in ranks.items() if reached & bits.get(stage, 0)), default=-1
        )
        for rank in range(top + 1):
            counts[1 + rank] += n
        for i, name in enumerate(exits):
            if reached & bits.get(name, 0):
                counts[1 + len(ranks) + i] += n
    return [(month, *counts) for month, counts in sorted(months.items()) if counts[0]]


def _now_query(thresholds: Mapping[str, int], now: datetime) -> Any:
    """('leads', stage, n): leads per stage now; ('stuck', stage, n): how many of them entered
    it before its stuck threshold. Each a count over a range of ix_lead_stage_entered alone."""
    lead = LEADS.c
    stuck = [
        select(literal("stuck"), literal(stage), func.count()).where(
            lead.stage == stage, lead.stage_entered_at < now - timedelta(days=days)
        )
        for stage, days in thresholds.items()
    ]
    return union_all(
        select(literal("leads"), lead.stage, func.count()).group_by(lead.stage), *stuck
    )


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


def _moves_query(ranks: Mapping[str, int], exits: tuple[str, ...], source: Subquery) -> Select[Any]:
    """Backward moves and exits among ``source``'s (from_stage, to_stage, rule, n) rows, per
    from, to and rule, most frequent first."""
    c = source.c
    backward = _rank(c.to_stage, ranks) < _rank(c.from_stage, ranks)
    count = func.sum(c.n)
    return (
        select(c.from_stage, c.to_stage, c.rule, count)
        .where(c.from_stage.is_not(None), or_(c.to_stage.in_(exits), backward))
        .group_by(c.from_stage, c.to_stage, c.rule)
        .having(count > 0)
        .order_by(count.desc(), c.from_stage, c.to_stage, c.rule)
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
