"""In-process snapshots of what the hot path needs: tokens by hash and the routing table.

No ORM query per request in the steady state: a token is loaded once (in a dedicated loader
thread, off the event loop) and kept until the config version changes. Every write to a token,
company, department, model, price, FX rate, provider, supplier key or local node bumps the
version key in Redis on commit (see ``bump_config_version``); each proxy worker polls that key
every ``POLL_SECONDS`` (one MGET per worker, not per request), so a block, revoke or limit change
reaches every replica within a second. The same MGET reads the supplier keys' health version
(``apps/proxy/health.py``): the shared health records are re-read only when it changed. A local
node's health (``apps/providers/node_health.py``) rides on the config version itself: the health
task saves a node whose state changed. When the routes have local nodes the poller also publishes
this worker's outstanding requests per node about once a second (``nodes.NodeBalancer.publish``).
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import time
import zoneinfo
from collections.abc import Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import redis
from django.conf import settings
from django.db import close_old_connections, connections
from django.utils import timezone

from apps.accounts.models import CompanyModelCoefficient
from apps.billing import fx as fx_rates
from apps.billing.models import FxRate
from apps.billing.suppliers import keys_over_cap
from apps.moderation.policies import load_policy
from apps.providers.adapters.base import Target
from apps.providers.key_health import VERSION_KEY as HEALTH_VERSION_KEY
from apps.providers.key_status import apply_key_status_changes
from apps.providers.models import EgressHealth, LocalNode, Model, Price, ProviderEgress, SupplierKey, SupplierKeyStatus
from lib import tokenizer
from lib.money import coefficient_units

from .egress import EgressRoute
from .health import BreakerSettings, KeyBalancer
from .models import ApiToken
from .nodes import NodeBalancer, NodeRoute

logger = logging.getLogger(__name__)

VERSION_KEY = "js:cfg:version"
POLL_SECONDS = 0.2
MAX_AGE_SECONDS = 60.0  # safety net for changes made behind Django's back (raw SQL)
NODE_LOAD_SECONDS = 1.0  # how often a worker publishes its local nodes' outstanding requests


@dataclass(slots=True, frozen=True)
class TokenSnapshot:
    """What the hot path knows of one ``ApiToken`` (with its company and department), frozen.

    Limits and ``department_budget`` in micro-RUB, None = none; ``expires_at`` Unix seconds;
    ``ip_networks`` the parsed ``ip_allow`` (invalid entries dropped, logged); ``time_zone`` the
    company's, for the calendar windows; ``sell_coef_units`` the company's sell coefficient × 10_000
    (its own, else the platform default ``JETSTREAM_DEFAULT_SELL_COEFFICIENT``); ``model_coef_units``
    the company's per-model coefficients × 10_000 by public model name, which take its place
    (``sell_coef_for``).
    """

    id: int
    name: str
    company_id: int
    company_name: str
    company_active: bool
    department_id: int | None
    department_budget: int | None
    status: str
    status_reason: str
    expires_at: float | None
    limit_total: int | None
    limit_weekly: int | None
    limit_monthly: int | None
    rpm: int | None
    tpm: int | None
    models_allow: frozenset[str]
    models_deny: frozenset[str]
    ip_networks: tuple
    max_distinct_ips: int | None
    time_zone: zoneinfo.ZoneInfo
    sell_coef_units: int
    residency: str = "any"  # the company's data residency: "any" | "ru"
    fallbacks: Mapping[str, tuple[str, ...]] = field(default_factory=dict)  # the token's chains over the company's
    model_coef_units: Mapping[str, int] = field(default_factory=dict)
    # The company's (or this token's) data policy when it is on (apps.moderation), else None: the
    # moderation stage's one check on the hot path.
    moderation: Any = None

    def sell_coef_for(self, model: str) -> int:
        """The sell coefficient × 10_000 for the public model ``model``: the company's for that model, else its own."""
        return self.model_coef_units.get(model, self.sell_coef_units)

    def fallbacks_for(self, route: ModelRoute) -> tuple[str, ...]:
        """The fallback chain for ``route``: the token's or company's for that model, else the model's own."""
        chain = self.fallbacks.get(route.name)
        return route.fallbacks if chain is None else chain

    def may_use(self, model: str) -> bool:
        """Whether the token may call the public model ``model``: not if denied; yes if the allow-list is empty or names it."""
        if model in self.models_deny:
            return False
        return not self.models_allow or model in self.models_allow


