"""EnableX's Server API, the two routes the reconciler reads: archive and CDR, by period and optionally room.

``GET {base}archive/period/{from}/{to}``, ``archive/room/{room_id}/period/{from}/{to}``, ``cdr/period/...``,
``cdr/room/{room_id}/period/...`` (dates ``YYYY-MM-DD``, UTC), HTTP Basic ``APP_ID:APP_KEY``. A success is
``{"result": 0, "archive": [...]}`` (or ``"cdr"``); anything else carries a non-zero ``result`` and an error.

- 5xx, 429 (its ``Retry-After`` honoured), timeouts and connection errors are retried with capped
  exponential backoff; the sleep and the clock are injectable.
- 401/403 and a non-zero ``result`` are not retried: :class:`EnableXError` says what is wrong and what to
  do (check ENX_ENABLEX_APP_ID / ENX_ENABLEX_APP_KEY; EnableX's own error is quoted).
- The key only ever goes into the ``Authorization`` header: no message or log line holds it.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import email.utils
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import quote

import aiohttp

log = logging.getLogger("streams.reconcile")

DEFAULT_BASE_URL = "https://api.enablex.io/video/v2/"
RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})


class EnableXError(RuntimeError):
    """The Server API could not be read; the message says why and what to do next (never the key)."""


class EnableXAuthError(EnableXError):
    """EnableX refused the credentials (401) or the route (403)."""


def backoff(attempt: int, initial_s: float, max_s: float) -> float:
    """The delay before retry ``attempt`` (1-based): ``initial_s`` doubling, capped at ``max_s``. Pure."""
    return min(max_s, initial_s * (2 ** (attempt - 1)))


def retry_after_s(value: str | None, now: float) -> float | None:
    """Seconds asked by a ``Retry-After`` header (delta-seconds or an HTTP date); None when absent or unreadable."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.timezone.utc)
    return max(0.0, when.timestamp() - now)


def route(kind: str, since: dt.date, until: dt.date, room_id: str | None = None) -> str:
    """The path under the base URL: ``archive/period/2024-05-01/2024-05-02`` or ``cdr/room/R/period/...``."""
    if kind not in ("archive", "cdr"):
        raise ValueError(f"unknown Server API route {kind!r}")
    period = f"period/{since.isoformat()}/{until.isoformat()}"
    return f"{kind}/room/{quote(room_id, safe='')}/{period}" if room_id else f"{kind}/{period}"


