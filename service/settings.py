"""The one settings object, read by the CLI, the HTTP API, the workers and Alembic.

Every field can be set by an environment variable prefixed ``COREML_PUBLISH_`` (for example
``COREML_PUBLISH_DATABASE_URL``) or in a ``.env`` file in the working directory.
"""

from __future__ import annotations

import ipaddress
from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from service.errors import OptionsError
from workers.validate.thresholds import ValidationBars

_BARS = ValidationBars()


class Settings(BaseSettings):
    """Service-wide configuration with documented defaults."""

    # hide_input_in_errors: a refused value (a secret, maybe) is never echoed in an error
    model_config = SettingsConfigDict(env_prefix="COREML_PUBLISH_", env_file=".env", extra="forbid",
                                      hide_input_in_errors=True)

    environment: Literal["development", "production"] = Field(
        "development", description="development or production; production refuses insecure settings in every "
                                   "process (an API without token, a SQLite database)")
    database_url: str = Field("sqlite:///coreml-publish.db", description="SQLAlchemy URL: SQLite file by default, "
                                                                         "postgresql+psycopg://... in production")
    broker_url: str = Field("redis://127.0.0.1:6379/0", description="Celery broker (and result backend)")
    artifact_store: str = Field("artifacts", description="Where stage outputs live: a local folder or any fsspec "
                                                         "URL (s3://bucket/prefix, ...) shared by all workers")
    hub_endpoint: str | None = Field(None, description="Hub URL; default: huggingface_hub's (HF_ENDPOINT)")
    default_namespace: str | None = Field(None, description="Namespace to publish under when a job names none")
    api_token: SecretStr | None = Field(None, description="Bearer token required for the HTTP API's writes and reads")
    public_status: bool = Field(False, description="Let anyone read the status page (/) and the API's GET routes "
                                                   "when an API token is set; writes, cancel and retry still need it")
    api_host: str = Field("127.0.0.1", description="Address the HTTP API binds")
    api_port: int = Field(8000, description="Port of the HTTP API")
    api_concurrency: int = Field(32, ge=1, description="Requests the API works on at once; more wait for a slot")
    api_queue_wait: float = Field(5.0, gt=0, description="Seconds a request waits for a slot before the API "
                                                         "answers 503 with Retry-After (busy)")
    webhook_secret: SecretStr | None = Field(None, description="Secret the Hub sends in X-Webhook-Secret")
    sweep_time: str = Field("03:00", description="When the nightly sweep runs, HH:MM in UTC")
    max_source_gb: float = Field(30.0, description="Largest source (weights to convert, GB) a job accepts")
    stage_time_limit: int = Field(6 * 3600, description="Hard time limit of one stage, seconds")
    worker_concurrency: int = Field(1, description="Tasks one worker runs at once")
    convert_processes: int | None = Field(None, ge=1, description="Processes one conversion may run at once (its "
                                                                  "components side by side, as memory allows); unset: "
                                                                  "one per core for sources of 1 GB and more")
    mixed_min_weights: int = Field(100_000, ge=1, description="Mixed-bit recipes: layers of at most this many "
                                                              "weights stay float16 (Apple's threshold; smaller for "
                                                              "test models)")
    heartbeat_interval: float = Field(30.0, gt=0, description="Seconds between a running stage's heartbeats")
    heartbeat_timeout: float = Field(180.0, gt=0, description="A running stage silent this long (seconds) belongs "
                                                              "to a dead worker, and a job not sent to the queue "
                                                              "this long is stuck: the reaper sends them again")
    max_revivals: int = Field(3, ge=0, description="Times the reaper re-sends a stuck job before failing it")
    scratch: str | None = Field(None, description="Local folder where workers keep artifacts pulled from a remote "
                                                  "store (default: ~/.cache/coreml-publisher)")
    debug: bool = Field(False, description="Show tracebacks and the libraries' own progress output")

    layout_psnr: float = Field(_BARS.layout, description="Min PSNR (dB) of our attention layout vs diffusers, float32")
    float16_psnr: float = Field(_BARS.float16, description="Min torch-side PSNR (dB) of float16 packages")
    palettized_psnr: dict[int, float] = Field(dict(_BARS.palettized),
                                              description="Min torch-side PSNR (dB) per palettization bit width")
    coreml_float16_psnr: float = Field(_BARS.coreml_float16,
                                       description="Min Core ML prediction PSNR (dB) of float16 packages (macOS)")

    @field_validator("api_token", "webhook_secret")
    @classmethod
    def _ascii_secret(cls, value: SecretStr | None) -> SecretStr | None:
        """HTTP headers arrive decoded as latin-1: a secret with other characters could never match."""
        if value is not None and not value.get_secret_value().isascii():
            raise ValueError("it has non-ASCII characters, which an HTTP header cannot carry; use ASCII only")
        return value

    def validation_bars(self) -> ValidationBars:
        """The bars as the conversion engine takes them."""
        merged = dict(_BARS.palettized) | {int(k): float(v) for k, v in self.palettized_psnr.items()}
        return ValidationBars(layout=self.layout_psnr, float16=self.float16_psnr,
                              palettized=tuple(sorted(merged.items(), reverse=True)),
                              coreml_float16=self.coreml_float16_psnr)

    def check_api(self, host: str | None = None) -> None:
        """Refuse to serve the API insecurely: no token on a non-loopback address, or in production at all."""
        self.check_production()
        host = host or self.api_host
        try:
            loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
        except ValueError:
            loopback = False
        if self.api_token is None and (not loopback or self.environment == "production"):
            where = "in production" if loopback else f"on {host}"
            raise OptionsError(f"the API would accept writes from anyone {where}: no API token is set",
                               hint="Set COREML_PUBLISH_API_TOKEN" + ("." if loopback else ", or bind to 127.0.0.1."))

    def check_production(self) -> None:
        """The rules every process of a production deployment starts by (API, worker, scheduler, submit, db)."""
        if self.environment == "production" and self.database_url.startswith("sqlite"):
            raise OptionsError("production with a SQLite database is not supported",
                               hint="Set COREML_PUBLISH_DATABASE_URL to a PostgreSQL URL.")

    def scratch_path(self) -> Path:
        """Where workers keep pulled artifacts."""
        return Path(self.scratch) if self.scratch else Path.home() / ".cache" / "coreml-publisher"

    def hub_link(self) -> str:
        """The Hub the service publishes to, for links: the endpoint setting, else huggingface_hub's."""
        if self.hub_endpoint:
            return self.hub_endpoint.rstrip("/")
        from huggingface_hub import constants

        return constants.ENDPOINT.rstrip("/")

    def analyses_path(self) -> Path:
        """Where conversions keep mixed-bit analyses by the weights' commits, for re-conversions to read back."""
        return self.scratch_path() / "analyses"


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings, built once.  Raises OptionsError naming the first invalid variable."""
    from pydantic import ValidationError

    try:
        return Settings()
    except ValidationError as e:
        first = e.errors()[0]
        name = f"COREML_PUBLISH_{str(first['loc'][0]).upper()}" if first.get("loc") else "a setting"
        reason = " ".join(str(first["msg"]).removeprefix("Value error, ").split())
        raise OptionsError(f"{name} is invalid: {reason}",
                           hint="Fix it in the environment or .env (see the README's Configuration).") from None