@dataclass(slots=True)
class KeyRoute:
    """An active supplier key of an active supplier, as routing sees it.

    ``secret`` decrypted; ``priority`` (lower first) and ``weight`` (within a priority) order the
    tries; ``buy_coef_units`` the buy coefficient × 10_000; ``updated_at`` the key's last save (Unix
    seconds: a failure older than it no longer parks the key). ``cooldown_until`` is
    ``time.monotonic()`` seconds, in this worker only, and ``current`` the smooth weighted
    round-robin's running weight (``health.smooth_pick``); both are kept across route reloads. The
    shared health is ``health.KeyBalancer``'s.
    """

    id: int
    supplier_id: int
    secret: str = field(repr=False)  # never in a log line or a traceback's repr
    weight: int
    priority: int
    buy_coef_units: int
    updated_at: float = 0.0
    cooldown_until: float = 0.0
    current: int = 0


@dataclass(slots=True)
class ModelRoute:
    """One active model of an active provider: where its calls go and how they are priced.

    ``price_*`` are the current price version's, in micro-units of its currency per 1M tokens (0
    without a price); ``fx_micro`` micro-RUB per unit of that currency (None: no price, or no FX rate
    for it); ``created`` Unix seconds; ``egresses`` the provider's active egress proxies in the
    order calls try them (``egress.EgressRoute``: URL decrypted, health as last checked; none: calls
    leave directly); ``internal`` the provider's ``internal`` flag (a loopback or private address
    allowed). A route built by hand may give one proxy as ``egress_url`` / ``egress_internal``
    instead: it becomes the only entry of ``egresses``. ``egress_only``: the provider lists egress
    proxies (active or not), so its calls never leave directly — with none active they fail.
    """

    id: int
    name: str
    modality: str
    upstream_model: str
    context_window: int
    max_output_tokens: int
    created: int
    provider_id: int
    provider_kind: str
    provider_slug: str
    base_url: str
    provider_options: dict
    egress_url: str | None
    price_id: int | None
    price_input: int
    price_output: int
    price_cached: int
    fx_micro: int | None
    keys: list[KeyRoute] = field(default_factory=list)
    internal: bool = False
    egress_internal: bool = False
    fallbacks: tuple[str, ...] = ()  # public names to try when this model fails, in order
    routing: str = "ordered"  # how candidates are ordered: "ordered" | "cheapest" | "fastest"
    country: str = ""  # where the provider processes data (ISO 3166-1 alpha-2, "" = not said)
    balancer: KeyBalancer | None = None  # the worker's, with the keys' shared health (set by SnapshotCache)
    # (currency, the date its newest rate was last stated for) when that rate is older than
    # JETSTREAM_FX_MAX_AGE_HOURS: fx_micro is then None and police() answers 503 fx_rate_stale.
    fx_stale: tuple[str, str] | None = None
    # The provider's active local nodes (``apps/proxy/nodes.py``): when there are any, calls go to them, not to base_url.
    nodes: list[NodeRoute] = field(default_factory=list)
    node_balancer: NodeBalancer | None = None  # the worker's node counters (set by SnapshotCache)
    target: Target = field(init=False)  # where the adapter sends this model's calls

    egresses: tuple[EgressRoute, ...] = ()
    egress_only: bool = False  # the provider lists egress proxies: never call it directly, even with none active
    # The price version's other prices, in micro-units of its currency: per 1M tokens written to a
    # prompt cache (None: such tokens cost the input price), per request and per image (0: none).
    price_cache_write: int | None = None
    price_per_request: int = 0
    price_per_image: int = 0

    def __post_init__(self) -> None:
        self.target = Target(self.base_url, self.upstream_model, self.provider_options)
        if self.egress_url is not None and not self.egresses:
            self.egresses = (EgressRoute(0, "egress", self.egress_url, internal=self.egress_internal),)

    @property
    def connects_internally(self) -> bool:
        """Whether the provider itself may have a non-public address (calls without an egress proxy;
        through one, each proxy's own flag decides: the proxy, not the gateway, connects to the
        provider). False means every connection is checked against SSRF (``lib.ssrf``)."""
        return self.internal

    @property
    def priced(self) -> bool:
        """Whether calls can be priced: a current price and an FX rate for its currency."""
        return self.price_id is not None and self.fx_micro is not None

    def pick_keys(self) -> list[KeyRoute]:
        """The usable keys in the order to try them: by priority, smooth weighted round-robin within
        one, unhealthy keys left out (``health.KeyBalancer.order``); [] when none is usable."""
        if self.balancer is None:
            self.balancer = KeyBalancer(None)  # a route built by hand: this process's cooldowns only
        return self.balancer.order(self.keys)


