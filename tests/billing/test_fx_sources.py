"""The FX feed: the Bank of Russia's daily XML served by a loopback server, parsed safely and
exactly, stored as versions all-or-nothing and idempotently; staleness."""

from __future__ import annotations

import datetime as dt
import logging

import pytest
from django.utils import timezone

from apps.billing import fx
from apps.billing.fx_sources import MOSCOW, FeedError, parse_cbr_daily, update_fx_rates
from apps.billing.models import FeedRun, FxRate
from tests.fakes.feed_server import CBR_PATH, cbr_daily

DAY = dt.date(2026, 11, 27)


def moscow_midnight(day: dt.date) -> dt.datetime:
    return dt.datetime.combine(day, dt.time(), tzinfo=MOSCOW)


def rates() -> dict[tuple[str, dt.datetime], int]:
    return {(r.currency, r.valid_from): r.rub_per_unit for r in FxRate.objects.all()}


# --------------------------------------------------------------------------- parsing


def test_it_parses_a_windows_1251_document_with_comma_decimals_and_nominals():
    parsed = parse_cbr_daily(cbr_daily(DAY, usd="79,0000", eur="92,1234", cny_per_10="109,1235"), today=DAY)

    assert parsed.date == DAY
    assert parsed.valid_from == moscow_midnight(DAY)
    # CNY: 109.1235 RUB per 10 yuan = 10.91235 RUB per yuan, exactly (no float on the way).
    assert parsed.rates == {"USD": 79_000_000, "EUR": 92_123_400, "CNY": 10_912_350}


def test_it_divides_by_nominal_and_rounds_half_up_at_the_micro_ruble():
    # JPY is not a pricing currency, but its row (Nominal 100) must still be well-formed; IDR at
    # Nominal 10000 needs rounding: 48.1250 / 10000 = 0.0048125 RUB → 4812.5 micro-RUB → 4813.
    idr = ('<Valute ID="R01280"><NumCode>360</NumCode><CharCode>IDR</CharCode><Nominal>10000</Nominal>'
           "<Name>Рупий</Name><Value>48,1250</Value><VunitRate>0,0048125</VunitRate></Valute>")
    from defusedxml.ElementTree import fromstring

    from apps.billing.fx_sources import _valute

    assert _valute(fromstring(idr)) == ("IDR", 4813)
    jpy = fromstring('<Valute><CharCode>JPY</CharCode><Nominal>100</Nominal><Value>52,3456</Value></Valute>')
    assert _valute(jpy) == ("JPY", 523_456)


def test_it_reads_a_document_without_vunitrate_and_a_dotted_one():
    assert parse_cbr_daily(cbr_daily(DAY, vunit=False), today=DAY).rates["CNY"] == 10_912_340
    dotted = cbr_daily(DAY).replace(b"<VunitRate>79</VunitRate>", b"<VunitRate>79.0</VunitRate>")
    assert parse_cbr_daily(dotted, today=DAY).rates["USD"] == 79_000_000


BOMB = b"""<?xml version="1.0"?>
<!DOCTYPE lolz [<!ENTITY lol "lol"><!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
<!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">
<!ENTITY lol4 "&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;">]>
<ValCurs Date="27.11.2026"><Valute><CharCode>USD</CharCode><Nominal>1</Nominal><Value>&lol4;</Value></Valute></ValCurs>"""
EXTERNAL = b"""<?xml version="1.0"?><!DOCTYPE v [<!ENTITY x SYSTEM "file:///etc/passwd">]>
<ValCurs Date="27.11.2026"><Valute><CharCode>&x;</CharCode></Valute></ValCurs>"""

