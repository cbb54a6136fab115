"""Settings from the environment (``NURTURE_*``), as docs/design.md lists them."""

from __future__ import annotations

import logging
import os
import secrets
import tempfile
from contextlib import suppress
from datetime import timedelta
from functools import lru_cache
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from pydantic import (
    AliasChoices,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
)
from pydantic_settings import BaseSettings, SettingsConfigDict

from engine.address import normal_address
from engine.errors import NurtureError
from engine.redact import Redacting
from engine.timeutil import parse_duration

# The shortest secret taken, from the environment or a kept file: a random 32-byte token is 43.
MIN_SECRET = 32
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
MAKE_ONE = "python -c 'import secrets; print(secrets.token_urlsafe(32))'"


class SettingsError(NurtureError):
    """A setting or kept secret that nurture will not run with; ``str()`` names it."""


SALES = "sales"  # the alert target NURTURE_SALES_* configure


class AlertTarget(BaseModel):
    """Who an ``alert: TARGET`` goes to (one entry of ``NURTURE_ALERT_TARGETS``): the person the
    lead's ``owner`` attribute names, else the next of ``roster`` in turn (written back to that
    attribute), else the team address ``email``; and a POST to ``webhook_url``."""

    model_config = ConfigDict(extra="forbid")

    roster: list[str] = Field(default_factory=list)
    email: str | None = None
    webhook_url: str | None = None
    owner: str | None = None  # the lead attribute; default the target's name in snake_case


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="NURTURE_", extra="ignore")

    database_url: str = "sqlite:///nurture.db"
    home: Path = Path(".")
    # Which ruleset in rulesets/ scores leads: a name or a file; default the only one there.
    ruleset: str | None = None
    batch_size: int = Field(default=2000, ge=1, le=100_000)  # records per transaction
    log_level: str = "INFO"  # serve and worker: DEBUG, INFO, WARNING, ERROR

    # Sending: the backend, its endpoints, and how the dispatcher paces itself.
    mail_backend: str = "file"
    outbox_dir: Path = Path("outbox")
    sendgrid_api_key: str | None = Field(
        default=None, validation_alias=AliasChoices("SENDGRID_API_KEY", "NURTURE_SENDGRID_API_KEY")
    )
    sendgrid_host: str = "https://api.sendgrid.com"
    sendgrid_webhook_public_key: str | None = None
    # Without a public key the webhook refuses every call, unless this opens it (tests, a
    # private network): then anyone who can reach it can unsubscribe or score leads.
    sendgrid_webhook_insecure: bool = False
    smtp_url: str = "smtp://127.0.0.1:25"
    send_timeout: float = Field(default=10.0, gt=0)  # seconds, per provider call
    dispatch_batch: int = Field(default=50, gt=0)  # messages claimed per round
    send_concurrency: int = Field(default=8, gt=0)  # provider calls in flight per dispatcher
    # A claimed message not settled by then is claimed again.
    lease_seconds: int = Field(default=300, gt=0)
    max_attempts: int = Field(default=8, gt=0)  # tries before a message fails for good
    default_timezone: str = "UTC"  # for send windows when a lead has no `timezone`
    # Processes that render due campaign steps side by side, each its share of the leads.
    step_processes: int = Field(default=1, ge=1, le=64)

    # Links and access.
    secret_key: str | None = None  # signs unsubscribe links; see `signing_key`
    public_url: str = "http://127.0.0.1:8000"
    api_token: str | None = None
    # Limits on one API request: a body over either is refused whole (413) before any scoring.
    max_body_bytes: int = Field(default=1_048_576, gt=0)
    max_events_per_request: int = Field(default=1000, gt=0)
    sales_webhook_url: str | None = None
    sales_email: str | None = None

    # Alerts (README, "Alerts"): who gets them and how often.
    sales_roster: str = ""  # comma-separated reps, assigned round-robin to leads without owner
    alert_from: str | None = None  # the alert email's sender; default NURTURE_SALES_EMAIL
    alert_cooldown: timedelta = timedelta(days=7)  # no second alert for a lead within this
    alert_rearm_margin: int = Field(default=10, ge=0)  # ...nor before it fell this far below hot
    alert_max_age: timedelta = timedelta(days=1)  # older events (a backfill) page nobody
    # Alert targets besides sales (`alert: account-manager`), as JSON: name → AlertTarget.
    alert_targets: dict[str, AlertTarget] = Field(default_factory=dict)

    @field_validator("alert_targets")
    @classmethod
    def _targets(cls, value: dict[str, AlertTarget]) -> dict[str, AlertTarget]:
        if SALES in value:
            raise ValueError("`sales` is configured by NURTURE_SALES_ROSTER, _EMAIL, _WEBHOOK_URL")
        return value

    @field_validator("api_token", "secret_key")
    @classmethod
    def _secret(cls, value: str | None) -> str | None:
        """An empty or short secret is a guessable one: refused, never taken as unset."""
        if value is not None and len(value.strip()) < MIN_SECRET:
            raise ValueError(
                f"must be at least {MIN_SECRET} characters (it has {len(value.strip())}); "
                f"make one with {MAKE_ONE}"
            )
        return value

    @field_validator("log_level")
    @classmethod
    def _log_level(cls, value: str) -> str:
        if value.upper() not in LOG_LEVELS:
            raise ValueError(f"must be one of {', '.join(LOG_LEVELS)}")
        return value.upper()

    @field_validator("sendgrid_webhook_public_key")
    @classmethod
    def _webhook_key(cls, value: str | None) -> str | None:
        """SendGrid's verification key (base64 DER, as its settings page shows it), checked now:
        a key that is none would refuse every genuine call, silently."""
        if value is None or not value.strip():
            return None
        from cryptography.exceptions import UnsupportedAlgorithm
        from cryptography.hazmat.primitives.asymmetric import ec
        from sendgrid.helpers.eventwebhook import EventWebhook

        try:
            key = EventWebhook(value.strip()).public_key
        except (ValueError, TypeError, UnsupportedAlgorithm):
            key = None
        if not isinstance(key, ec.EllipticCurvePublicKey):
            raise ValueError(
                "not an ECDSA public key (copy the verification key of SendGrid's signed event "
                "webhook)"
            )
        return value.strip()

    @field_validator("alert_cooldown", "alert_max_age", mode="before")
    @classmethod
    def _duration(cls, value: Any) -> Any:
        """Durations as rulesets write them: ``7d``, ``12h``, ``0s``."""
        return parse_duration(value, zero=True) if isinstance(value, str) else value

    @field_validator("sales_email", "alert_from", "sales_roster")
    @classmethod
    def _addresses(cls, value: str | None, info: ValidationInfo) -> str | None:
        """Addresses alerts go to or come from, in the strict syntax leads' addresses have (the
        roster is a comma-separated list of them)."""
        if not value:
            return value
        parts = value.split(",") if info.field_name == "sales_roster" else [value]
        try:
            return ",".join(normal_address(part) for part in parts if part.strip())
        except ValueError as error:
            name = f"NURTURE_{str(info.field_name).upper()}"
            raise ValueError(f"{name}: not an email address ({error})") from None

    @property
    def roster(self) -> list[str]:
        return [rep for rep in self.sales_roster.split(",") if rep]

    def alert_target(self, name: str) -> AlertTarget | None:
        """The recipients of ``alert: NAME``: sales from NURTURE_SALES_*, the others from
        NURTURE_ALERT_TARGETS; None for a target nobody configured."""
        if name == SALES:
            return AlertTarget(
                roster=self.roster,
                email=self.sales_email,
                webhook_url=self.sales_webhook_url,
                owner="owner",
            )
        found = self.alert_targets.get(name)
        if found is None or found.owner:
            return found
        return found.model_copy(update={"owner": name.replace("-", "_")})

    @property
    def alert_sender(self) -> str:
        return self.alert_from or self.sales_email or "nurture@localhost"

    @property
    def rulesets_dir(self) -> Path:
        return self.home / "rulesets"

    @property
    def campaigns_dir(self) -> Path:
        return self.home / "campaigns"

    @property
    def templates_dir(self) -> Path:
        return self.home / "templates"

    def signing_key(self) -> str:
        """``NURTURE_SECRET_KEY``, else a random key kept in ``<home>/.nurture-secret`` so that
        links stay valid across restarts of a single-machine install."""
        if self.secret_key is not None:
            return self.secret_key
        return _kept_secret(self.home / ".nurture-secret")

    def access_token(self) -> str:
        """``NURTURE_API_TOKEN``, else a random token kept in ``<home>/.nurture-token`` (which
        ``nurture serve`` points to): the API is never open for want of a setting."""
        return self.api_token if self.api_token is not None else _kept_secret(self.token_file)

    @property
    def token_file(self) -> Path:
        return self.home / ".nurture-token"

    def secrets(self) -> list[str]:
        """The configured values no log line may show: tokens, keys, the sales webhook's URL
        (the URL is the credential) and passwords in URLs."""
        found = [self.api_token, self.secret_key, self.sendgrid_api_key, self.sales_webhook_url]
        for url in (self.smtp_url, self.database_url):
            with suppress(ValueError):
                found.append(urlsplit(url).password)
        return [secret for secret in found if secret]


