"""FX feeds: the Bank of Russia's daily XML, fetched, validated whole, then stored as versions.

Format (https://www.cbr.ru/development/sxml/, served at https://www.cbr.ru/scripts/XML_daily.asp)::

    <?xml version="1.0" encoding="windows-1251"?>
    <ValCurs Date="13.12.2025" name="Foreign Currency Market">
      <Valute ID="R01235"><NumCode>840</NumCode><CharCode>USD</CharCode><Nominal>1</Nominal>
        <Name>Доллар США</Name><Value>79,0000</Value><VunitRate>79</VunitRate></Valute>
      ...
    </ValCurs>

``Value`` is the price in rubles of ``Nominal`` units (comma decimals); ``VunitRate`` (since
2022–23, optional here) the price of one unit. ``Date`` is the day (Moscow) the rates are set
for; it may be tomorrow, or lie on a working day before a weekend.

The document is parsed with ``defusedxml`` (no DTD, so no entity expansion: an XML bomb is
refused, not expanded) and checked whole before anything is written: one bad entry and nothing
changes. Every run is recorded as a ``FeedRun``; a refused document is also logged at CRITICAL.
The fetching and run recording here are shared with the price feed (``apps.providers.catalogue``).
"""

from __future__ import annotations

import datetime as dt
import logging
import re
import zoneinfo
from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation
from pathlib import Path
from xml.etree.ElementTree import Element, ParseError

import defusedxml.ElementTree as SafeET
import httpx
from defusedxml.common import DefusedXmlException
from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import transaction
from django.utils import timezone

from apps.billing.fx import set_fx_rate
from apps.billing.models import FeedRun
from lib.money import MICRO, Currency

logger = logging.getLogger("jetstream.feeds")

MOSCOW = zoneinfo.ZoneInfo("Europe/Moscow")
FX_FEED = "fx"
# A published date further ahead than this is not a real Bank of Russia document.
MAX_DAYS_AHEAD = 3
# ``Value`` carries 4 decimals; ``VunitRate`` must agree with Value / Nominal to this many rubles.
VUNIT_TOLERANCE = Decimal("0.0001")
_DECIMAL = re.compile(r"\d{1,12}(?:[.,]\d{1,12})?")


class FeedError(ValueError):
    """A feed document that cannot be fetched or is not acceptable; nothing was changed."""


@dataclass(frozen=True)
class DailyRates:
    """A parsed daily document: the Moscow ``date`` it is for and, for each currency of
    ``lib.money.Currency`` other than the ruble, integer micro-RUB per one unit."""

    date: dt.date
    rates: dict[str, int]

    @property
    def valid_from(self) -> dt.datetime:
        """Midnight in Moscow of ``date``: when these rates take effect."""
        return dt.datetime.combine(self.date, dt.time(), tzinfo=MOSCOW)


def fetch_document(source: str, *, timeout: float | None = None, max_bytes: int | None = None) -> bytes:
    """The bytes at ``source``: an http(s) URL (GET, redirects followed) or a file path. Raises
    ``FeedError`` on a network error, a non-200 answer, an empty document, or one over ``max_bytes``
    (default ``JETSTREAM_FEED_MAX_BYTES``). ``timeout`` seconds defaults to ``JETSTREAM_FEED_TIMEOUT``."""
    limit = max_bytes or settings.JETSTREAM_FEED_MAX_BYTES
    if not source:
        raise FeedError("no source configured")
    if source.startswith(("http://", "https://")):
        body = _fetch_url(source, timeout or settings.JETSTREAM_FEED_TIMEOUT, limit)
    else:
        try:
            with Path(source).open("rb") as handle:
                body = handle.read(limit + 1)
        except OSError as exc:
            raise FeedError(f"cannot read {source}: {exc.strerror or exc}") from None
    if len(body) > limit:
        raise FeedError(f"the document is larger than {limit} bytes")
    if not body.strip():
        raise FeedError("the document is empty")
    return body


def _fetch_url(url: str, timeout: float, limit: int) -> bytes:
    try:
        with httpx.Client(timeout=timeout, follow_redirects=True, headers={"User-Agent": "Jetstream"}) as client:
            with client.stream("GET", url) as response:
                if response.status_code != 200:
                    raise FeedError(f"{url} answered HTTP {response.status_code}")
                chunks: list[bytes] = []
                size = 0
                for chunk in response.iter_bytes():
                    chunks.append(chunk)
                    size += len(chunk)
                    if size > limit:
                        break
                return b"".join(chunks)
    except httpx.HTTPError as exc:
        raise FeedError(f"cannot fetch {url}: {type(exc).__name__}") from None


def record_run(*, feed: str, source: str, added: int = 0, error: str = "") -> FeedRun:
    """Record one run of ``feed`` (``error`` empty: accepted, ``added`` versions added). A refusal is
    logged at CRITICAL: the operator must look (prices or rates are not being kept current)."""
    if error:
        logger.critical("%s feed %s refused; nothing changed: %s", feed, source, error)
    else:
        logger.info("%s feed %s accepted: %s new version(s)", feed, source, added)
    return FeedRun.objects.create(feed=feed, source=source[:500], ok=not error, added=added, detail=error)


