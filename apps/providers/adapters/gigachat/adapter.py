"""``GigaChatAdapter``: Sber's GigaChat v1 REST API (https://developers.sber.ru/docs/ru/gigachat/api/overview)
behind the canonical OpenAI form — OAuth token per supplier key (``auth.py``), request and answer
maps (``wire.py``), the stream (``stream.py``) and GigaChat's ``{"status", "message"}`` errors.

Provider options (``Provider.options``): ``auth_url`` (default Sber's public OAuth URL), ``scope``
(``GIGACHAT_API_PERS`` by default, ``GIGACHAT_API_B2B``, ``GIGACHAT_API_CORP``), ``ca_bundle`` (path
to a PEM file with the Russian Ministry of Digital Development root CA, trusted on top of the
system roots for the OAuth and API connections). The supplier key's secret is the base64
"authorization key".
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence

import aiohttp
import orjson

from apps.providers.adapters.base import (
    COOLDOWN_AUTH_FAILED,
    COOLDOWN_RATE_LIMITED,
    COOLDOWN_SERVER_ERROR,
    Adapter,
    CanonicalRequest,
    Credential,
    HttpResponse,
    Parsed,
    Target,
    UpstreamFailure,
    UpstreamRequest,
    UpstreamResponse,
    malformed,
    rejected,
    timed_out,
    unreachable,
)
from apps.providers.adapters.gigachat.auth import GigaChatAuth, OAuthSettings, misconfigured
from apps.providers.adapters.gigachat.stream import GigaChatStreamDecoder
from apps.providers.adapters.gigachat.wire import (
    chat_body,
    chat_completion,
    embeddings,
    embeddings_body,
    error_fields,
    generated_text,
    request_url,
    usage_from,
)
from lib.scrub import scrub

logger = logging.getLogger("jetstream.providers")

# Statuses after which the same request may succeed with another key (or a moment later).
_SERVER_TROUBLE = (408, 409)
# Client errors passed on with their own status; any other 4xx is answered as 400.
_CLIENT_STATUSES = (400, 404, 413, 422)


class GigaChatAdapter(Adapter):
    """GigaChat's v1 wire format with OAuth-exchanged Bearer tokens (see the module docstring)."""

    kind = "gigachat"
    auth: GigaChatAuth

    def __init__(self) -> None:
        self.auth = GigaChatAuth()  # its token cache is this instance's (one per kind, see the registry)

    def build_request(self, request: CanonicalRequest, target: Target, auth_headers: Mapping[str, str]) -> UpstreamRequest:
        """See ``Adapter.build_request``: ``wire.chat_body`` or ``wire.embeddings_body`` as JSON; a stream
        asks for ``text/event-stream``. Raises ``UpstreamFailure`` (400) for what GigaChat cannot take."""
        url = request_url(target.base_url, request.endpoint)
        if request.endpoint == "embedding":
            body = embeddings_body(request.body, upstream_model=target.upstream_model)
        else:
            body = chat_body(request.body, upstream_model=target.upstream_model, stream=request.stream)
        headers = {**auth_headers, "Content-Type": "application/json", "Accept-Encoding": "identity",
                   "Accept": "text/event-stream" if request.stream else "application/json"}
        return UpstreamRequest(url, headers, orjson.dumps(body))

    async def open(self, http: aiohttp.ClientSession, request: CanonicalRequest, target: Target, credential: Credential | None,
                   *, proxy: str | None) -> UpstreamResponse:
        """See ``Adapter.open``: the key's cached token (exchanged first when missing or about to
        expire); a 401 drops that token and the request is sent once more with a fresh one — a
        second 401 is the caller's to map (the key fails over). Raises ``UpstreamFailure``."""
        if credential is None:
            raise misconfigured("A GigaChat provider needs a supplier key.")
        settings = OAuthSettings.from_options(target.options, proxy=proxy)
        self.auth.bind(credential, settings)
        headers = await self.auth.headers(credential, http)
        response = await self._post(http, self.build_request(request, target, headers), settings)
        if response.status != 401:
            return response
        await _discard(response)
        self.auth.discard(credential.key_id, headers[self.auth.header_name])
        headers = await self.auth.headers(credential, http)
        return await self._post(http, self.build_request(request, target, headers), settings)

    async def _post(self, http: aiohttp.ClientSession, prepared: UpstreamRequest, settings: OAuthSettings) -> UpstreamResponse:
        """``Adapter.send`` with the provider's TLS context."""
        try:
            response = await http.post(prepared.url, data=prepared.body, headers=prepared.headers, allow_redirects=False,
                                       proxy=settings.proxy, ssl=settings.tls or True)
        except TimeoutError as exc:
            raise timed_out("connect") from exc
        except (aiohttp.ClientError, OSError) as exc:
            raise unreachable() from exc
        return HttpResponse(response)

    def parse_body(self, body: bytes, request: CanonicalRequest) -> Parsed:
        """See ``Adapter.parse_body``: a chat answer as ``chat.completion`` (``wire.chat_completion``),
        embeddings as OpenAI's list (usage summed over the items). Raises ``malformed()`` for a body
        that is not GigaChat's answer."""
        try:
            obj = orjson.loads(body)
        except orjson.JSONDecodeError:
            obj = None
        if not isinstance(obj, dict):
            raise malformed()
        if request.endpoint == "embedding":
            try:
                mapped, usage = embeddings(obj, model=request.model, encoding=request.body.get("encoding_format"))
            except ValueError:
                raise malformed() from None
            return Parsed(orjson.dumps(mapped), usage)
        if not isinstance(obj.get("choices"), list):
            raise malformed()
        completion = chat_completion(obj, model=request.model)
        reported = usage_from(obj)
        return Parsed(orjson.dumps(completion), reported, None if reported else generated_text(completion))

    def stream_decoder(self, request: CanonicalRequest) -> GigaChatStreamDecoder:
        """See ``Adapter.stream_decoder``."""
        return GigaChatStreamDecoder(request.model)

    def body_failure(self, body: bytes, secrets: Sequence[str]) -> UpstreamFailure | None:
        """See ``Adapter.body_failure``: a 200 body that is an error object (``{"status", "message"}``)
        or a chat answer whose choice finished with ``error``."""
        if b'"error"' not in body and b'"status"' not in body:
            return None
        try:
            obj = orjson.loads(body)
        except orjson.JSONDecodeError:
            return None
        if not isinstance(obj, dict):
            return None
        choices = obj.get("choices")
        if isinstance(choices, list):
            failed = any(isinstance(c, dict) and c.get("finish_reason") == "error" for c in choices)
            return self.in_band_error(body, secrets) if failed else None
        return self.in_band_error(body, secrets) if "status" in obj and not obj.get("data") else None

    def in_band_error(self, payload: bytes, secrets: Sequence[str]) -> UpstreamFailure:
        """See ``Adapter.in_band_error``: mapped as ``map_error`` maps the HTTP status the error names
        in ``status``, or as a 502 (fail over) when it names none."""
        _, status = error_fields(payload)
        return self._failure(status or 502, payload, {}, secrets, origin="an error inside a 2xx answer")

    def map_error(self, status: int, body: bytes, headers: Mapping[str, str], secrets: Sequence[str]) -> UpstreamFailure:
        """See ``Adapter.map_error`` (https://developers.sber.ru/docs/ru/gigachat/api/errors-description).

        401/403 → 502, fail over, key rests ``COOLDOWN_AUTH_FAILED``; 402 (the account's tokens are
        spent) the same — another key may still have some; 429 → 429, fail over, rests for a
        whole-seconds ``Retry-After`` (at most ``COOLDOWN_AUTH_FAILED``) or ``COOLDOWN_RATE_LIMITED``;
        5xx, 408, 409 → 502, fail over; a redirect → 502, no failover. 400, 404, 413, 422 are passed
        on, any other 4xx as 400, no failover, the message scrubbed (404 says ``model_not_found``).
        The upstream's text, scrubbed, goes to the log."""
        return self._failure(status, body, headers, secrets, origin=f"HTTP {status}")

    def _failure(self, status: int, body: bytes, headers: Mapping[str, str], secrets: Sequence[str], *,
                 origin: str) -> UpstreamFailure:
        message, _ = error_fields(body)
        secrets = (*secrets, *self.auth.tokens())
        failure = _key_failure(status, headers) or _request_failure(status, scrub(message, secrets) if message else None)
        detail = scrub(message if message is not None else body.decode("utf-8", "replace"), secrets, limit=300)
        # For the key balancer: 403 refuses the key, 402 says its account is spent (until a person
        # re-enables it). A 401 is about the access token (``open`` exchanges anew once), not the key.
        failure.disable, failure.park = status == 403, status == 402
        failure.detail = f"HTTP {status}: {detail}"
        logger.log(logging.INFO if failure.type == "invalid_request_error" else logging.WARNING,
                   "gigachat answered %s -> %s %s: %s", origin, failure.status, failure.code, detail)
        return failure


