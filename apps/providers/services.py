"""Providers services: egress proxies, providers, supplier keys, local nodes, models, price versions.

FX rates are billing's (apps.billing.fx.set_fx_rate).

Keyword-only, atomic, and (like the accounts upserts) with ``dry_run`` to validate and report
without writing. Secrets (supplier keys, egress URLs) are compared by decrypting the stored
value and are never part of an outcome or an error.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import redis
from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import transaction
from django.utils import timezone
from django.utils.translation import gettext_lazy as _

from apps.accounts.models import Company, CompanyModelCoefficient, Supplier
from apps.billing.suppliers import KeyMonth, key_month_figures
from apps.providers import key_health
from apps.providers.models import (
    RUSSIAN_KINDS,
    EgressProxy,
    LocalNode,
    Model,
    NodeCostMode,
    Price,
    Provider,
    ProviderEgress,
    SupplierKey,
    SupplierKeyStatus,
)
from lib.crypto import SecretDecryptionError
from lib.upsert import UNCHANGED, UPDATED, Outcome, find_for_update, model_default, save_staged, stage

logger = logging.getLogger("jetstream.providers")


def upsert_egress_proxy(*, slug: str, country: str, url: str, internal: bool = False, probe_url: str = "",
                        dry_run: bool = False) -> Outcome:
    """``url`` may carry proxy credentials: it is stored encrypted and compared decrypted. ``probe_url``:
    what the health check requests through it ("" = the base URL of the first provider using it)."""
    with transaction.atomic():
        # Lock: two configuration runs editing the same proxy.
        proxy = find_for_update(EgressProxy.objects, dry_run=dry_run, slug=slug) or EgressProxy(slug=slug)
        changed = stage(proxy, {"country": (country or "").upper(), "internal": internal, "probe_url": probe_url})
        url_changed = proxy._state.adding or _revealed(proxy.reveal_url) != url
        if url_changed or "internal" in changed:
            proxy.set_url(url)  # validates the URL against SSRF under the (new) internal flag
        if url_changed and not proxy._state.adding:
            changed.append("url")
        return save_staged(proxy, changed, dry_run=dry_run)


def _revealed(reveal) -> str | None:
    try:
        return reveal()
    except SecretDecryptionError:
        return None  # encrypted under a key no longer configured: store it afresh


def upsert_provider(
    *,
    slug: str,
    kind: str,
    name: str = "",
    base_url: str = "",
    internal: bool = False,
    options: dict[str, Any] | None = None,
    egresses: list[EgressProxy] | None = None,
    country: str = "",
    dry_run: bool = False,
) -> Outcome:
    """``base_url`` is checked against SSRF by ``Provider.clean`` (loopback/private only if ``internal``).
    ``egresses``: the provider's egress proxies in the order calls try them (None or [] = none: calls
    leave directly); a different list replaces the stored one (reported as "egress")."""
    with transaction.atomic():
        # Lock: two configuration runs editing the same provider.
        provider = find_for_update(Provider.objects, dry_run=dry_run, slug=slug) or Provider(slug=slug)
        changed = stage(provider, {
            "kind": kind, "name": name, "base_url": base_url, "internal": internal,
            "options": options or {},
            "country": (country or ("RU" if kind in RUSSIAN_KINDS else "")).upper(),
        })
        wanted = list(egresses or [])
        current = [] if provider.pk is None else [link.egress for link in provider.egress_links.select_related("egress")
                                                  .order_by("priority", "egress__slug")]
        links_changed = [egress.pk for egress in wanted] != [egress.pk for egress in current] or any(
            egress.pk is None for egress in wanted)
        if links_changed and not provider._state.adding:
            changed.append("egress")
        outcome = save_staged(provider, changed, dry_run=dry_run)
        if links_changed and not dry_run:
            set_provider_egresses(provider=provider, egresses=wanted)
        return outcome


def set_provider_egresses(*, provider: Provider, egresses: list[EgressProxy]) -> None:
    """Replace ``provider``'s egress proxies by ``egresses``, tried in that order (priority 0, 1, …)."""
    with transaction.atomic():
        ProviderEgress.objects.filter(provider=provider).delete()
        ProviderEgress.objects.bulk_create(ProviderEgress(provider=provider, egress=egress, priority=index)
                                           for index, egress in enumerate(egresses))


