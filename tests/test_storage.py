"""make_storage: every URL form gives a working study; every user mistake is one masked ConfigError."""

from __future__ import annotations

import sys
import uuid

import optuna
import pytest
from sqlalchemy.engine import make_url

from sweeper.config import SweeperConfig
from sweeper.store.storage import describe_storage, make_storage, mask_url, storage_file, study_lock, supports_heartbeat
from sweeper.store.study import create_study
from tests.services import postgres_url, redis_url
from train.errors import ConfigError

optuna.logging.set_verbosity(optuna.logging.WARNING)
# The round trip asks directly, without the sweeper's Heartbeat; Optuna warns about that on RDB servers.
pytestmark = pytest.mark.filterwarnings("ignore:Heartbeat of storage is supposed")


def _roundtrip(storage) -> int:
    """Create a study, finish one trial, load it back through a second handle; returns its trial count."""
    name = f"t-{uuid.uuid4().hex[:12]}"
    study = create_study(SweeperConfig(study_name=name, direction="maximize"), storage)
    try:
        trial = study.ask()
        study.tell(trial, trial.suggest_float("x", 0, 1))
        return len(optuna.load_study(study_name=name, storage=storage).trials)
    finally:
        optuna.delete_study(study_name=name, storage=storage)


def test_default_is_sqlite_in_the_sweep_dir(tmp_path):
    storage = make_storage(None, tmp_path / "sweep")
    assert (tmp_path / "sweep" / "optuna.db").is_file()
    assert storage_file(storage) == tmp_path / "sweep" / "optuna.db"
    assert not supports_heartbeat(storage)
    assert _roundtrip(storage) == 1


def test_sqlite_url(tmp_path):
    storage = make_storage(f"sqlite:///{tmp_path / 'other.db'}", tmp_path / "sweep")
    assert (tmp_path / "other.db").is_file() and not (tmp_path / "sweep").exists()
    assert _roundtrip(storage) == 1


@pytest.mark.parametrize("form", ["journal:///{}", "{}"])
def test_journal_file(tmp_path, form):
    path = tmp_path / "study.log"
    storage = make_storage(form.format(path), tmp_path)
    assert isinstance(storage, optuna.storages.JournalStorage)
    assert storage_file(storage) == path and not supports_heartbeat(storage)
    assert _roundtrip(storage) == 1


def test_redis(tmp_path):
    storage = make_storage(redis_url(), tmp_path)
    assert isinstance(storage, optuna.storages.JournalStorage) and not supports_heartbeat(storage)
    assert _roundtrip(storage) == 1


@pytest.mark.parametrize("driver", ["postgresql", "postgresql+psycopg2"])
def test_postgresql(tmp_path, driver):
    url = make_url(postgres_url()).set(drivername=driver).render_as_string(hide_password=False)
    storage = make_storage(url, tmp_path, heartbeat_interval=5, grace_period=12)
    assert supports_heartbeat(storage)
    assert storage.get_heartbeat_interval() == 5 and storage.grace_period == 12
    assert storage.engine.pool._pre_ping
    assert _roundtrip(storage) == 1
    assert storage_file(storage) is None


def _one_masked_error(url: str, tmp_path) -> str:
    with pytest.raises(ConfigError) as info:
        make_storage(url, tmp_path)
    # `raise ... from None`: the user sees one message, not a chained traceback.
    error = info.value
    assert error.__cause__ is None and (error.__context__ is None or error.__suppress_context__)
    message = str(info.value)
    assert message.startswith("hydra.sweeper.storage:") and "s3cret" not in message
    return message


def test_unknown_scheme(tmp_path):
    message = _one_masked_error("ftp://me:s3cret@host/db", tmp_path)
    assert "ftp://me:***@host/db" in message and "postgresql[+psycopg2]://" in message


@pytest.mark.parametrize(
    "url",
    [
        "postgresql://me:s3cret@127.0.0.1:1/test",
        "postgresql+psycopg2://me:s3cret@127.0.0.1:1/test",
        "redis://:s3cret@127.0.0.1:1/0",
    ],
)
def test_unreachable_server(tmp_path, url):
    message = _one_masked_error(url, tmp_path)
    assert "cannot" in message and ":***@127.0.0.1:1" in message


def test_missing_database(tmp_path):
    url = make_url(postgres_url()).set(password="s3cret", database="no_such_db_" + uuid.uuid4().hex[:6])
    message = _one_masked_error(url.render_as_string(hide_password=False), tmp_path)
    assert "cannot open the database" in message and "does not exist" in message


@pytest.mark.parametrize(
    "url", ["sqlite:////nonexistent-dir/x/optuna.db", "journal:///nonexistent-dir/x/s.log", "/nonexistent-dir/s.log"]
)
def test_missing_folder(tmp_path, url):
    assert "does not exist" in _one_masked_error(url, tmp_path)


