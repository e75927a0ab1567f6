"""Optuna storage from the ``hydra.sweeper.storage`` URL, checked before any trial starts.

One host: SQLite (the default, in the sweep dir) or a journal file. Many hosts:
PostgreSQL/MySQL through Optuna's RDB storage with heartbeats, or a Redis
journal. Nothing home-made stands between hosts: these are Optuna's storages.
"""

from __future__ import annotations

import fcntl
import hashlib
import importlib.util
import re
import threading
import warnings
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from urllib.parse import urlsplit

import optuna
import sqlalchemy
from optuna.storages import BaseStorage, JournalStorage, RDBStorage, _CachedStorage
from optuna.storages._heartbeat import is_heartbeat_enabled
from optuna.storages.journal import JournalFileBackend, JournalRedisBackend

from train.errors import ConfigError

KEY = "hydra.sweeper.storage"
WORKER_KEY = "hydra.sweeper.worker_storage"
FORMS = (
    "null (SQLite in the sweep dir), sqlite:///path.db, journal:///abs/path.log (or a path ending .log), "
    "redis://host:6379/0, postgresql[+psycopg2]://user:pass@host/db, mysql[+pymysql]://user:pass@host/db"
)
GRPC_PORT = 13000  # Optuna's default for its gRPC storage proxy
# Server URLs get Optuna's heartbeats: several hosts share them, so a dead host must be noticed.
SERVER_SCHEMES = ("postgresql", "postgresql+psycopg2", "postgresql+psycopg", "mysql", "mysql+pymysql")
# A bare scheme means "whichever driver is installed": SQLAlchemy's default changed (psycopg2 -> psycopg in 2.1).
BARE_DRIVERS = {
    "postgresql": (("psycopg", "psycopg"), ("psycopg2", "psycopg2")),
    "mysql": (("MySQLdb", "mysqldb"), ("pymysql", "pymysql")),
}
DRIVERS = {
    "postgresql": "pip install psycopg2-binary (or psycopg[binary])",
    "postgresql+psycopg": "pip install psycopg[binary]",
    "mysql": "pip install mysqlclient, or use mysql+pymysql:// with pip install pymysql",
    "mysql+pymysql": "pip install pymysql",
    "redis": "pip install redis",
    "grpc": "pip install grpcio protobuf",
}
CONNECT_TIMEOUT_S = 10


def mask_url(url: str) -> str:
    """The URL with any password replaced by ``***`` (userinfo and ``password=`` query)."""
    url = re.sub(r"(://[^/@:]*:)[^/@]*@", r"\1***@", url)
    return re.sub(r"(?i)(password=)[^&]*", r"\1***", url)


def describe_storage(url: str | None) -> str:
    """A log-safe description of the storage URL."""
    return "SQLite in the sweep dir" if url is None else mask_url(url)


def supports_heartbeat(storage: BaseStorage) -> bool:
    """True where Optuna itself tracks trial liveness (RDB storages built with a heartbeat interval)."""
    return is_heartbeat_enabled(storage)


def _scheme(url: str) -> str:
    return url.split("://", 1)[0].lower() if "://" in url else ""


def _fail(url: str, problem: str, todo: str) -> ConfigError:
    return ConfigError(f"{KEY}: {problem} ({mask_url(url)}). {todo}")


def _error_text(url: str, exc: BaseException) -> str:
    # Driver messages can echo the URL; keep their first line and mask it.
    text = str(getattr(exc, "orig", None) or exc).strip().splitlines()
    first = text[0] if text else type(exc).__name__
    return mask_url(first)


def _existing_parent(url: str, path: Path) -> Path:
    path = path.expanduser().resolve()
    if not path.parent.is_dir():
        raise _fail(url, f"the folder {path.parent} does not exist", "Create it or point the storage elsewhere.")
    return path


def _journal_file(url: str, path: Path) -> BaseStorage:
    path = _existing_parent(url, path)
    try:
        return JournalStorage(JournalFileBackend(str(path)))
    except OSError as exc:
        raise _fail(url, f"cannot open the journal file: {exc.strerror or exc}", "Check its permissions.") from None


def _redis(url: str) -> BaseStorage:
    try:
        import redis
    except ImportError:
        raise _fail(url, "the redis client is not installed", DRIVERS["redis"] + ".") from None
    try:
        # A short connect timeout: the backend's own client would wait for the OS TCP timeout.
        redis.Redis.from_url(url, socket_connect_timeout=CONNECT_TIMEOUT_S).ping()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return JournalStorage(JournalRedisBackend(url))
    except (redis.RedisError, ValueError) as exc:
        raise _fail(url, f"cannot reach Redis: {_error_text(url, exc)}", "Check host, port and database.") from None


