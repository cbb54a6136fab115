"""Sample marketing data from a fixed seed: the input records that flow into ingest.

``sample_records`` yields what ``nurture ingest`` reads from a JSON Lines file and what
``nurture demo`` and the benchmarks feed it: lead profile records (an ``email`` and profile
attributes, no ``type``) and event records (``id``, ``email``, ``type``, ``occurred_at``,
``properties``). Leads are made in chunks of ``CHUNK`` leads: a chunk's profiles come first,
then that chunk's events in time order, so events of different leads are mixed while memory
stays flat however many records are asked for.

The data is meant to look like a B2B marketing database: mostly mid-sized companies in
the US and Western Europe, some free-mail addresses, a few students and competitors, and a
heavy-tailed engagement where the few very active leads are also the ones who read the pricing
page and ask for demos, so a scoring ruleset gives a believable funnel (most leads cold, some
warm, a few hot). After a demo or trial, sales reports what came of it (``crm_meeting``,
``crm_won`` with plan and amount, ``crm_lost``) and customers pay monthly ``purchase``
invoices, or stop. Equal arguments give equal output: all randomness comes from
``random.Random`` seeded from ``seed`` (one generator for the stream, plus a per-company one
so that a company's name, domain, industry, size and country are the same in every chunk, and
a per-lead one for its deal).
"""

from __future__ import annotations

import json
import math
import random
import time
import unicodedata
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import lru_cache
from itertools import accumulate
from pathlib import Path
from typing import NamedTuple

__all__ = [
    "CHUNK",
    "COMPETITOR_DOMAINS",
    "CRM_EVENT_TYPES",
    "DEFAULT_END",
    "EVENT_TYPES",
    "FREE_MAIL_DOMAINS",
    "sample_records",
    "write_jsonl",
]

DEFAULT_END = datetime(2026, 11, 1, tzinfo=UTC)
CHUNK = 1000
"""Leads generated together; their events are interleaved and sorted by time."""

FREE_MAIL_DOMAINS = ("gmail.com", "yahoo.com", "outlook.com", "hotmail.com")
COMPETITOR_DOMAINS = ("rivalsoft.com", "competo.io")
EVENT_TYPES = (
    "page_view",
    "email_open",
    "email_click",
    "content_download",
    "form_submit",
    "webinar_attended",
    "demo_request",
    "trial_signup",
    "unsubscribe",
    "bounce",
)
CRM_EVENT_TYPES = ("crm_meeting", "crm_won", "crm_lost")
"""What sales records in the CRM: a meeting booked, a deal won (with plan and amount), lost."""

_DAY = 86400


def _cum(weights: Iterable[float]) -> list[float]:
    return list(accumulate(weights))


# --- people -------------------------------------------------------------------------------------


def _list(text: str, sep: str = ",") -> tuple[str, ...]:
    return tuple(item.strip() for item in text.split(sep))


