"""jetstream_apply: the example file from the issue, idempotency, versioning, every kind of bad input."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from decimal import Decimal
from pathlib import Path
from urllib.parse import quote

import pytest
from django.conf import settings
from django.core.management.base import CommandError
from django.db import connection

from apps.accounts.models import Company, Department, Membership, Supplier
from apps.billing import services as ledger
from apps.billing.models import Transfer, TransferKind
from apps.moderation.models import Policy
from apps.providers.models import EgressProxy, Model, Price, Provider, SupplierKey
from apps.proxy.models import ApiToken, TokenStatus
from tests.config.conftest import EXAMPLE, database_state

TOKEN_SECRET = "js-acme-ci-0123456789abcdef0123456789abcdef"
SUPPLIER_SECRET = "sk-upstream-1"
RUB = 1_000_000


def wallet_balance(slug: str):
    return ledger.balance(ledger.company_wallet(Company.objects.get(slug=slug)))


def raw_rows(table: str) -> str:
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT t::text FROM {table} t")  # noqa: S608 - a fixed table name
        return "\n".join(row[0] for row in cursor.fetchall())


# --- the example file ----------------------------------------------------------------------

def test_it_applies_the_example_file(db, apply_text, example_text):
    out, _err = apply_text(example_text)

    assert "created: supplier north-keys" in out
    assert Supplier.objects.get(slug="north-keys").name == "North Keys LLC"
    openai = Provider.objects.get(slug="openai-main")
    assert (openai.kind, openai.base_url, openai.internal) == ("openai", "http://127.0.0.1:18080/v1", True)
    key = SupplierKey.objects.get(provider=openai, name="nk-1")
    assert (key.supplier.slug, key.weight, key.buy_coefficient, key.status) == ("north-keys", 2, Decimal("1.1000"), "active")
    assert Provider.objects.get(slug="demo").kind == "mock"

    gpt = Model.objects.get(name="gpt-4o-mini")
    assert (gpt.provider, gpt.upstream_model) == (openai, "gpt-4o-mini")
    price = Price.objects.current_for(gpt)
    assert (price.currency, price.input_per_1m, price.output_per_1m, price.cached_input_per_1m) == ("USD", 150_000, 600_000, 150_000)
    demo_chat = Model.objects.get(name="demo-chat")
    assert demo_chat.upstream_model == "demo-chat"  # defaults to the model name
    demo_price = Price.objects.current_for(demo_chat)
    assert (demo_price.currency, demo_price.input_per_1m, demo_price.output_per_1m) == ("RUB", 10 * RUB, 20 * RUB)
    from apps.billing.models import FxRate
    assert list(FxRate.objects.values_list("currency", "rub_per_unit")) == [("USD", 92_500_000)]

    acme = Company.objects.get(slug="acme")
    assert (acme.name, acme.sell_coefficient) == ("Acme", Decimal("1.2500"))
    assert not Policy.objects.filter(company=acme).exists()  # no row: the default policy (moderation off)
    department = Department.objects.get(company=acme, slug="ml")
    assert (department.name, department.parent) == ("ML team", None)
    token = ApiToken.objects.get(company=acme, name="ci")
    assert token.department == department
    assert (token.limit_total, token.limit_monthly, token.limit_weekly, token.rpm) == (100 * RUB, 50 * RUB, None, 600)
    assert token.models_allow == ["gpt-4o-mini", "demo-chat"]
    assert token.status == TokenStatus.ACTIVE


def test_it_tops_the_wallet_up_by_exactly_1000_rub(db, apply_text, example_text):
    apply_text(example_text)

    balance = wallet_balance("acme")
    assert balance.posted == 1000 * RUB
    assert balance.available == 1000 * RUB
    transfer = Transfer.objects.get(kind=TransferKind.TOP_UP)
    assert (transfer.idempotency_id, transfer.amount) == (f"config:top_up:acme:{1000 * RUB}", 1000 * RUB)


def test_it_changes_nothing_on_a_second_run(db, apply_text, example_text):
    apply_text(example_text)
    before = database_state()

    out, _err = apply_text(example_text)

    assert database_state() == before  # every row of every table, ledger sums included
    assert "unchanged: suppliers 1, providers 2, supplier keys 1, models 2, prices 2, FX rates 1, companies 1, " \
           "departments 1, top-ups 1, tokens 1" in out
    assert "Nothing to change" in out
    assert "created" not in out and "updated" not in out
    assert wallet_balance("acme").posted == 1000 * RUB


def test_it_writes_nothing_on_a_dry_run(db, apply_text, example_text):
    before = database_state()

    out, _err = apply_text(example_text, "--dry-run")

    assert database_state() == before
    assert "Dry run" in out
    assert "would create: provider openai-main" in out
    assert "would create: top-up acme: +1000.00 RUB" in out
    assert "to create: suppliers 1, providers 2" in out


def test_it_stores_the_token_hash_never_the_secret(db, apply_text, example_text):
    apply_text(example_text)

    token = ApiToken.objects.get(name="ci")
    assert token.key_hash == hashlib.sha256(TOKEN_SECRET.encode()).hexdigest()
    assert token.key_prefix == TOKEN_SECRET[:10]
    assert TOKEN_SECRET not in raw_rows("proxy_apitoken")
    assert TOKEN_SECRET[10:] not in raw_rows("proxy_apitoken")


def test_it_encrypts_the_supplier_key(db, apply_text, example_text):
    apply_text(example_text)

    assert SUPPLIER_SECRET not in raw_rows("providers_supplierkey")
    key = SupplierKey.objects.get(name="nk-1")
    assert key.secret_encrypted.startswith("v1:")
    assert key.reveal_secret() == SUPPLIER_SECRET
    assert key.secret_last4 == SUPPLIER_SECRET[-4:]


def test_it_never_prints_the_supplier_secret(db, apply_text, example_text):
    outputs = [
        *apply_text(example_text, "--dry-run"),
        *apply_text(example_text),
        *apply_text(example_text),
        *apply_text(example_text.replace(SUPPLIER_SECRET, "sk-upstream-2")),  # replaced: reported, not shown
    ]
    with pytest.raises(CommandError) as bad_yaml:  # a YAML error on the secret's own line
        apply_text(example_text.replace(f"secret: {SUPPLIER_SECRET}", f"secret: {SUPPLIER_SECRET}: [oops"))
    with pytest.raises(CommandError) as refused:  # the same secret, refused for being in the wrong place
        apply_text(example_text.replace("name: nk-1", f"name: nk-1\n        colour: {SUPPLIER_SECRET}"))
    text = "\n".join([*outputs, str(bad_yaml.value), str(refused.value)])

    assert "secret replaced" in text
    assert SUPPLIER_SECRET not in text
    assert "sk-upstream-2" not in text
    assert TOKEN_SECRET not in text


# --- versions and updates ------------------------------------------------------------------

def test_it_adds_a_price_version_when_the_price_changes_and_keeps_the_old_one(db, apply_text, example_text):
    apply_text(example_text)
    gpt = Model.objects.get(name="gpt-4o-mini")
    old = Price.objects.current_for(gpt)

    out, _err = apply_text(example_text.replace('input_per_1m: "0.15"', 'input_per_1m: "0.20"'))

    assert "updated: price gpt-4o-mini: new version USD 0.2 in / 0.6 out per 1M tokens; earlier versions kept" in out
    versions = list(Price.objects.filter(model=gpt).order_by("valid_from"))
    assert [v.pk for v in versions][0] == old.pk
    assert [(v.input_per_1m, v.cached_input_per_1m) for v in versions] == [(150_000, 150_000), (200_000, 200_000)]
    assert Price.objects.current_for(gpt).input_per_1m == 200_000
    assert Price.objects.filter(model__name="demo-chat").count() == 1


def test_it_adds_an_fx_version_when_the_rate_changes(db, apply_text, example_text):
    from apps.billing.models import FxRate

    apply_text(example_text)
    apply_text(example_text.replace('rub: "92.50"', 'rub: "95"'))

    assert list(FxRate.objects.order_by("valid_from").values_list("rub_per_unit", flat=True)) == [92_500_000, 95_000_000]


def test_it_updates_changed_fields_and_reports_them(db, apply_text, example_text):
    apply_text(example_text)
    before = SupplierKey.objects.get(name="nk-1").secret_encrypted

    out, _err = apply_text(example_text.replace("weight: 2", "weight: 3").replace("name: Acme", "name: Acme Corp")
                           .replace(SUPPLIER_SECRET, "sk-upstream-rotated"))

    assert "updated: supplier key openai-main/nk-1: weight, secret replaced" in out
    assert "updated: company acme: name" in out
    key = SupplierKey.objects.get(name="nk-1")
    assert (key.weight, key.reveal_secret()) == (3, "sk-upstream-rotated")
    assert key.secret_encrypted != before
    assert Company.objects.get(slug="acme").name == "Acme Corp"


def test_it_resets_omitted_settings_to_their_defaults(db, apply_text, example_text):
    apply_text(example_text)

    apply_text(example_text.replace('        limits: {total: "100.00", monthly: "50.00", rpm: 600}\n', ""))

    token = ApiToken.objects.get(name="ci")
    assert (token.limit_total, token.limit_monthly, token.rpm) == (None, None, None)


# --- top-ups -------------------------------------------------------------------------------

def test_it_tops_up_only_the_difference_when_the_declared_total_grows(db, apply_text, example_text):
    apply_text(example_text)

    out, _err = apply_text(example_text.replace('top_up: "1000.00"', 'top_up: "1500"'))

    assert "created: top-up acme: +500.00 RUB (declared total 1500.00 RUB)" in out
    assert wallet_balance("acme").posted == 1500 * RUB
    assert sorted(Transfer.objects.filter(kind=TransferKind.TOP_UP).values_list("idempotency_id", "amount")) == [
        (f"config:top_up:acme:{1000 * RUB}", 1000 * RUB), (f"config:top_up:acme:{1500 * RUB}", 500 * RUB)]


def test_it_refuses_to_reduce_a_top_up(db, apply_text, example_text):
    apply_text(example_text)
    before = database_state()

    with pytest.raises(CommandError) as error:
        apply_text(example_text.replace('top_up: "1000.00"', 'top_up: "999.99"').replace("name: Acme", "name: Renamed"))

    assert "companies[0].top_up: cannot reduce a top-up; post a correction" in str(error.value)
    assert error.value.returncode == 2
    assert database_state() == before


# --- tokens --------------------------------------------------------------------------------

TOKEN_WITHOUT_SECRET = """
companies:
  - slug: acme
    name: Acme
    tokens:
      - name: ci
