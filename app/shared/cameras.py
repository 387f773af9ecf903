"""A camera's URL: what the service accepts, who it may reach, and how it is shown without its secrets.

Checked by the HTTP front when a camera is added and by the worker before each connection (a name that
resolves elsewhere later is caught on the next connection): `rtsp://` and `rtsps://` streams, `http(s)://`
MJPEG streams or snapshot URLs. A public address is always allowed; a private, loopback, link-local or
reserved one only when FR_CAMERA_ALLOW lists its address, network or host name (a home camera sits at
192.168.x.y: the operator says so once, as for callbacks' FR_WEBHOOK_ALLOW). No client can make the
service reach into the operator's network otherwise.

Credentials (`user:password@`, and query parameters named like a password, token or key) are needed to
connect, so the broker stores the URL as given; what is logged or answered is `redact(url)`, and any text
that may quote the URL (an exception's message) passes through `scrub(text, url)` first.
"""
from __future__ import annotations

import re
from collections.abc import Callable
from urllib.parse import parse_qsl, quote, unquote, urlsplit

from app.shared.callbacks import Address, AllowList, CallbackRefused, ascii_host, resolve

SCHEMES = {"rtsp": 554, "rtsps": 322, "http": 80, "https": 443}
MAX_CAMERA_URL = 2048
# query parameters that carry a secret in the URLs of common IP cameras (?user=admin&pwd=..., ?token=...)
_SECRET_PARAM = re.compile(r"(pass|pwd|token|key|secret|auth|sig|user|usr|login|account|session)", re.I)
REDACTED = "***"
# characters that URL parsers read differently: urllib3 (which requests connects with) ends the host at a
# backslash where urlsplit (which the check reads) does not, so `http://127.0.0.1\@8.8.8.8/` was checked as
# 8.8.8.8 and fetched from 127.0.0.1. A camera URL needs none of them unescaped.
_AMBIGUOUS = frozenset('\\"<>^`{|}')


class CameraRefused(Exception):
    """A camera URL the service will not use; `code` for the API (400)."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code, self.message = code, message


def _parts(url: str):
    if not isinstance(url, str) or not url or len(url) > MAX_CAMERA_URL or any(
            ord(c) < 33 or 127 <= ord(c) < 160 or c in _AMBIGUOUS for c in url):
        raise CameraRefused("BAD_CAMERA_URL", f"url must be an rtsp://, rtsps://, http:// or https:// URL of at most "
                            f"{MAX_CAMERA_URL} characters, without spaces, control characters, backslashes or "
                            "characters URLs must escape")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise CameraRefused("BAD_CAMERA_URL", f"url is not a URL ({_first_line(exc)})") from None
    scheme = parts.scheme.lower()
    if scheme not in SCHEMES or not parts.hostname:
        raise CameraRefused("BAD_CAMERA_URL", "url must be an rtsp://, rtsps://, http:// or https:// URL with a host")
    if port == 0:
        raise CameraRefused("BAD_CAMERA_URL", "url's port must be 1-65535")
    return parts, scheme, port or SCHEMES[scheme]


def _first_line(exc: Exception) -> str:
    return str(exc).splitlines()[0][:100] if str(exc) else type(exc).__name__


def host_port(url: str) -> tuple[str, str, int]:
    """-> (scheme, host in IDNA, port) of a camera URL, or CameraRefused."""
    parts, scheme, port = _parts(url)
    try:
        host = ascii_host(parts.hostname or "")
    except CallbackRefused:
        raise CameraRefused("BAD_CAMERA_URL", "url's host is not a host name") from None
    return scheme, host, port


def secrets_of(url: str) -> list[str]:
    """The parts of a URL that must never be shown: the user name, the password, and the values of query
    parameters named like a secret; each raw and percent-decoded (longest first, so a longer one is replaced
    whole)."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return [url]  # cannot tell its parts: hide all of it
    found: set[str] = set()
    userinfo = parts.netloc.rpartition("@")[0] if "@" in parts.netloc else ""
    for piece in userinfo.split(":", 1) if userinfo else []:
        if piece:
            found.update({piece, unquote(piece), quote(unquote(piece), safe="")})
    for name, value in parse_qsl(parts.query, keep_blank_values=False):
        if _SECRET_PARAM.search(name) and value:
            found.update({value, quote(value, safe="")})
    return sorted((s for s in found if len(s) >= 1), key=len, reverse=True)


def redact(url: str) -> str:
    """The URL as it is shown and logged: `rtsp://***@host:554/path?user=***`, its secrets replaced."""
    try:
        parts = urlsplit(url)
        netloc = parts.netloc
        if "@" in netloc:
            netloc = REDACTED + "@" + netloc.rpartition("@")[2]
        query = "&".join(f"{k}={REDACTED if _SECRET_PARAM.search(k) else quote(v, safe='')}"
                         for k, v in parse_qsl(parts.query, keep_blank_values=True))
        shown = f"{parts.scheme}://{netloc}{parts.path}" + (f"?{query}" if query else "")
    except ValueError:
        return f"{REDACTED} (not a URL)"
    return scrub(shown, url)


def scrub(text: str, url: str) -> str:
    """`text` (an error message that may quote the URL) with each of the URL's secrets replaced by ***."""
    for secret in secrets_of(url):
        text = text.replace(secret, REDACTED)
    return text


def has_credentials(url: str) -> bool:
    try:
        parts = urlsplit(url)
    except ValueError:
        return False
    return parts.username is not None or any(_SECRET_PARAM.search(k) for k, _ in parse_qsl(parts.query))


def check_camera_url(url: str, allow: AllowList, resolver: Callable[[str, int], list[Address]] = resolve
                     ) -> list[Address]:
    """The addresses a camera URL may be reached at (every one public, or listed in FR_CAMERA_ALLOW by
    address, network or host name); CameraRefused otherwise (BAD_CAMERA_URL, CAMERA_UNRESOLVABLE,
    CAMERA_NOT_ALLOWED)."""
    _, host, port = host_port(url)
    try:
        addresses = resolver(host, port)
    except CallbackRefused:
        raise CameraRefused("CAMERA_UNRESOLVABLE", f"the camera host {host!r} does not resolve") from None
    if not addresses:
        raise CameraRefused("CAMERA_UNRESOLVABLE", f"the camera host {host!r} does not resolve")
    by_name = allow.host_allowed(host)
    refused = [str(a) for a in addresses if not (by_name or allow.address_allowed(a))]
    if refused:
        raise CameraRefused("CAMERA_NOT_ALLOWED", f"{host!r} is at {', '.join(refused)}: a private, loopback or "
                            "reserved address that FR_CAMERA_ALLOW does not list (the operator lists the cameras' "
                            "addresses or networks there)")
    return addresses
