"""API tokens: the secret is generated on add and shown once; limits in rubles; block/revoke with a reason."""

from __future__ import annotations

import re

from django.contrib import messages
from django.contrib.messages import get_messages
from django.urls import reverse

from apps.proxy.models import ApiToken, hash_token


def _token_form(personas, **overrides) -> dict:
    data = {
        "company": personas.company_a.pk, "department": "", "owner": personas.manager_a.pk, "name": "billing-bot",
        "environment": "prod", "limit_total": "1500.50", "limit_weekly": "", "limit_monthly": "300", "rpm": "60", "tpm": "",
        "models_allow": "mock-gpt", "models_deny": "", "ip_allow": "10.0.0.0/8,192.0.2.1", "max_distinct_ips": "",
        "expires_at_0": "", "expires_at_1": "", "_save": "Save",
    }
    data.update(overrides)
    return data


FULL_SECRET = re.compile(r"js-[A-Za-z0-9_\-]{32,}")


def _secrets_in_messages(response) -> list[str]:
    return [found for m in get_messages(response.wsgi_request) for found in FULL_SECRET.findall(str(m))]


def _secret_from_page(response) -> str:
    found = FULL_SECRET.findall(response.content.decode())
    assert len(found) == 1, found  # shown exactly once on the page
    return found[0]


def test_it_generates_the_secret_and_shows_it_once(superadmin_client, personas, catalog):
    response = superadmin_client.post(reverse("admin:proxy_apitoken_add"), _token_form(personas))
    # The answer to the POST that created the token is the one page that shows its secret.
    assert response.status_code == 200
    secret = _secret_from_page(response)
    assert "no-store" in response["Cache-Control"]
    token = ApiToken.objects.get(name="billing-bot")
    assert token.key_hash == hash_token(secret)
    assert token.key_prefix == secret[:10] and len(secret) > 40
    assert _secrets_in_messages(response) == []
    page = response.content.decode()
    change_url = reverse("admin:proxy_apitoken_change", args=[token.pk])
    assert f'href="{change_url}"' in page and token.key_hash not in page

    for url in (reverse("admin:proxy_apitoken_changelist"), change_url, reverse("admin:index")):
        again = superadmin_client.get(url).content.decode()
        assert secret not in again and token.key_hash not in again
    assert f"{token.key_prefix}…" in superadmin_client.get(change_url).content.decode()


def test_it_stores_the_secret_in_no_session(superadmin_client, personas, catalog):
    from django.contrib.sessions.models import Session

    response = superadmin_client.post(reverse("admin:proxy_apitoken_add"), _token_form(personas))
    sessions = list(Session.objects.all())
    assert sessions  # the superadmin's own session is there, and was looked at
    for session in sessions:
        assert FULL_SECRET.findall(str(session.get_decoded())) == []
    secret = _secret_from_page(response)
    assert all(secret not in session.session_data for session in sessions)
    # Nor in a cookie the answer sets (messages could fall back to one).
    assert all(secret not in morsel.value for morsel in response.cookies.values())


def test_it_shows_the_secret_page_in_russian(superadmin_client, personas, catalog):
    response = superadmin_client.post(reverse("admin:proxy_apitoken_add"), _token_form(personas),
                                      headers={"accept-language": "ru"})
    page = response.content.decode()
    assert "Секрет токена показывается только сейчас — скопируйте его:" in page
    assert _secret_from_page(response)


def test_it_stores_limits_in_micro_rubles_and_shows_them_in_rubles(superadmin_client, personas, catalog):
    superadmin_client.post(reverse("admin:proxy_apitoken_add"), _token_form(personas))
    token = ApiToken.objects.get(name="billing-bot")
    assert (token.limit_total, token.limit_weekly, token.limit_monthly) == (1_500_500_000, None, 300_000_000)
    assert token.ip_allow == ["10.0.0.0/8", "192.0.2.1"]
    page = superadmin_client.get(reverse("admin:proxy_apitoken_change", args=[token.pk])).content.decode()
    assert 'value="1500.5"' in page and 'value="300"' in page
    listing = superadmin_client.get(reverse("admin:proxy_apitoken_changelist")).content.decode()
    assert "1500.50 ₽" in listing


def test_it_refuses_bad_limits_and_networks(superadmin_client, personas, catalog):
    response = superadmin_client.post(reverse("admin:proxy_apitoken_add"),
                                      _token_form(personas, limit_total="12.3456789", ip_allow="not-a-net"))
    errors = response.context["adminform"].form.errors
    assert "limit_total" in errors and "ip_allow" in errors
    assert not ApiToken.objects.filter(name="billing-bot").exists()


