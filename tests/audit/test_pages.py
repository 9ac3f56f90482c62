"""The audit pages and downloads: the operator sees every tenant's events, a company's owners and
managers only their own; filters, keyset pages, both languages; bad filters get a clear 400."""

from __future__ import annotations

import datetime as dt
import json
import re

import pytest
from asgiref.sync import async_to_sync
from django.urls import reverse
from django.utils import timezone

from apps.audit.context import acting_as
from apps.audit.services import record
from tests.cabinets.conftest import verified_client

pytestmark = pytest.mark.django_db

OPERATOR = reverse("cabinets:operator:audit")
COMPANY = reverse("cabinets:company:audit")


def _export(cabinet: str, fmt: str) -> str:
    return reverse(f"cabinets:{cabinet}:audit_export", args=[fmt])


def _body(response) -> str:
    """A response's text; a streamed one is read to its end (its body is an async iterator, as ASGI serves it)."""
    if not response.streaming:
        return response.content.decode()

    async def read() -> bytes:
        return b"".join([chunk async for chunk in response.streaming_content])

    return async_to_sync(read)().decode("utf-8")


@pytest.fixture
def trail(personas):
    """Events of company A (manager A), company B (manager B) and the supplier."""
    with acting_as(personas.manager_a, client_ip="198.51.100.1"):
        for i in range(3):
            record("token.created", tenant=personas.company_a, object_type="proxy.ApiToken", object_id=i, object_label=f"a-token-{i}")
        record("policy.changed", tenant=personas.company_a, object_label="a-policy", before={"mode": "off"}, after={"mode": "mask"})
    with acting_as(personas.manager_b):
        record("token.revoked", tenant=personas.company_b, object_label="b-token")
    with acting_as(personas.supplier_user):
        record("supplier_key.added", tenant=personas.supplier, object_label="north-key")


def test_the_operator_sees_every_tenants_events(personas, trail):
    client = verified_client(personas.superadmin)
    html = client.get(OPERATOR, HTTP_ACCEPT_LANGUAGE="en").content.decode()
    for label in ("a-token-0", "a-policy", "b-token", "north-key"):
        assert label in html
    assert "API token created" in html and "manager-a@example.com" in html and "198.51.100.1" in html
    assert "<code>mode</code>: off → mask" in html


def test_the_pages_speak_russian_by_default_and_english_on_request(personas, trail):
    client = verified_client(personas.superadmin)
    russian = client.get(OPERATOR).content.decode()
    assert "Журнал аудита" in russian and "Создан API-токен" in russian
    english = client.get(OPERATOR, HTTP_ACCEPT_LANGUAGE="en").content.decode()
    assert "Audit trail" in english and "Журнал аудита" not in english


def test_a_company_manager_sees_only_their_companys_events(personas, trail):
    html = verified_client(personas.manager_a).get(COMPANY).content.decode()
    assert "a-token-0" in html and "a-policy" in html
    assert "b-token" not in html and "north-key" not in html
    html_b = verified_client(personas.manager_b).get(COMPANY).content.decode()
    assert "b-token" in html_b and "a-token-0" not in html_b


def test_a_company_export_holds_only_its_own_events(personas, trail):
    response = verified_client(personas.manager_a).get(_export("company", "jsonl"))
    assert response.status_code == 200 and response["Cache-Control"] == "no-store"
    assert response["Content-Disposition"].startswith('attachment; filename="jetstream-audit-company-a-')
    rows = [json.loads(line) for line in _body(response).splitlines()]
    assert {row["tenant"]["company_id"] for row in rows} == {personas.company_a.pk}
    labels = [row["object"]["label"] for row in rows]
    ours = ["a-token-0", "a-token-1", "a-token-2", "a-policy"]
    assert [label for label in labels if label in ours] == ours  # oldest first
    assert "b-token" not in labels and "north-key" not in labels


