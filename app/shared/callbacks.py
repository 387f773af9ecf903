"""Callbacks' rules, checked by the HTTP front at submit and by the broker before each attempt: who may
be called, and the signature every message carries.

Signing follows the Standard Webhooks convention (standardwebhooks.com): headers
`webhook-id` (the same on every retry of one message), `webhook-timestamp` (seconds
since the epoch, when this attempt was sent) and `webhook-signature: v1,<base64 of
HMAC-SHA256(key, "<id>.<timestamp>.<body>")>`, the key being the base64 part of the
job's `whsec_...` secret.

Who may be called: only hosts in FR_WEBHOOK_ALLOW (names, `*.domain` suffixes, IP
addresses or networks), and only at public addresses unless the address (or its
network) is listed too: every address a name resolves to is checked, at submit and
again before each attempt, and the connection goes to an address that was checked (a
name that resolves elsewhere a second later gains nothing). Redirects are not followed
(a 3xx is a failed attempt). The service cannot be made to call into the operator's
network by a client.

A URL is normalised before anything else reads it (`split_url`): its host in IDNA (ASCII, `xn--`
for a name with other letters), its path and query percent-encoded (UTF-8), its fragment dropped.
What is stored, shown and called is that ASCII form; a URL that cannot be put in it is refused at
submit (400 BAD_CALLBACK_URL). A `/café` path once reached the sender raw and killed it.

Delivery (the durable queue and its sender) is the broker's: app/broker/webhooks.py.
"""
from __future__ import annotations

import base64
import hashlib
import hmac
import ipaddress
import re
import secrets
import socket
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import quote, urlsplit

from constants import Settings, webhook_allow_entries

# characters kept as they are in a path or query: RFC 3986's unreserved and sub-delims, ':', '@', '/', '?' and '%'
# (an escape already made stays one)
_URL_SAFE = "/%:@!$&'()*+,;=-._~?"
_HOST_NAME = re.compile(r"(?:[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?\.)*[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?")
SECRET_PREFIX = "whsec_"  # noqa: S105 (the prefix of every secret, not one)
Address = ipaddress.IPv4Address | ipaddress.IPv6Address


class CallbackRefused(Exception):
    """A callback URL the service will not call; `code` for the API (400)."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code, self.message = code, message


# --- signing -----------------------------------------------------------------------------------
def new_secret() -> str:
    """A job's signing secret, as Standard Webhooks writes them: whsec_ + base64 of 32 random bytes."""
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(32)).decode()


def sign(secret: str, msg_id: str, timestamp: int, body: bytes) -> str:
    """The `webhook-signature` header: v1,<base64 HMAC-SHA256 of "<id>.<timestamp>.<body>">."""
    key = base64.b64decode(secret[len(SECRET_PREFIX):] if secret.startswith(SECRET_PREFIX) else secret)
    mac = hmac.new(key, f"{msg_id}.{timestamp}.".encode() + body, hashlib.sha256).digest()
    return "v1," + base64.b64encode(mac).decode()


def signed_headers(secret: str, msg_id: str, timestamp: int, body: bytes) -> dict[str, str]:
    return {"content-type": "application/json", "webhook-id": msg_id, "webhook-timestamp": str(timestamp),
            "webhook-signature": sign(secret, msg_id, timestamp, body),
            "user-agent": "api-facial-recognition webhook"}


# --- who may be called -------------------------------------------------------------------------
@dataclass(frozen=True)
class AllowList:
    """FR_WEBHOOK_ALLOW: host names, `*.domain` (any name below it), IP addresses and networks."""
    names: frozenset[str]
    suffixes: tuple[str, ...]
    networks: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]

    @classmethod
    def parse(cls, raw: str) -> AllowList:
        names, suffixes, networks = set(), [], []
        for entry in webhook_allow_entries(raw):
            try:
                networks.append(ipaddress.ip_network(entry, strict=False))
                continue
            except ValueError:
                pass
            if entry.startswith("*."):  # names are ASCII (a name in other letters: its xn-- form, as split_url's)
                suffixes.append(entry[1:])
            else:
                names.add(entry)
        return cls(frozenset(names), tuple(suffixes), tuple(networks))

    def listed(self, address: Address) -> bool:
        return any(address.version == n.version and address in n for n in self.networks)

    def host_allowed(self, host: str) -> bool:
        address = ip_or_none(host)
        if address is not None:
            return self.listed(address)
        return host in self.names or any(host.endswith(s) for s in self.suffixes)

    def address_allowed(self, address: Address) -> bool:
        """A public address, or one the operator listed (a private, loopback or link-local address must be).
        An IPv6 address that carries an IPv4 one (mapped, compatible, NAT64, 6to4) is judged by that one too:
        `64:ff9b::7f00:1` or `::7f00:1` reach 127.0.0.1 where a NAT64 gateway or an old stack translates."""
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        if self.listed(address):
            return True
        inner = embedded_ipv4(address)
        if inner is not None and not (self.listed(inner) or (inner.is_global and not inner.is_multicast)):
            return False
        if isinstance(address, ipaddress.IPv6Address) and address.is_site_local:  # fec0::/10, deprecated
            return False
        return address.is_global and not address.is_multicast