def _grpc_proxy(url: str) -> BaseStorage:
    parts = urlsplit(url)
    if not parts.hostname or parts.path.strip("/") or parts.query:
        raise _fail(url, "a gRPC proxy URL is grpc://host:port", "E.g. grpc://db-proxy.internal:13000.")
    if importlib.util.find_spec("grpc") is None:
        raise _fail(url, "grpcio is not installed", DRIVERS["grpc"] + ".")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        from optuna.storages import GrpcStorageProxy

        storage = GrpcStorageProxy(host=parts.hostname, port=parts.port or GRPC_PORT)
    try:
        storage.wait_server_ready(timeout=CONNECT_TIMEOUT_S)
    except ConnectionError:
        storage.close()
        raise _fail(
            url,
            f"cannot reach the gRPC storage proxy in {CONNECT_TIMEOUT_S} s",
            "Start one beside the database with: python -m sweeper storage-proxy hydra.sweeper.storage=<database URL> "
            "--host 0.0.0.0 --port PORT",
        ) from None
    return storage


def _with_installed_driver(url: str) -> str:
    scheme = _scheme(url)
    for module, driver in BARE_DRIVERS.get(scheme, ()):
        if importlib.util.find_spec(module) is not None:
            return f"{scheme}+{driver}" + url[len(scheme) :]
    return url


def _rdb(url: str, **kwargs) -> RDBStorage:
    scheme = _scheme(url)
    engine_kwargs: dict = {"pool_pre_ping": True}
    if scheme == "sqlite":
        # Several controllers may write one file: wait for its lock instead of failing at once.
        engine_kwargs["connect_args"] = {"timeout": 60}
    elif scheme in SERVER_SCHEMES:
        engine_kwargs["connect_args"] = {"connect_timeout": CONNECT_TIMEOUT_S}
    resolved = _with_installed_driver(url)
    try:
        # Creating the tables of a fresh database is not safe to race: controllers started together take turns.
        with _schema_lock(resolved, engine_kwargs), warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return RDBStorage(resolved, engine_kwargs=engine_kwargs, **kwargs)
    except ImportError:
        todo = DRIVERS.get(scheme, DRIVERS.get(scheme.split("+")[0], "Install the database driver"))
        raise _fail(url, "the database driver is not installed", todo + ".") from None
    except (sqlalchemy.exc.SQLAlchemyError, ValueError) as exc:
        problem = f"cannot open the database: {_error_text(url, exc)}"
        if scheme == "sqlite":
            raise _fail(url, problem, "Check that the file is an Optuna SQLite database you may write.") from None
        raise _fail(url, problem, "Check host, port, user, password and that the database exists.") from None


@contextmanager
def _schema_lock(url: str, engine_kwargs: dict) -> Iterator[None]:
    """The storage-wide lock under which a fresh database gets its tables: a file lock or the server's own."""
    name = "lora-sweeper:schema"
    parsed = sqlalchemy.engine.make_url(url)
    if parsed.get_backend_name() == "sqlite":
        database = parsed.database
        if not database or database == ":memory:":
            yield
            return
        with _file_lock(Path(database + SCHEMA_LOCK_SUFFIX)):  # not the study lock: a study may hold that
            yield
        return
    engine = sqlalchemy.create_engine(url, **engine_kwargs)
    try:
        lock = _postgres_lock if engine.dialect.name == "postgresql" else _mysql_lock
        with lock(engine, name):
            yield
    finally:
        engine.dispose()


def _check_timing(heartbeat_interval: int, grace_period: int) -> None:
    if heartbeat_interval < 1:
        raise ConfigError(f"hydra.sweeper.heartbeat_interval: must be >= 1 second, got {heartbeat_interval}")
    # A grace shorter than the interval would fail live trials between two heartbeats.
    if grace_period <= heartbeat_interval:
        raise ConfigError(
            f"hydra.sweeper.grace_period: must be longer than heartbeat_interval ({heartbeat_interval}), "
            f"got {grace_period}"
        )


def make_storage(
    url: str | None,
    sweep_dir: Path,
    *,
    heartbeat_interval: int = 10,
    grace_period: int = 30,
    key: str = KEY,
) -> BaseStorage:
    """Build and connect the storage named by ``url``; any user mistake is one ConfigError.

    The one way this project opens a study storage: the controller, every
    worker and the ``python -m sweeper`` commands all come through here, so a
    URL that works for one works for all (a bare ``postgresql://`` takes the
    installed driver everywhere). Optuna's RetryFailedTrialCallback is not
    wired in: it would re-queue a second time next to ``recover_stale_trials``.
    ``key`` is the setting the URL came from, which messages name.
    """
    try:
        return _open_storage(url, sweep_dir, heartbeat_interval, grace_period)
    except ConfigError as err:
        if key == KEY or not str(err).startswith(KEY + ":"):
            raise
        raise ConfigError(key + str(err)[len(KEY) :]) from None


