"""Who may post, and from where: Basic credentials, path tokens, the source address, kept headers. Pure.

- Credentials: any of the configured ``user:password`` pairs (``ENX_INGEST_BASIC_AUTH``) in an
  ``Authorization: Basic`` header, or any configured token (``ENX_INGEST_TOKEN``) as the path's last part.
  Every candidate is compared with ``hmac.compare_digest`` (no early exit: the time does not say which
  one matched or how far). A malformed header is simply not a credential.
- Source address: the peer, or, when the peer is a trusted proxy (``ENX_TRUSTED_PROXIES``), the
  right-most ``X-Forwarded-For`` hop that is not itself trusted.
- Headers kept with a dead letter: an allowlist of harmless ones, never credentials.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import ipaddress
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from streams.config import Settings, split_list

KEPT_HEADERS = ("content-type", "content-length", "content-encoding", "user-agent", "accept", "host",
                "x-request-id", "x-real-ip", "via")
REALM = 'Basic realm="enx-streams"'
Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True)
class Credentials:
    """What ingest accepts; empty tuples on both sides mean anonymous."""

    basic: tuple[bytes, ...] = ()  # each b"user:password"
    tokens: tuple[bytes, ...] = ()

    @classmethod
    def of(cls, settings: Settings) -> Credentials:
        def items(secret: object) -> tuple[bytes, ...]:
            return tuple(t.encode() for t in split_list(secret.reveal() if secret else None))  # type: ignore[attr-defined]

        return cls(basic=items(settings.ingest_basic_auth), tokens=items(settings.ingest_token))

    @property
    def anonymous(self) -> bool:
        return not self.basic and not self.tokens

    def what_to_send(self) -> str:
        ways = []
        if self.basic:
            ways.append("HTTP Basic credentials matching ENX_INGEST_BASIC_AUTH (EnableX: HTTP Authentication)")
        if self.tokens:
            ways.append("a token of ENX_INGEST_TOKEN as /webhooks/enablex/{token}")
        return "missing or wrong credentials: send " + " or ".join(ways)


def _any_equal(given: bytes, candidates: Iterable[bytes]) -> bool:
    found = False
    for candidate in candidates:
        found |= hmac.compare_digest(given, candidate)  # every candidate compared: no early exit
    return found


def basic_pair(header: str | None) -> bytes | None:
    """``user:password`` from an ``Authorization: Basic ...`` header; None for anything else or malformed."""
    if not header:
        return None
    scheme, _, value = header.strip().partition(" ")
    if scheme.lower() != "basic" or not value.strip():
        return None
    try:
        pair = base64.b64decode(value.strip(), validate=True)
    except (binascii.Error, ValueError):
        return None
    return pair if b":" in pair else None


def authorised(creds: Credentials, authorization: str | None, token: str | None) -> bool:
    """True for anonymous ingest, a valid Basic pair, or a valid path token (either suffices)."""
    if creds.anonymous:
        return True
    pair = basic_pair(authorization)
    by_basic = _any_equal(pair if pair is not None else b"", creds.basic) if creds.basic else False
    by_token = _any_equal((token or "").encode(), creds.tokens) if creds.tokens else False
    return (by_basic and pair is not None) or (by_token and bool(token))


def trusted_networks(settings: Settings) -> tuple[Network, ...]:
    return tuple(ipaddress.ip_network(t, strict=False) for t in split_list(settings.trusted_proxies))


def _is_trusted(address: str, trusted: tuple[Network, ...]) -> bool:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(ip in net for net in trusted)


def source_address(peer: str | None, forwarded_for: Iterable[str], trusted: tuple[Network, ...]) -> str | None:
    """The peer, unless it is a trusted proxy: then the right-most untrusted hop of X-Forwarded-For."""
    if peer is None or not _is_trusted(peer, trusted):
        return peer
    hops = [h.strip() for value in forwarded_for for h in value.split(",") if h.strip()]
    for hop in reversed(hops):
        if not _is_trusted(hop, trusted):
            return hop
    return hops[0] if hops else peer


def kept_headers(headers: Mapping[str, str], source: str | None) -> dict[str, str]:
    """The allowlisted headers, and x-forwarded-for as resolved (the source address)."""
    out = {name: value for name, value in ((n, headers.get(n)) for n in KEPT_HEADERS) if value is not None}
    if source is not None and headers.get("x-forwarded-for") is not None:
        out["x-forwarded-for"] = source
    return out


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
