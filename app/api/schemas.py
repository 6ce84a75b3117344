"""Schemas every router shares: the error bodies, id bounds and the page of a listing."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Annotated, Any, Generic, TypeVar

from fastapi import Query
from pydantic import BaseModel
from sqlalchemy import ColumnElement, func, select
from sqlalchemy.orm import Session

__all__ = [
    "INVALID_INPUT",
    "MAX_ID",
    "MAX_LIMIT",
    "ErrorDetail",
    "FieldError",
    "Limit",
    "Offset",
    "Page",
    "ValidationErrorDetail",
    "paginate",
]

MAX_ID = 2**31 - 1  # ids and labels are 32-bit integers in the database
MAX_LIMIT = 500
T = TypeVar("T")


class ErrorDetail(BaseModel):
    """Every error response: one human-readable line."""

    detail: str


class FieldError(BaseModel):
    loc: str
    msg: str
    type: str | None = None


class ValidationErrorDetail(ErrorDetail):
    """422 for invalid input: ``detail`` plus one entry per invalid field."""

    errors: list[FieldError] = []


class Page(BaseModel, Generic[T]):
    items: list[T]
    total: int
    limit: int
    offset: int


Limit = Annotated[int, Query(ge=1, le=MAX_LIMIT, description="page size")]
Offset = Annotated[int, Query(ge=0, le=MAX_ID, description="items to skip")]

INVALID_INPUT: dict[str, Any] = {"model": ValidationErrorDetail, "description": "invalid input"}


def paginate(
    session: Session,
    entity: type[Any],
    conditions: Sequence[ColumnElement[bool]],
    order: ColumnElement[Any],
    limit: int,
    offset: int,
    item: Callable[[Any], T],
) -> Page[T]:
    """One page of ``entity`` rows matching ``conditions`` in ``order``, with the total."""
    total = session.scalar(select(func.count()).select_from(entity).where(*conditions)) or 0
    rows = session.scalars(
        select(entity).where(*conditions).order_by(order).limit(limit).offset(offset)
    )
    return Page[T](items=[item(row) for row in rows], total=total, limit=limit, offset=offset)