def test_viewers_outsiders_and_suppliers_cannot_read_a_companys_trail(personas, trail, django_user_model):
    from apps.accounts.models import CompanyRole, Membership

    viewer = django_user_model.objects.create_user("viewer-a@example.com", "x")
    Membership.objects.create(user=viewer, company=personas.company_a, role=CompanyRole.VIEWER)
    assert verified_client(viewer).get(COMPANY).status_code == 403
    assert verified_client(viewer).get(_export("company", "jsonl")).status_code == 403
    for user in (personas.outsider, personas.supplier_user):
        assert verified_client(user).get(COMPANY).status_code == 404
        assert verified_client(user).get(_export("company", "syslog")).status_code == 404
    for user in (personas.manager_a, personas.outsider):
        assert verified_client(user).get(OPERATOR).status_code == 404
        assert verified_client(user).get(_export("operator", "jsonl")).status_code == 404


def test_filters_narrow_the_listing_and_the_export(personas, trail):
    client = verified_client(personas.superadmin)
    html = client.get(OPERATOR, {"action": "token.revoked"}).content.decode()
    assert "b-token" in html and "a-token-0" not in html
    html = client.get(OPERATOR, {"action": "token."}).content.decode()
    assert "b-token" in html and "a-token-0" in html and "north-key" not in html
    html = client.get(OPERATOR, {"actor": "SUPPLIER@"}).content.decode()
    assert "north-key" in html and "b-token" not in html
    html = client.get(OPERATOR, {"company": "company-b"}).content.decode()
    assert "b-token" in html and "a-token-0" not in html
    tomorrow = timezone.localdate() + dt.timedelta(days=1)
    html = client.get(OPERATOR, {"since": tomorrow.isoformat()}).content.decode()
    assert "a-token-0" not in html
    body = _body(client.get(_export("operator", "jsonl"), {"company": "company-a", "action": "policy.changed"}))
    assert [json.loads(line)["object"]["label"] for line in body.splitlines()] == ["a-policy"]


def test_bad_filters_get_a_clear_400_never_a_500(personas, trail):
    client = verified_client(personas.superadmin)
    today = timezone.localdate()
    for params in ({"company": "no-such-company"}, {"since": "not-a-date"}, {"action": "token.teleported"},
                   {"since": today.isoformat(), "until": (today - dt.timedelta(days=3)).isoformat()}, {"before": "-5"}):
        assert client.get(OPERATOR, params).status_code == 400, params
        response = client.get(_export("operator", "jsonl"), params)
        assert response.status_code == 400 and not response.streaming, params
    assert client.get(_export("operator", "xml")).status_code == 400
    html = client.get(OPERATOR, {"company": "no-such-company"}, HTTP_ACCEPT_LANGUAGE="en").content.decode()
    assert "No company has this slug." in html


def test_keyset_pages_walk_back_without_repeating_or_skipping(personas):
    with acting_as(personas.manager_a):
        for i in range(120):
            record("token.created", tenant=personas.company_a, object_label=f"t{i:03d}")
    client = verified_client(personas.manager_a)
    seen, url, params = [], COMPANY, {}
    for _ in range(5):
        response = client.get(url, params)
        page = response.context["page"]
        seen += [event.object_label for event in page.rows]
        if page.next_before is None:
            break
        params = {"before": page.next_before}
    # 120 tokens plus the trail's own events of company A (the manager's membership), newest first, each once.
    labels = [label for label in seen if re.fullmatch(r"t\d{3}", label)]
    assert labels == [f"t{i:03d}" for i in reversed(range(120))]
    assert len(seen) == len(set(seen))


def test_an_htmx_request_gets_only_the_rows(personas, trail):
    client = verified_client(personas.superadmin)
    response = client.get(OPERATOR, {"action": "token."}, HTTP_HX_REQUEST="true", HTTP_HX_TARGET="audit-rows")
    html = response.content.decode()
    assert html.startswith('<div id="audit-rows">') and "<html" not in html and "a-token-0" in html


def test_the_syslog_download_streams_rfc_5424_lines(personas, trail):
    from tests.audit.test_export import RFC5424

    response = verified_client(personas.superadmin).get(_export("operator", "syslog"))
    assert response.streaming and response["Content-Type"].startswith("text/plain")
    lines = _body(response).splitlines()
    assert len(lines) >= 6 and all(RFC5424.fullmatch(line) for line in lines)
