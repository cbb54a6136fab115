"""Accounts: leads grouped by company domain, for account-based (B2B) scoring.

In the flow: the ingest batch stores each lead's account key in ``lead.account_domain`` when it
writes the lead; when the ruleset reads ``lead.account.*`` the batch keeps an
:class:`AccountBook` of its leads' accounts (the stored aggregates of their other leads, loaded
in one query, plus the batch's own leads as they change) and hands each evaluation its
:class:`~engine.rules.account.Peers`. ``nurture accounts`` lists the hottest accounts from the
same column.

The account key is the lead's ``domain`` attribute when it is a non-empty text, else its email's
domain; trimmed, lower-cased, a leading ``www.`` dropped. Free-mail domains (:data:`FREE_MAIL`)
make no account: a gmail.com address is a person, not a company.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable, Mapping
from typing import Any

from sqlalchemy import Connection, Engine, case, func, select

from engine.rules import spec
from engine.rules.account import Aggregate, Peers, account_score
from engine.store.db import reading
from engine.store.schema import LEADS

FREE_MAIL = frozenset(
    {
        "gmail.com",
        "googlemail.com",
        "yahoo.com",
        "yahoo.co.uk",
        "yahoo.fr",
        "ymail.com",
        "hotmail.com",
        "hotmail.co.uk",
        "hotmail.fr",
        "outlook.com",
        "live.com",
        "msn.com",
        "aol.com",
        "icloud.com",
        "me.com",
        "mac.com",
        "proton.me",
        "protonmail.com",
        "pm.me",
        "gmx.com",
        "gmx.de",
        "gmx.net",
        "web.de",
        "mail.com",
        "yandex.com",
        "yandex.ru",
        "mail.ru",
        "qq.com",
        "163.com",
        "126.com",
        "zoho.com",
        "fastmail.com",
        "hey.com",
        "tutanota.com",
    }
)


def account_domain(attributes: Mapping[str, Any], email: str) -> str | None:
    """The account key of a lead, or None (free mail, no domain)."""
    value = attributes.get("domain")
    text = value if isinstance(value, str) and value.strip() else email.rpartition("@")[2]
    domain = text.strip().lower().removeprefix("www.")
    return domain if domain and domain not in FREE_MAIL else None


def stored_peers(
    conn: Connection, domains: Collection[str], exclude: Collection[int]
) -> dict[str, Peers]:
    """Count, score total and top score of each account's stored leads, leaving out ``exclude``
    (the batch's own leads, which the batch tracks as they change)."""
    found = {domain: Peers(0, 0, None) for domain in domains}
    if not domains:
        return found
    query = (
        select(
            LEADS.c.account_domain, func.count(), func.sum(LEADS.c.score), func.max(LEADS.c.score)
        )
        .where(LEADS.c.account_domain.in_(list(domains)), LEADS.c.id.not_in(list(exclude)))
        .group_by(LEADS.c.account_domain)
    )
    for domain, leads, total, top in conn.execute(query):
        found[domain] = Peers(int(leads), int(total), int(top))
    return found


class AccountBook:
    """The accounts of one batch's leads, current as the batch evaluates record by record: an
    account's score includes what earlier records of the same batch did to its leads, so a file
    scores the same whatever the batch size."""

    def __init__(self, fetch: Callable[[Collection[str]], dict[str, Peers]]) -> None:
        self._fetch = fetch  # stored aggregates of accounts, without the batch's leads
        self._stored: dict[str, Peers] = {}
        self._members: dict[str, dict[int, int]] = {}  # domain → batch lead id → score now
        self._where: dict[int, str] = {}

    def prefetch(self, domains: Iterable[str | None]) -> None:
        missing = {d for d in domains if d is not None and d not in self._stored}
        if missing:
            self._stored.update(self._fetch(missing))

    def place(self, lead_id: int, domain: str | None, score: int) -> None:
        """Where a batch lead belongs now, at what score."""
        before = self._where.pop(lead_id, None)
        if before is not None:
            del self._members[before][lead_id]
        if domain is not None:
            self._where[lead_id] = domain
            self._members.setdefault(domain, {})[lead_id] = score

    def peers(self, lead_id: int, domain: str | None) -> Peers | None:
        """The other leads of ``domain``'s account, as the lead's rules see them."""
        if domain is None:
            return None
        self.prefetch([domain])
        stored = self._stored[domain]
        others = [s for i, s in self._members.get(domain, {}).items() if i != lead_id]
        tops = [s for s in (stored.top, max(others, default=None)) if s is not None]
        return Peers(
            stored.leads + len(others), stored.total + sum(others), max(tops, default=None)
        )


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
