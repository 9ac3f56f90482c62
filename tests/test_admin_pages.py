"""Every registered admin page renders for the superadmin and never shows a secret."""

from __future__ import annotations

import pytest
from django.contrib import admin
from django.urls import reverse

OUR_APPS = {"accounts", "providers", "billing", "proxy", "moderation", "invoicing", "notifications"}


NODE_SECRET = "node-secret-0123456789abcdef"
MODERATOR_SECRET = "moderator-secret-0123456789abcdef"


def _local_node(personas):
    from apps.providers.models import LocalNode, Provider

    provider = Provider.objects.create(slug="local", kind="openai_compatible", base_url="http://127.0.0.1:9/v1", internal=True)
    node = LocalNode(provider=provider, name="gpu-a", base_url="http://127.0.0.1:9/v1", internal=True, supplier=personas.supplier)
    node.set_secret(NODE_SECRET)
    node.save()
    return node


def _moderation_endpoint():
    from apps.moderation.models import ModerationEndpoint

    endpoint = ModerationEndpoint(name="guard", base_url="http://127.0.0.1:9/v1", internal=True, model="llama-guard")
    endpoint.set_secret(MODERATOR_SECRET)
    endpoint.save()
    return endpoint


def _supplier_money(personas) -> dict[str, object]:
    """A supplier with an accrual, payout details, a withdrawal request and a payout batch."""
    from apps.billing import services as ledger
    from apps.billing import withdrawals
    from apps.billing.models import AccountKind, PayableCreditDay, PayoutBatch, SupplierPayoutDetails, WithdrawalRequest

    payable = ledger.supplier_payable(personas.supplier)
    ledger.transfer(idempotency_id="pages-accrual", debit=ledger.platform_account(AccountKind.UPSTREAM_COST), credit=payable,
                    amount=5_000_000)
    details = SupplierPayoutDetails.objects.create(supplier=personas.supplier, recipient="ООО «Поставщик»", inn="7701234567")
    hold = withdrawals.request_withdrawal(supplier=personas.supplier, amount=1_000_000, idempotency_id="pages-withdrawal")
    request = WithdrawalRequest.objects.create(supplier=personas.supplier, amount=1_000_000, idempotency_id="pages-withdrawal",
                                               hold=hold, payout_details={"recipient": details.recipient})
    return {
        "billing.supplierpayoutdetails": details,
        "billing.withdrawalrequest": request,
        "billing.payoutbatch": PayoutBatch.objects.create(),
        "billing.payablecreditday": PayableCreditDay.objects.get(account=payable),
    }


def _invitation(personas):
    from apps.accounts import services

    return services.invite(email="invitee@example.com", role="viewer", invited_by=personas.manager_a, company=personas.company_a).invitation


