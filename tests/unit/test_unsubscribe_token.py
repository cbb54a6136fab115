"""Unsubscribe tokens on their own: every lead and creation time reads back as itself, and no
change of a single bit, other key, truncation or splice is read as any lead."""

from __future__ import annotations

import base64
import random
from datetime import UTC, datetime, timedelta

import pytest

from engine.send.unsubscribe import BadToken, make_token, read_token

KEY = "unit-secret-0123456789abcdef0123456789"


def test_tokens_read_back_as_the_lead_and_moment_they_were_made_for() -> None:
    draw = random.Random(15)
    for _ in range(500):
        lead_id = draw.choice([1, draw.randrange(2**31), 2**63 - 1])
        created = datetime(1990, 1, 1, tzinfo=UTC) + timedelta(microseconds=draw.randrange(2**50))
        token = make_token(KEY, lead_id, created)
        assert len(token) == 60 and base64.urlsafe_b64decode(token)  # URL-safe, no padding
        found = read_token(KEY, token)
        assert found.lead_id == lead_id and found.names("any@example.com", created)
        assert not found.names("any@example.com", created + timedelta(microseconds=1))


def test_every_altered_token_is_refused() -> None:
    token = make_token(KEY, 42, datetime(2026, 1, 1, tzinfo=UTC))
    raw = base64.urlsafe_b64decode(token)
    altered = [
        base64.urlsafe_b64encode(raw[:i] + bytes([raw[i] ^ 1 << bit]) + raw[i + 1 :]).decode()
        for i in range(len(raw))
        for bit in range(8)
    ]
    other = make_token(KEY, 43, datetime(2026, 1, 1, tzinfo=UTC))
    spliced = token[:30] + other[30:]
    for bad in [
        *altered,
        token[:-4],
        token + "AAAA",
        spliced,
        make_token("other", 42, datetime(2026, 1, 1, tzinfo=UTC)),
    ]:
        with pytest.raises(BadToken):
            read_token(KEY, bad)