MALFORMED = {
    "empty": b"",
    "blank": b"  \n",
    "not xml": b"<html><body>Service unavailable",
    "xml bomb": BOMB,
    "external entity": EXTERNAL,
    "wrong root": b'<?xml version="1.0"?><Rates Date="27.11.2026"/>',
    "bad date": cbr_daily(DAY).replace(b'Date="27.11.2026"', b'Date="2026-11-27"'),
    "far future": cbr_daily(DAY + dt.timedelta(days=30)),
    "usd missing": cbr_daily(DAY).replace(b"<CharCode>USD</CharCode>", b"<CharCode>XXX</CharCode>"),
    "not a number": cbr_daily(DAY, usd="79,00x0", vunit=False),
    "negative": cbr_daily(DAY, usd="-79,0000", vunit=False),
    "exponent": cbr_daily(DAY, usd="7.9E1", vunit=False),
    "zero": cbr_daily(DAY, usd="0,0000", vunit=False),
    "nominal zero": cbr_daily(DAY).replace(b"<Nominal>10</Nominal>", b"<Nominal>0</Nominal>"),
    "twice": cbr_daily(DAY, extra='<Valute><CharCode>USD</CharCode><Nominal>1</Nominal><Value>80,0000</Value></Valute>'),
    "vunit disagrees": cbr_daily(DAY).replace(b"<VunitRate>79</VunitRate>", b"<VunitRate>97</VunitRate>"),
}


@pytest.mark.parametrize("name", sorted(MALFORMED))
def test_it_refuses_a_malformed_or_hostile_document(name):
    with pytest.raises(FeedError):
        parse_cbr_daily(MALFORMED[name], today=DAY)


# --------------------------------------------------------------------------- the feed, end to end over HTTP


@pytest.mark.django_db
def test_it_stores_each_rate_once_from_the_documents_date(fake_feed):
    url = fake_feed.serve(CBR_PATH, cbr_daily(DAY))

    run = update_fx_rates(source=url)

    assert (run.ok, run.added, run.feed) == (True, 3, "fx")
    assert rates() == {("USD", moscow_midnight(DAY)): 79_000_000, ("EUR", moscow_midnight(DAY)): 92_123_400,
                       ("CNY", moscow_midnight(DAY)): 10_912_340}
    assert set(FxRate.objects.values_list("source", flat=True)) == {"feed"}
    assert fake_feed.requests == [CBR_PATH]

    again = update_fx_rates(source=url)  # idempotent: the same document adds nothing

    assert (again.ok, again.added) == (True, 0)
    assert FxRate.objects.count() == 3


@pytest.mark.django_db
def test_it_adds_a_version_only_for_what_changed_and_marks_the_rest_restated(fake_feed):
    update_fx_rates(source=fake_feed.serve(CBR_PATH, cbr_daily(DAY)))
    next_day = DAY + dt.timedelta(days=1)

    run = update_fx_rates(source=fake_feed.serve(CBR_PATH, cbr_daily(next_day, eur="93,0000")))

    assert (run.ok, run.added) == (True, 1)
    assert FxRate.objects.filter(currency="EUR").count() == 2
    assert FxRate.objects.get(currency="EUR", valid_from=moscow_midnight(next_day)).rub_per_unit == 93_000_000
    usd = FxRate.objects.get(currency="USD")  # unchanged: no new version, restated for the next day
    assert (usd.valid_from, usd.confirmed_for) == (moscow_midnight(DAY), moscow_midnight(next_day))
    assert fx.stated_for(usd) == moscow_midnight(next_day)


@pytest.mark.django_db
@pytest.mark.parametrize("name", ["empty", "xml bomb", "usd missing", "vunit disagrees"])
def test_a_bad_document_changes_nothing_and_alerts(fake_feed, caplog, name):
    update_fx_rates(source=fake_feed.serve(CBR_PATH, cbr_daily(DAY)))
    before = rates()
    fake_feed.serve(CBR_PATH, MALFORMED[name])

    with caplog.at_level(logging.CRITICAL, logger="jetstream.feeds"):
        run = update_fx_rates(source=fake_feed.url())

    assert (run.ok, run.added) == (False, 0)
    assert run.detail
    assert rates() == before
    assert FxRate.objects.filter(confirmed_for__isnull=False).count() == 0
    assert any(r.levelno == logging.CRITICAL and "nothing changed" in r.getMessage() for r in caplog.records)