"""


def test_it_generates_a_missing_secret_and_shows_it_once(db, apply_text):
    out, _err = apply_text(TOKEN_WITHOUT_SECRET)

    line = next(line for line in out.splitlines() if line.startswith("token acme/ci: "))
    secret = line.removeprefix("token acme/ci: ").split()[0]
    assert line.endswith("(shown once)")
    token = ApiToken.objects.get(name="ci")
    assert token.key_hash == hashlib.sha256(secret.encode()).hexdigest()

    again, _err = apply_text(TOKEN_WITHOUT_SECRET)

    assert secret not in again and "js-" not in again
    assert ApiToken.objects.get(name="ci").key_hash == token.key_hash  # keeps its secret


def test_it_rotates_a_token_whose_declared_secret_changed(db, apply_text, example_text):
    apply_text(example_text)
    new_secret = "js-acme-ci-ffffffffffffffffffffffffffffffff"

    out, _err = apply_text(example_text.replace(TOKEN_SECRET, new_secret))

    assert "updated: token acme/ci: secret rotated" in out
    assert new_secret not in out
    assert ApiToken.objects.get(name="ci").key_hash == hashlib.sha256(new_secret.encode()).hexdigest()


def test_it_blocks_and_revokes_tokens_and_keeps_revoked_final(db, apply_text, example_text):
    apply_text(example_text)
    def with_status(status: str) -> str:
        return example_text.replace("        department: ml\n", f"        department: ml\n        status: {status}\n")

    apply_text(with_status("blocked"))
    assert ApiToken.objects.get(name="ci").status == TokenStatus.BLOCKED
    apply_text(example_text)  # status omitted: kept
    assert ApiToken.objects.get(name="ci").status == TokenStatus.BLOCKED
    apply_text(with_status("revoked"))
    assert ApiToken.objects.get(name="ci").status == TokenStatus.REVOKED

    with pytest.raises(CommandError) as error:
        apply_text(with_status("active"))
    assert "companies[0].tokens[0].status: A revoked token stays revoked" in str(error.value)


def test_it_sets_every_token_setting(db, apply_text, example_text, django_user_model):
    apply_text(example_text)
    owner = django_user_model.objects.create_user("dev@acme.example", "correct-horse-battery-staple")
    Membership.objects.create(user=owner, company=Company.objects.get(slug="acme"))
    extra = (
        "        models_deny: []\n"
        "        ip_allow: [10.0.0.0/8, 192.168.1.7]\n"
        "        max_distinct_ips: 3\n"
        "        expires_at: 2030-01-31T23:59:59\n"
        "        environment: test\n"
        "        owner: Dev@Acme.example\n"
    )
    text = example_text.replace("        department: ml\n", "        department: ml\n" + extra).replace(
        'rpm: 600}', 'rpm: 600, weekly: "20", tpm: 10000}')

    apply_text(text)

    token = ApiToken.objects.get(name="ci")
    assert token.ip_allow == ["10.0.0.0/8", "192.168.1.7"]
    assert (token.max_distinct_ips, token.environment, token.owner) == (3, "test", owner)
    assert (token.limit_weekly, token.tpm) == (20 * RUB, 10_000)
    assert token.expires_at.isoformat() == "2030-01-31T20:59:59+00:00"  # read in the company's zone, Europe/Moscow


# --- departments, egress, companies --------------------------------------------------------

def test_it_builds_a_department_tree_in_any_order(db, apply_text):
    text = """
