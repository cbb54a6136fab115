"""The dashboard: server-rendered pages at ``/`` for marketers and sales reps (the funnel, hot
leads and why, campaign figures, the pipeline report, one lead's whole story), behind the API
token. The sign-in page takes the token and opens a session (``engine.api.sessions``); a page
asked for without one redirects there and back. The sign-in and sign-out forms are refused when
posted from another site (their Origin, or else Referer, must be this one).

Templates are Jinja2 files shipped in ``engine/api/pages/`` with autoescaping on; the charts are
inline SVG drawn from ``engine.reports.charts``; no script runs in the page."""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Any
from urllib.parse import parse_qs, quote, urlencode, urlsplit

from fastapi import APIRouter, Depends, HTTPException, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from jinja2 import Environment, PackageLoader, StrictUndefined

from engine.active import ruleset_in_force
from engine.api.app import Ctx
from engine.api.auth import presented, valid
from engine.api.sessions import COOKIE, LIFETIME, close_session, is_open, open_session
from engine.errors import NurtureError
from engine.reports import charts, overview, pipeline
from engine.reports import leads as report
from engine.rules.spec import Ruleset
from engine.timeutil import parse_instant, utcnow

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
    return _classes("band", [band for band, _ in ruleset.temperature])


def named_classes(ruleset: Ruleset) -> dict[str, dict[str, str]]:
    """Colour per band of each named score: the lowest at risk, the highest healthy."""
    return {s.name: _classes("named", [band for band, _ in s.bands]) for s in ruleset.scores}


def _classes(prefix: str, names: list[str]) -> dict[str, str]:
    return {
        name: f"{prefix}-{0 if i == 0 else 2 if i == len(names) - 1 else 1}"
        for i, name in enumerate(names)
    }


def signed_in(request: Request, ctx: Ctx) -> None:
    """Pages need a session (or the bearer token, for scripts); without one the browser is sent
    to sign in, then back here."""
    if not _signed_in(request, ctx):
        back = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        login = "/login?" + urlencode({"next": back})
        raise HTTPException(303, "sign in first", headers={"Location": login})


def _signed_in(request: Request, ctx: Ctx) -> bool:
    session = request.cookies.get(COOKIE)
    return valid(presented(request), ctx) or is_open(ctx.db, session, ctx.settings.access_token())


def _origin(url: str) -> str | None:
    try:
        parts = urlsplit(url)
    except ValueError:  # e.g. an unclosed IPv6 bracket: no origin of ours
        return None
    return f"{parts.scheme}://{parts.netloc}".lower()


def from_this_site(request: Request, ctx: Ctx) -> None:
    """A form post must come from a page of this site: its Origin (or, without one, its Referer)
    is this server as the browser reached it, or ``NURTURE_PUBLIC_URL``. A post with neither is
    not a browser's form (a script): SameSite=Strict already keeps other sites' posts without
    the session cookie."""
    sender = request.headers.get("origin") or request.headers.get("referer")
    if sender is None:
        return
    here = {_origin(str(request.base_url)), _origin(ctx.settings.public_url)}
    if _origin(sender) not in here:
        raise HTTPException(403, "this form can only be sent from nurture's own pages")


def _local(target: str | None) -> str:
    """Only a path on this site is a place to return to after sign-in (no open redirect)."""
    if target and target.startswith("/") and not target.startswith(("//", "/\\")):
        return target
    return "/"


router = APIRouter(tags=["dashboard"], include_in_schema=False)
SignedIn = Depends(signed_in)
FromThisSite = Depends(from_this_site)


@router.get("/login", response_class=HTMLResponse)
def login_page(request: Request, ctx: Ctx, next: str = "/") -> Response:
    if _signed_in(request, ctx):
        return RedirectResponse(_local(next), 303)
    return render("login.html", next=_local(next), error=None)


@router.post("/login", response_class=HTMLResponse, dependencies=[FromThisSite])
async def login(request: Request, ctx: Ctx) -> Response:
    form = parse_qs((await request.body()).decode("utf-8", "replace"))
    token = form.get("token", [""])[0].strip()
    target = _local(form.get("next", ["/"])[0])
    if not valid(token, ctx):
        return render("login.html", 401, next=target, error="That token is not valid.")
    session = await run_in_threadpool(open_session, ctx.db, token)
    response = RedirectResponse(target, 303)
    response.set_cookie(
        COOKIE,
        session,
        max_age=int(LIFETIME.total_seconds()),
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https" or ctx.settings.public_url.startswith("https:"),
    )
    return response


@router.post("/logout", dependencies=[FromThisSite])
def logout(request: Request, ctx: Ctx) -> RedirectResponse:
    """Ends the session for good (a copy of the cookie opens nothing after this)."""
    close_session(ctx.db, request.cookies.get(COOKIE))
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
        named=report.band_counts(ctx.db, ruleset),
        named_classes=named_classes(ruleset),
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
    ruleset = ruleset_in_force(ctx.db, ctx.settings).compiled.ruleset
    detail = overview.lead_page(ctx.db, email, ruleset)
    if detail is None:
        return render("missing.html", 404, email=email)
    now = utcnow()
    chart = charts.score_chart(detail["series"], now, ruleset.temperature)
    named = {
        score.name: charts.score_chart(detail["named_series"][score.name], now, score.bands)
        for score in ruleset.scores
    }
    return render(
        "lead.html",
        lead=detail,
        chart=chart,
        named_charts=named,
        bands=band_classes(ruleset),
        named_classes=named_classes(ruleset),
    )


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