def upsert_supplier_key(
    *,
    provider: Provider,
    name: str,
    supplier: Supplier,
    secret: str,
    weight: int | None = None,
    priority: int | None = None,
    status: str | None = None,
    buy_coefficient: Decimal | None = None,
    dry_run: bool = False,
) -> Outcome:
    """Create or update the key ``name`` of ``provider``. ``status`` None keeps the current one
    (the router sets cooldown/exhausted/invalid; configuration should not undo that by omission).
    The secret is replaced only when it differs from the stored one."""
    with transaction.atomic():
        key = None
        if provider.pk is not None:
            # Lock: the router updates a key's status while configuration edits it.
            key = find_for_update(SupplierKey.objects, dry_run=dry_run, provider=provider, name=name)
        key = key or SupplierKey(provider=provider, name=name)
        values: dict[str, Any] = {
            "supplier": supplier,
            "weight": weight if weight is not None else model_default(SupplierKey, "weight"),
            "priority": priority if priority is not None else model_default(SupplierKey, "priority"),
            "buy_coefficient": buy_coefficient if buy_coefficient is not None else model_default(SupplierKey, "buy_coefficient"),
        }
        if status is not None:
            values["status"] = status
        changed = stage(key, values)
        if "status" in changed:
            key.status_reason = ""
        if key._state.adding or _revealed(key.reveal_secret) != secret.strip():
            key.set_secret(secret)
            if not key._state.adding:
                changed.append("secret")
        return save_staged(key, changed, dry_run=dry_run)


def upsert_model(
    *,
    name: str,
    provider: Provider,
    upstream_model: str | None = None,
    modality: str | None = None,
    context_window: int | None = None,
    max_output_tokens: int | None = None,
    fallbacks: list[str] | None = None,
    routing: str | None = None,
    dry_run: bool = False,
) -> Outcome:
    """The public model ``name`` served by ``provider`` as ``upstream_model`` (default: ``name``),
    with its fallback chain (public names, in order) and routing strategy (``Routing``)."""
    with transaction.atomic():
        # Lock: two configuration runs editing the same model.
        model = find_for_update(Model.objects, dry_run=dry_run, name=name) or Model(name=name)
        changed = stage(model, {
            "provider": provider,
            "upstream_model": upstream_model or name,
            "modality": modality or model_default(Model, "modality"),
            "context_window": context_window if context_window is not None else model_default(Model, "context_window"),
            "max_output_tokens": max_output_tokens if max_output_tokens is not None else model_default(Model, "max_output_tokens"),
            "fallbacks": list(fallbacks or []),
            "routing": routing or model_default(Model, "routing"),
        })
        return save_staged(model, changed, dry_run=dry_run)


def set_model_price(
    *,
    model: Model,
    currency: str,
    input_per_1m: int,
    output_per_1m: int,
    cached_input_per_1m: int | None = None,
    valid_from: datetime | None = None,
    dry_run: bool = False,
    extras: dict[str, int | None] | None = None,
    source: str = "",
) -> Outcome:
    """Add a price version (micro-units of ``currency`` per 1M tokens) unless the current one is equal.

    Older versions are kept: usage records point at the version they were billed with.
    ``cached_input_per_1m`` defaults to the input price. ``extras`` may give ``cache_write_per_1m``
    (per 1M tokens), ``per_request`` and ``per_image`` (micro-units each; None = not priced so),
    compared like the token prices; ``source`` (a URL or feed name) is recorded on a new version only.
    """
    wanted: dict[str, Any] = {
        "currency": currency,
        "input_per_1m": input_per_1m,
        "output_per_1m": output_per_1m,
        "cached_input_per_1m": cached_input_per_1m if cached_input_per_1m is not None else input_per_1m,
    }
    if extras is not None:
        wanted.update({name: extras.get(name) for name in ("cache_write_per_1m", "per_request", "per_image")})
    with transaction.atomic():
        current = None
        if model.pk is not None:
            if not dry_run:
                # Lock the model: two writers would both compare against the same current
                # version and add two new ones.
                Model.objects.select_for_update().filter(pk=model.pk).first()
            current = Price.objects.current_for(model)
        changed = [field for field, value in wanted.items() if current is not None and getattr(current, field) != value]
        if current is not None and not changed:
            return Outcome(current, UNCHANGED)
        price = Price(model=model, valid_from=valid_from or timezone.now(), source=source, **wanted)
        outcome = save_staged(price, [], dry_run=dry_run)
        return outcome if current is None else Outcome(price, UPDATED, tuple(changed))


