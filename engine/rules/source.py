"""Reading the YAML of rulesets, campaigns and ruleset tests, before anything is made of it.

The text may come from anyone who can reach ``POST /api/rulesets/validate``, so reading is
bounded: the size of the text, how deep it nests and how many values it holds. Aliases (``*a``)
are refused, since a few hundred bytes of nested aliases expand into billions of values for the
parser that walks them, and explicit tags (``!!int``, ``!foo``) too: no file here needs either.
Every refusal, and every value the YAML library cannot build (``2026-13-45``, a number of 5,000
digits), is a :class:`~engine.errors.Problem` with its line. Mappings remember their lines.
"""

from __future__ import annotations

from typing import Any

from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedSeq
from ruamel.yaml.composer import Composer
from ruamel.yaml.constructor import RoundTripConstructor
from ruamel.yaml.error import MarkedYAMLError, YAMLError
from ruamel.yaml.events import AliasEvent

from engine.errors import Problem, ProblemsError

# A ruleset of 400 rules is under 200,000 characters; parsing 1,000,000 takes about 8 s.
MAX_SOURCE = 1_000_000
# Mappings and lists inside each other: conditions nest at most 32 deep (two levels each).
MAX_DEPTH = 100
# Values (scalars, mappings, lists) in one file: a ruleset of 400 rules has about 10,000, and
# the parser takes 4 to 8 s for 30,000 on a small server.
MAX_NODES = 30_000
# Integers (the loaders bound each number far lower; this keeps every one printable).
MAX_INTEGER_BITS = 128


class _Refused(MarkedYAMLError):
    """What the bounds below refuse: said as is, not as a syntax error."""


class _BoundedComposer(Composer):
    """Builds the node tree, refusing aliases, tags, depth and size beyond the bounds."""

    def __init__(self, loader: Any = None) -> None:
        super().__init__(loader)
        self.nodes = 0
        self.warn_double_anchors = False  # an anchor is harmless without an alias (refused)

    def compose_node(self, parent: Any, index: Any) -> Any:
        event = self.parser.peek_event()
        if isinstance(event, AliasEvent):
            self._refuse(event, f"YAML aliases (*{event.anchor}) are not allowed: write it out")
        tag = getattr(event, "ctag", None)
        if tag is not None and str(tag) != "!":
            self._refuse(event, f"YAML tags ({tag}) are not allowed: write the plain value")
        if self.depth >= MAX_DEPTH:
            self._refuse(event, f"nested more than {MAX_DEPTH} levels deep")
        self.nodes += 1
        if self.nodes > MAX_NODES:
            self._refuse(event, f"more than {MAX_NODES:,} values in one file")
        return super().compose_node(parent, index)

    @staticmethod
    def _refuse(event: Any, message: str) -> None:
        raise _Refused(None, None, message, event.start_mark)


class _CheckedConstructor(RoundTripConstructor):
    """A value Python cannot build from its text becomes an error at its line, not a crash, and
    so does an integer beyond 128 bits (Python cannot even print one of 5,000 digits)."""

    def construct_non_recursive_object(self, node: Any, tag: str | None = None) -> Any:
        try:
            data = super().construct_non_recursive_object(node, tag)
        except (ValueError, OverflowError) as error:
            if str(node.tag).endswith(("int", "float")):
                self._refuse(node, "is too large a number")
            self._refuse(node, f"cannot be read: {error}")
        if isinstance(data, int) and data.bit_length() > MAX_INTEGER_BITS:
            self._refuse(node, "is too large a number")
        return data

    @staticmethod
    def _refuse(node: Any, message: str) -> None:
        text = str(node.value)
        shown = repr(text[:40]) + ("…" if len(text) > 40 else "")
        raise _Refused(None, None, f"{shown} {message}", node.start_mark)


def read_yaml(text: str, path: str) -> Any:
    """Round-trip YAML so mappings remember their line numbers; every problem names its line."""
    if len(text) > MAX_SOURCE:
        raise ProblemsError(
            [Problem(path, 1, f"{len(text):,} characters: a file has at most {MAX_SOURCE:,}")]
        )
    yaml = YAML(typ="rt")
    yaml.Composer = _BoundedComposer
    yaml.Constructor = _CheckedConstructor
    try:
        return yaml.load(text)
    except MarkedYAMLError as error:
        mark = error.problem_mark or error.context_mark
        line = mark.line + 1 if mark is not None else 1
        reason = error.problem or error.context or "invalid YAML"
        said = reason if isinstance(error, _Refused) else f"YAML syntax: {reason}"
        raise ProblemsError([Problem(path, line, said)]) from None
    except YAMLError as error:
        raise ProblemsError([Problem(path, 1, f"YAML syntax: {error}")]) from None


def key_line(node: Any, key: object, default: int) -> int:
    """1-based line of ``key`` in a round-trip mapping (or of item ``key`` in a sequence)."""
    try:
        if isinstance(node, CommentedMap):
            return int(node.lc.key(key)[0]) + 1
        if isinstance(node, CommentedSeq) and isinstance(key, int):
            return int(node.lc.item(key)[0]) + 1
    except (KeyError, IndexError, TypeError, AttributeError):
        pass
    return default


def node_line(node: Any, default: int) -> int:
    line = getattr(getattr(node, "lc", None), "line", None)
    return int(line) + 1 if isinstance(line, int) else default
