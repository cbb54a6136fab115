"""Settings from the environment (``NURTURE_*``), as docs/design.md lists them."""

from __future__ import annotations

import logging
from datetime import timedelta
from functools import lru_cache
from pathlib import Path
from typing import Any

from pydantic import AliasChoices, BaseModel, ConfigDict, Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from engine.timeutil import parse_duration

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
    batch_size: int = 2000
    log_level: str = "INFO"  # serve and worker: DEBUG, INFO, WARNING, ERROR

    # Sending: the backend, its endpoints, and how the dispatcher paces itself.
    mail_backend: str = "file"
    outbox_dir: Path = Path("outbox")
    sendgrid_api_key: str | None = Field(
        default=None, validation_alias=AliasChoices("SENDGRID_API_KEY", "NURTURE_SENDGRID_API_KEY")
    )
    sendgrid_host: str = "https://api.sendgrid.com"
    sendgrid_webhook_public_key: str | None = None
    smtp_url: str = "smtp://127.0.0.1:25"
    send_timeout: float = 10.0  # seconds, per provider call
    dispatch_batch: int = 50  # messages claimed per round
    send_concurrency: int = 8  # provider calls in flight per dispatcher
    lease_seconds: int = 300  # a claimed message not settled by then is claimed again
    max_attempts: int = 8  # tries before a message fails for good
    default_timezone: str = "UTC"  # for send windows when a lead has no `timezone`

    # Links and access.
    secret_key: str | None = None  # signs unsubscribe links; see `signing_key`
    public_url: str = "http://127.0.0.1:8000"
    api_token: str | None = None
    # Limits on one API request: a body over either is refused whole (413) before any scoring.
    max_body_bytes: int = 1_048_576
    max_events_per_request: int = 1000
    sales_webhook_url: str | None = None
    sales_email: str | None = None

    # Alerts (README, "Alerts"): who gets them and how often.
    sales_roster: str = ""  # comma-separated reps, assigned round-robin to leads without owner
    alert_from: str | None = None  # the alert email's sender; default NURTURE_SALES_EMAIL
    alert_cooldown: timedelta = timedelta(days=7)  # no second alert for a lead within this
    alert_rearm_margin: int = 10  # ...nor before its score fell this far below hot
    alert_max_age: timedelta = timedelta(days=1)  # older events (a backfill) page nobody
    # Alert targets besides sales (`alert: account-manager`), as JSON: name → AlertTarget.
    alert_targets: dict[str, AlertTarget] = Field(default_factory=dict)

    @field_validator("alert_targets")
    @classmethod
    def _targets(cls, value: dict[str, AlertTarget]) -> dict[str, AlertTarget]:
        if SALES in value:
            raise ValueError("`sales` is configured by NURTURE_SALES_ROSTER, _EMAIL, _WEBHOOK_URL")
        return value

    @field_validator("alert_cooldown", "alert_max_age", mode="before")
    @classmethod
    def _duration(cls, value: Any) -> Any:
        """Durations as rulesets write them: ``7d``, ``12h``, ``0s``."""
        return parse_duration(value, zero=True) if isinstance(value, str) else value

    @property
    def roster(self) -> list[str]:
        return [rep.strip() for rep in self.sales_roster.split(",") if rep.strip()]

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
        return self.secret_key or _kept_secret(self.home / ".nurture-secret")

    def access_token(self) -> str:
        """``NURTURE_API_TOKEN``, else a random token kept in ``<home>/.nurture-token`` (which
        ``nurture serve`` points to): the API is never open for want of a setting."""
        return self.api_token or _kept_secret(self.token_file)

    @property
    def token_file(self) -> Path:
        return self.home / ".nurture-token"


def _kept_secret(path: Path) -> str:
    if not path.exists():
        import secrets

        path.touch(mode=0o600)
        path.write_text(secrets.token_urlsafe(32))
    return path.read_text().strip()


LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def configure_logging(settings: Settings) -> None:
    """One logging set-up for ``serve`` and ``worker``, at ``NURTURE_LOG_LEVEL``."""
    logging.basicConfig(level=settings.log_level.upper(), format=LOG_FORMAT, force=True)
    # httpx logs every request's URL at INFO, and the sales webhook's URL is a secret.
    logging.getLogger("httpx").setLevel(logging.WARNING)


@lru_cache
def get_settings() -> Settings:
    return Settings()