def _open_storage(url: str | None, sweep_dir: Path, heartbeat_interval: int, grace_period: int) -> BaseStorage:
    _check_timing(heartbeat_interval, grace_period)
    if url is None:
        sweep_dir = Path(sweep_dir)
        sweep_dir.mkdir(parents=True, exist_ok=True)
        return _rdb(f"sqlite:///{sweep_dir.resolve() / 'optuna.db'}")
    url = str(url).strip()
    scheme = _scheme(url)
    if scheme == "sqlite":
        if "///" in url and url.split("///", 1)[1] not in ("", ":memory:"):
            _existing_parent(url, Path(url.split("///", 1)[1]))
        return _rdb(url)
    if scheme == "journal":
        return _journal_file(url, Path(url[len("journal://") :]))
    if not scheme and url.endswith(".log"):
        return _journal_file(url, Path(url))
    if scheme in ("redis", "rediss"):
        return _redis(url)
    if scheme in SERVER_SCHEMES:
        return _rdb(url, heartbeat_interval=heartbeat_interval, grace_period=grace_period)
    if scheme == "grpc":
        return _grpc_proxy(url)
    raise _fail(url, "unknown storage URL", f"Use one of: {FORMS}; for workers also grpc://host:port.")


# ------------------------------------------------------------------ study locks
# Counting trials then asking one must be atomic across processes and hosts, so
# the lock lives where the storage lives: a database lock on the same server,
# a Redis lock on the same Redis, a file lock beside the storage file.
LOCK_SUFFIX = ".sweep-lock"  # not ".lock": the journal's own symlink lock uses that name
SCHEMA_LOCK_SUFFIX = ".schema-lock"
_PROCESS_LOCK = threading.RLock()  # in-memory storages live in one process


def _lock_name(study_name: str) -> str:
    return "lora-sweeper:" + hashlib.sha1(study_name.encode()).hexdigest()


@contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    with open(path, "a+b") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


@contextmanager
def _postgres_lock(engine, name: str) -> Iterator[None]:
    key = int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big", signed=True)
    # The transaction-scoped variant is released on commit or rollback, even after an error.
    with engine.connect() as conn, conn.begin():
        conn.execute(sqlalchemy.text("SELECT pg_advisory_xact_lock(:key)"), {"key": key})
        yield


@contextmanager
def _mysql_lock(engine, name: str) -> Iterator[None]:
    with engine.connect() as conn:
        if conn.execute(sqlalchemy.text("SELECT GET_LOCK(:name, 600)"), {"name": name}).scalar() != 1:
            raise TimeoutError(f"MySQL lock {name} not acquired in 600 s")
        try:
            yield
        finally:
            conn.execute(sqlalchemy.text("SELECT RELEASE_LOCK(:name)"), {"name": name})


@contextmanager
def _redis_lock(client, name: str) -> Iterator[None]:
    # SET NX PX with expiry: a controller that dies holding it blocks the others 60 s at most.
    with client.lock(name, timeout=60, sleep=0.01):
        yield


def unwrap_storage(storage: BaseStorage) -> BaseStorage:
    # optuna.create_study wraps an RDBStorage in a cache; the engine lives on the inner one.
    return storage._backend if isinstance(storage, _CachedStorage) else storage


def storage_file(storage: BaseStorage) -> Path | None:
    """The file behind a SQLite or journal-file storage, else None."""
    storage = unwrap_storage(storage)
    if isinstance(storage, RDBStorage) and storage.engine.dialect.name == "sqlite":
        database = storage.engine.url.database
        return Path(database) if database and database != ":memory:" else None
    backend = getattr(storage, "_backend", None)
    if isinstance(storage, JournalStorage) and isinstance(backend, JournalFileBackend):
        return Path(backend._file_path)
    return None


def study_lock(storage: BaseStorage, study_name: str, lock_path: Path | None = None) -> AbstractContextManager:
    """A fresh context manager holding the study's cross-process lock while open.

    ``lock_path`` overrides the file lock's place; by default it sits beside
    the storage file, so every controller sharing that file shares the lock.
    """
    name = _lock_name(study_name)
    raw = unwrap_storage(storage)
    if isinstance(raw, RDBStorage) and raw.engine.dialect.name == "postgresql":
        return _postgres_lock(raw.engine, name)
    if isinstance(raw, RDBStorage) and raw.engine.dialect.name == "mysql":
        return _mysql_lock(raw.engine, name)
    backend = getattr(raw, "_backend", None)
    if isinstance(raw, JournalStorage) and isinstance(backend, JournalRedisBackend):
        return _redis_lock(backend._redis, name)
    if lock_path is not None:
        return _file_lock(Path(lock_path))
    file = storage_file(raw)
    return _file_lock(Path(str(file) + LOCK_SUFFIX)) if file else _PROCESS_LOCK
