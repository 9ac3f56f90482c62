"""jetstream_demo: the bootstrap `make run` calls — superadmin, demo configuration, a fresh demo token."""

from __future__ import annotations

import hashlib
import os
import re
import subprocess
import sys

import pytest
from django.conf import settings as django_settings
from django.contrib.auth import get_user_model
from django.core.management.base import CommandError

from apps.accounts.models import Company
from apps.billing import services as ledger
from apps.billing.models import Transfer, UsageRecord
from apps.providers.models import Model, Price, Provider
from apps.proxy.models import ApiToken, TokenStatus
from tests.config.conftest import database_state, run_command

RUB = 1_000_000
TOKEN = re.compile(r"js-[A-Za-z0-9_-]{32,}")


def demo_token_hash() -> str:
    return ApiToken.objects.get(company__slug="demo", name="demo").key_hash


def printed_token(out: str) -> str:
    tokens = set(TOKEN.findall(out))
    assert len(tokens) == 1, out  # the same secret in the token line, curl and the SDK snippet
    return tokens.pop()


def test_it_creates_the_superadmin_and_shows_the_password_once(db):
    out, _err = run_command("jetstream_demo")

    password = re.search(r"password: (\S+)  \(shown once\)", out).group(1)
    admin = get_user_model().objects.get(email="admin@jetstream.local")
    assert admin.is_superuser and admin.is_staff
    assert admin.check_password(password)
    assert "login:    admin@jetstream.local" in out

    again, _err = run_command("jetstream_demo")

    assert password not in again
    assert "superuser admin@jetstream.local already exists" in again
    assert ".venv/bin/python manage.py changepassword admin@jetstream.local" in again
    assert get_user_model().objects.filter(is_superuser=True).count() == 1


def test_it_leaves_an_existing_superuser_alone(personas):
    out, _err = run_command("jetstream_demo")

    assert "superuser root@example.com already exists" in out
    assert "changepassword root@example.com" in out
    assert not get_user_model().objects.filter(email="admin@jetstream.local").exists()


def test_it_refuses_when_the_admin_email_belongs_to_an_ordinary_user(db, django_user_model):
    django_user_model.objects.create_user("admin@jetstream.local", "correct-horse-battery-staple")
    before = database_state()

    with pytest.raises(CommandError, match="belongs to an ordinary user"):
        run_command("jetstream_demo")

    assert database_state() == before


def test_it_sets_up_the_demo_company_models_and_1000_rub(db):
    run_command("jetstream_demo")
    run_command("jetstream_demo")

    provider = Provider.objects.get(slug="demo")
    assert provider.kind == "mock"
    assert dict(Model.objects.filter(provider=provider).values_list("name", "modality")) == {
        "demo-chat": "chat", "demo-embedding": "embedding"}
    assert {p.currency for p in Price.objects.filter(model__provider=provider)} == {"RUB"}
    company = Company.objects.get(slug="demo")
    spent = sum(UsageRecord.objects.filter(company=company).values_list("sell_cost", flat=True))
    # 1000 RUB from configuration, 5000 RUB from the paid invoice, less the demo usage.
    assert ledger.balance(ledger.company_wallet(company)).posted == 6000 * RUB - spent
    assert Transfer.objects.filter(kind="top_up").count() == 2  # the second run topped up nothing


def test_it_issues_a_fresh_demo_token_on_every_run(db):
    first = printed_token(run_command("jetstream_demo")[0])
    assert demo_token_hash() == hashlib.sha256(first.encode()).hexdigest()

    second = printed_token(run_command("jetstream_demo")[0])

    assert second != first
    assert demo_token_hash() == hashlib.sha256(second.encode()).hexdigest()  # the first no longer works
    assert ApiToken.objects.filter(company__slug="demo", name="demo").count() == 1


