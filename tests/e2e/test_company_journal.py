"""In a real browser: a request made with a company's token through the mock provider appears in
the company's journal, the dashboard's wallet balance drops by its cost, and the journal exports as
CSV with the request in it."""

from __future__ import annotations

import re
import time

import openai
import pytest
from playwright.sync_api import expect

from tests.e2e.conftest import screenshot, sign_in

pytestmark = pytest.mark.e2e

RUB = 1_000_000
SECRET = "js-e2e-journal-0123456789abcdef0123456789ab"


def _drain_meter(expect_records: int, timeout: float = 15.0) -> None:
    """Run the meter writer until ``expect_records`` usage records exist (the app has no meter process here)."""
    from apps.billing.models import UsageRecord
    from apps.proxy.metering import MeterWriter

    writer = MeterWriter(block_ms=50, consumer="e2e-journal")
    writer.ensure_group()
    deadline = time.monotonic() + timeout
    try:
        while UsageRecord.objects.count() < expect_records:
            writer.run_once()
            assert time.monotonic() < deadline, "the request's usage record did not arrive"
    finally:
        writer.redis.close()


def test_it_shows_the_request_in_the_journal_the_balance_drop_and_exports_csv(page, e2e, personas):
    from apps.billing import services
    from apps.providers.models import Model, Price, Provider
    from apps.proxy.models import ApiToken

    mock = Provider.objects.create(slug="demo", kind="mock")
    model = Model.objects.create(name="demo-chat", provider=mock, upstream_model="demo-chat", max_output_tokens=4096)
    Price.objects.create(model=model, currency="RUB", input_per_1m=10 * RUB, output_per_1m=20 * RUB)
    services.top_up(company=personas.company_a, amount=1000 * RUB, idempotency_id="e2e-journal-top-up")
    token = ApiToken(company=personas.company_a, name="e2e-journal")
    token.set_secret(SECRET)
    token.save()

    sign_in(page, e2e, personas.manager_a)
    expect(page).to_have_url(re.compile(r"/company/$"))
    balance_before = int(page.locator("#wallet-balance").get_attribute("data-micro-rub"))

    time.sleep(0.5)  # the gateway picks new tokens and prices up by polling
    client = openai.OpenAI(base_url=e2e.base_url, api_key=SECRET, max_retries=0)
    raw = client.chat.completions.with_raw_response.create(model="demo-chat", messages=[{"role": "user", "content": "Привет!"}])
    request_id = raw.headers["x-request-id"]
    assert raw.parse().choices[0].message.content
    _drain_meter(1)

    from apps.billing.models import UsageRecord

    cost = UsageRecord.objects.get(request_id=request_id).sell_cost
    assert cost > 0
    page.reload()
    assert int(page.locator("#wallet-balance").get_attribute("data-micro-rub")) == balance_before - cost
    expect(page.locator("#top-tokens")).to_contain_text("e2e-journal")
    screenshot(page, "company-dashboard-after-request")

    page.click("nav >> text=/Журнал|Journal/")
    expect(page).to_have_url(re.compile(r"/company/journal/"))
    row = page.locator(f"tr[data-request-id='{request_id}']")
    expect(row).to_contain_text("demo-chat")
    expect(row).to_contain_text("e2e-journal")
    screenshot(page, "company-journal")

    page.select_option("select[name=token]", str(token.pk))  # HTMX swaps the results in place
    expect(page).to_have_url(re.compile(rf"token={token.pk}"))
    expect(page.locator(f"tr[data-request-id='{request_id}']")).to_be_visible()

    with page.expect_download() as download:
        page.click("#export-csv")
    text = open(download.value.path(), encoding="utf-8-sig").read()
    assert request_id in text and "demo-chat" in text
