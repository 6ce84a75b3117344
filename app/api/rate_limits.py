"""Per-client rate limits on the expensive routes (``POST /search``, uploads and appends):
429 with ``Retry-After`` past ``REID_SEARCH_RATE_PER_MINUTE`` / ``REID_UPLOAD_RATE_PER_MINUTE``.

A token bucket per client and route kind: a client may burst up to a minute's allowance, then
gets one request per ``60 / rate`` seconds. The client is the API key it presents (hashed; the
key itself is never kept), or its address when auth is off. Buckets live in each API process
(bounded LRU), so with N ``reid serve`` processes behind a balancer a client may get up to N
times the rate: a shared (Redis) limiter is not built.
"""

from __future__ import annotations

import hashlib
import math
import threading
import time
from collections import OrderedDict
from typing import Annotated

from fastapi import Depends, HTTPException, Request

from app.api.deps import AppSettings

__all__ = ["RateLimiter", "SearchRateLimit", "UploadRateLimit"]

MAX_CLIENTS = 10_000  # buckets kept per process; the least recently seen go first


class RateLimiter:
    """Token buckets by (kind, client); thread-safe."""

    def __init__(self, clock: object = time.monotonic) -> None:
        self._clock = clock
        self._buckets: OrderedDict[tuple[str, str], tuple[float, float]] = OrderedDict()
        self._lock = threading.Lock()

    def take(self, kind: str, client: str, per_minute: int) -> float:
        """Spend one token; returns 0 when allowed, else the seconds until the next one."""
        now = self._clock()  # type: ignore[operator]
        rate = per_minute / 60.0
        with self._lock:
            tokens, seen = self._buckets.pop((kind, client), (float(per_minute), now))
            tokens = min(float(per_minute), tokens + (now - seen) * rate)
            wait = 0.0
            if tokens >= 1.0:
                tokens -= 1.0
            else:
                wait = (1.0 - tokens) / rate
            self._buckets[(kind, client)] = (tokens, now)
            while len(self._buckets) > MAX_CLIENTS:
                self._buckets.popitem(last=False)
        return wait


def _client(request: Request) -> str:
    key = request.headers.get("x-api-key") or request.headers.get("authorization", "")
    if key:
        return "key:" + hashlib.sha256(key.removeprefix("Bearer ").encode()).hexdigest()
    return "addr:" + (request.client.host if request.client else "unknown")


def _limit(kind: str, per_minute: int, request: Request) -> None:
    if per_minute <= 0:
        return
    limiter: RateLimiter = request.app.state.rate_limiter
    wait = limiter.take(kind, _client(request), per_minute)
    if wait > 0:
        raise HTTPException(
            status_code=429,
            detail=f"rate limit of {per_minute} {kind} requests per minute reached; "
            f"retry in {math.ceil(wait)} s",
            headers={"Retry-After": str(math.ceil(wait))},
        )


def _search_limit(request: Request, settings: AppSettings) -> None:
    _limit("search", settings.search_rate_per_minute, request)


def _upload_limit(request: Request, settings: AppSettings) -> None:
    _limit("upload", settings.upload_rate_per_minute, request)


SearchRateLimit = Annotated[None, Depends(_search_limit)]
UploadRateLimit = Annotated[None, Depends(_upload_limit)]