_NAMES: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "en": (
        _list(
            "James, Mary, Michael, Sarah, David, Emily, Daniel, Olivia, Chris, Jessica, Matthew, "
            "Ashley, Ryan, Lauren, Kevin, Megan, Brian, Rachel, Jason, Hannah, Priya, Wei, "
            "Carlos, Aisha, Liam, Chloe, Noah, Grace, Ethan, Zoë"
        ),
        _list(
            "Smith, Johnson, Williams, Brown, Jones, Miller, Davis, Garcia, Wilson, Anderson, "
            "Taylor, Thomas, Moore, Martin, Lee, Thompson, White, Harris, Clark, Lewis, Walker, "
            "Young, Patel, Nguyen, Kim, O'Brien, Murphy, Campbell, Evans, Hughes"
        ),
    ),
    "de": (
        _list(
            "Lukas, Anna, Felix, Lea, Jonas, Sophie, Maximilian, Marie, Leon, Laura, Paul, "
            "Julia, Tobias, Katharina, Jürgen, Sabine"
        ),
        _list(
            "Müller, Schmidt, Schneider, Fischer, Weber, Meyer, Wagner, Becker, Schulz, "
            "Hoffmann, Koch, Richter, Wolf, Schröder, Neumann, Braun"
        ),
    ),
    "fr": (
        _list(
            "Camille, Louis, Chloé, Hugo, Léa, Lucas, Manon, Julien, Élodie, Thomas, Inès, "
            "Antoine, Sophie, Mathieu, Margaux, Nicolas"
        ),
        _list(
            "Martin, Bernard, Dubois, Thomas, Robert, Richard, Petit, Durand, Leroy, Moreau, "
            "Simon, Laurent, Lefèvre, Michel, Garnier, Faure"
        ),
    ),
    "nl": (
        _list(
            "Daan, Emma, Sem, Julia, Lars, Sanne, Bram, Lotte, Thijs, Fleur, Ruben, Anouk, "
            "Jeroen, Eva, Joris, Iris"
        ),
        _list(
            "de Jong, Jansen, de Vries, van den Berg, van Dijk, Bakker, Visser, Smit, Meijer, "
            "de Boer, Mulder, de Groot, Bos, Vos, Peters, Hendriks"
        ),
    ),
    "es": (
        _list(
            "Lucía, Hugo, Martina, Pablo, Sofía, Javier, Carmen, Alejandro, María, Diego, Elena, "
            "Álvaro"
        ),
        _list(
            "García, Fernández, González, Rodríguez, López, Martínez, Sánchez, Pérez, Gómez, "
            "Ruiz, Díaz, Moreno"
        ),
    ),
    "pt": (
        _list("João, Ana, Pedro, Beatriz, Lucas, Mariana, Gabriel, Juliana, Rafael, Camila"),
        _list(
            "Silva, Santos, Oliveira, Souza, Costa, Pereira, Almeida, Ferreira, Rodrigues, Carvalho"
        ),
    ),
    "it": (
        _list("Marco, Giulia, Luca, Francesca, Alessandro, Chiara, Matteo, Sara, Davide, Elena"),
        _list("Rossi, Russo, Ferrari, Esposito, Bianchi, Romano, Colombo, Ricci, Marino, Greco"),
    ),
    "sv": (
        _list("Erik, Emma, Lars, Maja, Oskar, Elsa, Johan, Ingrid, Anders, Astrid"),
        _list(
            "Andersson, Johansson, Karlsson, Nilsson, Eriksson, Larsson, Olsson, Persson, "
            "Svensson, Lindqvist"
        ),
    ),
    "hi": (
        _list("Aarav, Ananya, Rohan, Priya, Vikram, Sneha, Arjun, Kavya, Rahul, Neha"),
        _list("Sharma, Patel, Gupta, Iyer, Reddy, Singh, Kumar, Nair, Mehta, Rao"),
    ),
    "ja": (
        _list("Haruto, Yui, Sota, Hina, Ren, Aoi, Takumi, Sakura, Kenji, Yuki"),
        _list(
            "Sato, Suzuki, Takahashi, Tanaka, Watanabe, Ito, Yamamoto, Nakamura, Kobayashi, Kato"
        ),
    ),
}


class _Country(NamedTuple):
    code: str
    locale: str
    zones: tuple[tuple[str, int], ...]  # IANA name, UTC offset in minutes (autumn, approximate)
    zone_cum: tuple[float, ...]


def _country(code: str, locale: str, *zones: tuple[str, int, float]) -> _Country:
    return _Country(
        code, locale, tuple((z, off) for z, off, _ in zones), tuple(_cum(w for *_, w in zones))
    )


