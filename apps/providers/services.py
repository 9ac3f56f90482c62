"""Providers services: egress proxies, providers, supplier keys, local nodes, models, price versions.

FX rates are billing's (apps.billing.fx.set_fx_rate).

Keyword-only, atomic, and (like the accounts upserts) with ``dry_run`` to validate and report
without writing. Secrets (supplier keys, egress URLs) are compared by decrypting the stored
value and are never part of an outcome or an error.
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Any

from django.db import transaction
from django.utils import timezone

from apps.accounts.models import Supplier
from apps.providers.models import RUSSIAN_KINDS, EgressProxy, LocalNode, Model, NodeCostMode, Price, Provider, ProviderEgress, SupplierKey
from lib.crypto import SecretDecryptionError
from lib.upsert import UNCHANGED, UPDATED, Outcome, find_for_update, model_default, save_staged, stage


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