def _load_token(key_hash: str) -> TokenSnapshot | None:
    close_old_connections()
    token = (ApiToken.objects.select_related("company", "department").filter(key_hash=key_hash).first())
    if token is None:
        return None
    networks = []
    for cidr in token.ip_allow:
        try:
            networks.append(ipaddress.ip_network(cidr, strict=False))
        except ValueError:
            logger.warning("token %s has an invalid CIDR in its allow-list; ignoring it", token.pk)
    return TokenSnapshot(
        id=token.pk,
        name=token.name,
        company_id=token.company_id,
        company_name=token.company.name,
        company_active=token.company.is_active,
        department_id=token.department_id,
        department_budget=token.department.monthly_budget if token.department is not None else None,
        status=token.status,
        status_reason=token.status_reason,
        expires_at=token.expires_at.timestamp() if token.expires_at else None,
        limit_total=token.limit_total,
        limit_weekly=token.limit_weekly,
        limit_monthly=token.limit_monthly,
        rpm=token.rpm,
        tpm=token.tpm,
        models_allow=frozenset(token.models_allow),
        models_deny=frozenset(token.models_deny),
        ip_networks=tuple(networks),
        max_distinct_ips=token.max_distinct_ips,
        time_zone=zoneinfo.ZoneInfo(token.company.time_zone),
        sell_coef_units=coefficient_units(token.company.effective_sell_coefficient),
        model_coef_units={name: coefficient_units(coef) for name, coef in
                          CompanyModelCoefficient.objects.filter(company_id=token.company_id).values_list("model__name", "sell_coefficient")},
        residency=token.company.data_residency,
        # An admin form left empty stores JSON null: read it as no chains.
        fallbacks={model: tuple(chain) for model, chain in {**(token.company.fallbacks or {}), **(token.fallbacks or {})}.items()},
        moderation=moderation_policy(token.company_id, token.pk),
    )


def moderation_policy(company_id: int, token_id: int) -> Any:
    """The data policy the moderation stage applies to a token's calls (``apps.moderation.policies``:
    the token's own, else its company's, frozen), or None when it is off."""
    policy = load_policy(company_id, token_id)
    return policy if policy.active else None