_COUNTRIES: tuple[_Country, ...] = (
    _country(
        "US",
        "en",
        ("America/New_York", -240, 4),
        ("America/Chicago", -300, 3),
        ("America/Denver", -360, 1),
        ("America/Los_Angeles", -420, 3),
    ),
    _country("GB", "en", ("Europe/London", 60, 1)),
    _country("DE", "de", ("Europe/Berlin", 120, 1)),
    _country("FR", "fr", ("Europe/Paris", 120, 1)),
    _country("NL", "nl", ("Europe/Amsterdam", 120, 1)),
    _country(
        "CA",
        "en",
        ("America/Toronto", -240, 3),
        ("America/Vancouver", -420, 2),
        ("America/Edmonton", -360, 1),
    ),
    _country(
        "AU",
        "en",
        ("Australia/Sydney", 660, 3),
        ("Australia/Melbourne", 660, 2),
        ("Australia/Perth", 480, 1),
    ),
    _country("IE", "en", ("Europe/Dublin", 60, 1)),
    _country("ES", "es", ("Europe/Madrid", 120, 1)),
    _country("IT", "it", ("Europe/Rome", 120, 1)),
    _country("SE", "sv", ("Europe/Stockholm", 120, 1)),
    _country("CH", "de", ("Europe/Zurich", 120, 1)),
    _country("IN", "hi", ("Asia/Kolkata", 330, 1)),
    _country("BR", "pt", ("America/Sao_Paulo", -180, 1)),
    _country("JP", "ja", ("Asia/Tokyo", 540, 1)),
    _country("SG", "en", ("Asia/Singapore", 480, 1)),
)
_COUNTRY_CUM = _cum((38, 12, 10, 7, 5, 6, 5, 2, 2, 2, 2, 1, 3, 2, 1, 1))
_BY_CODE = {c.code: c for c in _COUNTRIES}

_TITLE_LEVELS = (  # share in %, seniority (feeds intent), titles
    (4, 0.5, "CEO; CTO; CMO; CFO; COO; Chief Revenue Officer; Founder & CEO; Co-founder"),
    (7, 0.45, "VP Marketing; VP of Sales; VP Engineering; Vice President, Operations; VP Growth"),
    (8, 0.4, "Head of Marketing; Head of Growth; Head of Demand Generation; Head of Sales"),
    (13, 0.3, "Director of Marketing; Director, Demand Generation; Sales Director; IT Director"),
    (28, 0.1, "Marketing Manager; Product Marketing Manager; Sales Manager; IT Manager"),
    (17, 0.0, "Marketing Specialist; Marketing Coordinator; SEO Specialist; Account Executive"),
    (12, -0.1, "Marketing Analyst; Data Analyst; Business Analyst; Financial Analyst"),
    (11, -0.2, "Software Engineer; Consultant; UX Designer; Developer; Administrator"),
)
_TITLES = tuple((share, rank, _list(titles, ";")) for share, rank, titles in _TITLE_LEVELS)
_TITLE_CUM = _cum(t[0] for t in _TITLES)
_STUDENT_TITLES = _list(
    "Student, Graduate Student, PhD Student, Working Student, Marketing Intern, Sales Intern"
)
_UNIVERSITY_TITLES = frozenset(("Student", "Graduate Student", "PhD Student"))

# --- companies ----------------------------------------------------------------------------------

_INDUSTRIES: tuple[tuple[str, float, tuple[str, ...]], ...] = (
    ("software", 20, ("Labs", "Software", "Technologies")),
    ("saas", 18, ("Cloud", "HQ", "Apps")),
    ("fintech", 10, ("Pay", "Capital", "Financial")),
    ("healthcare", 9, ("Health", "Medical", "Care")),
    ("manufacturing", 10, ("Industries", "Manufacturing", "Components")),
    ("retail", 9, ("Retail", "Stores", "Goods")),
    ("education", 6, ("Learning", "Academy", "Education")),
    ("government", 4, ("Agency", "Authority", "Public Services")),
    ("media", 5, ("Media", "Studios", "Publishing")),
    ("logistics", 5, ("Logistics", "Freight", "Transport")),
    ("professional services", 4, ("Partners", "Consulting", "Advisory")),
)
_INDUSTRY_CUM = _cum(i[1] for i in _INDUSTRIES)
_SIZES = _list("2-10 11-50 51-200 201-500 501-1000 1001-5000 5001-10000 10001-80000", " ")
_SIZE_CUM = _cum((12, 22, 24, 15, 10, 10, 4, 3))

