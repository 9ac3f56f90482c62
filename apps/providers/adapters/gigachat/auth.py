"""GigaChat's OAuth: a supplier key (the base64 "authorization key", ``client_id:client_secret``)
exchanged for a 30-minute access token, and the TLS context for Sber's certificate chain.

Exchange (https://developers.sber.ru/docs/ru/gigachat/api/reference/rest/post-token)::

    POST <auth_url>                      e.g. https://ngw.devices.sberbank.ru:9443/api/v2/oauth
    Authorization: Basic <authorization key>
    RqUID: <uuid4>                       required; a request without a valid uuid4 is refused
    Content-Type: application/x-www-form-urlencoded
    Accept: application/json

    scope=GIGACHAT_API_PERS              or GIGACHAT_API_B2B / GIGACHAT_API_CORP

    200 {"access_token": "...", "expires_at": <Unix time in MILLISECONDS>}

The SDK also accepts ``{"tok", "exp"}``; the English docs show ``exp`` in seconds, the SDK reads
milliseconds: a value below 10**12 is taken as seconds. Errors are ``{"code": <int>, "message"}``
(``7 scope from db not fully includes consumed scope``: the key does not have the scope).

Sber's endpoints present a chain under the Russian Ministry of Digital Development's root CA,
which system trust stores usually lack: a provider's ``ca_bundle`` option names a PEM file with it,
trusted together with the system roots for both the exchange and the API.
"""

from __future__ import annotations

import functools
import logging
import os
import ssl
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import aiohttp
import orjson

from apps.providers.adapters.base import (
    COOLDOWN_AUTH_FAILED,
    COOLDOWN_RATE_LIMITED,
    COOLDOWN_SERVER_ERROR,
    CachedTokenAuth,
    Credential,
    UpstreamFailure,
    timed_out,
    unreachable,
)
from apps.providers.adapters.gigachat.wire import error_fields
from lib.scrub import scrub

logger = logging.getLogger("jetstream.providers")

DEFAULT_AUTH_URL = "https://ngw.devices.sberbank.ru:9443/api/v2/oauth"
DEFAULT_SCOPE = "GIGACHAT_API_PERS"
SCOPES = frozenset({"GIGACHAT_API_PERS", "GIGACHAT_API_B2B", "GIGACHAT_API_CORP"})
_MILLISECONDS = 10**12  # an expiry at or above this is in milliseconds (10**12 s is the year 33658)


def misconfigured(message: str) -> UpstreamFailure:
    """The provider's options are wrong (every key meets it): 502 ``upstream_misconfigured``, no
    failover. ``message`` is the gateway's own text, safe to show."""
    return UpstreamFailure(502, message, code="upstream_misconfigured")


@dataclass(slots=True, frozen=True)
class OAuthSettings:
    """Where and how a key is exchanged: from a provider's ``options`` (``auth_url``, ``scope``,
    ``ca_bundle``), plus the egress proxy and TLS context its calls use."""

    auth_url: str
    scope: str
    tls: ssl.SSLContext | None
    proxy: str | None

    @classmethod
    def from_options(cls, options: Mapping[str, Any], *, proxy: str | None) -> OAuthSettings:
        """Raises ``UpstreamFailure`` (``misconfigured``) for an auth URL that is not http(s), an
        unknown scope, or a CA bundle that cannot be loaded."""
        auth_url = str(options.get("auth_url") or DEFAULT_AUTH_URL)
        scope = str(options.get("scope") or DEFAULT_SCOPE)
        if not auth_url.startswith(("https://", "http://")):
            raise misconfigured("The GigaChat provider's auth_url must be an http(s) URL.")
        if scope not in SCOPES:
            raise misconfigured("The GigaChat provider's scope must be GIGACHAT_API_PERS, GIGACHAT_API_B2B or GIGACHAT_API_CORP.")
        return cls(auth_url, scope, tls_context(options), proxy)


def tls_context(options: Mapping[str, Any]) -> ssl.SSLContext | None:
    """The TLS context for a provider's connections: None (aiohttp's default) without a ``ca_bundle``
    option; else the system roots plus the bundle's certificates, one context per file version
    (path and modification time), so a replaced bundle is read again. Raises ``UpstreamFailure``
    (``misconfigured``) when the file cannot be read or holds no certificate."""
    path = options.get("ca_bundle")
    if not path:
        return None
    try:
        return _context(str(path), os.stat(path).st_mtime_ns)
    except (OSError, ssl.SSLError, ValueError):
        logger.error("GigaChat ca_bundle %s cannot be loaded", path)
        raise misconfigured("The GigaChat provider's CA bundle cannot be loaded.") from None


@functools.lru_cache(maxsize=32)
def _context(path: str, mtime_ns: int) -> ssl.SSLContext:
    context = ssl.create_default_context()  # system roots, hostname checks, verification on
    context.load_verify_locations(cafile=path)
    return context