companies:
  - slug: acme
    name: Acme
    departments:
      - {slug: ml-research, name: Research, parent: ml, monthly_budget: "250.50"}
      - {slug: ml, name: ML team}
"""
    apply_text(text)

    research = Department.objects.get(slug="ml-research")
    assert (research.parent.slug, research.monthly_budget) == ("ml", 250_500_000)
    assert "unchanged: companies 1, departments 2" in apply_text(text)[0]


def test_it_routes_a_provider_through_a_declared_egress_proxy(db, apply_text):
    text = """
egress:
  - {slug: nl-1, country: nl, url: "socks5://user:proxy-pass@10.0.0.5:1080", internal: true}
providers:
  - {slug: demo, kind: mock, egress: nl-1}
"""
    out, _err = apply_text(text)

    proxy = EgressProxy.objects.get(slug="nl-1")
    assert (proxy.country, proxy.reveal_url()) == ("NL", "socks5://user:proxy-pass@10.0.0.5:1080")
    assert list(Provider.objects.get(slug="demo").egresses.all()) == [proxy]
    assert "proxy-pass" not in out and "proxy-pass" not in raw_rows("providers_egressproxy")
    assert "unchanged: egress proxies 1, providers 1" in apply_text(text)[0]


def test_it_gives_an_existing_company_its_wallet_and_credit_limit(personas, apply_text):
    text = "companies:\n  - {slug: company-a, name: Company A, credit_limit: \"50\"}\n"

    out, _err = apply_text(text)

    assert "updated: company company-a: wallet, credit_limit" in out
    assert ledger.company_wallet(personas.company_a).credit_limit == 50 * RUB
    assert wallet_balance("company-a").available == 50 * RUB
    assert "unchanged: companies 1" in apply_text(text)[0]


# --- bad input -----------------------------------------------------------------------------

TOKEN_LINE = "        department: ml\n"
BAD_INPUTS = [
    # (what is wrong, replace this, with this, the error names)
    ("bad YAML", "suppliers:\n", "suppliers: [\n", "not valid YAML: line"),
    ("a key twice", "    name: North Keys LLC\n", "    name: North Keys LLC\n    name: Again\n", "the key 'name' appears twice"),
    ("unknown top-level key", "suppliers:\n", "supplierz:\n", "supplierz: unknown key"),
    ("unknown key", "    name: North Keys LLC\n", "    name: North Keys LLC\n    colour: red\n", "suppliers[0].colour: unknown key"),
    ("unknown nested key", "rpm: 600}", "rpm: 600, rpd: 5}", "companies[0].tokens[0].limits.rpd: unknown key"),
    ("float amount", 'input_per_1m: "0.15"', "input_per_1m: 0.15",
     'models[0].price.input_per_1m: 0.15 is a YAML float; write the amount as a quoted string, e.g. "0.15"'),
    ("float coefficient", 'sell_coefficient: "1.25"', "sell_coefficient: 1.25", "companies[0].sell_coefficient: 1.25 is a YAML float"),
    ("float FX rate", 'rub: "92.50"', "rub: 92.50", "fx[0].rub: 92.5 is a YAML float"),
    ("bad amount", 'total: "100.00"', 'total: "abc"', 'companies[0].tokens[0].limits.total: "abc" is not an amount'),
    ("too precise amount", 'top_up: "1000.00"', 'top_up: "1000.0000001"', "companies[0].top_up: '1000.0000001' has more than 6 decimal places"),
    ("negative amount", 'top_up: "1000.00"', 'top_up: "-5"', "companies[0].top_up: '-5' must not be negative"),
    ("zero FX rate", 'rub: "92.50"', 'rub: "0"', "fx[0].rub: '0' must be greater than zero"),
    ("wrong type", "weight: 2", 'weight: "2"', "providers[0].keys[0].weight: expected a whole number, got a string"),
    ("boolean for a string", "name: Acme", "name: yes", "companies[0].name: expected a string, got a boolean"),
    ("missing required key", "    kind: mock\n", "", "providers[1].kind: is required"),
    ("unknown choice", "kind: mock", "kind: mockery", 'providers[1].kind: "mockery" is not one of'),
    ("bad slug", "slug: acme", "slug: acme corp", 'companies[0].slug: "acme corp" is not a slug'),
    ("unknown supplier", "supplier: north-keys", "supplier: south-keys", 'providers[0].keys[0].supplier: unknown supplier "south-keys"'),
    ("unknown provider", "provider: demo\n", "provider: dmo\n", 'models[1].provider: unknown provider "dmo"'),
    ("unknown department", TOKEN_LINE, "        department: ops\n", 'companies[0].tokens[0].department: unknown department "ops"'),
    ("unknown model", "[gpt-4o-mini, demo-chat]", "[gpt-4o-mini, demo-chatt]",
     'companies[0].tokens[0].models_allow[1]: unknown model "demo-chatt"'),
    ("unknown owner", TOKEN_LINE, TOKEN_LINE + "        owner: ghost@example.com\n", 'companies[0].tokens[0].owner: unknown user "ghost@example.com"'),
    ("no FX for the currency", "{currency: USD, rub", "{currency: EUR, rub", "models[0].price.currency: there is no FX rate for USD"),
    ("duplicate provider", "  - slug: demo\n    kind: mock", "  - slug: openai-main\n    kind: mock",
     'providers[1].slug: duplicate provider slug "openai-main" (also at providers[0])'),
    ("duplicate model", "  - name: demo-chat\n", "  - name: gpt-4o-mini\n", 'models[1].name: duplicate model name "gpt-4o-mini"'),
    ("duplicate department", "        name: ML team\n", "        name: ML team\n      - {slug: ml, name: Again}\n",
     'companies[0].departments[1].slug: duplicate department slug "ml"'),
    ("department cycle", "        name: ML team\n", "        name: ML team\n        parent: ml\n", "companies[0].departments[0].parent: departments ml form a cycle"),
    ("loopback without internal", "    internal: true      # loopback/private addresses are refused unless marked internal\n", "",
     "providers[0].base_url: 127.0.0.1 resolves to a non-public address; mark the provider internal"),
    ("bad token secret", TOKEN_SECRET, "js-too-short", "companies[0].tokens[0].secret: A token secret needs at least 32 characters"),
    ("token secret without prefix", TOKEN_SECRET, "sk" + TOKEN_SECRET[2:], "companies[0].tokens[0].secret: A token secret must start with js-"),
    ("bad CIDR", TOKEN_LINE, TOKEN_LINE + "        ip_allow: [10.0.0.0/8, 10.0.0.0/33]\n",
     "companies[0].tokens[0].ip_allow[1]: 10.0.0.0/33 is not an IP address or CIDR network"),
    ("bad date-time", TOKEN_LINE, TOKEN_LINE + "        expires_at: 2030-01-31\n", "companies[0].tokens[0].expires_at: expected a date and time"),
    ("bad time zone", "    name: Acme\n", "    name: Acme\n    time_zone: Mars/Olympus\n", "companies[0].time_zone: Mars/Olympus is not a known time zone"),
    ("too short supplier secret", SUPPLIER_SECRET, "sk-1", "providers[0].keys[0].secret: The key looks too short."),
    ("model allowed and denied", TOKEN_LINE, TOKEN_LINE + "        models_deny: [demo-chat]\n",
     "companies[0].tokens[0].models_deny: Models both allowed and denied: demo-chat"),
    ("max output above the context", "    upstream_model: gpt-4o-mini\n",
     "    upstream_model: gpt-4o-mini\n    context_window: 1000\n    max_output_tokens: 2000\n", "models[0].max_output_tokens: Cannot exceed the context window."),
]


@pytest.mark.parametrize(("replace", "with_", "names"), [case[1:] for case in BAD_INPUTS], ids=[case[0] for case in BAD_INPUTS])
def test_it_refuses_bad_input_naming_the_place_and_writes_nothing(db, apply_text, example_text, replace, with_, names):
    assert replace in example_text
    before = database_state()

    with pytest.raises(CommandError) as error:
        apply_text(example_text.replace(replace, with_, 1))

    assert names in str(error.value)
    assert error.value.returncode == 2
    assert database_state() == before


def test_it_refuses_a_token_secret_used_twice_without_quoting_it(db, apply_text, example_text):
    twice = example_text + f"      - name: ci2\n        secret: {TOKEN_SECRET}\n"
    with pytest.raises(CommandError) as in_file:
        apply_text(twice)
    apply_text(example_text)
    other_company = f"companies:\n  - slug: other\n    name: Other\n    tokens:\n      - name: ci\n        secret: {TOKEN_SECRET}\n"
    with pytest.raises(CommandError) as in_database:
        apply_text(other_company)

    assert "companies[0].tokens[1].secret: duplicate token secret (also at companies[0].tokens[0])" in str(in_file.value)
    assert "companies[0].tokens[0].secret: Another token already uses this secret." in str(in_database.value)
    assert TOKEN_SECRET not in str(in_file.value) + str(in_database.value)
    assert not Company.objects.filter(slug="other").exists()


def test_it_refuses_an_empty_file(db, apply_text):
    with pytest.raises(CommandError, match="the file is empty"):
        apply_text("# nothing\n")


def test_it_reports_every_problem_at_once(db, apply_text, example_text):
    text = example_text.replace("weight: 2", 'weight: "2"').replace('total: "100.00"', 'total: "abc"').replace("kind: mock", "kind: x")

    with pytest.raises(CommandError) as error:
        apply_text(text)

    message = str(error.value)
    assert "providers[0].keys[0].weight" in message
    assert "providers[1].kind" in message
    assert "companies[0].tokens[0].limits.total" in message


def test_it_rolls_back_everything_when_applying_fails_midway(db, apply_text, example_text, monkeypatch):
    # The dry pass validates everything first, so a failure while writing means the world
    # changed in between (a concurrent writer). Simulate one at the last step, the tokens.
    from apps.proxy import services as token_services

    real_issue = token_services.issue_token

    def issue_then_conflict(**kwargs):
        if not kwargs.get("dry_run"):
            from django.core.exceptions import ValidationError
            raise ValidationError({"secret": "Another token already uses this secret."})
        return real_issue(**kwargs)

    monkeypatch.setattr(token_services, "issue_token", issue_then_conflict)
    before = database_state()

    with pytest.raises(CommandError) as error:
        apply_text(example_text)

    assert "companies[0].tokens[0].secret: Another token already uses this secret." in str(error.value)
    assert database_state() == before
    assert not Supplier.objects.exists() and not Transfer.objects.exists()


# --- as a real process ---------------------------------------------------------------------

def _database_url() -> str:
    db = connection.settings_dict
    host, query = db["HOST"] or "", ""
    if host.startswith("/"):
        host, query = "", f"?host={quote(host)}"
    auth = quote(db["USER"]) + (f":{quote(db['PASSWORD'])}" if db["PASSWORD"] else "")
    port = f":{db['PORT']}" if db["PORT"] else ""
    return f"postgres://{auth}@{host}{port}/{quote(db['NAME'])}{query}"


def run_manage(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "DATABASE_URL": _database_url(), "REDIS_URL": settings.REDIS_URL, "LANGUAGE_CODE": "en"}
    return subprocess.run([sys.executable, "manage.py", *args], cwd=settings.BASE_DIR, env=env,
                          capture_output=True, text=True, timeout=120)


def test_it_runs_as_a_command_with_exit_codes(transactional_db, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(EXAMPLE.read_text().replace('total: "100.00"', 'total: "abc"'))

    refused = run_manage("jetstream_apply", str(bad))
    assert refused.returncode == 2, refused.stderr
    assert 'companies[0].tokens[0].limits.total: "abc" is not an amount' in refused.stderr
    assert "Traceback" not in refused.stderr
    assert not Company.objects.exists()

    planned = run_manage("jetstream_apply", str(EXAMPLE), "--dry-run")
    assert planned.returncode == 0, planned.stderr
    assert not Company.objects.exists()

    applied = run_manage("jetstream_apply", str(EXAMPLE))
    assert applied.returncode == 0, applied.stderr
    assert wallet_balance("acme").posted == 1000 * RUB

    again = run_manage("jetstream_apply", str(EXAMPLE))
    assert again.returncode == 0, again.stderr
    assert "unchanged: suppliers 1" in again.stdout
    assert SUPPLIER_SECRET not in applied.stdout + applied.stderr + again.stdout + again.stderr

    missing = run_manage("jetstream_apply", str(Path(tmp_path) / "missing.yaml"))
    assert missing.returncode == 2
    assert "cannot read" in missing.stderr and "Traceback" not in missing.stderr


ISSUE_8_PROVIDERS = """
fx:
  - {currency: USD, rub: "92.5"}
