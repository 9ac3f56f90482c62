"""In a real browser: the supplier signs in, sees an accrual on its balance and requests a
withdrawal; the operator approves it in the approvals queue; the supplier sees it approved."""

from __future__ import annotations

import datetime as dt
import re

import pytest
from playwright.sync_api import expect

from apps.billing.models import WithdrawalRequest, WithdrawalStatus
from tests.cabinets.supop_fixtures import RUB, build_world
from tests.e2e.conftest import screenshot, sign_in

pytestmark = pytest.mark.e2e


def test_the_supplier_requests_a_withdrawal_and_the_operator_approves_it(page, browser, e2e, personas, django_user_model):
    world = build_world(personas, django_user_model)
    world.accrue(1250 * RUB + 500_000, age=dt.timedelta(days=30))  # matured
    world.accrue(80 * RUB, age=dt.timedelta(hours=3))  # still on hold

    sign_in(page, e2e, personas.supplier_user)
    expect(page).to_have_url(re.compile(r"/supplier/$"))
    expect(page.get_by_test_id("available")).to_have_text("1\u00a0250,50\u00a0₽")
    expect(page.locator("#balance")).to_contain_text("80,00\u00a0₽")
    expect(page.locator("main")).to_contain_text("north-1")
    screenshot(page, "supplier-balance")

    page.click("nav.cabinet-nav >> text=Выводы")
    page.fill("input[name=amount]", "1000")
    page.click("main form.form button[type=submit]")
    expect(page).to_have_url(re.compile(r"/supplier/withdrawals/\d+/$"))
    expect(page.locator("main")).to_contain_text("Запрошено")
    request = WithdrawalRequest.objects.get()
    assert (request.amount, request.status) == (1000 * RUB, WithdrawalStatus.REQUESTED)

    operator_context = browser.new_context(locale="ru-RU", viewport={"width": 1280, "height": 800})
    operator = operator_context.new_page()
    try:
        sign_in(operator, e2e, personas.superadmin)
        operator.goto(f"{e2e.url}/operator/approvals/")
        row = operator.locator(f"#withdrawal-{request.pk}")
        expect(row).to_contain_text("North Keys LLC")
        expect(row).to_contain_text("1\u00a0000,00\u00a0₽")
        row.get_by_role("button", name="Одобрить").click()
        expect(operator.locator("#approvals .messages")).to_contain_text(f"№{request.pk}")
        expect(operator.locator(f"#withdrawal-{request.pk}")).to_contain_text("Одобрено")
        screenshot(operator, "operator-approvals")
    finally:
        operator_context.close()
    request.refresh_from_db()
    assert (request.status, request.decided_by) == (WithdrawalStatus.APPROVED, personas.superadmin)

    page.reload()
    expect(page.locator("main")).to_contain_text("Одобрено")
