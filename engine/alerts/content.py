"""What sales sees: the alert as a Slack-compatible webhook body (Block Kit ``blocks`` with a
``text`` fallback) and as an email (text and simple HTML). Pure: built from an
:class:`AlertView` the enqueue step loads. Plain code rather than a template: every value is
lead data, escaped for where it goes (HTML for the email's HTML part, Slack's ``&<>`` for
mrkdwn, nothing for the subject and text part)."""

from __future__ import annotations

from dataclasses import dataclass, field
from html import escape as html_escape
from typing import Any
from urllib.parse import quote

from engine.settings import SALES


@dataclass(frozen=True)
class AlertView:
    email: str
    name: str | None
    company: str | None
    job_title: str | None
    score: int
    temperature: str
    stage: str
    rule: str  # the rule that raised the alert
    reasons: list[dict[str, Any]]  # top reasons: {"rule", "points", "times"}
    events: list[dict[str, Any]]  # the latest events: {"type", "at", "detail"}
    url: str  # the lead's page
    owner: str | None
    target: str = SALES  # who it is for: sales, or a target of NURTURE_ALERT_TARGETS
    # The lead's named scores: name → (total, band); for targets other than sales, also the
    # latest score changes ({"rule", "component", "delta", "at"}) and purchases ({"at",
    # "detail"}).
    named: dict[str, tuple[int, str]] = field(default_factory=dict)
    changes: list[dict[str, Any]] = field(default_factory=list)
    purchases: list[dict[str, Any]] = field(default_factory=list)

    @property
    def title(self) -> str:
        """What kind of alert: "Hot lead" for sales, "Account manager alert" and so on."""
        if self.target == SALES:
            return "Hot lead"
        return f"{self.target.replace('-', ' ').replace('_', ' ').capitalize()} alert"


def lead_url(public_url: str, email: str) -> str:
    return f"{public_url.rstrip('/')}/leads/{quote(email, safe='@')}"


def display_name(attributes: dict[str, Any]) -> str | None:
    parts = [str(attributes[k]) for k in ("first_name", "last_name") if attributes.get(k)]
    return " ".join(parts) or None


def headline(view: AlertView) -> str:
    who = f"{view.name} ({view.email})" if view.name else view.email
    at = f" at {view.company}" if view.company else ""
    if view.target == SALES:
        return f"Hot lead: {who}{at}, score {view.score} ({view.temperature}, {view.stage})"
    scores = ", ".join(f"{name} {total} ({band})" for name, (total, band) in view.named.items())
    return f"{view.title}: {who}{at}, {scores or f'score {view.score}'}, stage {view.stage}"


def _change_line(change: dict[str, Any]) -> str:
    return f"{change['at']} {change['rule']} {change['delta']:+d} {change['component']}"


def _purchase_line(purchase: dict[str, Any]) -> str:
    return " ".join(str(part) for part in (purchase["at"], purchase["detail"]) if part)


def customer_sections(view: AlertView) -> list[tuple[str, list[str]]]:
    """(heading, lines) of what a target other than sales is shown beyond the lead: the rules
    behind its latest score changes and its latest purchases."""
    if view.target == SALES:
        return []
    return [
        ("Latest score changes", [_change_line(c) for c in view.changes]),
        ("Recent purchases", [_purchase_line(p) for p in view.purchases] or ["none"]),
    ]


def _why(view: AlertView) -> str:
    return ", ".join(f"{r['rule']} +{r['points']}" for r in view.reasons) or "no points yet"