def _instances(personas, catalog) -> dict[str, object]:
    from apps.accounts.models import CompanyModelCoefficient, Membership, SupplierMembership
    from apps.billing.models import FeedRun
    from apps.invoicing import services as invoicing
    from apps.invoicing.models import CompanyRequisites, DocumentSequence
    from apps.notifications.models import AlertDelivery, AlertSettings

    requisites = CompanyRequisites.objects.create(company=personas.company_a, legal_name="ООО «А»", inn="7701234567")
    top_up = invoicing.request_top_up(company=personas.company_a, amount=1_000_000, request_key="pages")
    invoice = invoicing.issue_invoice(top_up_request=top_up)
    alert_settings = AlertSettings(company=personas.company_a, emails="ops@example.com", webhook_url="https://hooks.example.com/js")
    alert_settings.rotate_webhook_secret()
    alert_settings.save()
    return {
        **_supplier_money(personas),
        "invoicing.companyrequisites": requisites,
        "invoicing.topuprequest": top_up,
        "invoicing.document": invoice,
        "invoicing.documentsequence": DocumentSequence.objects.get(),
        "notifications.alertsettings": alert_settings,
        "notifications.alertdelivery": AlertDelivery.objects.create(company=personas.company_a, kind="low_wallet",
                                                                    subject_id=personas.company_a.pk, level=100, period="2026-11",
                                                                    channel="webhook", payload={"level": 100}),
        "accounts.user": personas.manager_a,
        "accounts.company": personas.company_a,
        "accounts.companymodelcoefficient": CompanyModelCoefficient.objects.create(company=personas.company_a, model=catalog.model,
                                                                                  sell_coefficient="1.1000"),
        "accounts.department": catalog.department,
        "accounts.membership": Membership.objects.get(user=personas.manager_a),
        "accounts.supplier": personas.supplier,
        "accounts.invitation": _invitation(personas),
        "accounts.suppliermembership": SupplierMembership.objects.get(user=personas.supplier_user),
        "providers.egressproxy": catalog.egress,
        "providers.provider": catalog.provider,
        "providers.provideregress": catalog.provider.egress_links.get(),
        "providers.model": catalog.model,
        "providers.price": catalog.price,
        "providers.supplierkey": catalog.supplier_key,
        "providers.localnode": _local_node(personas),
        "billing.account": catalog.wallet,
        "billing.transfer": catalog.transfer,
        "billing.fxrate": catalog.fx_rate,
        "billing.feedrun": FeedRun.objects.create(feed="fx", source="https://www.cbr.ru/scripts/XML_daily.asp", ok=False,
                                                  detail="the document is empty"),
        "billing.usagerecord": catalog.usage,
        "billing.usageday": _usage_day(catalog),
        "proxy.apitoken": catalog.token,
        "moderation.policy": catalog.policy,
        "moderation.moderationendpoint": _moderation_endpoint(),

        "moderation.moderationreport": _moderation_report(personas),
    }


def _moderation_report(personas):
    from django.utils import timezone

    from apps.moderation.masking import Masker
    from apps.moderation.report_models import ModerationReport

    masker = Masker()
    masker.values["[PHONE_1]"] = "+7 912 345-67-89"
    return ModerationReport.objects.create(request_id="req_admin", company=personas.company_a, category="phone", detector="pattern",
                                           action="mask", direction="prompt", snippet="звоните [PHONE]", created_at=timezone.now(),
                                           sealed_mapping=masker.sealed())


def _assert_clean(response, catalog, url: str) -> None:
    assert response.status_code == 200, url
    html = response.content.decode()
    for secret in (*catalog.secrets(), NODE_SECRET, MODERATOR_SECRET):
        assert secret not in html, f"{url} shows a secret"


def _usage_day(catalog):
    from apps.billing.models import UsageDay

    return UsageDay.objects.get(token=catalog.usage.token_id)  # the trigger's row for the catalog's usage record


def test_it_registers_every_model_of_every_app():
    from django.apps import apps

    ours = {m for m in apps.get_models() if m._meta.app_label in OUR_APPS}
    assert ours, "no models found"
    assert ours <= set(admin.site._registry), sorted(m._meta.label for m in ours - set(admin.site._registry))


def test_it_renders_every_page_without_secrets(superadmin_client, personas, catalog):
    instances = _instances(personas, catalog)
    registered = [m for m in admin.site._registry if m._meta.app_label in OUR_APPS]
    assert {m._meta.label_lower for m in registered} == set(instances)
    for model in registered:
        opts = model._meta
        model_admin = admin.site._registry[model]
        obj = instances[opts.label_lower]
        urls = [
            reverse(f"admin:{opts.app_label}_{opts.model_name}_changelist"),
            reverse(f"admin:{opts.app_label}_{opts.model_name}_changelist") + "?q=a",
            reverse(f"admin:{opts.app_label}_{opts.model_name}_change", args=[obj.pk]),
            reverse(f"admin:{opts.app_label}_{opts.model_name}_history", args=[obj.pk]),
        ]
        if model_admin.has_add_permission(_request(personas.superadmin)):
            urls.append(reverse(f"admin:{opts.app_label}_{opts.model_name}_add"))
        for url in urls:
            _assert_clean(superadmin_client.get(url), catalog, url)


