"""nurture: rules-engine lead scoring and nurturing.

Data flow, one package per stage: ``ingest`` parses records, ``rules`` compiles rulesets and
evaluates them on durable-rules, ``store`` applies the effects in SQL, ``decay`` ages scores,
``report`` reads leads back, and ``cli`` wires it all to the ``nurture`` command.
"""

__version__ = "0.1.0"
