"""YAML → :class:`~engine.rules.spec.Ruleset`, or every problem found, each with file and line.

A ruleset with any problem is rejected as a whole: callers keep the ruleset in force.
"""

from __future__ import annotations

import difflib
import math
from datetime import date, timedelta
from pathlib import PurePosixPath
from typing import Any

from ruamel.yaml.comments import CommentedMap, CommentedSeq

from engine.errors import NurtureError, Problem, ProblemsError
from engine.rules import bounds, patterns, spec
from engine.rules.account import ACCOUNT_FIELDS, AGGREGATES, Aggregate
from engine.rules.compile import engine_problems
from engine.rules.source import key_line, node_line, read_yaml
from engine.timeutil import parse_duration

DEFAULT_STAGES = ("subscriber", "lead", "mql", "sql", "opportunity", "customer")
DEFAULT_EXITS = ("disqualified", "unsubscribed")
# Attributes a `set:` may not overwrite: they are computed or identify the lead.

# Fields of every lead, besides its attributes.


class _Parser:
    """Walks one ruleset document, collecting every problem instead of stopping at the first."""

    def __init__(self, path: str, models: spec.ModelLoader | None = None) -> None:
        self.path = path
        self.models = models  # None: model paths are checked for shape, never loaded
        self.problems: list[Problem] = []
        self.components: dict[str, spec.Component] = {}
        self.stages: tuple[str, ...] = DEFAULT_STAGES
        self.exits: tuple[str, ...] = DEFAULT_EXITS
        self.bands: tuple[tuple[str, int], ...] = (("cold", 0), ("warm", 40), ("hot", 70))
        self.named: dict[str, spec.NamedScore] = {}  # `scores:`, by name

    def problem(self, line: int, message: str) -> None:
        self.problems.append(Problem(self.path, line, message))

    # -- top level ---------------------------------------------------------------------------
    def ruleset(self, doc: Any, text: str) -> spec.Ruleset | None:
        if not isinstance(doc, CommentedMap):
            self.problem(1, "a ruleset is a mapping with keys ruleset, components, rules")
            return None
        known = {
            "ruleset",
            "components",
            "temperature",
            "stages",
            "exits",
            "rules",
            "max_chain",
            "account",
            "scores",
        }
        for key in doc:
            if key not in known:
                self.problem(
                    key_line(doc, key, 1),
                    f"unknown key {key!r}; a ruleset has {', '.join(sorted(known))}",
                )
        name = doc.get("ruleset")
        if not isinstance(name, str) or not spec.NAME.match(name):
            self.problem(key_line(doc, "ruleset", 1), "`ruleset:` must name the ruleset")
            name = "unnamed"
        elif problem := bounds.name_problem(name, "a ruleset"):
            self.problem(key_line(doc, "ruleset", 1), problem)
        self.parse_components(doc)
        self.parse_bands(doc)
        self.parse_named_scores(doc)
        self.parse_stages(doc)
        max_chain = doc.get("max_chain", 20)
        if not bounds.whole(max_chain, 1, bounds.MAX_CHAIN):
            self.problem(
                key_line(doc, "max_chain", 1),
                f"max_chain must be {bounds.span(1, bounds.MAX_CHAIN)}",
            )
            max_chain = 20
        aggregate = self.parse_account(doc)
        rules = self.parse_rules(doc)
        if self.problems:
            return None
        return spec.Ruleset(
            name=name,
            version=spec.version_of(text),
            path=self.path,
            components=self.components,
            temperature=self.bands,
            stages=self.stages,
            exits=self.exits,
            rules=tuple(rules),
            max_chain=max_chain,
            source=text,
            account_aggregate=aggregate,
            scores=tuple(self.named.values()),
        )

    def parse_components(self, doc: CommentedMap) -> None:
        node = doc.get("components")
        line = key_line(doc, "components", 1)
        if not isinstance(node, CommentedMap) or not node:
            self.problem(line, "`components:` must map each score component to {min, max}")
            return
        if len(node) > bounds.MAX_COMPONENTS:
            self.problem(line, f"{len(node)} components; at most {bounds.MAX_COMPONENTS}")
        for name, body in node.items():
            at = key_line(node, name, line)
            # A malformed component is still declared: rules naming it are not "unknown".
            placeholder = spec.Component(str(name), 0, 0)
            if problem := bounds.name_problem(name, "a component"):
                self.problem(at, problem)
            if not isinstance(body, CommentedMap):
                self.problem(at, f"component {name!r} needs {{min: N, max: N}}")
                self.components[str(name)] = placeholder
                continue
            low, high = body.get("min", 0), body.get("max")
            points = bounds.POINTS
            if not bounds.whole(low, *points) or not bounds.whole(high, *points) or high < low:
                self.problem(
                    at, f"component {name!r}: min and max must be {bounds.span(*points)}, min ≤ max"
                )
                self.components[str(name)] = placeholder
                continue
            unknown = set(body) - {"min", "max", "decay", "model"}
            if unknown:
                self.problem(at, f"component {name!r}: unknown key {sorted(unknown)[0]!r}")
            decay = self.parse_decay(body.get("decay"), key_line(body, "decay", at), name)
            model, model_path = None, None
            if "model" in body:
                model_path = str(body["model"])
                model = self.parse_model(body["model"], key_line(body, "model", at), name)
                if decay is not None:
                    self.problem(at, f"component {name!r}: a model sets it, so it cannot decay")
            self.components[str(name)] = spec.Component(
                str(name), low, high, decay, model, model_path
            )

    def parse_decay(
        self, node: Any, line: int, component: str
    ) -> spec.PointsDecay | spec.HalfLifeDecay | None:
        if node is None:
            return None
        try:
            if isinstance(node, CommentedMap) and set(node) == {"points", "every"}:
                if not bounds.whole(node["points"], 1, bounds.MAX_POINTS):
                    raise ValueError(f"decay points must be {bounds.span(1, bounds.MAX_POINTS)}")
                return spec.PointsDecay(node["points"], _decay_period(node["every"]))
            if isinstance(node, CommentedMap) and set(node) == {"half_life"}:
                return spec.HalfLifeDecay(_decay_period(node["half_life"]))
            raise ValueError("decay is {points: P, every: 7d} or {half_life: 30d}")
        except ValueError as error:
            self.problem(line, f"component {component!r}: {error}")
            return None

    def parse_account(self, doc: CommentedMap) -> Aggregate:
        """``account: {aggregate: sum|max|mean}``: how leads' scores make their account's."""
        node = doc.get("account")
        if node is None:
            return "sum"
        line = key_line(doc, "account", 1)
        if not isinstance(node, CommentedMap) or set(node) != {"aggregate"}:
            self.problem(
                line, "`account:` takes {aggregate: sum}, {aggregate: max} or {aggregate: mean}"
            )
            return "sum"
        for aggregate in AGGREGATES:
            if node["aggregate"] == aggregate:
                return aggregate
        self.problem(
            key_line(node, "aggregate", line),
            f"account aggregate {node['aggregate']!r}: use {', '.join(AGGREGATES)}",
        )
        return "sum"

    def parse_model(self, node: Any, line: int, component: str) -> spec.Predictor | None:
        """``model: models/NAME-vN.joblib``: a file `nurture model train` wrote. Loaded only
        when the caller passes a loader (validation never loads one)."""
        if not isinstance(node, str) or not node.strip():
            self.problem(line, f"component {component!r}: model is the path of a model file")
            return None
        refusal = model_path_problem(node.strip())
        if refusal is not None:
            self.problem(line, f"component {component!r}: {refusal}")
            return None
        if self.models is None:
            return None
        try:
            return self.models(node.strip())
        except NurtureError as error:
            self.problem(line, f"component {component!r}: {error}")
            return None

    def parse_bands(self, doc: CommentedMap) -> None:
        if "temperature" not in doc:
            return
        node, line = doc["temperature"], key_line(doc, "temperature", 1)
        if not isinstance(node, CommentedMap) or not node:
            self.problem(line, "`temperature:` maps each band to its lower bound, e.g. {warm: 40}")
            return
        bands = []
        for band, lower in node.items():
            at = key_line(node, band, line)
            if problem := bounds.name_problem(band, "a band", bounds.MAX_BAND_NAME):
                self.problem(at, problem)
            elif not bounds.whole(lower, *bounds.POINTS):
                self.problem(
                    at, f"band {band!r}: its lower bound must be {bounds.span(*bounds.POINTS)}"
                )
            else:
                bands.append((str(band), int(lower)))
        self.bands = tuple(sorted(bands, key=lambda b: b[1]))

    def parse_stages(self, doc: CommentedMap) -> None:
        for key in ("stages", "exits"):
            if key not in doc:
                continue
            node = doc[key]
            if not isinstance(node, list) or not all(isinstance(s, str) for s in node):
                self.problem(key_line(doc, key, 1), f"`{key}:` must be a list of stage names")
                continue
            problems = [p for p in (bounds.name_problem(s, "a stage") for s in node) if p]
            if problems:
                self.problem(key_line(doc, key, 1), problems[0])
                continue
            if key == "stages":
                if not node:
                    self.problem(key_line(doc, key, 1), "`stages:` needs at least one stage")
                    continue
                self.stages = tuple(node)
            else:
                self.exits = tuple(node)
        for stage in set(self.stages) & set(self.exits):
            self.problem(key_line(doc, "exits", 1), f"{stage!r} is both a stage and an exit")

    # -- rules -------------------------------------------------------------------------------
    def parse_rules(self, doc: CommentedMap) -> list[spec.Rule]:
        node, line = doc.get("rules"), key_line(doc, "rules", 1)
        if not isinstance(node, CommentedSeq):
            self.problem(line, "`rules:` must be a list of rules")
            return []
        rules, seen = [], set()
        for index, body in enumerate(node):
            at = key_line(node, index, line)
            if not isinstance(body, CommentedMap):
                self.problem(at, "a rule is a mapping with name, when, then")
                continue
            at = node_line(body, at)
            name = body.get("name")
            if not isinstance(name, str) or not spec.NAME.match(name):
                self.problem(at, "rule needs a `name:` (letters, digits, - _ .)")
                name = f"rule-{index + 1}"
            elif problem := bounds.name_problem(name, "a rule"):
                self.problem(at, problem)
            elif name in seen:
                self.problem(at, f"rule name {name!r} is used twice")
            seen.add(name)
            for key in body:
                if key not in ("name", "when", "then", "limit"):
                    self.problem(key_line(body, key, at), f"rule {name!r}: unknown key {key!r}")
            if not isinstance(body.get("when"), CommentedMap) or not body["when"]:
                self.problem(at, f"rule {name!r}: `when:` must be a mapping of conditions")
                continue
            when = self.condition(body["when"], key_line(body, "when", at), name)
            then = self.effects(body.get("then"), key_line(body, "then", at), name)
            limit = self.limit(body.get("limit"), key_line(body, "limit", at), name)
            rules.append(spec.Rule(name, when, then, limit, at))
        if len(rules) > bounds.MAX_RULES:
            self.problem(
                line,
                f"{len(rules)} rules: at most {bounds.MAX_RULES} (the rules engine hangs at 512); "
                "split the ruleset",
            )
        elif not self.problems:
            # What the rules engine would refuse, or hang on, said before it is asked.
            for rule, message in engine_problems(rules):
                self.problem(rule.line if rule else line, message)
        return rules

    def condition(self, node: Any, line: int, rule: str, depth: int = 0) -> spec.Condition:
        if not isinstance(node, CommentedMap) or not node:
            self.problem(line, f"rule {rule!r}: a condition is a non-empty mapping")
            return spec.All(())
        if depth > bounds.MAX_NESTING:
            self.problem(
                line,
                f"rule {rule!r}: any, all and not nested more than {bounds.MAX_NESTING} deep",
            )
            return spec.All(())
        items: list[spec.Condition] = []
        for key, value in node.items():
            at = key_line(node, key, line)
            if key in ("any", "all"):
                if not isinstance(value, list) or not value:
                    self.problem(at, f"rule {rule!r}: `{key}:` needs a list of conditions")
                    continue
                parts = tuple(
                    self.condition(item, key_line(value, i, at), rule, depth + 1)
                    for i, item in enumerate(value)
                )
                items.append(spec.AnyOf(parts) if key == "any" else spec.All(parts))
            elif key == "not":
                items.append(spec.Not(self.condition(value, at, rule, depth + 1)))
            elif key == "count":
                items.append(self.count(value, at, rule))
            elif key in ("sum", "days_since"):
                items.extend(self.aggregate(str(key), value, at, rule))
            else:
                items.extend(self.tests(str(key), value, at, rule))
        return items[0] if len(items) == 1 else spec.All(tuple(items))

    def count(self, node: Any, line: int, rule: str) -> spec.Count:
        bad = spec.Count("?", parse_duration("1d"), 1, None, line)
        if not isinstance(node, CommentedMap) or not isinstance(node.get("type"), str):
            self.problem(line, f"rule {rule!r}: count needs {{type, within, at_least}}")
            return bad
        unknown = set(node) - {"type", "within", "at_least", "at_most"}
        if unknown:
            self.problem(line, f"rule {rule!r}: count has unknown key {sorted(unknown)[0]!r}")
        try:
            within = parse_duration(node.get("within"))
        except ValueError as error:
            self.problem(line, f"rule {rule!r}: {error}")
            return bad
        at_least, at_most = node.get("at_least"), node.get("at_most")
        if (at_least is None and at_most is None) or not all(
            v is None or bounds.whole(v, 0, bounds.MAX_TIMES) for v in (at_least, at_most)
        ):
            self.problem(
                line,
                f"rule {rule!r}: count needs at_least and/or at_most, each "
                f"{bounds.span(0, bounds.MAX_TIMES)}",
            )
            return bad
        return spec.Count(node["type"], within, at_least, at_most, line)

    def tests(self, path: str, value: Any, line: int, rule: str) -> list[spec.Condition]:
        problem = self.check_path(path)
        if problem:
            self.problem(line, f"rule {rule!r}: {problem}")
            return []
        if not isinstance(value, CommentedMap):
            value = {"eq": value}
        elif not value:
            self.problem(line, f"rule {rule!r}: {path} needs an operator, e.g. {{gte: 10}}")
            return []
        out: list[spec.Condition] = []
        for op, operand in value.items():
            if op not in spec.OPERATORS:
                self.problem(
                    line,
                    f"rule {rule!r}: unknown operator {op!r} on {path}; "
                    f"use one of {', '.join(spec.OPERATORS)}",
                )
                continue
            problem = self.check_operand(path, op, operand)
            if problem:
                self.problem(line, f"rule {rule!r}: {path} {op}: {problem}")
                continue
            out.append(spec.Test(path, op, _plain(operand), line))
        return out

    def check_path(self, path: str) -> str | None:
        parts = path.split(".")
        if parts[0] == "event" and (
            path == "event.type" or (len(parts) > 2 and parts[1] == "properties")
        ):
            return None
        if parts[0] == "lead" and len(parts) == 3 and parts[1] in ("scores", "bands"):
            return self.check_score_path(parts[1], parts[2], path)
        if parts[0] == "lead" and len(parts) == 3 and parts[1] == "account":
            if path.removeprefix("lead.") not in ACCOUNT_FIELDS:
                return (
                    f"unknown account field {path!r}: use lead.account.score or lead.account.leads"
                )
            return None
        if parts[0] == "lead" and len(parts) == 2 and parts[1] and parts[1] != "scores":
            # Any attribute may be read, but one a letter or two from a built-in field is a typo
            # that would otherwise never match.
            close = difflib.get_close_matches(parts[1], spec.BUILT_IN_FIELDS, n=1, cutoff=0.8)
            if close and close[0] != parts[1]:
                return f"unknown field {path!r}: did you mean lead.{close[0]}?"
            return None
        return (
            f"unknown field {path!r}: use lead.<attribute>, lead.score, lead.scores.<component>, "
            "lead.scores.<score>, lead.bands.<score>, lead.temperature, lead.stage, lead.tags, "
            "lead.account.score, lead.account.leads, event.type or event.properties.<key>"
        )

    def check_operand(self, path: str, op: str, operand: Any) -> str | None:
        if op in spec.NUMERIC_OPERATORS and not _is_number(operand):
            return f"needs a number, got {operand!r}"
        if op in ("eq", "ne") and isinstance(operand, dict | list):
            return "compare with a scalar (text, number, true/false); for a list use in / not_in"
        if op in ("in", "not_in") and (not isinstance(operand, list) or not operand):
            return "needs a list of values"
        if op in ("in", "not_in") and len(operand) > bounds.MAX_LIST:
            return f"{len(operand):,} values; a list has at most {bounds.MAX_LIST:,} values"
        if op == "exists" and not isinstance(operand, bool):
            return "needs true or false"
        if op in ("contains", "matches") and not isinstance(operand, str):
            return "needs a string"
        if op == "matches":
            return patterns.problem(operand)
        values = operand if isinstance(operand, list) else [operand]
        if op in ("eq", "ne", "in", "not_in") and any(isinstance(v, dict | list) for v in values):
            return "compare with a scalar (text, number, true/false)"
        for value in values:
            if problem := bounds.value_problem(value):
                return problem
        if path == "lead.stage" and op in ("eq", "ne", "in", "not_in"):
            for stage in values:
                if stage not in self.stages and stage not in self.exits:
                    return self.unknown_stage(stage)
        if path == "lead.temperature" and op in ("eq", "ne", "in", "not_in"):
            names = [band for band, _ in self.bands]
            for band in values:
                if band not in names:
                    return f"unknown temperature {band!r}; bands are {', '.join(names)}"
        if path.startswith("lead.bands.") and op in ("eq", "ne", "in", "not_in"):
            return self.check_named_band(path.removeprefix("lead.bands."), values)
        return None

    def unknown_stage(self, stage: object) -> str:
        return f"unknown stage {stage!r}; stages are {', '.join(self.stages + self.exits)}"

    def effects(self, node: Any, line: int, rule: str) -> spec.Effects:
        if not isinstance(node, CommentedMap) or not node:
            self.problem(line, f"rule {rule!r}: `then:` must be a mapping of actions")
            return spec.Effects()
        score: list[tuple[str, int]] = []
        stage: str | None = None
        sets: list[tuple[str, object]] = []
        lists: dict[str, tuple[str, ...]] = {}
        for key, value in node.items():
            at = key_line(node, key, line)
            if key == "score":
                if not isinstance(value, CommentedMap) or not value:
                    self.problem(at, f"rule {rule!r}: score needs {{component: points}}")
                    continue
                for component, points in value.items():
                    if component in self.named:
                        self.problem(
                            at,
                            f"rule {rule!r}: {component!r} is a named score; add points to one "
                            f"of its components ({', '.join(self.named[component].components)})",
                        )
                    elif component not in self.components:
                        self.problem(at, f"rule {rule!r}: unknown score component {component!r}")
                    elif self.components[component].model_path is not None:
                        self.problem(
                            at, f"rule {rule!r}: component {component!r} is set by a model"
                        )
                    elif not bounds.whole(points, *bounds.POINTS):
                        self.problem(
                            at,
                            f"rule {rule!r}: points must be {bounds.span(*bounds.POINTS)}, "
                            f"got {points!r}",
                        )
                    else:
                        score.append((str(component), int(points)))
            elif key == "stage":
                if value not in self.stages and value not in self.exits:
                    self.problem(at, f"rule {rule!r}: {self.unknown_stage(value)}")
                else:
                    stage = str(value)
            elif key == "set":
                if not isinstance(value, CommentedMap) or not value:
                    self.problem(at, f"rule {rule!r}: set needs {{attribute: value}}")
                    continue
                for attribute, new in value.items():
                    if attribute in spec.COMPUTED_FIELDS or attribute == "email":
                        self.problem(at, f"rule {rule!r}: {attribute!r} cannot be set by a rule")
                    elif problem := bounds.name_problem(attribute, "an attribute"):
                        self.problem(at, f"rule {rule!r}: {problem}")
                    elif isinstance(new, dict | list):
                        self.problem(at, f"rule {rule!r}: set {attribute!r} to a scalar")
                    elif problem := bounds.value_problem(new):
                        self.problem(at, f"rule {rule!r}: set {attribute!r}: {problem}")
                    else:
                        sets.append((str(attribute), _plain(new)))
            elif key in ("tag", "alert", "enroll", "exit"):
                names = value if isinstance(value, list) else [value]
                if not names or not all(isinstance(n, str) and n for n in names):
                    self.problem(at, f"rule {rule!r}: {key} needs a name or a list of names")
                    continue
                problems = [p for p in (bounds.name_problem(n, f"a {key}") for n in names) if p]
                if problems:
                    self.problem(at, f"rule {rule!r}: {problems[0]}")
                    continue
                lists[key] = tuple(names)
            else:
                self.problem(
                    at,
                    f"rule {rule!r}: unknown action {key!r}; "
                    "use score, stage, set, tag, alert, enroll, exit",
                )
        return spec.Effects(
            score=tuple(score),
            stage=stage,
            set=tuple(sets),
            tags=lists.get("tag", ()),
            alert=lists.get("alert", ()),
            enroll=lists.get("enroll", ()),
            exit=lists.get("exit", ()),
        )

    # -- named scores and history aggregates (customer scoring) ---------------------------------
    def parse_named_scores(self, doc: CommentedMap) -> None:
        """``scores: {NAME: {components: [..], bands: {band: lower}}}``: each component counts
        toward at most one named score; names share one namespace with the components."""
        if "scores" not in doc:
            return
        node, line = doc["scores"], key_line(doc, "scores", 1)
        if not isinstance(node, CommentedMap) or not node:
            self.problem(
                line, "`scores:` maps each named score to {components: [..], bands: {band: N}}"
            )
            return
        owner: dict[str, str] = {}
        for name, body in node.items():
            at = key_line(node, name, line)
            if not isinstance(name, str) or not spec.NAME.match(name):
                self.problem(at, f"score name {name!r}: use letters, digits and - _ .")
                continue
            if name in self.components:
                self.problem(at, f"score {name!r} has the name of a component; rename one")
                continue
            if not isinstance(body, CommentedMap) or set(body) != {"components", "bands"}:
                self.problem(at, f"score {name!r} needs {{components: [..], bands: {{band: N}}}}")
                continue
            components = body["components"]
            where = key_line(body, "components", at)
            if not isinstance(components, list) or not components:
                self.problem(where, f"score {name!r}: components is a list of component names")
                continue
            for component in components:
                if component not in self.components:
                    self.problem(where, f"score {name!r}: unknown component {component!r}")
                elif component in owner:
                    self.problem(
                        where,
                        f"score {name!r}: component {component!r} already counts toward "
                        f"{owner[component]!r}; a component belongs to one score",
                    )
                else:
                    owner[component] = name
            bands = self.band_bounds(body["bands"], key_line(body, "bands", at), f"score {name!r}")
            if bands:
                self.named[name] = spec.NamedScore(
                    name, tuple(str(c) for c in components), bands, at
                )

    def band_bounds(self, node: Any, line: int, what: str) -> tuple[tuple[str, int], ...]:
        """``{band: lower bound}`` → bands ascending; ``()`` after a problem."""
        if not isinstance(node, CommentedMap) or not node:
            self.problem(
                line, f"{what}: bands map each band to its lower bound, e.g. {{steady: 30}}"
            )
            return ()
        bands = []
        for band, lower in node.items():
            if (
                not isinstance(band, str)
                or not spec.NAME.match(band)
                or not bounds.whole(lower, *bounds.POINTS)
            ):
                self.problem(key_line(node, band, line), f"{what}: band {band!r} needs an integer")
                return ()
            bands.append((band, int(lower)))
        return tuple(sorted(bands, key=lambda b: b[1]))

    def check_score_path(self, kind: str, name: str, path: str) -> str | None:
        """``lead.scores.<component or score>`` and ``lead.bands.<score>``."""
        if kind == "bands":
            if name in self.named:
                return None
            known = ", ".join(self.named) or "none: declare them under `scores:`"
            return f"unknown named score {name!r} in {path}; named scores: {known}"
        if name not in self.components and name not in self.named:
            return f"unknown score component {name!r} in {path}"
        return None

    def check_named_band(self, name: str, values: list[Any]) -> str | None:
        names = [band for band, _ in self.named[name].bands]
        for band in values:
            if band not in names:
                return f"unknown band {band!r} of {name}; its bands are {', '.join(names)}"
        return None

    def aggregate(self, kind: str, node: Any, line: int, rule: str) -> list[spec.Condition]:
        """``sum: {type, property, within?, <op>: N}`` and ``days_since: {type, first?, <op>: N}``:
        one condition per comparison (several hold together)."""
        shape = (
            "sum needs {type, property, within (optional), and a comparison such as gte: 500}"
            if kind == "sum"
            else "days_since needs {type, first (optional, true/false), and a comparison such as "
            "gte: 90}"
        )
        keys = {"type", "property", "within"} if kind == "sum" else {"type", "first"}
        if not isinstance(node, CommentedMap) or not isinstance(node.get("type"), str):
            self.problem(line, f"rule {rule!r}: {shape}")
            return []
        problems = len(self.problems)
        comparisons = {k: v for k, v in node.items() if k not in keys}
        for key, value in comparisons.items():
            if key not in ("eq", "ne", *spec.NUMERIC_OPERATORS):
                self.problem(line, f"rule {rule!r}: {kind} has unknown key {key!r}; {shape}")
            elif not (_is_number(value) and math.isfinite(value)):
                self.problem(line, f"rule {rule!r}: {kind} {key}: needs a number, got {value!r}")
        if not comparisons:
            self.problem(line, f"rule {rule!r}: {shape}")
        if kind == "days_since":
            first = node.get("first", False)
            if not isinstance(first, bool):
                self.problem(line, f"rule {rule!r}: days_since first: needs true or false")
            if len(self.problems) > problems:
                return []
            return [
                spec.DaysSince(node["type"], bool(first), op, _plain(value), line)
                for op, value in comparisons.items()
            ]
        prop = node.get("property")
        if not isinstance(prop, str) or not prop.strip():
            self.problem(line, f"rule {rule!r}: sum property: the event property to add up")
        within = None
        if "within" in node:
            try:
                within = parse_duration(node["within"])
            except ValueError as error:
                self.problem(line, f"rule {rule!r}: sum within: {error}")
        if len(self.problems) > problems:
            return []
        return [
            spec.Sum(node["type"], str(prop), within, op, _plain(value), line)
            for op, value in comparisons.items()
        ]

    def limit(self, node: Any, line: int, rule: str) -> spec.Limit | None:
        if node is None:
            return None
        if node == "once":
            return spec.Limit(1, None)
        if isinstance(node, CommentedMap) and set(node) == {"times", "per"}:
            if not bounds.whole(node["times"], 1, bounds.MAX_TIMES):
                self.problem(
                    line, f"rule {rule!r}: limit times must be {bounds.span(1, bounds.MAX_TIMES)}"
                )
                return None
            try:
                return spec.Limit(node["times"], parse_duration(node["per"]))
            except ValueError as error:
                self.problem(line, f"rule {rule!r}: limit: {error}")
                return None
        self.problem(line, f"rule {rule!r}: limit is `once` or {{times: N, per: 30d}}")
        return None