def test_it_prints_the_admin_url_and_first_call_examples(db, settings):
    settings.SITE_URL = "http://127.0.0.1:8000"

    out, _err = run_command("jetstream_demo")
    token = printed_token(out)

    assert "Admin: http://127.0.0.1:8000/admin/" in out
    assert "curl http://127.0.0.1:8000/v1/chat/completions \\" in out
    assert f'-H "Authorization: Bearer {token}"' in out
    assert '"model": "demo-chat"' in out
    snippet = [line.strip() for line in out.splitlines() if "OpenAI" in line or "client." in line]
    assert snippet == [
        "from openai import OpenAI",
        f'client = OpenAI(base_url="http://127.0.0.1:8000/v1", api_key="{token}")',
        'print(client.chat.completions.create(model="demo-chat", messages=[{"role": "user", "content": "Hello!"}])'
        ".choices[0].message.content)",
    ]
    compile("\n".join(snippet), "<snippet>", "exec")  # valid Python


def test_it_follows_site_url(db, settings):
    settings.SITE_URL = "https://llm.example.com/"

    out, _err = run_command("jetstream_demo")

    assert "Admin: https://llm.example.com/admin/" in out
    assert "curl https://llm.example.com/v1/chat/completions" in out


def _site_url_in_a_fresh_process(**env: str) -> str:
    """settings.SITE_URL as a new process (like ``make run``'s) computes it from ``env``."""
    environment = {name: value for name, value in os.environ.items() if name not in ("SITE_URL", "JETSTREAM_HOST", "JETSTREAM_PORT")}
    environment.update(env, DJANGO_SETTINGS_MODULE="jetstream.settings", PYTHONDONTWRITEBYTECODE="1")
    code = "import django; django.setup(); from django.conf import settings; print(settings.SITE_URL)"
    result = subprocess.run([sys.executable, "-c", code], cwd=django_settings.BASE_DIR, env=environment,
                            capture_output=True, text=True, timeout=60, check=True)
    return result.stdout.strip()


@pytest.mark.parametrize(("env", "expected"), [
    ({}, "http://127.0.0.1:8000"),
    ({"JETSTREAM_PORT": "8123"}, "http://127.0.0.1:8123"),
    ({"JETSTREAM_HOST": "0.0.0.0", "JETSTREAM_PORT": "9000"}, "http://127.0.0.1:9000"),
    ({"JETSTREAM_HOST": "192.0.2.10", "JETSTREAM_PORT": "9000"}, "http://192.0.2.10:9000"),
    ({"JETSTREAM_HOST": "::1", "JETSTREAM_PORT": "9000"}, "http://[::1]:9000"),
    ({"JETSTREAM_PORT": "9000", "SITE_URL": "https://llm.example.com"}, "https://llm.example.com"),
])
def test_it_prints_the_address_bin_serve_listens_on(env, expected):
    """``make run`` starts bin/serve on JETSTREAM_HOST:JETSTREAM_PORT; the demo's URLs (SITE_URL) follow."""
    assert _site_url_in_a_fresh_process(**env) == expected


def test_it_prints_the_served_port_in_every_example(db, settings):
    settings.SITE_URL = _site_url_in_a_fresh_process(JETSTREAM_PORT="8123")

    out, _err = run_command("jetstream_demo")

    assert "Admin: http://127.0.0.1:8123/admin/" in out
    assert "curl http://127.0.0.1:8123/v1/chat/completions \\" in out
    assert 'OpenAI(base_url="http://127.0.0.1:8123/v1"' in out


def test_it_warns_when_the_demo_token_is_blocked(db):
    from apps.proxy.services import block_token

    run_command("jetstream_demo")
    block_token(token=ApiToken.objects.get(company__slug="demo", name="demo"), reason="test")

    out, _err = run_command("jetstream_demo")

    assert "this token is Blocked" in out
    assert ApiToken.objects.get(company__slug="demo", name="demo").status == TokenStatus.BLOCKED


# --- the demo's money (apps/config/demo_money.py) -------------------------------------------