@pytest.mark.parametrize(
    ("url", "hidden"),
    [
        ("mysql+pymysql://me:s3cret@127.0.0.1/db", ["pymysql"]),
        # The bare scheme takes whichever driver is installed, so both must be missing.
        ("mysql://me:s3cret@127.0.0.1/db", ["MySQLdb", "pymysql"]),
        ("postgresql+psycopg://me:s3cret@127.0.0.1/db", ["psycopg"]),
    ],
)
def test_missing_driver(tmp_path, monkeypatch, url, hidden):
    # A None entry in sys.modules makes `import name` fail and find_spec report it absent,
    # which is what a machine without the driver sees.
    for module in hidden:
        monkeypatch.setitem(sys.modules, module, None)
    message = _one_masked_error(url, tmp_path)
    assert "driver is not installed" in message and "pip install" in message


def test_heartbeat_timing_is_checked(tmp_path):
    with pytest.raises(ConfigError, match="hydra.sweeper.heartbeat_interval"):
        make_storage(None, tmp_path, heartbeat_interval=0)
    with pytest.raises(ConfigError, match="hydra.sweeper.grace_period"):
        make_storage(None, tmp_path, heartbeat_interval=10, grace_period=10)


def test_masking():
    assert mask_url("postgresql://u:p%40ss@h:5432/db") == "postgresql://u:***@h:5432/db"
    assert mask_url("redis://:pw@h:6379/0") == "redis://:***@h:6379/0"
    assert mask_url("mysql://u@h/db?password=pw&x=1") == "mysql://u@h/db?password=***&x=1"
    assert mask_url("sqlite:////tmp/a.db") == "sqlite:////tmp/a.db"
    assert describe_storage("postgresql://u:pw@h/db") == "postgresql://u:***@h/db"
    assert "sweep dir" in describe_storage(None)


def test_file_lock_sits_beside_the_storage_file(tmp_path):
    storage = make_storage(f"journal:///{tmp_path / 's.log'}", tmp_path)
    with study_lock(storage, "s"):
        assert (tmp_path / "s.log.sweep-lock").exists()
    with study_lock(storage, "s", tmp_path / "explicit.lock"):
        assert (tmp_path / "explicit.lock").exists()


# ------------------------------------------------------------------ the same storage in every process
def _bare(url: str, scheme: str) -> str:
    return make_url(url).set(drivername=scheme).render_as_string(hide_password=False)


@pytest.mark.parametrize(
    "form", ["postgresql", "postgresql+psycopg2", "mysql", "mysql+pymysql", "sqlite", "journal", "redis"]
)
def test_workers_open_every_url_form_the_controller_opens(tmp_path, form):
    """A user's URL as written (bare postgresql:// too): the controller's study is the one each worker reports to."""
    from sweeper.slots.worker import TrialJob, open_study
    from tests.services import mysql_url

    url = {
        "postgresql": lambda: _bare(postgres_url(), "postgresql"),
        "postgresql+psycopg2": postgres_url,
        "mysql": lambda: _bare(mysql_url(), "mysql"),
        "mysql+pymysql": mysql_url,
        "sqlite": lambda: f"sqlite:///{tmp_path / 'optuna.db'}",
        "journal": lambda: f"journal:///{tmp_path / 'study.log'}",
        "redis": redis_url,
    }[form]()
    storage = make_storage(url, tmp_path, heartbeat_interval=5, grace_period=12)
    name = f"t-{uuid.uuid4().hex[:12]}"
    study = create_study(SweeperConfig(study_name=name, direction="maximize"), storage)
    try:
        trial = study.ask()
        job = TrialJob(trial.number, trial._trial_id, name, url, [], str(tmp_path / "0"))
        optuna.trial.Trial(open_study(job), trial._trial_id).report(0.5, step=1)
        assert study.trials[0].intermediate_values == {1: 0.5}
    finally:
        optuna.delete_study(study_name=name, storage=storage)


def _first_open(url: str, barrier, results) -> None:
    import warnings
    from pathlib import Path

    warnings.simplefilter("ignore")
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    barrier.wait()
    try:
        create_study(SweeperConfig(study_name="same", direction="maximize"), make_storage(url, Path(".")))
        results.put("ok")
    except Exception as exc:  # reported to the test, which names it
        results.put(f"{type(exc).__name__}: {exc}")


def _open_at_once(url: str, processes: int = 4) -> list[str]:
    import multiprocessing

    ctx = multiprocessing.get_context("spawn")
    barrier, results = ctx.Barrier(processes), ctx.Queue()
    procs = [ctx.Process(target=_first_open, args=(url, barrier, results)) for _ in range(processes)]
    for proc in procs:
        proc.start()
    got = [results.get(timeout=120) for _ in procs]
    for proc in procs:
        proc.join(timeout=30)
    return [g for g in got if g != "ok"]


def test_controllers_opening_a_fresh_sqlite_file_at_once(tmp_path):
    for attempt in range(3):  # the race needs the same instant; three fresh files make it near certain
        assert _open_at_once(f"sqlite:///{tmp_path / f'fresh{attempt}.db'}") == []


def test_controllers_opening_a_fresh_postgresql_database_at_once():
    import psycopg2

    base = make_url(postgres_url())
    name = f"fresh_{uuid.uuid4().hex[:10]}"
    admin = psycopg2.connect(host=base.host, port=base.port, user=base.username, dbname=base.database)
    admin.autocommit = True
    try:
        admin.cursor().execute(f"CREATE DATABASE {name}")
        assert _open_at_once(base.set(database=name).render_as_string(hide_password=False)) == []
    finally:
        admin.cursor().execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        admin.close()
