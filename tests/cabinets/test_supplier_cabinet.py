"""The supplier cabinet: balance, keys (add, cap, disable/enable, rotate), statements with export,
withdrawals, payout details — each page and action, and another supplier's objects give 404."""

from __future__ import annotations

import datetime as dt
import io
import json
import time

import openpyxl
import pytest
import redis
from django.conf import settings
from django.urls import reverse

from apps.billing.models import SupplierPayoutDetails, Transfer, TransferStatus, WithdrawalRequest, WithdrawalStatus
from apps.providers import key_health
from apps.providers.models import SupplierKey, SupplierKeyStatus
from tests.cabinets.supop_fixtures import RUB, SECRET, build_world, just_signed_in, long_signed_in

pytestmark = pytest.mark.django_db


@pytest.fixture
def world(personas, django_user_model):
    return build_world(personas, django_user_model)


@pytest.fixture
def owner(world, signed_in):
    return just_signed_in(signed_in(world.personas.supplier_user))


@pytest.fixture
def member(world, signed_in, django_user_model):
    from apps.accounts.models import SupplierMembership, SupplierRole

    user = django_user_model.objects.create_user("member@example.com", "x-password-x")
    SupplierMembership.objects.create(user=user, supplier=world.personas.supplier, role=SupplierRole.MEMBER)
    return just_signed_in(signed_in(user))


@pytest.fixture
def health_records():
    """Write shared key-health records for a test; forgotten afterwards."""
    client = redis.Redis.from_url(settings.REDIS_URL)
    written: list[int] = []

    def write(key_id: int, record: dict) -> None:
        client.hset(key_health.HEALTH_KEY, key_id, json.dumps(record))
        written.append(key_id)

    yield write
    for key_id in written:
        client.hdel(key_health.HEALTH_KEY, key_id)
    client.close()


def url(name: str, **kwargs) -> str:
    return reverse(f"cabinets:supplier:{name}", kwargs=kwargs)


# --- balance -------------------------------------------------------------------------------------

def test_it_shows_accrued_on_hold_and_available_on_the_dashboard(world, owner):
    world.accrue(1234 * RUB + 560_000)  # matured
    world.accrue(100 * RUB, age=dt.timedelta(days=1))  # still on hold
    world.accrue(999 * RUB, key=world.other_key)  # another supplier's
    page = owner.get(url("dashboard"))
    assert page.status_code == 200
    text = page.content.decode()
    assert "1\u00a0334,56\u00a0₽" in text  # accrued, Russian grouping
    assert "100,00\u00a0₽" in text  # on hold
    assert "1\u00a0234,56\u00a0₽" in text  # available
    assert "999,00" not in text and "South Keys" not in text


def test_it_sends_a_visitor_to_sign_in_and_gives_a_company_manager_404(world, client, signed_in):
    assert client.get(url("dashboard")).status_code == 302
    manager = signed_in(world.personas.manager_a)
    for name in ("dashboard", "keys", "statement", "withdrawals", "payout_details"):
        assert manager.get(url(name)).status_code == 404, name


# --- keys ----------------------------------------------------------------------------------------

def test_it_lists_keys_with_health_consumption_and_errors(world, owner, health_records):
    world.accrue(5 * RUB, age=dt.timedelta(seconds=5))
    world.accrue(0, age=dt.timedelta(seconds=4), status="upstream_error")
    health_records(world.key.pk, {"s": "open", "f": 5, "ou": time.time() + 60, "at": time.time(), "c": "upstream_error",
                                  "h": 502, "e": "Bad gateway from upstream"})
    page = owner.get(url("keys"))
    text = page.content.decode()
    assert page.status_code == 200
    assert "north-1" in text and "…1234" in text and "south-1" not in text
    assert "цепь разомкнута" in text  # Russian by default
    assert "5,00\u00a0₽" in text
    detail = owner.get(url("key", key_id=world.key.pk)).content.decode()
    assert "Bad gateway from upstream" in detail
    assert SECRET not in text and SECRET not in detail and world.key.secret_encrypted not in detail


def test_it_adds_a_key_stored_encrypted_and_shows_only_its_last_four(world, owner):
    response = owner.post(url("key_add"), {"provider": world.provider.pk, "name": "north-2",
                                           "secret": "sk-proj-NEWSECRET-abcd", "monthly_cap": "1 500,50"})
    key = SupplierKey.objects.get(name="north-2")
    assert response.status_code == 302 and response["Location"] == url("key", key_id=key.pk)
    assert (key.supplier, key.status, key.monthly_cap, key.secret_last4) == (world.personas.supplier, "active", 1_500_500_000, "abcd")
    assert "NEWSECRET" not in key.secret_encrypted and key.reveal_secret() == "sk-proj-NEWSECRET-abcd"
    page = owner.get(response["Location"]).content.decode()
    assert "…abcd" in page and "NEWSECRET" not in page


