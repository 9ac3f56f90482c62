"""Each wired action records exactly one event, with the right actor, role, tenant, before/after and
client address — and no secret ever reaches the trail."""

from __future__ import annotations

from decimal import Decimal

import pytest
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from apps.audit.context import acting_as
from apps.audit.models import AuditEvent
from tests.audit.conftest import trail_text
from tests.conftest import PASSWORD, SUPPLIER_SECRET

pytestmark = pytest.mark.django_db

IP = "198.51.100.23"


def _head() -> int:
    return AuditEvent.objects.order_by("-id").values_list("id", flat=True).first() or 0


class Trail:
    """The events recorded since it was made."""

    def __init__(self) -> None:
        self.start = _head()

    def all(self) -> list[AuditEvent]:
        return list(AuditEvent.objects.filter(id__gt=self.start).order_by("id"))

    def actions(self) -> list[str]:
        return [e.action for e in self.all()]

    def only(self, action: str) -> AuditEvent:
        """The one event recorded since, which must be ``action``."""
        found = self.all()
        assert [e.action for e in found] == [action]
        return found[0]


# --- API tokens -----------------------------------------------------------------------------------

def test_it_records_a_token_issued_by_a_manager_with_its_limits_and_never_its_secret(personas):
    from apps.proxy import services

    trail = Trail()
    with acting_as(personas.manager_a, client_ip=IP):
        token, secret = services.issue_token(company=personas.company_a, name="ci", limit_monthly=5_000_000, rpm=60)
    event = trail.only("token.created")
    assert (event.actor_id, event.actor_email, event.actor_role) == (personas.manager_a.pk, "manager-a@example.com", "manager")
    assert (event.company_id, event.supplier_id, event.client_ip) == (personas.company_a.pk, None, IP)
    assert (event.object_type, event.object_id) == ("proxy.ApiToken", str(token.pk))
    assert event.before is None and event.after["limit_monthly"] == 5_000_000 and event.after["rpm"] == 60
    assert len(event.request_id) == 32
    # The label carries the display prefix (as the admin shows it); nothing past it, nor the hash.
    assert event.object_label == str(token)
    for leaked in (secret, secret[len(token.key_prefix):], token.key_hash):
        assert leaked not in trail_text()


def test_it_records_changed_limits_with_only_the_fields_that_changed(personas, catalog):
    from apps.proxy import services

    trail = Trail()
    with acting_as(personas.manager_a, client_ip=IP):
        services.update_token(token=catalog.token, limit_total=2_000_000_000, ip_allow=["10.0.0.0/8"])
        services.update_token(token=catalog.token, limit_total=2_000_000_000, ip_allow=["10.0.0.0/8"])  # nothing changes
    event = trail.only("token.limits_changed")
    assert event.before == {"ip_allow": [], "limit_total": 1_000_000_000}
    assert event.after == {"ip_allow": ["10.0.0.0/8"], "limit_total": 2_000_000_000}


def test_a_persons_block_is_told_apart_from_the_limit_jobs(personas, catalog, superadmin_client):
    from apps.proxy import rollover, services
    from apps.proxy.models import TokenStatus

    trail = Trail()
    response = superadmin_client.post(reverse("admin:proxy_apitoken_changelist"),
                                      {"action": "block_tokens", "_selected_action": [catalog.token.pk], "reason": "leaked in CI"},
                                      REMOTE_ADDR=IP)
    assert response.status_code == 302
    event = trail.only("token.blocked")
    assert (event.actor_email, event.actor_role, event.client_ip, event.company_id) == (
        "root@example.com", "superadmin", IP, personas.company_a.pk)
    assert event.before == {"status": "active", "status_reason": ""}
    assert event.after == {"status": "blocked", "status_reason": "leaked in CI"}
    assert response["X-Request-ID"] == event.request_id

    services.unblock_token(token=catalog.token)  # outside a request: the system
    trail = Trail()
    catalog.token.refresh_from_db()
    # The limit job (Celery beat) blocks a token whose limit is spent: nobody acts, so it is automatic.
    catalog.usage.__class__.objects.filter(pk=catalog.usage.pk).update(sell_cost=catalog.token.limit_total)
    rollover.enforce_limits(timezone.now().timestamp())
    event = trail.only("token.auto_blocked")
    assert (event.actor_id, event.actor_email, event.actor_role, event.client_ip) == (None, "", "system", "")
    assert event.after["status"] == TokenStatus.BLOCKED and event.after["status_reason"].startswith("Limit reached")


