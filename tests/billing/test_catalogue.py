"""The price catalogue and the price feed: the shipped data, documents validated whole, versions
added only where a price changed, the load_prices command and the update_prices task."""

from __future__ import annotations

import json
import logging
from collections import Counter
from io import StringIO

import pytest
from django.core.management import CommandError, call_command

from apps.billing.models import FeedRun
from apps.providers.catalogue import FORMAT, PriceDocumentError, apply_prices, load_shipped, parse_document, update_prices
from apps.providers.models import Model, Price, Provider, ProviderKind

MAJOR = {"openai", "anthropic", "gemini", "mistral", "deepseek", "qwen", "gigachat", "yandexgpt"}


def document(*entries: dict) -> bytes:
    return json.dumps({"format": FORMAT, "prices": list(entries)}).encode()


def entry(**changes) -> dict:
    base = {"provider": "openai", "model": "gpt-4o-mini", "currency": "USD", "input": "0.15", "cached_input": "0.075",
            "output": "0.60", "source": "https://openai.com/api/pricing", "as_of": "2026-08-05"}
    return {**base, **changes}


@pytest.fixture
def models(db):
    openai = Provider.objects.create(slug="openai", kind=ProviderKind.OPENAI, base_url="https://api.openai.com/v1")
    anthropic = Provider.objects.create(slug="claude", kind=ProviderKind.ANTHROPIC, base_url="https://api.anthropic.com")
    local = Provider.objects.create(slug="vllm", kind=ProviderKind.OPENAI_COMPATIBLE, base_url="http://10.0.0.5/v1", internal=True)
    return {
        "mini": Model.objects.create(name="mini", provider=openai, upstream_model="gpt-4o-mini"),
        "mini-2": Model.objects.create(name="mini-dated", provider=openai, upstream_model="gpt-4o-mini-2024-07-18"),
        "haiku": Model.objects.create(name="haiku", provider=anthropic, upstream_model="claude-haiku-4-5-20251001"),
        # Same upstream id on a provider of another kind: the catalogue's OpenAI price is not its price.
        "local": Model.objects.create(name="local-mini", provider=local, upstream_model="gpt-4o-mini"),
    }


# --------------------------------------------------------------------------- the shipped catalogue


def test_the_shipped_catalogue_loads_and_every_price_has_a_source_and_a_date():
    entries = load_shipped()

    per_provider = Counter(e.provider for e in entries)
    assert set(per_provider) == MAJOR
    assert len(entries) >= 100
    for e in entries:
        assert e.source.startswith("https://"), e.model
        assert e.as_of.year >= 2025, e.model
        assert e.output >= 0 and e.input >= 0
    by_id = {(e.provider, e.model): e for e in entries}
    gpt = by_id[("openai", "gpt-4o-mini")]
    assert (gpt.currency, gpt.input, gpt.cached_input, gpt.output) == ("USD", 150_000, 75_000, 600_000)
    sonnet = by_id[("anthropic", "claude-sonnet-4-5")]
    assert (sonnet.input, sonnet.cache_write, sonnet.cached_input, sonnet.output) == (3_000_000, 3_750_000, 300_000, 15_000_000)
    lite = by_id[("yandexgpt", "yandexgpt-lite")]  # 0.20 RUB per 1000 tokens
    assert (lite.currency, lite.input) == ("RUB", 200_000_000)
    assert by_id[("openai", "dall-e-3")].per_image == 40_000
    assert "NOT CONFIRMED" in by_id[("gigachat", "GigaChat")].note


def test_load_prices_prices_the_operators_models_from_the_shipped_catalogue(models):
    out = StringIO()
    call_command("load_prices", "--dry-run", stdout=out)
    assert Price.objects.count() == 0
    assert "3 would add" in out.getvalue()
    assert "note: " in out.getvalue()  # the catalogue's caveats are shown

    call_command("load_prices", stdout=out)

    mini = Price.objects.get(model=models["mini"])
    assert (mini.currency, mini.input_per_1m, mini.cached_input_per_1m, mini.output_per_1m) == ("USD", 150_000, 75_000, 600_000)
    assert mini.source.startswith("https://")
    haiku = Price.objects.get(model=models["haiku"])  # matched by a dated alias, with its cache-write price
    assert (haiku.input_per_1m, haiku.cache_write_per_1m, haiku.output_per_1m) == (1_000_000, 1_250_000, 5_000_000)
    assert Price.objects.filter(model=models["local"]).count() == 0
    assert Price.objects.filter(model=models["mini-2"]).count() == 1

    call_command("load_prices", stdout=out)  # again: nothing new
    assert Price.objects.count() == 3


def test_load_prices_refuses_a_bad_file_and_changes_nothing(models, tmp_path):
    path = tmp_path / "prices.json"
    path.write_bytes(document(entry(), entry(model="gpt-4.1", currency="XYZ")))

    with pytest.raises(CommandError, match="currency 'XYZ'"):
        call_command("load_prices", str(path))
    assert Price.objects.count() == 0


# --------------------------------------------------------------------------- documents


BAD = {
    "not json": b"{",
    "no format": json.dumps({"prices": [entry()]}).encode(),
    "no prices": json.dumps({"format": FORMAT, "prices": []}).encode(),
    "unknown provider": document(entry(provider="skynet")),
    "unknown currency": document(entry(currency="XYZ")),
    "no currency": document(entry(currency=None)),
    "negative": document(entry(input="-1")),
    "too precise": document(entry(output="0.0000001")),
    "not a number": document(entry(output="cheap")),
    "a bool": document(entry(output=True)),
    "no source": document(entry(source="")),
    "source not a url": document(entry(source="the website")),
    "no date": document(entry(as_of=None)),
    "bad date": document(entry(as_of="05.08.2026")),
    "future date": document(entry(as_of="2999-01-01")),
    "typo key": document(entry(inptu="0.15")),
    "twice": document(entry(), entry(model="gpt-4o-mini-2024-07-18", aliases=["gpt-4o-mini"])),
}


