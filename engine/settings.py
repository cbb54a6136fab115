"""Settings from the environment (``NURTURE_*``), as DESIGN.md lists them."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="NURTURE_", extra="ignore")

    database_url: str = "sqlite:///nurture.db"
    home: Path = Path(".")
    # Which ruleset in rulesets/ scores leads: a name or a file; default the only one there.
    ruleset: str | None = None
    mail_backend: str = "file"
    outbox_dir: Path = Path("outbox")
    batch_size: int = 2000

    @property
    def rulesets_dir(self) -> Path:
        return self.home / "rulesets"


@lru_cache
def get_settings() -> Settings:
    return Settings()