def _key_failure(status: int, headers: Mapping[str, str]) -> UpstreamFailure | None:
    """The failure for a status about the key, the account or the moment (None for any other)."""
    if status in (401, 402, 403):
        return UpstreamFailure(502, "The upstream provider rejected the gateway's credentials.", code="upstream_auth_failed",
                               failover=True, cooldown=COOLDOWN_AUTH_FAILED)
    if status == 429:
        retry_after = headers.get("retry-after", headers.get("Retry-After", ""))
        # Retry-After is the upstream's word: capped, so one answer cannot bench a key for days.
        cooldown = min(float(retry_after), COOLDOWN_AUTH_FAILED) if retry_after.isdigit() else COOLDOWN_RATE_LIMITED
        return UpstreamFailure(429, "The upstream provider is rate limiting; retry later.", type="rate_limit_error",
                               code="upstream_rate_limited", failover=True, cooldown=cooldown)
    if status >= 500 or status in _SERVER_TROUBLE:
        return UpstreamFailure(502, f"The upstream provider failed (HTTP {status}).", code="upstream_error",
                               failover=True, cooldown=COOLDOWN_SERVER_ERROR)
    return None


def _request_failure(status: int, message: str | None) -> UpstreamFailure:
    """The failure for a redirect or a 4xx about the request itself (``message`` already scrubbed)."""
    if status < 400:
        # A redirect is never followed (its target was not checked against SSRF and would get the token).
        return UpstreamFailure(502, "The upstream provider answered with a redirect, which the gateway does not follow.",
                               code="upstream_redirect")
    return rejected(status if status in _CLIENT_STATUSES else 400, message, code="model_not_found" if status == 404 else None)


async def _discard(response: UpstreamResponse) -> None:
    """Read and release a refused answer (its connection goes back to the pool)."""
    try:
        await response.read()
    except UpstreamFailure:
        pass
    finally:
        response.release()

