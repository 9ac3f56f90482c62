"""The operator cabinet: overview with balances, the approvals queue (top-ups, withdrawals; a double
click moves nothing twice), catalogue and per-company coefficients, health, turnover — each page
and action, and nobody but a superuser reaches any of it (404)."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal

import pytest
from django.urls import reverse
from django.utils import timezone

from apps.accounts.models import CompanyModelCoefficient
from apps.billing import services as ledger
from apps.billing.models import Transfer, TransferKind, TransferStatus, UsageRecord, WithdrawalStatus
from apps.billing.suppliers import request_supplier_withdrawal, supplier_balance
from apps.invoicing.models import TopUpStatus
from apps.invoicing.services import request_top_up
from apps.providers.models import EgressProxy, LocalNode, Price
from tests.cabinets.supop_fixtures import RUB, build_world, just_signed_in, long_signed_in

pytestmark = pytest.mark.django_db


@pytest.fixture
def world(personas, django_user_model):
    return build_world(personas, django_user_model)


@pytest.fixture
def operator(world, signed_in):
    return just_signed_in(signed_in(world.personas.superadmin))


def url(name: str, **kwargs) -> str:
    return reverse(f"cabinets:operator:{name}", kwargs=kwargs)


def htmx(target: str) -> dict:
    return {"HTTP_HX_REQUEST": "true", "HTTP_HX_TARGET": target}


def wallet_balance(company) -> int:
    wallet = ledger.company_wallet(company)
    wallet.refresh_from_db()
    return wallet.posted_credits - wallet.posted_debits


# --- who may enter -------------------------------------------------------------------------------

def test_it_gives_404_to_everyone_but_a_superuser_and_moves_nothing(world, signed_in, client):
    top_up = request_top_up(company=world.personas.company_a, amount=1000 * RUB, request_key="k1")
    world.accrue(10 * RUB)
    withdrawal = request_supplier_withdrawal(supplier=world.personas.supplier, amount=RUB, idempotency_id="w1")
    gets = ["dashboard", "approvals", "catalog", "coefficients", "health", "turnover"]
    posts = [("top_up_invoice", {"topup_id": top_up.pk}), ("top_up_confirm", {"topup_id": top_up.pk}),
             ("top_up_cancel", {"topup_id": top_up.pk}), ("withdrawal_approve", {"withdrawal_id": withdrawal.pk}),
             ("withdrawal_reject", {"withdrawal_id": withdrawal.pk}),
             ("coefficient_set", {"company_id": world.personas.company_a.pk, "model_id": world.model.pk})]
    for user in (world.personas.manager_a, world.personas.supplier_user, world.personas.outsider):
        visitor = signed_in(user)
        for name in gets:
            assert visitor.get(url(name)).status_code == 404, (user, name)
        for name, kwargs in posts:
            assert visitor.post(url(name, **kwargs), {"sell_coefficient": "9"}).status_code == 404, (user, name)
    assert client.get(url("dashboard")).status_code == 302  # not signed in: to sign-in
    top_up.refresh_from_db()
    withdrawal.refresh_from_db()
    assert (top_up.status, withdrawal.status) == (TopUpStatus.REQUESTED, WithdrawalStatus.REQUESTED)
    assert not CompanyModelCoefficient.objects.exists()


# --- overview ------------------------------------------------------------------------------------

def test_it_shows_companies_and_suppliers_with_their_balances(world, operator):
    ledger.top_up(company=world.personas.company_a, amount=2500 * RUB, idempotency_id="t1")
    world.accrue(300 * RUB)
    world.accrue(40 * RUB, key=world.other_key, age=dt.timedelta(hours=2))
    page = operator.get(url("dashboard"))
    text = page.content.decode()
    assert page.status_code == 200
    assert "Company A" in text and "Company B" in text and "2\u00a0500,00\u00a0₽" in text
    assert "North Keys LLC" in text and "South Keys LLC" in text and "300,00\u00a0₽" in text and "40,00\u00a0₽" in text


# --- approvals -----------------------------------------------------------------------------------

def test_it_invoices_and_confirms_a_top_up_crediting_the_wallet_once_on_a_double_click(world, operator):
    top_up = request_top_up(company=world.personas.company_a, amount=1000 * RUB, request_key="k1")
    queue = operator.get(url("approvals")).content.decode()
    assert "1\u00a0000,00\u00a0₽" in queue and "Company A" in queue
    for _ in range(2):
        assert operator.post(url("top_up_invoice", topup_id=top_up.pk)).status_code == 302
    top_up.refresh_from_db()
    assert top_up.status == TopUpStatus.INVOICED and top_up.invoice is not None
    first = operator.post(url("top_up_confirm", topup_id=top_up.pk), **htmx("approvals"))
    second = operator.post(url("top_up_confirm", topup_id=top_up.pk), **htmx("approvals"))
    assert first.status_code == second.status_code == 200
    assert first.content.decode().lstrip().startswith('<div id="approvals">')
    assert wallet_balance(world.personas.company_a) == 1000 * RUB
    assert Transfer.objects.filter(kind=TransferKind.TOP_UP).count() == 1
    top_up.refresh_from_db()
    assert (top_up.status, top_up.confirmed_by) == (TopUpStatus.PAID, world.personas.superadmin)
    assert "Company A" not in operator.get(url("approvals")).content.decode()  # no longer waiting


def test_it_cancels_a_top_up_and_then_refuses_to_confirm_it_with_a_message(world, operator):
    top_up = request_top_up(company=world.personas.company_a, amount=1000 * RUB, request_key="k1")
    assert operator.post(url("top_up_cancel", topup_id=top_up.pk)).status_code == 302
    refused = operator.post(url("top_up_confirm", topup_id=top_up.pk), follow=True)
    assert refused.status_code == 200
    assert any(m.level_tag == "error" for m in refused.context["messages"])
    assert wallet_balance(world.personas.company_a) == 0
    assert operator.post(url("top_up_confirm", topup_id=999_999)).status_code == 404
    assert operator.get(url("top_up_confirm", topup_id=top_up.pk)).status_code == 405


def test_it_approves_a_withdrawal_once_and_rejects_another_releasing_its_hold(world, operator):
    world.accrue(100 * RUB)
    first = request_supplier_withdrawal(supplier=world.personas.supplier, amount=30 * RUB, idempotency_id="w1")
    second = request_supplier_withdrawal(supplier=world.personas.supplier, amount=20 * RUB, idempotency_id="w2")
    queue = operator.get(url("approvals")).content.decode()
    assert "30,00\u00a0₽" in queue and "40702810938000000001" in queue
    for _ in range(2):
        assert operator.post(url("withdrawal_approve", withdrawal_id=first.pk), **htmx("approvals")).status_code == 200
    first.refresh_from_db()
    assert (first.status, first.decided_by) == (WithdrawalStatus.APPROVED, world.personas.superadmin)
    too_long = operator.post(url("withdrawal_reject", withdrawal_id=second.pk), {"reason": "x" * 301}, follow=True)
    assert any(m.level_tag == "error" for m in too_long.context["messages"])
    second.refresh_from_db()
    assert second.status == WithdrawalStatus.REQUESTED
    assert operator.post(url("withdrawal_reject", withdrawal_id=second.pk), {"reason": "wrong account"}).status_code == 302
    assert operator.post(url("withdrawal_reject", withdrawal_id=second.pk), {"reason": "again"}).status_code == 302
    second.refresh_from_db()
    assert (second.status, second.reject_reason) == (WithdrawalStatus.REJECTED, "wrong account")
    assert second.hold.status == TransferStatus.VOIDED
    balance = supplier_balance(world.personas.supplier)
    assert (balance.pending, balance.available) == (30 * RUB, 70 * RUB)
    refused = operator.post(url("withdrawal_approve", withdrawal_id=second.pk), follow=True)
    assert any(m.level_tag == "error" for m in refused.context["messages"])
    assert operator.post(url("withdrawal_approve", withdrawal_id=999_999)).status_code == 404


# --- catalogue and coefficients --------------------------------------------------------------------

def test_it_lists_providers_models_and_current_prices_with_admin_links(world, operator):
    Price.objects.create(model=world.model, currency="USD", input_per_1m=150_000, output_per_1m=600_000,
                         valid_from=timezone.now() - dt.timedelta(days=2))
    Price.objects.create(model=world.model, currency="USD", input_per_1m=140_000, output_per_1m=550_000,
                         valid_from=timezone.now() - dt.timedelta(days=1))
    text = operator.get(url("catalog")).content.decode()
    assert "gpt-4o-mini" in text and "140\u00a0000" in text and "150\u00a0000" not in text
    assert reverse("admin:providers_model_change", args=[world.model.pk]) in text
    assert reverse("admin:providers_provider_change", args=[world.provider.pk]) in text


def test_it_sets_changes_and_removes_a_company_model_coefficient_inline(world, operator):
    company = world.personas.company_b
    set_url = url("coefficient_set", company_id=company.pk, model_id=world.model.pk)
    page = operator.get(url("coefficients"), {"company": company.pk})
    assert page.status_code == 200 and page.context["company"] == company
    assert operator.post(set_url, {"sell_coefficient": "1,15"}).status_code == 302
    assert CompanyModelCoefficient.objects.get(company=company, model=world.model).sell_coefficient == Decimal("1.1500")
    swapped = operator.post(set_url, {"sell_coefficient": "1.2"}, **htmx("coefficients"))
    assert swapped.status_code == 200 and swapped.content.decode().lstrip().startswith('<div id="coefficients">')
    assert CompanyModelCoefficient.objects.get(company=company, model=world.model).sell_coefficient == Decimal("1.2000")
    for bad in ("0", "-1", "1.23456", "abc"):
        refused = operator.post(set_url, {"sell_coefficient": bad})
        assert refused.status_code == 400, bad
        assert "4" in refused.content.decode()  # the message names the 4 decimal places
    assert CompanyModelCoefficient.objects.get(company=company, model=world.model).sell_coefficient == Decimal("1.2000")
    assert operator.post(set_url, {"sell_coefficient": ""}).status_code == 302
    assert not CompanyModelCoefficient.objects.filter(company=company).exists()
    assert not CompanyModelCoefficient.objects.filter(company=world.personas.company_a).exists()
    assert operator.post(url("coefficient_set", company_id=999_999, model_id=world.model.pk), {"sell_coefficient": "1"}).status_code == 404


# --- health and turnover ---------------------------------------------------------------------------

def test_it_shows_the_health_of_keys_egress_points_and_local_nodes(world, operator):
    egress = EgressProxy(slug="nl-1", country="NL", health="down", health_error="connect timeout")
    egress.set_url("socks5://user:EGRESSPASS@proxy.example.net:1080")
    egress.save()
    LocalNode.objects.create(provider=world.provider, name="gpu-1", base_url="https://gpu.example.net/v1")
    world.accrue(3 * RUB, age=dt.timedelta(seconds=3))
    text = operator.get(url("health")).content.decode()
    assert "north-1" in text and "south-1" in text and "North Keys LLC" in text and "…1234" in text
    assert "nl-1" in text and "connect timeout" in text and "gpu-1" in text
    assert "EGRESSPASS" not in text and "sk-live-ABCDEFGH" not in text


def test_it_shows_turnover_cost_and_margin_by_day(world, operator):
    now = timezone.now()
    for days, sell, buy in ((1, 12 * RUB, 9 * RUB), (1, 3 * RUB, 2 * RUB), (3, 5 * RUB, 4 * RUB), (40, 100 * RUB, 1)):
        at = now - dt.timedelta(days=days)
        UsageRecord.objects.create(request_id=f"r{days}-{sell}", company=world.personas.company_a, model=world.model,
                                   model_name=world.model.name, sell_cost=sell, buy_cost=buy, status="ok", http_status=200,
                                   started_at=at, finished_at=at)
    page = operator.get(url("turnover"), {"days": 30})
    assert page.status_code == 200
    assert page.context["totals"] == {"requests": 3, "sell": 20 * RUB, "buy": 15 * RUB, "margin": 5 * RUB}
    assert "20,00\u00a0₽" in page.content.decode()
    chart = page.context["chart"]
    assert chart["labels"] == [row.label for row in page.context["rows"]] and len(chart["labels"]) == 2
    assert [sum(d["data"]) for d in chart["datasets"]] == [20.0, 5.0]
    assert 'data-chart="turnover-chart"' in page.content.decode() and 'id="turnover-chart"' in page.content.decode()
    week = operator.get(url("turnover"), {"days": 7}, **htmx("turnover"))
    assert week.content.decode().lstrip().startswith('<div id="turnover">')
    assert operator.get(url("turnover"), {"days": 90}).context["totals"]["requests"] == 4
    assert operator.get(url("turnover"), {"days": "13"}).status_code == 400


@pytest.mark.django_db(transaction=True)
def test_two_operators_clicking_at_once_credit_once_and_approve_once(world, signed_in, django_user_model):
    """Real parallel requests on their own connections: the row locks make the second click wait
    and then find the first one's result."""
    from tests.billing.test_ledger_concurrency import _in_parallel

    second_admin = django_user_model.objects.create_superuser("root2@example.com", "x-password-x")
    clients = [just_signed_in(signed_in(world.personas.superadmin)), just_signed_in(signed_in(second_admin))]
    top_up = request_top_up(company=world.personas.company_a, amount=700 * RUB, request_key="k1")
    clients[0].post(url("top_up_invoice", topup_id=top_up.pk))
    world.accrue(50 * RUB)
    withdrawal = request_supplier_withdrawal(supplier=world.personas.supplier, amount=40 * RUB, idempotency_id="w1")

    confirms = _in_parallel(2, lambda i: clients[i].post(url("top_up_confirm", topup_id=top_up.pk)).status_code)
    approvals = _in_parallel(2, lambda i: clients[i].post(url("withdrawal_approve", withdrawal_id=withdrawal.pk)).status_code)
    assert confirms == approvals == [("ok", 302), ("ok", 302)]
    assert wallet_balance(world.personas.company_a) == 700 * RUB
    assert Transfer.objects.filter(kind=TransferKind.TOP_UP).count() == 1
    withdrawal.refresh_from_db()
    assert withdrawal.status == WithdrawalStatus.APPROVED
    assert supplier_balance(world.personas.supplier).pending == 40 * RUB


