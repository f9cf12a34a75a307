"""Settings refuse what can never work or is insecure, with one line naming the variable, never its value."""

from __future__ import annotations

import pytest

from service.errors import OptionsError
from service.settings import Settings, get_settings


@pytest.fixture
def from_environment(monkeypatch: pytest.MonkeyPatch):
    """get_settings() built afresh from the given COREML_PUBLISH_* variables."""
    def build(**variables: str) -> Settings:
        for name, value in variables.items():
            monkeypatch.setenv(f"COREML_PUBLISH_{name.upper()}", value)
        get_settings.cache_clear()
        return get_settings()

    yield build
    get_settings.cache_clear()


@pytest.mark.parametrize("value", ["Production", "staging", "PRODUCTION", "dev", ""])
def test_unknown_environments_are_refused_naming_the_allowed_values(from_environment, value: str) -> None:
    with pytest.raises(OptionsError) as caught:
        from_environment(environment=value)
    line = caught.value.one_line()
    assert "COREML_PUBLISH_ENVIRONMENT" in line and "'development'" in line and "'production'" in line
    assert "\n" not in line


@pytest.mark.parametrize("name", ["api_token", "webhook_secret"])
@pytest.mark.parametrize("value", ["pässwort-123", "token\u2013dash", "секрет"])
def test_non_ascii_secrets_are_refused_without_echoing_them(from_environment, name: str, value: str) -> None:
    with pytest.raises(OptionsError) as caught:
        from_environment(**{name: value})
    line = caught.value.one_line()
    assert f"COREML_PUBLISH_{name.upper()}" in line and "ASCII" in line
    assert value not in line and "\n" not in line
    with pytest.raises(ValueError) as direct:  # constructed in code: pydantic's error, without the value
        Settings(**{name: value})
    assert value not in str(direct.value)


def test_ascii_secrets_are_accepted(from_environment) -> None:
    settings = from_environment(api_token="A-token_1.~+/=", webhook_secret="hook")
    assert settings.api_token.get_secret_value() == "A-token_1.~+/=" and settings.environment == "development"


def test_production_refuses_an_api_without_a_token_even_on_loopback() -> None:
    production = dict(environment="production", database_url="postgresql+psycopg://svc@db/jobs")
    for host in ("127.0.0.1", "localhost", "::1"):
        with pytest.raises(OptionsError, match="no API token is set"):
            Settings(**production).check_api(host)
    Settings(**production, api_token="t").check_api("127.0.0.1")
    Settings(**production).check_production()  # workers need no API token
    with pytest.raises(OptionsError, match="SQLite"):
        Settings(environment="production", api_token="t").check_production()
