"""The company cabinet's tokens: list, create (secret once, snippets), detail with what is left of
each limit, edit, block / unblock / revoke / new secret — each for its company only."""

from __future__ import annotations

import datetime as dt

import pytest
from django.urls import reverse
from django.utils import timezone

from apps.accounts.models import CompanyRole, Membership
from apps.proxy.models import ApiToken, TokenStatus, hash_token
from tests.conftest import PASSWORD
from tests.fakes.openai_upstream import fake_openai_server  # noqa: F401 - fixtures
from tests.proxy.conftest import fake_openai, gateway, world  # noqa: F401 - fixtures

pytestmark = pytest.mark.django_db

RUB = 1_000_000


def _token(company, name="ci", **fields):
    token = ApiToken(company=company, name=name, **fields)
    secret = token.set_secret()
    token.save()
    return token, secret


@pytest.fixture
def viewer_a(personas, django_user_model):
    user = django_user_model.objects.create_user("viewer-a@example.com", PASSWORD)
    Membership.objects.create(user=user, company=personas.company_a, role=CompanyRole.VIEWER)
    return user


def recently_signed_in(client):
    """``client`` whose person typed their password just now (``recent_auth_required`` lets them through)."""
    import time

    from apps.cabinets.access import AUTHENTICATED_AT_SESSION_KEY

    session = client.session
    session[AUTHENTICATED_AT_SESSION_KEY] = int(time.time())
    session.save()
    return client


@pytest.fixture
def manager(personas, signed_in):
    return recently_signed_in(signed_in(personas.manager_a))


def test_creating_a_token_or_a_new_secret_asks_for_the_password_again_after_a_while(personas, signed_in):
    token, _ = _token(personas.company_a)
    stale = signed_in(personas.manager_a)
    response = stale.get(reverse("cabinets:company:token_create"))
    assert response.status_code == 302 and response["Location"].startswith(reverse("cabinets:reauth"))
    assert stale.post(reverse("cabinets:company:token_rotate", kwargs={"token_id": token.pk})).status_code == 302
    assert ApiToken.objects.get(pk=token.pk).key_hash == token.key_hash


def test_it_lists_the_companys_tokens_with_limits_left_and_not_another_companys(personas, manager):
    department = personas.company_a.departments.create(slug="ml", name="ML team")
    _token(personas.company_a, "ci-backend", department=department, limit_monthly=500 * RUB)
    _token(personas.company_b, "b-secret-project")
    page = manager.get(reverse("cabinets:company:tokens"))
    assert page.status_code == 200
    body = page.content.decode()
    assert "ci-backend" in body and "ML team" in body and "500,00" in body
    assert "b-secret-project" not in body


def test_it_filters_the_list_and_answers_htmx_with_the_table_alone(personas, manager):
    _token(personas.company_a, "alpha")
    blocked, _ = _token(personas.company_a, "beta", status=TokenStatus.BLOCKED)
    page = manager.get(reverse("cabinets:company:tokens"), {"status": "blocked"}, HTTP_HX_REQUEST="true", HTTP_HX_TARGET="tokens-table")
    body = page.content.decode()
    assert "beta" in body and "alpha" not in body
    assert "<html" not in body  # the partial only


