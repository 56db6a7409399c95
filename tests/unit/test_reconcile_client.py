"""The Server API client against the local stand-in for EnableX (tests/enablex_api.py): real HTTP."""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Iterator

import pytest

from streams.reconcile.client import (EnableXAuthError, EnableXClient, EnableXError, backoff, retry_after_s,
                                      route)
from tests.enablex_api import FakeEnableX

D1, D2 = dt.date(2024, 5, 1), dt.date(2024, 5, 2)
ENTRY = {"_id": "a1", "trans_date": "2024-05-01 10:00:00", "conf_num": "c1", "app_id": "test-app",
         "room_id": "r1", "recording": [{"url": "https://x/r.mkv"}], "transcoded": [{"url": "https://x/c.mp4"}],
         "chatdata": "https://x/chat.json", "metadata": "https://x/m.json"}
ROW = {"trans_date": "2024-05-02T09:00:00Z", "conf_num": "c2", "app_id": "test-app", "cdr_id": "d1",
       "room": {"room_id": "r2", "connect_dt": "2024-05-02T08:00:00Z", "disconnect_dt": "2024-05-02T09:00:00Z",
                "duration": 3600}}


@pytest.fixture
def api() -> Iterator[FakeEnableX]:
    with FakeEnableX() as fake:
        fake.archive.append(ENTRY)
        fake.cdr.append(ROW)
        yield fake


class Sleeps:
    def __init__(self) -> None:
        self.calls: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.calls.append(seconds)


def client(api: FakeEnableX, key: str = "test-key", **kw) -> EnableXClient:
    kw.setdefault("sleep", Sleeps())
    return EnableXClient(api.url, "test-app", key, **kw)


def test_routes_and_backoff_are_the_documented_ones() -> None:
    assert route("archive", D1, D2) == "archive/period/2024-05-01/2024-05-02"
    assert route("cdr", D1, D1, "room 1/x") == "cdr/room/room%201%2Fx/period/2024-05-01/2024-05-01"
    assert [backoff(a, 1, 10) for a in range(1, 6)] == [1, 2, 4, 8, 10]
    assert retry_after_s("7", 0) == 7 and retry_after_s(None, 0) is None and retry_after_s("soon", 0) is None
    assert retry_after_s("Thu, 01 Jan 1970 00:01:40 GMT", 40.0) == 60.0


async def test_reads_both_routes_by_period_and_room(api: FakeEnableX) -> None:
    async with client(api) as c:
        assert await c.archive(D1, D2) == [ENTRY]
        assert await c.cdr(D1, D2) == [ROW]
        assert await c.cdr(D1, D1) == []  # an empty day
        assert await c.archive(D1, D2, "r1") == [ENTRY] and await c.archive(D1, D2, "other") == []
        assert await c.cdr(D2, D2, "r2") == [ROW]
    assert api.requests[-1] == "/video/v2/cdr/room/r2/period/2024-05-02/2024-05-02"


async def test_wrong_credentials_say_which_settings_to_check_and_never_show_the_key(
        api: FakeEnableX, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    async with client(api, key="wrong-secret-key") as c:
        with pytest.raises(EnableXAuthError, match=r"401.*ENX_ENABLEX_APP_ID and ENX_ENABLEX_APP_KEY") as err:
            await c.archive(D1, D2)
    assert "wrong-secret-key" not in str(err.value) and "wrong-secret-key" not in caplog.text
    assert len(api.requests) == 1  # not retried


async def test_403_is_not_retried(api: FakeEnableX) -> None:
    api.then(403, {"result": 403, "error": "Forbidden"})
    async with client(api) as c:
        with pytest.raises(EnableXAuthError, match="403.*ENX_ENABLEX_APP_KEY"):
            await c.cdr(D1, D2)
    assert len(api.requests) == 1


async def test_a_non_zero_result_quotes_enablex_s_error(api: FakeEnableX) -> None:
    api.then(200, {"result": 1, "error": "Invalid date range", "desc": "to before from"})
    async with client(api) as c:
        with pytest.raises(EnableXError, match=r"result 1, error 'Invalid date range \(to before from\)'"):
            await c.archive(D1, D2)
    api.then(400, {"result": 1102, "error": "Room not found"})
    async with client(api) as c:
        with pytest.raises(EnableXError, match="result 1102, error 'Room not found'"):
            await c.archive(D1, D2, "nope")


async def test_429_honours_retry_after_and_5xx_back_off(api: FakeEnableX) -> None:
    api.then(429, {"result": 429, "error": "Too Many Requests"}, headers={"Retry-After": "7"})
    api.then(503, {"result": 503, "error": "down"}).then(500, b"<html>oops</html>")
    sleeps = Sleeps()
    async with client(api, sleep=sleeps, backoff_initial_s=0.5) as c:
        assert await c.archive(D1, D2) == [ENTRY]
        assert c.retries == 3
    assert sleeps.calls == [7.0, 1.0, 2.0]
    assert len(api.requests) == 4


async def test_timeouts_are_retried_and_give_up_clearly(api: FakeEnableX) -> None:
    api.then(200, {"result": 0, "archive": []}, delay_s=1.0)
    sleeps = Sleeps()
    async with client(api, sleep=sleeps, timeout_s=0.3) as c:
        assert await c.archive(D1, D2) == [ENTRY]
    assert len(sleeps.calls) == 1
    api.then(502, {}, times=3)
    async with client(api, max_attempts=3) as c:
        with pytest.raises(EnableXError, match=r"failed 3 times \(last: HTTP 502.*the next pass tries again"):
            await c.cdr(D1, D2)


async def test_connection_refused_is_retried_then_said(api: FakeEnableX) -> None:
    sleeps = Sleeps()
    c = EnableXClient("http://127.0.0.1:9/video/v2", "a", "k", sleep=sleeps, max_attempts=2)
    async with c:
        with pytest.raises(EnableXError, match="failed 2 times"):
            await c.archive(D1, D2)
    assert sleeps.calls == [1.0]


def test_missing_credentials_are_refused_before_any_request() -> None:
    with pytest.raises(EnableXError, match="set ENX_ENABLEX_APP_ID and ENX_ENABLEX_APP_KEY"):
        EnableXClient("http://x/", "", "k")


async def test_an_answer_that_is_not_the_server_api_is_said(api: FakeEnableX) -> None:
    api.then(200, b"<html>login</html>")
    async with client(api) as c:
        with pytest.raises(EnableXError, match="did not answer JSON.*ENX_ENABLEX_API_URL"):
            await c.archive(D1, D2)