def parse_cbr_daily(document: bytes, *, today: dt.date | None = None) -> DailyRates:
    """Parse a Bank of Russia ``XML_daily`` document (bytes, encoding from its prolog, usually
    windows-1251). Returns the rates of every non-ruble ``Currency``, exactly converted to integer
    micro-RUB per unit (Decimal, rounded half up at the sixth decimal). Raises ``FeedError`` for
    anything malformed or hostile: not XML, a DTD or entity (an XML bomb), no or bad ``Date``, a
    date more than ``MAX_DAYS_AHEAD`` days after ``today`` (Moscow), a bad or repeated ``Valute``,
    a ``VunitRate`` that disagrees with ``Value``/``Nominal``, or a currency we price in missing."""
    try:
        root = SafeET.fromstring(document, forbid_dtd=True)
    except (ParseError, DefusedXmlException, ValueError) as exc:
        raise FeedError(f"not an acceptable XML document: {type(exc).__name__}") from None
    if root.tag != "ValCurs":
        raise FeedError(f"the root element is <{root.tag}>, not <ValCurs>")
    try:
        date = dt.datetime.strptime(root.get("Date") or "", "%d.%m.%Y").date()
    except ValueError:
        raise FeedError(f"ValCurs Date {root.get('Date')!r} is not dd.mm.yyyy") from None
    today = today or timezone.now().astimezone(MOSCOW).date()
    if date > today + dt.timedelta(days=MAX_DAYS_AHEAD):
        raise FeedError(f"the document is dated {date}, too far ahead of {today}")
    rates: dict[str, int] = {}
    for valute in root.iter("Valute"):
        code, micro = _valute(valute)
        if code in rates:
            raise FeedError(f"{code} appears twice")
        rates[code] = micro
    wanted = [c for c in Currency.values if c != Currency.RUB]
    missing = [c for c in wanted if c not in rates]
    if missing:
        raise FeedError(f"no rate for {', '.join(missing)}")
    return DailyRates(date=date, rates={c: rates[c] for c in wanted})


def _valute(valute: Element) -> tuple[str, int]:
    """(CharCode, micro-RUB per unit) of one ``Valute``; raises ``FeedError``."""
    code = (valute.findtext("CharCode") or "").strip()
    if not re.fullmatch(r"[A-Z]{3}", code):
        raise FeedError(f"a Valute has CharCode {code!r}")
    nominal_text = (valute.findtext("Nominal") or "").strip()
    if not nominal_text.isdigit() or int(nominal_text) <= 0:
        raise FeedError(f"{code}: Nominal {nominal_text!r} is not a positive integer")
    nominal = int(nominal_text)
    value = _decimal(valute.findtext("Value"), f"{code} Value")
    per_unit = value / nominal
    vunit_text = valute.findtext("VunitRate")
    if vunit_text is not None:
        vunit = _decimal(vunit_text, f"{code} VunitRate")
        if abs(vunit * nominal - value) > VUNIT_TOLERANCE * nominal:
            raise FeedError(f"{code}: VunitRate {vunit} disagrees with Value {value} / Nominal {nominal}")
    micro = int((per_unit * MICRO).quantize(Decimal(1), rounding=ROUND_HALF_UP))
    if micro <= 0:
        raise FeedError(f"{code}: the rate rounds to zero")
    return code, micro


def _decimal(text: str | None, what: str) -> Decimal:
    """'79,0000' or '86.89' → Decimal; raises ``FeedError`` for anything else (signs, exponents, NaN)."""
    text = (text or "").strip()
    if not _DECIMAL.fullmatch(text):
        raise FeedError(f"{what} {text!r} is not a decimal number")
    try:
        return Decimal(text.replace(",", "."))
    except InvalidOperation:  # pragma: no cover - the pattern admits only digits
        raise FeedError(f"{what} {text!r} is not a decimal number") from None


def update_fx_rates(*, source: str | None = None) -> FeedRun | None:
    """Fetch the daily document from ``source`` (default ``JETSTREAM_FX_SOURCE``; empty: do nothing,
    return None — manual rates only), validate it whole and store each rate with ``set_fx_rate`` as
    of the document's date (a new version only where the rate changed; an unchanged one is marked
    as restated for that date). All or nothing, idempotent: a second run adds nothing. Returns the
    recorded ``FeedRun`` (``ok`` False: nothing changed)."""
    source = source if source is not None else settings.JETSTREAM_FX_SOURCE
    if not source:
        return None
    try:
        parsed = parse_cbr_daily(fetch_document(source))
    except FeedError as exc:
        return record_run(feed=FX_FEED, source=source, error=str(exc))
    label = "cbr" if "cbr.ru" in source else "feed"
    try:
        with transaction.atomic():
            added = sum(set_fx_rate(currency=currency, rub_per_unit=micro, valid_from=parsed.valid_from, source=label).changed
                        for currency, micro in parsed.rates.items())
    except ValidationError as exc:
        return record_run(feed=FX_FEED, source=source, error="; ".join(exc.messages))
    return record_run(feed=FX_FEED, source=source, added=added)