_PREFIXES = _list(
    "North, Blue, Bright, Silver, Iron, Cedar, Summit, Harbor, Pine, Stone, Clear, Swift, Green, "
    "Red, Oak, Maple, River, Sky, Star, Sun, Lake, Ever, True, Nova, Astra, Peak, Polar, Quantum, "
    "Vertex, Apex, Lumen, Terra, Aero, Hyper, Orbit, Pixel, Signal, Vector, Zen, Cobalt, Amber, "
    "Crimson, Golden, Hollow, Lunar, Metro, Nimbus, Onyx, Prime, Quartz, Rapid, Solar, Tidal, "
    "Urban, Vivid, West, East, South, Falcon, Granite"
)
_SUFFIXES = _list(
    "wind, field, ridge, bridge, point, works, stack, forge, wave, line, gate, path, mark, leaf, "
    "core, flow, loop, scale, shift, spark, stream, view, yard, port, craft, base, cloud, grid, "
    "hub, lab, logic, metrics, nest, pulse, root, sight, span, tree, vault, well"
)
# Distinct patterns, so that every (prefix, suffix, pattern) gives a distinct domain.
_DOMAIN_PATTERNS = ("{}.com", "{}.io", "{}hq.com", "get{}.com", "{}.co", "{}-group.com")
_N_COMPANIES = len(_PREFIXES) * len(_SUFFIXES) * len(_DOMAIN_PATTERNS)
_SPREAD = 7919  # a prime not dividing _N_COMPANIES: company index → name is a bijection


class _Company(NamedTuple):
    name: str
    domain: str
    industry: str
    size: int
    country: str


_COMPETITORS = (
    _Company("RivalSoft", "rivalsoft.com", "software", 340, "US"),
    _Company("Competo", "competo.io", "saas", 120, "NL"),
)
_UNIVERSITIES = (
    _Company("Northfield State University", "northfield-state.edu", "education", 9000, "US"),
    _Company("Lakeshore College", "lakeshore-college.edu", "education", 2400, "US"),
    _Company("University of Eastbridge", "eastbridge.ac.uk", "education", 6000, "GB"),
    _Company("Hochschule Rheintal", "hs-rheintal.de", "education", 1800, "DE"),
    _Company("Université de Valcourt", "univ-valcourt.fr", "education", 4200, "FR"),
    _Company("Hogeschool Zuidland", "hs-zuidland.nl", "education", 3100, "NL"),
    _Company("Maple Ridge University", "mapleridge-u.ca", "education", 5200, "CA"),
    _Company("Southern Cross Institute", "southerncross-inst.edu.au", "education", 3800, "AU"),
)


@lru_cache(maxsize=4096)
def _company(seed: int, index: int) -> _Company:
    """Company number ``index`` of the pool: the same in every chunk, distinct domain per index."""
    slot = (index * _SPREAD + seed * 2654435761) % _N_COMPANIES
    slot, pattern = divmod(slot, len(_DOMAIN_PATTERNS))
    prefix, suffix = divmod(slot, len(_SUFFIXES))
    base = _PREFIXES[prefix] + _SUFFIXES[suffix]
    rng = random.Random(f"nurture-sample-company:{seed}:{index}")
    industry, _, kinds = _INDUSTRIES[_pick(rng, _INDUSTRY_CUM)]
    name = f"{base} {rng.choice(kinds)}" if rng.random() < 0.5 else base
    low, high = (int(n) for n in _SIZES[_pick(rng, _SIZE_CUM)].split("-"))
    size = round(math.exp(rng.uniform(math.log(low), math.log(high))))
    country = _COUNTRIES[_pick(rng, _COUNTRY_CUM)].code
    return _Company(name, _DOMAIN_PATTERNS[pattern].format(base.lower()), industry, size, country)


def _pick(rng: random.Random, cum: Sequence[float]) -> int:
    """Index drawn with the weights whose running sums are ``cum``."""
    target = rng.random() * cum[-1]
    low, high = 0, len(cum) - 1
    while low < high:
        mid = (low + high) // 2
        if cum[mid] > target:
            high = mid
        else:
            low = mid + 1
    return low


def _ascii(text: str) -> str:
    folded = unicodedata.normalize("NFKD", text)
    return "".join(ch for ch in folded.lower() if "a" <= ch <= "z")


# --- content ------------------------------------------------------------------------------------

