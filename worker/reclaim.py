"""Work whose worker died, put back: the one rule both profiles run before taking work.

A running job whose heartbeat lapsed is requeued (it resumes from its checkpoint) or failed
once it used ``max_attempts`` starts (:func:`app.jobs.state.reap_lapsed`); an index build
whose claim lapsed is unclaimed (:func:`app.search.indexes.release_lapsed_claims`). Both are
conditional updates, so any number of workers may run this at once. Then the images deleted
while a reader might still open them are collected (:func:`app.datasets.orphans.collect_orphans`).
"""

from __future__ import annotations

import logging

from sqlalchemy.orm import Session, sessionmaker

from app.core.settings import Settings
from app.core.storage import StorageLayout
from app.datasets.orphans import collect_orphans
from app.jobs.state import reap_lapsed
from app.search.indexes import release_lapsed_claims

__all__ = ["reclaim_lost_work"]

logger = logging.getLogger(__name__)


def reclaim_lost_work(factory: sessionmaker[Session], settings: Settings) -> list[int]:
    """One pass (logged); returns the ids of the jobs requeued because their worker was lost."""
    requeued, failed = reap_lapsed(factory, settings.heartbeat_timeout_s, settings.max_attempts)
    if failed:
        logger.warning("reaper: jobs %s failed after %d attempts", failed, settings.max_attempts)
    for job_id in requeued:
        logger.warning("reaper: job %d lost its worker; queued again", job_id)
    with factory() as session:
        if released := release_lapsed_claims(session, settings.index_claim_timeout_s):
            logger.warning("reaper: %d index builds lost their worker; queued again", released)
    collect_orphans(factory, StorageLayout(settings.data_dir))
    return requeued