@pytest.mark.parametrize(("data", "field"), [
    ({"name": "short", "secret": "abc"}, "secret"),
    ({"name": "north-1", "secret": "sk-long-enough-1"}, "__all__"),  # the provider has a key of that name
    ({"name": "x", "secret": "sk-long-enough-1", "monthly_cap": "-5"}, "monthly_cap"),
    ({"name": "x", "secret": "sk-long-enough-1", "monthly_cap": "1.234"}, "monthly_cap"),
])
def test_it_refuses_a_bad_key_with_a_form_error_and_saves_nothing(world, owner, data, field):
    before = SupplierKey.objects.count()
    response = owner.post(url("key_add"), {"provider": world.provider.pk, **data})
    assert response.status_code == 400
    assert response.context["form"].errors.get(field)
    assert SupplierKey.objects.count() == before
    assert "sk-long-enough-1" not in response.content.decode()


def test_it_sets_and_clears_the_monthly_cap(world, owner):
    assert owner.post(url("key_cap", key_id=world.key.pk), {"monthly_cap": "2500"}).status_code == 302
    world.key.refresh_from_db()
    assert world.key.monthly_cap == 2500 * RUB
    assert owner.post(url("key_cap", key_id=world.key.pk), {"monthly_cap": "zero"}).status_code == 400
    assert owner.post(url("key_cap", key_id=world.key.pk), {"monthly_cap": ""}).status_code == 302
    world.key.refresh_from_db()
    assert world.key.monthly_cap is None


def test_it_disables_and_enables_a_key_inline_and_twice_changes_nothing(world, owner, health_records):
    disable = url("key_disable", key_id=world.key.pk)
    row = owner.post(disable, HTTP_HX_REQUEST="true", HTTP_HX_TARGET=f"key-{world.key.pk}")
    assert row.status_code == 200 and row.content.decode().lstrip().startswith(f'<tr id="key-{world.key.pk}"')
    assert owner.post(disable).status_code == 302
    world.key.refresh_from_db()
    assert world.key.status == SupplierKeyStatus.DISABLED
    health_records(world.key.pk, {"s": "invalid", "at": time.time(), "e": "refused"})
    assert owner.post(url("key_enable", key_id=world.key.pk)).status_code == 302
    world.key.refresh_from_db()
    assert (world.key.status, world.key.status_reason) == (SupplierKeyStatus.ACTIVE, "")
    assert redis.Redis.from_url(settings.REDIS_URL).hget(key_health.HEALTH_KEY, world.key.pk) is None  # the proxies forgot it
    assert owner.get(url("key_disable", key_id=world.key.pk)).status_code == 405


def test_it_rotates_the_secret_and_brings_a_refused_key_back(world, owner):
    SupplierKey.objects.filter(pk=world.key.pk).update(status=SupplierKeyStatus.INVALID, status_reason="401")
    assert owner.post(url("key_rotate", key_id=world.key.pk), {"secret": "short"}).status_code == 400
    response = owner.post(url("key_rotate", key_id=world.key.pk), {"secret": "sk-live-ROTATED-5678"})
    assert response.status_code == 302
    world.key.refresh_from_db()
    assert (world.key.secret_last4, world.key.status, world.key.reveal_secret()) == ("5678", "active", "sk-live-ROTATED-5678")
    assert "ROTATED" not in owner.get(response["Location"]).content.decode()


def test_a_member_sees_keys_but_may_not_change_them(world, member):
    assert member.get(url("keys")).status_code == 200
    assert url("key_disable", key_id=world.key.pk) not in member.get(url("keys")).content.decode()
    for name in ("key_disable", "key_enable", "key_cap", "key_rotate"):
        assert member.post(url(name, key_id=world.key.pk), {"monthly_cap": "1", "secret": "sk-long-enough-2"}).status_code == 403
    assert member.post(url("key_add"), {}).status_code == 403
    world.key.refresh_from_db()
    assert world.key.status == "active" and world.key.monthly_cap is None


def test_another_suppliers_key_gives_404_on_every_key_url(world, owner):
    for name in ("key", "key_cap", "key_rotate", "key_disable", "key_enable"):
        method = owner.get if name == "key" else owner.post
        assert method(url(name, key_id=world.other_key.pk), {"secret": "sk-stolen-0000", "monthly_cap": "1"}).status_code == 404
    world.other_key.refresh_from_db()
    assert (world.other_key.status, world.other_key.secret_last4, world.other_key.monthly_cap) == ("active", "9999", None)