def test_it_records_a_rotation_and_a_revocation_once_each(personas, catalog):
    from apps.proxy import services

    trail = Trail()
    with acting_as(personas.manager_a):
        _token, secret = services.rotate_token_secret(token=catalog.token)
        services.revoke_token(token=catalog.token, reason="left the team")
        services.revoke_token(token=catalog.token, reason="again")  # already revoked: no change, no event
    assert trail.actions() == ["token.secret_rotated", "token.revoked"]
    rotated = trail.all()[0]
    assert rotated.before is None and rotated.after is None
    assert secret not in trail_text() and catalog.token_secret not in trail_text()


# --- supplier keys -------------------------------------------------------------------------------

def test_supplier_keys_are_recorded_added_rotated_and_disabled_without_the_secret(personas, catalog):
    from apps.providers.models import SupplierKey, SupplierKeyStatus

    trail = Trail()
    with acting_as(personas.supplier_user, client_ip=IP):
        key = SupplierKey(supplier=personas.supplier, provider=catalog.provider, name="backup")
        key.set_secret("sk-live-ANOTHERSECRET-1111")
        key.save()
        key.set_secret("sk-live-ROTATEDSECRET-2222")
        key.save()
        key.status, key.status_reason = SupplierKeyStatus.DISABLED, "quota moved"
        key.save()
    assert trail.actions() == ["supplier_key.added", "supplier_key.secret_rotated", "supplier_key.disabled"]
    added = trail.all()[0]
    assert (added.actor_role, added.supplier_id, added.company_id, added.client_ip) == ("supplier_owner", personas.supplier.pk, None, IP)
    assert added.after["name"] == "backup" and "secret_last4" not in added.after and "secret_encrypted" not in added.after
    text = trail_text()
    for leaked in ("ANOTHERSECRET", "ROTATEDSECRET", "1111", "2222", key.secret_encrypted, SUPPLIER_SECRET):
        assert leaked not in text


# --- prices, coefficients, policies ---------------------------------------------------------------

def test_a_new_price_version_is_recorded_with_the_one_it_replaces(personas, catalog):
    from apps.providers.models import Price

    trail = Trail()
    with acting_as(personas.superadmin):
        Price.objects.create(model=catalog.model, currency="USD", input_per_1m=200_000, output_per_1m=800_000)
    event = trail.only("price.changed")
    assert event.before["input_per_1m"] == 150_000 and event.after["input_per_1m"] == 200_000
    assert (event.actor_role, event.company_id) == ("superadmin", None)


def test_coefficients_are_recorded_for_the_company(personas, catalog):
    from apps.accounts.models import CompanyModelCoefficient

    trail = Trail()
    with acting_as(personas.superadmin):
        company = personas.company_a
        company.sell_coefficient = Decimal("1.2500")
        company.save()
        company.sell_coefficient = Decimal("1.25")  # the same number: no change
        company.save()
        coefficient = CompanyModelCoefficient.objects.create(company=company, model=catalog.model, sell_coefficient=Decimal("1.1"))
        coefficient.sell_coefficient = Decimal("1.05")
        coefficient.save()
    assert trail.actions() == ["coefficient.changed"] * 3
    first, created, changed = trail.all()
    assert (first.before, first.after, first.company_id) == ({"sell_coefficient": None}, {"sell_coefficient": "1.25"}, company.pk)
    assert created.after["sell_coefficient"] == "1.1" and created.object_type == "accounts.CompanyModelCoefficient"
    assert (changed.before, changed.after) == ({"sell_coefficient": "1.1"}, {"sell_coefficient": "1.05"})


