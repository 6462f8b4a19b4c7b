"""Typed settings for the service and the tools, read from BACKSTOP_* environment variables.

Secrets (the PostgreSQL DSNs' passwords, SASL passwords, the anchor key) come from the environment or from files
named by BACKSTOP_*_FILE variables, never from the command line.

Two PostgreSQL roles (docs/operations-security.md): `serve` and the tools connect with BACKSTOP_PG_DSN, as the
service's login role, which can append to the record but never rewrite it; `db migrate` connects with
BACKSTOP_PG_OWNER_DSN, as the tables' owner, and creates the login role BACKSTOP_PG_DSN names.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import parse_qs, unquote, urlsplit

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

if TYPE_CHECKING:
    from backstop.core.anchor import Anchor


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="BACKSTOP_", extra="ignore")

    # where
    kafka_bootstrap: str = "127.0.0.1:9092"
    pg_dsn: SecretStr = SecretStr("postgresql://backstop_svc@127.0.0.1:5432/backstop")  # the service's login role
    pg_dsn_file: Path | None = None
    pg_owner_dsn: SecretStr = SecretStr("postgresql://backstop@127.0.0.1:5432/backstop")  # the tables' owner
    pg_owner_dsn_file: Path | None = None
    topic_prefix: str = "backstop."

    # Kafka security (tests use PLAINTEXT; production sets SASL_SSL)
    kafka_security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    kafka_sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None = None
    kafka_sasl_username: str | None = None
    kafka_sasl_password: SecretStr | None = None
    kafka_sasl_password_file: Path | None = None
    kafka_ssl_cafile: Path | None = None

    # the key the service signs its checkpoints with (never in the database), and an adoption "<seq>:<digest>"
    anchor_key_file: Path | None = None
    anchor_adopt: str | None = None

    # the money path: bounded batches
    batch_max_records: int = Field(5000, ge=1, le=100_000)
    batch_max_wait_ms: int = Field(50, ge=1, le=10_000)
    merge_max_buffered: int = Field(200_000, ge=1000)
    snapshot_every_events: int = Field(100_000, ge=0)  # 0: never
    # ... but no sooner than this many events per open position (a snapshot writes every one; 0: no such bound)
    snapshot_events_per_position: int = Field(4, ge=0)
    adl_refresh_events: int = Field(50_000, ge=1)  # refresh the ADL queue projection at least this often ...
    adl_refresh_event_ms: int = Field(60_000, ge=1)  # ... or, when caught up, after this much event time
    # ... but by count no sooner than this many events per open position (a refresh rewrites every one; 0: none)
    adl_refresh_events_per_position: int = Field(4, ge=0)
    check_conservation: bool = False
    # input records deleted (retention) before the service read them: "refuse" holds the ledger processor there
    # (/health says which partition and offsets); "skip" reads on from the log's start and logs the gap
    input_gap: Literal["refuse", "skip"] = "refuse"
    # the ledger engine the service applies batches with (docs/engines.md): the compiled one, or the Python
    # reference; without a built compiled engine the service runs the reference and says so once
    engine: Literal["compiled", "reference"] = "compiled"
    # ADL quantiles and risk levels at each quantile point of event time, on backstop.adl-quantiles (docs/design.md
    # §10); `backstop replay --adl-quantiles` derives the same records from the journal
    adl_quantiles: bool = True
    # The state hash at the head (every position and balance, hashed: 0.7 s at 137,000 positions) is recorded once
    # the input has been quiet this long, not at every pause of a live stream, which it would hold up each time.
    state_hash_quiet_ms: int = Field(1000, ge=0)
    # stage stamps per batch and per relay round in the log (backstop.service.trace), for measuring latency
    trace_stages: bool = False

    # the outbox relay
    relay_batch: int = Field(2000, ge=1, le=100_000)
    relay_idle_ms: int = Field(20, ge=1, le=10_000)
    # an output partition's last record from the outbox that the database does not hold (restored behind the
    # topics): "wait" until the processor writes it again; "republish" sends that partition's rows after the
    # database's cursor again (consumers drop ids seen before): for a history that will not write it again
    relay_missing_tail: Literal["wait", "republish"] = "wait"

    # topics created by `backstop topics create` and at start
    input_partitions: int = Field(3, ge=1)
    output_partitions: int = Field(3, ge=1)
    input_retention_ms: int = 7 * 24 * 3600 * 1000
    replication_factor: int = Field(1, ge=1)

    # web (health, metrics)
    web_host: str = "127.0.0.1"
    web_port: int = 6066

    @field_validator("pg_dsn_file", "pg_owner_dsn_file", "kafka_sasl_password_file")
    @classmethod
    def _secret_file_readable(cls, value: Path | None) -> Path | None:
        """A secret's file that cannot be read is a bad setting, said in one line by the commands."""
        if value is not None:
            try:
                value.read_bytes()
            except OSError as error:
                raise ValueError(f"cannot read it: {error.strerror or error}") from None
        return value

    @model_validator(mode="after")
    def _secrets_from_files(self) -> Settings:
        if self.pg_dsn_file is not None:
            self.pg_dsn = SecretStr(self.pg_dsn_file.read_text().strip())
        if self.pg_owner_dsn_file is not None:
            self.pg_owner_dsn = SecretStr(self.pg_owner_dsn_file.read_text().strip())
        if self.kafka_sasl_password_file is not None:
            self.kafka_sasl_password = SecretStr(self.kafka_sasl_password_file.read_text().strip())
        return self

    def dsn(self) -> str:
        return self.pg_dsn.get_secret_value()

    def owner_dsn(self) -> str:
        return self.pg_owner_dsn.get_secret_value()

    @field_validator("anchor_key_file", mode="before")
    @classmethod
    def _key_file_named(cls, value: object) -> object:
        if isinstance(value, str) and not value.strip():  # Path("") would be the current directory
            raise ValueError("is empty: unset it to run without an anchor key, or name the key file")
        return value

    def anchor(self) -> Anchor | None:
        """The anchor key and adoption, or None when no key file is set. Raises AnchorKeyError (one line)."""
        from backstop.core.anchor import Adoption, Anchor, AnchorKey, AnchorKeyError

        if self.anchor_key_file is None:
            return None
        try:
            raw = self.anchor_key_file.read_bytes()
        except OSError as error:
            raise AnchorKeyError(f"cannot read the anchor key (BACKSTOP_ANCHOR_KEY_FILE): {error}") from None
        key = AnchorKey.from_bytes(raw, source=str(self.anchor_key_file))
        return Anchor(key, Adoption.parse(self.anchor_adopt) if self.anchor_adopt else None)

    def kafka_client_options(self) -> dict[str, Any]:
        """Security options in the spelling aiokafka and kafka-python share."""
        options: dict[str, Any] = {"security_protocol": self.kafka_security_protocol}
        if self.kafka_sasl_mechanism:
            options["sasl_mechanism"] = self.kafka_sasl_mechanism
            options["sasl_plain_username"] = self.kafka_sasl_username
            options["sasl_plain_password"] = (self.kafka_sasl_password.get_secret_value()
                                              if self.kafka_sasl_password else None)
        return options

    def kafka_admin_options(self) -> dict[str, Any]:
        """kafka_client_options and the SSL context, for kafka-python's admin client."""
        return {**self.kafka_client_options(), "ssl_context": self.ssl_context()}

    def ssl_context(self) -> Any:
        if self.kafka_security_protocol not in ("SSL", "SASL_SSL"):
            return None
        from aiokafka.helpers import create_ssl_context

        return create_ssl_context(cafile=str(self.kafka_ssl_cafile) if self.kafka_ssl_cafile else None)


def dsn_user(dsn: str) -> str | None:
    parts = urlsplit(dsn)
    users = parse_qs(parts.query).get("user")
    return unquote(parts.username) if parts.username else users[-1] if users else None


def dsn_password(dsn: str) -> str | None:
    """The password a DSN carries, in its user info or as a `password` parameter (asyncpg reads both), or None. A
    libpq `key=value` string with a password gives "******"."""
    if "://" not in dsn:
        return "******" if re.search(r"(^|\s)password\s*=\s*\S", dsn, re.IGNORECASE) else None
    parts = urlsplit(dsn)
    passwords = [v for k, values in parse_qs(parts.query).items() if k.lower() == "password" for v in values]
    password = unquote(parts.password) if parts.password else passwords[-1] if passwords else None
    return password or None