def test_it_creates_a_token_and_shows_its_secret_once_with_snippets(personas, manager):
    department = personas.company_a.departments.create(slug="ml", name="ML team")
    response = manager.post(reverse("cabinets:company:token_create"), {
        "name": "ci-backend", "department": department.pk, "environment": "test", "limit_total": "1000", "limit_weekly": "",
        "limit_monthly": "250,50", "rpm": "60", "tpm": "100000", "models_allow": "", "models_deny": "",
        "ip_allow": "10.0.0.0/8\n203.0.113.7", "max_distinct_ips": "3", "expires_at": "2099-01-01T00:00"})
    assert response.status_code == 200
    token = ApiToken.objects.get(company=personas.company_a, name="ci-backend")
    secret = response.context["secret"]
    assert token.key_hash == hash_token(secret)
    assert (token.limit_total, token.limit_monthly, token.limit_weekly) == (1000 * RUB, 250_500_000, None)
    assert (token.rpm, token.tpm, token.max_distinct_ips, token.environment) == (60, 100000, 3, "test")
    assert token.ip_allow == ["10.0.0.0/8", "203.0.113.7"] and token.owner == personas.manager_a
    assert token.expires_at == dt.datetime(2099, 1, 1, tzinfo=dt.timezone(dt.timedelta(hours=3)))  # Europe/Moscow
    body = response.content.decode()
    assert body.count(secret) >= 5  # the box, curl, OpenAI SDK, Anthropic SDK, environment variables
    assert "http://testserver/v1" in body and "OPENAI_BASE_URL" in body and "anthropic.Anthropic" in body
    assert "no-store" in response["Cache-Control"]
    # Never again: not on the token's page, not in the list.
    assert secret not in manager.get(reverse("cabinets:company:token_detail", kwargs={"token_id": token.pk})).content.decode()
    assert secret not in manager.get(reverse("cabinets:company:tokens")).content.decode()


def test_it_refuses_bad_token_settings_with_clear_errors_and_creates_nothing(personas, manager):
    personas.company_a.departments.create(slug="ml", name="ML team")
    other_department = personas.company_b.departments.create(slug="b", name="B dept")
    _token(personas.company_a, "taken")
    response = manager.post(reverse("cabinets:company:token_create"), {
        "name": "taken", "department": other_department.pk, "environment": "prod", "limit_total": "-5", "rpm": "x",
        "ip_allow": "not-an-ip", "models_allow": "no-such-model", "expires_at": "2001-01-01T00:00"})
    assert response.status_code == 200
    errors = response.context["form"].errors
    assert set(errors) >= {"name", "department", "limit_total", "rpm", "ip_allow", "models_allow", "expires_at"}
    assert ApiToken.objects.filter(company=personas.company_a).count() == 1


def test_it_shows_a_tokens_usage_and_what_is_left_of_each_limit(personas, manager, catalog):
    token = catalog.token  # company A, limit_total 1000 RUB, one usage record of 1.234567 RUB
    page = manager.get(reverse("cabinets:company:token_detail", kwargs={"token_id": token.pk}))
    assert page.status_code == 200
    spend = page.context["spend"]
    assert spend.total.spent == 1_234_567 and spend.total.remaining == 1000 * RUB - 1_234_567
    assert page.context["usage"].total.requests == 1 and page.context["usage"].by_model[0].key == "mock-gpt"
    assert "998,77" in page.content.decode()
    assert catalog.token_secret not in page.content.decode() and token.key_hash not in page.content.decode()


def test_it_edits_a_tokens_limits(personas, manager):
    token, _ = _token(personas.company_a, "ci", limit_total=10 * RUB)
    url = reverse("cabinets:company:token_edit", kwargs={"token_id": token.pk})
    form = manager.get(url)
    assert form.status_code == 200 and form.context["form"]["limit_total"].value() == "10"
    response = manager.post(url, {"name": "ci", "environment": "prod", "limit_total": "20", "limit_weekly": "5", "rpm": "10"})
    assert response.status_code == 302
    token.refresh_from_db()
    assert (token.limit_total, token.limit_weekly, token.rpm) == (20 * RUB, 5 * RUB, 10)


def test_it_blocks_with_a_reason_unblocks_and_revokes_for_good(personas, manager):
    token, _ = _token(personas.company_a)
    block = reverse("cabinets:company:token_block", kwargs={"token_id": token.pk})
    assert manager.post(block, {"reason": "  "}).status_code == 302
    token.refresh_from_db()
    assert token.status == TokenStatus.ACTIVE  # a block needs a reason
    manager.post(block, {"reason": "leaked in a CI log"})
    token.refresh_from_db()
    assert (token.status, token.status_reason) == ("blocked", "leaked in a CI log")
    manager.post(reverse("cabinets:company:token_unblock", kwargs={"token_id": token.pk}))
    token.refresh_from_db()
    assert token.status == TokenStatus.ACTIVE
    manager.post(reverse("cabinets:company:token_revoke", kwargs={"token_id": token.pk}))
    token.refresh_from_db()
    assert token.status == TokenStatus.REVOKED
    manager.post(reverse("cabinets:company:token_unblock", kwargs={"token_id": token.pk}))
    token.refresh_from_db()
    assert token.status == TokenStatus.REVOKED  # revocation is final


