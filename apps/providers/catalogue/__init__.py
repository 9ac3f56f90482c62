"""The price catalogue: list prices as a JSON document, validated whole, applied as price versions.

The same format serves the shipped catalogue (``prices.json`` next to this file, loaded by
``manage.py load_prices``) and the price feed (``JETSTREAM_PRICES_SOURCE``, read by the
``apps.providers.tasks.update_prices`` task); docs/billing.md "Prices and currencies" documents it::

    {"format": "jetstream-prices/1",
     "prices": [{"provider": "openai", "model": "gpt-4o-mini", "aliases": ["gpt-4o-mini-2024-07-18"],
                 "currency": "USD", "input": "0.15", "cached_input": "0.075", "output": "0.60",
                 "source": "https://openai.com/api/pricing", "as_of": "2026-08-05", "note": "..."}]}

Amounts are decimal strings (or JSON numbers, read exactly) in units of ``currency`` per 1M tokens
(``per_request`` / ``per_image`` per request / image). An entry prices every ``Model`` whose
provider is of kind ``provider`` and whose upstream model id is ``model`` or one of ``aliases``.
A price that differs from the model's current version becomes a new version from now; an equal
one adds nothing. A document with any bad entry changes nothing.
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import transaction

from apps.billing.fx_sources import FeedError, fetch_document, record_run
from apps.billing.models import FeedRun
from apps.providers.models import Model, ProviderKind
from apps.providers.services import set_model_price
from lib.money import Currency, MoneyFormatError, to_micro

FORMAT = "jetstream-prices/1"
PRICES_FEED = "prices"
SHIPPED = Path(__file__).with_name("prices.json")

_AMOUNTS = ("input", "output", "cached_input", "cache_write", "per_request", "per_image")
_REQUIRED = ("provider", "model", "currency", "input", "output", "source", "as_of")
_KEYS = frozenset((*_AMOUNTS, *_REQUIRED, "aliases", "note"))
_MAX_ERRORS = 20


class PriceDocumentError(FeedError):
    """A price document that is not acceptable; ``errors`` lists what is wrong (the first 20)."""

    def __init__(self, errors: list[str]) -> None:
        self.errors = errors
        super().__init__("; ".join(errors))


@dataclass(frozen=True)
class PriceEntry:
    """One model's list price: amounts in micro-units of ``currency`` (per 1M tokens, or per
    request / image); ``cached_input`` None means the input price; None elsewhere: not charged so."""

    provider: str
    model: str
    currency: str
    input: int
    output: int
    source: str
    as_of: dt.date
    cached_input: int | None = None
    cache_write: int | None = None
    per_request: int | None = None
    per_image: int | None = None
    aliases: tuple[str, ...] = ()
    note: str = ""

    @property
    def upstream_ids(self) -> tuple[str, ...]:
        """The upstream model ids this entry prices."""
        return (self.model, *self.aliases)


@dataclass
class ApplyResult:
    """What applying a document did: ``added`` new versions (model names), ``unchanged`` models
    already at the price, ``unmatched`` entries no model of the operator's uses, and ``notes`` the
    catalogue's caveats (a third-party source, an assumed id) for the models given a new version."""

    added: list[str] = field(default_factory=list)
    notes: dict[str, str] = field(default_factory=dict)
    unchanged: list[str] = field(default_factory=list)
    unmatched: int = 0


def parse_document(raw: bytes) -> list[PriceEntry]:
    """Parse and validate a whole price document (UTF-8 JSON). Raises ``PriceDocumentError`` naming
    each bad entry (not JSON, wrong ``format``, unknown provider kind or currency, a missing or
    negative amount, a float-like amount with more than 6 decimals, no ``source`` URL or ``as_of``
    date, a date in the future, an unknown key, an upstream id priced twice)."""
    try:
        document = json.loads(raw, parse_float=Decimal)
    except (ValueError, UnicodeDecodeError) as exc:
        raise PriceDocumentError([f"not a JSON document: {exc}"]) from None
    if not isinstance(document, dict) or document.get("format") != FORMAT:
        raise PriceDocumentError([f'the document must be an object with "format": "{FORMAT}"'])
    items = document.get("prices")
    if not isinstance(items, list) or not items:
        raise PriceDocumentError(['"prices" must be a non-empty list'])
    entries: list[PriceEntry] = []
    errors: list[str] = []
    seen: set[tuple[str, str]] = set()
    for index, item in enumerate(items):
        try:
            entry = _entry(item)
        except ValueError as exc:
            errors.append(f"prices[{index}]: {exc}")
            continue
        for upstream in entry.upstream_ids:
            if (entry.provider, upstream) in seen:
                errors.append(f"prices[{index}]: {entry.provider} {upstream} is priced twice")
            seen.add((entry.provider, upstream))
        entries.append(entry)
    if errors:
        raise PriceDocumentError(errors[:_MAX_ERRORS])
    return entries


