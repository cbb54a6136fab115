"""What may be written where people read it: a log line, an error kept on an outbox row. Email
addresses keep their first letter and domain (``a***@acme.io``), secret query values
(``token=***``), passwords in URLs and the secrets nurture is configured with are replaced. The
one helper for every such place: :func:`redact` on text, :class:`Redacting` on log records (the
handlers ``configure_logging`` installs, uvicorn's access log)."""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable

MASK = "***"
# What ends an address's local part in the text around it: space, brackets, quotes, and the
# URL delimiters of a query (`?`, `&`, `=`). A '/' does not: it may be part of the address.
_DELIMITERS = r"\s@<>()\[\]{},;:\"'`=?&|\\"
_ADDRESS = re.compile(
    # Starts only where a run of local-part characters starts, and takes the run whole
    # (possessive): one pass over any text, however long and hostile.
    rf"(?<![^{_DELIMITERS}])(?P<local>(?:[^{_DELIMITERS}%]|%(?!40))++)"
    r"(?P<at>@|%40)(?P<domain>[\w-]+(?:\.[\w-]+)*+)",
    re.IGNORECASE,
)
# Query values that are credentials: token=, api_token=, key=, secret=, password=, signature=.
_SECRET_VALUE = re.compile(
    r"(?<![\w-])(?P<name>\w*token|\w*key|\w*secret|password|passwd|signature|sig)="
    r"[^&\s\"'#<>]++",
    re.IGNORECASE,
)
# The password of a URL's user information: scheme://user:PASSWORD@host.
_URL_PASSWORD = re.compile(r"(?P<head>\b[a-z][a-z0-9+.-]*+://[^/\s:@]*+:)[^/\s@]++@", re.IGNORECASE)
SHORTEST_SECRET = 8  # shorter configured values are not secrets worth a search (or words)


def mask_address(local: str, at: str = "@", domain: str = "") -> str:
    return f"{local[:1]}{MASK}{at}{domain}"


def redact(text: str, secrets: Iterable[str] = (), keep: Iterable[str] = ()) -> str:
    """``text`` with addresses masked and credentials replaced. ``secrets``: values that must
    not appear at all; ``keep``: URL path prefixes (``/api/leads/``) kept before an address that
    follows them, where it is a path parameter."""
    for secret in secrets:
        text = text.replace(secret, MASK)
    if "=" in text:
        text = _SECRET_VALUE.sub(lambda m: f"{m['name']}={MASK}", text)
    if "://" in text:
        text = _URL_PASSWORD.sub(lambda m: f"{m['head']}{MASK}@", text)
    if "@" not in text and "%40" not in text.upper():
        return text
    prefixes = sorted(keep, key=len, reverse=True)

    def masked(match: re.Match[str]) -> str:
        local, at, domain = match["local"], match["at"], match["domain"]
        if local == MASK:  # a URL password already replaced
            return match[0]
        kept = next((p for p in prefixes if local.startswith(p) and len(local) > len(p)), "")
        return kept + mask_address(local[len(kept) :], at, domain)

    return _ADDRESS.sub(masked, text)


class Redacting(logging.Filter):
    """Redacts a record's message and traceback once, whichever filter sees it first (a
    logger's, with URL prefixes to keep, or a handler's)."""

    def __init__(self, secrets: Iterable[str | None] = (), keep: Iterable[str] = ()) -> None:
        super().__init__()
        found = {s for s in secrets if s and len(s) >= SHORTEST_SECRET}
        self.secrets = sorted(found, key=len, reverse=True)  # a longer one may hold a shorter
        self.keep = tuple(keep)

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "redacted", False):
            return True
        record.msg = redact(record.getMessage(), self.secrets, self.keep)
        record.args = None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact(record.exc_text, self.secrets, self.keep)
        if record.stack_info:
            record.stack_info = redact(record.stack_info, self.secrets, self.keep)
        record.redacted = True
        return True