def _load_routes() -> dict[str, ModelRoute]:
    close_old_connections()
    now = timezone.now()
    fx: dict[str, int] = {"RUB": 1_000_000}
    stale: dict[str, str] = {}  # a stale rate never prices a call (docs/billing.md "Prices and currencies")
    for rate in FxRate.objects.filter(valid_from__lte=now).order_by("currency", "-valid_from").distinct("currency"):
        if fx_rates.is_stale(rate, now=now):
            stale[rate.currency] = timezone.localdate(fx_rates.stated_for(rate)).isoformat()
        else:
            fx[rate.currency] = rate.rub_per_unit
    prices = {p.model_id: p for p in Price.objects.filter(valid_from__lte=now).order_by("model_id", "-valid_from").distinct("model_id")}
    keys: dict[int, list[KeyRoute]] = {}
    # A key whose supplier capped its monthly spend and reached the cap sits out until the month
    # rolls over or the cap is raised (seen within MAX_AGE_SECONDS: routes reload at least that often).
    over_cap = keys_over_cap(now=now)
    for key in SupplierKey.objects.filter(status=SupplierKeyStatus.ACTIVE, supplier__is_active=True).exclude(pk__in=over_cap):
        try:
            secret = key.reveal_secret()
        except Exception:  # a key we cannot decrypt is unusable, never fatal
            logger.error("supplier key %s cannot be decrypted (key id %s); skipping it", key.pk, key.secret_key_id)
            continue
        keys.setdefault(key.provider_id, []).append(
            KeyRoute(key.pk, key.supplier_id, secret, key.weight, key.priority, coefficient_units(key.buy_coefficient),
                     updated_at=key.updated_at.timestamp()))
    nodes = _load_nodes()
    egresses = _load_egresses()
    egress_only = set(ProviderEgress.objects.values_list("provider_id", flat=True).distinct())
    routes: dict[str, ModelRoute] = {}
    for model in Model.objects.select_related("provider").filter(is_active=True, provider__is_active=True):
        provider = model.provider
        price = prices.get(model.pk)
        routes[model.name] = ModelRoute(
            id=model.pk, name=model.name, modality=model.modality, upstream_model=model.upstream_model or model.name,
            context_window=model.context_window, max_output_tokens=model.max_output_tokens,
            created=int(model.created_at.timestamp()),
            provider_id=provider.pk, provider_kind=provider.kind, provider_slug=provider.slug,
            base_url=provider.base_url.rstrip("/"), provider_options=dict(provider.options or {}), egress_url=None,
            price_id=price.pk if price else None,
            price_input=price.input_per_1m if price else 0, price_output=price.output_per_1m if price else 0,
            price_cached=price.cached_input_per_1m if price else 0,
            price_cache_write=price.cache_write_per_1m if price else None,
            price_per_request=(price.per_request or 0) if price else 0, price_per_image=(price.per_image or 0) if price else 0,
            fx_micro=fx.get(price.currency) if price else None,
            keys=keys.get(provider.pk, []), internal=provider.internal, egresses=egresses.get(provider.pk, ()),
            egress_only=provider.pk in egress_only,
            fallbacks=tuple(model.fallbacks), routing=model.routing, country=provider.country,
            fx_stale=(price.currency, stale[price.currency]) if price and price.currency in stale else None,
            nodes=nodes.get(provider.pk, []),
        )
    return routes


def _load_nodes() -> dict[int, list[NodeRoute]]:
    """Every active local node of an active provider, by provider id (a node whose key cannot be
    decrypted is left out, logged)."""
    nodes: dict[int, list[NodeRoute]] = {}
    for node in LocalNode.objects.filter(is_active=True, provider__is_active=True).order_by("pk"):
        try:
            secret = node.reveal_secret()
        except Exception:  # a node we cannot authenticate to is unusable, never fatal
            logger.error("local node %s: its API key cannot be decrypted; skipping it", node.pk)
            continue
        cost_input, cost_output, denominator = node.cost_fraction()
        nodes.setdefault(node.provider_id, []).append(NodeRoute(
            node.pk, node.name, node.base_url.rstrip("/"), secret, node.weight, node.supplier_id, cost_input, cost_output,
            denominator, internal=node.internal, health=node.health))
    return nodes


