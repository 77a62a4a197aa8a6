"""Settings from the environment and .env: MOCK_AI, DEFAPI_*, JOBQUEUE_DATABASE_URL."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from jobqueue import ConfigurationError, DefAPIGenerator, MockGenerator, Settings

KEY = "sk-live-abcdefghijklmnop1234"
VARS = ("MOCK_AI", "DEFAPI_API_KEY", "DEFAPI_BASE_URL", "DEFAPI_POLL_INTERVAL",
        "JOBQUEUE_DATABASE_URL")  # fmt: skip


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No stray settings from the developer's shell or working directory."""
    for name in VARS:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)


def test_mock_ai_true_gives_the_mock() -> None:
    settings = Settings.from_env({"MOCK_AI": "true", "DEFAPI_API_KEY": KEY}, dotenv=False)
    assert isinstance(settings.generator(), MockGenerator)
    assert settings.describe() == "generator: mock"


def test_mock_ai_false_without_key_names_the_variable() -> None:
    settings = Settings.from_env({"MOCK_AI": "false"}, dotenv=False)
    with pytest.raises(ConfigurationError) as info:
        settings.generator()
    assert "DEFAPI_API_KEY" in str(info.value)
    assert "MOCK_AI=true" in str(info.value)
    assert "DEFAPI_API_KEY" in settings.describe()


async def test_key_picks_defapi_when_mock_ai_is_unset(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="jobqueue")
    env = {
        "DEFAPI_API_KEY": KEY,
        "DEFAPI_BASE_URL": "http://127.0.0.1:9/",
        "DEFAPI_POLL_INTERVAL": "0.5",
    }
    settings = Settings.from_env(env, dotenv=False)
    generator = settings.generator()
    assert isinstance(generator, DefAPIGenerator)
    assert generator.base_url == "http://127.0.0.1:9"
    assert generator.poll_interval == 0.5
    assert "using DefAPI" in caplog.text
    described = settings.describe()
    assert described == "generator: DefAPI at http://127.0.0.1:9 (key ****1234)"
    assert KEY not in described and KEY not in repr(settings) and KEY not in caplog.text
    await generator.aclose()


def test_no_key_and_mock_ai_unset_falls_back_to_the_mock(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="jobqueue")
    assert isinstance(Settings.from_env({}, dotenv=False).generator(), MockGenerator)
    assert "using the mock generator" in caplog.text


def test_dotenv_in_the_working_directory(tmp_path: Path) -> None:
    (tmp_path / ".env").write_text(
        f"MOCK_AI=false\nDEFAPI_API_KEY={KEY}\nJOBQUEUE_DATABASE_URL=sqlite:///from-file.db\n"
    )
    settings = Settings.from_env()
    assert settings.mock_ai is False
    assert settings.defapi_api_key == KEY
    assert settings.database_url == "sqlite:///from-file.db"
    assert isinstance(settings.generator(), DefAPIGenerator)


def test_process_environment_wins_over_dotenv(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / ".env").write_text(f"MOCK_AI=false\nDEFAPI_API_KEY={KEY}\n")
    monkeypatch.setenv("MOCK_AI", "true")
    settings = Settings.from_env()
    assert settings.mock_ai is True
    assert settings.defapi_api_key == KEY  # still read from the file
    assert isinstance(settings.generator(), MockGenerator)


def test_dotenv_can_be_skipped_or_named(tmp_path: Path) -> None:
    (tmp_path / ".env").write_text("MOCK_AI=false\n")
    assert Settings.from_env({}, dotenv=False).mock_ai is None
    other = tmp_path / "prod.env"
    other.write_text("MOCK_AI=yes\n")
    assert Settings.from_env({}, dotenv=other).mock_ai is True
    with pytest.raises(ConfigurationError, match="does not exist"):
        Settings.from_env({}, dotenv=tmp_path / "missing.env")


def test_repr_hides_the_key_and_the_database_password() -> None:
    settings = Settings.from_env(
        {
            "DEFAPI_API_KEY": KEY,
            "DEFAPI_BASE_URL": "https://proxy:pr0xypass@proxy.example",
            "JOBQUEUE_DATABASE_URL": "postgresql://u:s3cret@db/app",
        },
        dotenv=False,
    )
    for text in (repr(settings), settings.describe(), repr(settings.generator())):
        assert KEY not in text and "s3cret" not in text and "pr0xypass" not in text
        assert "****1234" in text


@pytest.mark.parametrize(
    ("env", "name"),
    [({"MOCK_AI": "maybe"}, "MOCK_AI"), ({"DEFAPI_POLL_INTERVAL": "soon"}, "DEFAPI_POLL_INTERVAL")],
)
def test_unreadable_values_are_named(env: dict[str, str], name: str) -> None:
    with pytest.raises(ConfigurationError, match=name):
        Settings.from_env(env, dotenv=False)
