"""Usage for the company cabinet's tests: company A's and company B's requests, written through
billing's door (so the ledger and the daily rollup have them too)."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from django.utils import timezone


@dataclass
class Usage:
    token: object
    other_token: object
    department: object
    model: object
    model_b: object
    other_model: object
    token_b: object
    now: dt.datetime


def write_usage(personas, *, count: int = 5) -> Usage:
    """``count`` requests of company A today (token "ci" in department R&D, model-a; every third
    one an upstream error), one on token "bot" with model-b, one of company B (model "b-only")."""
    from apps.billing import services
    from apps.billing.usage import UsageEvent
    from apps.billing.usage_records import record_usage_batch
    from apps.providers.models import Model, Provider
    from apps.proxy.models import ApiToken

    provider = Provider.objects.create(slug="mock", name="Mock", kind="mock")
    model = Model.objects.create(name="model-a", provider=provider, upstream_model="a")
    model_b = Model.objects.create(name="model-b", provider=provider, upstream_model="b")
    other_model = Model.objects.create(name="b-only", provider=provider, upstream_model="c")
    department = personas.company_a.departments.create(slug="rnd", name="R&D", monthly_budget=10_000)
    tokens = {}
    for name, company, dept in (("ci", personas.company_a, department), ("bot", personas.company_a, None),
                                ("b-token", personas.company_b, None)):
        tokens[name] = ApiToken(company=company, department=dept, name=name, limit_monthly=50_000 if name == "ci" else None)
        tokens[name].set_secret(f"js-{name}-0123456789abcdef0123456789abcdef")
        tokens[name].save()
    for company in (personas.company_a, personas.company_b):
        services.top_up(company=company, amount=1_000_000_000, idempotency_id=f"cabinet-top-up-{company.pk}")
    now = timezone.now()

    def event(rid, token, model_obj, at, *, sell, status="ok"):
        t = tokens[token]
        return UsageEvent(request_id=rid, endpoint="chat", status=status, http_status=200 if status == "ok" else 502,
                          started_at=at.timestamp(), finished_at=at.timestamp() + 0.2, token_id=t.pk, company_id=t.company_id,
                          department_id=t.department_id, model_name=model_obj.name, model_id=model_obj.pk,
                          provider_id=provider.pk, input_tokens=100, output_tokens=20, sell_cost=sell, buy_cost=sell // 2,
                          latency_ms=250, error_type="" if status == "ok" else "api_error",
                          error_code="" if status == "ok" else "upstream_unavailable")

    events = [event(f"a-{i}", "ci", model, now - dt.timedelta(seconds=10 * (i + 1)), sell=10_000,
                    status="upstream_error" if i % 3 == 2 else "ok") for i in range(count)]
    events.append(event("a-bot", "bot", model_b, now - dt.timedelta(seconds=5), sell=1_234_567))
    events.append(event("b-1", "b-token", other_model, now - dt.timedelta(seconds=7), sell=999_999))
    assert not record_usage_batch(events=events).refused
    return Usage(tokens["ci"], tokens["bot"], department, model, model_b, other_model, tokens["b-token"], now)