def _escape(text: str) -> str:
    """Slack mrkdwn reads &, < and > as markup (links, @channel, mentions): escaped as Slack's
    formatting guide says, so lead data shows as the text it is."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _link(url: str, label: str) -> str:
    """A mrkdwn link ``<url|label>``. In the URL a ``|`` would end it and ``>`` the link, so
    both (and ``<``) are percent-encoded; a label holding a ``|`` has no safe spelling (Slack
    has no escape for it), so such a label is shown as plain text without the link."""
    if "|" in label:
        return _escape(label)
    target = url.replace("|", "%7C").replace("<", "%3C").replace(">", "%3E")
    return f"<{_escape(target)}|{_escape(label)}>"


def slack_payload(view: AlertView) -> dict[str, Any]:
    fields = [
        ("Lead", _link(f"mailto:{quote(view.email, safe='@')}", view.email)),
        ("Company", _escape(view.company or "—")),
        ("Score", f"{view.score} ({view.temperature})"),
        ("Stage", _escape(view.stage)),
        ("Title", _escape(view.job_title or "—")),
        ("Owner", _escape(view.owner or "unassigned")),
    ]
    reasons = "\n".join(
        f"• `{_escape(r['rule'])}` +{r['points']}" + (f" ×{r['times']}" if r["times"] > 1 else "")
        for r in view.reasons
    )
    events = "\n".join(
        f"• {_escape(str(e['at']))} {_escape(e['type'])}"
        + (f" {_escape(e['detail'])}" if e["detail"] else "")
        for e in view.events
    )
    blocks: list[dict[str, Any]] = [
        {"type": "header", "text": {"type": "plain_text", "text": view.title[:150]}},
        {
            "type": "section",
            "text": {"type": "mrkdwn", "text": _escape(headline(view))[:3000]},
            "fields": [{"type": "mrkdwn", "text": f"*{k}*\n{v}"[:2000]} for k, v in fields],
        },
        {
            "type": "section",
            "text": {
                "type": "mrkdwn",
                "text": f"*Why* (raised by `{_escape(view.rule)}`)\n{reasons or 'no points yet'}"[
                    :3000
                ],
            },
        },
    ]
    for heading, lines in customer_sections(view):
        listed = "\n".join(f"• {_escape(line)}" for line in lines)
        blocks.append(
            {"type": "section", "text": {"type": "mrkdwn", "text": f"*{heading}*\n{listed}"[:3000]}}
        )
    if events:
        blocks.append(
            {"type": "section", "text": {"type": "mrkdwn", "text": f"*Latest*\n{events}"[:3000]}}
        )
    blocks.append(
        {
            "type": "actions",
            "elements": [
                {
                    "type": "button",
                    "text": {"type": "plain_text", "text": "Open lead"},
                    "url": view.url[:3000],
                }
            ],
        }
    )
    text = _escape(f"{headline(view)}. Why: {_why(view)}.")
    return {"text": f"{text} {_link(view.url, 'Open lead')}", "blocks": blocks}


def _reason_line(reason: dict[str, Any]) -> str:
    times = f" ({reason['times']} times)" if reason["times"] > 1 else ""
    return f"{reason['rule']} +{reason['points']}{times}"


def _event_line(event: dict[str, Any]) -> str:
    return " ".join(str(part) for part in (event["at"], event["type"], event["detail"]) if part)


def email_parts(view: AlertView) -> tuple[str, str, str]:
    """(subject, html, text) of the alert email."""
    subject = " ".join(headline(view).split())  # one header line whatever the data holds
    about = [view.email] + [v for v in (view.company, view.job_title) if v]
    status = (
        f"Score {view.score} ({view.temperature}), stage {view.stage}; "
        f"raised by the rule {view.rule}."
    )
    reasons = [_reason_line(r) for r in view.reasons] or ["no points yet"]
    events = [_event_line(e) for e in view.events]
    sections = customer_sections(view)
    text = "\n".join(
        [subject, "", " · ".join(about), status, "", "Why:"]
        + [f"- {line}" for line in reasons]
        + [
            line
            for heading, lines in sections
            for line in ["", f"{heading}:"] + [f"- {x}" for x in lines]
        ]
        + (["", "Latest activity:"] + [f"- {line}" for line in events] if events else [])
        + ["", view.url, ""]
    )

    def items(lines: list[str]) -> str:
        return "".join(f"<li>{html_escape(line)}</li>" for line in lines)

    html = (
        '<!doctype html><html><body style="font-family:sans-serif;color:#222">'
        f"<h2>{html_escape(view.title)}: {html_escape(view.name or view.email)}</h2>"
        f'<p><a href="mailto:{html_escape(view.email)}">{html_escape(view.email)}</a>'
        + "".join(f" · {html_escape(v)}" for v in about[1:])
        + f"</p><p>{html_escape(status)}</p><h3>Why</h3><ul>{items(reasons)}</ul>"
        + "".join(f"<h3>{html_escape(h)}</h3><ul>{items(lines)}</ul>" for h, lines in sections)
        + (f"<h3>Latest activity</h3><ul>{items(events)}</ul>" if events else "")
        + f'<p><a href="{html_escape(view.url)}">Open the lead</a></p></body></html>'
    )
    return subject, html, text