def test_it_keeps_the_secret_when_a_token_is_edited(superadmin_client, personas, catalog):
    token = catalog.token
    before = (token.key_hash, token.key_prefix)
    data = _token_form(personas, name="ci", limit_total="", department=catalog.department.pk)
    response = superadmin_client.post(reverse("admin:proxy_apitoken_change", args=[token.pk]), data)
    assert response.status_code == 302
    token.refresh_from_db()
    assert (token.key_hash, token.key_prefix) == before
    assert token.limit_total is None
    assert _secrets_in_messages(response) == []


def test_it_refuses_a_department_of_another_company(superadmin_client, personas, catalog):
    other = personas.company_b.departments.create(slug="ops", name="Ops")
    response = superadmin_client.post(reverse("admin:proxy_apitoken_add"), _token_form(personas, department=other.pk))
    assert "department" in response.context["adminform"].form.errors


def _act(client, action: str, tokens, reason: str):
    return client.post(reverse("admin:proxy_apitoken_changelist"),
                       {"action": action, "_selected_action": [t.pk for t in tokens], "reason": reason}, follow=True)


def test_it_blocks_and_revokes_with_a_reason(superadmin_client, personas, catalog):
    token = catalog.token
    response = _act(superadmin_client, "block_tokens", [token], "  leaked in a CI log ")
    assert response.status_code == 200
    token.refresh_from_db()
    assert (token.status, token.status_reason) == ("blocked", "leaked in a CI log")

    _act(superadmin_client, "revoke_tokens", [token], "rotated")
    token.refresh_from_db()
    assert (token.status, token.status_reason) == ("revoked", "rotated")

    # Revocation is final: blocking or unblocking a revoked token changes nothing, and says so.
    for action in ("block_tokens", "unblock_tokens"):
        response = _act(superadmin_client, action, [token], "again")
        assert messages.WARNING in [m.level for m in response.context["messages"]]
        token.refresh_from_db()
        assert (token.status, token.status_reason) == ("revoked", "rotated")


def test_it_unblocks_a_blocked_token(superadmin_client, personas, catalog):
    token = catalog.token
    _act(superadmin_client, "block_tokens", [token], "suspicious traffic")
    _act(superadmin_client, "unblock_tokens", [token], "")
    token.refresh_from_db()
    assert token.status == "active"


def test_it_requires_the_owner_to_work_for_the_company(superadmin_client, personas, catalog):
    response = superadmin_client.post(reverse("admin:proxy_apitoken_add"), _token_form(personas, owner=personas.manager_b.pk))
    assert "owner" in response.context["adminform"].form.errors
    assert not ApiToken.objects.filter(name="billing-bot").exists()


def test_it_refuses_to_block_without_a_reason(superadmin_client, personas, catalog):
    token = catalog.token
    response = _act(superadmin_client, "block_tokens", [token], "   ")
    assert messages.ERROR in [m.level for m in response.context["messages"]]
    token.refresh_from_db()
    assert token.status == "active"


def test_it_keeps_status_out_of_the_edit_form(superadmin_client, personas, catalog):
    token = catalog.token
    data = _token_form(personas, name="ci", status="revoked", status_reason="sneaky")
    assert superadmin_client.post(reverse("admin:proxy_apitoken_change", args=[token.pk]), data).status_code == 302
    token.refresh_from_db()
    assert token.status == "active" and token.status_reason == ""
    assert superadmin_client.post(reverse("admin:proxy_apitoken_delete", args=[token.pk]), {"post": "yes"}).status_code == 403


def test_it_refuses_an_owner_from_another_company(superadmin_client, personas, catalog):
    response = superadmin_client.post(reverse("admin:proxy_apitoken_add"), _token_form(personas, owner=personas.manager_b.pk))
    assert response.status_code == 200
    assert "owner" in response.context["adminform"].form.errors
    assert not ApiToken.objects.filter(name="billing-bot").exists()


def test_a_token_never_moves_to_another_company(superadmin_client, personas, catalog):
    token = catalog.token
    data = _token_form(personas, name="ci", company=personas.company_b.pk, department=catalog.department.pk)
    superadmin_client.post(reverse("admin:proxy_apitoken_change", args=[token.pk]), data)
    token.refresh_from_db()
    assert token.company == personas.company_a
