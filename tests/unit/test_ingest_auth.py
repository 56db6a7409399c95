"""Credentials, source address and kept headers of ingest (streams/ingest/auth.py): pure rules."""

from __future__ import annotations

import base64

import pytest

from streams import config
from streams.ingest import auth
from streams.ingest.auth import Credentials, authorised, basic_pair, kept_headers, source_address


def basic(pair: str) -> str:
    return "Basic " + base64.b64encode(pair.encode()).decode()


ROTATING = Credentials.of(config.load(environ={"ENX_INGEST_BASIC_AUTH": "enablex:old-pw, enablex:new-pw",
                                               "ENX_INGEST_TOKEN": "tok-a,tok-b"}))


@pytest.mark.parametrize("header, token, ok", [
    (basic("enablex:old-pw"), None, True),
    (basic("enablex:new-pw"), None, True),           # rotation: both pairs valid
    (basic("enablex:wrong"), None, False),
    (basic("other:new-pw"), None, False),
    (None, None, False),                              # missing
    ("Basic !!!not-base64", None, False),             # malformed
    (basic("no-colon"), None, False),
    ("Bearer tok-a", None, False),                    # another scheme
    ("Basic", None, False),
    (None, "tok-a", True), (None, "tok-b", True),     # tokens rotated
    (None, "tok-c", False), (None, "", False),
    (basic("enablex:wrong"), "tok-b", True),          # either kind suffices
])
def test_basic_and_tokens(header: str | None, token: str | None, ok: bool) -> None:
    assert authorised(ROTATING, header, token) is ok


def test_anonymous_and_basic_only() -> None:
    assert authorised(Credentials(), None, None)
    only_basic = Credentials(basic=(b"u:p",))
    assert not authorised(only_basic, None, "u:p") and authorised(only_basic, basic("u:p"), None)
    assert basic_pair("basic " + base64.b64encode(b"u:p:x").decode()) == b"u:p:x"  # a colon in the password


def test_every_candidate_compared(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[bytes] = []
    real = auth.hmac.compare_digest
    monkeypatch.setattr(auth.hmac, "compare_digest", lambda a, b: calls.append(b) or real(a, b))
    authorised(ROTATING, basic("enablex:old-pw"), "tok-a")  # the first candidates match: still no early exit
    assert calls == [b"enablex:old-pw", b"enablex:new-pw", b"tok-a", b"tok-b"]


TRUSTED = auth.trusted_networks(config.Settings(trusted_proxies="10.0.0.0/8, 192.0.2.1"))


@pytest.mark.parametrize("peer, xff, expected", [
    ("198.51.100.7", ["203.0.113.9"], "198.51.100.7"),            # untrusted peer: its XFF ignored
    ("10.1.2.3", ["203.0.113.9"], "203.0.113.9"),
    ("10.1.2.3", ["6.6.6.6, 203.0.113.9, 10.9.9.9"], "203.0.113.9"),  # right-most untrusted hop
    ("192.0.2.1", ["6.6.6.6", "203.0.113.9"], "203.0.113.9"),     # several headers
    ("10.1.2.3", [], "10.1.2.3"),
    ("10.1.2.3", ["10.2.2.2"], "10.2.2.2"),                       # all trusted: the first hop
])
def test_source_address(peer: str, xff: list[str], expected: str) -> None:
    assert source_address(peer, xff, TRUSTED) == expected
    assert source_address(peer, xff, ()) == peer


def test_kept_headers_are_an_allowlist() -> None:
    from multidict import CIMultiDict

    headers = CIMultiDict({"Content-Type": "application/json", "User-Agent": "EnableX", "Authorization": "Basic x",
                           "Cookie": "c=1", "X-Api-Key": "k", "X-Forwarded-For": "6.6.6.6, 1.2.3.4", "X-Anything": "y"})
    assert kept_headers(headers, "1.2.3.4") == {"content-type": "application/json", "user-agent": "EnableX",
                                                "x-forwarded-for": "1.2.3.4"}


@pytest.mark.parametrize("value", ["nocolonZq9", "userZq9:", ":pwZq9", "aZq9:b,,c:d"])
def test_malformed_basic_auth_is_a_settings_error(value: str) -> None:
    with pytest.raises(config.SettingsError, match="ENX_INGEST_BASIC_AUTH") as caught:
        config.load(environ={"ENX_INGEST_BASIC_AUTH": value})
    assert "Zq9" not in str(caught.value)  # the value itself is never echoed


def test_bad_trusted_proxies_is_a_settings_error() -> None:
    with pytest.raises(config.SettingsError, match="ENX_TRUSTED_PROXIES"):
        config.load(environ={"ENX_TRUSTED_PROXIES": "10.0.0.0/8,proxy.local"})


def test_basic_auth_masked() -> None:
    s = config.load(environ={"ENX_INGEST_BASIC_AUTH": "enablex:pw-hidden"})
    assert s.describe()["ENX_INGEST_BASIC_AUTH"] == "***" and "pw-hidden" not in repr(s) + str(s.describe())


def test_ingest_binds_loopback_and_refuses_anonymous_exposure() -> None:
    from streams.ingest.service import AnonymousRefused, check_exposure

    assert config.load(environ={}).ingest_host == "127.0.0.1"
    check_exposure(config.Settings(), allow_anonymous=False)
    open_to_all = config.Settings(ingest_host="0.0.0.0")
    with pytest.raises(AnonymousRefused, match="ENX_INGEST_BASIC_AUTH.*ENX_INGEST_TOKEN.*--allow-anonymous"):
        check_exposure(open_to_all, allow_anonymous=False)
    check_exposure(open_to_all, allow_anonymous=True)
    check_exposure(config.load(environ={"ENX_INGEST_HOST": "0.0.0.0", "ENX_INGEST_BASIC_AUTH": "u:p"}), False)