def test_a_policy_change_is_recorded_for_its_company(personas, catalog):
    trail = Trail()
    with acting_as(personas.manager_a, client_ip=IP):
        policy = catalog.policy
        policy.mode = "monitor"
        policy.save()
    event = trail.only("policy.changed")
    assert (event.before, event.after) == ({"mode": "enforce"}, {"mode": "monitor"})
    assert (event.company_id, event.actor_role) == (personas.company_a.pk, "manager")


# --- money ---------------------------------------------------------------------------------------

def test_a_top_up_records_its_request_invoice_and_the_credit_once_each(personas, settings):
    from apps.billing import services as ledger
    from apps.invoicing import services as invoicing

    trail = Trail()
    with acting_as(personas.manager_a, client_ip=IP):
        request = invoicing.request_top_up(company=personas.company_a, amount=10_000_000, request_key="k1")
    with acting_as(personas.superadmin):
        invoicing.issue_invoice(top_up_request=request)
        transfer = invoicing.confirm_payment(top_up_request=request)
        invoicing.confirm_payment(top_up_request=request)  # a second click moves nothing, records nothing
    assert trail.actions() == ["wallet.topup_requested", "wallet.topup_invoiced", "wallet.topup_confirmed"]
    requested, invoiced, confirmed = trail.all()
    assert (requested.actor_role, requested.company_id, requested.after["amount"]) == ("manager", personas.company_a.pk, 10_000_000)
    assert invoiced.after["status"] == "invoiced"
    assert (confirmed.actor_role, confirmed.company_id, confirmed.object_id) == ("superadmin", personas.company_a.pk, str(transfer.pk))
    assert confirmed.after["amount"] == 10_000_000 and confirmed.after["kind"] == "top_up"
    # Usage is not an audit event: the ledger's other transfers record nothing.
    trail = Trail()
    ledger.transfer(idempotency_id="usage-x", debit=ledger.company_wallet(personas.company_a),
                    credit=ledger.platform_account("platform_revenue"), amount=1_000, kind="usage")
    assert trail.actions() == []


def test_a_withdrawal_records_its_request_approval_and_payout(personas, settings, django_user_model):
    from apps.billing import payouts, suppliers
    from apps.billing import services as ledger
    from apps.billing.models import AccountKind, SupplierPayoutDetails

    settings.JETSTREAM = {**settings.JETSTREAM, "SUPPLIER_HOLD_DAYS": 0}
    ledger.transfer(idempotency_id="accrual", debit=ledger.platform_account(AccountKind.UPSTREAM_COST),
                    credit=ledger.supplier_payable(personas.supplier), amount=5_000_000)
    SupplierPayoutDetails.objects.create(supplier=personas.supplier, recipient="ООО «Ключи»", inn="7701234567", bik="044525225",
                                         account_number="40702810900000000001")
    trail = Trail()
    with acting_as(personas.supplier_user, client_ip=IP):
        request = suppliers.request_supplier_withdrawal(supplier=personas.supplier, amount=2_000_000, idempotency_id="w1",
                                                        requested_by=personas.supplier_user)
    with acting_as(personas.superadmin):
        suppliers.approve_withdrawal(withdrawal_id=request.pk, by=personas.superadmin)
        suppliers.approve_withdrawal(withdrawal_id=request.pk, by=personas.superadmin)  # already approved: nothing
    payouts.run_payouts()  # Celery beat: the system
    assert trail.actions() == ["withdrawal.requested", "withdrawal.approved", "payout.paid"]
    requested, approved, paid = trail.all()
    assert (requested.actor_role, requested.supplier_id, requested.client_ip) == ("supplier_owner", personas.supplier.pk, IP)
    assert "payout_details" not in requested.after and "40702810900000000001" not in trail_text()
    assert (approved.actor_role, approved.before["status"], approved.after["status"]) == ("superadmin", "requested", "approved")
    assert (paid.actor_role, paid.after["status"]) == ("system", "paid")


# --- sign-in and the second factor --------------------------------------------------------------