def test_it_renders_the_index_and_autocomplete_without_secrets(superadmin_client, catalog):
    _assert_clean(superadmin_client.get(reverse("admin:index")), catalog, "index")
    url = reverse("admin:autocomplete") + "?app_label=providers&model_name=provideregress&field_name=egress&term=nl"
    response = superadmin_client.get(url)
    _assert_clean(response, catalog, url)
    assert "nl-1" in response.content.decode()


@pytest.mark.parametrize("url_name", ["billing_usagerecord_export", "billing_transfer_export", "providers_price_export",
                                      "providers_model_export", "providers_price_import", "providers_model_import"])
def test_it_renders_import_and_export_pages(superadmin_client, catalog, url_name):
    url = reverse(f"admin:{url_name}")
    _assert_clean(superadmin_client.get(url), catalog, url)


def _request(user):
    from django.test import RequestFactory

    request = RequestFactory().get("/")
    request.user = user
    return request


def _third_party_instances(personas) -> dict[str, object]:
    from allauth.account.models import EmailAddress
    from axes.models import AccessAttempt, AccessFailureLog, AccessLog
    from django.contrib.auth.models import Group
    from django.contrib.sites.models import Site
    from django_otp.plugins.otp_static.models import StaticDevice
    from django_otp.plugins.otp_totp.models import TOTPDevice

    static = StaticDevice.objects.create(user=personas.manager_a, name="backup", confirmed=True)
    static.token_set.create(token="rcvry-TOKEN-77")
    client = {"user_agent": "Mozilla/5.0", "ip_address": "198.51.100.7", "username": personas.manager_a.email,
              "http_accept": "text/html", "path_info": "/accounts/login/"}
    return {
        "axes.accessattempt": AccessAttempt.objects.create(**client, get_data="", post_data="login=manager-a", failures_since_start=2),
        "axes.accesslog": AccessLog.objects.create(**client),
        "axes.accessfailurelog": AccessFailureLog.objects.create(**client, locked_out=False),
        "account.emailaddress": EmailAddress.objects.create(user=personas.manager_a, email=personas.manager_a.email),
        "auth.group": Group.objects.create(name="operators"),
        "sites.site": Site.objects.get_current(),
        "otp_static.staticdevice": static,
        "otp_totp.totpdevice": TOTPDevice.objects.create(user=personas.manager_a, name="phone", confirmed=True),
    }


def _render_other_pages(client, catalog, instances: dict[str, object], labels: set[str], extra_secrets: list[str]) -> None:
    for model in admin.site._registry:
        opts = model._meta
        if opts.label_lower not in labels:
            continue
        obj = instances[opts.label_lower]
        for url in (reverse(f"admin:{opts.app_label}_{opts.model_name}_changelist"),
                    reverse(f"admin:{opts.app_label}_{opts.model_name}_change", args=[obj.pk])):
            response = client.get(url)
            _assert_clean(response, catalog, url)
            html = response.content.decode()
            for secret in extra_secrets:
                assert secret not in html, f"{url} shows an MFA secret"


OTP_LABELS = {"otp_static.staticdevice", "otp_totp.totpdevice"}


def test_it_renders_the_other_registered_pages(superadmin_client, personas, catalog):
    instances = _third_party_instances(personas)
    others = {m._meta.label_lower for m in admin.site._registry if m._meta.app_label not in OUR_APPS}
    assert others == set(instances)
    _render_other_pages(superadmin_client, catalog, instances, others - OTP_LABELS, [])


def test_it_hides_mfa_secrets_in_the_otp_pages(superadmin_client, personas, catalog):
    # TOTP seeds and backup codes are credentials: settings.OTP_ADMIN_HIDE_SENSITIVE_DATA keeps them off the pages.
    instances = _third_party_instances(personas)
    mfa_secrets = [instances["otp_totp.totpdevice"].key, "rcvry-TOKEN-77"]
    _render_other_pages(superadmin_client, catalog, instances, OTP_LABELS, mfa_secrets)
    device = instances["otp_totp.totpdevice"]
    for name in ("otp_totp_totpdevice_config", "otp_totp_totpdevice_qrcode"):
        assert superadmin_client.get(reverse(f"admin:{name}", args=[device.pk])).status_code == 403
