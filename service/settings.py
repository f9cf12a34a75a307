"""The one settings object, read by the CLI (and later the API, workers and migrations).

Every field can be set by an environment variable prefixed ``COREML_PUBLISH_`` (for example
``COREML_PUBLISH_FLOAT16_PSNR=50``) or in a ``.env`` file in the working directory.
"""

from __future__ import annotations

from functools import lru_cache

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from workers.validate import ValidationBars

_BARS = ValidationBars()


class Settings(BaseSettings):
    """Service-wide configuration with documented defaults."""

    model_config = SettingsConfigDict(env_prefix="COREML_PUBLISH_", env_file=".env", extra="forbid")

    layout_psnr: float = Field(_BARS.layout, description="Min PSNR (dB) of our attention layout vs diffusers, float32")
    float16_psnr: float = Field(_BARS.float16, description="Min torch-side PSNR (dB) of float16 packages")
    palettized_psnr: dict[int, float] = Field(dict(_BARS.palettized),
                                              description="Min torch-side PSNR (dB) per palettization bit width")
    coreml_float16_psnr: float = Field(_BARS.coreml_float16,
                                       description="Min Core ML prediction PSNR (dB) of float16 packages (macOS)")

    def validation_bars(self) -> ValidationBars:
        """The bars as the conversion engine takes them."""
        merged = dict(_BARS.palettized) | {int(k): float(v) for k, v in self.palettized_psnr.items()}
        return ValidationBars(layout=self.layout_psnr, float16=self.float16_psnr,
                              palettized=tuple(sorted(merged.items(), reverse=True)),
                              coreml_float16=self.coreml_float16_psnr)


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings, built once."""
    return Settings()
