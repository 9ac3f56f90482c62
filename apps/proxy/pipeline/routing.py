"""Which models may answer a call, and in which order: failover between providers.

A model may name a fallback chain (``Model.fallbacks``; a company's or a token's ``fallbacks``
override it per model). The call's *candidates* are the requested model and its chain, less any the
token may not use, that cannot serve the endpoint, have no price, cannot fit the request, or — for
a company whose data residency is ``ru`` — whose provider is not hosted in Russia (``country`` RU).
The requested model's ``routing`` orders them:

* ``ordered`` — as written: the model, then its fallbacks;
* ``cheapest`` — by this request's maximum cost on each (input estimate and output cap at the
  model's price, its per-request and per-image prices, micro-RUB), at the company's sell
  coefficient *for that model* (``CompanyModelCoefficient``, else the company's own), the
  requested model winning ties;
* ``fastest`` — by the recent time to an answer's headers on each model (``ProviderHealth``; a
  model not measured yet goes first, so it gets measured).

The upstream stage tries the candidates in that order, each with its own supplier keys, until one
answers; a failure about the request itself (a 4xx) is answered at once. Billing uses the price of
the model that answered; the answer names it (``model``, ``x-jetstream-model``,
``x-jetstream-provider``). The reservation covers the most expensive candidate
(``spend.SpendCounters.reserve``), so no fallback can overspend a limit.

A provider that failed as a whole (every key tried failed) is *down* for ``down_seconds``: it goes
to the back of every order. Then it gets traffic back gradually — it keeps its place for 10 % of
requests for ``step_seconds``, for 50 % for the next ``step_seconds``, then for all — and a failure
on the way sends it back down. This state is per worker: each worker notices an outage on its own
requests (the supplier keys' health is shared through Redis by the key balancer).
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Sequence

from ..exceptions import ApiError, forbidden
from ..snapshot import ModelRoute, SnapshotCache, TokenSnapshot
from .admission import MODALITY_FOR
from .context import Call, Candidate
from .spend import estimate, estimate_for, max_cost, prompt_extras

RAMP_SHARES = (0.1, 0.5)  # the share of requests a recovering provider leads, step by step
LATENCY_WEIGHT = 0.2  # of the newest sample in a model's moving average of answer latency


def residency_allows(token: TokenSnapshot, route: ModelRoute) -> bool:
    """Whether the token's company may send data to ``route``'s provider (``ru``: only country RU)."""
    return token.residency != "ru" or route.country == "RU"


def sensitive_allows(call: Call, route: ModelRoute) -> bool:
    """Whether a call the moderation stage rerouted (``Call.sensitive_route``) may go to ``route``:
    "ru" — a provider hosted in Russia (country RU) or a local node; "local" — local nodes only."""
    if not call.sensitive_route:
        return True
    if call.sensitive_route == "local":
        return bool(route.nodes)
    return route.country == "RU" or bool(route.nodes)


def sensitive_route_error(call: Call) -> ApiError:
    """400 ``moderation_blocked``: a sensitive request whose policy allows it only on Russian-hosted
    or local models, and neither the model nor its fallbacks are."""
    where = "local models" if call.sensitive_route == "local" else "Russian-hosted or local models"
    return ApiError(400, f"This request contains data your company's policy sends only to {where}, and neither "
                         f"'{call.route.name}' nor its fallbacks are one. Use such a model, or remove the sensitive data.",
                    type="moderation_blocked", code="sensitive_route_unavailable", retryable=False)


def fallback_routes(call: Call, snapshots: SnapshotCache, modalities: Sequence[str]) -> list[ModelRoute]:
    """The routes of ``call.route``'s fallback chain the token may use for this endpoint (unknown,
    inactive, unpriced or repeated names are skipped; residency is applied by ``police``)."""
    token, primary = call.token, call.route
    seen = {primary.name}
    routes = []
    for name in token.fallbacks_for(primary):
        route = snapshots.route(name)
        if route is None or name in seen or not token.may_use(name) or route.modality not in modalities or not route.priced:
            continue
        seen.add(name)
        routes.append(route)
    return routes


def residency_error(token: TokenSnapshot, route: ModelRoute) -> ApiError:
    """403 ``data_residency``: the model's provider is outside the company's residency and no fallback is inside it."""
    where = f"hosted in {route.country}" if route.country else "not marked as hosted in Russia"
    return forbidden(f"Your company's data residency is Russia only, and the model '{route.name}' is {where}. "
                     "Use a Russian-hosted model (GigaChat, YandexGPT or a local node), or ask your administrator "
                     "to add one as this model's fallback.", code="data_residency")


class ProviderHealth:
    """One worker's view of providers coming back from an outage, and of models' recent latency.

    ``clock`` is monotonic seconds, ``rng`` a uniform [0, 1) source (both injectable for tests)."""

    def __init__(self, *, down_seconds: float = 10.0, step_seconds: float = 30.0,
                 clock: Callable[[], float] = time.monotonic, rng: Callable[[], float] = random.random) -> None:
        self.down_seconds = down_seconds
        self.step_seconds = step_seconds
        self._clock = clock
        self._rng = rng
        self._down_until: dict[int, float] = {}  # provider id → end of its down time, while it ramps back
        self._latency: dict[int, float] = {}  # model (route) id → moving average, seconds

    def failed(self, provider_id: int) -> None:
        """Every key of the provider failed this call: down for ``down_seconds``, then ramping back."""
        self._down_until[provider_id] = self._clock() + self.down_seconds

    def answered(self, route: ModelRoute, seconds: float) -> None:
        """The route answered after ``seconds``: its latency average moves towards it."""
        previous = self._latency.get(route.id)
        self._latency[route.id] = seconds if previous is None else previous + LATENCY_WEIGHT * (seconds - previous)

    def latency(self, route: ModelRoute) -> float:
        """The route's recent answer latency in seconds (0.0 until measured)."""
        return self._latency.get(route.id, 0.0)

    def share(self, provider_id: int) -> float:
        """The share of requests the provider may lead now: 0 while down, the ramp's steps, then 1."""
        down_until = self._down_until.get(provider_id)
        if down_until is None:
            return 1.0
        since = self._clock() - down_until
        if since < 0:
            return 0.0
        step = int(since // self.step_seconds) if self.step_seconds > 0 else len(RAMP_SHARES)
        if step >= len(RAMP_SHARES):
            del self._down_until[provider_id]  # recovered
            return 1.0
        return RAMP_SHARES[step]

    def order(self, candidates: list[Candidate], routing: str, cost: Callable[[Candidate], int]) -> list[Candidate]:
        """``candidates`` in the order they are tried: by ``routing`` (see the module docstring; for
        ``cheapest``, by ``cost``: a candidate's maximum cost for this request in micro-RUB, at the
        company's sell coefficient for that model), then each provider that is down or ramping back
        moved behind the others unless this request falls in its share."""
        if routing == "cheapest":
            candidates = sorted(candidates, key=cost)
        elif routing == "fastest":
            candidates = sorted(candidates, key=lambda c: self.latency(c.route))
        if not self._down_until:
            return candidates
        leading: list[Candidate] = []
        behind: list[Candidate] = []
        for candidate in candidates:
            share = self.share(candidate.route.provider_id)
            (leading if share >= 1.0 or (share > 0 and self._rng() < share) else behind).append(candidate)
        return leading + behind


def choose(call: Call, snapshots: SnapshotCache, health: ProviderHealth) -> None:
    """The routing stage, after ``police``: the call's candidates with this request's estimate on
    each (``spend.estimate_for``), in the order they are tried — the first set as ``call.route``
    (with its estimate), the rest as ``call.fallbacks``. Without a fallback chain and within the
    company's residency this is ``spend.estimate`` alone.

    A call the moderation stage rerouted as sensitive keeps only Russian-hosted or local candidates
    (``sensitive_allows``).

    Raises ``ApiError`` 403 ``data_residency`` when no candidate is inside the residency, 400
    ``moderation_blocked`` (``sensitive_route_unavailable``) when a rerouted call has no candidate on
    its sensitive route, or the first candidate's estimate error (400) when none can take the request."""
    token, primary = call.token, call.route
    call.images, call.cache_marked = prompt_extras(call.request)
    if not token.fallbacks_for(primary) and residency_allows(token, primary) and sensitive_allows(call, primary):
        estimate(call)
        return
    routes = [route for route in (primary, *fallback_routes(call, snapshots, MODALITY_FOR[call.endpoint]))
              if residency_allows(token, route)]
    if not routes:
        raise residency_error(token, primary)
    if call.sensitive_route:
        routes = [route for route in routes if sensitive_allows(call, route)]
        if not routes:
            raise sensitive_route_error(call)
    candidates: list[Candidate] = []
    refusal: ApiError | None = None
    for route in routes:
        try:
            candidates.append(Candidate(route, *estimate_for(call.request, route)))
        except ApiError as exc:  # this model cannot take the request (its context window, its output cap)
            refusal = refusal or exc
    if not candidates:
        assert refusal is not None
        raise refusal
    first, *rest = health.order(candidates, primary.routing,
                                lambda c: max_cost(call, c.route, c.input_tokens, c.max_output_tokens))
    call.use(first)
    call.fallbacks = tuple(rest)