suppliers:
  - {slug: north-keys, name: North Keys}
providers:
  - slug: giga
    kind: gigachat
    base_url: http://127.0.0.1:9/api/v1
    auth_url: http://127.0.0.1:9/api/v2/oauth
    scope: GIGACHAT_API_CORP
    internal: true
    keys:
      - {name: g1, supplier: north-keys, secret: "Z2lnYS1jbGllbnQ6Z2lnYS1zZWNyZXQ="}
  - slug: yandex
    kind: yandexgpt
    base_url: http://127.0.0.1:9/foundationModels/v1
    folder_id: b1gexamplefolder
    internal: true
    keys:
      - {name: y1, supplier: north-keys, secret: "AQVN-yandex-api-key"}
  - slug: claude
    kind: anthropic
    base_url: http://127.0.0.1:9/v1
    internal: true
    keys:
      - {name: a1, supplier: north-keys, secret: "sk-ant-api03-example"}
models:
  - {name: gigachat-pro, provider: giga, upstream_model: GigaChat-Pro,
     price: {input_per_1m: "1500", output_per_1m: "1500", currency: RUB}}
  - {name: yandexgpt-lite, provider: yandex, upstream_model: yandexgpt-lite/latest,
     price: {input_per_1m: "200", output_per_1m: "200", currency: RUB}}
  - {name: claude-haiku, provider: claude, upstream_model: claude-haiku-4-5,
     price: {input_per_1m: "1", output_per_1m: "5", cached_input_per_1m: "0.1", currency: USD}}
