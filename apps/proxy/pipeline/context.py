"""The per-request context the pipeline's stages read and fill: ``Call`` (and its ``Reservation``).

A ``Call`` is one request to ``/v1`` on its way through the stages; it is not an HTTP request
object (the ASGI scope is on it) and not the upstream call. Whatever happens to it, it becomes
exactly one ``UsageEvent`` (``usage_event``).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from apps.billing.usage import UsageEvent
from apps.providers.adapters.base import CanonicalRequest

from ..dialects.base import Dialect
from ..dialects.openai import OPENAI
from ..exceptions import ApiError
from ..nodes import NodeRoute
from ..redis_scripts import SpendKeys
from ..snapshot import KeyRoute, ModelRoute, TokenSnapshot


@dataclass(slots=True)
class Reservation:
    """Money and rate held in Redis for one call until it settles.

    ``amount`` is the maximum possible cost (micro-RUB); ``tpm_estimate`` the tokens counted against
    TPM; ``member`` the entry in the reservations set (what the sweeper releases if the worker dies);
    ``rpm_left``/``tpm_left`` what the rate limits had left after this call (-1 = no limit)."""

    amount: int
    keys: SpendKeys
    tpm_estimate: int
    tpm_key: str
    member: bytes
    rpm_left: int
    tpm_left: int


@dataclass(slots=True, frozen=True)
class Candidate:
    """A model that may answer a call (the requested one or a fallback, ``pipeline.routing``): its
    route and this request's estimate on it — input tokens and the output cap over all choices."""

    route: ModelRoute
    input_tokens: int
    max_output_tokens: int


@dataclass(slots=True)
class Call:
    """One ``/v1`` request through the pipeline; stages fill it in the order of the stage table."""

    id: str  # "req_<32 hex>", also the response's x-request-id
    endpoint: str  # "chat" | "completion" | "embedding", or the raw path for other endpoints
    started: float  # Unix seconds
    client_ip: str | None
    scope: dict[str, Any] = field(default_factory=dict)
    dialect: Dialect = OPENAI  # what the client speaks, chosen by the path (app.ENDPOINTS)
    # Set by the stages, in this order; unset until then (reading one early is a bug: AttributeError).
    token: TokenSnapshot = field(init=False)  # authenticate
    request: CanonicalRequest = field(init=False)  # read + validate
    route: ModelRoute = field(init=False)  # police; routing may put a fallback first; upstream: the model that answered
    reservation: Reservation = field(init=False)  # reserve
    raw: bytes = b""
    input_tokens_estimate: int = 0
    max_output_tokens: int = 0  # over all choices
    fallbacks: tuple[Candidate, ...] = ()  # routing: the models tried after ``route``, in order
    idempotency_key: str | None = None
    idempotency_stored: bool = False
    # upstream and usage
    key: KeyRoute | None = None
    node: NodeRoute | None = None  # the local node being tried / that answered (instead of a key)
    # Every upstream try, in order: {"key": id, "status": the gateway's status (200 = answered),
    # "code": its error code or "", "ms": milliseconds to the first bytes} (upstream.UpstreamClient.open).
    attempts: list[dict[str, Any]] = field(default_factory=list)
    input_tokens: int = 0
    output_tokens: int = 0
    cached_tokens: int = 0
    cache_write_tokens: int = 0  # of input_tokens, written to the provider's prompt cache
    images: int = 0  # images in the request's messages (routing: spend.prompt_extras)
    cache_marked: bool = False  # the request marks something for prompt caching (cache_control)
    counted_locally: bool = False
    sell: int = 0  # micro-RUB the company pays
    sell_capped: bool = False  # the sell cost was above the reservation: ``sell`` is the reservation
    sell_uncapped: int = 0  # micro-RUB: the sell cost before the cap (0 when not capped)
    buy: int = 0  # micro-RUB the platform owes the key's supplier (a local node: its hardware cost)
    ttft_ms: int | None = None
    settled: bool = False
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)  # added to every answer (rate limits)
    # moderate: the call's moderation state (pipeline.moderate.Moderated; None when the token has no
    # policy) and, for a sensitive request the policy reroutes, where it may go ("ru" | "local").
    moderation: Any = None
    sensitive_route: str = ""

    @property
    def model_name(self) -> str:
        """The public model name the client asked for ("" before the body is read)."""
        request = getattr(self, "request", None)
        return request.model if request is not None else ""

    def use(self, candidate: Candidate) -> None:
        """Make ``candidate`` the call's route, with its estimate."""
        self.route, self.input_tokens_estimate, self.max_output_tokens = (candidate.route, candidate.input_tokens,
                                                                          candidate.max_output_tokens)

    def header(self, name: bytes) -> str | None:
        """A request header's value (latin-1, stripped), or None."""
        for key, value in self.scope.get("headers", ()):
            if key == name:
                return value.decode("latin-1").strip()
        return None

    def usage_event(self, *, status: str, http: int, error: ApiError | None = None) -> bytes:
        """This call's encoded ``UsageEvent`` with the outcome given (``status`` a UsageStatus value)."""
        token: TokenSnapshot | None = getattr(self, "token", None)
        route: ModelRoute | None = getattr(self, "route", None)
        request: CanonicalRequest | None = getattr(self, "request", None)
        key, node, now = self.key, self.node, time.time()
        supplier_id = node.supplier_id if node is not None else key.supplier_id if key is not None else None
        return UsageEvent(
            request_id=self.id, endpoint=self.endpoint, status=status, http_status=http, started_at=self.started,
            finished_at=now, token_id=token.id if token else None, company_id=token.company_id if token else None,
            department_id=token.department_id if token else None, model_name=self.model_name[:128],
            model_id=route.id if route else None, provider_id=route.provider_id if route else None,
            supplier_key_id=key.id if key else None, supplier_id=supplier_id, node_id=node.id if node else None,
            price_id=route.price_id if route else None, fx_rub_per_unit=route.fx_micro if route else None,
            stream=request.stream if request is not None else False, input_tokens=self.input_tokens,
            output_tokens=self.output_tokens, cached_tokens=self.cached_tokens, cache_write_tokens=self.cache_write_tokens,
            images=self.images if self.input_tokens or self.output_tokens else 0, usage_counted_locally=self.counted_locally,
            sell_cost=self.sell, buy_cost=self.buy, sell_capped=self.sell_capped, sell_cost_uncapped=self.sell_uncapped,
            error_type=error.type if error else "",
            error_code=(error.code or "") if error else "", latency_ms=int((now - self.started) * 1000),
            ttft_ms=self.ttft_ms, client_ip=self.client_ip, attempts=self.attempts,
        ).encode()