def _load_egresses() -> dict[int, tuple[EgressRoute, ...]]:
    """Each provider's active egress proxies in priority order, URLs decrypted; a proxy whose URL cannot
    be decrypted is left out (logged by slug)."""
    egresses: dict[int, list[EgressRoute]] = {}
    links = (ProviderEgress.objects.select_related("egress").filter(egress__is_active=True)
             .order_by("provider_id", "priority", "egress__slug"))
    for link in links:
        egress = link.egress
        try:
            url = egress.reveal_url()
        except Exception:  # unusable, never fatal
            logger.error("egress proxy %s cannot be decrypted; skipping it", egress.slug)
            continue
        egresses.setdefault(link.provider_id, []).append(EgressRoute(
            egress.pk, egress.slug, url, internal=egress.internal, country=egress.country,
            healthy=egress.health != EgressHealth.DOWN))
    return {provider_id: tuple(routes) for provider_id, routes in egresses.items()}


def _apply_key_status_changes() -> int:
    close_old_connections()  # the loader thread's connection may have gone stale since its last load
    return apply_key_status_changes()


def encodings_for(routes: Iterable[ModelRoute]) -> set[str]:
    """The tokenizer encodings the proxy counts with for these routes: a chat model's own, and
    cl100k for completion and embedding models (``spend.estimate``)."""
    return {tokenizer.encoding_for_model(route.upstream_model) if route.modality == "chat" else tokenizer.CL100K
            for route in routes}


