"""Typed settings for the service and the tools, read from BACKSTOP_* environment variables."""

from __future__ import annotations

from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="BACKSTOP_", extra="ignore")

    kafka_bootstrap: str = "127.0.0.1:9092"
    pg_dsn: str = "postgresql://backstop@127.0.0.1:5432/backstop"
    topic_prefix: str = "backstop."