def demo_state() -> dict:
    """Every row the demo writes, the demo token's rotated secret aside."""
    from apps.accounts.models import CompanyModelCoefficient
    from apps.billing.models import Account, PayableCreditDay, WithdrawalRequest
    from apps.invoicing.models import Document, TopUpRequest

    state = database_state()
    for row in state["ApiToken"]:
        for name in ("key_hash", "key_prefix", "updated_at"):
            row.pop(name, None)
    for table in (UsageRecord, WithdrawalRequest, PayableCreditDay, TopUpRequest, Document, CompanyModelCoefficient, Account):
        state[table.__name__] = list(table.objects.order_by("pk").values())
    return state


@pytest.fixture
def no_holding_period(settings):
    """As `make run` sets it (JETSTREAM_SUPPLIER_HOLD_DAYS=0): the demo's accruals are withdrawable."""
    settings.JETSTREAM = {**settings.JETSTREAM, "SUPPLIER_HOLD_DAYS": 0}


def test_running_it_twice_changes_nothing_and_never_duplicates_money(db, no_holding_period):
    run_command("jetstream_demo")
    before = demo_state()

    out, _err = run_command("jetstream_demo")

    assert demo_state() == before
    assert "(0 new)" in out


def test_every_money_screen_has_data(db, no_holding_period):
    from apps.accounts.models import Department, Supplier
    from apps.billing import suppliers
    from apps.billing.models import WithdrawalRequest
    from apps.invoicing.models import TopUpRequest

    out, _err = run_command("jetstream_demo")
    company = Company.objects.get(slug="demo")

    records = list(UsageRecord.objects.filter(company=company))
    assert len(records) == 24 and {r.status for r in records} == {"ok", "upstream_error"}
    # Two suppliers, each with accruals equal to its keys' buy costs in the ledger.
    payables = {}
    for supplier in Supplier.objects.all():
        accrued = sum(r.buy_cost for r in records if r.supplier_key.supplier_id == supplier.pk)
        assert accrued > 0
        payables[supplier.slug] = suppliers.supplier_balance(supplier)
        assert payables[supplier.slug].accrued == accrued
        assert f"Supplier {supplier.name}: " in out
    assert set(payables) == {"north-keys", "volga-ai"}
    withdrawal = WithdrawalRequest.objects.get()
    assert (withdrawal.supplier.slug, withdrawal.status) == ("north-keys", "requested")
    assert 0 < withdrawal.amount and withdrawal.amount % 10_000 == 0
    top_up = TopUpRequest.objects.get()
    assert (top_up.status, top_up.amount, top_up.invoice is not None) == ("paid", 5000 * RUB, True)
    assert f"invoice № {top_up.invoice.number} for 5000.00 RUB" in out
    assert Department.objects.get(company=company, slug="research").monthly_budget == 300 * RUB
    assert f"Withdrawal request #{withdrawal.pk} of North Keys LLC (demo)" in out


def test_demo_usage_is_priced_like_the_proxy_prices_it(db):
    from decimal import Decimal

    from apps.providers.models import SupplierKey
    from lib.money import cost_micro

    run_command("jetstream_demo")
    record = UsageRecord.objects.filter(status="ok").order_by("request_id").first()
    key = SupplierKey.objects.get(pk=record.supplier_key_id)
    units = [(record.input_tokens - record.cached_tokens, 150_000), (record.cached_tokens, 75_000), (record.output_tokens, 600_000)]
    # The company has no coefficient of its own, only gpt-4o-mini's 1.20; the key buys at its own.
    assert Company.objects.get(slug="demo").sell_coefficient is None
    assert record.sell_cost == cost_micro(tokens_by_price=units, fx_micro=92_500_000, coefficient=Decimal("1.20")) > 0
    assert record.buy_cost == cost_micro(tokens_by_price=units, fx_micro=92_500_000, coefficient=key.buy_coefficient) > 0


def test_with_a_holding_period_it_says_why_there_is_no_withdrawal(db, settings):
    from apps.billing.models import WithdrawalRequest

    settings.JETSTREAM = {**settings.JETSTREAM, "SUPPLIER_HOLD_DAYS": 14}
    out, _err = run_command("jetstream_demo")

    assert not WithdrawalRequest.objects.exists()
    assert "North Keys LLC (demo) has nothing withdrawable yet (holding period 14 days)" in out
