"""``nurture accounts``: the hottest accounts (leads grouped by ``lead.account_domain``, which
ingest writes with each lead)."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Engine, case, func, select

from engine.db import reading
from engine.db.schema import LEADS
from engine.rules import spec
from engine.rules.account import Aggregate, account_score


def hottest_accounts(db: Engine, ruleset: spec.Ruleset, limit: int = 20) -> list[dict[str, Any]]:
    """Accounts by score (the ruleset's aggregate), highest first: domain, score, leads, the
    hottest lead and how many leads are in each temperature band."""
    aggregate: Aggregate = ruleset.account_aggregate
    leads, total, top = func.count(), func.sum(LEADS.c.score), func.max(LEADS.c.score)
    order = {"sum": total, "max": top, "mean": total * 1.0 / leads}[aggregate]
    ranked = (
        select(LEADS.c.account_domain, leads, total, top)
        .where(LEADS.c.account_domain.is_not(None))
        .group_by(LEADS.c.account_domain)
        .order_by(order.desc(), LEADS.c.account_domain)
        .limit(limit)
    )
    bands = [band for band, _ in ruleset.temperature]
    with reading(db) as conn:
        rows = conn.execute(ranked).all()
        domains = [row[0] for row in rows]
        counts = {
            domain: dict(zip(bands, values, strict=True))
            for domain, *values in conn.execute(
                select(
                    LEADS.c.account_domain,
                    *(func.sum(case((LEADS.c.temperature == band, 1), else_=0)) for band in bands),
                )
                .where(LEADS.c.account_domain.in_(domains))
                .group_by(LEADS.c.account_domain)
            )
        }
        first = (
            func.row_number()
            .over(
                partition_by=LEADS.c.account_domain,
                order_by=(LEADS.c.score.desc(), LEADS.c.id),
            )
            .label("n")
        )
        best = select(LEADS.c.account_domain, LEADS.c.email, LEADS.c.score, first).where(
            LEADS.c.account_domain.in_(domains)
        )
        inner = best.subquery()
        hottest = {
            domain: {"email": email, "score": score}
            for domain, email, score in conn.execute(
                select(inner.c.account_domain, inner.c.email, inner.c.score).where(inner.c.n == 1)
            )
        }
    return [
        {
            "domain": domain,
            "score": account_score(aggregate, int(n), int(t), int(m)),
            "leads": int(n),
            "hottest": hottest[domain],
            "temperatures": {band: int(counts[domain][band] or 0) for band in bands},
        }
        for domain, n, t, m in rows
    ]
