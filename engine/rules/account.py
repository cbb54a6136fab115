"""What rules see of a lead's account (``lead.account.score``, ``lead.account.leads``): pure.

The caller (the ingest batch) knows the lead's *other* leads in the account and passes them in
as :class:`Peers`; the evaluator adds the lead's own current score, so a rule that raises the
lead's score in an evaluation raises its account's score for the rules after it too.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

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