def test_approving_money_asks_for_the_password_again_after_a_while(world, signed_in):
    stale = long_signed_in(signed_in(world.personas.superadmin))
    top_up = request_top_up(company=world.personas.company_a, amount=100 * RUB, request_key="k1")
    assert stale.post(url("top_up_invoice", topup_id=top_up.pk)).status_code == 302  # no money moves yet: no prompt
    world.accrue(10 * RUB)
    withdrawal = request_supplier_withdrawal(supplier=world.personas.supplier, amount=RUB, idempotency_id="w1")
    for name, kwargs in (("top_up_confirm", {"topup_id": top_up.pk}), ("withdrawal_approve", {"withdrawal_id": withdrawal.pk})):
        response = stale.post(url(name, **kwargs))
        assert response.status_code == 302 and response["Location"].startswith(reverse("cabinets:reauth")), name
        inline = stale.post(url(name, **kwargs), **htmx("approvals"))
        assert inline.status_code == 204 and inline["HX-Redirect"].startswith(reverse("cabinets:reauth")), name
    top_up.refresh_from_db()
    withdrawal.refresh_from_db()
    assert (top_up.status, withdrawal.status) == (TopUpStatus.INVOICED, WithdrawalStatus.REQUESTED)
    assert wallet_balance(world.personas.company_a) == 0