# Site pages other than /pricing and /careers (drawn per lead), with their weights.
_PAGES = _list(
    "/, /features, /features/lead-scoring, /features/campaigns, /features/analytics, "
    "/integrations, /customers, /about, /contact, /security, /blog/lead-scoring-101, "
    "/blog/what-is-an-mql, /blog/email-deliverability-checklist, /blog/b2b-nurture-playbook, "
    "/blog/account-based-marketing-guide, /blog/marketing-automation-roi, "
    "/blog/scoring-model-pitfalls, /blog/consent-for-marketers, /blog/webinar-recap-q3, "
    "/docs/getting-started, /docs/api, /docs/integrations/salesforce, "
    "/docs/integrations/hubspot, /docs/rulesets, /docs/webhooks"
)
_PAGE_CUM = _cum((12, 8, 4, 3, 2, 4, 4, 3, 2, 1, 5, 4, 4, 3, 3, 3, 2, 2, 2, 3, 2, 1, 1, 1, 1))
_REFERRERS = ("direct", "google", "linkedin", "newsletter", "bing", "twitter", "partner")
_REFERRER_CUM = _cum((30, 35, 15, 8, 4, 4, 4))
_CAMPAIGNS = _list(
    "welcome-series, monthly-newsletter, product-update, ebook-promo-lead-scoring, "
    "webinar-invite, case-study-digest, win-back"
)
_CLICK_PATHS = _list(
    "/blog/lead-scoring-101, /blog/b2b-nurture-playbook, /features, /customers, "
    "/webinars/lead-scoring-masterclass, /resources/state-of-b2b-marketing"
)
_ASSETS = _list(
    "ebook-lead-scoring-guide.pdf, whitepaper-abm-2026.pdf, checklist-email-deliverability.pdf, "
    "report-state-of-b2b-marketing.pdf, template-nurture-calendar.xlsx, case-study-fintech.pdf, "
    "case-study-manufacturing.pdf"
)
_FORMS = ("newsletter-signup", "gated-content", "event-registration", "contact-us")
_WEBINARS = _list(
    "lead-scoring-masterclass, abm-in-practice, from-mql-to-revenue, nurture-campaigns-that-convert"
)
_PLANS = ("starter", "growth", "enterprise")
_PLAN_PRICES = {"starter": 600, "growth": 2400, "enterprise": 7200}  # a month, in USD
_LOST_REASONS = ("budget", "timing", "chose_competitor", "no_decision")
_DEMO_SOURCES = ("pricing-page", "homepage", "email", "webinar", "contact-sales")
_UNSUBSCRIBE_REASONS = ("too_many_emails", "not_relevant", "never_signed_up", "other")
_BOUNCES = (
    ("hard", "550 5.1.1 The email account that you tried to reach does not exist"),
    ("hard", "550 5.1.1 Recipient address rejected: user unknown"),
    ("soft", "452 4.2.2 The email account that you tried to reach is over quota"),
)

# Rough mix of the events a lead does on its own (unsubscribe and bounce are drawn per lead).
_PAGE_VIEW, _OPEN, _CLICK, _DOWNLOAD, _FORM, _WEBINAR, _DEMO, _TRIAL = EVENT_TYPES[:8]
_BASE_WEIGHTS = (45.0, 15.0, 8.0, 6.0, 4.0, 3.0, 1.5, 1.5)
_DEMO_SCALE = 5.0  # calibrated so demo_request / trial_signup come to ~1.5 % of all events
_MAX_CONVERSIONS = 2  # demo requests (and trial signups) per lead; more become pricing views
_SIGMA = 1.5  # spread of the log-normal activity: the top 1 % of leads do 10x the mean or more


@dataclass(slots=True)
class _Lead:
    index: int
    email: str
    profile: dict[str, object]
    offset: int  # minutes east of UTC, for business hours
    activity: float  # mean 1, heavy-tailed
    intent: float  # 0..1: buying interest
    student: bool
    competitor: bool