def test_it_blocks_inline_from_the_list_with_htmxs_prompt(personas, manager):
    token, _ = _token(personas.company_a)
    response = manager.post(reverse("cabinets:company:token_block", kwargs={"token_id": token.pk}), {},
                            HTTP_HX_REQUEST="true", HTTP_HX_PROMPT="suspicious traffic")
    assert response.status_code == 200 and f'id="token-{token.pk}"' in response.content.decode()
    token.refresh_from_db()
    assert (token.status, token.status_reason) == ("blocked", "suspicious traffic")


def test_it_gives_a_token_a_new_secret_shown_once(personas, manager):
    token, old = _token(personas.company_a)
    response = manager.post(reverse("cabinets:company:token_rotate", kwargs={"token_id": token.pk}))
    token.refresh_from_db()
    assert response.status_code == 200 and token.key_hash == hash_token(response.context["secret"]) != hash_token(old)


def test_it_allows_only_post_for_actions(personas, manager):
    token, _ = _token(personas.company_a)
    for name in ("token_block", "token_unblock", "token_revoke", "token_rotate"):
        assert manager.get(reverse(f"cabinets:company:{name}", kwargs={"token_id": token.pk})).status_code == 405


def test_it_lets_a_viewer_see_but_change_nothing(personas, signed_in, viewer_a):
    token, _ = _token(personas.company_a)
    viewer = signed_in(viewer_a)
    assert viewer.get(reverse("cabinets:company:tokens")).status_code == 200
    assert viewer.get(reverse("cabinets:company:token_detail", kwargs={"token_id": token.pk})).status_code == 200
    assert viewer.get(reverse("cabinets:company:token_create")).status_code == 403
    for name in ("token_edit", "token_block", "token_unblock", "token_revoke", "token_rotate"):
        assert viewer.post(reverse(f"cabinets:company:{name}", kwargs={"token_id": token.pk}), {"reason": "x"}).status_code == 403
    token.refresh_from_db()
    assert token.status == TokenStatus.ACTIVE


def test_another_companys_token_is_404_on_every_page_and_action(personas, signed_in):
    token, _ = _token(personas.company_b, "b-token")
    manager = recently_signed_in(signed_in(personas.manager_a))
    for name in ("token_detail", "token_edit"):
        assert manager.get(reverse(f"cabinets:company:{name}", kwargs={"token_id": token.pk})).status_code == 404
    for name in ("token_edit", "token_block", "token_unblock", "token_revoke", "token_rotate"):
        assert manager.post(reverse(f"cabinets:company:{name}", kwargs={"token_id": token.pk}), {"reason": "x"}).status_code == 404
    token.refresh_from_db()
    assert (token.status, token.key_hash) == (TokenStatus.ACTIVE, token.key_hash)


def test_an_expired_token_date_is_read_in_the_companys_time_zone(personas, manager):
    personas.company_a.time_zone = "Asia/Vladivostok"
    personas.company_a.save()
    manager.post(reverse("cabinets:company:token_create"), {"name": "vl", "environment": "prod", "expires_at": "2099-06-01T09:00"})
    token = ApiToken.objects.get(name="vl")
    assert token.expires_at == timezone.make_aware(dt.datetime(2099, 6, 1, 9, 0), dt.timezone(dt.timedelta(hours=10)))


# --- the gateway sees every change at once ------------------------------------------------------



