"""``campaigns/*.yaml`` → :class:`~engine.campaigns.spec.Campaign`, or every problem with file and
line. Conditions use the ruleset's `when` language, checked against the ruleset in force; they read
the lead only (enrollment and steps are decided from the lead's state, not from one event)."""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from datetime import time
from typing import Any

from ruamel.yaml.comments import CommentedMap, CommentedSeq

from engine.address import normal_address
from engine.campaigns import spec
from engine.campaigns.compile import synthetic_rules
from engine.errors import Problem, ProblemsError
from engine.rules import bounds
from engine.rules import spec as rules
from engine.rules.compile import engine_problems
from engine.rules.load import condition_parser
from engine.rules.source import key_line, node_line, read_yaml
from engine.timeutil import parse_duration

_CLOCK = re.compile(r"^([01]?\d|2[0-3]):([0-5]\d)$")
# Names the outbox stores (campaign, template, from name): longer would fail the whole batch of
# emails being queued, so they are refused here, with the line.
MAX_NAME = 200
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
KEYS = ("campaign", "audience", "exit_when", "from", "send_window", "frequency_cap", "steps")


def _lead_only(condition: rules.Condition) -> str | None:
    """The first part of ``condition`` that reads an event, or None."""
    match condition:
        case rules.Count():
            return "count"
        case rules.Sum():
            return "sum"
        case rules.DaysSince():
            return "days_since"
        case rules.Test(path=path):
            return path if not path.startswith("lead.") else None
        case rules.Not(item=item):
            return _lead_only(item)
        case rules.All(items=items) | rules.AnyOf(items=items):
            return next((found for item in items if (found := _lead_only(item))), None)
    return None


class _CampaignParser:
    def __init__(self, path: str, ruleset: rules.Ruleset) -> None:
        self.conditions = condition_parser(path, ruleset)
        self.path = path

    @property
    def problems(self) -> list[Problem]:
        return self.conditions.problems

    def problem(self, line: int, message: str) -> None:
        self.conditions.problem(line, message)

    def campaign(self, doc: Any) -> spec.Campaign | None:
        if not isinstance(doc, CommentedMap):
            self.problem(1, "a campaign is a mapping with keys campaign, audience, from, steps")
            return None
        for key in doc:
            if key not in KEYS:
                self.problem(
                    key_line(doc, key, 1), f"unknown key {key!r}; a campaign has {', '.join(KEYS)}"
                )
        name = doc.get("campaign")
        if not isinstance(name, str) or not rules.NAME.match(name) or len(name) > MAX_NAME:
            self.problem(
                key_line(doc, "campaign", 1),
                f"`campaign:` must name the campaign, in at most {MAX_NAME} characters",
            )
            name = "unnamed"
        elif problem := bounds.name_problem(name, "a campaign"):
            self.problem(key_line(doc, "campaign", 1), problem)
        audience = self.condition(doc, "audience", name, required=True)
        exit_when = self.condition(doc, "exit_when", name, required=False)
        from_email, from_name = self.sender(doc)
        window = self.send_window(doc)
        cap = self.frequency_cap(doc)
        steps = self.steps(doc, name)
        if self.problems or audience is None:
            return None
        return spec.Campaign(
            name,
            self.path,
            audience,
            exit_when,
            from_email,
            from_name,
            steps,
            window,
            cap,
            audience_line=key_line(doc, "audience", 1),
            exit_line=key_line(doc, "exit_when", 1),
        )

    def condition(
        self, doc: CommentedMap, key: str, campaign: str, required: bool
    ) -> rules.Condition | None:
        line = key_line(doc, key, 1)
        node = doc.get(key)
        if node is None:
            if required:
                self.problem(line, f"campaign {campaign!r}: `{key}:` is required")
            return None
        before = len(self.problems)
        condition = self.conditions.condition(node, line, f"{campaign}/{key}")
        if len(self.problems) == before and (found := _lead_only(condition)):
            self.problem(
                line,
                f"campaign {campaign!r}: {key} reads {found}; campaign conditions read the lead "
                "only (lead.temperature, lead.stage, lead.score, lead.<attribute>, ...)",
            )
        return condition

    def sender(self, doc: CommentedMap) -> tuple[str, str | None]:
        node, line = doc.get("from"), key_line(doc, "from", 1)
        try:
            if not isinstance(node, CommentedMap):
                raise ValueError("missing")
            email = normal_address(str(node.get("email", "")))
        except ValueError:
            self.problem(line, "`from:` needs {email: you@example.com, name: Sender}")
            return "", None
        name = None if node.get("name") is None else str(node["name"])
        if name is not None and (len(name) > MAX_NAME or _CONTROL.search(name)):
            self.problem(line, f"`from: name` must be one line of at most {MAX_NAME} characters")
        return email, name

    def send_window(self, doc: CommentedMap) -> spec.SendWindow | None:
        node, line = doc.get("send_window"), key_line(doc, "send_window", 1)
        if node is None:
            return None
        usage = 'send_window needs {days: [mon, ...], start: "09:00", end: "17:00"}'
        if not isinstance(node, CommentedMap):
            self.problem(line, usage)
            return None
        days = node.get("days", list(spec.DAYS))
        if not isinstance(days, list) or not days or any(d not in spec.DAYS for d in days):
            self.problem(line, f"send_window days: use {', '.join(spec.DAYS)}")
            return None
        start, end = self.clock(node.get("start"), line), self.clock(node.get("end"), line)
        if start is None or end is None:
            self.problem(line, usage)
            return None
        if start >= end:
            self.problem(line, "send_window: start must be before end")
            return None
        return spec.SendWindow(frozenset(spec.DAYS.index(d) for d in days), start, end)

    @staticmethod
    def clock(value: Any, line: int) -> time | None:
        match = _CLOCK.match(str(value)) if value is not None else None
        return time(int(match[1]), int(match[2])) if match else None

    def frequency_cap(self, doc: CommentedMap) -> spec.FrequencyCap | None:
        node, line = doc.get("frequency_cap"), key_line(doc, "frequency_cap", 1)
        if node is None:
            return None
        count = node.get("max") if isinstance(node, CommentedMap) else None
        if not bounds.whole(count, 1, bounds.MAX_TIMES):
            self.problem(
                line,
                f"frequency_cap needs {{max: N, per: 7d}}, N {bounds.span(1, bounds.MAX_TIMES)}",
            )
            return None
        try:
            return spec.FrequencyCap(count, parse_duration(node.get("per")))
        except ValueError as error:
            self.problem(line, f"frequency_cap: {error}")
            return None

    def steps(self, doc: CommentedMap, campaign: str) -> tuple[spec.Step, ...]:
        node, line = doc.get("steps"), key_line(doc, "steps", 1)
        if not isinstance(node, CommentedSeq) or not node:
            self.problem(line, f"campaign {campaign!r}: `steps:` must be a list of steps")
            return ()
        if len(node) > bounds.MAX_STEPS:
            self.problem(
                line, f"campaign {campaign!r}: {len(node)} steps; at most {bounds.MAX_STEPS} steps"
            )
            return ()
        steps = []
        for index, body in enumerate(node):
            at = node_line(body, key_line(node, index, line))
            label = f"campaign {campaign!r} step {index + 1}"
            if not isinstance(body, CommentedMap):
                self.problem(at, f"{label}: a step is {{template: NAME, wait: 3d}}")
                continue
            for key in body:
                if key not in ("template", "wait", "when"):
                    self.problem(key_line(body, key, at), f"{label}: unknown key {key!r}")
            template = body.get("template")
            if not isinstance(template, str) or not template or len(template) > MAX_NAME:
                self.problem(
                    at,
                    f"{label}: needs `template:` (a file in templates/, no .j2; at most "
                    f"{MAX_NAME} characters)",
                )
                continue
            if problem := bounds.name_problem(template, "a template"):
                self.problem(at, f"{label}: {problem}")
                continue
            try:
                wait = parse_duration(body.get("wait", "0d"), zero=True)
            except ValueError as error:
                self.problem(at, f"{label}: wait: {error}")
                continue
            when = (
                self.condition(body, "when", f"{campaign} step {index + 1}", required=False)
                if "when" in body
                else None
            )
            steps.append(spec.Step(template.removesuffix(".j2"), wait, when, at))
        return tuple(steps)