class EnableXClient:
    """Reads the archive and CDR routes; one aiohttp session, closed by :meth:`close` (or ``async with``)."""

    def __init__(self, base_url: str, app_id: str, app_key: str, *, timeout_s: float = 30.0,
                 max_attempts: int = 6, backoff_initial_s: float = 1.0, backoff_max_s: float = 60.0,
                 retry_after_max_s: float = 300.0,
                 sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep,
                 clock: Callable[[], float] = time.time) -> None:
        if not app_id or not app_key:
            raise EnableXError("no EnableX credentials: set ENX_ENABLEX_APP_ID and ENX_ENABLEX_APP_KEY (the APP_ID "
                               "and APP_KEY of your EnableX project, from the EnableX portal)")
        self.base_url = base_url if base_url.endswith("/") else base_url + "/"
        self._authorization = aiohttp.encode_basic_auth(app_id, app_key)
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        self.max_attempts = max(1, max_attempts)
        self.backoff_initial_s = backoff_initial_s
        self.backoff_max_s = backoff_max_s
        self.retry_after_max_s = retry_after_max_s
        self._sleep = sleep
        self._clock = clock
        self._session: aiohttp.ClientSession | None = None
        self.requests = 0
        self.retries = 0

    async def __aenter__(self) -> EnableXClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def archive(self, since: dt.date, until: dt.date, room_id: str | None = None) -> list[dict[str, Any]]:
        """The archive entries of the period (both days included), of one room when ``room_id`` is given."""
        return await self._list("archive", since, until, room_id)

    async def cdr(self, since: dt.date, until: dt.date, room_id: str | None = None) -> list[dict[str, Any]]:
        """The CDR rows (one per participant connection) of the period, of one room when ``room_id`` is given."""
        return await self._list("cdr", since, until, room_id)

    async def _list(self, kind: str, since: dt.date, until: dt.date, room_id: str | None) -> list[dict[str, Any]]:
        path = route(kind, since, until, room_id)
        body = await self._get(path)
        if not isinstance(body, dict):
            raise EnableXError(f"EnableX's {path} answered {type(body).__name__}, not a JSON object; is "
                               f"ENX_ENABLEX_API_URL ({self.base_url}) the Server API?")
        result = body.get("result")
        if result not in (0, "0"):
            error = body.get("error") or body.get("desc") or body.get("message") or "no error given"
            desc = body.get("desc") if body.get("error") and body.get("desc") else None
            quoted = f"{error!s}" + (f" ({desc!s})" if desc else "")
            raise EnableXError(f"EnableX refused {path}: result {result!r}, error {quoted!r}. Check the dates, "
                               f"the room id and that the project's Server API access is enabled")
        items = body.get(kind) or []
        if not isinstance(items, list):
            raise EnableXError(f"EnableX's {path} gave {kind!r} as {type(items).__name__}, not a list")
        return [item for item in items if isinstance(item, dict)]

    async def _get(self, path: str) -> Any:
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=self._timeout, headers={
                "Accept": "application/json", "Authorization": self._authorization})
        url = self.base_url + path
        last = ""
        for attempt in range(1, self.max_attempts + 1):
            self.requests += 1
            delay: float | None = None
            try:
                async with self._session.get(url) as response:
                    status = response.status
                    if status in (401, 403):
                        what = "refused the credentials (401)" if status == 401 else "forbade the route (403)"
                        raise EnableXAuthError(
                            f"EnableX {what} for {path}: check ENX_ENABLEX_APP_ID and ENX_ENABLEX_APP_KEY (the "
                            f"project's APP_ID and APP_KEY in the EnableX portal) and that ENX_ENABLEX_API_URL "
                            f"({self.base_url}) is right")
                    if status in RETRY_STATUSES:
                        text = (await response.text(errors="replace"))[:200]
                        last = f"HTTP {status} {text.strip()}".strip()
                        if status == 429:
                            asked = retry_after_s(response.headers.get("Retry-After"), self._clock())
                            if asked is not None:
                                delay = min(asked, self.retry_after_max_s)
                    elif status >= 400:
                        text = (await response.text(errors="replace"))[:300].strip()
                        try:
                            body = await response.json(content_type=None)
                        except ValueError:
                            body = None
                        if isinstance(body, dict) and "result" in body:
                            return body  # a non-zero result with its error: said by _list
                        raise EnableXError(f"EnableX answered HTTP {status} for {path}: {text or 'no body'}")
                    else:
                        try:
                            return await response.json(content_type=None)
                        except ValueError:
                            raise EnableXError(f"EnableX's {path} did not answer JSON (HTTP {status}); is "
                                               f"ENX_ENABLEX_API_URL ({self.base_url}) the Server API?") from None
            except EnableXError:
                raise
            except asyncio.TimeoutError:
                last = f"no answer within {self._timeout.total:.0f} s"
            except aiohttp.ClientError as exc:
                last = f"{type(exc).__name__}: {exc}"
            if attempt == self.max_attempts:
                break
            if delay is None:
                delay = backoff(attempt, self.backoff_initial_s, self.backoff_max_s)
            self.retries += 1
            log.warning("EnableX %s: %s; retry %d of %d in %.1f s", path, last, attempt, self.max_attempts - 1, delay)
            await self._sleep(delay)
        raise EnableXError(f"EnableX's {path} failed {self.max_attempts} times (last: {last}); it may be down or "
                           f"rate-limiting: the next pass tries again")