def test_sign_ins_and_failures_are_recorded_with_the_peer_address_and_never_the_password(personas):
    client = Client(REMOTE_ADDR=IP)
    trail = Trail()
    response = client.post(reverse("account_login"), {"login": "manager-a@example.com", "password": "wrong-Password-123"})
    assert response.status_code == 200
    failed = trail.only("auth.sign_in_failed")
    assert (failed.actor_id, failed.actor_email, failed.actor_role, failed.client_ip) == (None, "manager-a@example.com", "anonymous", IP)
    assert "wrong-Password-123" not in trail_text()

    trail = Trail()
    response = client.post(reverse("account_login"), {"login": "manager-a@example.com", "password": PASSWORD},
                           HTTP_X_FORWARDED_FOR="203.0.113.9")
    assert response.status_code == 302
    signed_in = trail.only("auth.sign_in")
    assert (signed_in.actor_id, signed_in.actor_role, signed_in.company_id) == (personas.manager_a.pk, "manager", personas.company_a.pk)
    assert signed_in.client_ip == IP  # the peer, never a header a client writes
    assert PASSWORD not in trail_text()


def test_mfa_devices_and_rejected_codes_are_recorded_without_the_seed(personas):
    from django_otp.forms import OTPTokenForm
    from django_otp.plugins.otp_totp.models import TOTPDevice

    trail = Trail()
    with acting_as(personas.manager_a, client_ip=IP):
        device = TOTPDevice.objects.create(user=personas.manager_a, name="phone", confirmed=False)
        device.confirmed = True
        device.save()
        form = OTPTokenForm(personas.manager_a, data={"otp_device": device.persistent_id, "otp_token": "000000"})
        form.is_valid()
        device.delete()
    assert trail.actions() == ["mfa.device_added", "mfa.device_confirmed", "mfa.verification_failed", "mfa.device_removed"]
    added = trail.all()[0]
    assert (added.actor_role, added.company_id, added.after["name"]) == ("manager", personas.company_a.pk, "phone")
    assert "key" not in added.after and device.key not in trail_text()


def test_members_and_roles_are_recorded(personas, django_user_model):
    from apps.accounts.models import Membership

    trail = Trail()
    with acting_as(personas.superadmin):
        user = django_user_model.objects.create_user("new@example.com", PASSWORD)
        membership = Membership.objects.create(user=user, company=personas.company_a, role="viewer")
        membership.role = "manager"
        membership.save()
        membership.delete()
        user.is_superuser = True
        user.save()
        user.set_password("another-Password-456")
        user.save()  # a new password is not an access change, and never recorded
    assert trail.actions() == ["user.created", "member.added", "member.role_changed", "member.removed", "user.changed"]
    created, added, changed, removed, promoted = trail.all()
    assert changed.after == {"role": "manager"}
    assert {e.company_id for e in (added, changed, removed)} == {personas.company_a.pk}
    assert (promoted.before, promoted.after, promoted.actor_role) == ({"is_superuser": False}, {"is_superuser": True}, "superadmin")
    assert "password" not in created.after and user.password not in trail_text()


# --- the deny-list --------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["secret", "secret_encrypted", "key_hash", "key_prefix", "password", "api_key", "key", "request_key",
                                  "secret_last4", "url_encrypted", "payout_details", "account_number", "card_reference", "pdf"])
def test_the_deny_list_drops_secret_fields(name):
    from apps.audit.redaction import denied, json_safe

    assert denied(name)
    assert json_safe({name: "x", "nested": [{name: "y", "kept": 1}]}) == {"nested": [{"kept": 1}]}


@pytest.mark.parametrize("name", ["detect_secrets", "limit_total", "status_reason", "company_id", "supplier_key_id", "name"])
def test_the_deny_list_keeps_ordinary_fields(name):
    from apps.audit.redaction import denied

    assert not denied(name)


def test_record_refuses_an_action_outside_the_vocabulary():
    from apps.audit.exceptions import UnknownAction
    from apps.audit.services import record

    with pytest.raises(UnknownAction):
        record("token.teleported")


def test_a_rolled_back_change_leaves_no_event(personas, catalog):
    from django.db import transaction

    from apps.proxy import services

    trail = Trail()
    with pytest.raises(RuntimeError), transaction.atomic():
        services.block_token(token=catalog.token, reason="x")
        raise RuntimeError
    assert trail.actions() == []
    assert _head() == trail.start  # and the chain goes on without a gap