class SnapshotCache:
    """One worker's token and route snapshots, loaded by a single loader thread (its own DB connection).

    Tokens are cached by key hash (unknown ones as None) for up to ``MAX_AGE_SECONDS``; the poller
    drops them all and reloads the routes when the config version changes or the routes are older
    than ``MAX_AGE_SECONDS``.
    """

    def __init__(self, redis) -> None:
        self._redis = redis
        # One loader thread: loads are rare (a miss or a config change) and it keeps one DB connection.
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="js-snapshot")
        self._tokens: dict[str, tuple[TokenSnapshot | None, float]] = {}
        self._inflight: dict[str, asyncio.Future] = {}
        self._routes: dict[str, ModelRoute] = {}
        self._routes_loaded = 0.0
        self._version: bytes | None = b"unset"
        self._poller: asyncio.Task | None = None
        self.balancer = KeyBalancer(redis, BreakerSettings.from_settings(settings.JETSTREAM))
        self.nodes = NodeBalancer()
        self._nodes_published = 0.0

    async def start(self) -> None:
        """Read the config version, load the routes and start the poller. Raises the Redis client's errors
        and whatever loading the routes raises (the worker's startup fails)."""
        self._version, health_version = await self._redis.execute("MGET", VERSION_KEY, HEALTH_VERSION_KEY)
        await self.refresh_health(health_version)
        await self.reload_routes()
        self._poller = asyncio.get_running_loop().create_task(self._poll())

    async def stop(self) -> None:
        """Cancel the poller, close the loader thread's DB connections and shut the thread down (``start``
        may run again afterwards)."""
        if self._poller:
            self._poller.cancel()
        await asyncio.get_running_loop().run_in_executor(self._executor, connections.close_all)
        # A fresh (threadless until used) pool in its place: the same app may start again (an ASGI
        # server restarting its lifespan, the browser tests' one server per module).
        old, self._executor = self._executor, ThreadPoolExecutor(max_workers=1, thread_name_prefix="js-snapshot")
        old.shutdown(wait=False, cancel_futures=True)

    async def run_in_loader(self, func, *args):
        """Run a blocking DB function in the loader thread (off the event loop)."""
        return await asyncio.get_running_loop().run_in_executor(self._executor, func, *args)

    async def _poll(self) -> None:
        while True:
            await asyncio.sleep(POLL_SECONDS)
            try:
                version, health_version = await self._redis.execute("MGET", VERSION_KEY, HEALTH_VERSION_KEY)
                if health_version != self.balancer.version:
                    await self.refresh_health(health_version)
                stale = time.monotonic() - self._routes_loaded > MAX_AGE_SECONDS
                if version != self._version or stale:
                    self._version = version
                    self._tokens.clear()
                    await self.reload_routes()
                await self._publish_node_load()
            except asyncio.CancelledError:
                raise
            except Exception:
                logger.exception("config poll failed; keeping the current snapshot")

    async def _publish_node_load(self) -> None:
        """About once a second, when the routes have local nodes: this worker's outstanding requests
        per node, for the admin (``NodeBalancer.publish``)."""
        if time.monotonic() - self._nodes_published < NODE_LOAD_SECONDS:
            return
        self._nodes_published = time.monotonic()
        node_ids = sorted({node.id for route in self._routes.values() for node in route.nodes})
        await self.nodes.publish(self._redis, node_ids)

    async def refresh_health(self, version: bytes | None) -> None:
        """Re-read the supplier keys' shared health (its version changed to ``version``) and, when
        keys were disabled or exhausted since, write their status to the database in the loader
        thread (``apply_key_status_changes``; the write bumps the config version, so every worker
        then drops them from its routes; a failed write is logged and stays queued). Raises the Redis
        client's errors."""
        if await self.balancer.refresh(version):
            try:
                await self.run_in_loader(_apply_key_status_changes)
            except Exception:  # the changes stay queued (and the keys out of routing): the next change retries
                logger.exception("could not write supplier key status changes to the database")

    async def reload_routes(self) -> None:
        """Load the routing table in the loader thread and swap it in, and load the tokenizer tables
        the routes need there too (a table loads in about a second: on the event loop it would
        stall every request of a cold worker). Each key keeps this worker's cooldown and
        round-robin position across reloads."""
        loop = asyncio.get_running_loop()
        routes = await loop.run_in_executor(self._executor, _load_routes)
        await loop.run_in_executor(self._executor, tokenizer.preload, encodings_for(routes.values()))
        previous = {key.id: key for route in self._routes.values() for key in route.keys}
        for route in routes.values():
            route.balancer = self.balancer
            route.node_balancer = self.nodes
            for key in route.keys:
                old = previous.get(key.id)
                if old is not None:
                    key.cooldown_until, key.current = old.cooldown_until, old.current
        self._routes = routes
        self._routes_loaded = time.monotonic()

    def route(self, model: str) -> ModelRoute | None:
        """The route of the public model name ``model``, or None (unknown, inactive, or its provider inactive)."""
        return self._routes.get(model)

    def routes(self) -> dict[str, ModelRoute]:
        """Every route by public model name: the live snapshot, not a copy."""
        return self._routes

    async def token(self, key_hash: str) -> TokenSnapshot | None:
        """The snapshot of the token whose secret hashes to ``key_hash``, or None for an unknown one.

        A miss loads it in the loader thread; concurrent misses for one hash share that load. Past
        100_000 cached hashes the cache is cleared (a flood of unknown tokens).
        """
        cached = self._tokens.get(key_hash)
        if cached is not None and time.monotonic() - cached[1] < MAX_AGE_SECONDS:
            return cached[0]
        pending = self._inflight.get(key_hash)
        if pending is None:
            loop = asyncio.get_running_loop()
            pending = loop.run_in_executor(self._executor, _load_token, key_hash)
            self._inflight[key_hash] = pending
            try:
                snapshot = await pending
            finally:
                self._inflight.pop(key_hash, None)
            if len(self._tokens) > 100_000:  # unknown-token floods must not grow memory without bound
                self._tokens.clear()
            self._tokens[key_hash] = (snapshot, time.monotonic())
            return snapshot
        return await pending


def bump_config_version() -> None:
    """Tell every proxy worker to drop its snapshots (called on commit of any relevant change)."""
    try:
        client = redis.Redis.from_url(settings.REDIS_URL)
        client.incr(VERSION_KEY)
        client.close()
    except redis.RedisError:
        logger.exception("could not bump the proxy config version; workers refresh within %ss anyway", MAX_AGE_SECONDS)