# --- statements ----------------------------------------------------------------------------------

def test_it_shows_a_periods_statement_and_swaps_it_for_htmx(world, owner):
    world.accrue(7 * RUB, age=dt.timedelta(days=3))
    today = dt.date.today()
    query = {"start": (today - dt.timedelta(days=10)).isoformat(), "end": today.isoformat()}
    page = owner.get(url("statement"), query)
    assert page.status_code == 200
    assert "7,00\u00a0₽" in page.content.decode() and "gpt-4o-mini" in page.content.decode()
    partial = owner.get(url("statement"), query, HTTP_HX_REQUEST="true", HTTP_HX_TARGET="statement")
    assert partial.content.decode().lstrip().startswith('<div id="statement">')
    bad = owner.get(url("statement"), {"start": today.isoformat(), "end": (today - dt.timedelta(days=1)).isoformat()})
    assert bad.status_code == 400 and "statement" in bad.content.decode().lower()


def test_it_exports_the_statement_as_csv_and_xlsx(world, owner):
    world.accrue(7 * RUB, age=dt.timedelta(days=3))
    world.accrue(9 * RUB, key=world.other_key, age=dt.timedelta(days=3))
    today = dt.date.today()
    query = {"start": (today - dt.timedelta(days=10)).isoformat(), "end": today.isoformat()}
    csv = owner.get(url("statement_export"), {**query, "format": "csv"})
    assert csv.status_code == 200 and csv["Content-Type"].startswith("text/csv")
    assert "attachment" in csv["Content-Disposition"]
    text = csv.content.decode()
    assert "accrual" in text and "7000000" in text and "9000000" not in text
    xlsx = owner.get(url("statement_export"), {**query, "format": "xlsx"})
    rows = list(openpyxl.load_workbook(io.BytesIO(xlsx.content)).active.iter_rows(values_only=True))
    assert rows[0][0] == "section" and any(r[0] == "accrual" and r[5] == 7 * RUB for r in rows[1:])
    assert owner.get(url("statement_export"), {**query, "format": "pdf"}).status_code == 400


# --- withdrawals ---------------------------------------------------------------------------------

def test_it_requests_a_withdrawal_once_on_a_double_submit(world, owner):
    world.accrue(50 * RUB)
    form = owner.get(url("withdrawals")).context["form"]
    data = {"amount": "30,50", "request_id": str(form.initial["request_id"])}
    first = owner.post(url("withdrawal_request"), data)
    second = owner.post(url("withdrawal_request"), data)
    request = WithdrawalRequest.objects.get()
    assert first.status_code == second.status_code == 302
    assert first["Location"] == second["Location"] == url("withdrawal", withdrawal_id=request.pk)
    assert (request.amount, request.status, request.requested_by, request.payout_details["inn"]) == (
        30_500_000, WithdrawalStatus.REQUESTED, world.personas.supplier_user, "7707083893")
    assert Transfer.objects.filter(status=TransferStatus.PENDING).count() == 1
    detail = owner.get(first["Location"]).content.decode()
    assert "30,50\u00a0₽" in detail and "7707083893" in detail
    assert "19,50\u00a0₽" in owner.get(url("withdrawals")).content.decode()  # available now


def test_it_refuses_a_withdrawal_above_available_and_holds_nothing(world, owner):
    world.accrue(10 * RUB)
    world.accrue(5 * RUB, age=dt.timedelta(hours=1))
    response = owner.post(url("withdrawal_request"), {"amount": "12", "request_id": "8b7f1c8e-5f5e-4a8a-9d7e-1e2f3a4b5c6d"})
    assert response.status_code == 400
    assert response.context["form"].non_field_errors()
    assert not WithdrawalRequest.objects.exists() and not Transfer.objects.filter(status=TransferStatus.PENDING).exists()
    bad = owner.post(url("withdrawal_request"), {"amount": "-1", "request_id": "8b7f1c8e-5f5e-4a8a-9d7e-1e2f3a4b5c6d"})
    assert bad.status_code == 400 and bad.context["form"].errors["amount"]


def test_it_pages_the_withdrawals_for_htmx(world, owner):
    from apps.billing.suppliers import request_supplier_withdrawal

    world.accrue(100 * RUB)
    for n in range(27):
        request_supplier_withdrawal(supplier=world.personas.supplier, amount=RUB, idempotency_id=f"w{n}")
    page = owner.get(url("withdrawals"), {"page": 2}, HTTP_HX_REQUEST="true", HTTP_HX_TARGET="withdrawals")
    assert page.status_code == 200 and page.content.decode().lstrip().startswith('<div id="withdrawals">')
    assert len(page.context["page"].object_list) == 2