def _make_lead(rng: random.Random, seed: int, index: int, pool: int) -> _Lead:
    kind = rng.random()
    competitor = kind < 0.02
    free_mail = 0.02 <= kind < 0.10
    student = not competitor and rng.random() < 0.03
    if student:
        title = rng.choice(_STUDENT_TITLES)
        seniority = -1.2
    else:
        _, seniority, titles = _TITLES[_pick(rng, _TITLE_CUM)]
        title = rng.choice(titles)
    if competitor:
        company = rng.choice(_COMPETITORS)
    elif title in _UNIVERSITY_TITLES:
        company = rng.choice(_UNIVERSITIES)
    else:  # a skewed pick: some accounts have many leads, most have a few
        company = _company(seed, min(pool - 1, int(pool * rng.random() ** 1.6)))
    if rng.random() < 0.8:
        country = _BY_CODE[company.country]
    else:
        country = _COUNTRIES[_pick(rng, _COUNTRY_CUM)]
    zone, offset = country.zones[_pick(rng, country.zone_cum)]
    firsts, lasts = _NAMES[country.locale]
    first, last = rng.choice(firsts), rng.choice(lasts)
    style = rng.random()
    if style < 0.8:
        local = f"{_ascii(first)}.{_ascii(last)}"
    elif style < 0.92:
        local = f"{_ascii(first)[0]}.{_ascii(last)}"
    else:
        local = f"{_ascii(first)}{_ascii(last)}"
    domain = rng.choice(FREE_MAIL_DOMAINS) if free_mail else company.domain
    email = f"{local}.{index}@{domain}"  # the index keeps every lead's address unique
    profile: dict[str, object] = {
        "email": email,
        "first_name": first,
        "last_name": last,
        "company": company.name,
        "domain": domain,
        "job_title": title,
        "industry": company.industry,
        "company_size": company.size,
        "country": country.code,
        "timezone": zone,
    }
    if rng.random() < 0.3:
        budget = math.exp(rng.gauss(math.log(2500) + 0.45 * math.log(company.size), 0.8))
        step = 500 if budget < 10_000 else 1000
        profile["budget"] = max(1000, min(2_000_000, round(budget / step) * step))
    activity = rng.lognormvariate(-_SIGMA * _SIGMA / 2, _SIGMA)
    fit = seniority + (0.25 if company.industry in ("software", "saas", "fintech") else 0.0)
    if free_mail:
        fit -= 0.4
    z = 0.6 * math.log(activity) + fit + rng.gauss(0.0, 0.8)
    intent = 1.0 / (1.0 + math.exp(-2.0 * (z - 1.0)))
    return _Lead(index, email, profile, offset, activity, intent, student, competitor)


class _Clock:
    """Event times for one lead, in whole seconds since 1970: sessions in business hours."""

    __slots__ = ("end", "first", "last", "lead", "rng", "start")

    def __init__(self, rng: random.Random, lead: _Lead, start: int, end: int) -> None:
        self.rng, self.lead, self.start, self.end = rng, lead, start, end
        # The lead is active from `first` to `last`: many went quiet before `end`, fewer the
        # more they want to buy, and sessions lean towards `last` with that wish (a ramp-up).
        self.first = start + int((end - start) * 0.9 * rng.random())
        self.last = end
        if rng.random() > 0.15 + 0.7 * lead.intent:
            self.last = self.first + int((end - self.first) * rng.random())

    def session(self, late: bool = False) -> int:
        rng, span = self.rng, self.last - self.first
        u = rng.random() ** (1.0 / (1.0 + 1.5 * self.lead.intent))
        if late:
            u = max(u, rng.random())
        moment = self.first + int(span * u)
        if rng.random() < 0.8:  # snap into the lead's working hours
            local = moment + self.lead.offset * 60
            day = local // _DAY
            weekday = (day + 3) % 7  # 1970-01-01 was a Thursday; Monday is 0
            if weekday >= 5 and rng.random() < 0.75:
                day += -1 if weekday == 5 else 1
            hour = rng.triangular(7.5, 18.5, 11.0)
            snapped = day * _DAY + int(hour * 3600) - self.lead.offset * 60
            if self.start <= snapped < self.end:
                moment = snapped
        return min(self.end - 1, moment)

    def after(self, moment: int, low: int, high: int) -> int:
        return min(self.end - 1, moment + self.rng.randint(low, high))


_Event = tuple[int, int, int, str, dict[str, object]]  # time, lead in chunk, seq, type, props