def _decay_period(text: object) -> timedelta:
    """A decay's ``every`` or ``half_life``: at least an hour, so that the periods since a rise
    (counted in SQL, in a 32-bit column) stay countable back to year 1."""
    period = parse_duration(text)
    if period < bounds.MIN_DECAY_PERIOD:
        raise ValueError(f"a decay period is at least 1h, got {text!r}")
    return period


def model_path_problem(path: str) -> str | None:
    """Why ``path`` (as a ruleset writes it) cannot name a model, from its text alone: loading a
    model unpickles it, which runs code, so only files under ``models/`` of NURTURE_HOME load.
    The one message, whatever is at the path, tells nothing about the files there."""
    parts = PurePosixPath(path).parts
    if (
        PurePosixPath(path).is_absolute()
        or len(parts) < 2
        or parts[0] != "models"
        or ".." in parts
        or not path.isprintable()
    ):
        return refused_model(path)
    return None


def refused_model(path: str) -> str:
    return (
        f"model {path!r} refused: a model is a file under models/ in NURTURE_HOME, "
        "e.g. models/NAME-v1.joblib"
    )


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _plain(value: Any) -> Any:
    """ruamel's scalar subclasses → plain Python values (they must JSON-encode cleanly)."""
    if isinstance(value, bool) or value is None:
        return value
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        return float(value)
    if isinstance(value, str):
        return str(value)
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, date):  # an unquoted 2026-01-01 is a YAML date: keep the text
        return value.isoformat()
    return value


def parse_ruleset(
    text: str, path: str = "<ruleset>", models: spec.ModelLoader | None = None
) -> spec.Ruleset:
    doc = read_yaml(text, path)
    parser = _Parser(path, models)
    ruleset = parser.ruleset(doc, text)
    if ruleset is None:
        raise ProblemsError(parser.problems)
    return ruleset


def condition_parser(path: str, ruleset: spec.Ruleset) -> _Parser:
    """A parser for ``when``-style conditions in another file (a campaign), checked against the
    components, stages and bands of ``ruleset``; its ``problems`` name ``path``."""
    parser = _Parser(path)
    parser.components = dict(ruleset.components)
    parser.stages, parser.exits, parser.bands = ruleset.stages, ruleset.exits, ruleset.temperature
    parser.named = {score.name: score for score in ruleset.scores}
    return parser
