"""Sending: the outbox dispatcher and the mail backends it hands emails to."""
