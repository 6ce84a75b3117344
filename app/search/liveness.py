"""Deleted images never come back from ``/search``, whichever API process answers.

An index version holds the members of its dataset at the revision it was written; deleting
images bumps the dataset's revision and the worker syncs the index shortly after. Meanwhile
each search of an index behind its dataset checks its hits against the database (one primary
key look-up of at most ``offset + top_k`` ids): the rows of deleted members are masked in the
loaded index (so the next searches skip them inside FAISS) and the search runs again. From the
moment a delete commits, no process returns its images.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from app.core.orm import DatasetImage
from app.search.indexes import COL_MEMBER, LoadedIndex

__all__ = ["removed_rows"]


def removed_rows(
    factory: sessionmaker[Session], loaded: LoadedIndex, rows: Iterable[int]
) -> np.ndarray:
    """Of these rows of ``loaded``, those whose dataset member no longer exists."""
    rows = np.unique(np.fromiter(rows, np.int64))
    if rows.size == 0:
        return rows
    members = loaded.items[rows, COL_MEMBER]
    with factory() as session:
        query = select(DatasetImage.id).where(DatasetImage.id.in_(members.tolist()))
        present = np.fromiter(session.scalars(query), np.int64)
    return rows[~np.isin(members, present)]