_NAT64 = (ipaddress.ip_network("64:ff9b::/96"), ipaddress.ip_network("64:ff9b:1::/48"))
_COMPATIBLE = (ipaddress.ip_network("::/96"), ipaddress.ip_network("::ffff:0:0:0/96"))  # RFC 4291 2.5.5.1, SIIT


def embedded_ipv4(address: Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 one carries (its last 32 bits in NAT64, IPv4-compatible and SIIT forms;
    6to4's), or None."""
    if not isinstance(address, ipaddress.IPv6Address):
        return None
    if address.sixtofour is not None:
        return address.sixtofour
    if int(address) > 1 and any(address in n for n in _NAT64 + _COMPATIBLE):  # (:: and ::1 are themselves)
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    return None


def ip_or_none(host: str) -> Address | None:
    try:
        return ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return None


def resolve(host: str, port: int) -> list[Address]:
    """Every address `host` resolves to (an IP literal: itself)."""
    literal = ip_or_none(host)
    if literal is not None:
        return [literal]
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError) as exc:
        raise CallbackRefused("CALLBACK_UNRESOLVABLE", f"the callback host {host!r} does not resolve ({exc})") from None
    out: list[Address] = []
    for info in infos:
        address = ipaddress.ip_address(str(info[4][0]).split("%", 1)[0])
        if address not in out:
            out.append(address)
    return out


def split_url(url: str) -> tuple[str, str, int, str]:
    """-> (scheme, host, port, path with query) of an http(s) URL without credentials, normalised (the host
    lower-case in IDNA, the path and query percent-encoded: all ASCII), or CallbackRefused."""
    if not isinstance(url, str) or not url or len(url) > 2048 or any(ord(c) < 33 or 127 <= ord(c) < 160 or
                                                                     "\ud800" <= c <= "\udfff" for c in url):
        raise CallbackRefused("BAD_CALLBACK_URL", "callback_url must be an http or https URL of at most 2048 "
                              "characters, without spaces or control characters")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise CallbackRefused("BAD_CALLBACK_URL", f"callback_url is not a URL ({exc})") from None
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https") or not parts.hostname:
        raise CallbackRefused("BAD_CALLBACK_URL", "callback_url must be an http:// or https:// URL with a host")
    if parts.username is not None or parts.password is not None:
        raise CallbackRefused("BAD_CALLBACK_URL", "callback_url must not carry credentials (user:password@)")
    if port == 0:  # not a port one can call; `port or default` below would have called 80 (443) instead
        raise CallbackRefused("BAD_CALLBACK_URL", "callback_url's port must be 1-65535")
    path = quote(parts.path or "/", safe=_URL_SAFE) + (f"?{quote(parts.query, safe=_URL_SAFE)}" if parts.query
                                                         else "")
    return scheme, ascii_host(parts.hostname), port or (443 if scheme == "https" else 80), path


def ascii_host(host: str) -> str:
    """A URL's host, lower-case and without a trailing dot, in IDNA (`café.example` -> `xn--caf-dma.example`);
    an IP literal as it is. CallbackRefused for a name that is not one once encoded (letters, digits, '-', '_')."""
    host = host.lower().rstrip(".")
    if ip_or_none(host) is not None:
        return host
    try:
        encoded = host if host.isascii() else host.encode("idna").decode("ascii")
    except UnicodeError:
        encoded = ""
    if not _HOST_NAME.fullmatch(encoded):
        raise CallbackRefused("BAD_CALLBACK_URL", f"the callback host {host[:100]!r} is not a host name")
    return encoded


def normalise_url(url: str) -> str:
    """The URL as the service stores, shows and calls it: `split_url`'s parts put back together."""
    scheme, host, port, path = split_url(url)
    shown_host = f"[{host}]" if ":" in host else host
    default = port == (443 if scheme == "https" else 80)
    return f"{scheme}://{shown_host}{'' if default else f':{port}'}{path}"


def check_url(url: str, allow: AllowList, resolver: Callable[[str, int], list[Address]] = resolve
              ) -> list[Address]:
    """The addresses a callback URL may be reached at, every one of them allowed; CallbackRefused otherwise."""
    _, host, port, _ = split_url(url)
    if not allow.host_allowed(host):
        raise CallbackRefused("CALLBACK_NOT_ALLOWED", f"callbacks to {host!r} are not allowed: the operator lists "
                              "the hosts the service may call in FR_WEBHOOK_ALLOW")
    addresses = resolver(host, port)
    refused = [str(a) for a in addresses if not allow.address_allowed(a)]
    if refused or not addresses:
        raise CallbackRefused("CALLBACK_NOT_ALLOWED", f"{host!r} resolves to {', '.join(refused) or 'nothing'}: a "
                              "private, loopback or reserved address that FR_WEBHOOK_ALLOW does not list")
    return addresses


def callback_for(raw: str | None, settings: Settings) -> dict | None:
    """The front's check of a build's `callback_url` -> {url, secret} (a new secret), None when not given.
    Raises CallbackRefused."""
    if raw is None or raw == "":
        return None
    url = normalise_url(raw)
    check_url(url, AllowList.parse(settings.webhook_allow))
    return {"url": url, "secret": new_secret()}
