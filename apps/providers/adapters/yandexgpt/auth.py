"""How a YandexGPT supplier key authenticates (https://yandex.cloud/en/docs/ai-studio/api-ref/authentication).

Provider option ``auth``:

- ``api_key`` (default): the secret is a service account's API key → ``Authorization: Api-Key <key>``
  (the OpenAI-compatible endpoint takes it as ``Bearer <key>``, as the OpenAI SDK sends it).
- ``iam``: the secret is either a static IAM token (sent as ``Bearer <token>``; it lives at most
  12 hours, so someone must rotate it), or a service account's *authorized key* — the JSON file
  ``yc iam key create`` writes (``id``, ``service_account_id``, ``private_key``). That key signs a JWT
  (PS256, ``kid`` = key id, ``aud`` = the exchange URL, one hour) which is exchanged at
  ``POST https://iam.api.cloud.yandex.net/iam/v1/tokens`` (``{"jwt"}`` → ``{"iamToken", "expiresAt"}``,
  https://yandex.cloud/en/docs/iam/operations/iam-token/create-for-sa) for an IAM token, cached per
  supplier key until a minute before it expires (``CachedTokenAuth``). The option ``iam_url`` replaces
  the exchange URL (tests, private installations).
"""

from __future__ import annotations

import base64
import time
from datetime import datetime
from typing import Any

import aiohttp
import orjson
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from apps.providers.adapters.base import (
    COOLDOWN_AUTH_FAILED,
    COOLDOWN_UNREACHABLE,
    CachedTokenAuth,
    Credential,
    UpstreamFailure,
    unreachable,
)

IAM_URL = "https://iam.api.cloud.yandex.net/iam/v1/tokens"
JWT_LIFETIME = 3600  # seconds; Yandex accepts at most one hour


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _key_failure(what: str) -> UpstreamFailure:
    return UpstreamFailure(502, f"The supplier's Yandex Cloud authorized key could not be used ({what}).",
                           code="upstream_auth_failed", failover=True, cooldown=COOLDOWN_AUTH_FAILED)


def authorized_key(secret: str) -> dict[str, Any] | None:
    """The authorized-key JSON in ``secret`` (``id``, ``service_account_id``, ``private_key``), or None
    when the secret is not one (then it is a static IAM token)."""
    if not secret.lstrip().startswith("{"):
        return None
    try:
        key = orjson.loads(secret)
    except orjson.JSONDecodeError:
        return None
    return key if isinstance(key, dict) and {"id", "service_account_id", "private_key"} <= key.keys() else None


def signed_jwt(key: dict[str, Any], *, audience: str, now: float) -> str:
    """A PS256 JWT for the IAM exchange signed with ``key["private_key"]`` (PEM; Yandex's file may put a
    "PLEASE DO NOT REMOVE THIS LINE!" line before it). Raises ``ValueError`` for a key that is not RSA."""
    pem = str(key["private_key"])
    pem = pem[pem.find("-----BEGIN"):] if "-----BEGIN" in pem else pem
    private = serialization.load_pem_private_key(pem.encode(), password=None)
    if not isinstance(private, rsa.RSAPrivateKey):
        raise ValueError("not an RSA key")
    header = {"typ": "JWT", "alg": "PS256", "kid": str(key["id"])}
    claims = {"iss": str(key["service_account_id"]), "aud": audience, "iat": int(now), "exp": int(now) + JWT_LIFETIME}
    signing_input = f"{_b64url(orjson.dumps(header))}.{_b64url(orjson.dumps(claims))}"
    signature = private.sign(signing_input.encode(), padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=32),
                             hashes.SHA256())
    return f"{signing_input}.{_b64url(signature)}"


def _expiry(expires_at: Any) -> float:
    # ``expiresAt`` is RFC 3339 with nanoseconds ("2026-11-30T09:00:00.123456789Z"); an unreadable one: one hour.
    if isinstance(expires_at, str):
        try:
            return datetime.fromisoformat(expires_at[:19] + "+00:00").timestamp()
        except ValueError:
            pass
    return time.time() + 3600


class IamTokenAuth(CachedTokenAuth):
    """An authorized key exchanged for an IAM token, cached per supplier key (see the module docstring)."""

    def __init__(self) -> None:
        super().__init__()
        self._urls: dict[int, str] = {}

    async def bearer(self, credential: Credential, http: aiohttp.ClientSession | None, *, iam_url: str) -> dict[str, str]:
        """``Authorization: Bearer <IAM token>`` for ``credential``, exchanged at ``iam_url`` when needed.
        Raises ``UpstreamFailure`` (see ``exchange``)."""
        self._urls[credential.key_id] = iam_url
        return await self.headers(credential, http)

    async def exchange(self, credential: Credential, http: aiohttp.ClientSession | None) -> tuple[str, float]:
        """See ``CachedTokenAuth.exchange``. Raises ``UpstreamFailure``: ``upstream_auth_failed`` (fail over,
        the key rests) for a key that cannot sign or that the IAM service refuses; ``unreachable`` when
        it cannot be reached or answers 5xx."""
        key = authorized_key(credential.secret)
        if key is None or http is None:
            raise _key_failure("not an authorized key")
        url = self._urls.get(credential.key_id, IAM_URL)
        try:
            token = signed_jwt(key, audience=url, now=time.time())
        except (ValueError, TypeError):
            raise _key_failure("its private key cannot sign") from None
        try:
            async with http.post(url, json={"jwt": token}, allow_redirects=False) as response:
                status, body = response.status, await response.read()
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            raise unreachable() from exc
        if status >= 500 or status == 429:
            raise UpstreamFailure(502, "The Yandex Cloud IAM service failed.", code="upstream_error", failover=True,
                                  cooldown=COOLDOWN_UNREACHABLE)
        try:
            answer = orjson.loads(body) if status == 200 else None
        except orjson.JSONDecodeError:
            answer = None
        if not isinstance(answer, dict) or not isinstance(answer.get("iamToken"), str):
            raise _key_failure(f"the IAM service answered HTTP {status}")
        return answer["iamToken"], _expiry(answer.get("expiresAt"))
