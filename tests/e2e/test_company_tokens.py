"""In a real browser: a manager creates a token in the company cabinet, sees its secret once, and
calls ``/v1/chat/completions`` with it through the fake upstream with the official OpenAI SDK;
then blocks it, and ``/v1`` refuses it."""

from __future__ import annotations

import time

import openai
import pytest

from apps.accounts.models import CompanyRole, Membership
from apps.proxy.models import ApiToken, hash_token
from tests.conftest import PASSWORD
from tests.e2e.conftest import screenshot, sign_in
from tests.proxy.conftest import build_world

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]


def test_it_creates_a_token_shows_its_secret_once_and_the_token_calls_v1(page, e2e, fake_openai, django_user_model):
    world = build_world(fake_openai)
    manager = django_user_model.objects.create_user("acme-manager@example.com", PASSWORD)
    Membership.objects.create(user=manager, company=world.company, role=CompanyRole.MANAGER)
    sign_in(page, e2e, manager, next_path="/company/tokens/")

    page.goto(f"{e2e.url}/company/tokens/new/")
    page.fill("#id_name", "e2e-backend")
    page.fill("#id_limit_monthly", "100")
    page.fill("#id_models_allow", "gpt-4o-mini")
    page.click("main button.primary")
    secret = page.inner_text("#token-secret").strip()
    screenshot(page, "company-token-created")
    token = ApiToken.objects.get(company=world.company, name="e2e-backend")
    assert secret.startswith("js-") and token.key_hash == hash_token(secret)
    assert e2e.base_url in page.inner_text("#snippet-openai")

    client = openai.OpenAI(base_url=e2e.base_url, api_key=secret, max_retries=0)
    answer = client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "Привет!"}])
    assert answer.choices[0].message.content and answer.usage.total_tokens > 0

    # Shown once: the token's page never shows it again.
    page.click("text=Я сохранил его")
    page.wait_for_url(f"**/company/tokens/{token.pk}/")
    assert secret not in page.content()
    screenshot(page, "company-token-page")

    # A block in the cabinet: /v1 refuses the token at once (the proxy polls its config every 0.2 s).
    page.fill("form[action$='/block/'] input[name=reason]", "e2e block")
    page.click("form[action$='/block/'] button")
    page.wait_for_load_state()
    time.sleep(0.5)
    with pytest.raises(openai.PermissionDeniedError):
        client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])