class GigaChatAuth(CachedTokenAuth):
    """``CachedTokenAuth`` for GigaChat: one token per supplier key, exchanged at the provider's
    ``auth_url`` for its ``scope`` (once for all concurrent requests), renewed ``refresh_margin``
    seconds before it expires. ``bind`` must precede ``headers`` for a key: it gives the exchange the
    provider's settings (and forgets a token minted under other settings or another secret)."""

    def __init__(self) -> None:
        super().__init__()
        self._settings: dict[int, tuple[OAuthSettings, str]] = {}

    def bind(self, credential: Credential, settings: OAuthSettings) -> None:
        """Use ``settings`` for ``credential``'s exchanges from now on."""
        bound = (settings, credential.secret)
        previous = self._settings.get(credential.key_id)
        if previous is not None and previous != bound:
            self.forget(credential.key_id)
        self._settings[credential.key_id] = bound

    def tokens(self) -> tuple[str, ...]:
        """Every cached access token: scrubbed from upstream error text with the keys (a careless
        upstream echoes the token it was sent)."""
        return tuple(token for token, _ in self._tokens.values())

    def discard(self, key_id: int, header: str) -> None:
        """Forget ``key_id``'s token if ``header`` (an ``Authorization`` value the upstream refused)
        still carries it: a token another request has renewed meanwhile is kept."""
        cached = self._tokens.get(key_id)
        if cached is not None and header == f"{self.scheme} {cached[0]}":
            self.forget(key_id)

    async def exchange(self, credential: Credential, http: aiohttp.ClientSession | None) -> tuple[str, float]:
        """See ``CachedTokenAuth.exchange``: ``POST auth_url`` through ``http`` (the route's session:
        the SSRF guard checks every address), no redirects. Raises ``UpstreamFailure``: a refused
        key or scope (4xx) fails over with ``COOLDOWN_AUTH_FAILED``; 429 honours ``Retry-After``;
        5xx, a malformed answer, timeouts and connection errors fail over."""
        bound = self._settings.get(credential.key_id)
        if http is None or bound is None:
            raise misconfigured("The GigaChat token exchange has no settings.")
        settings = bound[0]
        headers = {"Authorization": f"Basic {credential.secret}", "RqUID": str(uuid.uuid4()), "Accept": "application/json",
                   "Content-Type": "application/x-www-form-urlencoded", "Accept-Encoding": "identity"}
        try:
            async with http.post(settings.auth_url, data=f"scope={settings.scope}".encode(), headers=headers,
                                 allow_redirects=False, proxy=settings.proxy, ssl=settings.tls or True) as response:
                status, retry_after, body = response.status, response.headers.get("Retry-After", ""), await response.read()
        except TimeoutError as exc:
            raise timed_out("connect") from exc
        except (aiohttp.ClientError, OSError) as exc:
            raise unreachable() from exc
        if status != 200:
            raise _exchange_failure(status, retry_after, body, credential.secret)
        return _token(body)


def _token(body: bytes) -> tuple[str, float]:
    """(access token, expiry in Unix seconds) of an exchange's 200 body. Raises ``UpstreamFailure``."""
    try:
        obj = orjson.loads(body)
    except orjson.JSONDecodeError:
        obj = None
    token = obj.get("access_token", obj.get("tok")) if isinstance(obj, dict) else None
    expires = obj.get("expires_at", obj.get("exp")) if isinstance(obj, dict) else None
    if not isinstance(token, str) or not token or not isinstance(expires, int | float) or isinstance(expires, bool):
        logger.warning("GigaChat token exchange answered 200 without a token")
        raise UpstreamFailure(502, "The upstream provider's token service returned a malformed response.",
                              code="upstream_malformed", failover=True, cooldown=COOLDOWN_SERVER_ERROR)
    return token, expires / 1000 if expires >= _MILLISECONDS else float(expires)


def _exchange_failure(status: int, retry_after: str, body: bytes, secret: str) -> UpstreamFailure:
    message, _ = error_fields(body)
    # The token service's text may echo the key: scrubbed, and only logged.
    logger.warning("GigaChat token exchange answered HTTP %s: %s", status,
                   scrub(message if message is not None else body.decode("utf-8", "replace"), (secret,), limit=300))
    if status == 429:
        cooldown = min(float(retry_after), COOLDOWN_AUTH_FAILED) if retry_after.isdigit() else COOLDOWN_RATE_LIMITED
        return UpstreamFailure(429, "The upstream provider is rate limiting; retry later.", type="rate_limit_error",
                               code="upstream_rate_limited", failover=True, cooldown=cooldown)
    if 400 <= status < 500:
        # A wrong key, a key without the scope, a malformed key: about this key, not the request.
        return UpstreamFailure(502, "The upstream provider rejected the gateway's credentials.", code="upstream_auth_failed",
                               failover=True, cooldown=COOLDOWN_AUTH_FAILED)
    return UpstreamFailure(502, f"The upstream provider's token service failed (HTTP {status}).", code="upstream_error",
                           failover=True, cooldown=COOLDOWN_SERVER_ERROR)
