"""Fixtures of the unit tests: pure decisions, no database."""

from __future__ import annotations

import pytest

from engine.campaigns.compile import CompiledCampaigns
from engine.campaigns.load import parse_campaign
from tests.campaign_support import CAMPAIGNS, RULESET
from tests.helpers import campaign_text, compiled


@pytest.fixture(scope="module")
def campaigns() -> CompiledCampaigns:
    """The campaigns of tests/campaigns/ on the camp-test ruleset, read from their files."""
    ruleset = compiled(RULESET).ruleset
    found = [parse_campaign(campaign_text(n), f"{n}.yaml", ruleset) for n in CAMPAIGNS]
    return CompiledCampaigns(ruleset, found)
