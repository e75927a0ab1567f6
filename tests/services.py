"""Outside services for tests (PostgreSQL, Redis, MySQL, Chromium): skipped with a reason when
unavailable, a failure under CI=true.

The URLs default to the local services and can be pointed elsewhere with
SWEEPER_TEST_POSTGRES / SWEEPER_TEST_REDIS / SWEEPER_TEST_MYSQL / SWEEPER_TEST_CHROMIUM.
"""

from __future__ import annotations

import importlib.util
import os
import socket
from typing import NoReturn
from urllib.parse import urlsplit

import pytest

from sweeper.store.storage import mask_url

POSTGRES_URLS = (
    [os.environ["SWEEPER_TEST_POSTGRES"]]
    if "SWEEPER_TEST_POSTGRES" in os.environ
    # Local trust auth; some images name the superuser root.
    else ["postgresql+psycopg2://postgres@127.0.0.1:5432/test", "postgresql+psycopg2://root@127.0.0.1:5432/test"]
)
REDIS_URL = os.environ.get("SWEEPER_TEST_REDIS", "redis://127.0.0.1:6379/15")
MYSQL_URL = os.environ.get("SWEEPER_TEST_MYSQL", "mysql+pymysql://root@127.0.0.1:3306/test")


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now, for a server a test starts."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _unavailable(reason: str) -> NoReturn:
    # In CI a missing service is a broken pipeline, not a reason to pass quietly.
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"CI=true but {reason}", pytrace=False)
    pytest.skip(reason)


def _port_open(url: str) -> bool:
    parts = urlsplit(url)
    try:
        with socket.create_connection((parts.hostname or "127.0.0.1", parts.port or 5432), timeout=2):
            return True
    except OSError:
        return False


def _first_error(attempt) -> str | None:
    try:
        attempt()
        return None
    except Exception as exc:
        return mask_url(str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__)


def _pg_login(psycopg2, url: str) -> None:
    parts = urlsplit(url)
    dsn = dict(host=parts.hostname, port=parts.port, user=parts.username, password=parts.password)
    psycopg2.connect(**dsn, dbname=parts.path.lstrip("/"), connect_timeout=3).close()


def postgres_url() -> str:
    """A PostgreSQL URL that accepts connections, or skip/fail."""
    if importlib.util.find_spec("psycopg2") is None:
        _unavailable("psycopg2 is not installed (pip install psycopg2-binary)")
    import psycopg2

    parts = urlsplit(POSTGRES_URLS[0])
    if not _port_open(POSTGRES_URLS[0]):
        _unavailable(f"no PostgreSQL at {parts.hostname}:{parts.port or 5432}")
    errors = []
    for url in POSTGRES_URLS:
        error = _first_error(lambda url=url: _pg_login(psycopg2, url))
        if error is None:
            return url
        errors.append(error)
    _unavailable(f"PostgreSQL refused every test login: {'; '.join(errors)}")


def redis_url() -> str:
    """A Redis URL that answers PING, or skip/fail."""
    if importlib.util.find_spec("redis") is None:
        _unavailable("the redis client is not installed (pip install redis)")
    import redis

    error = _first_error(lambda: redis.Redis.from_url(REDIS_URL, socket_connect_timeout=2).ping())
    if error is not None:
        _unavailable(f"no Redis at {mask_url(REDIS_URL)}: {error}")
    return REDIS_URL


def mysql_url() -> str:
    """A MySQL/MariaDB URL that accepts connections, or skip/fail."""
    if importlib.util.find_spec("pymysql") is None:
        _unavailable("pymysql is not installed (pip install pymysql)")
    import pymysql

    parts = urlsplit(MYSQL_URL)

    def login() -> None:
        pymysql.connect(
            host=parts.hostname,
            port=parts.port or 3306,
            user=parts.username,
            password=parts.password or "",
            database=parts.path.lstrip("/"),
            connect_timeout=3,
        ).close()

    error = _first_error(login)
    if error is not None:
        _unavailable(f"no MySQL at {mask_url(MYSQL_URL)}: {error}")
    return MYSQL_URL


CHROMIUM_CANDIDATES = ("chromium", "chromium-browser", "google-chrome")


def chromium_executable() -> str:
    """The system's Chromium (Debian package `chromium`, which `make test` installs as root), or skip/fail."""
    import shutil

    if importlib.util.find_spec("playwright") is None:
        _unavailable("playwright is not installed (pip install -e '.[dev]')")
    path = os.environ.get("SWEEPER_TEST_CHROMIUM") or next(
        (found for name in CHROMIUM_CANDIDATES if (found := shutil.which(name))), None
    )
    if not path:
        _unavailable("no Chromium found (apt-get install chromium, or set SWEEPER_TEST_CHROMIUM)")
    return path
