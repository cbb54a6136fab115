"""The dashboard: server-rendered pages at ``/`` for marketers and sales reps (the funnel, hot
leads and why, campaign figures, the pipeline report, one lead's whole story), behind the API
token. The sign-in page
puts the token in the ``nurture_token`` cookie (HttpOnly, SameSite=Strict) that
``engine.api.auth`` accepts; a page asked for without it redirects there and back.

Templates are Jinja2 files shipped in ``engine/api/pages/`` with autoescaping on; the charts are
inline SVG drawn from ``engine.reports.charts``; no script runs in the page."""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Any
from urllib.parse import parse_qs, quote, urlencode

from fastapi import APIRouter, Depends, HTTPException, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from jinja2 import Environment, PackageLoader, StrictUndefined

from engine.active import ruleset_in_force
from engine.api.app import Ctx
from engine.api.auth import COOKIE, presented, valid
from engine.errors import NurtureError
from engine.reports import charts, overview, pipeline
from engine.rules.spec import Ruleset
from engine.timeutil import parse_instant, utcnow

SESSION_DAYS = 14

pages = Environment(
    loader=PackageLoader("engine.api", "pages"),
    autoescape=True,
    undefined=StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
)
pages.filters["when"] = lambda iso: iso and parse_instant(iso).strftime("%Y-%m-%d %H:%M")
pages.filters["day"] = lambda iso: iso and parse_instant(iso).strftime("%Y-%m-%d")
pages.filters["percent"] = lambda share: "–" if share is None else f"{share:.0%}"
pages.filters["count"] = lambda n: f"{n:,}"
# Attribute and property values as JSON unless plain text (a list reads ["a", "b"], not Python's).
pages.filters["shown"] = lambda value: (
    value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
)


def lead_url(email: str) -> str:
    return "/leads/" + quote(email, safe="@")


pages.filters["lead_url"] = lead_url


def render(name: str, status: int = 200, **values: Any) -> HTMLResponse:
    return HTMLResponse(pages.get_template(name).render(**values), status_code=status)


def band_classes(ruleset: Ruleset) -> dict[str, str]:
    """Colour per temperature band: the lowest is cold, the highest hot, any between warm."""
    names = [band for band, _ in ruleset.temperature]
    return {
        name: f"band-{0 if i == 0 else 2 if i == len(names) - 1 else 1}"
        for i, name in enumerate(names)
    }


def signed_in(request: Request, ctx: Ctx) -> None:
    """Pages need the token; without it the browser is sent to sign in, then back here."""
    if not valid(presented(request), ctx):
        back = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        login = "/login?" + urlencode({"next": back})
        raise HTTPException(303, "sign in first", headers={"Location": login})


def _local(target: str | None) -> str:
    """Only a path on this site is a place to return to after sign-in (no open redirect)."""
    if target and target.startswith("/") and not target.startswith(("//", "/\\")):
        return target
    return "/"


router = APIRouter(tags=["dashboard"], include_in_schema=False)
SignedIn = Depends(signed_in)


@router.get("/login", response_class=HTMLResponse)
def login_page(request: Request, ctx: Ctx, next: str = "/") -> Response:
    if valid(presented(request), ctx):
        return RedirectResponse(_local(next), 303)
    return render("login.html", next=_local(next), error=None)


@router.post("/login", response_class=HTMLResponse)
async def login(request: Request, ctx: Ctx) -> Response:
    form = parse_qs((await request.body()).decode("utf-8", "replace"))
    token = form.get("token", [""])[0].strip()
    target = _local(form.get("next", ["/"])[0])
    if not valid(token, ctx):
        return render("login.html", 401, next=target, error="That token is not valid.")
    response = RedirectResponse(target, 303)
    response.set_cookie(
        COOKIE,
        token,
        max_age=SESSION_DAYS * 86400,
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https" or ctx.settings.public_url.startswith("https:"),
    )
    return response


@router.post("/logout")
def logout() -> RedirectResponse:
    response = RedirectResponse("/login", 303)
    response.delete_cookie(COOKIE, httponly=True, samesite="strict")
    return response


@router.get("/", response_class=HTMLResponse, dependencies=[SignedIn])
def overview_page(ctx: Ctx) -> HTMLResponse:
    ruleset = ruleset_in_force(ctx.db, ctx.settings).compiled.ruleset
    funnel = overview.funnel(ctx.db, ruleset)
    chart = charts.bar_chart([(row["stage"], row["leads"]) for row in funnel["stages"]])
    return render(
        "overview.html",
        ruleset=ruleset,
        bands=band_classes(ruleset),
        funnel=funnel,
        chart=chart,
        hot=overview.hot_leads(ctx.db, ruleset),
        campaigns=overview.campaigns(ctx.db),
    )


@router.get("/leads", dependencies=[SignedIn])
def look_up(email: str = "") -> RedirectResponse:
    """The header's look-up form: an address → that lead's page."""
    address = email.strip()
    return RedirectResponse(lead_url(address) if address else "/", 303)


@router.get("/leads/{email}", response_class=HTMLResponse, dependencies=[SignedIn])
def lead(email: str, ctx: Ctx) -> HTMLResponse:
    detail = overview.lead_page(ctx.db, email)
    if detail is None:
        return render("missing.html", 404, email=email)
    ruleset = ruleset_in_force(ctx.db, ctx.settings).compiled.ruleset
    chart = charts.score_chart(detail["series"], utcnow(), ruleset.temperature)
    return render("lead.html", lead=detail, chart=chart, bands=band_classes(ruleset))


@router.get("/pipeline", response_class=HTMLResponse, dependencies=[SignedIn])
def pipeline_page(
    ctx: Ctx,
    since: str = "",
    until: str = "",
    stuck_days: str = "",
    cohort: bool = False,
) -> HTMLResponse:
    """``nurture pipeline`` as a page: the period and stuck threshold from a form (dates as the
    browser's date input sends them), the bottleneck marked, cohorts on request."""
    ruleset = ruleset_in_force(ctx.db, ctx.settings).compiled.ruleset
    form = {"since": since, "until": until, "stuck_days": stuck_days, "cohort": cohort}
    ninety_days_ago = (utcnow().date() - timedelta(days=90)).isoformat()
    try:
        options = pipeline.report_options(
            ruleset, since or None, until or None, [stuck_days] if stuck_days else None, cohort
        )
    except NurtureError as error:
        return render(
            "pipeline.html",
            400,
            form=form,
            error=str(error),
            report=None,
            ninety_days_ago=ninety_days_ago,
        )
    report = pipeline.pipeline(ctx.db, ruleset, **options)
    stuck = [row for row in report["stages"] if row["stuck"]]
    worst = max(stuck, key=lambda row: row["stuck"])["stage"] if stuck else None
    return render(
        "pipeline.html",
        form=form,
        error=None,
        report=report,
        funnel=ruleset.stages,
        exits=ruleset.exits,
        bottleneck=worst,
        ninety_days_ago=ninety_days_ago,
    )