# --- Local nodes ---------------------------------------------------------------------------------

def upsert_local_node(
    *,
    provider: Provider,
    name: str,
    base_url: str,
    supplier: Supplier | None = None,
    secret: str = "",
    weight: int | None = None,
    internal: bool = False,
    cost: dict[str, int] | None = None,
    health_path: str | None = None,
    dry_run: bool = False,
) -> Outcome:
    """Create or update the node ``name`` of ``provider`` (an ``openai_compatible`` one).

    ``cost`` is ``{"input_per_1m": micro-RUB, "output_per_1m": micro-RUB}`` or ``{"gpu_hour":
    micro-RUB, "tokens_per_hour": tokens}`` (None: no cost). ``secret`` "" = a node without a key;
    it is replaced only when it differs from the stored one. ``base_url`` is checked against SSRF
    by ``LocalNode.clean`` (a private address only if ``internal``). The health fields are the
    health task's, and ``is_active`` the admin's (a new node is active): never touched here."""
    cost = cost or {}
    gpu = "gpu_hour" in cost
    with transaction.atomic():
        node = None
        if provider.pk is not None:
            # Lock: two configuration runs editing the same node.
            node = find_for_update(LocalNode.objects, dry_run=dry_run, provider=provider, name=name)
        node = node or LocalNode(provider=provider, name=name)
        changed = stage(node, {
            "base_url": base_url, "supplier": supplier, "internal": internal,
            "weight": weight if weight is not None else model_default(LocalNode, "weight"),
            "health_path": health_path or model_default(LocalNode, "health_path"),
            "cost_mode": NodeCostMode.GPU_HOUR if gpu else NodeCostMode.PER_TOKENS,
            "input_per_1m": 0 if gpu else cost.get("input_per_1m", 0),
            "output_per_1m": 0 if gpu else cost.get("output_per_1m", 0),
            "gpu_hour": cost.get("gpu_hour", 0), "tokens_per_hour": cost.get("tokens_per_hour", 0),
        })
        if node._state.adding or _revealed(node.reveal_secret) != (secret or "").strip():
            node.set_secret(secret)
            if not node._state.adding:
                changed.append("secret")
        return save_staged(node, changed, dry_run=dry_run)


# --- Supplier keys as their owner and the operator see them (the cabinets) ------------------------

KEY_HEALTH_UNKNOWN = "unknown"  # Redis could not be read
KEY_HEALTH_SERVING = "serving"  # circuit closed
KEY_HEALTH_OPEN = "open"  # circuit open: no traffic until the cool-off ends
KEY_HEALTH_HALF_OPEN = "half_open"  # probing after a cool-off
KEY_HEALTH_INVALID = "invalid"  # the provider refused the key (401/403)
KEY_HEALTH_EXHAUSTED = "exhausted"  # out of quota or money (402 / insufficient_quota)

KEY_HEALTH_LABELS = {
    KEY_HEALTH_UNKNOWN: _("unknown"),
    KEY_HEALTH_SERVING: _("serving"),
    KEY_HEALTH_OPEN: _("circuit open"),
    KEY_HEALTH_HALF_OPEN: _("half-open (probing)"),
    KEY_HEALTH_INVALID: _("refused by the provider"),
    KEY_HEALTH_EXHAUSTED: _("out of quota"),
}