def _lead_events(
    rng: random.Random, slot: int, lead: _Lead, mean: float, start: int, end: int
) -> list[_Event]:
    cap = int(mean * 60) + 1
    count = min(cap, int(mean * lead.activity + rng.random()))
    if count == 0:
        return []
    clock = _Clock(rng, lead, start, end)
    intent = lead.intent
    events: list[_Event] = []

    def add(moment: int, etype: str, props: dict[str, object]) -> None:
        events.append((moment, slot, len(events), etype, props))

    # Terminal email events are drawn per lead: cold leads unsubscribe more, engaged ones less.
    stop_email = end
    if rng.random() < min(0.6, 0.006 * mean / (0.4 + 0.6 * math.sqrt(lead.activity))):
        moment = clock.session()
        add(
            moment,
            "unsubscribe",
            {"campaign": rng.choice(_CAMPAIGNS), "reason": rng.choice(_UNSUBSCRIBE_REASONS)},
        )
        stop_email = moment
    if rng.random() < min(0.5, 0.005 * mean):
        bounce_type, reason = rng.choice(_BOUNCES)
        moment = clock.session()
        add(moment, "bounce", {"bounce_type": bounce_type, "reason": reason})
        if bounce_type == "hard":
            stop_email = min(stop_email, moment)

    conversion = 0.0 if lead.competitor else _DEMO_SCALE * intent**1.5
    engaged = 0.6 + 0.8 * intent
    weights = list(_BASE_WEIGHTS)
    weights[3] *= engaged
    weights[5] *= engaged
    weights[6] *= conversion
    weights[7] *= conversion
    p_pricing = 0.6 if lead.competitor else 0.03 + 0.3 * intent
    p_careers = 0.3 if lead.student else 0.02
    demos = trials = 0
    last_session: int | None = None

    def page(moment: int, url: str | None = None) -> None:
        nonlocal last_session
        if url is None:
            u = rng.random()
            if u < p_pricing:
                url = "/pricing"
            elif u < p_pricing + p_careers:
                url = "/careers"
            else:
                url = _PAGES[_pick(rng, _PAGE_CUM)]
        add(moment, _PAGE_VIEW, {"url": url, "referrer": _REFERRERS[_pick(rng, _REFERRER_CUM)]})
        last_session = moment

    for etype in rng.choices(EVENT_TYPES[:8], weights=weights, k=count - len(events)):
        if etype == _PAGE_VIEW:
            if last_session is not None and rng.random() < 0.6:
                page(clock.after(last_session, 10, 420))
            else:
                page(clock.session())
        elif etype in (_OPEN, _CLICK):
            moment = clock.session()
            if moment >= stop_email:  # no mail reaches them any more; they still browse
                page(moment)
            elif etype == _OPEN:
                add(moment, _OPEN, {"campaign": rng.choice(_CAMPAIGNS)})
            else:
                campaign = rng.choice(_CAMPAIGNS)
                path = "/pricing" if rng.random() < p_pricing else rng.choice(_CLICK_PATHS)
                url = f"{path}?utm_source=email&utm_medium=email&utm_campaign={campaign}"
                add(moment, _CLICK, {"campaign": campaign, "url": url})
                last_session = moment
        elif etype == _DOWNLOAD:
            moment = clock.session() if last_session is None else clock.after(last_session, 30, 900)
            add(moment, _DOWNLOAD, {"asset": rng.choice(_ASSETS)})
        elif etype == _FORM:
            form = "contact-sales" if rng.random() < intent * 0.3 else rng.choice(_FORMS)
            add(clock.session(), _FORM, {"form": form})
        elif etype == _WEBINAR:
            add(
                clock.session(),
                _WEBINAR,
                {"webinar": rng.choice(_WEBINARS), "minutes": rng.randint(5, 60)},
            )
        elif etype == _DEMO:
            if demos >= _MAX_CONVERSIONS:
                page(clock.session(late=True), "/pricing")
            else:
                demos += 1
                add(clock.session(late=True), _DEMO, {"source": rng.choice(_DEMO_SOURCES)})
        elif trials >= _MAX_CONVERSIONS:
            page(clock.session(late=True), "/pricing")
        else:
            trials += 1
            add(clock.session(late=True), _TRIAL, {"plan": rng.choice(_PLANS)})
    asked = [e[0] for e in events if e[3] in (_DEMO, _TRIAL)]
    if asked and not (lead.competitor or lead.student):
        for moment, etype, props in _deal(lead, min(asked), end):
            add(moment, etype, props)
    return events


