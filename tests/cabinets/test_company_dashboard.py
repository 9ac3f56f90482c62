"""The company dashboard: wallet, spend today / week / month, the chart's data island, top tokens,
limits close to their end and active alerts — one company's figures only, from the rollup."""

from __future__ import annotations

import json

import pytest
from django.urls import reverse

from tests.cabinets.journal_data import write_usage

pytestmark = pytest.mark.django_db

URL = "cabinets:company:dashboard"


def test_it_shows_the_wallet_spend_chart_tokens_limits_and_alerts(personas, signed_in):
    from apps.notifications.alerts import scan

    usage = write_usage(personas)
    scan(usage.now)  # the alert task: the department budget and the token's monthly limit are spent
    page = signed_in(personas.manager_a).get(reverse(URL))
    assert page.status_code == 200
    context = page.context
    spent = 5 * 10_000 + 1_234_567
    assert context["wallet"] == 1_000_000_000 - spent
    assert (context["spend"].today, context["spend"].month, context["spend"].requests_today) == (spent, spent, 6)
    assert [(t.label, t.requests, t.sell_cost) for t in context["top_tokens"]] == [("bot", 1, 1_234_567), ("ci", 5, 50_000)]
    assert [(m.name, m.errors) for m in context["models"]] == [("model-b", 0), ("model-a", 1)]
    assert [(lim.kind, lim.name, lim.percent) for lim in context["limits"]] == [("department", "R&D", 500),
                                                                                ("token_monthly", "ci", 100)]
    assert {(a.kind, a.subject_name, a.level) for a in context["alerts"]} == {("department", "R&D", 100), ("low_wallet", "Company A", 100),
                                                                              ("token_monthly", "ci", 100)}
    island = json.loads(page.content.decode().split('id="spend-chart-data" type="application/json">')[1].split("</script>")[0])
    assert len(island["labels"]) == 30 and island["labels"][-1] == context["today"].isoformat()
    assert {d["label"]: d["data"][-1] for d in island["datasets"]} == {"model-b": 1.234567, "model-a": 0.05}
    text = page.content.decode()
    assert "b-token" not in text and "b-only" not in text and "999999" not in text


def test_it_shows_another_company_only_its_own_figures(personas, signed_in):
    write_usage(personas)
    page = signed_in(personas.manager_b).get(reverse(URL))
    assert page.status_code == 200
    assert [t.label for t in page.context["top_tokens"]] == ["b-token"]
    assert page.context["spend"].today == 999_999
    assert "ci" not in [t.label for t in page.context["top_tokens"]] and b"model-a" not in page.content


def test_it_is_empty_but_whole_for_a_company_without_requests(personas, signed_in):
    page = signed_in(personas.manager_a).get(reverse(URL))
    assert page.status_code == 200
    assert page.context["spend"].month == 0 and page.context["top_tokens"] == [] and page.context["limits"] == []


def test_it_is_404_for_an_outsider_and_a_supplier(personas, signed_in):
    for user in (personas.outsider, personas.supplier_user):
        assert signed_in(user).get(reverse(URL)).status_code == 404


def test_it_reads_no_usage_record(personas, signed_in):
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    write_usage(personas)
    client = signed_in(personas.manager_a)
    with CaptureQueriesContext(connection) as queries:
        assert client.get(reverse(URL)).status_code == 200
    assert [q["sql"] for q in queries if "billing_usagerecord" in q["sql"]] == []
