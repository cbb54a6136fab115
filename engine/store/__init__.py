"""SQL storage: the tables (``schema``), connections and migrations (``db``), the ruleset in
force (``rulesets``) and the batch writer that applies evaluations (``scoring``)."""
