"""`Settings`: what a worker (or script) reads from the environment and an optional ``.env``.

Variables:

- ``MOCK_AI``: ``true`` picks the mock generator, ``false`` demands DefAPI; unset means
  "DefAPI when a key is present, else the mock".
- ``DEFAPI_API_KEY``: DefAPI's key (a secret: never printed, logged or shown in reprs).
  Surrounding whitespace is dropped; a key that still cannot be sent in an HTTP header
  (control characters, non-ASCII, inner spaces) is refused here, unless ``MOCK_AI=true``.
- ``DEFAPI_BASE_URL``: DefAPI's address (default https://api.defapi.org).
- ``DEFAPI_POLL_INTERVAL``: seconds between task queries (default 3).
- ``JOBQUEUE_DATABASE_URL``: the queue's database.

The process environment wins over ``.env``, so a deployment can override a developer file.
A setup that cannot work (``MOCK_AI=false`` without a key) fails when the generator is
made — at worker start — rather than leaving jobs stuck in ``processing``.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from dotenv import dotenv_values

from .drivers.engines import describe_url
from .errors import ConfigurationError, redact
from .generators.keys import check_api_key, mask_key

if TYPE_CHECKING:
    from .generators.base import Generator

logger = logging.getLogger(__name__)

MOCK_AI = "MOCK_AI"
DEFAPI_API_KEY = "DEFAPI_API_KEY"
DEFAPI_BASE_URL = "DEFAPI_BASE_URL"
DEFAPI_POLL_INTERVAL = "DEFAPI_POLL_INTERVAL"
DATABASE_URL = "JOBQUEUE_DATABASE_URL"

_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off"})


def parse_bool(name: str, value: str | None) -> bool | None:
    """``true``/``false`` (and 1/0, yes/no, on/off) in any case; None when unset or empty."""
    if value is None or not value.strip():
        return None
    lowered = value.strip().lower()
    if lowered in _TRUE:
        return True
    if lowered in _FALSE:
        return False
    raise ConfigurationError(
        f"{name}={value!r} is neither true nor false",
        hint=f"set {name} to true or false",
    )


def _default_base_url() -> str:
    # DefAPI's module is imported where a setting needs it, not at the top: a command that
    # only reads `.env` and then a job loads no HTTP client.
    from .generators.defapi import DEFAULT_BASE_URL

    return DEFAULT_BASE_URL


@dataclass(frozen=True)
class Settings:
    """The environment's choices for generators and the database. ``repr`` hides secrets."""

    mock_ai: bool | None = None
    defapi_api_key: str | None = field(default=None, repr=False)
    defapi_base_url: str = field(default_factory=_default_base_url)
    defapi_poll_interval: float = 3.0
    database_url: str | None = field(default=None, repr=False)

    @classmethod
    def from_env(
        cls,
        environ: Mapping[str, str] | None = None,
        dotenv: str | os.PathLike[str] | bool | None = True,
    ) -> Settings:
        """Read the settings from ``environ`` (default: the process environment) and ``.env``.

        ``dotenv=True`` reads ``.env`` in the working directory if there is one; a path reads
        that file (which must exist); ``False`` or ``None`` reads no file. Values in
        ``environ`` win over the file's.
        """
        values: dict[str, str] = {}
        for key, value in _dotenv_values(dotenv).items():
            if value is not None:
                values[key] = value
        values.update(os.environ if environ is None else environ)

        def get(name: str) -> str | None:
            value = values.get(name)
            return value.strip() if value is not None and value.strip() else None

        poll_text = get(DEFAPI_POLL_INTERVAL)
        poll_interval = 3.0
        if poll_text is not None:
            try:
                poll_interval = float(poll_text)
            except ValueError:
                poll_interval = -1.0
            if not poll_interval > 0:
                raise ConfigurationError(
                    f"{DEFAPI_POLL_INTERVAL}={poll_text!r} is not a positive number of seconds",
                    hint=f"set {DEFAPI_POLL_INTERVAL} to e.g. 3",
                )
        mock_ai = parse_bool(MOCK_AI, values.get(MOCK_AI))
        api_key = get(DEFAPI_API_KEY)
        if api_key is not None and mock_ai is not True:
            # Here, not at the first request: a worker must refuse to start with a key that
            # every job would fail on (and whose error could quote it).
            from .generators.defapi import KEY_HINT

            check_api_key(api_key, name=DEFAPI_API_KEY, hint=KEY_HINT)
        return cls(
            mock_ai=mock_ai,
            defapi_api_key=api_key,
            defapi_base_url=(get(DEFAPI_BASE_URL) or _default_base_url()).rstrip("/"),
            defapi_poll_interval=poll_interval,
            database_url=get(DATABASE_URL),
        )

    @property
    def use_mock(self) -> bool:
        """Whether `generator` gives the mock; raises when DefAPI is demanded without a key."""
        if self.mock_ai is True:
            return True
        if self.defapi_api_key:
            return False
        if self.mock_ai is False:
            raise ConfigurationError(
                f"MOCK_AI=false but {DEFAPI_API_KEY} is not set: no image generator can run",
                hint=f"set {DEFAPI_API_KEY} (in the environment or .env), "
                "or MOCK_AI=true to use the mock generator",
            )
        return True

    def generator(self) -> Generator:
        """The generator these settings choose: `MockGenerator` or `DefAPIGenerator`."""
        if self.use_mock:
            if self.mock_ai is None:
                logger.info(
                    "MOCK_AI is not set and %s is empty: using the mock generator",
                    DEFAPI_API_KEY,
                )
            else:
                logger.info("MOCK_AI=true: using the mock generator")
            from .generators.mock import MockGenerator

            return MockGenerator()
        assert self.defapi_api_key is not None
        if self.mock_ai is None:
            logger.info("MOCK_AI is not set and %s is present: using DefAPI", DEFAPI_API_KEY)
        from .generators.defapi import DefAPIGenerator

        return DefAPIGenerator(
            self.defapi_api_key,
            base_url=self.defapi_base_url,
            poll_interval=self.defapi_poll_interval,
        )

    def describe(self) -> str:
        """One line safe to print or log: which generator, where, and which key (masked)."""
        try:
            mock = self.use_mock
        except ConfigurationError:
            return f"generator: none ({MOCK_AI}=false and {DEFAPI_API_KEY} is not set)"
        if mock:
            return "generator: mock"
        where = redact(self.defapi_base_url)
        return f"generator: DefAPI at {where} (key {mask_key(self.defapi_api_key)})"

    def __repr__(self) -> str:
        db = describe_url(self.database_url) if self.database_url else None
        return (
            f"Settings(mock_ai={self.mock_ai!r}, defapi_api_key={mask_key(self.defapi_api_key)!r}, "
            f"defapi_base_url={redact(self.defapi_base_url)!r}, "
            f"defapi_poll_interval={self.defapi_poll_interval:g}, database_url={db!r})"
        )


def load_env_file(dotenv: str | os.PathLike[str] | bool | None = True) -> None:
    """Copy the ``.env`` values into ``os.environ`` where a variable is not set yet.

    The same file and rule as `Settings.from_env`: ``True`` is the working directory's
    ``.env`` (parents are not searched, so a stray file higher up cannot change which
    database a command touches), a path is that file; the environment wins. The CLI calls
    it before reading its options, so ``JOBQUEUE_DATABASE_URL`` may live in ``.env``.
    """
    for key, value in _dotenv_values(dotenv).items():
        if value is not None:
            os.environ.setdefault(key, value)


def _dotenv_values(dotenv: str | os.PathLike[str] | bool | None) -> dict[str, str | None]:
    if dotenv is None or dotenv is False:
        return {}
    if dotenv is True:
        path = Path.cwd() / ".env"
        return dict(dotenv_values(path)) if path.is_file() else {}
    path = Path(dotenv)
    if not path.is_file():
        raise ConfigurationError(
            f"the settings file {str(path)!r} does not exist",
            hint="pass the path of an existing .env file, or dotenv=False",
        )
    return dict(dotenv_values(path))