def _entry(item: Any) -> PriceEntry:
    """One validated entry; raises ``ValueError`` saying what is wrong."""
    if not isinstance(item, dict):
        raise ValueError("an entry must be an object")
    unknown = sorted(set(item) - _KEYS)
    missing = [key for key in _REQUIRED if item.get(key) in (None, "")]
    if unknown or missing:
        raise ValueError(f"unknown keys {unknown}, missing {missing}" if unknown else f"missing {missing}")
    if item["provider"] not in ProviderKind.values:
        raise ValueError(f"provider {item['provider']!r} is not a provider kind")
    if item["currency"] not in Currency.values:
        raise ValueError(f"currency {item['currency']!r} is not one of {', '.join(Currency.values)}")
    source = item["source"]
    if not isinstance(source, str) or not source.startswith(("https://", "http://")) or len(source) > 300:
        raise ValueError("source must be the URL of the price's page (at most 300 characters)")
    try:
        as_of = dt.date.fromisoformat(str(item["as_of"]))
    except ValueError:
        raise ValueError(f"as_of {item['as_of']!r} is not a YYYY-MM-DD date") from None
    if as_of > dt.date.today() + dt.timedelta(days=1):
        raise ValueError(f"as_of {as_of} is in the future")
    aliases = item.get("aliases", [])
    if not isinstance(aliases, list) or not all(isinstance(a, str) and a for a in aliases):
        raise ValueError("aliases must be a list of upstream model ids")
    amounts = {key: _amount(item, key) for key in _AMOUNTS}
    return PriceEntry(provider=item["provider"], model=str(item["model"]), currency=item["currency"], source=source,
                      as_of=as_of, aliases=tuple(aliases), note=str(item.get("note", "")), **amounts)


def _amount(item: dict[str, Any], key: str) -> int | None:
    value = item.get(key)
    if value is None:
        return None
    if isinstance(value, Decimal):  # a JSON number, read exactly
        value = str(value)
    if not isinstance(value, (str, int)) or isinstance(value, bool):
        raise ValueError(f"{key} must be a decimal string")
    try:
        return to_micro(value, field=key)
    except MoneyFormatError as exc:
        raise ValueError(str(exc)) from None


def apply_prices(entries: list[PriceEntry], *, dry_run: bool = False) -> ApplyResult:
    """Add a price version for every model the entries price, where it differs from the current
    one (``set_model_price``). One transaction: all of it or, on an error, nothing. Raises
    ``ValidationError`` from the model's checks."""
    by_id = {(e.provider, upstream): e for e in entries for upstream in e.upstream_ids}
    result = ApplyResult()
    matched: set[PriceEntry] = set()
    with transaction.atomic():
        for model in Model.objects.select_related("provider").order_by("name"):
            entry = by_id.get((model.provider.kind, model.upstream_model))
            if entry is None:
                continue
            matched.add(entry)
            outcome = set_model_price(
                model=model, currency=entry.currency, input_per_1m=entry.input, output_per_1m=entry.output,
                cached_input_per_1m=entry.cached_input, dry_run=dry_run, source=entry.source,
                extras={"cache_write_per_1m": entry.cache_write, "per_request": entry.per_request, "per_image": entry.per_image})
            (result.added if outcome.changed else result.unchanged).append(model.name)
            if outcome.changed and entry.note:
                result.notes[model.name] = entry.note
    result.unmatched = len(entries) - len(matched)
    return result


def load_shipped() -> list[PriceEntry]:
    """The catalogue shipped with Jetstream (``prices.json``), validated. Raises ``PriceDocumentError``."""
    return parse_document(SHIPPED.read_bytes())


def update_prices(*, source: str | None = None) -> FeedRun | None:
    """Fetch the price document from ``source`` (default ``JETSTREAM_PRICES_SOURCE``; empty: do
    nothing, return None), validate it whole and apply it (``apply_prices``). Returns the recorded
    ``FeedRun``: ``ok`` False (logged at CRITICAL) when the document was refused and nothing changed."""
    source = source if source is not None else settings.JETSTREAM_PRICES_SOURCE
    if not source:
        return None
    try:
        result = apply_prices(parse_document(fetch_document(source)))
    except FeedError as exc:
        return record_run(feed=PRICES_FEED, source=source, error=str(exc))
    except ValidationError as exc:
        return record_run(feed=PRICES_FEED, source=source, error="; ".join(exc.messages))
    return record_run(feed=PRICES_FEED, source=source, added=len(result.added))
