"""One settings object for the whole service (pydantic-settings).

Values come from environment variables prefixed ``HEATDESK_`` (e.g. ``HEATDESK_DATABASE_URL``)
or from a ``.env`` file. Defaults live here only.
"""
from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic_settings import BaseSettings, SettingsConfigDict

PROJECT_ROOT = Path(__file__).resolve().parent.parent
SCHEMA_FILE = PROJECT_ROOT / "schema.sql"
DEFAULT_DEVICES_FILE = PROJECT_ROOT / "devices.yaml"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="HEATDESK_", env_file=".env", extra="ignore")

    #: PostgreSQL URL. Empty means "start the embedded private PostgreSQL" (heatdesk up).
    database_url: str = ""
    #: MQTT broker URL, mqtt://host:port. Empty means "start mosquitto/amqtt privately".
    mqtt_url: str = ""
    #: Where private servers, the spool and generated files live.
    data_dir: Path = PROJECT_ROOT / ".heatdesk"
    devices_file: Path = DEFAULT_DEVICES_FILE
    api_host: str = "127.0.0.1"
    api_port: int = 8080
    #: Local time zone of the heating company; days for compliance are local days.
    timezone: str = "Asia/Shanghai"
    #: Key material for field encryption / blind index (hex). Never committed; `heatdesk up`
    #: generates one into data_dir when absent.
    field_key_hex: str = ""
    #: Secret for signing API tokens.
    token_secret: str = ""
    #: Bound on the on-disk spool for polled data while the database is down (bytes).
    spool_max_bytes: int = 512 * 1024 * 1024
    #: Ingest batching: flush at this many readings or this age (seconds), whichever first.
    batch_max_rows: int = 5000
    batch_max_age_s: float = 0.5
    #: MQTT client id of the ingest consumer: stable, so the broker keeps our session.
    mqtt_client_id: str = "heatdesk-ingest"
    #: MQTT session expiry (seconds): longer than the longest outage we mean to survive.
    mqtt_session_expiry_s: int = 7 * 24 * 3600
    #: MQTT protocol of the ingest consumer: "5" (ReceiveMaximum, retain handling), or "3.1.1" for a broker
    #: without MQTT 5 — the embedded amqtt broker, which `heatdesk up` starts when mosquitto is missing.
    mqtt_protocol: Literal["5", "3.1.1"] = "5"


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