def _deal(lead: _Lead, asked: int, end: int) -> list[tuple[int, str, dict[str, object]]]:
    """What sales and billing report after a demo or trial: a meeting (opportunity), then won
    (a customer, with a first invoice) or lost; a customer pays monthly, or stops. Drawn from
    the lead's own generator, so the other leads' records are the same with or without it."""
    rng = random.Random(f"deal:{lead.email}")
    found: list[tuple[int, str, dict[str, object]]] = []
    meeting = asked + rng.randint(1, 6) * _DAY
    if meeting >= end or rng.random() > 0.35 + 0.5 * lead.intent:
        return found
    found.append((meeting, CRM_EVENT_TYPES[0], {"owner": "sales"}))
    decided = meeting + rng.randint(3, 15) * _DAY
    if decided >= end:
        return found
    if rng.random() > 0.6:
        found.append((decided, CRM_EVENT_TYPES[2], {"reason": rng.choice(_LOST_REASONS)}))
        return found
    size = int(str(lead.profile["company_size"]))
    plan = "enterprise" if size >= 500 else "growth" if size >= 50 else "starter"
    amount = _PLAN_PRICES[plan]
    found.append((decided, CRM_EVENT_TYPES[1], {"plan": plan, "amount": amount}))
    # Invoices monthly from the win; some customers stop paying after a while.
    paid_months = 99 if rng.random() < 0.6 else rng.randint(0, 1)
    invoice, month = decided + 60, 0
    while invoice < end and month <= paid_months:
        found.append((invoice, "purchase", {"plan": plan, "amount": amount, "month": month + 1}))
        invoice += (30 + rng.randint(-2, 2)) * _DAY
        month += 1
    return found


def _iso(moment: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(moment))


def sample_records(
    leads: int = 300,
    events_per_lead: float = 12.0,
    seed: int = 7,
    end: datetime = DEFAULT_END,
    days: int = 60,
) -> Iterator[dict[str, object]]:
    """Lead profile records and event records, lazily, the same for the same arguments.

    For each chunk of ``CHUNK`` leads: their profiles, then their events sorted by time. Events
    per lead are heavy-tailed with mean ``events_per_lead``; their times lie in the ``days`` days
    before ``end`` (a naive ``end`` is taken as UTC). Event ids are ``evt-<seed>-<n>``.
    """
    if leads < 0:
        raise ValueError(f"leads must be 0 or more, not {leads}")
    if not events_per_lead >= 0:
        raise ValueError(f"events_per_lead must be 0 or more, not {events_per_lead}")
    if days < 1:
        raise ValueError(f"days must be 1 or more, not {days}")
    return _generate(leads, float(events_per_lead), seed, end, days)


def _generate(
    leads: int, mean: float, seed: int, end: datetime, days: int
) -> Iterator[dict[str, object]]:
    rng = random.Random(seed)
    if end.tzinfo is None:
        end = end.replace(tzinfo=UTC)
    end_ts = math.ceil(end.timestamp())
    start_ts = end_ts - days * _DAY
    pool = min(_N_COMPANIES, max(8, leads // 3))
    serial = 0
    for first in range(0, leads, CHUNK):
        chunk = [_make_lead(rng, seed, i, pool) for i in range(first, min(leads, first + CHUNK))]
        events: list[_Event] = []
        for slot, lead in enumerate(chunk):
            # Profiles carry a time so fit rules land in the ledger before the behaviour.
            yield {**lead.profile, "occurred_at": _iso(start_ts)}
            events.extend(_lead_events(rng, slot, lead, mean, start_ts, end_ts))
        events.sort(key=lambda e: (e[0], e[1], e[2]))
        for moment, slot, _, etype, props in events:
            serial += 1
            yield {
                "id": f"evt-{seed}-{serial}",
                "email": chunk[slot].email,
                "type": etype,
                "occurred_at": _iso(moment),
                "properties": props,
            }


def write_jsonl(records: Iterable[dict[str, object]], path: Path) -> int:
    """Write one compact JSON object per line (UTF-8); return how many were written."""
    count = 0
    with path.open("w", encoding="utf-8", newline="\n") as out:
        for record in records:
            out.write(json.dumps(record, ensure_ascii=False, separators=(",", ":")))
            out.write("\n")
            count += 1
    return count