@pytest.mark.django_db(transaction=True)
def test_a_block_in_the_cabinet_makes_v1_refuse_the_token_and_an_unblock_lets_it_in(gateway, django_user_model, signed_in):  # noqa: F811
    import openai

    from tests.proxy.helpers import chat

    manager = django_user_model.objects.create_user("acme-manager@example.com", PASSWORD)
    Membership.objects.create(user=manager, company=gateway.world.company, role=CompanyRole.MANAGER)
    cabinet = recently_signed_in(signed_in(manager))
    token = gateway.world.token
    assert chat(gateway).status_code == 200

    cabinet.post(reverse("cabinets:company:token_block", kwargs={"token_id": token.pk}), {"reason": "leaked"})
    gateway.wait_config()
    refused = chat(gateway)
    assert refused.status_code == 403 and "leaked" in refused.json()["error"]["message"]

    cabinet.post(reverse("cabinets:company:token_unblock", kwargs={"token_id": token.pk}))
    gateway.wait_config()
    assert chat(gateway).status_code == 200

    cabinet.post(reverse("cabinets:company:token_edit", kwargs={"token_id": token.pk}),
                 {"name": "ci", "environment": "prod", "models_deny": "demo-chat"})
    gateway.wait_config()
    assert chat(gateway).status_code == 403  # the new deny-list applies too

    cabinet.post(reverse("cabinets:company:token_revoke", kwargs={"token_id": token.pk}))
    gateway.wait_config()
    with pytest.raises(openai.AuthenticationError):
        gateway.client().models.list()


@pytest.mark.parametrize(("language", "expected"), [("ru", "Новый токен"), ("en", "New token")])
def test_it_speaks_russian_by_default_and_english_on_request(personas, manager, settings, language, expected):
    manager.cookies[settings.LANGUAGE_COOKIE_NAME] = language
    for name in ("tokens", "departments", "members", "wallet"):
        assert manager.get(reverse(f"cabinets:company:{name}")).status_code == 200
    assert expected in manager.get(reverse("cabinets:company:tokens")).content.decode()


def test_it_shows_when_a_token_was_last_used_from_its_requests(personas, manager, catalog):
    page = manager.get(reverse("cabinets:company:tokens"))
    (token, _spend), = page.context["rows"]
    assert token.last_request_at == catalog.usage.started_at


def test_it_marks_an_expired_token(personas, manager):
    token, _ = _token(personas.company_a, "old", expires_at=timezone.now() - dt.timedelta(days=1))
    body = manager.get(reverse("cabinets:company:token_detail", kwargs={"token_id": token.pk})).content.decode()
    assert "истёк" in body


def test_it_reads_spend_live_from_the_gateways_counters_and_falls_back_to_the_records(personas, catalog, redis_client, settings):
    import time
    import zoneinfo

    from apps.proxy import services
    from apps.proxy.redis_scripts import SpendKeys
    from apps.proxy.windows import window_ids

    token = ApiToken.objects.select_related("company", "department").get(pk=catalog.token.pk)
    week, month, _, _ = window_ids(zoneinfo.ZoneInfo(token.company.time_zone), time.time())
    keys = SpendKeys.for_token(token_id=token.pk, company_id=token.company_id, department_id=token.department_id, week=week, month=month)
    redis_client.mset({keys.total: 7 * RUB, keys.week: 5 * RUB, keys.month: 6 * RUB, keys.dept: 9 * RUB})
    redis_client.hset(keys.held, "a", 2 * RUB)
    try:
        live = services.token_spend([token])[token.pk]
        assert (live.total.spent, live.weekly.spent, live.monthly.spent, live.department.spent, live.held, live.live) == (
            7 * RUB, 5 * RUB, 6 * RUB, 9 * RUB, 2 * RUB, True)
        assert live.total.remaining == 1000 * RUB - 7 * RUB and live.department.remaining == 5000 * RUB - 9 * RUB
        redis_client.delete(keys.week)  # a window not opened yet: that figure comes from the usage records
        partial = services.token_spend([token])[token.pk]
        assert (partial.weekly.spent, partial.total.spent, partial.live) == (1_234_567, 7 * RUB, False)
    finally:
        redis_client.delete(keys.total, keys.week, keys.month, keys.dept, keys.held)
    settings.REDIS_URL = "redis://127.0.0.1:1/0"  # Redis unreachable: the page still answers, from PostgreSQL
    down = services.token_spend([token])[token.pk]
    assert (down.total.spent, down.live) == (1_234_567, False)