"""


def test_it_applies_the_russian_and_anthropic_providers_with_their_own_fields(db, apply_text):
    out, _err = apply_text(ISSUE_8_PROVIDERS)

    giga = Provider.objects.get(slug="giga")
    assert (giga.kind, giga.options) == ("gigachat", {"auth_url": "http://127.0.0.1:9/api/v2/oauth", "scope": "GIGACHAT_API_CORP"})
    assert Provider.objects.get(slug="yandex").options == {"folder_id": "b1gexamplefolder"}
    assert Provider.objects.get(slug="claude").kind == "anthropic"
    claude_price = Price.objects.get(model__name="claude-haiku")
    assert (claude_price.currency, claude_price.input_per_1m, claude_price.output_per_1m, claude_price.cached_input_per_1m) == \
        ("USD", 1_000_000, 5_000_000, 100_000)
    assert Price.objects.get(model__name="gigachat-pro").input_per_1m == 1_500_000_000
    assert "Z2lnYS1jbGllbnQ6Z2lnYS1zZWNyZXQ=" not in out
    assert "unchanged: suppliers 1, providers 3, supplier keys 3, models 3, prices 3, FX rates 1" in apply_text(ISSUE_8_PROVIDERS)[0]


def test_it_refuses_an_auth_url_at_a_private_address_unless_the_provider_is_internal(db, apply_text):
    text = ISSUE_8_PROVIDERS.replace("auth_url: http://127.0.0.1:9/api/v2/oauth\n    scope: GIGACHAT_API_CORP\n    internal: true",
                                     "auth_url: http://127.0.0.1:9/api/v2/oauth\n    scope: GIGACHAT_API_CORP")
    text = text.replace("base_url: http://127.0.0.1:9/api/v1", "base_url: https://8.8.8.8/api/v1")
    with pytest.raises(CommandError):
        apply_text(text)
    assert not Provider.objects.filter(slug="giga").exists()


def test_an_applied_yandex_model_reaches_its_folder_as_a_model_uri(db, apply_text):
    import orjson

    from apps.providers.adapters import adapter_for
    from apps.providers.adapters.base import CanonicalRequest, Target

    apply_text(ISSUE_8_PROVIDERS)
    model = Model.objects.select_related("provider").get(name="yandexgpt-lite")
    target = Target(model.provider.base_url, model.upstream_model, model.provider.options)
    request = CanonicalRequest("chat", "yandexgpt-lite", {"model": "yandexgpt-lite", "messages": [{"role": "user", "content": "Привет"}]})
    prepared = adapter_for(model.provider.kind).build_request(request, target, {})
    assert orjson.loads(prepared.body)["modelUri"] == "gpt://b1gexamplefolder/yandexgpt-lite/latest"