def _engine_problems(campaigns: list[spec.Campaign]) -> list[Problem]:
    """What the rules engine would refuse (or hang on) in the rules the campaigns' conditions
    become, with the file and line of the condition."""
    synthetic = synthetic_rules(campaigns)
    files = {c.name: c.path for c in campaigns}
    first = campaigns[0].path if campaigns else ""
    if len(synthetic) > bounds.MAX_RULES:
        return [
            Problem(
                first,
                1,
                f"the campaigns' audiences, exits and step conditions make {len(synthetic)} "
                f"rules for the rules engine; at most {bounds.MAX_RULES}",
            )
        ]
    return [
        Problem(files[rule.name.split("#")[0]], rule.line, message)
        if rule
        else Problem(first, 1, message)
        for rule, message in engine_problems(synthetic)
    ]


def parse_campaign(text: str, path: str, ruleset: rules.Ruleset) -> spec.Campaign:
    parser = _CampaignParser(path, ruleset)
    campaign = parser.campaign(read_yaml(text, path))
    if campaign is None:
        raise ProblemsError(parser.problems)
    return campaign


def parse_campaigns(
    sources: Mapping[str, str], ruleset: rules.Ruleset, templates: Iterable[str] | None = None
) -> list[spec.Campaign]:
    """Every campaign of ``sources`` (path → text), all problems at once: unique names,
    templates that exist (when ``templates`` is given), and rule enroll/exit targets."""
    campaigns: list[spec.Campaign] = []
    problems: list[Problem] = []
    for path, text in sources.items():
        try:
            campaign = parse_campaign(text, path, ruleset)
        except ProblemsError as error:
            problems.extend(error.problems)
            continue
        if any(c.name == campaign.name for c in campaigns):
            problems.append(Problem(path, 1, f"campaign {campaign.name!r} defined twice"))
        campaigns.append(campaign)
    known = set(templates) if templates is not None else None
    for campaign in campaigns:
        for step in campaign.steps:
            if known is not None and step.template not in known:
                problems.append(Problem(campaign.path, step.line, f"no template {step.template!r}"))
    problems += _engine_problems(campaigns)
    names = {c.name for c in campaigns}
    for rule in ruleset.rules:
        for target in rule.then.enroll + rule.then.exit:
            if target not in names:
                problems.append(
                    Problem(ruleset.path, rule.line, f"rule {rule.name!r}: no campaign {target!r}")
                )
    if problems:
        raise ProblemsError(problems)
    return campaigns
