"""Container health checks of docker-compose.yml: ``python docker/healthcheck.py api|worker``.

``api``: ``GET /health`` of the local server answers 200 (database reachable, data directory
writable). ``/health`` is open, so no API key is needed.

``worker``: the Celery node of this container answers a ping, or it is busy. A ``reid worker``
runs its task in the consumer's own thread (solo pool), so while it trains (hours) it cannot
answer a ping at all; busy therefore means: the database shows a running job held by this
host whose heartbeat is fresher than ``REID_HEARTBEAT_TIMEOUT_S`` (the heartbeat is written by
its own thread, and it is the liveness the reaper itself uses), or an index build this host
claimed less than ``REID_INDEX_CLAIM_TIMEOUT_S`` ago.

Exit status 0 when healthy, 1 otherwise, with one line on stdout (``docker inspect`` shows it).
"""

from __future__ import annotations

import argparse
import socket
import sys
import urllib.error
import urllib.request
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from app.core.settings import Settings

__all__ = ["check_api", "check_worker", "main", "node_answers", "worker_busy"]


def check_api(url: str, timeout: float) -> tuple[bool, str]:
    """``GET url``: healthy on a 2xx answer."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return True, f"{url}: {response.status}"
    except urllib.error.HTTPError as exc:  # 503: the body says which part failed
        body = exc.read(300).decode("utf-8", "replace")
        return False, f"{url}: {exc.code} {body}"
    except (OSError, ValueError) as exc:
        return False, f"{url}: {exc}"


def node_answers(settings: Settings, node: str, timeout: float) -> bool:
    """Whether Celery node ``node`` (``name@host``) answers a ping within ``timeout`` s."""
    from worker.celery_app import make_celery

    celery = make_celery(settings)
    try:
        replies = celery.control.ping(destination=[node], timeout=timeout)
    finally:
        celery.close()
    return any(node in reply for reply in replies or ())


def worker_busy(settings: Settings, host: str, now: datetime | None = None) -> str | None:
    """What this host holds, per the database: ``"job 7"`` / ``"index 3"``, or ``None``."""
    from sqlalchemy import select

    from app.core.db import create_db_engine
    from app.core.orm import Job, JobStatus, SearchIndex, SearchIndexStatus, utcnow

    now = now or utcnow()
    owner = f"{host}:"
    engine = create_db_engine(settings.effective_database_url)
    try:
        with engine.connect() as conn:
            jobs = conn.execute(
                select(Job.id, Job.heartbeat_at).where(
                    Job.status == JobStatus.RUNNING.value,
                    Job.worker.startswith(owner, autoescape=True),
                )
            ).all()
            indexes = conn.execute(
                select(SearchIndex.id, SearchIndex.claimed_at).where(
                    SearchIndex.status == SearchIndexStatus.BUILDING.value,
                    SearchIndex.worker.startswith(owner, autoescape=True),
                )
            ).all()
    finally:
        engine.dispose()
    job_limit = timedelta(seconds=settings.heartbeat_timeout_s)
    for job_id, beat in jobs:
        if beat is not None and now - beat < job_limit:
            return f"job {job_id}"
    index_limit = timedelta(seconds=settings.index_claim_timeout_s)
    for index_id, claimed in indexes:
        if claimed is not None and now - claimed < index_limit:
            return f"index {index_id}"
    return None


def check_worker(node_name: str, timeout: float) -> tuple[bool, str]:
    """Ping ``node_name@<this host>``; if it stays silent, ask the database whether it is busy."""
    from app.core.settings import load_settings

    settings = load_settings()
    host = socket.gethostname()
    node = f"{node_name}@{host}"
    try:
        if node_answers(settings, node, timeout):
            return True, f"{node}: pong"
        silent = f"{node}: no ping reply"
    except Exception as exc:  # broker down: the database may still show a job in progress
        silent = f"{node}: ping failed ({type(exc).__name__}: {exc})"
    try:
        busy = worker_busy(settings, host)
    except Exception as exc:
        return False, f"{silent}; database check failed ({type(exc).__name__}: {exc})"
    if busy:
        return True, f"{silent}, but busy with {busy} (fresh heartbeat)"
    return False, f"{silent} and no job or index build of this host is in progress"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    checks = parser.add_subparsers(dest="check", required=True)
    api = checks.add_parser("api", help="GET /health of the local API")
    api.add_argument("--url", default="http://127.0.0.1:8000/health")
    api.add_argument("--timeout", type=float, default=5.0)
    worker = checks.add_parser("worker", help="Celery ping, else a job in progress")
    worker.add_argument(
        "--node",
        default="reid-gpu0",
        help="node name before the @ (`reid worker --gpu N`: reid-gpuN; without --gpu: reid)",
    )
    worker.add_argument("--timeout", type=float, default=5.0, help="ping reply timeout (s)")
    args = parser.parse_args(argv)
    if args.check == "api":
        ok, message = check_api(args.url, args.timeout)
    else:
        ok, message = check_worker(args.node, args.timeout)
    print(message)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