@pytest.mark.django_db
def test_an_http_error_or_a_missing_file_changes_nothing(fake_feed, tmp_path):
    failed = [update_fx_rates(source=fake_feed.serve(CBR_PATH, b"oops", status=503)),
              update_fx_rates(source=fake_feed.url("/nowhere")),
              update_fx_rates(source=str(tmp_path / "missing.xml")),
              update_fx_rates(source="http://127.0.0.1:1/closed")]

    assert [run.ok for run in failed] == [False] * 4
    assert "503" in failed[0].detail
    assert FxRate.objects.count() == 0
    assert FeedRun.objects.filter(ok=False).count() == 4


@pytest.mark.django_db
def test_it_reads_a_file_source(tmp_path):
    path = tmp_path / "daily.xml"
    path.write_bytes(cbr_daily(DAY))

    assert update_fx_rates(source=str(path)).added == 3


@pytest.mark.django_db
def test_a_different_rate_for_a_recorded_date_is_refused_whole(fake_feed):
    update_fx_rates(source=fake_feed.serve(CBR_PATH, cbr_daily(DAY)))
    before = rates()

    # The same date, EUR and CNY unchanged but USD different: versions are never edited.
    run = update_fx_rates(source=fake_feed.serve(CBR_PATH, cbr_daily(DAY, usd="80,0000")))

    assert not run.ok and "USD" in run.detail and "2026-11-27" in run.detail
    assert rates() == before


@pytest.mark.django_db
def test_the_task_reads_the_configured_source(fake_feed, settings):
    from apps.billing.tasks import fetch_fx_rates

    settings.JETSTREAM_FX_SOURCE = fake_feed.serve(CBR_PATH, cbr_daily(DAY))

    assert fetch_fx_rates() is True
    assert fetch_fx_rates() is True
    assert FxRate.objects.count() == 3
    assert list(FeedRun.objects.order_by("created_at").values_list("added", flat=True)) == [3, 0]

    settings.JETSTREAM_FX_SOURCE = ""  # no source: manual rates only, nothing recorded
    assert fetch_fx_rates() is None
    assert FeedRun.objects.count() == 2


# --------------------------------------------------------------------------- manual rates and staleness


@pytest.mark.django_db
def test_a_manual_rate_is_still_allowed_and_restating_it_keeps_it_fresh(fake_feed):
    update_fx_rates(source=fake_feed.serve(CBR_PATH, cbr_daily(DAY)))

    manual = fx.set_fx_rate(currency="USD", rub_per_unit=81_000_000)
    assert manual.changed and manual.obj.source == "manual"
    assert FxRate.objects.filter(currency="USD").count() == 2

    later = timezone.now() + dt.timedelta(hours=1)
    restated = fx.set_fx_rate(currency="USD", rub_per_unit=81_000_000, valid_from=later)
    assert not restated.changed
    assert FxRate.objects.filter(currency="USD").count() == 2
    assert fx.stated_for(FxRate.objects.get(pk=manual.obj.pk)) == later


@pytest.mark.django_db
def test_a_rate_is_stale_past_the_configured_age(settings):
    settings.JETSTREAM_FX_MAX_AGE_HOURS = 72
    now = timezone.now()
    rate = FxRate.objects.create(currency="USD", rub_per_unit=79_000_000, valid_from=now - dt.timedelta(hours=73))

    assert fx.is_stale(rate, now=now)
    assert not fx.is_stale(rate, now=now - dt.timedelta(hours=2))
    assert not fx.is_stale(rate, now=now, max_age_hours=0)  # 0: the check is off
    rate.confirmed_for = now - dt.timedelta(hours=1)
    assert not fx.is_stale(rate, now=now)


def test_beat_sends_the_fx_task_once_as_it_starts(settings):
    """The beat_init hook puts one fetch_fx_rates message on the real Redis broker."""
    import json

    import redis
    from celery.signals import beat_init

    import apps.billing.tasks  # noqa: F401 - connects the hook, as Celery's autodiscovery does

    client = redis.Redis.from_url(settings.REDIS_URL)  # the broker's database (CELERY_BROKER_URL may be redis+socket://)
    before = client.llen("celery")
    try:
        beat_init.send(sender=None)
        assert client.llen("celery") == before + 1
        message = json.loads(client.lindex("celery", 0))
        assert message["headers"]["task"] == "apps.billing.tasks.fetch_fx_rates"
    finally:
        client.lpop("celery")
        client.close()
