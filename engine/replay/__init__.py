"""Ruleset versions over the whole database: ``nurture rules plan`` (replay every lead under the
files' version, write nothing, report what would change), ``apply`` / ``rollback`` (make a
version the one in force and rescore every lead by replay, in batches, resumable), and scores
as of a date. The per-lead replay itself is :mod:`engine.ingest.rescore`, which ingest uses
too."""