@dataclass(frozen=True)
class KeyOverview:
    """One supplier key with its shared health (``key_health.py``) and its month so far.

    ``health`` is one of the ``KEY_HEALTH_*`` codes (``health_label`` the words for it);
    ``circuit`` the breaker as routing sees it (``closed`` / ``open`` / ``half_open``, "" when
    unknown); ``failures`` consecutive failures; ``last_error`` what the provider last said (scrubbed
    by the proxy) at ``last_error_at``; ``cooldown_until`` a rate-limit cooldown's end (or None);
    ``month`` requests, errors and spend (micro-RUB, buy price) this calendar month."""

    key: SupplierKey
    health: str
    circuit: str
    failures: int
    last_error: str
    last_error_at: datetime | None
    cooldown_until: datetime | None
    month: KeyMonth

    @property
    def health_label(self) -> str:
        """``health`` in the active language."""
        return str(KEY_HEALTH_LABELS[self.health])

    @property
    def cap_used_percent(self) -> int | None:
        """This month's spend as a whole percentage of the key's ``monthly_cap`` (None: no cap)."""
        cap = self.key.monthly_cap
        return None if not cap else min(999, self.month.spent * 100 // cap)


def read_key_health(key_ids: list[int]) -> dict[int, key_health.KeyHealth] | None:
    """The shared health records of ``key_ids`` (a key without one is healthy), or None when Redis
    cannot be read (a page then says "unknown" rather than failing)."""
    try:
        client = redis.Redis.from_url(settings.REDIS_URL, socket_timeout=2)
        try:
            return key_health.read_health(client, key_ids)
        finally:
            client.close()
    except redis.RedisError:
        logger.warning("could not read the supplier keys' health from Redis")
        return None


def _when(unix: float) -> datetime | None:
    return datetime.fromtimestamp(unix, UTC) if unix else None


def key_overviews(keys: Iterable[SupplierKey], *, now: datetime | None = None) -> list[KeyOverview]:
    """``KeyOverview`` of each of ``keys``, in their order: one Redis read and one usage query
    for all of them."""
    keys = list(keys)
    ids = [key.pk for key in keys]
    records = read_key_health(ids)
    months = key_month_figures(ids, now=now)
    clock = (now or timezone.now()).timestamp()
    result = []
    for key in keys:
        month = months.get(key.pk, KeyMonth(0, 0, 0))
        if records is None:
            result.append(KeyOverview(key, KEY_HEALTH_UNKNOWN, "", 0, "", None, None, month))
            continue
        record = records.get(key.pk, key_health.KeyHealth())
        circuit = record.circuit(clock)
        if record.parked(key.updated_at.timestamp()):
            health = KEY_HEALTH_INVALID if record.state == key_health.INVALID else KEY_HEALTH_EXHAUSTED
        else:
            health = {key_health.OPEN: KEY_HEALTH_OPEN, key_health.HALF_OPEN: KEY_HEALTH_HALF_OPEN}.get(circuit, KEY_HEALTH_SERVING)
        result.append(KeyOverview(key, health, circuit, record.failures, record.error, _when(record.at),
                                  _when(record.cool_until) if record.cool_until > clock else None, month))
    return result


def add_supplier_key(*, supplier: Supplier, provider: Provider, name: str, secret: str, monthly_cap: int | None = None) -> SupplierKey:
    """A supplier adds an upstream key of ``provider``: stored encrypted (``SupplierKey.set_secret``;
    afterwards only its last 4 characters are shown), active at once, weight 1, priority 0, buy
    coefficient 1 (the operator may change those). ``monthly_cap`` micro-RUB at the buy price, None =
    no cap. Raises ``ValidationError`` (a short secret, a name the provider already has, an inactive
    provider, a cap ≤ 0); nothing is written then."""
    if not provider.is_active:
        raise ValidationError({"provider": _("This provider is not available.")})
    key = SupplierKey(supplier=supplier, provider=provider, name=(name or "").strip(), monthly_cap=monthly_cap)
    key.set_secret(secret)
    with transaction.atomic():
        key.full_clean()
        key.save()
    logger.info("supplier %s added key %s of provider %s", supplier.pk, key.pk, provider.slug)
    return key


def _lock_key(key: SupplierKey) -> SupplierKey:
    # Lock: the proxy's status writer (key_status.py) and a person changing the same key.
    return SupplierKey.objects.select_for_update().get(pk=key.pk)


def _forget_health(key_id: int) -> None:
    try:
        client = redis.Redis.from_url(settings.REDIS_URL, socket_timeout=2)
        try:
            key_health.reset_health(client, key_id)
        finally:
            client.close()
    except redis.RedisError:
        # A parked state older than the key's last save is ignored anyway (KeyHealth.parked).
        logger.warning("could not clear the health of supplier key %s", key_id)


def set_supplier_key_enabled(*, key: SupplierKey, enabled: bool) -> SupplierKey:
    """Disable a key (status ``disabled``: the balancer stops using it within a poll) or enable it
    again (status ``active``; the proxies forget why they benched it). Idempotent: a key already in
    the wanted state is returned unchanged."""
    with transaction.atomic():
        locked = _lock_key(key)
        wanted = SupplierKeyStatus.ACTIVE if enabled else SupplierKeyStatus.DISABLED
        if locked.status == wanted:
            return locked
        locked.status = wanted
        locked.status_reason = "" if enabled else str(_("Disabled by the supplier"))
        locked.save(update_fields=["status", "status_reason", "updated_at"])
    if enabled:
        _forget_health(locked.pk)
    return locked


def rotate_supplier_key_secret(*, key: SupplierKey, secret: str) -> SupplierKey:
    """Replace the key's secret (encrypted; only its last 4 characters shown afterwards). A key the
    provider refused or found exhausted is active again with the new secret; a disabled key stays
    disabled. Raises ``ValidationError`` keyed ``secret`` for a secret that is too short."""
    with transaction.atomic():
        locked = _lock_key(key)
        locked.set_secret(secret)
        fields = ["secret_encrypted", "secret_key_id", "secret_last4", "updated_at"]
        if locked.status in (SupplierKeyStatus.INVALID, SupplierKeyStatus.EXHAUSTED, SupplierKeyStatus.COOLDOWN):
            locked.status, locked.status_reason = SupplierKeyStatus.ACTIVE, ""
            fields += ["status", "status_reason"]
        locked.save(update_fields=fields)
    _forget_health(locked.pk)
    logger.info("supplier key %s: secret rotated", locked.pk)
    return locked


def set_supplier_key_cap(*, key: SupplierKey, monthly_cap: int | None) -> SupplierKey:
    """Set the key's monthly spend cap (micro-RUB at the buy price; None = no cap). The balancer
    leaves the key out once its month's spend reaches the cap (``keys_over_cap``). Raises
    ``ValidationError`` for a cap ≤ 0."""
    if monthly_cap is not None and monthly_cap <= 0:
        raise ValidationError({"monthly_cap": _("A cap is greater than zero; leave it empty for no cap.")})
    with transaction.atomic():
        locked = _lock_key(key)
        if locked.monthly_cap != monthly_cap:
            locked.monthly_cap = monthly_cap
            locked.save(update_fields=["monthly_cap", "updated_at"])
    return locked


# --- The catalogue as the operator reads it -------------------------------------------------------

@dataclass(frozen=True)
class CatalogModel:
    """A model, its provider and the price version in force (None: unpriced, not served)."""

    model: Model
    price: Price | None


def model_catalog(*, now: datetime | None = None) -> list[CatalogModel]:
    """Every model with its provider and current price, by provider and name. Two queries."""
    at = now or timezone.now()
    models_ = list(Model.objects.select_related("provider").order_by("provider__slug", "name"))
    current: dict[int, Price] = {}
    for price in Price.objects.filter(valid_from__lte=at).order_by("model_id", "-valid_from").distinct("model_id"):
        current[price.model_id] = price
    return [CatalogModel(model, current.get(model.pk)) for model in models_]


def set_company_model_coefficient(*, company: Company, model: Model, sell_coefficient: Decimal | None) -> CompanyModelCoefficient | None:
    """Set ``company``'s sell coefficient for ``model`` (Decimal > 0, 4 places); None removes it (the
    model then falls back to the company's coefficient, else the platform default). Returns the row
    (None when removed). Setting the value it already has writes nothing. Raises ``ValidationError``
    for a coefficient out of range."""
    with transaction.atomic():
        # Lock: two operators setting the same pair; the unique (company, model) backs it.
        row = CompanyModelCoefficient.objects.select_for_update().filter(company=company, model=model).first()
        if sell_coefficient is None:
            if row is not None:
                row.delete()
            return None
        if row is not None and row.sell_coefficient == sell_coefficient:
            return row
        row = row or CompanyModelCoefficient(company=company, model=model)
        row.sell_coefficient = sell_coefficient
        row.full_clean(exclude=["company", "model"])
        row.save()
        return row