@pytest.mark.parametrize("name", sorted(BAD))
def test_it_refuses_a_bad_document(name):
    with pytest.raises(PriceDocumentError):
        parse_document(BAD[name])


def test_json_numbers_are_read_exactly():
    raw = b'{"format": "jetstream-prices/1", "prices": [{"provider": "openai", "model": "m", "currency": "USD",' \
          b' "input": 0.1, "output": 0.3, "source": "https://x.test/p", "as_of": "2026-01-01"}]}'

    (e,) = parse_document(raw)

    assert (e.input, e.output, e.cached_input) == (100_000, 300_000, None)


def test_every_bad_entry_is_named():
    with pytest.raises(PriceDocumentError) as caught:
        parse_document(document(entry(), entry(model="a", currency="XYZ"), entry(model="b", as_of="x")))

    assert [e.split(":")[0] for e in caught.value.errors] == ["prices[1]", "prices[2]"]


# --------------------------------------------------------------------------- the feed


def test_the_feed_adds_versions_only_where_prices_changed(models, fake_feed):
    url = fake_feed.serve("/prices.json", document(entry(aliases=["gpt-4o-mini-2024-07-18"])))

    first = update_prices(source=url)
    assert (first.ok, first.added) == (True, 2)
    assert update_prices(source=url).added == 0  # idempotent
    assert Price.objects.count() == 2

    fake_feed.serve("/prices.json", document(entry(aliases=["gpt-4o-mini-2024-07-18"], output="0.50")))
    changed = update_prices(source=url)

    assert (changed.ok, changed.added) == (True, 2)
    versions = list(Price.objects.filter(model=models["mini"]).order_by("valid_from"))
    assert [v.output_per_1m for v in versions] == [600_000, 500_000]  # the old version is kept
    assert versions[1].valid_from > versions[0].valid_from
    assert Price.objects.current_for(models["mini"]).output_per_1m == 500_000


def test_a_bad_feed_document_changes_nothing_and_alerts(models, fake_feed, caplog):
    url = fake_feed.serve("/prices.json", document(entry()))
    update_prices(source=url)
    fake_feed.serve("/prices.json", document(entry(output="0.50"), entry(model="gpt-4.1", input="-2")))

    with caplog.at_level(logging.CRITICAL, logger="jetstream.feeds"):
        run = update_prices(source=url)

    assert (run.ok, run.added) == (False, 0)
    assert "prices[1]" in run.detail
    assert Price.objects.get(model=models["mini"]).output_per_1m == 600_000
    assert any(r.levelno == logging.CRITICAL for r in caplog.records)


def test_an_unreachable_feed_is_recorded(db, fake_feed):
    run = update_prices(source=fake_feed.url("/missing.json"))

    assert not run.ok and "404" in run.detail
    assert FeedRun.objects.filter(feed="prices", ok=False).count() == 1


def test_the_task_does_nothing_without_a_source_and_applies_the_configured_one(models, fake_feed, settings):
    from apps.providers.tasks import update_prices as task

    settings.JETSTREAM_PRICES_SOURCE = ""
    assert task() is None
    assert FeedRun.objects.count() == 0

    settings.JETSTREAM_PRICES_SOURCE = fake_feed.serve("/prices.json", document(entry()))
    assert task() is True
    assert task() is True
    assert Price.objects.count() == 1


def test_apply_is_all_or_nothing(models):
    entries = parse_document(document(entry(), entry(provider="anthropic", model="claude-haiku-4-5-20251001")))
    dry = apply_prices(entries, dry_run=True)

    assert sorted(dry.added) == ["haiku", "mini"] and dry.unmatched == 0
    assert Price.objects.count() == 0


# --------------------------------------------------------------------------- the admin: a superadmin's edit is a new version


def test_a_new_version_from_a_catalogue_price_keeps_its_extra_prices(superadmin_client, catalog):
    from django.urls import reverse

    from apps.providers.services import set_model_price

    loaded = set_model_price(model=catalog.model, currency="USD", input_per_1m=1_000_000, output_per_1m=5_000_000,
                             cached_input_per_1m=100_000, extras={"cache_write_per_1m": 1_250_000, "per_request": None, "per_image": None},
                             source="https://platform.claude.com/docs/en/about-claude/pricing").obj
    page = superadmin_client.get(reverse("admin:providers_price_change", args=[loaded.pk])).content.decode()
    assert "1.25 USD" in page and "cache_write_per_1m=1.25" in page and "platform.claude.com" in page

    form = {"model": catalog.model.pk, "currency": "USD", "input_per_1m": "1", "output_per_1m": "4", "cached_input_per_1m": "0.1",
            "cache_write_per_1m": "1.25", "per_request": "", "per_image": "", "source": "",
            "valid_from_0": "2030-01-01", "valid_from_1": "00:00:00", "_save": "Save"}
    assert superadmin_client.post(reverse("admin:providers_price_add"), form).status_code == 302

    versions = list(Price.objects.filter(model=catalog.model).order_by("valid_from"))
    assert [v.output_per_1m for v in versions][-2:] == [5_000_000, 4_000_000]  # added, the catalogue's kept
    assert (versions[-1].cache_write_per_1m, versions[-1].per_request, versions[-1].source) == (1_250_000, None, "")
