"""The ``reid`` command: the trainer's subcommands plus the service's (``serve``, ``db``).

``trainer`` must not import ``app``, so the service extends the trainer's parser here rather
than the other way round. Handlers follow the trainer's convention: return an exit status,
raise ``ValueError``/``OSError`` (here also database and Alembic errors) for a problem the
user can fix, which :func:`main` prints as one line with exit status 2. Later subcommands
(``worker``, ``demo``) are one more ``_register_*`` function in ``_APP_SUBCOMMANDS``.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from trainer import cli as trainer_cli

__all__ = ["build_parser", "main", "run_demo_command", "run_worker", "serve"]

logger = logging.getLogger(__name__)

Register = Callable[[argparse._SubParsersAction], None]


def _add_data_dir(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--data-dir",
        type=Path,
        default=None,
        help="data directory (default: $REID_DATA_DIR or ./reid-data); also holds the "
        "default SQLite database",
    )


def _safe_url(url: str) -> str:
    from sqlalchemy import make_url

    return make_url(url).render_as_string(hide_password=True)


# --------------------------------------------------------------------------------------
# reid serve


def _register_serve(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "serve",
        help="run the HTTP service",
        description="Upgrade the database schema, then serve the REST API with uvicorn. "
        "Without REID_API_KEYS only loopback addresses are allowed, unless --insecure.",
    )
    parser.add_argument("--host", default=None, help="bind address (default: 127.0.0.1)")
    parser.add_argument("--port", type=int, default=None, help="port (default: 8000)")
    parser.add_argument(
        "--workers",
        type=int,
        default=1,
        help="HTTP server processes (default 1; more need REID_BROKER_URL: the embedded job "
        "runner lives in a single process)",
    )
    _add_data_dir(parser)
    parser.add_argument(
        "--insecure",
        action="store_true",
        help="allow a non-loopback address without API keys (anyone reaching it has full access)",
    )
    parser.set_defaults(func=serve)


def serve(args: argparse.Namespace) -> int:
    """``reid serve``: check the bind address first, then storage, schema, uvicorn."""
    from app.api.auth import check_bind_allowed, is_loopback
    from app.core.settings import configure_logging, load_settings

    settings = load_settings(data_dir=args.data_dir, host=args.host, port=args.port)
    configure_logging(settings.log_level)
    check_bind_allowed(settings.host, settings.api_keys, args.insecure)
    if args.workers < 1:
        raise ValueError("--workers must be >= 1")
    if args.workers > 1 and settings.broker_url is None:
        raise ValueError(
            "--workers > 1 needs REID_BROKER_URL (and `reid worker` processes): without a "
            "broker the jobs run inside the one serving process"
        )
    if not settings.api_keys and not is_loopback(settings.host):
        logger.warning("serving on %s WITHOUT authentication (--insecure)", settings.host)

    import uvicorn

    from app.core.db import upgrade_database
    from app.core.storage import StorageLayout
    from reid.serving import service_app

    StorageLayout(settings.data_dir).ensure()
    upgrade_database(settings.effective_database_url)
    logger.info(
        "data in %s, database %s", settings.data_dir, _safe_url(settings.effective_database_url)
    )
    embedded = settings.broker_url is None
    if embedded:
        from trainer.jit_cache import preload

        preload()  # jobs run in this process: compile before the first one
    logger.info(
        "jobs run %s",
        "in this process (embedded worker; the database is the queue)"
        if embedded
        else f"on Celery workers (queue {settings.worker_queue!r}; start them with `reid worker`)",
    )
    shown_host = "127.0.0.1" if settings.host in ("0.0.0.0", "::") else settings.host
    if ":" in shown_host:
        shown_host = f"[{shown_host}]"
    logger.info("web UI at http://%s:%d/ui/ (API docs at /docs)", shown_host, settings.port)
    common: dict[str, Any] = {
        "host": settings.host,
        "port": settings.port,
        "log_config": None,  # keep configure_logging's handler; uvicorn's loggers propagate
        "log_level": settings.log_level.lower(),
    }
    if args.workers == 1:
        uvicorn.run(service_app(settings), **common)
    else:  # fresh processes build their app from the environment: hand the flags down
        os.environ["REID_DATA_DIR"] = str(settings.data_dir)
        uvicorn.run(
            "reid.serving:app_from_environment", factory=True, workers=args.workers, **common
        )
    return 0


# --------------------------------------------------------------------------------------
# reid db


def _register_db(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "db",
        help="database schema migrations",
        description="Apply or revert Alembic migrations on the configured database "
        "(REID_DATABASE_URL, default DATA_DIR/reid.db). `reid serve` upgrades by itself.",
    )
    actions = parser.add_subparsers(dest="db_command", metavar="ACTION", required=True)

    upgrade = actions.add_parser("upgrade", help="migrate up (default: to the latest)")
    upgrade.add_argument("revision", nargs="?", default="head", help="target (default: head)")
    _add_data_dir(upgrade)
    upgrade.set_defaults(func=_run_db_upgrade)

    downgrade = actions.add_parser("downgrade", help="migrate down to REV ('base': empty)")
    downgrade.add_argument("revision", metavar="REV", help="target revision, e.g. base or -1")
    _add_data_dir(downgrade)
    downgrade.set_defaults(func=_run_db_downgrade)

    current = actions.add_parser("current", help="print the database's revision")
    _add_data_dir(current)
    current.set_defaults(func=_run_db_current)


def _db_settings(args: argparse.Namespace):
    from app.core.settings import configure_logging, load_settings

    settings = load_settings(data_dir=args.data_dir)
    configure_logging(settings.log_level)
    return settings


def _run_db_upgrade(args: argparse.Namespace) -> int:
    from app.core.db import upgrade_database

    settings = _db_settings(args)
    upgrade_database(settings.effective_database_url, args.revision)
    print(f"{_safe_url(settings.effective_database_url)}: upgraded to {args.revision}")
    return 0


def _run_db_downgrade(args: argparse.Namespace) -> int:
    from app.core.db import downgrade_database

    settings = _db_settings(args)
    downgrade_database(settings.effective_database_url, args.revision)
    print(f"{_safe_url(settings.effective_database_url)}: downgraded to {args.revision}")
    return 0


def _run_db_current(args: argparse.Namespace) -> int:
    from app.core.db import create_db_engine, current_revision

    settings = _db_settings(args)
    engine = create_db_engine(settings.effective_database_url)
    try:
        print(current_revision(engine) or "base (no schema)")
    finally:
        engine.dispose()
    return 0


# --------------------------------------------------------------------------------------
# reid worker


def _register_worker(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "worker",
        help="run training jobs",
        description="With REID_BROKER_URL: a Celery worker on the training queue (solo pool at "
        "concurrency 1, one process per GPU). Without: a worker that takes queued jobs "
        "from the database (what `reid serve` embeds).",
    )
    parser.add_argument(
        "--gpu", type=int, default=None, metavar="N", help="use only GPU N (CUDA_VISIBLE_DEVICES)"
    )
    parser.add_argument(
        "--concurrency", type=int, default=1, help="jobs at once (default 1; >1: prefork pool)"
    )
    parser.add_argument("--queue", default=None, help="queue to consume (default: gpu)")
    _add_data_dir(parser)
    parser.set_defaults(func=run_worker)


def run_worker(args: argparse.Namespace) -> int:
    """``reid worker``: the GPU is chosen before anything initialises CUDA (torch reads
    ``CUDA_VISIBLE_DEVICES`` then; the task imports torch lazily)."""
    import os

    if args.gpu is not None:
        if args.gpu < 0:
            raise ValueError("--gpu must be >= 0")
        os.environ["CUDA_VISIBLE_DEVICES"] = str(args.gpu)
    if args.concurrency < 1:
        raise ValueError("--concurrency must be >= 1")
    from app.core.settings import configure_logging, load_settings

    settings = load_settings(data_dir=args.data_dir, worker_queue=args.queue)
    configure_logging(settings.log_level)
    from app.core.db import create_db_engine, make_session_factory, upgrade_database

    upgrade_database(settings.effective_database_url)
    from trainer.jit_cache import preload, warm_up

    if settings.broker_url is None:
        import signal
        import threading

        from worker.embedded import EmbeddedWorker

        preload()  # the first job's clustering finds the kernels compiled

        engine = create_db_engine(settings.effective_database_url)
        worker = EmbeddedWorker(settings, make_session_factory(engine))
        stopped = threading.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: stopped.set())
        logger.info("no broker configured: taking queued jobs from the database")
        worker.start()
        try:
            stopped.wait()
        finally:
            worker.stop(timeout=None)  # the running job is checkpointed and requeued
            engine.dispose()
        return 0

    from worker.celery_app import make_celery
    from worker.recovery import start_recovery_thread

    # before Celery starts (and forks its pool): compiled once here, loaded by every child
    logger.info("pseudo-labelling kernels ready in %.1fs", warm_up())
    celery = make_celery(settings)
    start_recovery_thread(celery, settings)  # requeues the jobs of workers that died
    pool = "solo" if args.concurrency == 1 else "prefork"
    hostname = f"reid-gpu{args.gpu}@%h" if args.gpu is not None else "reid@%h"
    celery.worker_main(
        [
            "worker",
            f"--pool={pool}",
            f"--concurrency={args.concurrency}",
            f"--queues={settings.worker_queue}",
            f"--hostname={hostname}",
            f"--loglevel={settings.log_level}",
        ]
    )
    return 0


# --------------------------------------------------------------------------------------
# reid demo


def _register_demo(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "demo",
        help="run the whole pipeline on synthetic data and write an HTML report",
        description="Generate a labeled daylight source and an unlabeled night target "
        "(`reid synth`), start the service on its defaults in this process, upload both "
        "datasets over HTTP, run a short SpCL adaptation job (a few minutes on 2 CPU "
        "cores) while printing its progress, wait for its index, search a few target "
        "queries and write OUT/report.html (training curves, ranked results with correct "
        "matches marked). Prints the target mAP before and after adaptation. REID_* "
        "settings apply, except that the demo always uses its own SQLite database and data "
        "folder in OUT/service, the embedded worker and 127.0.0.1.",
        epilog="A rerun with the same --out starts over: it deletes the previous demo's "
        "data/, service/, report.html, summary.json and service.log there (only in a folder "
        "reid demo created, marked by OUT/.reid-demo; any other non-empty folder is refused).",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=Path("reid-demo"),
        help="output folder (default: ./reid-demo): report.html, summary.json, service.log, "
        "data/ (the synthetic datasets), service/ (the service's database and files)",
    )
    parser.add_argument(
        "--port", type=int, default=8000, help="service port on 127.0.0.1 (default 8000; 0: any)"
    )
    parser.add_argument(
        "--keep-running",
        action="store_true",
        help="after the report, keep the service up with the data loaded until Ctrl-C",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="a tiny dataset and 2 short epochs (well under 2 minutes; for CI, no quality)",
    )
    parser.add_argument("--epochs", type=int, default=None, help="training epochs (default 8)")
    parser.add_argument("--iters", type=int, default=None, help="iterations per epoch (default 16)")
    parser.add_argument(
        "--identities",
        type=int,
        default=None,
        help="people per synthetic dataset, half of them for training (default 120)",
    )
    parser.add_argument(
        "--queries", type=int, default=None, help="searches shown in the report (default 6)"
    )
    parser.add_argument("--seed", type=int, default=0, help="synthetic data seed (default 0)")
    parser.add_argument(
        "--device", default="auto", help="training device: auto, cpu or cuda[:N] (default auto)"
    )
    parser.set_defaults(func=run_demo_command)


def run_demo_command(args: argparse.Namespace) -> int:
    """``reid demo``: failures of the demo itself (a failed job, an HTTP error, an unusable
    --out) are one line on stderr and exit status 1; bad arguments or a busy port exit 2 like
    every subcommand; Ctrl-C stops the service cleanly (a running job is checkpointed) and
    exits 130."""
    from demo import DemoError, DemoOptions, run_demo

    for name, minimum in (("epochs", 1), ("iters", 1), ("identities", 4), ("queries", 1)):
        value = getattr(args, name)
        if value is not None and value < minimum:
            raise ValueError(f"--{name} must be >= {minimum}")
    if not 0 <= args.port <= 65535:
        raise ValueError("--port must be in 0..65535")
    options = DemoOptions(
        out=args.out,
        port=args.port,
        keep_running=args.keep_running,
        quick=args.quick,
        epochs=args.epochs,
        iters=args.iters,
        identities=args.identities,
        queries=args.queries,
        seed=args.seed,
        device=args.device,
    )
    try:
        return run_demo(options)
    except DemoError as exc:  # also the HTTP errors (ApiError)
        sys.stdout.flush()
        sys.stderr.write(f"reid demo: error: {exc}\n")
        return 1
    except KeyboardInterrupt:
        sys.stdout.flush()
        sys.stderr.write("reid demo: interrupted; the service was stopped\n")
        return 130


# --------------------------------------------------------------------------------------
# reid keys


def _register_keys(subparsers: argparse._SubParsersAction) -> None:
    from app.core.api_keys import SCOPES  # light: hashlib and secrets only

    parser = subparsers.add_parser(
        "keys",
        help="make API keys",
        description="`reid keys new` prints a fresh random API key (give it to the client) and "
        "its REID_API_KEYS entry, SCOPE=sha256:<hash> (give that to the service: it never "
        "needs the key itself).",
    )
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    new = actions.add_parser("new", help="print a new key and its REID_API_KEYS entry")
    new.add_argument(
        "--scope",
        choices=SCOPES,
        default="read",
        help="read: listings, images, downloads, search; write: also uploads, jobs, deletes; "
        "admin: everything (default: read)",
    )
    new.set_defaults(func=new_api_key)


def new_api_key(args: argparse.Namespace) -> int:
    from app.core.api_keys import new_key

    key, entry = new_key(args.scope)
    print(f"key:   {key}")
    print(f"entry: {entry}   (append to REID_API_KEYS, comma-separated)")
    return 0


_APP_SUBCOMMANDS: tuple[Register, ...] = (
    _register_serve,
    _register_db,
    _register_worker,
    _register_demo,
    _register_keys,
)


def build_parser() -> argparse.ArgumentParser:
    """The trainer's ``reid`` parser with the service's subcommands added."""
    return trainer_cli.build_parser(extra=_APP_SUBCOMMANDS)


def _user_error(exc: Exception) -> str | None:
    """A one-line message for errors the user can act on; ``None`` for real bugs."""
    from alembic.util import CommandError
    from sqlalchemy.exc import SQLAlchemyError

    if isinstance(exc, SQLAlchemyError):
        original = getattr(exc, "orig", None) or exc
        lines = str(original).strip().splitlines()
        return f"database error: {type(original).__name__}: {lines[0] if lines else ''}"
    if isinstance(exc, ValueError | OSError | CommandError):
        return str(exc)
    return None


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``reid`` script; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args))
    except Exception as exc:
        message = _user_error(exc)
        if message is None:
            raise
        # Same exit status and stream as argparse's own errors, without a traceback.
        parser.exit(2, f"reid {args.command}: error: {message}\n")


if __name__ == "__main__":
    sys.exit(main())