def _kept_secret(path: Path) -> str:
    """The secret kept in ``path``, made on first use. Made whole in a private temporary file
    and linked into place, so that of processes starting together exactly one makes it and the
    others read that one (never a half-written or empty file)."""
    try:
        try:
            secret = path.read_text().strip()
        except FileNotFoundError:
            secret = _make_secret(path)
    except OSError as error:
        raise SettingsError(f"cannot keep a secret in {path}: {error.strerror}") from None
    if len(secret) < MIN_SECRET:
        held = f"{len(secret)} characters" if secret else "nothing"
        raise SettingsError(
            f"{path} holds {held}; a secret needs at least {MIN_SECRET} characters: delete the "
            "file to have a new one made"
        )
    return secret


def _make_secret(path: Path) -> str:
    descriptor, temporary = tempfile.mkstemp(dir=path.parent, prefix=f"{path.name}.")  # 0600
    try:
        with os.fdopen(descriptor, "w") as file:
            file.write(secrets.token_urlsafe(32))
            file.flush()
            os.fsync(file.fileno())
        # Another process that linked its file first made the secret: theirs is read below.
        with suppress(FileExistsError):
            os.link(temporary, path)
    finally:
        os.unlink(temporary)
    return path.read_text().strip()


LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def configure_logging(settings: Settings) -> None:
    """One logging set-up for ``serve`` and ``worker``, at ``NURTURE_LOG_LEVEL``."""
    logging.basicConfig(level=settings.log_level.upper(), format=LOG_FORMAT, force=True)
    # No address, token or configured secret in any line, whichever library logs it.
    redacting = Redacting(settings.secrets())
    for handler in logging.getLogger().handlers:
        handler.addFilter(redacting)
    # httpx logs every request's URL at INFO, and the sales webhook's URL is a secret.
    logging.getLogger("httpx").setLevel(logging.WARNING)


@lru_cache
def get_settings() -> Settings:
    """The settings from the environment; SettingsError naming each bad variable (never its
    value: it may be a secret)."""
    try:
        return Settings()
    except ValidationError as error:
        raise SettingsError("; ".join(_problem(e) for e in error.errors())) from None


def _problem(error: Any) -> str:
    name = str(error["loc"][0]) if error["loc"] else ""
    # A field is read from NURTURE_<FIELD>; anything else named is an alias (SENDGRID_API_KEY).
    variable = f"NURTURE_{name.upper()}" if name in Settings.model_fields else name.upper()
    return f"{variable}: {error['msg'].removeprefix('Value error, ')}"