def test_another_suppliers_withdrawal_gives_404(world, owner):
    from apps.billing.suppliers import request_supplier_withdrawal

    world.accrue(10 * RUB, key=world.other_key)
    theirs = request_supplier_withdrawal(supplier=world.other_supplier, amount=RUB, idempotency_id="theirs")
    assert owner.get(url("withdrawal", withdrawal_id=theirs.pk)).status_code == 404
    assert "card-ref-0042" not in owner.get(url("withdrawals")).content.decode()


# --- payout details ------------------------------------------------------------------------------

def test_it_saves_payout_details_with_clear_errors(world, owner):
    page = owner.get(url("payout_details"))
    assert page.status_code == 200 and "7707083893" in page.content.decode()
    bad = owner.post(url("payout_details"), {"recipient": "ИП Север", "inn": "12"})
    assert bad.status_code == 400 and bad.context["form"].errors["inn"]
    incomplete = owner.post(url("payout_details"), {"recipient": "ИП Север"})
    assert incomplete.status_code == 400 and incomplete.context["form"].non_field_errors()
    assert owner.post(url("payout_details"), {"recipient": "ИП Север", "card_reference": "card-ref-7777"}).status_code == 302
    details = SupplierPayoutDetails.objects.get(supplier=world.personas.supplier)
    assert (details.recipient, details.card_reference, details.inn) == ("ИП Север", "card-ref-7777", "")
    assert SupplierPayoutDetails.objects.get(supplier=world.other_supplier).card_reference == "card-ref-0042"


def test_a_member_may_not_see_or_change_payout_details(world, member):
    assert member.get(url("payout_details")).status_code == 403
    assert member.post(url("payout_details"), {"recipient": "Mallory", "card_reference": "card-ref-evil"}).status_code == 403
    assert member.post(url("withdrawal_request"), {"amount": "1", "request_id": "8b7f1c8e-5f5e-4a8a-9d7e-1e2f3a4b5c6d"}).status_code == 403
    assert SupplierPayoutDetails.objects.get(supplier=world.personas.supplier).recipient.startswith("ООО")


def test_it_links_the_last_twelve_months_statements(world, owner):
    from apps.cabinets.supplier.views import recent_months

    months = recent_months()
    assert len(months) == 12 and months[0]["month"] == dt.date.today().replace(day=1)
    assert all(later["month"] > earlier["month"] for later, earlier in zip(months, months[1:], strict=False))
    page = owner.get(url("statement")).content.decode()
    assert months[11]["query"].replace("&", "&amp;") in page
    previous = months[1]["query"]
    assert owner.get(f'{url("statement_export")}?{previous}&format=csv').status_code == 200


def test_it_says_when_a_keys_cap_is_reached(world, owner):
    SupplierKey.objects.filter(pk=world.key.pk).update(monthly_cap=4 * RUB)
    world.accrue(5 * RUB, age=dt.timedelta(seconds=2))
    text = owner.get(url("keys")).content.decode()
    assert "125%" in text and "лимит исчерпан" in text


def test_it_shows_health_unknown_when_redis_cannot_be_read(world, owner, settings):
    settings.REDIS_URL = "redis://127.0.0.1:1/0"
    page = owner.get(url("keys"))
    assert page.status_code == 200
    assert [row.health for row in page.context["keys"]] == ["unknown"]


def test_it_speaks_english_when_chosen(world, owner):
    from django.utils import translation

    owner.post(reverse("set_language"), {"language": "en", "next": url("dashboard")})
    with translation.override(None):  # the middleware's choice must not outlive this test's thread state
        text = owner.get(url("dashboard")).content.decode()
    translation.activate(settings.LANGUAGE_CODE)
    assert "Available to withdraw" in text and "Доступно к выводу" not in text
    assert "₽0.00" in text


def test_changing_payout_details_asks_for_the_password_again_after_a_while(world, signed_in):
    stale = long_signed_in(signed_in(world.personas.supplier_user))
    response = stale.post(url("payout_details"), {"recipient": "Mallory", "card_reference": "card-ref-evil"})
    assert response.status_code == 302 and response["Location"].startswith(reverse("cabinets:reauth"))
    assert SupplierPayoutDetails.objects.get(supplier=world.personas.supplier).recipient.startswith("ООО")
    assert stale.get(url("payout_details")).status_code == 302  # the requisites are not shown either
