"""Rulesets: load YAML (``load``), compile to durable-rules (``compile``), evaluate (``evaluate``).

Everything here is pure apart from the durable-rules engine itself: no database, no clock.
"""
