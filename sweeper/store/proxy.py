"""Optuna's gRPC storage proxy: many workers, one pool of database connections.

At hundreds of workers, each opening its own connections to the study's
database, PostgreSQL's connection limit bites first. Workers can instead reach
the study through ``optuna.storages.run_grpc_proxy_server`` (``python -m
sweeper storage-proxy``) with ``hydra.sweeper.worker_storage=grpc://host:port``.
Controllers stay on the direct URL: their study lock and heartbeats need the
database itself.
"""

from __future__ import annotations

import logging
import signal
import threading
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import optuna
from optuna.storages import BaseStorage, JournalStorage, RDBStorage

from sweeper.store.storage import KEY, WORKER_KEY, describe_storage, make_storage
from train.errors import ConfigError

log = logging.getLogger(__name__)
THREADS = 10  # Optuna's own default for the proxy's thread pool
PROBE_ATTR = "lora_sweeper:worker_storage_probe"  # a study system attr: written direct, read through the workers' URL


def start_storage_proxy(url: str, host: str, port: int):
    """A started gRPC proxy server for the storage at ``url`` (any form make_storage opens, but a journal)."""
    storage = make_storage(url, Path("."))
    if isinstance(storage, JournalStorage):
        # Optuna's proxy serves RDB storages only (optuna/optuna#6084).
        raise ConfigError(f"{KEY}: the gRPC storage proxy cannot serve a journal or Redis storage; use PostgreSQL or MySQL")
    import grpc
    from optuna.storages._grpc.auto_generated import api_pb2_grpc
    from optuna.storages._grpc.servicer import OptunaStorageProxyService

    # Optuna's make_server, less SO_REUSEPORT: a second proxy on a taken port must fail, not share it silently.
    server = grpc.server(ThreadPoolExecutor(max_workers=THREADS), options=[("grpc.so_reuseport", 0)])
    # The cached wrapper, as Optuna's own docs ask: a bare RDBStorage reads every trial on each request.
    api_pb2_grpc.add_StorageServiceServicer_to_server(OptunaStorageProxyService(optuna.storages.get_storage(storage)), server)
    try:
        server.add_insecure_port(f"{host}:{port}")
    except RuntimeError as err:  # grpc: "Failed to bind to address"
        raise ConfigError(f"--port: cannot listen on {host}:{port} ({err})") from None
    server.start()
    return server


def serve_storage_proxy(url: str, host: str, port: int) -> None:
    """Serve until SIGINT or SIGTERM, then stop cleanly (in-flight requests get a second to finish)."""
    server = start_storage_proxy(url, host, port)
    done = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: done.set())
    shown = "HOST" if host in ("0.0.0.0", "::", "") else host
    print(f"gRPC storage proxy for {describe_storage(url)}: serving on {host}:{port}", flush=True)
    print(f"  workers: {WORKER_KEY}=grpc://{shown}:{port} (controllers keep {KEY}=<this URL>)", flush=True)
    done.wait()
    server.stop(grace=1).wait()
    print("storage proxy stopped", flush=True)


def check_worker_storage(controller_storage: BaseStorage, study_name: str, url: str) -> None:
    """ConfigError unless the workers' URL reaches this very study (not a namesake in another database)."""
    token = uuid.uuid4().hex
    controller_storage.set_study_system_attr(controller_storage.get_study_id_from_name(study_name), PROBE_ATTR, token)
    storage = make_storage(url, Path("."), key=WORKER_KEY)
    try:
        seen = storage.get_study_system_attrs(storage.get_study_id_from_name(study_name)).get(PROBE_ATTR)
    except KeyError:
        seen = None
    finally:
        _close(storage)
    if seen != token:
        raise ConfigError(
            f"{WORKER_KEY}: {describe_storage(url)} reaches another database than {KEY} "
            f"(study {study_name!r} there is not this sweep's); the workers' URL must lead to the same database"
        )
    log.info("workers reach study %r through %s", study_name, describe_storage(url))


def _close(storage) -> None:
    # The probe's own channel or connection pool: the workers open theirs.
    if isinstance(storage, RDBStorage):
        storage.engine.dispose()
    elif hasattr(storage, "close"):
        storage.close()
