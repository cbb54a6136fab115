"""What rules see of a lead's account (``lead.account.score``, ``lead.account.leads``): pure.

The account key is the lead's ``domain`` attribute when it is a non-empty text, else its email's
domain; trimmed, lower-cased, a leading ``www.`` dropped. Free-mail domains (:data:`FREE_MAIL`)
make no account: a gmail.com address is a person, not a company.

The caller (the ingest batch) knows the lead's *other* leads in the account and passes them in
as :class:`Peers`; the evaluator adds the lead's own current score, so a rule that raises the
lead's score in an evaluation raises its account's score for the rules after it too.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

Aggregate = Literal["sum", "max", "mean"]
AGGREGATES: tuple[Aggregate, ...] = ("sum", "max", "mean")
# State tokens (rule paths without ``lead.``) that read the account.
ACCOUNT_FIELDS = frozenset({"account.score", "account.leads"})


def account_score(aggregate: Aggregate, leads: int, total: int, top: int) -> int | float:
    """An account's score from its leads' count, score total and highest score. A mean is
    rounded to 2 decimals, the same in rules and reports."""
    if aggregate == "sum":
        return total
    if aggregate == "max":
        return top
    return round(total / leads, 2)


@dataclass(frozen=True)
class Peers:
    """The other leads of a lead's account: how many, their score total and highest score."""

    leads: int
    total: int
    top: int | None

    def view(self, aggregate: Aggregate, own: int) -> dict[str, int | float]:
        """``account.leads`` and ``account.score`` counting the lead itself at score ``own``."""
        leads = self.leads + 1
        top = own if self.top is None else max(self.top, own)
        return {
            "account.leads": leads,
            "account.score": account_score(aggregate, leads, self.total + own, top),
        }


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
